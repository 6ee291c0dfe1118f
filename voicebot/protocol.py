"""Exotel's AgentStream WebSocket protocol, sans I/O.

``parse_message`` turns one text frame into one event from ``voicebot.events``; ``StreamProtocol``
adds the stream's order (a transition table, as h11 does it) and writes the bot's outbound messages.
Nothing here touches a socket or a clock, so every rule is testable with plain function calls.

Reading is tolerant, as ``exotel-protocol.md`` §4.0 and §12 require: snake_case keys first with a
camelCase fallback, numbers as ints or numeric strings (unit suffixes such as ``"8000Hz"`` allowed),
custom parameters as an object or a query string, a top-level ``digit`` for DTMF, an odd trailing PCM16
payload byte dropped. Writing is strict: exactly the documented snake_case shapes. The documented
``media`` layout, ten messages a second per call, is read without running the JSON decoder over its
payload; everything else goes through the tolerant reader, which also words every error.

Anything malformed raises ``RemoteProtocolError`` with a message that says what was wrong; no other
exception escapes parsing.
"""

from __future__ import annotations

import binascii
import enum
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from voicebot.errors import LocalProtocolError, RemoteProtocolError
from voicebot.events import (
    SUPPORTED_RATES,
    Clear,
    Connected,
    Dtmf,
    Encoding,
    Event,
    Mark,
    Media,
    Start,
    Stop,
    Unknown,
)


def _b64encode_binascii(data: bytes, /) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _b64decode_nothing(text: str, /) -> bytes | None:
    return None  # without the compiled decoder, binascii decodes every payload


# Compiled base64 for media payloads (voicebot/_dsp.c, built at install time where a C compiler is
# found): binascii does the same work at 2.5-7x the CPU, and every media message needs it once.
try:
    from voicebot._dsp import b64decode_canonical as _b64decode_canonical
    from voicebot._dsp import b64encode_ascii as _b64encode_ascii
except ImportError:
    _b64decode_canonical = _b64decode_nothing
    _b64encode_ascii = _b64encode_binascii


__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_SESSION_LIMIT",
    "DTMF_DIGITS",
    "MAX_MEDIA_BYTES",
    "SESSION_LIMIT_REASON",
    "SESSION_LIMIT_SLACK",
    "StreamFormat",
    "StreamProtocol",
    "StreamState",
    "compiled_base64_available",
    "parse_custom_parameters",
    "parse_message",
    "rate_from_url",
    "remote_end_reason",
    "resolve_stream_format",
]

DEFAULT_SAMPLE_RATE: Final = 8000
#: Exotel's documented ceiling for one outbound media payload (decoded bytes).
MAX_MEDIA_BYTES: Final = 100_000
#: Keys a caller can press. A-D exist on DTMF keypads even if phones rarely have them.
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
#: Exotel's documented longest stream session, in seconds (exotel-protocol.md §2.5; plans may differ).
DEFAULT_SESSION_LIMIT: Final = 3600.0
#: A stream Exotel ends this many seconds short of the limit, or later, is taken to have hit it: our
#: clock starts when ``start`` arrives, Exotel's a little earlier, at the handshake.
SESSION_LIMIT_SLACK: Final = 5.0
#: The end reason given to the bot for a stream cut at Exotel's session limit (§12 #17).
SESSION_LIMIT_REASON: Final = "session_limit"

_NUMBER = re.compile(r"\s*([+-]?\d+)(?:\.0*)?\s*([A-Za-z/]*)\s*")
_MULAW_MARKERS: Final = ("mulaw", "ulaw", "pcmu", "μlaw", "g711u")


# --------------------------------------------------------------------------------------------------
# Tolerant field readers. Each names the field in its error so the log says exactly what was wrong.


def _get(obj: Mapping[str, Any], snake: str, camel: str | None = None) -> Any:
    """Read ``snake`` and fall back to ``camel`` (Exotel's samples and docs disagree on casing)."""
    value = obj.get(snake)
    if value is None and camel is not None:
        value = obj.get(camel)
    return value


