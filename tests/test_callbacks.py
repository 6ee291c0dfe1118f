"""Status callbacks: the pure parser in all three encodings, and the ops server over real HTTP (token,
duplicates, acknowledgement, readiness, metrics, the Handler hook)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.dialer.callbacks import (
    MAX_CALLBACK_BYTES,
    Leg,
    StatusEvent,
    parse_status_callback,
    parse_status_fields,
    unflatten,
)
from voicebot.dialer.errors import InvalidCallback
from voicebot.dialer.ops import (
    Metric,
    OpsServer,
    StatusReceiver,
    check_status_token,
    handler_status_callback,
    render_metrics,
)
from voicebot.emulator import encode_callback, flatten_fields
from voicebot.errors import ConfigError
from voicebot.handler import Handler

SID = "c0ffee11223344556677889900aabbcc"
TOKEN = "s3cret-token-0123456789"
#: exotel-protocol.md §8.3's JSON example.
TERMINAL = {
    "CallSid": SID,
    "EventType": "terminal",
    "Status": "completed",
    "DateCreated": "2026-08-20 10:15:02",
    "DateUpdated": "2026-08-20 10:19:47",
    "StartTime": "2026-08-20 10:15:02",
    "EndTime": "2026-08-20 10:19:47",
    "From": "09812345678",
    "To": "",
    "PhoneNumberSid": "08045678901",
    "Direction": "outbound-api",
    "ConversationDuration": 262,
    "CustomField": "order-5531",
    "RecordingUrl": "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acmecorp1/c0ffee.mp3",
    "Legs": [{"OnCallDuration": 270, "Status": "completed", "AnsweredBy": "Human"}],
}
#: The same callback as Exotel's form encodings send it: written out by hand, not by our encoder.
TERMINAL_FORM = (
    f"CallSid={SID}&EventType=terminal&Status=completed&DateCreated=2026-08-20+10%3A15%3A02"
    "&DateUpdated=2026-08-20+10%3A19%3A47&StartTime=2026-08-20+10%3A15%3A02&EndTime=2026-08-20+10%3A19%3A47"
    "&From=09812345678&To=&PhoneNumberSid=08045678901&Direction=outbound-api&ConversationDuration=262"
    "&CustomField=order-5531&RecordingUrl=https%3A%2F%2Fs3-ap-southeast-1.amazonaws.com%2Fexotelrecordings"
    "%2Facmecorp1%2Fc0ffee.mp3&Legs[0][OnCallDuration]=270&Legs[0][Status]=completed&Legs[0][AnsweredBy]=Human"
)


def multipart(pairs: list[tuple[str, str]], boundary: str = "XyZ-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body written out by hand, as a browser or Exotel would send it."""
    body = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in pairs
    )
    return (body + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def assert_is_the_terminal_example(event: StatusEvent) -> None:
    assert event.key == (SID, "terminal") and event.terminal
    assert event.status == "completed"
    assert event.conversation_duration == 262
    assert event.custom_field == "order-5531"
    assert event.recording_url == TERMINAL["RecordingUrl"]
    assert (event.from_number, event.to_number, event.phone_number_sid) == (
        "09812345678",
        None,
        "08045678901",
    )
    assert event.direction == "outbound-api"
    assert event.start_time == "2026-08-20 10:15:02" and event.end_time == "2026-08-20 10:19:47"
    assert event.legs == (Leg(status="completed", on_call_duration=270, answered_by="Human"),)
    assert event.answered_by == "Human"


# ------------------------------------------------------------------------------------------- parsing


def test_json_callback() -> None:
    event = parse_status_callback(json.dumps(TERMINAL).encode(), "application/json; charset=utf-8")
    assert_is_the_terminal_example(event)
    assert event.fields["Legs"] == TERMINAL["Legs"]


def test_urlencoded_callback_rebuilds_flattened_legs() -> None:
    event = parse_status_callback(TERMINAL_FORM.encode(), "application/x-www-form-urlencoded")
    assert_is_the_terminal_example(event)
    assert event.fields["Legs"] == [{"OnCallDuration": "270", "Status": "completed", "AnsweredBy": "Human"}]


def test_urlencoded_callback_with_percent_encoded_brackets() -> None:
    encoded = TERMINAL_FORM.replace("[", "%5B").replace("]", "%5D")
    assert_is_the_terminal_example(
        parse_status_callback(encoded.encode(), "application/x-www-form-urlencoded")
    )


def test_multipart_callback_rebuilds_flattened_legs() -> None:
    body, content_type = multipart(urllib.parse.parse_qsl(TERMINAL_FORM, keep_blank_values=True))
    assert_is_the_terminal_example(parse_status_callback(body, content_type))


def test_multipart_variants_other_clients_send() -> None:
    boundary = "b0undary"
    body = (
        "a preamble to ignore\n"
        f"--{boundary}\n"
        f'Content-Disposition: form-data; name="CallSid"\n\n{SID}\n'
        f"--{boundary}\n"
        "Content-Disposition: form-data; name=Status\n\ncompleted\n"  # LF only, unquoted name
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="CustomField"\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "ऑर्डर-7\r\nsecond line\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="Legs[0][Status]"; filename="x.txt"\r\n\r\n'
        "completed\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    event = parse_status_callback(body, f'multipart/form-data; boundary="{boundary}"')
    assert event.key == (SID, "terminal") and event.status == "completed"
    assert event.custom_field == "ऑर्डर-7\r\nsecond line"
    assert event.legs == (Leg(status="completed"),)


async def test_multipart_from_another_client_library_over_http() -> None:
    receiver = StatusReceiver(TOKEN)
    seen: list[StatusEvent] = []

    async def record(event: StatusEvent) -> None:
        seen.append(event)

    receiver.add_callback(record)
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in urllib.parse.parse_qsl(TERMINAL_FORM, keep_blank_values=True):
        form.add_field(name, value)
    async with ops_server(receiver) as (ops, session):
        assert await post_form(session, ops.url(receiver.path_for()), form) == 200
    (event,) = seen
    assert_is_the_terminal_example(event)


def test_the_three_encodings_give_equal_events() -> None:
    json_event, form_event, multipart_event = (
        parse_status_callback(*encode_callback(TERMINAL, encoding))
        for encoding in ("json", "urlencoded", "multipart")
    )
    assert_is_the_terminal_example(json_event)
    assert json_event == form_event == multipart_event


def test_several_legs_are_ordered_by_index_and_empty_status_means_not_attempted() -> None:
    form = (
        f"CallSid={SID}&EventType=terminal&Status=busy"
        "&Legs[1][Status]=&Legs[0][Status]=busy&Legs[0][OnCallDuration]=0"
    )
    event = parse_status_callback(form.encode(), "application/x-www-form-urlencoded")
    assert event.legs == (Leg(status="busy", on_call_duration=0), Leg(status=None))
    nulls = parse_status_fields(
        {"CallSid": SID, "Status": "failed", "Legs": [{"Status": "null"}, {"Status": None}]}
    )
    assert [leg.status for leg in nulls.legs] == [None, None]


def test_legs_sent_as_one_json_field_are_read() -> None:
    form = urllib.parse.urlencode(
        {"CallSid": SID, "Status": "completed", "Legs": json.dumps(TERMINAL["Legs"])}
    )
    event = parse_status_callback(form.encode(), "application/x-www-form-urlencoded")
    assert event.legs == (Leg(status="completed", on_call_duration=270, answered_by="Human"),)


def test_default_fields_only_callback_reads_as_terminal() -> None:
    # Only StatusCallback was set: no EventType, the four default fields (§8.2).
    body = f"CallSid={SID}&DateUpdated=2026-08-20+10%3A19%3A47&Status=busy&RecordingUrl="
    event = parse_status_callback(body.encode(), "application/x-www-form-urlencoded")
    assert event.key == (SID, "terminal") and event.status == "busy"
    assert event.recording_url is None and event.legs == ()


def test_event_type_and_keys_are_case_insensitive() -> None:
    event = parse_status_fields({"callsid": SID, "EVENTTYPE": "Answered", "status": "In-Progress"})
    assert event.key == (SID, "answered") and event.status == "in-progress" and not event.terminal


def test_numbers_may_be_strings_or_ints_and_unknown_fields_are_kept() -> None:
    event = parse_status_fields(
        {"CallSid": SID, "Status": "completed", "ConversationDuration": "12.0", "PreSignedRecordingUrl": "x"}
    )
    assert event.conversation_duration == 12 and event.fields["PreSignedRecordingUrl"] == "x"


def test_content_type_missing_is_sniffed() -> None:
    assert_is_the_terminal_example(parse_status_callback(json.dumps(TERMINAL).encode(), None))
    assert_is_the_terminal_example(parse_status_callback(TERMINAL_FORM.encode(), ""))


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"Status": "completed"}', "application/json", "no CallSid"),
        (b"{not json", "application/json", "JSON body does not parse"),
        (b"[1, 2]", "application/json", "not an object"),
        (b"Status=busy", "application/x-www-form-urlencoded", "no CallSid"),
        (b"--x\r\n", "multipart/form-data", "without a boundary"),
        (b"\xff\xfe", "application/x-www-form-urlencoded", "not valid utf-8"),
        (b"x" * (MAX_CALLBACK_BYTES + 1), "application/json", "over"),
    ],
)
def test_unreadable_bodies_raise_invalid_callback(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InvalidCallback, match=message):
        parse_status_callback(body, content_type)


