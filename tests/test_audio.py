"""Codecs, sample conversion, test signals and framing in voicebot.audio."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voicebot import audio
from voicebot.audio import (
    FrameSplitter,
    decode,
    encode,
    pcm16_from_bytes,
    pcm16_to_bytes,
    pcm16_to_ulaw,
    silence,
    to_int16,
    tone,
    ulaw_to_pcm16,
)
from voicebot.errors import ConfigError
from voicebot.events import Encoding

Int16Array = npt.NDArray[np.int16]


# ---------------------------------------------------------------------------------------------- PCM16


def test_pcm16_is_little_endian_on_the_wire() -> None:
    samples = np.array([1, -2, 0x1234, -32768, 32767], dtype=np.int16)
    wire = b"\x01\x00\xfe\xff\x34\x12\x00\x80\xff\x7f"
    assert pcm16_to_bytes(samples) == wire
    assert pcm16_from_bytes(wire).tolist() == samples.tolist()


@given(arrays(np.int16, st.integers(0, 500)))
def test_pcm16_round_trips(samples: Int16Array) -> None:
    assert np.array_equal(pcm16_from_bytes(pcm16_to_bytes(samples)), samples)


def test_pcm16_drops_an_odd_trailing_byte() -> None:
    decoded = pcm16_from_bytes(b"\x01\x00\x02\x00\x7f")
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [1, 2]
    assert pcm16_from_bytes(b"\x05").shape == (0,)
    assert pcm16_from_bytes(b"").shape == (0,)


def test_pcm16_decode_of_bytes_is_a_read_only_view() -> None:
    decoded = pcm16_from_bytes(b"\x01\x00\x02\x00")
    with pytest.raises(ValueError, match="read-only"):
        decoded[0] = 5


def test_encoders_refuse_float_samples() -> None:
    with pytest.raises(TypeError, match="to_int16"):
        pcm16_to_bytes(np.zeros(4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int16"):
        pcm16_to_ulaw(np.zeros(4, dtype=np.int32))
    with pytest.raises(TypeError, match="numpy"):
        pcm16_to_bytes([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- μ-law


def g711_ulaw_decode(code: int) -> int:
    """G.711 μ-law expansion from the standard's formula, independent of audioop."""
    inverted = ~code & 0xFF
    sign = inverted & 0x80
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


def test_ulaw_silence_golden_vectors() -> None:
    assert ulaw_to_pcm16(b"\xff").tolist() == [0]
    assert ulaw_to_pcm16(b"\x7f").tolist() == [0]  # μ-law's "negative zero"
    assert pcm16_to_ulaw(np.zeros(3, dtype=np.int16)) == b"\xff\xff\xff"


def test_ulaw_decode_table_matches_g711() -> None:
    table = ulaw_to_pcm16(bytes(range(256))).tolist()
    assert table == [g711_ulaw_decode(code) for code in range(256)]
    assert table[0x00] == -32124 and table[0x80] == 32124  # the loudest codes


def test_ulaw_encode_of_each_decoded_value_round_trips() -> None:
    codes = bytes(range(256))
    reencoded = pcm16_to_ulaw(ulaw_to_pcm16(codes))
    expected = bytes(0xFF if code == 0x7F else code for code in codes)  # both zeros encode as 0xFF
    assert reencoded == expected


def test_ulaw_encode_saturates_and_keeps_sign() -> None:
    loud = np.array([32767, -32768, 100, -100], dtype=np.int16)
    decoded = ulaw_to_pcm16(pcm16_to_ulaw(loud)).tolist()
    assert decoded[0] == 32124 and decoded[1] == -32124
    assert decoded[2] > 0 > decoded[3]


def test_decode_and_encode_dispatch_on_encoding() -> None:
    samples = np.array([0, 1000, -1000], dtype=np.int16)
    assert encode(samples, Encoding.PCM16) == pcm16_to_bytes(samples)
    assert encode(samples, Encoding.MULAW) == pcm16_to_ulaw(samples)
    assert decode(pcm16_to_bytes(samples), Encoding.PCM16).tolist() == samples.tolist()
    assert decode(b"\xff\x00", Encoding.MULAW).tolist() == [0, -32124]
    with pytest.raises(ValueError, match="encoding"):
        decode(b"", "alaw")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- conversion, signals


