"""The collections bot on a real socket, driven by FakeExotel: the keys, barge-in, silence, a caller who
hangs up, and the outcome recorded where the campaign finds it (its store, by the call's job id)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from handlers.collections import CollectionsBot
from voicebot.campaign.contacts import Contact
from voicebot.campaign.store import SqliteStore
from voicebot.config import ServeConfig
from voicebot.dialer.callbacks import StatusEvent
from voicebot.dialer.ops import handler_status_callback
from voicebot.server import Server
from voicebot.testing import CallReport, FakeExotel, serve_handler

TIMEOUT = 15.0
NOTE = 0.06  # short prompts keep the calls quick
CUSTOMER = Contact(row=2, customer_id="cust-7", number="+919812345678", params={"amount": "4500"})


@asynccontextmanager
async def campaign_call(
    tmp_path: Path, **bot_attributes: object
) -> AsyncIterator[tuple[FakeExotel, SqliteStore, str]]:
    """A store holding one claimed attempt, the bot bound to it, and a live call carrying its job id."""
    store = SqliteStore(tmp_path / "campaign.sqlite")
    store.add_contacts([CUSTOMER], 0.0)
    # The store's times are wall-clock seconds, as the bot's are.
    attempt = store.claim(time.time(), channels=1, lease_seconds=600.0, holder="test")
    assert attempt is not None
    bot = CollectionsBot.using(store.path, note_seconds=NOTE, **{"silence_timeout": 0.4, **bot_attributes})
    async with Server(bot, ServeConfig(host="127.0.0.1", port=0)) as server:
        params = {"job": attempt.id, "customer_id": CUSTOMER.customer_id, "amount": "4500"}
        url = f"ws://127.0.0.1:{server.port}/exotel/ws/test"
        async with FakeExotel(url, custom_parameters=params) as exotel:
            store.dial_placed(attempt.id, exotel.call_sid, time.time())
            yield exotel, store, attempt.id
        await server.drain(TIMEOUT)  # the handler has finished: its last writes are in the store


KEY_AT = 0.4


def goodbye_seconds(digit: str) -> float:
    """How long the bot's goodbye after ``digit`` lasts."""
    bot = CollectionsBot.using("unused", note_seconds=NOTE)()
    text = {"1": "Thank you. We have noted that you will pay today. Goodbye."}.get(
        digit, "Thank you. An agent will call you back. Goodbye."
    )
    return len(bot.speak(text)) / bot.sample_rate


def outcome_of(store: SqliteStore) -> str | None:
    (record,) = store.contacts()
    return record.outcome


def heard_seconds(report: CallReport, after: float) -> float:
    """Seconds of audible bot audio the caller heard after stream time ``after``."""
    start = round(after * report.sample_rate)
    loud = np.abs(report.heard[start:].astype(np.int32)) > 1000
    return float(loud.sum()) / report.sample_rate


@pytest.mark.parametrize(("digit", "outcome"), [("1", "confirmed"), ("2", "callback")])
async def test_a_key_during_the_reminder_interrupts_it_records_the_outcome_and_the_bot_hangs_up(
    tmp_path: Path, digit: str, outcome: str
) -> None:
    async with campaign_call(tmp_path) as (exotel, store, _):
        exotel.press_at(digit, KEY_AT)
        await exotel.wait_closed(TIMEOUT)
        report = exotel.report()
    assert report.ok, report.summary()
    assert report.hung_up_by == "bot"
    assert len(report.clears) == 1  # barge-in
    assert outcome_of(store) == outcome
    # The rest of the reminder and the menu were skipped: the goodbye came right after the key ...
    assert report.duration < KEY_AT + 0.6 + goodbye_seconds(digit)
    # ... and was heard in full before the socket closed.
    assert report.audio_cut == 0.0
    tones = goodbye_seconds(digit) * NOTE / (NOTE + 0.03)  # the goodbye's audible part
    assert heard_seconds(report, report.clears[0].at) > 0.8 * tones


async def test_silence_re_prompts_once_then_says_goodbye_and_records_no_response(tmp_path: Path) -> None:
    async with campaign_call(tmp_path) as (exotel, store, _):
        await exotel.wait_closed(TIMEOUT)
        report = exotel.report()
    assert report.ok and report.hung_up_by == "bot"
    assert outcome_of(store) == "no-response"
    assert report.clears == []
    # Reminder + menu, the menu again, the goodbye: three stretches of audio separated by the waits.
    loud = np.abs(report.heard.astype(np.int32)) > 1000
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)) == 1)
    gaps = np.diff(edges) / report.sample_rate
    assert (gaps > 0.35).sum() == 2
    assert report.audio_cut == 0.0


async def test_another_key_repeats_the_menu_and_a_choice_still_counts(tmp_path: Path) -> None:
    async with campaign_call(tmp_path) as (exotel, store, _):
        exotel.press_at("5", 0.3)
        exotel.press_at("2", 1.2)
        await exotel.wait_closed(TIMEOUT)
        report = exotel.report()
    assert report.ok and report.hung_up_by == "bot"
    assert outcome_of(store) == "callback"


async def test_a_caller_who_hangs_up_before_choosing_leaves_hung_up_and_frees_the_channel(
    tmp_path: Path,
) -> None:
    async with campaign_call(tmp_path) as (exotel, store, _):
        await exotel.run(until=0.5)
        assert store.progress(time.time() + 60).in_progress == 1  # the channel is held for the call
        await exotel.hangup()
        ended = time.time()
    assert outcome_of(store) == "hung-up"
    # The stream's end cut the lease to the grace period, not the call's TimeLimit.
    grace = store.policy().stream_end_grace
    assert store.progress(ended + grace + 1.0).in_progress == 0


async def test_without_a_campaign_the_bot_still_works(tmp_path: Path) -> None:
    bot = CollectionsBot.using(tmp_path / "unused.sqlite", note_seconds=NOTE)
    async with serve_handler(bot) as url, FakeExotel(url, custom_parameters={"customer_id": "c1"}) as exotel:
        exotel.press_at("1", 0.3)
        await exotel.wait_closed(TIMEOUT)
        report = exotel.report()
    assert report.ok and report.hung_up_by == "bot"


async def test_status_callbacks_reaching_the_bots_server_are_written_to_the_campaign(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "campaign.sqlite")
    store.add_contacts([CUSTOMER], 0.0)
    attempt = store.claim(time.time(), channels=1, lease_seconds=600.0, holder="test")
    assert attempt is not None
    hook = handler_status_callback(CollectionsBot.using(store.path))
    assert hook is not None
    await hook(StatusEvent(call_sid="sid-9", event_type="terminal", status="busy", custom_field=attempt.id))
    (record,) = store.contacts()
    assert (record.call_sids, record.status) == (("sid-9",), "busy")
    assert handler_status_callback(CollectionsBot) is not None  # unbound: accepted, writes nothing
    await CollectionsBot.on_status(StatusEvent(call_sid="sid-1", event_type="terminal", status="busy"))