def test_unflatten_builds_lists_and_objects() -> None:
    pairs = [
        ("StatusCallbackEvents[]", "answered"),
        ("StatusCallbackEvents[]", "terminal"),
        ("A[x][0]", "1"),
        ("B", "2"),
    ]
    assert unflatten(pairs) == {"StatusCallbackEvents": ["answered", "terminal"], "A": {"x": ["1"]}, "B": "2"}


_KEYS = st.text(alphabet=st.characters(categories=["L"]), min_size=1, max_size=6)
_LEAVES = st.text(max_size=8)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3) | st.dictionaries(_KEYS, inner, min_size=1, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
@settings(max_examples=200, deadline=None)
def test_flatten_then_unflatten_is_the_identity(fields: dict[str, Any]) -> None:
    assert unflatten(flatten_fields(fields)) == fields


@given(
    st.binary(max_size=300),
    st.sampled_from(
        [
            None,
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
            "text/plain; charset=latin-1",
            "multipart/form-data",
        ]
    ),
)
@settings(max_examples=300, deadline=None)
def test_any_body_parses_or_raises_invalid_callback(body: bytes, content_type: str | None) -> None:
    try:
        event = parse_status_callback(body, content_type)
    except InvalidCallback:
        return
    assert event.call_sid


# ---------------------------------------------------------------------------------------- ops server


@asynccontextmanager
async def ops_server(
    receiver: StatusReceiver, **options: Any
) -> AsyncIterator[tuple[OpsServer, aiohttp.ClientSession]]:
    async with OpsServer(receiver, **options) as ops, aiohttp.ClientSession() as session:
        yield ops, session


async def post_form(session: aiohttp.ClientSession, url: str, form: aiohttp.FormData) -> int:
    async with session.post(url, data=form) as response:
        await response.read()
        return response.status


async def post(session: aiohttp.ClientSession, url: str, body: bytes, content_type: str) -> int:
    async with session.post(url, data=body, headers={"Content-Type": content_type}) as response:
        await response.read()
        return response.status


async def test_accepted_events_reach_callbacks_once_duplicates_are_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="voicebot.ops")
    receiver = StatusReceiver(TOKEN)
    seen: list[StatusEvent] = []

    async def record(event: StatusEvent) -> None:
        seen.append(event)

    receiver.add_callback(record)
    answered = {"CallSid": SID, "EventType": "answered", "Status": "in-progress"}
    async with ops_server(receiver) as (ops, session):
        url = ops.url(receiver.path_for())
        for _ in range(3):  # Exotel's two retries
            assert await post(session, url, json.dumps(TERMINAL).encode(), "application/json") == 200
        form, content_type = encode_callback(TERMINAL, "urlencoded")
        assert await post(session, url, form, content_type) == 200  # the same event in another encoding
        assert await post(session, url, json.dumps(answered).encode(), "application/json") == 200
    # Closing the server let queued events reach their callbacks.
    assert [event.key for event in seen] == [(SID, "terminal"), (SID, "answered")]
    assert receiver.counts == {"accepted": 2, "duplicate": 3}
    accepted = [r for r in caplog.records if r.name == "voicebot.ops" and getattr(r, "event_type", None)]
    assert [(r.call_sid, r.event_type, r.status) for r in accepted] == [  # type: ignore[attr-defined]
        (SID, "terminal", "completed"),
        (SID, "answered", "in-progress"),
    ]
    assert accepted[0].custom_field == "order-5531"  # type: ignore[attr-defined]


