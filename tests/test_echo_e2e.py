"""The echo bot end to end, as a caller would hear it: the real server, driven by FakeExotel.

The scenario (one call per stream mode, all at once, in real time): the caller is silent for a second,
says "hello" (a 300 Hz tone, 0.6 s), then presses ``#`` at 2.4 s. The caller must hear the 440 Hz
greeting as the call starts, their own 300 Hz tone back within a second, and on ``#`` the 880 Hz
goodbye, after which the bot hangs up (close 1000) once the goodbye has been heard.

The last test is the README's example for bot developers, verbatim; the first few test the helper it
uses, ``dominant_frequency``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voicebot.call
from handlers.echo import EchoBot
from voicebot import Call, silence, tone
from voicebot.events import Encoding
from voicebot.testing import CallReport, FakeExotel, dominant_frequency, serve_handler

SPEECH_AT: Final = 1.0
SPEECH_SECONDS: Final = 0.6
SPEECH_HZ: Final = 300.0
SPEECH_AMPLITUDE: Final = 0.5
HASH_AT: Final = 2.4
GREETING_HZ: Final = 440.0
GREETING_SECONDS: Final = 0.5
GOODBYE_HZ: Final = 880.0
GOODBYE_SECONDS: Final = 0.3
CALL_LIMIT: Final = 8.0
MODES: Final = [
    (8000, Encoding.PCM16),
    (16000, Encoding.PCM16),
    (24000, Encoding.PCM16),
    (8000, Encoding.MULAW),
    (16000, Encoding.MULAW),
]


def _mode_id(mode: tuple[int, Encoding]) -> str:
    return f"{mode[0] // 1000}k-{mode[1].value}"


def _rms(samples: np.ndarray) -> float:
    values = samples.astype(np.float64)
    return math.sqrt(float(np.mean(values * values)))


# ------------------------------------------------------------------------------- dominant_frequency


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([8000, 16000, 24000]),
    cycles=st.floats(3.0, 200.0),
    fraction_of_nyquist=st.floats(0.02, 0.9),
    phase=st.floats(0.0, 2 * math.pi),
    amplitude=st.floats(0.05, 0.9),
)
def test_dominant_frequency_finds_a_tone_to_a_small_fraction_of_a_bin(
    rate: int, cycles: float, fraction_of_nyquist: float, phase: float, amplitude: float
) -> None:
    frequency = fraction_of_nyquist * rate / 2
    length = max(64, round(cycles * rate / frequency))
    t = np.arange(length) / rate
    samples = np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t + phase)).astype(np.int16)
    found = dominant_frequency(samples, rate)
    assert found is not None
    assert abs(found - frequency) <= 0.1 * rate / length  # a tenth of one FFT bin


def test_dominant_frequency_tells_300_from_303_hz_in_a_tenth_of_a_second_at_8k() -> None:
    for frequency in (300.0, 303.0):
        found = dominant_frequency(tone(frequency, 0.1, 8000), 8000)
        assert found == pytest.approx(frequency, abs=0.5)


def test_dominant_frequency_is_none_for_silence_and_ignores_a_dc_offset() -> None:
    assert dominant_frequency(silence(0.2, 8000), 8000) is None
    assert dominant_frequency(tone(440, 0.2, 8000, amplitude=0.005), 8000) is None  # under 1 %
    assert dominant_frequency(tone(440, 0.2, 8000, amplitude=0.005), 8000, min_level=0.001) is not None
    offset = (tone(440, 0.2, 8000, amplitude=0.1).astype(np.int32) + 12000).astype(np.int16)
    assert dominant_frequency(offset, 8000) == pytest.approx(440, abs=1)
    assert dominant_frequency(np.full(1600, 12000, dtype=np.int16), 8000) is None  # DC alone is silence


def test_dominant_frequency_picks_the_louder_of_two_tones() -> None:
    mix = tone(300, 0.2, 16000, amplitude=0.2).astype(np.int32) + tone(880, 0.2, 16000, amplitude=0.4)
    assert dominant_frequency(mix.astype(np.int16), 16000) == pytest.approx(880, abs=1)


# ------------------------------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class Heard:
    """One scenario call's report and the moments the caller started hearing each part."""

    report: CallReport
    greeting_at: float | None
    echo_at: float | None
    goodbye_at: float | None


async def _scenario(url: str, rate: int, encoding: Encoding) -> Heard:
    caller = np.concatenate(
        [silence(SPEECH_AT, rate), tone(SPEECH_HZ, SPEECH_SECONDS, rate, amplitude=SPEECH_AMPLITUDE)]
    )
    async with FakeExotel(url, sample_rate=rate, encoding=encoding, caller_audio=caller) as exotel:
        exotel.press_at("#", HASH_AT)
        await exotel.run(until=CALL_LIMIT)
    report = exotel.result
    # Each part is the first loud audio after the moment that caused it: the greeting has finished
    # and the echo of silence is silent before the caller speaks.
    return Heard(report, report.onset(), report.onset(after=SPEECH_AT), report.onset(after=HASH_AT))


