"""``CampaignHandler``: the base of bots that report back to a campaign.

A campaign's calls carry their attempt id as the ``job`` custom parameter, so the server that gets the
stream — any of several — finds the attempt in the shared store: the bot records its outcome there
(``record_outcome``), and when the stream ends the call's channel lease is shortened, so the next
contact can be dialled without waiting for a callback that may be late or lost.

The store's location is given when the class is made, never read at import time::

    Bot = CollectionsBot.using("campaign.sqlite")          # a subclass bound to that store
    async with Server(Bot, config): ...

A handler without a store (``store_path`` None), or a call without a ``job``, works as a plain bot and
only logs its outcome. Its ``on_status`` hook writes status events to the store, so the callbacks of a
campaign may also be pointed at ``serve --ops-port`` servers running the bot.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar, Self

from voicebot.call import Call
from voicebot.campaign.contacts import JOB_PARAMETER
from voicebot.campaign.store import CampaignStore, SqliteStore
from voicebot.dialer.callbacks import StatusEvent
from voicebot.handler import Handler

__all__ = ["CampaignHandler"]


class CampaignHandler(Handler):
    """A :class:`~voicebot.handler.Handler` that knows its campaign attempt (see the module docstring).

    ``store_path``: the campaign's SQLite file (set by :meth:`using`).
    """

    @staticmethod
    def clock() -> float:
        """Wall-clock seconds for the store (leases are compared across processes)."""
        return time.time()

    store_path: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.outcome: str | None = None
        self._store: CampaignStore | None = None
        self._call: Call | None = None

    @classmethod
    def using(cls, store_path: str | os.PathLike[str], **attributes: Any) -> type[Self]:
        """A subclass of this bot bound to the campaign store at ``store_path``; ``attributes`` override
        class attributes (e.g. ``silence_timeout=3.0``)."""
        unknown = sorted(name for name in attributes if not hasattr(cls, name))
        if unknown:
            raise AttributeError(f"{cls.__name__} has no attribute(s) {', '.join(unknown)}")
        namespace: dict[str, Any] = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "store_path": os.fspath(store_path),
            **attributes,
        }
        return type(cls.__name__, (cls,), namespace)

    @classmethod
    async def on_status(cls, event: StatusEvent) -> None:
        """Write a status event to the campaign store, so ``serve --ops-port`` servers can receive a
        campaign's callbacks too (any of them: the store is shared)."""
        if cls.store_path is None:
            return
        store = SqliteStore(cls.store_path)
        try:
            store.record_event(event, cls.clock())
        finally:
            store.close()

    def job_id(self, call: Call) -> str | None:
        """The campaign attempt this call belongs to (the ``job`` custom parameter), if any."""
        return call.custom_parameters.get(JOB_PARAMETER) or None

    def _campaign_store(self) -> CampaignStore | None:
        if self._store is None and self.store_path is not None:
            self._store = SqliteStore(self.store_path)
        return self._store

    def record_outcome(self, call: Call, outcome: str) -> None:
        """Record what the call achieved (``confirmed``, ``callback`` …) where the campaign finds it."""
        self.outcome = outcome
        job = self.job_id(call)
        call.log.info("outcome: %s (job %s)", outcome, job or "-")
        store = self._campaign_store()
        if store is None or job is None:
            return
        if not store.record_outcome(job, call.call_sid, outcome, self.clock()):
            call.log.warning("outcome %s: the campaign has no job %r", outcome, job)

    async def run(self, call: Call) -> None:
        """Run the hooks; when the stream is over, tell the campaign (its channel can be reused)."""
        try:
            await super().run(call)
        finally:
            job = self.job_id(call) if call.start_event is not None else None
            store = self._campaign_store()
            try:
                if store is not None and job is not None:
                    store.stream_ended(job, call.call_sid, self.clock())
            finally:
                if store is not None:
                    store.close()
                self._store = None
