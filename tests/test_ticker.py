"""The shared ticker: one task serving every call's deadlines."""

from __future__ import annotations

import asyncio

import pytest

from voicebot.ticker import Ticker


class Client:
    """Records when it was ticked; asks for the deadlines given to it, one per tick."""

    def __init__(self, deadlines: list[float | None]) -> None:
        self.deadlines = deadlines
        self.ticked: list[float] = []
        self.done = asyncio.Event()

    async def tick(self, now: float) -> float | None:
        self.ticked.append(now)
        deadline = self.deadlines.pop(0) if self.deadlines else None
        if deadline is None:
            self.done.set()
        return deadline


@pytest.mark.timeout(10)
async def test_deadlines_are_served_in_order_and_not_early() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(resolution=0.002)
    runner = asyncio.create_task(ticker.run())
    base = loop.time()
    a = Client([base + 0.10, base + 0.20, None])
    b = Client([base + 0.05, None])
    ticker.schedule(a, base)
    ticker.schedule(b, base + 0.01)
    await asyncio.wait_for(asyncio.gather(a.done.wait(), b.done.wait()), 5)
    runner.cancel()
    assert len(a.ticked) == 3 and len(b.ticked) == 2
    for client, wanted in ((a, [base, base + 0.10, base + 0.20]), (b, [base + 0.01, base + 0.05])):
        for seen, deadline in zip(client.ticked, wanted, strict=True):
            assert seen >= deadline - 0.002  # never earlier than the coalescing resolution allows


@pytest.mark.timeout(10)
async def test_a_client_asking_for_now_forever_cannot_starve_the_loop() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(resolution=0.002)
    runner = asyncio.create_task(ticker.run())
    greedy = Client([loop.time()] * 10_000)
    ticker.schedule(greedy, loop.time())
    other_ran = asyncio.Event()
    loop.call_later(0.05, other_ran.set)
    await asyncio.wait_for(other_ran.wait(), 2)  # the loop still runs other callbacks
    runner.cancel()
    # Each pass serves the greedy client at most once, and passes are at least resolution/2 apart.
    assert len(greedy.ticked) < 0.2 / 0.001


@pytest.mark.timeout(10)
async def test_requests_for_now_are_served_at_once_and_keep_a_later_deadline() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker(resolution=0.002)
    runner = asyncio.create_task(ticker.run())
    later = Client([None])
    due = loop.time() + 0.1
    ticker.schedule(later, due)
    now_clients = [Client([None]) for _ in range(3)]
    for client in now_clients:
        ticker.schedule(client, loop.time())
    await asyncio.wait_for(asyncio.gather(*(client.done.wait() for client in now_clients)), 2)
    assert not later.ticked  # not early
    await asyncio.wait_for(later.done.wait(), 2)  # and not forgotten
    runner.cancel()
    assert later.ticked[0] >= due - 0.002 and len(later.ticked) == 1


@pytest.mark.timeout(10)
async def test_an_earlier_request_rearms_the_timer() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    runner = asyncio.create_task(ticker.run())
    late = Client([None])
    early = Client([None])
    ticker.schedule(late, loop.time() + 5.0)
    ticker.schedule(early, loop.time() + 0.02)
    await asyncio.wait_for(early.done.wait(), 2)
    runner.cancel()
    assert not late.ticked


@pytest.mark.timeout(10)
async def test_discarded_clients_are_not_ticked() -> None:
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    runner = asyncio.create_task(ticker.run())
    gone, kept = Client([None]), Client([None])
    ticker.schedule(gone, loop.time() + 0.01)
    ticker.schedule(kept, loop.time() + 0.03)
    ticker.discard(gone)
    await asyncio.wait_for(kept.done.wait(), 2)
    runner.cancel()
    assert not gone.ticked
