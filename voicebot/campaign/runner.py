"""The campaign runner: dial every contact once (plus retries), under two separate limits.

* **Requests**: one :class:`~voicebot.campaign.bucket.TokenBucket` (Exotel's 200 per minute by default)
  shared by every API request the runner makes — dials and Call Details look-ups — through the
  ``Dialer``'s throttle hook.
* **Channels**: at most ``channels`` calls at once, held as leases in the store. A lease is taken when a
  contact is claimed and released by the call's terminal status callback, shortened by the end of its
  stream, and expires on its own after ``TimeOut + TimeLimit + margin``, so a crashed runner never
  leaks a channel.

Crash safety: the attempt (with its id) is written to the store *before* the dial request is sent,
and the id travels as the call's ``CustomField`` and as the ``job`` custom parameter of its stream URL,
so whichever process gets the callback or the stream finds the attempt. A runner that starts on a
store with attempts whose dial never got an answer (``intent``/``unknown``) asks Exotel first
(``Dialer.reconcile``) and never dials that contact again until the look-up has settled it; a call
whose end went unheard (callback lost) is looked up with ``get_call``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from voicebot.campaign.bucket import TokenBucket
from voicebot.campaign.contacts import bot_parameters
from voicebot.campaign.store import Attempt, CampaignStore, Progress
from voicebot.dialer.api import CallResource, ConnectRequest, lower_keys
from voicebot.dialer.callbacks import StatusEvent
from voicebot.dialer.client import Dialer
from voicebot.dialer.config import ExotelConfig
from voicebot.dialer.errors import (
    AuthError,
    ExotelApiError,
    NotFound,
    OutcomeUnknown,
    PaymentRequired,
    RateLimited,
    RequestRejected,
    Unreachable,
    ValidationError,
)
from voicebot.dialer.ops import OpsServer, StatusCallback, StatusReceiver
from voicebot.errors import ConfigError, VoicebotError

__all__ = [
    "CampaignHalted",
    "CampaignRunner",
    "DialSettings",
    "RateLimiter",
    "RunnerConfig",
    "run_campaign",
    "store_status_callback",
]

log = logging.getLogger("voicebot.campaign")

Clock = Callable[[], float]


class CampaignHalted(VoicebotError):
    """Exotel refused the account itself (credentials, permission, balance): no dial can succeed."""


class RateLimiter:
    """The asyncio side of a :class:`TokenBucket`: ``await limiter()`` before each request.

    Waits until the request's booked moment (a deadline from the bucket, not a fixed pause); pass it
    as ``Dialer(throttle=limiter)`` so dials and look-ups share one budget.
    """

    def __init__(self, bucket: TokenBucket, clock: Clock | None = None) -> None:
        self.bucket = bucket
        self._clock = clock
        self.requests = 0

    async def __call__(self) -> None:
        clock = self._clock or asyncio.get_running_loop().time
        delay = self.bucket.reserve(clock())
        self.requests += 1
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True, kw_only=True)
class DialSettings:
    """What every dial of the campaign sends (Exotel's parameters, §7.2).

    ``stream_url`` gets ``job``, ``customer_id`` and the contact's extra columns as query parameters;
    ``status_callback`` is the full callback URL (with its token).
    """

    caller_id: str
    stream_url: str
    status_callback: str
    sample_rate: int | None = None
    record: bool = True
    recording_channels: str | None = None
    time_limit: int = 600
    time_out: int = 30
    lease_margin: float = 60.0

    def __post_init__(self) -> None:
        # Fail at start-up, not at the first dial: build one request with a placeholder contact.
        self.build("0" * 16, "09000000000", "x", {})
        if self.lease_margin < 0:
            raise ConfigError(f"lease_margin: must be >= 0 seconds, got {self.lease_margin}")

    @property
    def lease_seconds(self) -> float:
        """How long a channel lease lasts at most: ringing, the longest call, and a margin."""
        return self.time_out + self.time_limit + self.lease_margin

    def build(self, job_id: str, number: str, customer_id: str, params: Mapping[str, str]) -> ConnectRequest:
        """The dial request for one attempt: ``job_id`` in the CustomField and the stream URL's query."""
        return ConnectRequest(
            to=number,
            caller_id=self.caller_id,
            stream_url=self.stream_url,
            sample_rate=self.sample_rate,
            custom_parameters=bot_parameters(job_id, customer_id, params),
            record=self.record,
            recording_channels=self.recording_channels,
            time_limit=self.time_limit,
            time_out=self.time_out,
            custom_field=job_id,
            status_callback=self.status_callback,
            status_callback_events=("answered", "terminal"),
        )

    def request(self, attempt: Attempt) -> ConnectRequest:
        """The dial request of ``attempt``."""
        return self.build(attempt.id, attempt.number, attempt.customer_id, attempt.params)


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    """How the runner paces itself.

    ``channels``: calls at once. ``rate_per_minute``/``burst``: the request budget (see
    :class:`TokenBucket`). ``recheck_seconds``: how soon a call Exotel has not settled is looked up
    again. ``poll_interval``: the longest the runner goes without reading the store, for changes made
    by other processes (a stream ending on another server); changes made in this process wake it at
    once. ``holder``: this runner's name on its leases.
    """

    channels: int = 1
    rate_per_minute: float = 200
    burst: int = 10
    recheck_seconds: float = 15.0
    poll_interval: float = 1.0
    holder: str = field(default_factory=lambda: f"runner-{secrets.token_hex(4)}")

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 10_000:
            raise ConfigError(f"channels: must be 1-10000, got {self.channels}")
        if not self.recheck_seconds > 0 or not self.poll_interval > 0:
            raise ConfigError("recheck_seconds and poll_interval: must be > 0 seconds")
        TokenBucket(self.rate_per_minute, burst=self.burst)  # validates both


def store_status_callback(
    store: CampaignStore, *, clock: Clock = time.time, on_change: Callable[[], None] | None = None
) -> StatusCallback:
    """A status callback for ``StatusReceiver.add_callback(…, before_ack=True)`` that writes each
    event to ``store`` before Exotel gets its 200, so an event is never acknowledged and then lost.
    ``on_change`` is called after a new event (e.g. a runner's ``wake``)."""

    async def write(event: StatusEvent) -> None:
        if store.record_event(event, clock()) and on_change is not None:
            on_change()

    return write


class CampaignRunner:
    """Dials the campaign in ``store`` until every contact is done; see the module docstring.

    ``dialer`` must use a throttle shared with anything else that calls Exotel for this account (see
    :class:`RateLimiter`). ``clock`` gives wall-clock seconds (leases are shared between processes).
    ``on_progress`` is called with fresh counts whenever the runner has acted.
    """

    def __init__(
        self,
        store: CampaignStore,
        dialer: Dialer,
        settings: DialSettings,
        config: RunnerConfig | None = None,
        *,
        clock: Clock = time.time,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.settings = settings
        self.config = config or RunnerConfig()
        self._clock = clock
        self._on_progress = on_progress
        self._wake = asyncio.Event()
        self._dialling: set[str] = set()
        self._checking: set[str] = set()
        self._halted: CampaignHalted | None = None
        self.dials = 0
        """Dial requests this runner sent."""
        self.lookups = 0
        """Look-ups (reconcile, Call Details) this runner made."""

    def wake(self) -> None:
        """Something changed in the store (an event, a stream's end): look again now."""
        self._wake.set()

    async def run(self) -> Progress:
        """Dial until every contact is done; returns the final counts. Cancel it to stop: the store
        keeps everything a new runner needs to continue without dialling anyone twice."""
        try:
            return await self._run()
        except* CampaignHalted as halted:
            raise halted.exceptions[0] from None

    async def _run(self) -> Progress:
        # Callbacks may have come while no runner listened: look each open call up once.
        self.store.recheck_open_calls(self._clock())
        async with asyncio.TaskGroup() as group:
            while True:
                self._wake.clear()
                if self._halted is not None:
                    raise self._halted
                now = self._clock()
                self.store.expire_leases(now)
                busy = self._dialling | self._checking
                for due in self.store.due_checks(now, exclude=busy):
                    self._checking.add(due.id)
                    group.create_task(self._check(due), name=f"campaign-check-{due.id}")
                while (
                    attempt := self.store.claim(
                        now,
                        channels=self.config.channels,
                        lease_seconds=self.settings.lease_seconds,
                        holder=self.config.holder,
                    )
                ) is not None:
                    self._dialling.add(attempt.id)
                    group.create_task(self._dial(attempt), name=f"campaign-dial-{attempt.id}")
                progress = self.store.progress(now)
                if self._on_progress is not None:
                    self._on_progress(progress)
                if progress.remaining == 0 and not self._dialling and not self._checking:
                    return progress
                await self._wait(now)
        raise AssertionError("unreachable")  # the loop returns from inside the task group

    async def _wait(self, now: float) -> None:
        """Until woken, or the next moment the store says something is due (bounded by the poll)."""
        timeout = self.config.poll_interval
        deadline = self.store.next_deadline(now)
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - now))
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _dial(self, attempt: Attempt) -> None:
        try:
            await self._dial_once(attempt)
        finally:
            self._dialling.discard(attempt.id)
            self.wake()

    async def _dial_once(self, attempt: Attempt) -> None:
        store = self.store
        try:
            request = self.settings.request(attempt)
        except ValidationError as exc:
            store.dial_not_placed(attempt.id, self._clock(), reason=str(exc), retry_at=None, status="invalid")
            log.error("contact %s: cannot be dialled: %s", attempt.customer_id, exc)
            return
        try:
            self.dials += 1
            call = await self.dialer.place(request)
        except OutcomeUnknown as exc:
            log.warning("contact %s: dial outcome unknown (%s); looking it up", attempt.customer_id, exc)
            store.dial_unknown(attempt.id, exc.call_sid, str(exc), self._clock())
        except RateLimited as exc:
            wait = exc.retry_after if exc.retry_after is not None else self.config.recheck_seconds
            store.dial_not_placed(attempt.id, self._clock(), reason=str(exc), retry_at=self._clock() + wait)
        except (AuthError, PaymentRequired) as exc:
            # Stop claiming before the released contact could be claimed again; the loop raises.
            self._halted = CampaignHalted(f"Exotel refused the account: {exc}")
            self._halted.__cause__ = exc
            store.dial_not_placed(attempt.id, self._clock(), reason=str(exc), retry_at=self._clock())
        except RequestRejected as exc:
            log.error("contact %s: dial refused: %s", attempt.customer_id, exc)
            store.dial_not_placed(
                attempt.id, self._clock(), reason=str(exc), retry_at=None, status="rejected"
            )
        except Unreachable as exc:
            log.warning("Exotel unreachable (%s); contact %s is retried", exc, attempt.customer_id)
            retry_at = self._clock() + self.config.recheck_seconds
            store.dial_not_placed(attempt.id, self._clock(), reason=str(exc), retry_at=retry_at)
        else:
            store.dial_placed(attempt.id, call.sid, self._clock())
            log.info(
                "contact %s: dialled, call %s", attempt.customer_id, call.sid, extra={"call_sid": call.sid}
            )

    async def _check(self, attempt: Attempt) -> None:
        try:
            await self._check_once(attempt)
        except ExotelApiError as exc:
            log.warning("look-up of attempt %s failed (%s); trying again later", attempt.id, exc)
            self.store.postpone_check(attempt.id, self._clock() + self.config.recheck_seconds)
        finally:
            self._checking.discard(attempt.id)
            self.wake()

    async def _check_once(self, attempt: Attempt) -> None:
        """Settle an attempt from Exotel's side: did the dial place a call, and has it ended?"""
        store, dialer = self.store, self.dialer
        self.lookups += 1
        if attempt.state in ("intent", "unknown"):
            if attempt.call_sid is not None:
                try:
                    found = await dialer.get_call(attempt.call_sid, details=True)
                except NotFound:
                    found = None
            else:
                sent_at = datetime.datetime.fromtimestamp(attempt.created_at, datetime.UTC)
                unknown = OutcomeUnknown(
                    "the runner stopped before the dial's answer was recorded",
                    request=self.settings.request(attempt),
                    sent_at=sent_at,
                )
                found = await dialer.reconcile(unknown, known_sids=store.call_sids_of(attempt.contact_id))
            now = self._clock()
            if found is None:
                settle_at = attempt.created_at + store.policy().settle_seconds
                if now >= settle_at:
                    log.info("contact %s: no call was placed; it will be dialled again", attempt.customer_id)
                    store.dial_not_placed(
                        attempt.id, now, reason="no such call at Exotel", retry_at=now, limited=True
                    )
                else:
                    store.postpone_check(attempt.id, min(settle_at, now + self.config.recheck_seconds))
                return
            log.info("contact %s: the dial had placed call %s", attempt.customer_id, found.sid)
            store.dial_placed(attempt.id, found.sid, now)
        else:
            assert attempt.call_sid is not None
            found = await dialer.get_call(attempt.call_sid, details=True)
            now = self._clock()
        if found.terminal:
            store.record_event(_terminal_event(found), now, source="lookup")
        else:
            # Still live: look again later, less often the longer it lasts (its lease frees the channel
            # on time regardless).
            wait = max(self.config.recheck_seconds, now - attempt.created_at)
            store.postpone_check(attempt.id, now + wait)