@pytest.fixture(scope="module")
def heard() -> dict[tuple[int, Encoding], Heard]:
    """The scenario in every mode, called concurrently once for the module."""

    async def call_all() -> list[Heard]:
        async with serve_handler(EchoBot) as url:
            return await asyncio.gather(*(_scenario(url, rate, encoding) for rate, encoding in MODES))

    return dict(zip(MODES, asyncio.run(call_all()), strict=True))


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_the_call_goes_by_exotels_rules(
    mode: tuple[int, Encoding], heard: dict[tuple[int, Encoding], Heard]
) -> None:
    report = heard[mode].report
    assert report.violations == [], report.summary()


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_the_caller_hears_the_440_hz_greeting_as_the_call_starts(
    mode: tuple[int, Encoding], heard: dict[tuple[int, Encoding], Heard]
) -> None:
    call = heard[mode]
    assert call.greeting_at is not None and call.greeting_at < 0.3, call.report.summary()
    pitch = call.report.dominant_frequency(call.greeting_at, call.greeting_at + GREETING_SECONDS - 0.05)
    assert pitch == pytest.approx(GREETING_HZ, abs=2), call.report.summary()


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_the_callers_300_hz_tone_comes_back_at_300_hz_within_a_second(
    mode: tuple[int, Encoding], heard: dict[tuple[int, Encoding], Heard]
) -> None:
    call = heard[mode]
    assert call.echo_at is not None, call.report.summary()
    assert 0.0 < call.echo_at - SPEECH_AT < 1.0, call.report.summary()
    echo = call.report.heard_between(call.echo_at + 0.05, call.echo_at + SPEECH_SECONDS - 0.05)
    assert dominant_frequency(echo, call.report.sample_rate) == pytest.approx(SPEECH_HZ, abs=2)
    spoken_rms = SPEECH_AMPLITUDE * 32767 / math.sqrt(2)
    assert 20 * math.log10(_rms(echo) / spoken_rms) == pytest.approx(0.0, abs=1.0)  # same loudness


@pytest.mark.parametrize("mode", MODES, ids=_mode_id)
def test_hash_plays_the_880_hz_goodbye_then_the_bot_hangs_up_once_it_was_heard(
    mode: tuple[int, Encoding], heard: dict[tuple[int, Encoding], Heard]
) -> None:
    call = heard[mode]
    report = call.report
    assert call.goodbye_at is not None and call.goodbye_at - HASH_AT < 1.0, report.summary()
    pitch = report.dominant_frequency(call.goodbye_at, call.goodbye_at + GOODBYE_SECONDS - 0.05)
    assert pitch == pytest.approx(GOODBYE_HZ, abs=2), report.summary()
    assert (report.hung_up_by, report.close_code) == ("bot", 1000), report.summary()
    goodbye_end = call.goodbye_at + GOODBYE_SECONDS
    assert report.audio_cut == 0.0, report.summary()
    assert goodbye_end - 0.01 <= report.duration < goodbye_end + 0.5, report.summary()


async def test_a_caller_who_hangs_up_during_the_greeting_ends_the_bots_call_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The greeting the bot awaits is interrupted by the hang-up, so on_stop runs at once."""
    # Only bounds how long a stuck handler would hold the server open if this failed (10 s otherwise).
    monkeypatch.setattr(voicebot.call, "HANDLER_GRACE_SECONDS", 1.0)
    stopped = asyncio.Event()

    class EchoBotThatNotices(EchoBot):
        async def on_stop(self, call: Call, reason: str) -> None:
            stopped.set()

    async with serve_handler(EchoBotThatNotices) as url:
        async with FakeExotel(url) as exotel:
            await exotel.run(until=GREETING_SECONDS / 2)  # then hang up: stop (callended), close 1000
        assert exotel.result.hung_up_by == "caller"
        async with asyncio.timeout(3 * GREETING_SECONDS):
            await stopped.wait()


# ------------------------------------------------------------------------------- the README example


async def test_echo_bot_greets_repeats_the_caller_and_hangs_up_on_hash() -> None:
    caller = np.concatenate([silence(1.0, 8000), tone(300, 0.5, 8000)])  # says "hello" at 1.0 s
    async with serve_handler(EchoBot) as url, FakeExotel(url, caller_audio=caller) as exotel:
        exotel.press_at("#", 2.5)  # stream time, in seconds
        await exotel.wait_closed(timeout=10)  # the bot hangs up after its goodbye
    report = exotel.result
    assert report.ok, report.summary()  # no protocol violations
    assert report.dominant_frequency(0.0, 0.4) == pytest.approx(440, abs=5)  # the greeting
    echo = report.onset(after=1.0)  # when the caller first heard something after speaking
    assert echo is not None and echo - 1.0 < 1.0
    assert report.dominant_frequency(echo, echo + 0.4) == pytest.approx(300, abs=5)
    assert (report.hung_up_by, report.close_code) == ("bot", 1000)


def test_the_readme_shows_this_example_as_it_is_here() -> None:
    """The README's pytest example is the test above, verbatim: a developer copying it copies a
    passing test."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("### In pytest", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    example = block[block.index("async def test_echo_bot_greets") :].strip()
    assert example in Path(__file__).read_text()
    imports = "\n".join(line for line in block.splitlines() if line.startswith(("import ", "from ")))
    exec(imports, {})  # and its imports work
