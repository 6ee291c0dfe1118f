"""One shared clock for every call of a server.

Calls do not each run a timer task: each tells the ``Ticker`` when it next has work (a chunk may be
sent, a jitter-buffer frame is due, a partial chunk must be flushed), and the ticker's single task
wakes at the earliest deadline and runs every due call's ``tick(now)``. Deadlines are absolute times
on the loop's clock, so pacing never drifts; deadlines that fall within ``resolution`` of each other
are served by one wake-up, which is what keeps the cost per call low when thousands are live.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Protocol

__all__ = ["Tickable", "Ticker"]

log = logging.getLogger("voicebot.ticker")


class Tickable(Protocol):
    """Something the ticker can drive."""

    async def tick(self, now: float) -> float | None:
        """Do whatever is due at ``now``; return the next deadline, or None when idle.

        Must not block: the ticker awaits each due client in turn.
        """
        ...


class Ticker:
    """Wakes each registered client at the deadlines it asks for, from one task."""

    def __init__(self, *, resolution: float = 0.002) -> None:
        self.resolution = resolution
        self._heap: list[tuple[float, int, Tickable]] = []
        self._deadline: dict[Tickable, float] = {}
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")  # when the timer fires (inf: no timer)
        self._soon = False  # a wake-up is already queued for the next loop iteration
        self.wakeups = 0
        self.ticks = 0

    def schedule(self, client: Tickable, when: float) -> None:
        """Ask for ``client.tick`` at ``when`` (or earlier if it already asked for earlier)."""
        current = self._deadline.get(client)
        if current is not None and current <= when:
            return
        self._deadline[client] = when
        heapq.heappush(self._heap, (when, next(self._order), client))
        if when < self._armed_for:
            self._arm(when)

    def discard(self, client: Tickable) -> None:
        """Forget ``client``; any deadline it had is dropped."""
        self._deadline.pop(client, None)

    def _arm(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        if when <= loop.time():
            # Due already (a call that just got audio to send): wake on the next iteration and leave
            # the timer armed for the later deadline, rather than re-creating it for every such call.
            if not self._soon:
                self._soon = True
                loop.call_soon(self._wake.set)
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_for = float("inf")
        self._wake.set()

    async def run(self) -> None:
        """Serve deadlines until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._soon = False
            self.wakeups += 1
            now = loop.time()
            horizon = now + self.resolution
            while self._heap and self._heap[0][0] <= horizon:
                when, _, client = heapq.heappop(self._heap)
                if self._deadline.get(client) != when:
                    continue  # superseded by an earlier request, or discarded
                del self._deadline[client]
                self.ticks += 1
                try:
                    # Deadlines within `resolution` are served now: `horizon` is the time they see.
                    next_deadline = await client.tick(horizon)
                except Exception:
                    log.exception("tick failed for %r", client)
                    continue
                if next_deadline is not None:
                    # Never again within this pass: a client that keeps asking for "now" must not
                    # be able to spin the loop without yielding.
                    self.schedule(client, max(next_deadline, horizon + self.resolution / 2))
            while self._heap and self._deadline.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # drop stale entries so they cause no wake-ups
            if self._heap and self._heap[0][0] < self._armed_for:
                self._arm(self._heap[0][0])