def _terminal_event(call: CallResource) -> StatusEvent:
    """A terminal ``StatusEvent`` built from a Call Details answer (when the callback never came)."""
    conversation = None
    if call.details is not None:
        value = lower_keys(call.details).get("conversationduration")
        conversation = value if isinstance(value, int) else None
    return StatusEvent(
        call_sid=call.sid,
        event_type="terminal",
        status=call.status,
        duration=call.duration,
        conversation_duration=conversation,
        recording_url=call.recording_url,
        fields=dict(call.raw),
    )


async def run_campaign(
    store: CampaignStore,
    exotel: ExotelConfig,
    settings: DialSettings,
    config: RunnerConfig | None = None,
    *,
    receiver: StatusReceiver,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock = time.time,
    on_progress: Callable[[Progress], None] | None = None,
    on_started: Callable[[CampaignRunner, OpsServer], None] | None = None,
) -> Progress:
    """Run a campaign end to end in this process: an ops server on ``host:port`` receiving the status
    callbacks into ``store`` (acknowledged only once written), one request budget shared by every API
    request, and a :class:`CampaignRunner`. Returns the final counts; cancel it to stop."""
    config = config or RunnerConfig()
    limiter = RateLimiter(TokenBucket(config.rate_per_minute, burst=config.burst))
    async with OpsServer(receiver, host=host, port=port) as ops, Dialer(exotel, throttle=limiter) as dialer:
        runner = CampaignRunner(store, dialer, settings, config, clock=clock, on_progress=on_progress)
        remove = receiver.add_callback(
            store_status_callback(store, clock=clock, on_change=runner.wake), before_ack=True
        )
        try:
            if on_started is not None:
                on_started(runner, ops)
            return await runner.run()
        finally:
            remove()
