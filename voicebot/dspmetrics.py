"""Measure a resampler's quality the way a listener would notice it, with numpy FFTs.

Used by the tests (which assert the bars) and by ``bench/dsp.py`` (which prints them for voicebot's
resampler, soxr and ``audioop.ratecv`` side by side). Every function takes the resampler as a callable,
so anything can be measured:

* a *one-shot* callable (``ResampleFn``) maps a whole int16 signal at ``src_rate`` to the whole int16
  signal at ``dst_rate`` (wrap a streaming resampler as "process everything, then flush");
* a *streaming* callable (``StreamFn``) is called repeatedly with consecutive chunks and returns what
  the resampler emits for each.

Tone levels come from a Blackman-Harris-windowed FFT of exactly one second of steady-state output, so
integer-hertz tones sit on FFT bins and read their true amplitude; its sidelobes are ≈ 92 dB down,
below everything measured here. Core layer: numpy and stdlib only; no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "ResampleFn",
    "StreamFn",
    "amplitude_spectrum",
    "blackman_harris",
    "group_delay_seconds",
    "holdback_seconds",
    "passband_edge_hz",
    "passband_ripple_db",
    "probe_tone",
    "rejection_db",
    "spurious_level_db",
    "tone_gain_db",
]

ResampleFn = Callable[[npt.NDArray[np.int16]], npt.NDArray[np.int16]]
"""Resamples a whole signal in one go."""
StreamFn = Callable[[npt.NDArray[np.int16]], npt.NDArray[np.int16]]
"""Resamples the next chunk of a stream, returning what it emits for that chunk."""

_FULL_SCALE = 32767.0
_SETTLE_SECONDS = 0.25  # skipped at the start of every output, so filter start-up never counts
_GUARD_HZ = 12.0  # around a wanted tone: the Blackman-Harris main lobe is ±4 bins of 1 Hz


def blackman_harris(length: int) -> npt.NDArray[np.float64]:
    """The 4-term Blackman-Harris window (sidelobes ≈ −92 dB), periodic form."""
    phase = 2.0 * math.pi * np.arange(length) / length
    return 0.35875 - 0.48829 * np.cos(phase) + 0.14128 * np.cos(2 * phase) - 0.01168 * np.cos(3 * phase)


def amplitude_spectrum(
    signal: npt.NDArray[np.generic], sample_rate: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(frequencies in Hz, peak amplitudes) of a windowed FFT; a sinusoid on a bin reads its amplitude."""
    values = np.asarray(signal, dtype=np.float64)
    window = blackman_harris(values.shape[0])
    spectrum: npt.NDArray[np.float64] = np.abs(np.fft.rfft(values * window)) * (2.0 / window.sum())
    freqs = np.fft.rfftfreq(values.shape[0], 1.0 / sample_rate).astype(np.float64)
    return freqs, spectrum


def passband_edge_hz(src_rate: int, dst_rate: int) -> float:
    """The top of the band a telephony resampler must pass flat: 0.85 × the lower Nyquist frequency."""
    return 0.85 * min(src_rate, dst_rate) / 2


def probe_tone(
    freq_hz: float, sample_rate: int, *, seconds: float = 1.5, amplitude: float = 0.5
) -> npt.NDArray[np.int16]:
    """An int16 sine (peak ``amplitude`` × full scale) long enough for one settled second of analysis."""
    phase = 2.0 * math.pi * freq_hz / sample_rate * np.arange(round(seconds * sample_rate))
    samples: npt.NDArray[np.int16] = np.clip(
        np.rint(amplitude * _FULL_SCALE * np.sin(phase)), -32768, 32767
    ).astype(np.int16)
    return samples


def _settled_second(output: npt.NDArray[np.int16], sample_rate: int) -> npt.NDArray[np.int16]:
    start = round(_SETTLE_SECONDS * sample_rate)
    segment = output[start : start + sample_rate]
    if segment.shape[0] < sample_rate:
        raise ValueError(
            f"resampler returned {output.shape[0]} samples, too few to analyse at {sample_rate} Hz"
        )
    return segment