async def test_wrong_token_gets_404_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    receiver = StatusReceiver(TOKEN)
    seen: list[StatusEvent] = []

    async def record(event: StatusEvent) -> None:
        seen.append(event)

    receiver.add_callback(record)
    async with ops_server(receiver) as (ops, session):
        body = json.dumps(TERMINAL).encode()
        assert (
            await post(session, ops.url("/exotel/status/not-the-right-token"), body, "application/json")
            == 404
        )
        assert await post(session, ops.url("/exotel/status/"), body, "application/json") == 404
    assert seen == [] and receiver.counts["bad_token"] == 1
    assert any("wrong token" in r.getMessage() for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_unreadable_body_gets_400() -> None:
    receiver = StatusReceiver(TOKEN)
    async with ops_server(receiver) as (ops, session):
        url = ops.url(receiver.path_for())
        assert await post(session, url, b'{"Status": "busy"}', "application/json") == 400
        assert await post(session, url, b"x" * (MAX_CALLBACK_BYTES + 10), "application/json") == 413
    assert receiver.counts["invalid"] == 1


async def test_before_ack_failure_answers_500_and_the_retry_is_processed() -> None:
    receiver = StatusReceiver(TOKEN)
    stored: list[StatusEvent] = []
    after: list[StatusEvent] = []
    failures = [RuntimeError("database is locked")]

    async def store(event: StatusEvent) -> None:
        if failures:
            raise failures.pop()
        stored.append(event)

    async def notify(event: StatusEvent) -> None:
        after.append(event)

    receiver.add_callback(store, before_ack=True)
    receiver.add_callback(notify)
    async with ops_server(receiver) as (ops, session):
        url = ops.url(receiver.path_for())
        body = json.dumps(TERMINAL).encode()
        assert await post(session, url, body, "application/json") == 500
        assert await post(session, url, body, "application/json") == 200
        assert await post(session, url, body, "application/json") == 200
    assert len(stored) == 1 and len(after) == 1
    assert receiver.counts == {"failed": 1, "accepted": 1, "duplicate": 1}


async def test_a_duplicate_arriving_while_the_first_is_being_stored_waits_for_its_answer() -> None:
    receiver = StatusReceiver(TOKEN)
    release = asyncio.Event()
    entered = asyncio.Event()
    stored: list[StatusEvent] = []

    async def slow_store(event: StatusEvent) -> None:
        entered.set()
        await release.wait()
        stored.append(event)

    receiver.add_callback(slow_store, before_ack=True)
    async with ops_server(receiver) as (ops, session):
        url = ops.url(receiver.path_for())
        body = json.dumps(TERMINAL).encode()
        first = asyncio.create_task(post(session, url, body, "application/json"))
        await entered.wait()
        second = asyncio.create_task(post(session, url, body, "application/json"))
        async with asyncio.timeout(5):
            # The receiver exposes no event for "a duplicate is waiting"; yield until its counter shows it.
            while receiver.counts["duplicate"] == 0:  # noqa: ASYNC110
                await asyncio.sleep(0)
        assert not second.done()
        release.set()
        assert await first == 200 and await second == 200
    assert len(stored) == 1 and receiver.counts == {"accepted": 1, "duplicate": 1}


async def test_watch_call_sees_only_its_call() -> None:
    receiver = StatusReceiver(TOKEN)
    watched: list[StatusEvent] = []

    async def watch(event: StatusEvent) -> None:
        watched.append(event)

    unwatch = receiver.watch_call(SID, watch)
    other = {**TERMINAL, "CallSid": "f" * 32}
    async with ops_server(receiver) as (ops, session):
        url = ops.url(receiver.path_for())
        await post(session, url, json.dumps(other).encode(), "application/json")
        await post(session, url, json.dumps(TERMINAL).encode(), "application/json")
        await receiver._queue.join()
        unwatch()
        await post(
            session, url, json.dumps({**TERMINAL, "EventType": "answered"}).encode(), "application/json"
        )
    assert [event.key for event in watched] == [(SID, "terminal")]


async def test_a_failing_callback_is_logged_and_the_next_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    receiver = StatusReceiver(TOKEN)
    after: list[StatusEvent] = []

    async def broken(event: StatusEvent) -> None:
        raise ValueError("bug in the app")

    async def fine(event: StatusEvent) -> None:
        after.append(event)

    receiver.add_callback(broken)
    receiver.add_callback(fine)
    async with ops_server(receiver) as (ops, session):
        assert (
            await post(
                session, ops.url(receiver.path_for()), json.dumps(TERMINAL).encode(), "application/json"
            )
            == 200
        )
    assert len(after) == 1
    assert any("failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_readyz_healthz_and_metrics() -> None:
    draining = False
    receiver = StatusReceiver(TOKEN)
    extra = [Metric("voicebot_calls_active", "gauge", "Calls being served now", 3)]
    async with ops_server(receiver, ready=lambda: not draining, metrics=lambda: extra) as (ops, session):
        async with session.get(ops.url("/readyz")) as response:
            assert response.status == 200
        draining = True
        async with session.get(ops.url("/readyz")) as response:
            assert response.status == 503 and "draining" in await response.text()
        async with session.get(ops.url("/healthz")) as response:
            assert response.status == 200
        await post(session, ops.url(receiver.path_for()), json.dumps(TERMINAL).encode(), "application/json")
        async with session.get(ops.url("/metrics")) as response:
            text = await response.text()
    assert 'voicebot_status_callbacks_total{outcome="accepted"} 1' in text
    assert "# TYPE voicebot_status_callbacks_total counter" in text
    assert "voicebot_calls_active 3" in text


def test_metrics_text_format() -> None:
    text = render_metrics(
        [Metric("a_total", "counter", "A", 1.0, {"k": 'v"1'}), Metric("a_total", "counter", "A", 2.5)]
    )
    assert text == '# HELP a_total A\n# TYPE a_total counter\na_total{k="v\\"1"} 1\na_total 2.5\n'


def test_status_token_rules() -> None:
    assert check_status_token("a" * 16) == "a" * 16
    for bad in ("short", "has/slash-0123456789", "x" * 129):
        with pytest.raises(ConfigError, match="status_token"):
            check_status_token(bad)
    assert "s3cret" not in repr(StatusReceiver(TOKEN))


# ------------------------------------------------------------------------------------ the Handler hook


def test_handler_on_status_hook_must_belong_to_the_class() -> None:
    class Static(Handler):
        @staticmethod
        async def on_status(event: StatusEvent) -> None:
            pass

    class ClassLevel(Handler):
        @classmethod
        async def on_status(cls, event: StatusEvent) -> None:
            pass

    class PerInstance(Handler):
        async def on_status(self, event: StatusEvent) -> None:
            pass

    class NotAsync(Handler):
        @staticmethod
        def on_status(event: StatusEvent) -> None:
            pass

    assert handler_status_callback(Handler) is None
    assert handler_status_callback(Static) is not None
    assert handler_status_callback(ClassLevel) is not None
    with pytest.raises(ConfigError, match="staticmethod or @classmethod"):
        handler_status_callback(PerInstance)
    with pytest.raises(ConfigError, match="async def"):
        handler_status_callback(NotAsync)
