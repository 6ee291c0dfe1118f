"""Exotel's status callbacks as a typed ``StatusEvent``: pure parsing, no I/O (exotel-protocol.md §8).

Exotel posts them as JSON (when ``StatusCallbackContentType=application/json`` was asked for),
``multipart/form-data`` (its default) or ``application/x-www-form-urlencoded``. Form bodies flatten
arrays (``Legs[0][Status]``, ``StatusCallbackEvents[]``); :func:`unflatten` rebuilds them, so the three
encodings of one callback give equal events. Keys are matched case-insensitively and unknown fields are
kept in ``StatusEvent.fields``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from voicebot.dialer.api import TERMINAL_STATUSES, lower_keys
from voicebot.dialer.errors import InvalidCallback

__all__ = [
    "MAX_CALLBACK_BYTES",
    "Leg",
    "StatusEvent",
    "parse_status_callback",
    "parse_status_fields",
    "unflatten",
]

#: Larger bodies are refused; a real callback is well under 4 KiB.
MAX_CALLBACK_BYTES: Final = 64 * 1024
#: ``Legs[0][Status]`` → ``Legs``, ``0``, ``Status``; ``StatusCallbackEvents[]`` → ``…``, ``""``.
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_INDEX = re.compile(r"\[([^\[\]]*)\]")
_MAX_INDEX: Final = 1000
#: ``name="Legs[0][Status]"`` (quoted, with ``\"`` escapes) or ``name=token`` in a Content-Disposition.
_PART_NAME = re.compile(r'(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Leg:
    """One leg of the call: its ``Status`` (None when it was never attempted), ``OnCallDuration``
    (seconds), and ``AnsweredBy`` (``Human``, ``Machine``, ``NotSure``, ``NA``; case as sent)."""

    status: str | None = None
    on_call_duration: int | None = None
    answered_by: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class StatusEvent:
    """One status callback. ``event_type`` and ``status`` are lower-case (Exotel's case varies, §8.2);
    a callback without ``EventType`` (only ``StatusCallback`` was set) is the end-of-call one and reads
    as ``terminal``. ``fields`` holds every field as received, arrays rebuilt."""

    call_sid: str
    event_type: str
    status: str
    date_created: str | None = None
    date_updated: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    phone_number_sid: str | None = None
    direction: str | None = None
    conversation_duration: int | None = None
    """Seconds both parties were connected."""
    duration: int | None = None
    """Seconds, when sent (not documented for these callbacks)."""
    recording_url: str | None = None
    custom_field: str | None = None
    legs: tuple[Leg, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        """What Exotel's retries repeat: ``(CallSid, EventType)``, the de-duplication key (§8.1)."""
        return self.call_sid, self.event_type

    @property
    def terminal(self) -> bool:
        """Whether this is the end-of-call event."""
        return self.event_type == "terminal"

    @property
    def answered_by(self) -> str | None:
        """The first leg's ``AnsweredBy``, if any."""
        return next((leg.answered_by for leg in self.legs if leg.answered_by), None)


def parse_status_callback(body: bytes, content_type: str | None) -> StatusEvent:
    """Parse a callback body given its ``Content-Type`` header (JSON, urlencoded or multipart).

    Without a usable content type the body is sniffed (``{`` → JSON, else urlencoded). Raises
    ``InvalidCallback`` for anything that is not a callback (too large, malformed, no ``CallSid``).
    """
    if len(body) > MAX_CALLBACK_BYTES:
        raise InvalidCallback(f"body of {len(body)} bytes is over {MAX_CALLBACK_BYTES}")
    media_type, params = _parse_content_type(content_type or "")
    charset = params.get("charset", "utf-8")
    if media_type == "multipart/form-data":
        return parse_status_fields(unflatten(_multipart_pairs(body, content_type or "")))
    text = _decode(body, charset)
    if media_type == "application/json" or (
        media_type not in ("application/x-www-form-urlencoded",) and text.lstrip().startswith("{")
    ):
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidCallback(f"JSON body does not parse: {exc}") from None
        if not isinstance(payload, dict):
            raise InvalidCallback("JSON body is not an object")
        return parse_status_fields(payload)
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text.strip()))
    except ValueError as exc:
        raise InvalidCallback(f"form body does not parse: {exc}") from None
    return parse_status_fields(unflatten(pairs))


