"""Every bot in ``handlers/`` against FakeExotel in strict mode, through the real server, in every mode.

Each bot is served in-process (``serve_handler``) and called once per stream rate (8, 16, 24 kHz) ×
encoding (PCM16, μ-law) × wire variant (the documented shape, integer scalars, camelCase keys, custom
parameters as a JSON or query string, no ``stream_sid``, a URL ``sample-rate`` that disagrees with
``start``, a rate given by the URL only). The caller presses ``1`` while the bots are still talking
(barge-in for the menu) and ``#`` later. All calls run at once, in real time, on one event loop: the
module takes about as long as the longest call.

What a caller or Exotel would notice is asserted per call: no broken rule (strict validation, chunks
under 3 200 bytes included), a clean end, audio that never runs dry mid-utterance, and the same sound
whatever the wire variant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Final

import numpy as np
import pytest

import handlers
from voicebot.events import Encoding
from voicebot.handler import Handler
from voicebot.pacing import DEFAULT_MARGIN
from voicebot.testing import (
    BotProtocolError,
    CallReport,
    FakeExotel,
    Playout,
    WireOptions,
    parse_dtmf_script,
    serve_handler,
)

RATES: Final = (8000, 16000, 24000)
ENCODINGS: Final = (Encoding.PCM16, Encoding.MULAW)
DTMF_SCRIPT: Final = "1@1.0,#@2.5"
#: The caller hangs up here if the bot has not (the bots below hang up on '#' well before).
CALL_LIMIT: Final = 6.0
#: Mid-utterance, the bot's next chunk must arrive with at least this much audio still queued at
#: Exotel: less, and ordinary network jitter on a real call cuts a gap into the bot's speech.
MIN_LEAD: Final = 0.01
#: Bots whose documented behaviour is to hang up (close 1000) once '#' has been answered.
HANGS_UP_ON_HASH: Final = frozenset({"handlers.echo.EchoBot", "handlers.menu.MenuBot"})
PARAMS: Final = {"tenant": "acme", "lang": "hi"}
#: The calls' ``start`` messages are spread over this many seconds (``WireOptions.start_delay``), as
#: real calls never arrive in the same millisecond: in lockstep, a hundred bots synthesising prompts
#: at the same instant stall the one shared event loop for tens of milliseconds.
STAGGER: Final = 0.8


def _other_rate(rate: int) -> int:
    return 16000 if rate == 8000 else 8000


#: name → the WireOptions for a stream at a given rate.
VARIANTS: Final = {
    "documented": lambda rate: WireOptions(),
    "int-scalars": lambda rate: WireOptions(int_scalars=True),
    "camel-case": lambda rate: WireOptions(camel_case=True),
    "params-json": lambda rate: WireOptions(custom_parameters_format="json"),
    "params-query": lambda rate: WireOptions(custom_parameters_format="query"),
    "no-stream-sid": lambda rate: WireOptions(omit_stream_sid=True),
    "url-rate-disagrees": lambda rate: WireOptions(url_sample_rate=_other_rate(rate)),
    "rate-in-url-only": lambda rate: WireOptions(omit_start_sample_rate=True),
}


def discover_handlers() -> list[type[Handler]]:
    """Every Handler subclass defined in a module of the ``handlers`` package."""
    found: list[type[Handler]] = []
    for info in pkgutil.iter_modules(handlers.__path__, f"{handlers.__name__}."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Handler) and value is not Handler and value.__module__ == module.__name__:
                found.append(value)
    return sorted(found, key=_full_name)


def _full_name(handler: type[Handler]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


@dataclass(frozen=True)
class Case:
    """One call: which bot, in which mode."""

    handler: type[Handler]
    rate: int
    encoding: Encoding
    variant: str

    @property
    def id(self) -> str:
        return f"{self.handler.__name__}-{self.rate // 1000}k-{self.encoding.value}-{self.variant}"

    @property
    def baseline(self) -> Case:
        return Case(self.handler, self.rate, self.encoding, "documented")


@dataclass
class Outcome:
    """What one call produced: its report, and whatever FakeExotel raised (strict mode, or a bug)."""

    report: CallReport
    error: BaseException | None
    loop_lag: float = 0.0
    """The longest the test's own event loop (servers and callers together) was late while this
    bot's calls ran: lateness of that size comes from the machine, not from the bot's pacing."""


HANDLERS: Final = discover_handlers()
CASES: Final = [
    Case(handler, rate, encoding, variant)
    for handler in HANDLERS
    for rate in RATES
    for encoding in ENCODINGS
    for variant in VARIANTS
]


async def _max_loop_lag(period: float = 0.005) -> float:
    """How late a periodic timer on this loop ever fired, until cancelled (then returned)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    try:
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            worst = max(worst, loop.time() - due)
    except asyncio.CancelledError:
        return worst


