"""The token bucket under Exotel's request limit: explicit ``now`` values only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.campaign.bucket import TokenBucket
from voicebot.errors import ConfigError


def test_a_burst_goes_at_once_then_requests_are_spaced_by_the_refill_rate() -> None:
    bucket = TokenBucket(200, burst=10, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(10)] == [0.0] * 10
    spacing = 60.0 / 190
    waits = [bucket.reserve(0.0) for _ in range(3)]
    assert waits == pytest.approx([spacing, 2 * spacing, 3 * spacing])


def test_booked_requests_are_served_in_order_and_idle_time_refills_up_to_the_burst() -> None:
    bucket = TokenBucket(70, burst=10, now=0.0)  # refills one token a second
    for _ in range(10):
        bucket.reserve(0.0)
    assert bucket.reserve(0.0) == pytest.approx(1.0)
    assert bucket.reserve(0.5) == pytest.approx(1.5)  # behind the one booked before it
    assert bucket.available(1000.0) == 10  # never more than the burst


def test_try_take_takes_nothing_when_empty() -> None:
    bucket = TokenBucket(62, burst=2, now=0.0)  # refills one token a second
    assert bucket.try_take(0.0) and bucket.try_take(0.0)
    assert not bucket.try_take(0.5)
    assert bucket.available(0.5) == pytest.approx(0.5)
    assert bucket.try_take(1.0)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(min_value=2, max_value=400),
    burst_fraction=st.floats(min_value=0.0, max_value=0.9),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=600),
)
def test_no_60_second_window_ever_sees_more_than_the_rate(
    rate: int, burst_fraction: float, gaps: list[float]
) -> None:
    burst = max(1, min(rate - 1, round(rate * burst_fraction)))
    bucket = TokenBucket(rate, burst=burst, now=0.0)
    now = 0.0
    sent: list[float] = []
    for gap in gaps:
        now += gap
        sent.append(now + bucket.reserve(now))
    sent.sort()
    # Exotel counts requests in the 60 s before each one (the emulator's rule): at most `rate` of them.
    start = 0
    for end, moment in enumerate(sent):
        while sent[start] <= moment - 60.0 + 1e-9:
            start += 1
        assert end - start + 1 <= rate


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-5, 1), (200, 0), (200, 200), (10, 11)])
def test_impossible_settings_are_refused_naming_the_parameter(rate: float, burst: int) -> None:
    with pytest.raises(ConfigError, match=r"rate_per_minute|burst"):
        TokenBucket(rate, burst=burst)


@pytest.mark.parametrize("module", ["bucket", "contacts", "progress"])
def test_the_pure_campaign_modules_touch_no_clock_or_io_framework(module: str) -> None:
    path = Path(__file__).resolve().parent.parent / "voicebot" / "campaign" / f"{module}.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "time", "aiohttp", "websockets", "socket", "sqlite3"}