def parse_status_fields(fields: Mapping[str, Any]) -> StatusEvent:
    """A ``StatusEvent`` from already-decoded fields (a JSON object, or form pairs run through
    :func:`unflatten`). Raises ``InvalidCallback`` without a ``CallSid``."""
    lowered = lower_keys(fields)
    call_sid = _text(lowered.get("callsid"))
    if call_sid is None:
        raise InvalidCallback("no CallSid")
    status = (_text(lowered.get("status")) or "").lower()
    event_type = (_text(lowered.get("eventtype")) or "").lower()
    if not event_type and status in TERMINAL_STATUSES:
        event_type = "terminal"
    return StatusEvent(
        call_sid=call_sid,
        event_type=event_type,
        status=status,
        date_created=_text(lowered.get("datecreated")),
        date_updated=_text(lowered.get("dateupdated")),
        start_time=_text(lowered.get("starttime")),
        end_time=_text(lowered.get("endtime")),
        from_number=_text(lowered.get("from")),
        to_number=_text(lowered.get("to")),
        phone_number_sid=_text(lowered.get("phonenumbersid")),
        direction=_text(lowered.get("direction")),
        conversation_duration=_integer(lowered.get("conversationduration")),
        duration=_integer(lowered.get("duration")),
        recording_url=_text(lowered.get("recordingurl")),
        custom_field=_raw_text(lowered.get("customfield")),
        legs=_legs(lowered.get("legs")),
        fields=dict(fields),
    )


def unflatten(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form pairs → nested fields: ``Legs[0][Status]=busy`` → ``{"Legs": [{"Status": "busy"}]}``,
    ``Events[]=a&Events[]=b`` → ``{"Events": ["a", "b"]}``. Objects whose keys are all indices become
    lists in index order; a plain key given twice keeps its last value."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.fullmatch(key)
        if match is None:
            root[key] = value
            continue
        name, brackets = match.group(1), match.group(2)
        path = _INDEX.findall(brackets)
        if not path:
            root[name] = value
            continue
        node = root.setdefault(name, {})
        if not isinstance(node, dict):
            node = root[name] = {"": node}
        for step in path[:-1]:
            step = step or str(_next_index(node))
            child = node.setdefault(step, {})
            if not isinstance(child, dict):
                child = node[step] = {"": child}
            node = child
        last = path[-1] or str(_next_index(node))
        node[last] = value
    return {key: _listify(value) for key, value in root.items()}


def _next_index(node: dict[str, Any]) -> int:
    return sum(1 for key in node if key.isdigit())


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(item) for key, item in value.items()}
    if converted and all(key.isdigit() and int(key) <= _MAX_INDEX for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _legs(value: Any) -> tuple[Leg, ...]:
    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        try:
            value = json.loads(value)  # a JSON array sent as one form field
        except (ValueError, RecursionError):
            return ()
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return ()
    legs: list[Leg] = []
    for item in value:
        if not isinstance(item, Mapping):
            continue
        fields = lower_keys(item)
        leg = fields.get("leg")  # Call Details nests them: {"Leg": {"Id": 1, …}}
        if isinstance(leg, Mapping):
            fields = lower_keys(leg)
        status = _text(fields.get("status"))
        legs.append(
            Leg(
                status=None if status is None or status.lower() == "null" else status.lower(),
                on_call_duration=_integer(fields.get("oncallduration")),
                answered_by=_text(fields.get("answeredby")),
                fields=dict(item),
            )
        )
    return tuple(legs)


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    media_type, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        name, sep, param = part.partition("=")
        if sep:
            params[name.strip().lower()] = param.strip().strip('"')
    return media_type.strip().lower(), params


def _decode(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError):
        raise InvalidCallback(f"body is not valid {charset}") from None


def _multipart_pairs(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """The form fields of a ``multipart/form-data`` body (RFC 7578): parts split on the boundary, each
    named by its ``Content-Disposition``. (The standard library's MIME parser is ~100x slower here.)"""
    boundary = _parse_content_type(content_type)[1].get("boundary")
    if not boundary:
        raise InvalidCallback("multipart body without a boundary in its Content-Type")
    sections = body.split(b"--" + boundary.encode("latin-1", "replace"))
    if len(sections) < 2:
        raise InvalidCallback("multipart body does not contain its boundary")
    pairs: list[tuple[str, str]] = []
    for section in sections[1:]:
        if section.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = section.partition(b"\n\n")
        if not sep:
            raise InvalidCallback("a multipart part has no blank line after its headers")
        content = content.removesuffix(b"\r\n") if content.endswith(b"\r\n") else content.removesuffix(b"\n")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        match = _PART_NAME.search(headers.get("content-disposition", ""))
        if match is None:
            continue
        field_name = match.group(1) if match.group(1) is not None else match.group(2)
        field_name = field_name.replace('\\"', '"').encode("latin-1", "replace").decode("utf-8", "replace")
        charset = _parse_content_type(headers.get("content-type", ""))[1].get("charset", "utf-8")
        pairs.append((field_name, _decode(content, charset)))
    return pairs


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping | list):
        return None
    text = str(value).strip()
    return None if not text or text.lower() == "null" else text


def _raw_text(value: Any) -> str | None:
    """A value the application chose (``CustomField``): kept exactly, only null/absent becomes None."""
    if value is None or isinstance(value, Mapping | list):
        return None
    return str(value)


def _integer(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return round(float(str(value).strip()))
    except (ValueError, OverflowError):
        return None