def _coerce_int(value: Any, where: str) -> int | None:
    """An int from an int, an integral float, or a numeric string with an optional unit suffix."""
    if type(value) is str and value.isdigit() and value.isascii() and len(value) <= 40:
        return int(value)  # the common case ("8000", "42"), without the regular expression
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RemoteProtocolError(f"{where}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise RemoteProtocolError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, str) and len(value) <= 40:
        match = _NUMBER.fullmatch(value)
        if match is not None:
            number = int(match.group(1))
            # "16kHz" means 16000; "128kbps" stays informational and is never used as a rate.
            if match.group(2).lower().startswith("k"):
                number *= 1000
            return number
    raise RemoteProtocolError(f"{where}: expected an integer, got {_preview(value)}")


def _coerce_str(value: Any, where: str) -> str:
    """A string from a string or a number (SIDs and phone numbers sometimes arrive as numbers)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise RemoteProtocolError(f"{where}: expected a string, got {_preview(value)}")


def _object(value: Any, where: str) -> Mapping[str, Any]:
    """A nested JSON object, or an empty one when absent."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise RemoteProtocolError(f"{where}: expected an object, got {_preview(value)}")


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_custom_parameters(value: Any, where: str = "start.custom_parameters") -> dict[str, str]:
    """Custom parameters as ``dict[str, str]`` from an object, a JSON string or a query string.

    Exotel's applet docs deliver an object; pipecat's types allow a string, and the beta extension guide
    shows comma-separated ``k=v`` pairs. All three are accepted (§12 item 11).
    """
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        params: dict[str, str] = {}
        for key, item in value.items():
            if isinstance(item, dict | list):
                params[key] = json.dumps(item, separators=(",", ":"))
            else:
                params[key] = "" if item is None else _coerce_str(item, f"{where}.{key}")
        return params
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                decoded = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise RemoteProtocolError(f"{where}: not a JSON object: {exc}") from None
            if not isinstance(decoded, dict):
                raise RemoteProtocolError(f"{where}: expected a JSON object, got {_preview(decoded)}")
            return parse_custom_parameters(decoded, where)
        text = text.lstrip("?")
        if "&" not in text and "," in text:
            text = text.replace(",", "&")
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    raise RemoteProtocolError(f"{where}: expected an object or a string, got {_preview(value)}")


def remote_end_reason(reason: str, streamed_seconds: float, session_limit: float | None) -> str:
    """The end reason to report for a stream that Exotel ended (``stop``, or a close without one).

    ``reason`` is the one Exotel gave (``callended``, ``stopped``, ``socket_closed`` for a bare close,
    or anything opaque). A stream ended at Exotel's session limit, within :data:`SESSION_LIMIT_SLACK`
    of ``session_limit`` seconds or later, is reported as :data:`SESSION_LIMIT_REASON` whatever
    reason it came with: which ``stop.reason`` Exotel sends then is undocumented, and no stream
    outlives the limit. ``session_limit`` None or 0 means the limit is unknown: ``reason`` is kept.
    """
    if session_limit and streamed_seconds >= session_limit - SESSION_LIMIT_SLACK:
        return SESSION_LIMIT_REASON
    return reason


def compiled_base64_available() -> bool:
    """Whether media payloads' base64 runs in the compiled module; without it, in ``binascii`` alone."""
    return _b64encode_ascii is not _b64encode_binascii


def _decode_payload(value: Any, encoding: Encoding) -> bytes:
    if not isinstance(value, str):
        raise RemoteProtocolError(f"media.payload: expected a base64 string, got {_preview(value)}")
    # The compiled decoder takes canonical base64 only; binascii decides (and words) everything else.
    data = _b64decode_canonical(value)
    if data is None:
        try:
            data = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise RemoteProtocolError(f"media.payload: invalid base64 ({exc})") from None
    if encoding is Encoding.PCM16 and len(data) % 2:
        data = data[:-1]
    return data


# --------------------------------------------------------------------------------------------------
# Stream parameters


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """The stream's sample rate and encoding, where the rate came from, and any disagreement seen."""

    sample_rate: int
    encoding: Encoding
    rate_source: str
    """``"media_format"``, ``"url"`` or ``"default"``."""
    warnings: tuple[str, ...] = ()


def rate_from_url(url: str) -> tuple[int | None, str | None]:
    """The ``sample-rate`` (or ``sample_rate``) query parameter of a stream URL or request path.

    Returns ``(rate, None)`` for a supported rate, ``(None, None)`` when absent, and
    ``(None, warning)`` when present but unusable, so the caller can report it.
    """
    query = urllib.parse.urlsplit(url).query if "?" in url else ""
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    for name in ("sample-rate", "sample_rate"):
        if name in params:
            raw = params[name][0]
            try:
                rate = _coerce_int(raw, f"URL {name}")
            except RemoteProtocolError:
                rate = None
            if rate in SUPPORTED_RATES:
                return rate, None
            return None, f"URL {name}={raw!r} is not one of {list(SUPPORTED_RATES)}; ignored"
    return None, None


def resolve_stream_format(media_format: Mapping[str, Any], url_rate: int | None) -> StreamFormat:
    """Decide the stream's rate and encoding by the documented precedence.

    Rate: ``media_format.sample_rate`` when it parses to 8000/16000/24000, else the URL's
    ``sample-rate``, else 8000. Encoding: μ-law when ``media_format.encoding`` mentions
    mulaw/ulaw/pcmu, else PCM16LE. Disagreements are reported in ``warnings``, not hidden.
    """
    warnings: list[str] = []
    raw_rate = _get(media_format, "sample_rate", "sampleRate")
    start_rate: int | None = None
    if raw_rate is not None and raw_rate != "":
        try:
            start_rate = _coerce_int(raw_rate, "start.media_format.sample_rate")
        except RemoteProtocolError as exc:
            warnings.append(f"{exc}; ignored")
        if start_rate is not None and start_rate not in SUPPORTED_RATES:
            warnings.append(
                f"start.media_format.sample_rate={raw_rate!r} is not one of {list(SUPPORTED_RATES)}; ignored"
            )
            start_rate = None
    if start_rate is not None:
        rate, source = start_rate, "media_format"
        if url_rate is not None and url_rate != start_rate:
            warnings.append(
                f"start.media_format.sample_rate={start_rate} disagrees with the URL's sample-rate="
                f"{url_rate}; using {start_rate}"
            )
    elif url_rate is not None:
        rate, source = url_rate, "url"
    else:
        rate, source = DEFAULT_SAMPLE_RATE, "default"

    raw_encoding = media_format.get("encoding")
    encoding = Encoding.PCM16
    if isinstance(raw_encoding, str):
        normalised = raw_encoding.lower().replace("-", "").replace("_", "").replace(" ", "")
        if any(marker in normalised for marker in _MULAW_MARKERS):
            encoding = Encoding.MULAW
    return StreamFormat(rate, encoding, source, tuple(warnings))


# --------------------------------------------------------------------------------------------------
# Parsing one message


def _load(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"message is not UTF-8 text: {exc}") from None
    try:
        message = json.loads(text)
    except RecursionError:
        raise RemoteProtocolError("message is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise RemoteProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RemoteProtocolError(f"message is not a JSON object: {_preview(message)}")
    return message


def _event_name(message: Mapping[str, Any]) -> str:
    name = message.get("event")
    if name is None:
        name = message.get("Event")
    if name is None:
        raise RemoteProtocolError(f"message has no 'event': {_preview(message)}")
    if not isinstance(name, str):
        raise RemoteProtocolError(f"'event' must be a string, got {_preview(name)}")
    return name


def parse_message(
    text: str | bytes,
    *,
    encoding: Encoding = Encoding.PCM16,
    url_rate: int | None = None,
) -> Event:
    """Parse one WebSocket text frame from Exotel into an event.

    ``encoding`` is the stream's encoding (decides whether an odd trailing payload byte is dropped);
    ``url_rate`` is the ``sample-rate`` of the connection URL, used when ``start`` carries no usable
    rate. Raises ``RemoteProtocolError`` for anything malformed, and nothing else.
    """
    if type(text) is str:
        media = _parse_documented_media(text, encoding)
        if media is not None:
            return media
    return _parse_any_message(text, encoding, url_rate)


# The documented ``media`` layout (§4.3) up to the payload's opening quote: compact or with one space
# after ':' and ',', snake_case or camelCase keys, scalars as digit strings or plain JSON integers, a
# stream SID without escapes or control characters. Text that starts like this, ends with '"}}' and has
# valid base64 in between is exactly the JSON object the tolerant reader would see, so it can be read
# without running the JSON decoder over the ~2 KB payload (the base64 check is the only pass over it).
_SCALAR: Final = r'(?:"([0-9]{1,40})"|(0|[1-9][0-9]{0,39}))'
_DOCUMENTED_MEDIA_HEAD: Final = re.compile(
    r'\{"event": ?"media", ?"(?:sequence_number|sequenceNumber)": ?'
    + _SCALAR
    + r', ?"(?:stream_sid|streamSid)": ?"[^"\\\x00-\x1f]*", ?"media": ?\{"chunk": ?'
    + _SCALAR
    + r', ?"timestamp": ?'
    + _SCALAR
    + r', ?"payload": ?"',
    re.ASCII,
)


_new_object: Final = object.__new__
_set_media_sequence_number: Final = vars(Media)["sequence_number"].__set__
_set_media_chunk: Final = vars(Media)["chunk"].__set__
_set_media_timestamp: Final = vars(Media)["timestamp"].__set__
_set_media_payload: Final = vars(Media)["payload"].__set__


def _parse_documented_media(text: str, encoding: Encoding) -> Media | None:
    """The ``media`` event when ``text`` has the documented layout; ``None`` for anything else.

    Gives the same event ``_parse_any_message`` would. Never raises: text it does not take, valid or not,
    goes to the tolerant reader, which also words every error.
    """
    payload_end = len(text) - 3
    head = _DOCUMENTED_MEDIA_HEAD.match(text, 0, payload_end)
    if head is None or not text.endswith('"}}'):
        return None
    try:
        data = _decode_payload(text[head.end() : payload_end], encoding)
    except RemoteProtocolError:  # the tolerant reader words the error
        return None
    seq_quoted, seq_bare, chunk_quoted, chunk_bare, timestamp_quoted, timestamp_bare = head.groups()
    # Media(...) with its slots set directly: the frozen dataclass's __init__ sets each field through
    # object.__setattr__, which costs twice as much, ten times a second per call.
    media = _new_object(Media)
    _set_media_sequence_number(media, int(seq_quoted or seq_bare))
    _set_media_chunk(media, int(chunk_quoted or chunk_bare))
    _set_media_timestamp(media, int(timestamp_quoted or timestamp_bare))
    _set_media_payload(media, data)
    return media


def _parse_any_message(text: str | bytes, encoding: Encoding, url_rate: int | None) -> Event:
    """``parse_message`` for every form §4 and §12 allow: the tolerant reader."""
    message = _load(text)
    name = _event_name(message)
    kind = name.strip().lower()
    try:
        seq = _coerce_int(_get(message, "sequence_number", "sequenceNumber"), "sequence_number")
        if kind == "media":
            media = _object(message.get("media"), "media")
            if "payload" not in media:
                raise RemoteProtocolError("media: no payload")
            return Media(
                seq,
                _coerce_int(media.get("chunk"), "media.chunk"),
                _coerce_int(media.get("timestamp"), "media.timestamp"),
                _decode_payload(media["payload"], encoding),
            )
        if kind == "start":
            return _parse_start(message, seq, url_rate)
        if kind == "dtmf":
            return _parse_dtmf(message, seq)
        if kind == "mark":
            mark = _object(message.get("mark"), "mark")
            mark_name = mark.get("name", message.get("name"))
            if mark_name is None or mark_name == "":
                raise RemoteProtocolError("mark: no name")
            return Mark(_coerce_str(mark_name, "mark.name"), seq)
        if kind == "stop":
            stop = _object(message.get("stop"), "stop")
            return Stop(
                reason=_coerce_str(stop.get("reason"), "stop.reason"),
                call_sid=_coerce_str(_get(stop, "call_sid", "callSid"), "stop.call_sid"),
                account_sid=_coerce_str(_get(stop, "account_sid", "accountSid"), "stop.account_sid"),
                sequence_number=seq,
            )
        if kind == "connected":
            return Connected()
        if kind == "clear":
            return Clear(seq)
        return Unknown(name, message)
    except RemoteProtocolError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        # Defence in depth: any slip in the tolerant readers still surfaces as a protocol error.
        raise RemoteProtocolError(f"{kind}: malformed message ({type(exc).__name__}: {exc})") from None


def _parse_start(message: Mapping[str, Any], seq: int | None, url_rate: int | None) -> Start:
    start = _object(message.get("start"), "start")
    stream_sid = _get(start, "stream_sid", "streamSid") or _get(message, "stream_sid", "streamSid")
    media_format = _object(_get(start, "media_format", "mediaFormat"), "start.media_format")
    stream_format = resolve_stream_format(media_format, url_rate)
    raw_encoding = media_format.get("encoding")
    return Start(
        stream_sid=_coerce_str(stream_sid, "start.stream_sid"),
        call_sid=_coerce_str(_get(start, "call_sid", "callSid"), "start.call_sid"),
        account_sid=_coerce_str(_get(start, "account_sid", "accountSid"), "start.account_sid"),
        from_number=_coerce_str(start.get("from"), "start.from"),
        to_number=_coerce_str(start.get("to"), "start.to"),
        custom_parameters=parse_custom_parameters(_get(start, "custom_parameters", "customParameters")),
        encoding=stream_format.encoding,
        sample_rate=stream_format.sample_rate,
        rate_source=stream_format.rate_source,
        media_encoding=raw_encoding if isinstance(raw_encoding, str) else "",
        warnings=stream_format.warnings,
        sequence_number=seq,
    )


def _parse_dtmf(message: Mapping[str, Any], seq: int | None) -> Dtmf:
    dtmf = _object(message.get("dtmf"), "dtmf")
    digit = dtmf.get("digit", message.get("digit"))
    if digit is None or digit == "":
        raise RemoteProtocolError("dtmf: no digit")
    digit_text = _coerce_str(digit, "dtmf.digit").strip().upper()
    if digit_text not in DTMF_DIGITS:
        raise RemoteProtocolError(f"dtmf.digit: {digit_text!r} is not a DTMF key")
    return Dtmf(digit_text, _coerce_int(dtmf.get("duration"), "dtmf.duration"), seq)


# --------------------------------------------------------------------------------------------------
# The stream's state machine


class StreamState(enum.Enum):
    """Where the stream is: before ``connected``, before ``start``, streaming, or stopped."""

    NEW = "new"
    CONNECTED = "connected"
    STREAMING = "streaming"
    STOPPED = "stopped"


_S = StreamState
#: (state, event type) → next state. A pair that is absent is a protocol error naming both.
TRANSITIONS: Final[dict[tuple[StreamState, type], StreamState]] = {
    (_S.NEW, Connected): _S.CONNECTED,
    (_S.NEW, Start): _S.STREAMING,  # `connected` is not guaranteed to arrive first
    (_S.NEW, Stop): _S.STOPPED,
    (_S.NEW, Unknown): _S.NEW,
    (_S.NEW, Clear): _S.NEW,
    (_S.CONNECTED, Start): _S.STREAMING,
    (_S.CONNECTED, Stop): _S.STOPPED,
    (_S.CONNECTED, Unknown): _S.CONNECTED,
    (_S.CONNECTED, Clear): _S.CONNECTED,
    (_S.STREAMING, Media): _S.STREAMING,
    (_S.STREAMING, Dtmf): _S.STREAMING,
    (_S.STREAMING, Mark): _S.STREAMING,
    (_S.STREAMING, Clear): _S.STREAMING,
    (_S.STREAMING, Unknown): _S.STREAMING,
    (_S.STREAMING, Stop): _S.STOPPED,
}

_EVENT_NAMES: Final[dict[type, str]] = {
    Connected: "connected",
    Start: "start",
    Media: "media",
    Dtmf: "dtmf",
    Mark: "mark",
    Stop: "stop",
    Clear: "clear",
    Unknown: "unknown event",
}


class StreamProtocol:
    """One Exotel stream, bot side: text in → events out; commands in → text out.

    ``receive`` parses a frame and checks it against the stream's order; ``media``, ``mark`` and
    ``clear`` return the exact text to send. The I/O layer owns the socket and decides what to do with
    a ``RemoteProtocolError`` (the state is unchanged by a rejected message).
    """

    def __init__(self, *, url_rate: int | None = None) -> None:
        self.url_rate = url_rate
        self.state = StreamState.NEW
        self.start: Start | None = None
        self._encoding = Encoding.PCM16
        self._frame_bytes = 2 * DEFAULT_SAMPLE_RATE // 50
        self._media_prefix = '{"event":"media","media":{"payload":"'
        self._sid_field = ""

    @property
    def stream_sid(self) -> str:
        """The stream SID from ``start`` (empty before start, or when Exotel omitted it)."""
        return self.start.stream_sid if self.start is not None else ""

    @property
    def sample_rate(self) -> int:
        """The stream's sample rate, resolved at ``start`` (the URL hint or 8000 before it)."""
        if self.start is not None:
            return self.start.sample_rate
        return self.url_rate or DEFAULT_SAMPLE_RATE

    @property
    def encoding(self) -> Encoding:
        """The stream's payload encoding in both directions."""
        return self._encoding

    def receive(self, text: str | bytes) -> Event:
        """Parse one frame from Exotel and advance the stream's state.

        Raises ``RemoteProtocolError`` for a malformed message or one that is out of order (media
        before start, a second start, anything after stop); the message is then not applied.
        """
        event = parse_message(text, encoding=self._encoding, url_rate=self.url_rate)
        next_state = TRANSITIONS.get((self.state, type(event)))
        if next_state is None:
            raise RemoteProtocolError(
                f"unexpected {_EVENT_NAMES[type(event)]!r} in state {self.state.value!r}"
            )
        self.state = next_state
        if isinstance(event, Start):
            self._on_start(event)
        return event

    def _on_start(self, start: Start) -> None:
        self.start = start
        self._encoding = start.encoding
        self._frame_bytes = start.encoding.bytes_per_sample * start.sample_rate // 50
        if start.stream_sid:
            self._sid_field = '"stream_sid":' + json.dumps(start.stream_sid) + ","
        self._media_prefix = '{"event":"media",' + self._sid_field + '"media":{"payload":"'

    def _check_can_send(self, what: str) -> None:
        if self.state is not StreamState.STREAMING:
            raise LocalProtocolError(f"cannot send {what} in state {self.state.value!r}")

    def media(self, payload: bytes) -> str:
        """The ``media`` message carrying ``payload`` (already encoded in the stream's encoding).

        The payload must be whole 20 ms frames at the stream's rate and at most 100 000 bytes, so
        that Exotel never waits on a short sub-packet (§5.2).
        """
        self._check_can_send("media")
        size = len(payload)
        if size == 0 or size % self._frame_bytes or size > MAX_MEDIA_BYTES:
            raise LocalProtocolError(
                f"media payload of {size} bytes: must be a non-zero multiple of {self._frame_bytes} "
                f"bytes (20 ms) and at most {MAX_MEDIA_BYTES}"
            )
        return self._media_prefix + _b64encode_ascii(payload) + '"}}'

    def mark(self, name: str) -> str:
        """The ``mark`` message; Exotel echoes it once everything sent before it has played."""
        self._check_can_send("mark")
        if not name:
            raise LocalProtocolError("mark name must not be empty")
        return '{"event":"mark",' + self._sid_field + '"mark":{"name":' + json.dumps(name) + "}}"

    def clear(self) -> str:
        """The ``clear`` message: Exotel drops queued audio that has not started playing."""
        self._check_can_send("clear")
        return '{"event":"clear"' + ("," + self._sid_field[:-1] if self._sid_field else "") + "}"