def test_to_int16_rounds_and_saturates() -> None:
    floats = np.array([40000.0, -40000.0, 32767.4, 32767.5, -32768.6, 1.5, 2.5, -0.4, np.nan, np.inf])
    assert to_int16(floats).tolist() == [32767, -32768, 32767, 32767, -32768, 2, 2, 0, 0, 32767]
    assert to_int16(np.array([70000, -70000, 5], dtype=np.int32)).tolist() == [32767, -32768, 5]
    assert to_int16(np.array([1.0], dtype=np.float32)).dtype == np.int16
    with pytest.raises(TypeError, match="numeric"):
        to_int16(np.array(["a"]))


@pytest.mark.parametrize(("freq", "rate"), [(440.0, 8000), (1000.0, 16000), (3000.0, 24000)])
def test_tone_has_the_requested_frequency_length_and_level(freq: float, rate: int) -> None:
    samples = tone(freq, 0.5, rate, amplitude=0.25)
    assert samples.dtype == np.int16 and samples.shape == (rate // 2,)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    peak_hz = np.fft.rfftfreq(samples.shape[0], 1 / rate)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(freq, abs=2.0)
    assert np.abs(samples).max() == pytest.approx(0.25 * 32767, abs=2)


def test_tone_and_silence_reject_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="amplitude"):
        tone(440, 1, 8000, amplitude=1.5)
    with pytest.raises(ConfigError, match="freq_hz"):
        tone(5000, 1, 8000)
    with pytest.raises(ConfigError, match="sample_rate"):
        silence(1, 0)
    with pytest.raises(ConfigError, match="seconds"):
        silence(-1, 8000)


def test_silence_is_zeros_of_the_right_length() -> None:
    quiet = silence(0.02, 16000)
    assert quiet.dtype == np.int16 and quiet.shape == (320,) and not quiet.any()


# -------------------------------------------------------------------------------------------- framing


def test_frame_splitter_cuts_exact_frames_and_keeps_the_rest() -> None:
    splitter = FrameSplitter(160)
    assert splitter.push(np.arange(100, dtype=np.int16)) == []
    assert splitter.pending == 100
    frames = splitter.push(np.arange(100, 450, dtype=np.int16))
    assert [frame.tolist() for frame in frames] == [list(range(160)), list(range(160, 320))]
    assert splitter.pending == 130
    tail = splitter.flush(pad=True)
    assert tail is not None and tail.shape == (160,)
    assert tail[:130].tolist() == list(range(320, 450)) and not tail[130:].any()
    assert splitter.pending == 0 and splitter.flush() is None


def test_frame_splitter_flush_without_padding_and_reset() -> None:
    splitter = FrameSplitter.for_duration(8000, 0.02)
    assert splitter.frame_samples == 160
    splitter.push(np.ones(50, dtype=np.int16))
    remainder = splitter.flush(pad=False)
    assert remainder is not None and remainder.tolist() == [1] * 50
    splitter.push(np.ones(50, dtype=np.int16))
    splitter.reset()
    assert splitter.pending == 0
    assert splitter.push(np.full(160, 7, dtype=np.int16))[0].tolist() == [7] * 160


def test_frames_do_not_alias_the_input() -> None:
    splitter = FrameSplitter(4)
    samples = np.arange(10, dtype=np.int16)
    frames = splitter.push(samples)
    samples[:] = -1
    assert [frame.tolist() for frame in frames] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert splitter.flush(pad=False).tolist() == [8, 9]  # type: ignore[union-attr]


@settings(max_examples=50)
@given(st.integers(1, 50), st.lists(arrays(np.int16, st.integers(0, 120)), max_size=12))
def test_frame_splitter_loses_and_reorders_nothing(frame_samples: int, chunks: list[Int16Array]) -> None:
    splitter = FrameSplitter(frame_samples)
    frames = [frame for chunk in chunks for frame in splitter.push(chunk)]
    assert all(frame.shape == (frame_samples,) for frame in frames)
    tail = splitter.flush(pad=False)
    nothing = np.zeros(0, dtype=np.int16)
    got = np.concatenate([nothing, *frames, *([] if tail is None else [tail])])
    assert np.array_equal(got, np.concatenate([nothing, *chunks]))


@pytest.mark.parametrize("bad", [0, -160, 160.0, True])
def test_frame_splitter_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(ConfigError, match="frame_samples"):
        FrameSplitter(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ layering


@pytest.mark.parametrize("module", ["audio.py", "dspmetrics.py"])
def test_core_audio_modules_import_no_io_or_clock(module: str) -> None:
    tree = ast.parse((Path(audio.__file__).parent / module).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"asyncio", "websockets", "aiohttp", "time", "socket"}
    assert imported <= {
        "__future__",
        "audioop",
        "collections",
        "dataclasses",
        "functools",
        "math",
        "numpy",
        "sys",
        "typing",
        "voicebot",
        "warnings",
    }