def _case_param(case: Case) -> object:
    return pytest.param(case, id=case.id)


def _handler_param(handler: type[Handler]) -> object:
    return pytest.param(handler, id=handler.__name__)


async def _call(url: str, case: Case, start_delay: float) -> Outcome:
    exotel = FakeExotel(
        url,
        sample_rate=case.rate,
        encoding=case.encoding,
        wire=dataclasses.replace(VARIANTS[case.variant](case.rate), start_delay=start_delay),
        custom_parameters=PARAMS,
        strict=True,
        strict_minimum=True,
    )
    error: BaseException | None = None
    try:
        async with exotel:
            for digit, at in parse_dtmf_script(DTMF_SCRIPT):
                exotel.press_at(digit, at)
            await exotel.run(until=CALL_LIMIT)
    except Exception as exc:  # recorded, then asserted on per case with the report beside it
        error = exc
    return Outcome(exotel.result, error)


async def _call_every_bot() -> dict[Case, Outcome]:
    delays = {case: STAGGER * index / len(CASES) for index, case in enumerate(_interleaved(CASES))}

    async def serve(handler: type[Handler]) -> list[tuple[Case, Outcome]]:
        mine = [case for case in CASES if case.handler is handler]
        lag = asyncio.create_task(_max_loop_lag())
        try:
            async with serve_handler(handler) as url:
                outcomes = await asyncio.gather(*(_call(url, case, delays[case]) for case in mine))
        finally:
            lag.cancel()
        worst = await lag
        return [
            (case, dataclasses.replace(out, loop_lag=worst)) for case, out in zip(mine, outcomes, strict=True)
        ]

    # One bot at a time: the calls of every bot at once would load the one event loop shared by
    # servers and callers in proportion to the number of bots, and lateness would come from the test.
    return {case: outcome for handler in HANDLERS for case, outcome in await serve(handler)}


def _interleaved(cases: list[Case]) -> list[Case]:
    """The cases with each bot's calls spread evenly among the others'."""
    by_handler = [[case for case in cases if case.handler is handler] for handler in HANDLERS]
    return sorted(cases, key=lambda case: by_handler[HANDLERS.index(case.handler)].index(case))


@pytest.fixture(scope="module")
def outcomes() -> dict[Case, Outcome]:
    """Every case, called concurrently once for the whole module."""
    return asyncio.run(_call_every_bot())


def _explain(case: Case, outcome: Outcome) -> str:
    return f"{case.id}:\n{outcome.report.summary()}\nerror: {outcome.error!r}"


# ------------------------------------------------------------------------------------------ the bots


def test_every_bot_in_handlers_is_called() -> None:
    names = {_full_name(handler) for handler in HANDLERS}
    assert names >= HANGS_UP_ON_HASH
    assert len(CASES) == len(HANDLERS) * len(RATES) * len(ENCODINGS) * len(VARIANTS)


@pytest.mark.parametrize("case", [_case_param(case) for case in CASES])
def test_the_bot_breaks_none_of_exotels_rules(case: Case, outcomes: dict[Case, Outcome]) -> None:
    outcome = outcomes[case]
    assert not isinstance(outcome.error, BotProtocolError), _explain(case, outcome)
    assert outcome.error is None, _explain(case, outcome)
    assert outcome.report.violations == [], _explain(case, outcome)
    assert outcome.report.chunks, _explain(case, outcome)  # it spoke, so its audio was checked


@pytest.mark.parametrize("case", [_case_param(case) for case in CASES])
def test_the_call_ends_cleanly(case: Case, outcomes: dict[Case, Outcome]) -> None:
    report = outcomes[case].report
    explanation = _explain(case, outcomes[case])
    assert report.close_code == 1000, explanation
    if _full_name(case.handler) in HANGS_UP_ON_HASH:
        assert report.hung_up_by == "bot", explanation
        assert report.duration < CALL_LIMIT, explanation
    else:
        assert report.hung_up_by in ("bot", "caller"), explanation
    if report.hung_up_by == "bot":
        # Hang up after the goodbye: everything the bot queued was heard, its last mark echoed.
        assert report.audio_cut == 0.0, explanation
        assert all(mark.echoed_at is not None or mark.cleared for mark in report.marks), explanation


@pytest.mark.parametrize("handler", [_handler_param(handler) for handler in HANDLERS])
def test_the_bots_audio_never_runs_dry_mid_utterance(
    handler: type[Handler], outcomes: dict[Case, Outcome]
) -> None:
    """Checked per bot over all its calls (one verdict per bot keeps a known failure to one line)."""
    failing = [
        f"{case.id}: min lead {outcome.report.min_lead} with the test's loop up to {outcome.loop_lag} s late"
        for case, outcome in outcomes.items()
        if case.handler is handler and _runs_dry(outcome)
    ]
    assert failing == []


