"""WAV files in and out, with the standard library's ``wave`` module (headers parsed, never skipped).

* :func:`read_wav` reads integer PCM WAV at any rate, 8/16/24/32-bit, any number of channels (mixed
  down to mono by averaging), as int16 mono; given ``rate`` it also converts to that rate.
* :func:`convert_rate` changes the rate of int16 mono audio. Between Exotel's rates (8, 16 and 24 kHz)
  it uses the project's streaming :class:`voicebot.audio.Resampler`. Any other pair (a 44.1 or 48 kHz
  recording, say) takes a documented simple path: whole-buffer polyphase windowed-sinc interpolation
  (Kaiser window, 16 zero crossings each side at the lower rate, 6 dB point at 0.45 × the lower rate,
  so the passband reaches 3.4 kHz at 8 kHz and aliases are over 60 dB down): ample for test and demo audio,
  and meant for files, not for the live call path.
* :func:`write_wav` writes int16 audio: mono from a 1-D array, or several channels from an
  ``(n, channels)`` array (e.g. a two-track call recording).

Formats ``wave`` cannot read (IEEE float, and on Python < 3.12 ``WAVE_FORMAT_EXTENSIBLE`` files, which
some tools write for 24-bit audio) raise :class:`WavError` naming the file and what to do.
"""

from __future__ import annotations

import math
import os
import wave
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from voicebot.audio import Resampler, Samples, pcm16_to_bytes, to_int16
from voicebot.errors import ConfigError
from voicebot.events import SUPPORTED_RATES

__all__ = ["WavAudio", "WavError", "convert_rate", "read_wav", "write_wav"]

_ZERO_CROSSINGS: Final = 16
_CUTOFF_FRACTION: Final = 0.45  # of the lower rate: the 6 dB point, 3.6 kHz when converting to 8 kHz
_KAISER_BETA: Final = 8.0

StrPath = str | os.PathLike[str]


class WavError(ConfigError):
    """A WAV file cannot be read or written as asked; the message names the file and the rule."""


class WavAudio(NamedTuple):
    """Mono int16 samples and their sample rate in Hz."""

    samples: Samples
    sample_rate: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.samples) / self.sample_rate


