"""WAV files in and out: every supported width and layout, real headers, rate conversion, clear errors."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.audio import Resampler, tone
from voicebot.errors import ConfigError
from voicebot.wavfile import WavAudio, WavError, convert_rate, read_wav, write_wav


def riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes, *, extra: bytes = b"") -> bytes:
    """A WAV file built by hand, optionally with extra chunks between ``fmt`` and ``data``."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def level_db(samples: np.ndarray, rate: int, freq: float) -> float:
    """Level of ``freq`` relative to a full-scale/2 sine, from a windowed FFT of the middle part."""
    middle = samples[len(samples) // 10 : -len(samples) // 10].astype(float)
    window = np.hanning(len(middle))
    spectrum = np.abs(np.fft.rfft(middle * window))
    bins = np.fft.rfftfreq(len(middle), 1 / rate)
    near = np.abs(bins - freq) <= 3 * rate / len(middle)
    return float(20 * np.log10(spectrum[near].max() / (0.5 * 32767 * window.sum() / 2) + 1e-12))


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(float) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_mono_int16_round_trips_exactly(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    write_wav(path, samples, 16000)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
    audio = read_wav(path)
    assert isinstance(audio, WavAudio) and audio.sample_rate == 16000
    assert np.array_equal(audio.samples, samples) and audio.samples.dtype == np.int16
    assert audio.duration == pytest.approx(6 / 16000)


def test_two_channels_are_written_interleaved_and_read_back_mixed_down(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = np.array([[1000, 3000], [-200, 200], [32767, 32767], [-32768, -32768]], dtype=np.int16)
    write_wav(path, stereo, 8000)
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 2
        raw = np.frombuffer(wav.readframes(4), "<i2")
    assert list(raw[:4]) == [1000, 3000, -200, 200]
    samples, rate = read_wav(path)
    assert rate == 8000 and list(samples) == [2000, 0, 32767, -32768]


def test_8_bit_samples_are_unsigned(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    path.write_bytes(riff(1, 1, 8000, 8, bytes([0, 128, 255, 129])))
    assert list(read_wav(path).samples) == [-32768, 0, 32512, 256]


def test_24_bit_samples_are_sign_extended_and_rounded(tmp_path: Path) -> None:
    values = [0x7FFFFF, -0x800000, 256, -256, 384, 0]
    data = b"".join((v & 0xFFFFFF).to_bytes(3, "little") for v in values)
    path = tmp_path / "s24.wav"
    path.write_bytes(riff(1, 1, 48000, 24, data))
    assert list(read_wav(path).samples) == [32767, -32768, 1, -1, 2, 0]


def test_32_bit_samples_keep_their_top_16_bits(tmp_path: Path) -> None:
    path = tmp_path / "s32.wav"
    path.write_bytes(riff(1, 1, 8000, 32, struct.pack("<4i", 123 << 16, -5 << 16, 2**31 - 1, -(2**31))))
    assert list(read_wav(path).samples) == [123, -5, 32767, -32768]


def test_the_header_is_parsed_not_skipped(tmp_path: Path) -> None:
    """A LIST chunk before ``data`` moves the audio past byte 44; a fixed offset would read garbage."""
    samples = np.array([100, -100, 200, -200], dtype="<i2")
    info = b"INFOISFT" + struct.pack("<I", 14) + b"some encoder\0\0"
    extra = b"LIST" + struct.pack("<I", len(info)) + info
    path = tmp_path / "list.wav"
    path.write_bytes(riff(1, 1, 8000, 16, samples.tobytes(), extra=extra))
    assert list(read_wav(path).samples) == [100, -100, 200, -200]


def test_an_empty_file_reads_as_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    write_wav(path, np.zeros(0, dtype=np.int16), 8000)
    samples, rate = read_wav(path, rate=16000)
    assert len(samples) == 0 and rate == 16000


def test_exotel_rates_convert_with_the_project_resampler(tmp_path: Path) -> None:
    path = tmp_path / "8k.wav"
    source = tone(440, 0.3, 8000)
    write_wav(path, source, 8000)
    samples, rate = read_wav(path, rate=16000)
    resampler = Resampler(8000, 16000)
    expected = np.concatenate([resampler.process(source), resampler.flush()])
    assert rate == 16000 and np.array_equal(samples, expected) and len(samples) == 2 * len(source)


@pytest.mark.parametrize(
    ("src", "dst", "freq"),
    [
        (44100, 8000, 1000),
        (48000, 16000, 3000),
        (11025, 16000, 1000),
        (22050, 24000, 5000),
        (8000, 44100, 1000),
    ],
)
def test_other_rates_keep_the_pitch_and_the_level(tmp_path: Path, src: int, dst: int, freq: float) -> None:
    path = tmp_path / "in.wav"
    write_wav(path, tone(freq, 1.0, src), src)
    samples, rate = read_wav(path, rate=dst)
    assert rate == dst and len(samples) == dst  # one second
    assert peak_hz(samples[dst // 10 : -dst // 10], dst) == pytest.approx(freq, abs=2)
    assert level_db(samples, dst, freq) == pytest.approx(0.0, abs=0.1)


def test_telephone_band_passes_and_what_cannot_be_represented_is_rejected() -> None:
    assert level_db(convert_rate(tone(3400, 1.0, 44100), 44100, 8000), 8000, 3400) > -2.0
    # 6 kHz and 4.4 kHz do not exist at 8 kHz: they must not fold back as 2 kHz / 3.6 kHz aliases.
    assert level_db(convert_rate(tone(6000, 1.0, 44100), 44100, 8000), 8000, 2000) < -60
    assert level_db(convert_rate(tone(4400, 1.0, 44100), 44100, 8000), 8000, 3600) < -60


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 3000),
    st.sampled_from([8000, 11025, 16000, 22050, 24000, 44100, 48000]),
    st.sampled_from([8000, 16000, 24000]),
)
def test_converted_length_is_exact(count: int, src: int, dst: int) -> None:
    samples = np.zeros(count, dtype=np.int16)
    assert len(convert_rate(samples, src, dst)) == math.ceil(count * dst / src)


def test_unreadable_files_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WavError, match="no such file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(WavError, match="cannot read"):
        read_wav(tmp_path)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(WavError, match="not a readable integer-PCM WAV"):
        read_wav(text)
    floats = tmp_path / "float.wav"
    floats.write_bytes(riff(3, 1, 8000, 32, struct.pack("<2f", 0.5, -0.5)))
    with pytest.raises(WavError, match=r"float\.wav"):
        read_wav(floats)
    assert issubclass(WavError, ConfigError)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int16"):
        write_wav(tmp_path / "x.wav", np.zeros(4), 8000)
    with pytest.raises(ValueError, match="channels"):
        write_wav(tmp_path / "x.wav", np.zeros((2, 2, 2), dtype=np.int16), 8000)
    with pytest.raises(WavError, match="rate"):
        write_wav(tmp_path / "x.wav", np.zeros(4, dtype=np.int16), 0)
    with pytest.raises(WavError, match="dst_rate"):
        convert_rate(np.zeros(4, dtype=np.int16), 8000, 10)
    with pytest.raises(WavError, match="cannot write"):
        write_wav(tmp_path / "no" / "such" / "dir.wav", np.zeros(4, dtype=np.int16), 8000)