def _runs_dry(outcome: Outcome) -> bool:
    min_lead = outcome.report.min_lead
    if outcome.loop_lag >= DEFAULT_MARGIN - MIN_LEAD:
        # The loop stalled for longer than the pacer's margin: the cushion a real-time producer
        # keeps is gone, and rebuilding it costs one deliberate gap. Nothing to judge the bot by.
        return False
    return min_lead is not None and min_lead < MIN_LEAD - outcome.loop_lag


@pytest.mark.parametrize("case", [_case_param(case) for case in CASES if case.variant != "documented"])
def test_every_wire_variant_sounds_like_the_documented_shape(
    case: Case, outcomes: dict[Case, Outcome]
) -> None:
    """The bot's first words have the same pitch whatever the spelling, so a bot that took its rate
    from the wrong place (speaking 8 kHz audio into a 16 kHz stream) fails here."""
    report, baseline = outcomes[case].report, outcomes[case.baseline].report
    onset, baseline_onset = report.onset(), baseline.onset()
    assert (onset is None) == (baseline_onset is None), _explain(case, outcomes[case])
    if onset is None or baseline_onset is None:
        return
    pitch = report.dominant_frequency(onset, onset + 0.15)
    expected = baseline.dominant_frequency(baseline_onset, baseline_onset + 0.15)
    assert expected is not None
    assert pitch == pytest.approx(expected, rel=0.02), _explain(case, outcomes[case])


# ------------------------------------------------------------------------- the measurement it relies on


def _chunk(seconds: float, rate: int = 8000) -> np.ndarray:
    return np.full(round(seconds * rate), 1000, dtype=np.int16)


def test_lead_is_measured_for_chunks_that_continue_an_utterance() -> None:
    playout = Playout(8000)
    first = playout.add_chunk(_chunk(0.2), 0.0)
    second = playout.add_chunk(_chunk(0.2), 0.05)  # 0.15 s of the first still to play
    third = playout.add_chunk(_chunk(0.2), 0.40)  # just in time: the queue ends at 0.40
    assert first.lead_at_arrival is None  # an utterance starts: nothing to run dry yet
    assert second.lead_at_arrival == pytest.approx(0.15)
    assert third.lead_at_arrival == pytest.approx(0.0)
    assert playout.underruns == []


def test_a_late_chunk_has_a_negative_lead_equal_to_the_underrun() -> None:
    playout = Playout(8000)
    playout.add_chunk(_chunk(0.2), 0.0)
    late = playout.add_chunk(_chunk(0.2), 0.25)
    (underrun,) = playout.underruns
    assert late.lead_at_arrival == pytest.approx(-0.05)
    assert underrun.duration == pytest.approx(0.05)


def test_a_mark_or_a_long_pause_starts_a_new_utterance_with_no_lead() -> None:
    playout = Playout(8000)
    playout.add_chunk(_chunk(0.2), 0.0)
    playout.add_mark("end-of-prompt", 0.0)
    after_mark = playout.add_chunk(_chunk(0.2), 0.5)
    after_pause = playout.add_chunk(_chunk(0.2), 0.7 + 1.5)  # 1.5 s of silence: a pause, not a gap
    assert after_mark.lead_at_arrival is None
    assert after_pause.lead_at_arrival is None
    assert playout.underruns == []


def test_the_report_gives_the_least_lead_and_its_summary_shows_it() -> None:
    playout = Playout(8000)
    playout.add_chunk(_chunk(0.2), 0.0)
    playout.add_chunk(_chunk(0.2), 0.1)
    playout.add_chunk(_chunk(0.2), 0.37)  # 0.03 s to spare
    report = _report(playout, duration=1.0)
    assert report.min_lead == pytest.approx(0.03)
    assert "max lead 0.300 s, min lead 0.030 s mid-utterance" in report.summary()
    assert _report(Playout(8000), duration=1.0).min_lead is None


def _report(playout: Playout, duration: float) -> CallReport:
    return CallReport(
        sample_rate=playout.sample_rate,
        encoding=Encoding.PCM16,
        stream_sid="s",
        call_sid="c",
        duration=duration,
        heard=playout.track(duration),
        violations=[],
        chunks=list(playout.chunks),
        marks=list(playout.marks),
        clears=list(playout.clears),
        underruns=list(playout.underruns),
        sent=[],
        dropped_chunks=[],
        duplicated_chunks=[],
        hung_up_by="caller",
        hangup_reason="callended",
        close_code=1000,
        close_reason="",
        audio_cut=playout.cut_seconds,
        max_lead=playout.max_lead,
    )