def read_wav(path: StrPath, *, rate: int | None = None) -> WavAudio:
    """Read a PCM WAV file as int16 mono, at the file's rate or converted to ``rate``.

    8-bit (unsigned), 16, 24 and 32-bit (signed) integer samples are scaled to 16 bits with rounding;
    several channels are averaged into one.
    """
    try:
        with open(path, "rb") as file, wave.open(file, "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            file_rate = wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise WavError(f"wav: no such file {os.fspath(path)!r}") from None
    except OSError as exc:
        raise WavError(f"wav: cannot read {os.fspath(path)!r}: {exc}") from None
    except (wave.Error, EOFError) as exc:
        raise WavError(
            f"wav: {os.fspath(path)!r} is not a readable integer-PCM WAV file ({exc}); "
            "convert it with e.g. `sox in.wav -b 16 out.wav`"
        ) from None
    if file_rate <= 0 or channels <= 0:
        raise WavError(f"wav: {os.fspath(path)!r} declares {channels} channel(s) at {file_rate} Hz")
    samples = _mono_int16(_decode_frames(data, width, os.fspath(path)), channels)
    audio = WavAudio(samples, file_rate)
    if rate is not None and rate != file_rate:
        audio = WavAudio(convert_rate(samples, file_rate, rate), rate)
    return audio


def _decode_frames(data: bytes, width: int, where: str) -> npt.NDArray[np.float64]:
    """Interleaved samples of any supported width, as floats in int16 units (full scale ±32768)."""
    if width == 1:
        return (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    if width == 2:
        return np.frombuffer(data, dtype="<i2", count=len(data) // 2).astype(np.float64)
    if width == 3:
        triples = np.frombuffer(data, dtype=np.uint8, count=len(data) // 3 * 3).reshape(-1, 3)
        values = (
            triples[:, 0].astype(np.int32)
            | (triples[:, 1].astype(np.int32) << 8)
            | (triples[:, 2].astype(np.int32) << 16)
        )
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        return values.astype(np.float64) / 256.0
    if width == 4:
        return np.frombuffer(data, dtype="<i4", count=len(data) // 4).astype(np.float64) / 65536.0
    raise WavError(f"wav: {where!r} has {8 * width}-bit samples; supported are 8, 16, 24 and 32-bit")


def _mono_int16(interleaved: npt.NDArray[np.float64], channels: int) -> Samples:
    frames = len(interleaved) // channels
    if channels > 1:
        interleaved = interleaved[: frames * channels].reshape(frames, channels).mean(axis=1)
    return to_int16(interleaved)


def _check_rate(name: str, rate: object) -> int:
    if not isinstance(rate, int) or isinstance(rate, bool) or not 1000 <= rate <= 384_000:
        raise WavError(f"{name} must be an int from 1000 to 384000 Hz, got {rate!r}")
    return rate


def convert_rate(samples: Samples, src_rate: int, dst_rate: int) -> Samples:
    """``samples`` (int16 mono) at ``src_rate`` converted to ``dst_rate``: ``ceil(n·dst/src)`` samples.

    Exotel's rates use the streaming :class:`~voicebot.audio.Resampler` (flushed, so nothing is held
    back); other rates use whole-buffer windowed-sinc interpolation (see the module docstring).
    """
    _check_rate("src_rate", src_rate)
    _check_rate("dst_rate", dst_rate)
    if samples.dtype != np.int16 or samples.ndim != 1:
        raise TypeError(f"samples must be a 1-D int16 array, got {samples.dtype} with shape {samples.shape}")
    if src_rate == dst_rate:
        return samples.copy()
    if src_rate in SUPPORTED_RATES and dst_rate in SUPPORTED_RATES:
        resampler = Resampler(src_rate, dst_rate)
        return np.concatenate([resampler.process(samples), resampler.flush()])
    return to_int16(_sinc_resample(samples.astype(np.float64), src_rate, dst_rate))


def _sinc_resample(x: npt.NDArray[np.float64], src_rate: int, dst_rate: int) -> npt.NDArray[np.float64]:
    """Evaluate the band-limited signal through ``x`` at ``dst_rate`` instants (Kaiser-windowed sinc).

    The ratio is rational (``L/M`` in lowest terms), so output ``q·L + p`` sits at input position
    ``q·M + p·M/L``: every output phase ``p`` has one fixed set of taps, applied to a strided view of
    the input. Exact positions, no per-sample kernel evaluation.
    """
    count = math.ceil(len(x) * dst_rate / src_rate)
    out = np.zeros(count)
    if count == 0:
        return out
    common = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // common, src_rate // common
    cutoff = _CUTOFF_FRACTION * min(src_rate, dst_rate) / src_rate  # cycles per input sample
    half_width = _ZERO_CROSSINGS / (2 * cutoff)  # in input samples
    reach = math.ceil(half_width)
    offsets = np.arange(-reach + 1, reach + 1)
    # Input index i lives at padded[i + reach]; the window of an output whose position has integer
    # part b covers inputs b - reach + 1 .. b + reach, i.e. padded[b + 1 : b + 1 + 2 * reach].
    padded = np.concatenate([np.zeros(reach), x, np.zeros(reach + down + 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach)
    for phase in range(min(up, count)):
        base, remainder = divmod(phase * down, up)
        rows = (count - phase + up - 1) // up
        distance = remainder / up - offsets
        ratio = np.clip(distance / half_width, -1.0, 1.0)
        taps = 2 * cutoff * np.sinc(2 * cutoff * distance)
        taps *= np.i0(_KAISER_BETA * np.sqrt(1.0 - ratio * ratio))
        taps /= taps.sum()  # unit gain at DC in every phase
        out[phase::up] = windows[base + 1 : base + 1 + rows * down : down] @ taps
    return out


def write_wav(path: StrPath, samples: Samples, rate: int) -> None:
    """Write int16 audio as a 16-bit PCM WAV: mono from a 1-D array, ``channels`` from ``(n, channels)``."""
    _check_rate("rate", rate)
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16:
        raise TypeError("samples must be an int16 numpy array; convert with voicebot.audio.to_int16()")
    if samples.ndim == 1:
        channels, interleaved = 1, samples
    elif samples.ndim == 2 and 1 <= samples.shape[1] <= 8:
        channels, interleaved = samples.shape[1], np.ascontiguousarray(samples).reshape(-1)
    else:
        raise ValueError(
            f"samples must be 1-D (mono) or (n, channels) with 1-8 channels, got {samples.shape}"
        )
    try:
        # Opening the file first keeps a failed open from leaving a half-built Wave_write behind.
        with open(path, "wb") as file, wave.open(file, "wb") as wav:
            wav.setnchannels(channels)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm16_to_bytes(interleaved))
    except OSError as exc:
        raise WavError(f"wav: cannot write {os.fspath(path)!r}: {exc}") from None
