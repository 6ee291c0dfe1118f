"""A whole campaign against the local Exotel emulator: scripted callees, the collections bot served on a
real socket, status callbacks into the store, three channels, and the runner killed and restarted
half-way. Everything runs in real time on 127.0.0.1 with short rings and prompts; the test waits on
events (progress, finished calls), never on sleeps.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from pathlib import Path

from handlers.collections import CollectionsBot
from voicebot.campaign.contacts import Contact
from voicebot.campaign.runner import CampaignRunner, DialSettings, RunnerConfig, run_campaign
from voicebot.campaign.store import Policy, Progress, SqliteStore
from voicebot.dialer.api import same_number
from voicebot.dialer.ops import OpsServer, StatusReceiver
from voicebot.emulator import Emulator, EmulatorConfig, Scenario, Scenarios
from voicebot.testing import serve_handler

TOKEN = "campaign-e2e-token-0123456789"
EXOPHONE = "08045678901"
TIMEOUT = 60.0


@dataclass(frozen=True)
class Script:
    """A callee, and what the campaign must end up with for them."""

    scenario: Scenario
    status: str
    outcome: str | None
    calls: int


RING = 0.2
PRESS_1_EARLY = Script(
    Scenario(ring_seconds=RING, hangup="bot", talk_seconds=20, dtmf="1@0.5"), "completed", "confirmed", 1
)
PRESS_1 = Script(
    Scenario(ring_seconds=RING, hangup="bot", talk_seconds=20, dtmf="1@1.8"), "completed", "confirmed", 1
)
PRESS_2 = Script(
    Scenario(ring_seconds=RING, hangup="bot", talk_seconds=20, dtmf="2@1.0"), "completed", "callback", 1
)
BUSY = Script(Scenario(outcome="busy", ring_seconds=0.1), "busy", None, 2)
NO_ANSWER = Script(Scenario(outcome="no-answer", ring_seconds=0.3), "no-answer", None, 2)
HANGS_UP = Script(Scenario(ring_seconds=RING, hangup="caller", talk_seconds=0.6), "completed", "hung-up", 1)
SILENT = Script(
    Scenario(ring_seconds=RING, hangup="bot", talk_seconds=20, caller_audio="silence"),
    "completed",
    "no-response",
    1,
)

#: The dial request reaches Exotel and places the call, but its answer never comes back.
ANSWER_LOST = Script(
    Scenario(ring_seconds=RING, hangup="bot", talk_seconds=20, dtmf="1@1.0", api_fault="timeout"),
    "completed",
    "confirmed",
    1,
)

SCRIPTS = [
    PRESS_1_EARLY, PRESS_2, BUSY, PRESS_1, HANGS_UP, NO_ANSWER, PRESS_1_EARLY, SILENT, PRESS_2, BUSY,
    ANSWER_LOST, PRESS_2, NO_ANSWER, PRESS_1_EARLY, HANGS_UP, PRESS_2, BUSY, PRESS_1, SILENT, PRESS_1_EARLY,
]  # fmt: skip


def records_key(people: list[Contact], number: str) -> str:
    return next(contact.customer_id for contact in people if contact.number == number)


def contacts() -> list[Contact]:
    return [
        Contact(
            row=index + 2,
            customer_id=f"cust-{index:02d}",
            number=f"+9198000000{index:02d}",
            params={"amount": f"{1000 + index}"},
        )
        for index in range(len(SCRIPTS))
    ]


Setup = tuple[
    list[Contact], dict[str, Script], Scenarios, Path, SqliteStore, type[CollectionsBot], RunnerConfig
]


def campaign_setup(tmp_path: Path) -> Setup:
    """The scripted contacts in a fresh store (short retries and graces), the bot bound to it, and
    runner settings for 3 channels with a bucket that never gets in the way."""
    people = contacts()
    scripts = {contact.number: script for contact, script in zip(people, SCRIPTS, strict=True)}
    scenarios = Scenarios(Scenario(), {number: script.scenario for number, script in scripts.items()})
    db = tmp_path / "campaign.sqlite"
    store = SqliteStore(db)
    store.add_contacts(people, 0.0)
    store.set_policy(
        Policy(retries=1, retry_delay=0.3, stream_end_grace=2.0, callback_grace=3.0, settle_seconds=1.0)
    )
    bot = CollectionsBot.using(db, silence_timeout=0.4, note_seconds=0.06)
    config = RunnerConfig(channels=3, rate_per_minute=6000, burst=20, recheck_seconds=0.5, poll_interval=0.1)
    return people, scripts, scenarios, db, store, bot, config


def dial_settings(bot_url: str, port: int) -> DialSettings:
    """What every dial sends: the bot's stream URL, and callbacks to the runner's receiver on ``port``."""
    return DialSettings(
        caller_id=EXOPHONE,
        stream_url=bot_url,
        status_callback=f"http://127.0.0.1:{port}/exotel/status/{TOKEN}",
        time_limit=30,
        time_out=5,
        lease_margin=5.0,
    )


async def free_ops_port() -> int:
    """A port for the runner's callback receiver: the status URL must name it before it is bound."""
    async with OpsServer(StatusReceiver(TOKEN)) as probe:
        return probe.port


