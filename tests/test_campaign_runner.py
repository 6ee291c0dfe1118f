"""The runner's safety rules against the local emulator: a dial whose fate is unknown is settled by a
look-up before anything else, lost callbacks are replaced by look-ups, one request budget covers dials
and look-ups, failures that place no call are bounded, and a refused account stops the campaign."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from handlers.collections import CollectionsBot
from voicebot.campaign.bucket import TokenBucket
from voicebot.campaign.contacts import Contact
from voicebot.campaign.runner import (
    CampaignHalted,
    CampaignRunner,
    DialSettings,
    RateLimiter,
    RunnerConfig,
    store_status_callback,
)
from voicebot.campaign.store import Policy, SqliteStore
from voicebot.dialer.callbacks import StatusEvent
from voicebot.dialer.client import Dialer
from voicebot.dialer.config import ExotelConfig
from voicebot.dialer.ops import OpsServer, StatusReceiver
from voicebot.emulator import Emulator, EmulatorConfig, Scenario, Scenarios
from voicebot.testing import serve_handler

EXOPHONE = "08045678901"
TIMEOUT = 30.0
BUSY = "+919800000001"
ANSWERS = "+919800000002"
QUICK = RunnerConfig(channels=1, rate_per_minute=6000, burst=20, recheck_seconds=0.3, poll_interval=0.1)


def settings(
    bot_url: str, callback: str = "http://127.0.0.1:9/exotel/status/nobody-listens-here"
) -> DialSettings:
    # Nobody receives the callbacks unless a test says so: the runner must cope on its own.
    return DialSettings(
        caller_id=EXOPHONE,
        stream_url=bot_url,
        status_callback=callback,
        time_limit=2,
        time_out=1,
        lease_margin=0.5,
    )


def store_with(tmp_path: Path, numbers: list[str], **policy: float) -> SqliteStore:
    store = SqliteStore(tmp_path / "campaign.sqlite")
    contacts = [
        Contact(row=i + 2, customer_id=f"c{i}", number=n, params={"amount": "10"})
        for i, n in enumerate(numbers)
    ]
    store.add_contacts(contacts, 0.0)
    store.set_policy(
        Policy(**{"stream_end_grace": 0.2, "callback_grace": 0.3, "settle_seconds": 0.5, **policy})
    )  # type: ignore[arg-type]
    return store


@asynccontextmanager
async def exotel(scenarios: Scenarios) -> AsyncIterator[Emulator]:
    async with Emulator(
        EmulatorConfig(port=0, callback_retry_delay=0.05, callback_retries=0), scenarios
    ) as emulator:
        yield emulator


def calls_to(emulator: Emulator, number: str) -> int:
    return sum(1 for call in emulator.calls.values() if call.to == number)


async def test_a_runner_killed_before_sending_its_dial_is_settled_by_a_look_up_then_dialled_once(
    tmp_path: Path,
) -> None:
    store = store_with(tmp_path, [BUSY])
    async with exotel(Scenarios(Scenario(outcome="busy", ring_seconds=0.05))) as emulator:
        blocked = asyncio.Event()

        async def never() -> None:  # the process dies here: after the intent, before the request
            blocked.set()
            await asyncio.Event().wait()

        async with Dialer(emulator.exotel_config(), throttle=never) as stuck:
            first = asyncio.create_task(
                CampaignRunner(store, stuck, settings("ws://127.0.0.1:9/ws"), QUICK).run()
            )
            async with asyncio.timeout(TIMEOUT):
                await blocked.wait()
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        assert [a["state"] for a in store.attempts_of("c0")] == ["intent"]
        assert store.progress(0.0).in_progress == 1  # its channel is still leased

        async with Dialer(emulator.exotel_config()) as dialer:
            runner = CampaignRunner(store, dialer, settings("ws://127.0.0.1:9/ws"), QUICK)
            async with asyncio.timeout(TIMEOUT):
                await runner.run()
    assert [a["state"] for a in store.attempts_of("c0")] == ["not-placed", "ended"]
    assert runner.lookups >= 1 and runner.dials == 1
    assert calls_to(emulator, BUSY) == 1
    (record,) = store.contacts()
    assert (record.status, record.attempts) == ("busy", 1)


async def test_lost_callbacks_are_replaced_by_call_details_look_ups_sharing_one_request_budget(
    tmp_path: Path,
) -> None:
    db = tmp_path / "campaign.sqlite"
    store = store_with(tmp_path, [BUSY, ANSWERS])
    scenarios = Scenarios(
        Scenario(ring_seconds=0.05, hangup="bot", talk_seconds=20, dtmf="1@0.3"),
        {BUSY: Scenario(outcome="busy", ring_seconds=0.05)},
    )
    bot = CollectionsBot.using(db, note_seconds=0.05)
    async with exotel(scenarios) as emulator, serve_handler(bot) as bot_url:
        limiter = RateLimiter(TokenBucket(6000, burst=20))
        async with Dialer(emulator.exotel_config(), throttle=limiter) as dialer:
            runner = CampaignRunner(store, dialer, settings(bot_url), QUICK)
            async with asyncio.timeout(TIMEOUT):
                final = await runner.run()
        assert limiter.requests == emulator.api_requests == runner.dials + runner.lookups
    assert final.remaining == 0 and runner.lookups >= 2
    assert all(not attempt.ok for attempt in emulator.callback_attempts)  # every callback was lost
    records = {record.number: record for record in store.contacts()}
    assert (records[BUSY].status, records[ANSWERS].status, records[ANSWERS].outcome) == (
        "busy",
        "completed",
        "confirmed",
    )
    assert {event["source"] for event in store.events()} == {"lookup"}
    assert records[ANSWERS].recording_url and records[ANSWERS].duration is not None


async def test_dials_that_never_place_a_call_are_given_up_after_max_unplaced(tmp_path: Path) -> None:
    store = store_with(tmp_path, [BUSY], settle_seconds=0.0, max_unplaced=3)
    async with (
        exotel(Scenarios(Scenario(api_fault="reject_500"))) as emulator,
        Dialer(emulator.exotel_config()) as dialer,
    ):
        runner = CampaignRunner(store, dialer, settings("ws://127.0.0.1:9/ws"), QUICK)
        async with asyncio.timeout(TIMEOUT):
            await runner.run()
    assert emulator.calls == {}
    assert [a["state"] for a in store.attempts_of("c0")] == ["not-placed"] * 3
    (record,) = store.contacts()
    assert (record.state, record.status, record.attempts) == ("done", "not-placed", 0)


async def test_a_refused_account_stops_the_campaign_without_counting_an_attempt(tmp_path: Path) -> None:
    store = store_with(tmp_path, [BUSY])
    async with exotel(Scenarios()) as emulator:
        wrong = ExotelConfig(
            account_sid="emulator", api_key="emulator-key", api_token="wrong", base_url=emulator.base_url
        )
        async with Dialer(wrong) as dialer:
            runner = CampaignRunner(store, dialer, settings("ws://127.0.0.1:9/ws"), QUICK)
            with pytest.raises(CampaignHalted, match="HTTP 401"):
                async with asyncio.timeout(TIMEOUT):
                    await runner.run()
    (record,) = store.contacts()
    assert (record.state, record.attempts) == ("pending", 0)
    assert store.progress(0.0).in_progress == 0


async def test_callbacks_are_acknowledged_only_once_written_and_duplicates_are_recorded_once(
    tmp_path: Path,
) -> None:
    store = store_with(tmp_path, [BUSY])
    attempt = store.claim(1.0, channels=1, lease_seconds=100.0, holder="test")
    assert attempt is not None
    fail = [True]

    class Flaky(SqliteStore):
        def record_event(self, event: StatusEvent, now: float, *, source: str = "callback") -> bool:
            if fail[0]:
                raise sqlite3.OperationalError("database is locked")
            return super().record_event(event, now, source=source)

    flaky = Flaky(store.path)
    woken: list[bool] = []
    receiver = StatusReceiver("runner-test-token-0123456789")
    receiver.add_callback(store_status_callback(flaky, on_change=lambda: woken.append(True)), before_ack=True)
    body = json.dumps(
        {"CallSid": "sid-1", "EventType": "terminal", "Status": "busy", "CustomField": attempt.id}
    )
    async with OpsServer(receiver) as ops, aiohttp.ClientSession() as session:
        url = ops.url(receiver.path_for())
        statuses = []
        for _ in range(3):  # Exotel's first try and its two retries
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                statuses.append(response.status)
            fail[0] = False
    assert statuses == [500, 200, 200]
    assert woken == [True]
    assert [event["call_sid"] for event in store.events()] == ["sid-1"]
    (record,) = store.contacts()
    assert (record.call_sids, record.status, record.state) == (("sid-1",), "busy", "done")


async def test_a_restarted_runner_looks_up_calls_whose_callbacks_came_while_nobody_listened(
    tmp_path: Path,
) -> None:
    store = store_with(tmp_path, [BUSY, ANSWERS], retries=0)
    scenarios = Scenarios(Scenario(outcome="no-answer", ring_seconds=0.3))
    long_lease = DialSettings(
        caller_id=EXOPHONE,
        stream_url="ws://127.0.0.1:9/ws",
        status_callback="http://127.0.0.1:9/exotel/status/nobody-listens-here",
        time_limit=600,
        time_out=5,
    )
    config = RunnerConfig(channels=2, rate_per_minute=6000, burst=20, recheck_seconds=0.3, poll_interval=0.1)
    async with exotel(scenarios) as emulator, Dialer(emulator.exotel_config()) as dialer:
        placed = asyncio.Event()
        first = asyncio.create_task(
            CampaignRunner(
                store,
                dialer,
                long_lease,
                config,
                on_progress=lambda p: placed.set() if p.dialed == 2 else None,
            ).run()
        )
        async with asyncio.timeout(TIMEOUT):
            await placed.wait()
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        async with asyncio.timeout(TIMEOUT):
            for sid in list(emulator.calls):
                await emulator.wait_done(sid)  # both calls end; their callbacks reach nobody
        runner = CampaignRunner(store, dialer, long_lease, config)
        # Far sooner than the leases (over ten minutes) would have run out.
        async with asyncio.timeout(10.0):
            final = await runner.run()
    assert final.remaining == 0 and runner.dials == 0 and runner.lookups == 2
    assert [record.status for record in store.contacts()] == ["no-answer", "no-answer"]
    assert len(emulator.calls) == 2
