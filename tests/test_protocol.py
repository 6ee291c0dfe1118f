"""The sans-I/O stream protocol: tolerant reading, strict writing, the stream's order."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot import protocol as protocol_module
from voicebot.errors import LocalProtocolError, RemoteProtocolError
from voicebot.events import Clear, Connected, Dtmf, Encoding, Mark, Media, Start, Stop, Unknown
from voicebot.protocol import (
    DEFAULT_SESSION_LIMIT,
    SESSION_LIMIT_REASON,
    TRANSITIONS,
    StreamProtocol,
    StreamState,
    _b64decode_nothing,
    _b64encode_binascii,
    _parse_any_message,
    _parse_documented_media,
    parse_custom_parameters,
    parse_message,
    rate_from_url,
    remote_end_reason,
    resolve_stream_format,
)

SID = "4b1f0c9e2d7a4e55a0c3f2b8d61e9a70"
CALL = "c0ffee11223344556677889900aabbcc"


def start_message(**media_format: Any) -> dict[str, Any]:
    return {
        "event": "start",
        "sequence_number": "1",
        "stream_sid": SID,
        "start": {
            "stream_sid": SID,
            "call_sid": CALL,
            "account_sid": "acmecorp1",
            "from": "+919812345678",
            "to": "+918045678901",
            "custom_parameters": {"tenant": "acme", "lang": "hi"},
            "media_format": media_format
            or {"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "16"},
        },
    }


def media_message(payload: bytes, seq: Any = "7", chunk: Any = "6", timestamp: Any = "600") -> str:
    return json.dumps(
        {
            "event": "media",
            "sequence_number": seq,
            "stream_sid": SID,
            "media": {"chunk": chunk, "timestamp": timestamp, "payload": base64.b64encode(payload).decode()},
        }
    )


# --- reading each message ---------------------------------------------------------------------------


def test_start_documented_shape() -> None:
    event = parse_message(json.dumps(start_message()))
    assert event == Start(
        stream_sid=SID,
        call_sid=CALL,
        account_sid="acmecorp1",
        from_number="+919812345678",
        to_number="+918045678901",
        custom_parameters={"tenant": "acme", "lang": "hi"},
        encoding=Encoding.PCM16,
        sample_rate=16000,
        rate_source="media_format",
        media_encoding="audio/x-raw",
        sequence_number=1,
    )


def test_start_camel_case_fallback() -> None:
    message = {
        "event": "start",
        "sequenceNumber": 1,
        "streamSid": SID,
        "start": {
            "callSid": CALL,
            "accountSid": "acme",
            "customParameters": "a=1&b=two",
            "mediaFormat": {"encoding": "raw", "sampleRate": 24000},
        },
    }
    event = parse_message(json.dumps(message))
    assert isinstance(event, Start)
    assert (event.stream_sid, event.call_sid, event.account_sid) == (SID, CALL, "acme")
    assert event.custom_parameters == {"a": "1", "b": "two"}
    assert event.sample_rate == 24000
    assert event.sequence_number == 1


def test_media_numbers_as_strings_or_ints() -> None:
    pcm = bytes(range(10))
    as_strings = parse_message(media_message(pcm))
    as_ints = parse_message(media_message(pcm, seq=7, chunk=6, timestamp=600))
    assert as_strings == as_ints == Media(7, 6, 600, pcm)


def test_media_odd_trailing_byte_dropped_for_pcm16_only() -> None:
    payload = b"\x01\x02\x03"
    assert parse_message(media_message(payload)).payload == b"\x01\x02"  # type: ignore[union-attr]
    mulaw = parse_message(media_message(payload), encoding=Encoding.MULAW)
    assert mulaw.payload == payload  # type: ignore[union-attr]


def test_media_without_timestamp_or_chunk() -> None:
    text = json.dumps({"event": "media", "media": {"payload": "AAA="}})
    assert parse_message(text) == Media(None, None, None, b"\x00\x00")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"event": "dtmf", "sequence_number": "42", "dtmf": {"digit": "#", "duration": "120"}},
            Dtmf("#", 120, 42),
        ),
        ({"event": "dtmf", "digit": "5"}, Dtmf("5", None, None)),
        ({"event": "dtmf", "dtmf": {"digit": 7}}, Dtmf("7", None, None)),
        ({"event": "mark", "sequence_number": "58", "mark": {"name": "utt-3-end"}}, Mark("utt-3-end", 58)),
        ({"event": "mark", "mark": {"name": "m", "timestamp": "99"}}, Mark("m")),
        (
            {"event": "stop", "stop": {"call_sid": CALL, "account_sid": "a", "reason": "callended"}},
            Stop("callended", CALL, "a"),
        ),
        ({"event": "stop"}, Stop()),
        ({"event": "connected", "protocol": "Call", "version": "1.0.0"}, Connected()),
        ({"Event": "connected"}, Connected()),
        ({"event": "clear", "sequence_number": 3}, Clear(3)),
    ],
)
def test_each_event(message: dict[str, Any], expected: object) -> None:
    assert parse_message(json.dumps(message)) == expected


def test_unknown_event_kept_whole() -> None:
    message = {"event": "silence", "stream_sid": SID, "x": [1, 2]}
    assert parse_message(json.dumps(message)) == Unknown("silence", message)


def test_bytes_frames_are_accepted_as_utf8() -> None:
    assert parse_message(b'{"event":"connected"}') == Connected()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"stream_sid": "x"}', "no 'event'"),
        ('{"event": 5}', "'event' must be a string"),
        ('{"event": "media", "media": {"payload": "@@@"}}', "invalid base64"),
        ('{"event": "media", "media": {"payload": 12}}', "base64 string"),
        ('{"event": "media", "media": {}}', "no payload"),
        ('{"event": "media", "media": "AAA="}', "media: expected an object"),
        ('{"event": "media", "media": {"payload": "AAA=", "timestamp": "soon"}}', "media.timestamp"),
        ('{"event": "media", "sequence_number": true, "media": {"payload": ""}}', "sequence_number"),
        ('{"event": "media", "media": {"payload": "", "chunk": 1.5}}', "media.chunk"),
        ('{"event": "dtmf", "dtmf": {"digit": "x"}}', "not a DTMF key"),
        ('{"event": "dtmf", "dtmf": {}}', "no digit"),
        ('{"event": "mark", "mark": {}}', "no name"),
        ('{"event": "start", "start": {"call_sid": {"a": 1}}}', "start.call_sid"),
        ('{"event": "start", "start": {"custom_parameters": 5}}', "custom_parameters"),
        (b"\xff\xfe", "not UTF-8"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_malformed_input_says_what_is_wrong(text: str | bytes, needle: str) -> None:
    with pytest.raises(RemoteProtocolError, match=needle):
        parse_message(text)


# --- property: nothing but RemoteProtocolError escapes ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["", "8000", "16000Hz", "24 kHz", "abc", "AAA=", "AAAB/wIA", "#", "1", "-3", "1e9"]),
    st.integers(min_value=-(10**30), max_value=10**30),
)


@st.composite
def exotel_like_messages(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", "other"]))
    keys = ["sequence_number", "sequenceNumber", "stream_sid", "digit", "name"]
    message: dict[str, Any] = {"event": event}
    for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
        message[key] = draw(field_values)
    nested_keys = [
        "payload", "chunk", "timestamp", "digit", "duration", "name", "reason", "call_sid",
        "custom_parameters", "media_format", "stream_sid", "from",
    ]  # fmt: skip
    nested = {key: draw(field_values) for key in draw(st.lists(st.sampled_from(nested_keys), max_size=5))}
    if draw(st.booleans()):
        nested["media_format"] = draw(
            st.dictionaries(st.sampled_from(["sample_rate", "encoding", "sampleRate"]), field_values)
        )
    message[event if event != "other" else "x"] = draw(st.one_of(st.just(nested), field_values))
    return message


def _parses_or_protocol_error(text: str | bytes) -> None:
    for encoding in Encoding:
        with contextlib.suppress(RemoteProtocolError):
            parse_message(text, encoding=encoding, url_rate=16000)


@settings(max_examples=400)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_protocol_error(text: str) -> None:
    _parses_or_protocol_error(text)


@settings(max_examples=400)
@given(json_values)
def test_any_json_value_parses_or_is_a_protocol_error(value: Any) -> None:
    _parses_or_protocol_error(json.dumps(value))


@settings(max_examples=600)
@given(exotel_like_messages())
def test_exotel_like_messages_parse_or_are_protocol_errors(message: dict[str, Any]) -> None:
    _parses_or_protocol_error(json.dumps(message))


@settings(max_examples=200)
@given(st.binary(max_size=100))
def test_any_bytes_parse_or_are_a_protocol_error(data: bytes) -> None:
    _parses_or_protocol_error(data)


# --- property: the fast media reader agrees with the tolerant one ---------------------------------------

plain_scalars = st.one_of(st.integers(0, 10**6), st.integers(0, 10**6).map(str), st.just("007"))
odd_scalars = st.one_of(
    st.sampled_from(["", "12Hz", " 3", "1.0", "-3", "٣", "9" * 41, 10**45, -3, 1.5, True, None]),
    json_values,
)
valid_payloads = st.binary(max_size=64).map(lambda data: base64.b64encode(data).decode())  # odd and even
bad_payloads = st.one_of(
    st.text(alphabet='ABCD+/=\n @-_é"\\\x01', min_size=1, max_size=12),
    st.sampled_from(["AAA", "AA==AA==", "=AAA", "AAA=\n", "QUJD\u00e9", "AAAA AAAA"]),
    json_values,
)
DEVIATIONS = [
    "shuffle keys", "shuffle media keys", "drop field", "odd scalar", "bad payload",
    "event name", "stream sid", "separators", "no ascii", "cut", "append", "duplicate media",
    "unterminated payload", "raw sid", "raw number", "odd space",
]  # fmt: skip


@st.composite
def media_wire_texts(draw: st.DrawFn) -> tuple[str, bool]:
    """A ``media`` message in one of its wire forms, and whether it has the documented layout.

    Starts from §4.3's layout (keys in its order, all present, digit-string or int scalars, valid base64,
    compact or Python's default spacing) and applies up to two deviations, each of which may make the
    message differently valid, or invalid.
    """
    deviations = draw(st.lists(st.sampled_from(DEVIATIONS), max_size=2))
    seq_key = draw(st.sampled_from(["sequence_number", "sequenceNumber"]))
    sid_key = draw(st.sampled_from(["stream_sid", "streamSid"]))
    scalars = [draw(plain_scalars) for _ in range(3)]
    if "odd scalar" in deviations:
        scalars[draw(st.integers(0, 2))] = draw(odd_scalars)
    payload = draw(bad_payloads if "bad payload" in deviations else valid_payloads)
    event = draw(st.sampled_from(["Media", " media", "media "])) if "event name" in deviations else "media"
    sid = draw(st.sampled_from(['a"b', "a\\b", "\u2028", "\x00"])) if "stream sid" in deviations else SID
    message: dict[str, Any] = {"event": event, seq_key: scalars[0], sid_key: sid}
    media: dict[str, Any] = {"chunk": scalars[1], "timestamp": scalars[2], "payload": payload}
    if "drop field" in deviations:
        target = draw(st.sampled_from([message, media]))
        del target[draw(st.sampled_from(sorted(target)))]
    if "shuffle media keys" in deviations:
        media = dict(draw(st.permutations(list(media.items()))))
    message["media"] = media
    if "shuffle keys" in deviations:
        message = dict(draw(st.permutations(list(message.items()))))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    if "separators" in deviations:
        separators = draw(st.sampled_from([(" ,", ":"), (",", " :"), (",", ":  "), (",\n", ":\t")]))
    text = json.dumps(message, separators=separators, ensure_ascii="no ascii" not in deviations)
    if "raw sid" in deviations:  # escapes and characters that JSON rejects inside the SID
        text = text.replace(SID, draw(st.sampled_from(["a\\qb", "a\x01b", "a\\", "\\u12", "a\\nb", "é"])))
    if "raw number" in deviations:  # a leading zero (JSON rejects it) or an exponent (a float)
        text = re.sub(r'("chunk": ?)"?', "\\g<1>" + draw(st.sampled_from(["0", "1e"])), text, count=1)
    if "odd space" in deviations:  # JSON allows only space, tab, CR and LF between tokens
        text = re.sub(
            r', ?"timestamp"',
            "," + draw(st.sampled_from(["\x0c", "\u00a0", "\n", "\t"])) + '"timestamp"',
            text,
        )
    if "cut" in deviations:
        text = text[: -draw(st.integers(1, 5))]
    if "append" in deviations:
        text += draw(st.sampled_from([" ", "\n", "}", '"}}', ',"x":1}', "\x00"]))
    if "duplicate media" in deviations:  # JSON keeps the last one
        text = text[:-1] + draw(st.sampled_from([',"media":{"payload":"AAAA"}}', ',"media":5}']))
    if "unterminated payload" in deviations:
        text = text[: text.rfind('"', 0, len(text) - 3) + 1] + "}}"
    return text, not deviations


def _outcome(parse: Any, text: str, encoding: Encoding) -> object:
    try:
        return parse(text, encoding)
    except RemoteProtocolError as exc:
        return ("error", str(exc))


@settings(max_examples=1500)
@given(media_wire_texts())
def test_media_fast_path_gives_the_tolerant_result_or_error(case: tuple[str, bool]) -> None:
    text, documented = case
    for encoding in Encoding:
        tolerant = _outcome(lambda t, e: _parse_any_message(t, e, None), text, encoding)
        assert _outcome(lambda t, e: parse_message(t, encoding=e), text, encoding) == tolerant
        fast = _parse_documented_media(text, encoding)
        assert fast is None or fast == tolerant
        if documented:  # the common forms really do take the fast path
            assert fast is not None


@pytest.mark.parametrize(
    "text",
    [
        media_message(b"\x01\x02\x03"),
        media_message(b"\x01\x02", seq=7, chunk=6, timestamp=600).replace(" ", ""),
        media_message(b"").replace("sequence_number", "sequenceNumber").replace("stream_sid", "streamSid"),
    ],
)
def test_documented_media_forms_take_the_fast_path(text: str) -> None:
    fast = _parse_documented_media(text, Encoding.PCM16)
    assert fast is not None
    assert fast == _parse_any_message(text, Encoding.PCM16, None)


# --- stream parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/ws?sample-rate=16000", (16000, None)),
        ("wss://h/p?x=1&sample_rate=24000", (24000, None)),
        ("/ws", (None, None)),
        ("/ws?tenant=acme", (None, None)),
    ],
)
def test_rate_from_url(url: str, expected: tuple[int | None, str | None]) -> None:
    assert rate_from_url(url) == expected


def test_rate_from_url_reports_unusable_values() -> None:
    rate, warning = rate_from_url("/ws?sample-rate=44100")
    assert rate is None
    assert warning is not None and "44100" in warning


@pytest.mark.parametrize(
    ("media_format", "url_rate", "rate", "source", "warns"),
    [
        ({"sample_rate": "16000"}, None, 16000, "media_format", False),
        ({"sample_rate": "8000Hz"}, None, 8000, "media_format", False),
        ({"sampleRate": 24000}, None, 24000, "media_format", False),
        ({}, 24000, 24000, "url", False),
        ({}, None, 8000, "default", False),
        ({"sample_rate": "16000"}, 8000, 16000, "media_format", True),
        ({"sample_rate": "44100"}, 16000, 16000, "url", True),
        ({"sample_rate": "fast"}, None, 8000, "default", True),
    ],
)
def test_rate_precedence(
    media_format: dict[str, Any], url_rate: int | None, rate: int, source: str, warns: bool
) -> None:
    resolved = resolve_stream_format(media_format, url_rate)
    assert (resolved.sample_rate, resolved.rate_source) == (rate, source)
    assert bool(resolved.warnings) == warns


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [
        ("audio/x-raw", Encoding.PCM16),
        ("raw", Encoding.PCM16),
        ("base64", Encoding.PCM16),
        ("audio/x-mulaw", Encoding.MULAW),
        ("PCMU", Encoding.MULAW),
        ("ulaw", Encoding.MULAW),
        ("mu-law", Encoding.MULAW),
    ],
)
def test_encoding_detection(encoding: str, expected: Encoding) -> None:
    assert resolve_stream_format({"encoding": encoding}, None).encoding is expected


def test_start_rate_disagreement_is_reported_on_the_event() -> None:
    event = parse_message(json.dumps(start_message(sample_rate="16000")), url_rate=8000)
    assert isinstance(event, Start)
    assert event.sample_rate == 16000
    assert any("disagrees" in warning for warning in event.warnings)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "1", "n": 2, "z": None}, {"a": "1", "n": "2", "z": ""}),
        ("a=1&b=x%20y", {"a": "1", "b": "x y"}),
        ("?a=1", {"a": "1"}),
        ("a=1,b=2", {"a": "1", "b": "2"}),
        ('{"k": "v"}', {"k": "v"}),
        ("", {}),
        (None, {}),
    ],
)
def test_custom_parameters_forms(value: Any, expected: dict[str, str]) -> None:
    assert parse_custom_parameters(value) == expected


# --- the stream's order -------------------------------------------------------------------------------

CONNECTED = '{"event":"connected"}'
START = json.dumps(start_message())
MEDIA = media_message(b"\x00\x00" * 4)
DTMF = '{"event":"dtmf","dtmf":{"digit":"1"}}'
MARK = '{"event":"mark","mark":{"name":"m1"}}'
STOP = '{"event":"stop","stop":{"reason":"callended"}}'


def test_normal_stream() -> None:
    protocol = StreamProtocol(url_rate=8000)
    kinds = [type(protocol.receive(text)) for text in (CONNECTED, START, MEDIA, DTMF, MARK, MEDIA, STOP)]
    assert kinds == [Connected, Start, Media, Dtmf, Mark, Media, Stop]
    assert protocol.state is StreamState.STOPPED
    assert protocol.stream_sid == SID
    assert protocol.sample_rate == 16000


@pytest.mark.parametrize(
    ("prefix", "text", "state", "event"),
    [
        ([], MEDIA, "new", "media"),
        ([CONNECTED], MEDIA, "connected", "media"),
        ([CONNECTED], DTMF, "connected", "dtmf"),
        ([CONNECTED], MARK, "connected", "mark"),
        ([CONNECTED, START], START, "streaming", "start"),
        ([CONNECTED, START], CONNECTED, "streaming", "connected"),
        ([CONNECTED, START, STOP], MEDIA, "stopped", "media"),
        ([CONNECTED, START, STOP], STOP, "stopped", "stop"),
        ([CONNECTED, START, STOP], CONNECTED, "stopped", "connected"),
    ],
)
def test_illegal_transitions_name_state_and_event(
    prefix: list[str], text: str, state: str, event: str
) -> None:
    protocol = StreamProtocol()
    for message in prefix:
        protocol.receive(message)
    with pytest.raises(RemoteProtocolError, match=f"unexpected '{event}' in state '{state}'"):
        protocol.receive(text)
    assert protocol.state.value == state  # a rejected message changes nothing


def test_transition_table_only_allows_media_while_streaming() -> None:
    media_states = {state for (state, kind) in TRANSITIONS if kind is Media}
    assert media_states == {StreamState.STREAMING}


def test_stream_without_connected_is_accepted() -> None:
    protocol = StreamProtocol()
    protocol.receive(START)
    assert isinstance(protocol.receive(MEDIA), Media)


def test_a_malformed_message_does_not_change_state() -> None:
    protocol = StreamProtocol()
    protocol.receive(START)
    with pytest.raises(RemoteProtocolError):
        protocol.receive('{"event":"stop","stop":"oops"}')
    assert protocol.state is StreamState.STREAMING


def test_mulaw_stream_keeps_odd_payloads() -> None:
    protocol = StreamProtocol()
    protocol.receive(json.dumps(start_message(encoding="audio/x-mulaw", sample_rate="8000")))
    assert protocol.encoding is Encoding.MULAW
    event = protocol.receive(media_message(b"\x7f\x7f\x7f"))
    assert isinstance(event, Media) and len(event.payload) == 3


# --- writing ---------------------------------------------------------------------------------------------


def streaming_protocol(start: dict[str, Any] | None = None) -> StreamProtocol:
    protocol = StreamProtocol()
    protocol.receive(json.dumps(start or start_message()))
    return protocol


def test_outbound_media_exact_shape() -> None:
    protocol = streaming_protocol()
    payload = bytes(640)
    text = protocol.media(payload)
    assert json.loads(text) == {
        "event": "media",
        "stream_sid": SID,
        "media": {"payload": base64.b64encode(payload).decode()},
    }


def test_outbound_mark_and_clear_exact_shape() -> None:
    protocol = streaming_protocol()
    assert json.loads(protocol.mark('utt-"3"')) == {
        "event": "mark",
        "stream_sid": SID,
        "mark": {"name": 'utt-"3"'},
    }
    assert json.loads(protocol.clear()) == {"event": "clear", "stream_sid": SID}


def test_outbound_without_stream_sid_omits_it() -> None:
    message = start_message()
    del message["stream_sid"]
    del message["start"]["stream_sid"]
    protocol = streaming_protocol(message)
    assert json.loads(protocol.clear()) == {"event": "clear"}
    assert json.loads(protocol.mark("m")) == {"event": "mark", "mark": {"name": "m"}}
    assert set(json.loads(protocol.media(bytes(640)))) == {"event", "media"}


@pytest.mark.parametrize("size", [0, 321, 640 + 2, 100_160])
def test_outbound_media_size_rules(size: int) -> None:
    protocol = streaming_protocol(start_message(sample_rate="8000"))
    with pytest.raises(LocalProtocolError, match="multiple of 320"):
        protocol.media(bytes(size))


def test_outbound_media_frame_size_follows_rate_and_encoding() -> None:
    pcm24 = streaming_protocol(start_message(sample_rate="24000"))
    pcm24.media(bytes(960 * 5))
    with pytest.raises(LocalProtocolError):
        pcm24.media(bytes(320 * 5))  # 1600 B is not whole 20 ms frames at 24 kHz
    mulaw8 = streaming_protocol(start_message(sample_rate="8000", encoding="audio/x-mulaw"))
    mulaw8.media(bytes(160 * 10))


@pytest.mark.parametrize("prefix", [[], [CONNECTED], [START, STOP]])
def test_cannot_send_outside_streaming(prefix: list[str]) -> None:
    protocol = StreamProtocol()
    for message in prefix:
        protocol.receive(message)
    for send in (lambda: protocol.media(bytes(320)), lambda: protocol.mark("m"), protocol.clear):
        with pytest.raises(LocalProtocolError):
            send()


# --- §12 #17: a stream cut at Exotel's session limit gets its own end reason ---


@pytest.mark.parametrize("reason", ["stopped", "callended", "socket_closed", "opaque-reason"])
def test_an_end_at_the_session_limit_is_reported_as_such_whatever_reason_came_with_it(reason: str) -> None:
    assert remote_end_reason(reason, 3597.0, DEFAULT_SESSION_LIMIT) == SESSION_LIMIT_REASON
    assert remote_end_reason(reason, 3601.5, DEFAULT_SESSION_LIMIT) == SESSION_LIMIT_REASON


@pytest.mark.parametrize(
    ("streamed", "limit"), [(3590.0, DEFAULT_SESSION_LIMIT), (0.5, 600.0), (9000.0, None)]
)
def test_an_end_short_of_the_limit_or_with_no_known_limit_keeps_its_reason(
    streamed: float, limit: float | None
) -> None:
    assert remote_end_reason("callended", streamed, limit) == "callended"
    assert remote_end_reason("stopped", streamed, 0.0 if limit is None else limit) == "stopped"


# --- base64 of media payloads: the compiled kernels against binascii ----------------------------------

needs_base64_kernels = pytest.mark.skipif(
    not protocol_module.compiled_base64_available(),
    reason="voicebot._dsp not built (no C compiler at install)",
)
CANONICAL_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _strict_binascii(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


@needs_base64_kernels
@settings(max_examples=400)
@given(st.binary(max_size=4000))
def test_compiled_base64_encodes_and_decodes_exactly_as_binascii(data: bytes) -> None:
    text = binascii.b2a_base64(data, newline=False).decode("ascii")
    assert protocol_module._b64encode_ascii(data) == text
    assert protocol_module._b64decode_canonical(text) == data


@st.composite
def base64_like_texts(draw: st.DrawFn) -> str:
    """Valid base64 with up to three characters replaced, inserted or cut, or any short text."""
    if draw(st.booleans()):
        return draw(st.text(alphabet="AQgw+/=\n -_é\x00", max_size=12))
    text = list(base64.b64encode(draw(st.binary(max_size=30))).decode())
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(text)))
        change = draw(st.sampled_from(["replace", "insert", "cut"]))
        character = draw(st.sampled_from("Az09+/=\n -_é\x00"))
        if change == "insert" or where == len(text):
            text.insert(where, character)
        elif change == "replace":
            text[where] = character
        else:
            del text[where]
    return "".join(text)


@needs_base64_kernels
@settings(max_examples=1500)
@given(base64_like_texts())
def test_compiled_decoder_gives_binascii_strict_result_or_leaves_the_text_to_binascii(text: str) -> None:
    fast = protocol_module._b64decode_canonical(text)
    if fast is not None:
        assert fast == _strict_binascii(text)
    if CANONICAL_BASE64.fullmatch(text):  # the form Exotel sends always takes the compiled path
        assert fast is not None


@needs_base64_kernels
def test_compiled_decoder_takes_only_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        protocol_module._b64decode_canonical(b"AAAA")  # type: ignore[arg-type]


def test_media_payloads_without_the_compiled_base64_are_decoded_and_encoded_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [media_message(payload) for payload in (b"", b"\x01\x02\x03", bytes(range(256)) * 7)]
    texts.append('{"event": "media", "media": {"payload": "@@@"}}')
    audio = bytes(range(256)) * 5
    protocol = streaming_protocol()

    def outcomes() -> list[object]:
        return [_outcome(lambda t, e: parse_message(t, encoding=e), text, Encoding.MULAW) for text in texts]

    compiled, sent = outcomes(), protocol.media(audio)
    monkeypatch.setattr(protocol_module, "_b64decode_canonical", _b64decode_nothing)
    monkeypatch.setattr(protocol_module, "_b64encode_ascii", _b64encode_binascii)
    assert not protocol_module.compiled_base64_available()
    assert outcomes() == compiled and protocol.media(audio) == sent
    assert compiled[1] == Media(7, 6, 600, b"\x01\x02\x03")
    assert compiled[-1] == ("error", "media.payload: invalid base64 (Only base64 data is allowed)")