async def test_a_campaign_survives_a_restart_with_every_outcome_right_and_three_channels_at_most(
    tmp_path: Path,
) -> None:
    people, scripts, scenarios, db, store, bot, config = campaign_setup(tmp_path)
    emulator_config = EmulatorConfig(port=0, callback_retry_delay=0.2)
    async with (
        Emulator(emulator_config, scenarios) as emulator,
        serve_handler(bot, path="/exotel/ws/campaign") as bot_url,
    ):
        exotel = emulator.exotel_config(request_timeout=5.0)
        ports: list[int] = []
        runners: list[CampaignRunner] = []
        half_way = asyncio.Event()
        lost = next(
            contact.number for contact, script in zip(people, SCRIPTS, strict=True) if script is ANSWER_LOST
        )

        def started(runner: CampaignRunner, ops: OpsServer) -> None:
            runners.append(runner)
            ports.append(ops.port)

        def progress(counts: Progress) -> None:
            # Kill the runner while it waits for the answer to a dial that has placed a call.
            if any(same_number(call.to, lost) for call in emulator.calls.values()):
                half_way.set()

        port = await free_ops_port()
        settings = dial_settings(bot_url, port)
        first = asyncio.create_task(
            run_campaign(
                store, exotel, settings, config, receiver=StatusReceiver(TOKEN), port=port,
                on_progress=progress, on_started=started,
            )
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            await half_way.wait()
        first.cancel()  # the runner is killed mid-campaign, its callback receiver with it
        await asyncio.gather(first, return_exceptions=True)
        before = store.progress(0.0)
        assert 0 < before.remaining < len(people)
        in_doubt = [a for a in store.attempts_of(records_key(people, lost)) if a["state"] == "intent"]
        assert len(in_doubt) == 1 and in_doubt[0]["call_sid"] is None

        async with asyncio.timeout(TIMEOUT):
            final = await run_campaign(
                SqliteStore(db), exotel, settings, config, receiver=StatusReceiver(TOKEN), port=port,
                on_started=started,
            )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            for sid in list(emulator.calls):
                await emulator.wait_done(sid)

    assert final.remaining == 0 and final.total == len(people)
    assert len(runners) == 2 and runners[1].dials > 0 and runners[1].lookups >= 1
    dialled = collections.Counter(call.to for call in emulator.calls.values())
    records = {record.number: record for record in store.contacts()}
    for number, script in scripts.items():
        record = records[number]
        calls = sum(count for to, count in dialled.items() if same_number(to, number))
        assert (record.status, record.outcome, record.attempts, calls) == (
            script.status,
            script.outcome,
            script.calls,
            script.calls,
        ), record
        assert len(record.call_sids) == script.calls
    assert emulator.max_live_calls <= 3
    assert len(emulator.calls) == sum(script.calls for script in SCRIPTS)
    # Every call's terminal event is in the log exactly once.
    terminals = [event for event in store.events() if event["event_type"] == "terminal"]
    assert sorted(event["call_sid"] for event in terminals) == sorted(emulator.calls)


async def test_a_campaign_killed_again_and_again_while_dialling_still_calls_everyone_exactly_as_scripted(
    tmp_path: Path,
) -> None:
    _, scripts, scenarios, db, store, bot, config = campaign_setup(tmp_path)
    async with (
        Emulator(EmulatorConfig(port=0, callback_retry_delay=0.2), scenarios) as emulator,
        serve_handler(bot, path="/exotel/ws/campaign") as bot_url,
    ):
        port = await free_ops_port()
        settings = dial_settings(bot_url, port)
        exotel = emulator.exotel_config(request_timeout=2.0)
        # Each runner is killed the moment it has just claimed contacts and started dialling them: its
        # dial requests are unsent or in flight, their answers unrecorded.
        kills = 0
        for threshold in (3, 8, 13, 18):
            kill = asyncio.Event()
            waiting: list[int] = []

            def progress(
                counts: Progress,
                threshold: int = threshold,
                kill: asyncio.Event = kill,
                waiting: list[int] = waiting,
            ) -> None:
                # Fewer contacts waiting than at the last look: some were just claimed and their dial
                # tasks started. Kill the runner now, its requests unsent or in flight.
                if waiting and counts.pending < waiting[-1] and counts.dialed >= threshold:
                    kill.set()
                waiting.append(counts.pending)

            run = asyncio.create_task(
                run_campaign(
                    SqliteStore(db), exotel, settings, config, receiver=StatusReceiver(TOKEN), port=port,
                    on_progress=progress,
                )
            )  # fmt: skip
            killer = asyncio.create_task(kill.wait())
            async with asyncio.timeout(TIMEOUT):
                await asyncio.wait({run, killer}, return_when=asyncio.FIRST_COMPLETED)
            killer.cancel()
            kills += not run.done()
            run.cancel()
            await asyncio.gather(run, killer, return_exceptions=True)
        assert kills >= 3
        async with asyncio.timeout(TIMEOUT):
            final = await run_campaign(
                SqliteStore(db), exotel, settings, config, receiver=StatusReceiver(TOKEN), port=port
            )
        async with asyncio.timeout(TIMEOUT):
            for sid in list(emulator.calls):
                await emulator.wait_done(sid)

    assert final.remaining == 0
    records = {record.number: record for record in store.contacts()}
    for number, script in scripts.items():
        record = records[number]
        calls = sum(1 for call in emulator.calls.values() if same_number(call.to, number))
        assert (record.status, record.outcome, record.attempts, calls) == (
            script.status,
            script.outcome,
            script.calls,
            script.calls,
        ), record
    assert emulator.max_live_calls <= 3
    terminals = [event for event in store.events() if event["event_type"] == "terminal"]
    assert sorted(event["call_sid"] for event in terminals) == sorted(emulator.calls)
