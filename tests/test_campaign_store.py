"""The campaign store: claims under a channel limit, leases that expire, events applied exactly once,
retries by outcome, correlation by job id when the Call SID is not known yet, and export data.

Every time is an explicit ``now``; two ``SqliteStore`` objects on one file stand for two processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.campaign.contacts import Contact
from voicebot.campaign.store import Attempt, Policy, SqliteStore
from voicebot.dialer.callbacks import StatusEvent
from voicebot.errors import ConfigError

LEASE = 100.0


def people(count: int) -> list[Contact]:
    return [
        Contact(row=i + 2, customer_id=f"c{i}", number=f"+91980000000{i}", params={"amount": str(i)})
        for i in range(count)
    ]


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "campaign.sqlite")
    store.add_contacts(people(3), 0.0)
    store.set_policy(Policy(retries=1, retry_delay=30.0, stream_end_grace=2.0, callback_grace=10.0))
    return store


def claim(store: SqliteStore, now: float, channels: int = 2) -> Attempt | None:
    return store.claim(now, channels=channels, lease_seconds=LEASE, holder="test")


def terminal(call_sid: str, status: str, *, job: str | None = None, **fields: object) -> StatusEvent:
    return StatusEvent(call_sid=call_sid, event_type="terminal", status=status, custom_field=job, **fields)  # type: ignore[arg-type]


def record(store: SqliteStore, customer_id: str):  # type: ignore[no-untyped-def]
    return next(r for r in store.contacts() if r.customer_id == customer_id)


def test_claims_take_contacts_in_file_order_up_to_the_channel_limit(store: SqliteStore) -> None:
    first, second = claim(store, 1.0), claim(store, 1.0)
    assert first is not None and second is not None
    assert (first.customer_id, second.customer_id) == ("c0", "c1")
    assert claim(store, 1.0) is None  # both channels leased
    # The intent to dial is durable before anything is sent: a look-up is due at once if we die now.
    assert [a.id for a in store.due_checks(1.0)] == [first.id, second.id]
    assert store.due_checks(1.0, exclude={first.id, second.id}) == []
    assert first.params == {"amount": "0"} and first.seq == 1 and first.state == "intent"


def test_a_terminal_callback_releases_the_channel_for_the_next_contact(store: SqliteStore) -> None:
    a, b = claim(store, 1.0), claim(store, 1.0)
    assert a and b
    store.dial_placed(a.id, "sid-a", 1.5)
    assert store.record_event(terminal("sid-a", "completed", job=a.id, conversation_duration=42), 5.0)
    c = claim(store, 5.0)
    assert c is not None and c.customer_id == "c2"
    assert record(store, "c0").status == "completed" and record(store, "c0").duration == 42


def test_leases_of_a_crashed_runner_expire(store: SqliteStore) -> None:
    assert claim(store, 1.0) and claim(store, 1.0)
    assert claim(store, 1.0 + LEASE - 0.1) is None
    assert store.progress(1.0 + LEASE).in_progress == 0
    assert store.expire_leases(1.0 + LEASE) == 2
    assert claim(store, 1.0 + LEASE) is not None


def test_the_stream_ending_shortens_the_lease_and_schedules_a_look_up(store: SqliteStore) -> None:
    a = claim(store, 1.0)
    assert a
    store.dial_placed(a.id, "sid-a", 1.0)
    assert store.due_checks(50.0) == []  # dialed calls are looked up only when their end goes unheard
    assert store.stream_ended(a.id, "sid-a", 20.0)
    assert store.progress(21.9).in_progress == 1 and store.progress(22.0).in_progress == 0
    assert [x.id for x in store.due_checks(30.0)] == [a.id]
    assert not store.stream_ended("no-such-job", "sid-x", 20.0)


def test_duplicate_callbacks_change_nothing(store: SqliteStore) -> None:
    a = claim(store, 1.0)
    assert a
    store.dial_placed(a.id, "sid-a", 1.0)
    assert store.record_event(terminal("sid-a", "busy", job=a.id), 2.0)
    assert not store.record_event(terminal("sid-a", "busy", job=a.id), 2.5)  # Exotel's retry
    assert not store.record_event(terminal("sid-a", "busy", job=a.id), 3.0, source="lookup")
    assert len(store.events()) == 1
    rec = record(store, "c0")
    assert (rec.state, rec.attempts, rec.status) == ("pending", 1, "busy")  # one retry scheduled, not two


def test_busy_is_retried_after_the_delay_up_to_the_limit(store: SqliteStore) -> None:
    a = claim(store, 1.0, channels=1)
    assert a
    store.dial_placed(a.id, "sid-1", 1.0)
    store.record_event(terminal("sid-1", "busy", job=a.id), 2.0)
    # Not due until the retry delay has passed; meanwhile the next contact goes.
    b = claim(store, 3.0, channels=1)
    assert b and b.customer_id == "c1"
    store.dial_placed(b.id, "sid-b", 3.0)
    store.record_event(terminal("sid-b", "completed", job=b.id), 4.0)
    c = claim(store, 4.0, channels=1)
    assert c and c.customer_id == "c2"
    store.dial_placed(c.id, "sid-c", 4.0)
    store.record_event(terminal("sid-c", "failed", job=c.id), 5.0)  # not in retry_on: done
    assert claim(store, 31.9, channels=1) is None
    again = claim(store, 32.0, channels=1)
    assert again and again.customer_id == "c0" and again.seq == 2
    store.dial_placed(again.id, "sid-2", 32.0)
    store.record_event(terminal("sid-2", "busy", job=again.id), 33.0)
    rec = record(store, "c0")
    assert (rec.state, rec.attempts, rec.call_sids, rec.status) == ("done", 2, ("sid-1", "sid-2"), "busy")
    assert claim(store, 1000.0, channels=1) is None
    assert store.finished(1000.0)
    progress = store.progress(1000.0)
    assert (progress.completed, progress.failed, progress.dialed) == (1, 2, 4)


def test_a_callback_before_the_dial_answer_is_matched_by_its_job_id(store: SqliteStore) -> None:
    a = claim(store, 1.0)
    assert a
    assert store.record_event(terminal("sid-a", "no-answer", job=a.id), 2.0)
    assert record(store, "c0").call_sids == ("sid-a",)
    store.dial_placed(a.id, "sid-a", 2.5)  # the dial's answer, late
    rec = record(store, "c0")
    assert (rec.attempts, rec.status, rec.state) == (1, "no-answer", "pending")


def test_an_event_for_an_unknown_sid_waits_until_the_dial_names_it(store: SqliteStore) -> None:
    a = claim(store, 1.0)
    assert a
    # Answered callbacks carry no CustomField: nothing to match until the SID is known.
    answered = StatusEvent(call_sid="sid-a", event_type="answered", status="in-progress")
    assert store.record_event(answered, 1.2)
    assert store.record_event(terminal("sid-a", "completed"), 1.4)
    assert record(store, "c0").state == "dialing"
    store.dial_placed(a.id, "sid-a", 1.5)
    rec = record(store, "c0")
    assert (rec.state, rec.status) == ("done", "completed")
    assert all(event["applied"] and event["attempt_id"] == a.id for event in store.events())


def test_a_dial_that_placed_nothing_does_not_count_as_an_attempt(store: SqliteStore) -> None:
    a = claim(store, 1.0, channels=1)
    assert a
    store.dial_unknown(a.id, None, "timeout", 2.0)
    assert claim(store, 2.0, channels=1) is None  # the channel stays held while in doubt
    assert [x.state for x in store.due_checks(2.0)] == ["unknown"]
    store.dial_not_placed(a.id, 70.0, reason="no such call", retry_at=70.0)
    assert store.progress(70.0).in_progress == 0
    assert record(store, "c0").attempts == 0
    claims = [claim(store, 70.0, channels=3) for _ in range(3)]
    again = next(c for c in claims if c and c.customer_id == "c0")
    assert again.seq == 2


def test_a_refused_dial_finishes_the_contact(store: SqliteStore) -> None:
    a = claim(store, 1.0)
    assert a
    store.dial_not_placed(a.id, 2.0, reason="HTTP 400: bad number", retry_at=None, status="rejected")
    rec = record(store, "c0")
    assert (rec.state, rec.status, rec.attempts) == ("done", "rejected", 0)


def test_the_bots_outcome_and_the_recording_reach_the_export(store: SqliteStore) -> None:
    a = claim(store, 1.0)
    assert a
    store.dial_placed(a.id, "sid-a", 1.0)
    assert store.record_outcome(a.id, "sid-a", "confirmed", 5.0)
    assert not store.record_outcome(a.id, "another-call", "confirmed", 5.0)
    assert not store.record_outcome("no-such-job", "sid-a", "confirmed", 5.0)
    done = terminal("sid-a", "completed", job=a.id, conversation_duration=17, recording_url="https://r/a.mp3")
    store.record_event(done, 9.0)
    rec = record(store, "c0")
    assert (rec.outcome, rec.duration, rec.recording_url) == ("confirmed", 17, "https://r/a.mp3")
    assert store.progress(9.0).outcomes == {"confirmed": 1}


def test_two_processes_never_lease_more_channels_than_allowed(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    one, two = SqliteStore(path), SqliteStore(path)
    one.add_contacts(people(5), 0.0)
    claims = [
        s.claim(1.0, channels=3, lease_seconds=LEASE, holder=name) for s, name in [(one, "a"), (two, "b")] * 3
    ]
    assert sum(c is not None for c in claims) == 3
    assert len({c.customer_id for c in claims if c}) == 3
    # An event received by one process is seen, once, by the other.
    first = next(c for c in claims if c)
    two.dial_placed(first.id, "sid-1", 2.0)
    assert one.record_event(terminal("sid-1", "completed"), 3.0)
    assert not two.record_event(terminal("sid-1", "completed"), 3.1)
    assert two.progress(3.0).completed == 1


def test_contacts_are_added_once_and_settings_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "campaign.sqlite"
    store = SqliteStore(path)
    assert store.add_contacts(people(3), 0.0) == 3
    assert store.add_contacts(people(4), 0.0) == 1
    assert store.set_meta("status_token", "first", only_if_absent=True) == "first"
    assert store.set_meta("status_token", "second", only_if_absent=True) == "first"
    store.set_policy(Policy(retries=2, retry_on=("busy",)))
    store.close()
    again = SqliteStore(path)
    assert again.policy() == Policy(retries=2, retry_on=("busy",))
    assert again.get_meta("status_token") == "first"
    assert [r.customer_id for r in again.contacts()] == ["c0", "c1", "c2", "c3"]


def test_impossible_policies_are_refused() -> None:
    with pytest.raises(ConfigError, match="retry_on"):
        Policy(retry_on=("completed",))
    with pytest.raises(ConfigError, match="retries"):
        Policy(retries=-1)
