"""Exotel's Connect Voice AI API as plain data, with no I/O: the rules, a validated ``ConnectRequest``
that knows its exact form encoding, and the ``CallResource`` parsed from Exotel's answers.

The client (``voicebot.dialer.client``) sends these; the emulator (``voicebot.emulator``) checks what it
receives against the same limits. References are to exotel-protocol.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from voicebot.dialer.errors import ValidationError

__all__ = [
    "CALLBACK_CONTENT_TYPES",
    "CALLBACK_EVENTS",
    "CALL_STATUSES",
    "MAX_CUSTOM_FIELD",
    "MAX_CUSTOM_PARAMETERS",
    "MAX_CUSTOM_PARAMETERS_CHARS",
    "MAX_STREAM_NAME",
    "MAX_STREAM_URL",
    "MAX_TIME_LIMIT",
    "RECORDING_CHANNELS",
    "SAMPLE_RATES",
    "STREAM_TYPES",
    "TERMINAL_STATUSES",
    "CallResource",
    "ConnectRequest",
    "check_http_url",
    "check_number",
    "check_seconds",
    "check_stream_url",
    "check_text",
    "format_exotel_time",
    "lower_keys",
    "normalize_number",
    "parse_call_response",
    "parse_exotel_time",
    "parse_rest_exception",
    "salvage_call_sid",
    "same_number",
    "stream_url_parameters",
]

#: ``StreamUrl`` must be shorter than this, query included (§7.2).
MAX_STREAM_URL: Final = 600
MAX_TIME_LIMIT: Final = 14400
MAX_CUSTOM_FIELD: Final = 128
MAX_STREAM_NAME: Final = 32
#: Custom parameters on the stream URL: at most 3 pairs, 256 characters in total (§2.2).
MAX_CUSTOM_PARAMETERS: Final = 3
MAX_CUSTOM_PARAMETERS_CHARS: Final = 256
SAMPLE_RATES: Final = (8000, 16000, 24000)
STREAM_TYPES: Final = ("bidirectional",)
RECORDING_CHANNELS: Final = ("single", "dual")
CALLBACK_EVENTS: Final = ("answered", "terminal", "ringing")
CALLBACK_CONTENT_TYPES: Final = ("application/json", "multipart/form-data")
CALL_STATUSES: Final = (
    "queued",
    "ringing",
    "in-progress",
    "completed",
    "failed",
    "busy",
    "no-answer",
    "canceled",
)
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "busy", "no-answer", "canceled"})

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_NATIONAL = re.compile(r"0[1-9][0-9]{5,13}")
_NUMBER_RULE = "must be E.164 (+919812345678) or 0-prefixed national (09812345678), digits only"
_FORMATTING = re.compile(r"[\s().-]")
_RATE_KEYS: Final = ("sample-rate", "sample_rate")


def check_number(field_name: str, value: object) -> str:
    """``value`` if it is an E.164 or 0-prefixed national number, else ``ValidationError``."""
    if not isinstance(value, str) or not (_E164.fullmatch(value) or _NATIONAL.fullmatch(value)):
        raise ValidationError(field_name, _NUMBER_RULE, value)
    return value


def normalize_number(text: str) -> str:
    """``"+91 98123-45678"`` → ``"+919812345678"``: strips spaces, dashes, dots and parentheses, then
    checks the result is E.164 or 0-prefixed national (e.g. numbers read from a CSV file)."""
    return check_number("number", _FORMATTING.sub("", text))


def same_number(a: str | None, b: str | None) -> bool:
    """Whether two spellings are the same phone number (``+919812345678`` = ``09812345678``), §12 #10.

    Compares the digits with leading zeros dropped; one may lack the other's country code.
    """
    if not a or not b:
        return False
    x, y = re.sub(r"\D", "", a).lstrip("0"), re.sub(r"\D", "", b).lstrip("0")
    if not x or not y:
        return False
    shorter, longer = sorted((x, y), key=len)
    return len(shorter) >= 6 and longer.endswith(shorter) and len(longer) - len(shorter) <= 3


def stream_url_parameters(url: str) -> list[tuple[str, str]]:
    """The custom parameters a stream URL carries: its query pairs other than ``sample-rate``."""
    query = urllib.parse.urlsplit(url).query
    return [
        (key, value)
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True)
        if key not in _RATE_KEYS
    ]


def _url_rate(url: str) -> str | None:
    for key, value in urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True):
        if key in _RATE_KEYS:
            return value
    return None


def check_stream_url(url: str) -> None:
    """``ValidationError`` unless ``url`` may be sent as ``StreamUrl`` (§7.2, §2.2), checked as sent."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValidationError("StreamUrl", "must be a valid ws:// or wss:// URL", url) from None
    if parts.scheme not in ("ws", "wss") or not host:
        raise ValidationError("StreamUrl", "must be a ws:// or wss:// URL with a host", _masked(url))
    if parts.fragment:
        raise ValidationError("StreamUrl", "must not have a #fragment", _masked(url))
    if len(url) >= MAX_STREAM_URL:
        raise ValidationError(
            "StreamUrl", f"must be under {MAX_STREAM_URL} characters with its query, is {len(url)}"
        )
    rate = _url_rate(url)
    if rate is not None and rate not in {str(r) for r in SAMPLE_RATES}:
        raise ValidationError("StreamUrl", "its sample-rate must be 8000, 16000 or 24000", rate)
    params = stream_url_parameters(url)
    if len(params) > MAX_CUSTOM_PARAMETERS:
        raise ValidationError(
            "StreamUrl",
            f"at most {MAX_CUSTOM_PARAMETERS} custom parameters besides sample-rate, has {len(params)}",
        )
    if len(urllib.parse.urlencode(params)) > MAX_CUSTOM_PARAMETERS_CHARS:
        raise ValidationError(
            "StreamUrl", f"custom parameters must total at most {MAX_CUSTOM_PARAMETERS_CHARS} characters"
        )