def _tone_through(
    resample: ResampleFn, src_rate: int, dst_rate: int, freq_hz: float, amplitude: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    output = resample(probe_tone(freq_hz, src_rate, amplitude=amplitude))
    return amplitude_spectrum(_settled_second(output, dst_rate), dst_rate)


def tone_gain_db(
    resample: ResampleFn, src_rate: int, dst_rate: int, freq_hz: float, *, amplitude: float = 0.5
) -> float:
    """How loud a tone at ``freq_hz`` comes out, in dB relative to how loud it went in."""
    freqs, amps = _tone_through(resample, src_rate, dst_rate, freq_hz, amplitude)
    near = np.abs(freqs - freq_hz) <= 2.0
    return 20.0 * math.log10(float(np.max(amps[near])) / (amplitude * _FULL_SCALE))


def passband_ripple_db(
    resample: ResampleFn,
    src_rate: int,
    dst_rate: int,
    *,
    edge_hz: float | None = None,
    step_hz: float = 100.0,
) -> float:
    """Peak-to-peak gain variation (dB) over tones from ``step_hz`` up to ``edge_hz``.

    ``edge_hz`` defaults to 0.85 × the lower Nyquist frequency (:func:`passband_edge_hz`).
    """
    edge = passband_edge_hz(src_rate, dst_rate) if edge_hz is None else edge_hz
    freqs = [*np.arange(step_hz, edge, step_hz).tolist(), edge]
    gains = [tone_gain_db(resample, src_rate, dst_rate, f) for f in freqs]
    return max(gains) - min(gains)


def spurious_level_db(
    resample: ResampleFn,
    src_rate: int,
    dst_rate: int,
    freq_hz: float,
    *,
    amplitude: float = 0.9,
    reference_hz: float = 1000.0,
) -> float:
    """The strongest unwanted component (dB) when a tone at ``freq_hz`` goes through, relative to a
    passband tone at ``reference_hz`` of the same input level.

    A tone the resampler must pass (below the lower Nyquist) is itself wanted, and ±12 Hz around it is
    ignored; everything else in the output is alias, image or distortion. A tone the output rate cannot
    carry is unwanted as a whole. The result is negative: −70 means 70 dB of rejection.
    """
    reference = 10 ** (tone_gain_db(resample, src_rate, dst_rate, reference_hz, amplitude=amplitude) / 20)
    freqs, amps = _tone_through(resample, src_rate, dst_rate, freq_hz, amplitude)
    unwanted = amps.copy()
    if freq_hz < min(src_rate, dst_rate) / 2:
        unwanted[np.abs(freqs - freq_hz) <= _GUARD_HZ] = 0.0
    worst = max(float(np.max(unwanted)), 1e-12)
    return 20.0 * math.log10(worst / (reference * amplitude * _FULL_SCALE))


def rejection_db(
    resample: ResampleFn,
    src_rate: int,
    dst_rate: int,
    *,
    freqs_hz: Sequence[float] | None = None,
    amplitude: float = 0.9,
) -> float:
    """Worst-case alias/image rejection (dB, positive = better) over a sweep of input tones.

    The default sweep covers the passband (whose images and aliases must vanish) and, when going down
    in rate, the input band above 1.15 × the lower Nyquist (which must not fold back); the transition
    band in between (0.85×..1.15×) is where the filter rolls off and is not held to the bar.
    """
    if freqs_hz is None:
        freqs_hz = _rejection_sweep(src_rate, dst_rate)
    return -max(spurious_level_db(resample, src_rate, dst_rate, f, amplitude=amplitude) for f in freqs_hz)


def _rejection_sweep(src_rate: int, dst_rate: int) -> list[float]:
    nyquist = min(src_rate, dst_rate) / 2
    freqs = np.linspace(100.0, 0.85 * nyquist, 7).round().tolist()
    if src_rate > dst_rate:
        freqs += np.linspace(math.ceil(1.15 * nyquist), src_rate / 2 - 100, 9).round().tolist()
    return [float(f) for f in freqs]


def group_delay_seconds(resample: ResampleFn, src_rate: int, dst_rate: int) -> float:
    """How far output content lags the input on the output's own timeline, from a band-limited pulse.

    The pulse (a Kaiser-windowed sinc band-limited to 0.8 × the lower Nyquist) is centred 50 ms into
    the input; the output's peak, located to a fraction of a sample by parabolic interpolation, gives
    the delay. A delay-compensated resampler measures ≈ 0 here even though it returns its output late:
    that lateness is what :func:`holdback_seconds` measures.
    """
    centre = src_rate // 20
    band = 0.8 * min(src_rate, dst_rate) / 2
    offsets = (np.arange(src_rate // 5) - centre) / src_rate
    pulse = np.sinc(2 * band * offsets) * np.kaiser(offsets.shape[0], 8.0)
    signal = np.rint(0.8 * _FULL_SCALE * pulse / np.max(np.abs(pulse))).astype(np.int16)
    output = np.asarray(resample(signal), dtype=np.float64)
    peak = int(np.argmax(output))
    fraction = 0.0
    if 0 < peak < output.shape[0] - 1:
        before, at, after = output[peak - 1], output[peak], output[peak + 1]
        curvature = before - 2 * at + after
        if curvature != 0:
            fraction = 0.5 * (before - after) / curvature
    return (peak + fraction) / dst_rate - centre / src_rate


def holdback_seconds(
    stream: StreamFn, src_rate: int, dst_rate: int, *, chunk_samples: int, chunks: int = 50
) -> float:
    """The most input (in seconds) a streaming resampler has taken in without returning output for it.

    ``chunks`` consecutive chunks of ``chunk_samples`` (a 440 Hz tone) are fed in; after each, the
    input duration so far minus the output duration so far is how much audio the resampler is
    holding. The maximum over all calls is returned. A causal filter holds its group delay; a
    resampler that batches internally holds much more.
    """
    signal = probe_tone(440.0, src_rate, seconds=chunk_samples * chunks / src_rate)
    emitted = 0
    worst = 0.0
    for index in range(chunks):
        emitted += stream(signal[index * chunk_samples : (index + 1) * chunk_samples]).shape[0]
        worst = max(worst, (index + 1) * chunk_samples / src_rate - emitted / dst_rate)
    return worst