def _masked(url: str) -> str:
    """``url`` with any ``user:password@`` replaced, for messages and reprs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_http_url(field_name: str, url: str) -> None:
    """``ValidationError`` unless ``url`` is an http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValidationError(field_name, "must be a valid http:// or https:// URL", url) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValidationError(field_name, "must be an http:// or https:// URL with a host", _masked(url))


def check_seconds(field_name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int from ``low`` to ``high`` (seconds), else ``ValidationError``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationError(field_name, f"must be an integer from {low} to {high} seconds", value)
    return value


def check_text(field_name: str, value: object, limit: int) -> str:
    """``value`` if it is one line of at most ``limit`` characters, else ``ValidationError``."""
    if not isinstance(value, str) or len(value) > limit or any(ch in value for ch in "\r\n\x00"):
        shown = value if not isinstance(value, str) else f"{len(value)} characters"
        raise ValidationError(field_name, f"must be a string of at most {limit} characters, one line", shown)
    return value


@dataclass(frozen=True, kw_only=True)
class ConnectRequest:
    """One Connect Voice AI dial, validated on construction (``ValidationError`` names Exotel's field).

    ``to`` is the customer's number, sent as Exotel's ``From`` (Exotel dials ``From``); ``caller_id``
    is the ExoPhone shown to them. ``sample_rate`` appends ``sample-rate`` to ``stream_url`` and
    ``custom_parameters`` appends query pairs (which the bot gets in ``start.custom_parameters``); the
    result is checked as sent: ws/wss, under 600 characters, at most 3 custom pairs in 256 characters.
    ``status_callback_content_type`` is sent with a ``status_callback`` (JSON by default, §12 #13;
    None to leave it out). Optional parameters left as None are not sent.
    """

    to: str
    caller_id: str
    stream_url: str
    stream_type: str = "bidirectional"
    sample_rate: int | None = None
    custom_parameters: Mapping[str, str] | None = None
    record: bool | None = None
    recording_channels: str | None = None
    time_limit: int | None = None
    time_out: int | None = None
    custom_field: str | None = None
    status_callback: str | None = None
    status_callback_content_type: str | None = "application/json"
    status_callback_events: Sequence[str] = ()
    stream_name: str | None = None
    full_stream_url: str = field(init=False, repr=False, default="")
    """``stream_url`` with ``sample-rate`` and the custom parameters appended: what is sent."""

    def __post_init__(self) -> None:
        check_number("From", self.to)
        check_number("CallerId", self.caller_id)
        if not isinstance(self.stream_url, str):
            raise ValidationError("StreamUrl", "must be a ws:// or wss:// URL", self.stream_url)
        if self.stream_type not in STREAM_TYPES:
            raise ValidationError("StreamType", "must be 'bidirectional' (the only documented type)")
        url = self.stream_url
        if self.sample_rate is not None:
            if self.sample_rate not in SAMPLE_RATES or isinstance(self.sample_rate, bool):
                raise ValidationError("sample_rate", "must be 8000, 16000 or 24000", self.sample_rate)
            existing = _url_rate(url)
            if existing is not None and existing != str(self.sample_rate):
                raise ValidationError(
                    "sample_rate", f"disagrees with the StreamUrl's own sample-rate={existing}"
                )
            if existing is None:
                url = _append_query(url, [("sample-rate", str(self.sample_rate))])
        params: dict[str, str] = {}
        if self.custom_parameters:
            for key, value in self.custom_parameters.items():
                if not isinstance(key, str) or not isinstance(value, str) or not key or key in _RATE_KEYS:
                    raise ValidationError(
                        "custom_parameters",
                        "keys and values must be strings; keys non-empty, not sample-rate",
                    )
                params[key] = value
            url = _append_query(url, list(params.items()))
        check_stream_url(url)
        object.__setattr__(self, "full_stream_url", url)
        object.__setattr__(self, "custom_parameters", params or None)
        if self.record is not None and not isinstance(self.record, bool):
            raise ValidationError("Record", "must be True or False", self.record)
        if self.recording_channels is not None and self.recording_channels not in RECORDING_CHANNELS:
            raise ValidationError("RecordingChannels", "must be 'single' or 'dual'", self.recording_channels)
        if self.time_limit is not None:
            check_seconds("TimeLimit", self.time_limit, 1, MAX_TIME_LIMIT)
        if self.time_out is not None:
            check_seconds("TimeOut", self.time_out, 1, MAX_TIME_LIMIT)
        if self.custom_field is not None:
            check_text("CustomField", self.custom_field, MAX_CUSTOM_FIELD)
        if self.stream_name is not None:
            check_text("StreamName", self.stream_name, MAX_STREAM_NAME)
        if self.status_callback is not None:
            check_http_url("StatusCallback", self.status_callback)
        if isinstance(self.status_callback_events, str):
            raise ValidationError("StatusCallbackEvents", "must be a list of event names, not one string")
        events: list[str] = []
        for event in self.status_callback_events:
            name = event.lower() if isinstance(event, str) else event
            if name not in CALLBACK_EVENTS:
                raise ValidationError(
                    "StatusCallbackEvents", "each must be answered, terminal or ringing", event
                )
            if name not in events:
                events.append(name)
        object.__setattr__(self, "status_callback_events", tuple(events))
        if events and self.status_callback is None:
            raise ValidationError("StatusCallbackEvents", "need a StatusCallback URL to be sent to")
        content_type = self.status_callback_content_type
        if content_type is not None and content_type not in CALLBACK_CONTENT_TYPES:
            raise ValidationError(
                "StatusCallbackContentType", "must be application/json or multipart/form-data", content_type
            )

    def __repr__(self) -> str:
        # A stream URL may carry the bot's Basic credentials (user:pass@host): never show them.
        shown: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.repr and value is not None and value != ():
                shown.append(f"{f.name}={(_masked(value) if f.name == 'stream_url' else value)!r}")
        return f"ConnectRequest({', '.join(shown)})"

    def form(self) -> list[tuple[str, str]]:
        """The form fields, TitleCase, in a fixed order, ``StatusCallbackEvents[]`` once per event."""
        fields: list[tuple[str, str]] = [
            ("From", self.to),
            ("CallerId", self.caller_id),
            ("StreamUrl", self.full_stream_url),
            ("StreamType", self.stream_type),
        ]
        if self.record is not None:
            fields.append(("Record", "true" if self.record else "false"))
        if self.recording_channels is not None:
            fields.append(("RecordingChannels", self.recording_channels))
        if self.time_limit is not None:
            fields.append(("TimeLimit", str(self.time_limit)))
        if self.time_out is not None:
            fields.append(("TimeOut", str(self.time_out)))
        if self.custom_field is not None:
            fields.append(("CustomField", self.custom_field))
        if self.status_callback is not None:
            fields.append(("StatusCallback", self.status_callback))
            if self.status_callback_content_type is not None:
                fields.append(("StatusCallbackContentType", self.status_callback_content_type))
            fields.extend(("StatusCallbackEvents[]", event) for event in self.status_callback_events)
        if self.stream_name is not None:
            fields.append(("StreamName", self.stream_name))
        return fields

    def body(self) -> bytes:
        """The ``application/x-www-form-urlencoded`` body, exactly as sent."""
        return urllib.parse.urlencode(self.form()).encode("ascii")


def _append_query(url: str, pairs: Iterable[tuple[str, str]]) -> str:
    """``url`` with ``pairs`` added after its query, its existing text left exactly as it was."""
    extra = urllib.parse.urlencode(list(pairs))
    if not extra:
        return url
    base, hash_sign, fragment = url.partition("#")
    if "?" not in base:
        joiner = "?"
    elif base.endswith(("?", "&")):
        joiner = ""
    else:
        joiner = "&"
    return f"{base}{joiner}{extra}{hash_sign}{fragment}"


# --------------------------------------------------------------------------------------------- answers


def lower_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """The same mapping with lower-cased keys, for Exotel's inconsistent casing (§7.3, §12 #8)."""
    return {str(key).lower(): value for key, value in mapping.items()}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _integer(value: Any) -> int | None:
    """``17``, ``"17"``, ``"17.0"`` → 17; empty, null or unreadable → None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return round(float(str(value).strip()))
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True, kw_only=True)
class CallResource:
    """A call as Exotel's API describes it (``{"Call": {…}}``, §7.3 and §9), read case-insensitively.

    Dates are Exotel's strings (``YYYY-MM-DD HH:mm:ss``, account-local time); ``created_at`` parses one.
    ``duration`` is whole seconds once Exotel has filled it in; ``raw`` keeps every field as received.
    """

    sid: str
    status: str
    account_sid: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    phone_number_sid: str | None = None
    direction: str | None = None
    parent_call_sid: str | None = None
    date_created: str | None = None
    date_updated: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    duration: int | None = None
    price: str | None = None
    answered_by: str | None = None
    recording_url: str | None = None
    uri: str | None = None
    details: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        """Whether the call is over (completed, failed, busy, no-answer or canceled)."""
        return self.status in TERMINAL_STATUSES

    def created_at(self, tz: datetime.tzinfo) -> datetime.datetime | None:
        """``date_created`` as an aware datetime in the account's zone ``tz``, or None if unreadable."""
        return parse_exotel_time(self.date_created, tz)

    @classmethod
    def from_mapping(cls, call: Mapping[str, Any]) -> CallResource:
        """Read one call object (the value of ``Call``); ``ValueError`` if it has no ``Sid``."""
        fields = lower_keys(call)
        sid = _text(fields.get("sid"))
        if sid is None:
            raise ValueError("the call object has no Sid")
        details = fields.get("details")
        return cls(
            sid=sid,
            status=(_text(fields.get("status")) or "").lower(),
            account_sid=_text(fields.get("accountsid")),
            from_number=_text(fields.get("from")),
            to_number=_text(fields.get("to")),
            phone_number_sid=_text(fields.get("phonenumbersid")),
            direction=_text(fields.get("direction")),
            parent_call_sid=_text(fields.get("parentcallsid")),
            date_created=_text(fields.get("datecreated")),
            date_updated=_text(fields.get("dateupdated")),
            start_time=_text(fields.get("starttime")),
            end_time=_text(fields.get("endtime")),
            duration=_integer(fields.get("duration")),
            price=_text(fields.get("price")),
            answered_by=_text(fields.get("answeredby")),
            recording_url=_text(fields.get("recordingurl")),
            uri=_text(fields.get("uri")),
            details=details if isinstance(details, Mapping) else None,
            raw=dict(call),
        )


def parse_exotel_time(value: str | None, tz: datetime.tzinfo) -> datetime.datetime | None:
    """``"2026-08-20 10:15:02"`` (account-local) → an aware datetime in ``tz``; None if unreadable."""
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
    except ValueError:
        return None


def format_exotel_time(moment: datetime.datetime, tz: datetime.tzinfo) -> str:
    """An aware datetime as Exotel writes it: ``YYYY-MM-DD HH:mm:ss`` in the account's zone ``tz``."""
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def parse_call_response(text: str) -> CallResource:
    """The ``CallResource`` in a JSON answer ``{"Call": {…}}`` (any key case); ``ValueError`` if none."""
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("the answer is not JSON") from None
    if not isinstance(payload, Mapping):
        raise ValueError("the answer is not a JSON object")
    call = lower_keys(payload).get("call")
    if not isinstance(call, Mapping):
        raise ValueError("the answer has no Call object")
    return CallResource.from_mapping(call)


_SID_IN_TEXT = re.compile(r'"sid"\s*:\s*"([0-9A-Za-z]{16,64})"', re.IGNORECASE)


def salvage_call_sid(text: str) -> str | None:
    """A ``"Sid": "…"`` found anywhere in an answer we could not otherwise read, for reconciling."""
    match = _SID_IN_TEXT.search(text)
    return match.group(1) if match else None


def parse_rest_exception(text: str) -> tuple[str | None, int | None]:
    """Exotel's error ``(Message, Code)`` from ``{"RestException": {…}}`` JSON or the XML variant."""
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, Mapping):
        inner = lower_keys(payload).get("restexception")
        if isinstance(inner, Mapping):
            fields = lower_keys(inner)
            return _text(fields.get("message")), _integer(fields.get("code"))
        return None, None
    message = re.search(r"<Message>(.*?)</Message>", text, re.IGNORECASE | re.DOTALL)
    code = re.search(r"<Code>\s*(\d+)\s*</Code>", text, re.IGNORECASE)
    return (
        message.group(1).strip() if message else None,
        int(code.group(1)) if code else None,
    )
