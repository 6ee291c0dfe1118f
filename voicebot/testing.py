"""Test a bot without a phone: ``FakeExotel`` plays Exotel's side of a stream against any ``ws://`` URL.

It speaks the protocol the way Exotel does (exotel-protocol.md §13.2): ``connected``, ``start`` with
32-hex SIDs, caller audio as ``media`` every 100 ms at real-time pace, ``dtmf``, ``stop``. It plays the
bot's audio out on a real-time clock, as Exotel does, echoing a ``mark`` only once everything sent
before it has played and dropping not-yet-started audio on ``clear``; it records what the caller heard
as one continuous track, and checks every message the bot sends against Exotel's rules. Field
variants (integer scalars, camelCase keys, …) and network faults (jitter, loss, duplicates, a stall, a
peer that stops reading, a dropped connection) are switched on with :class:`WireOptions` and
:class:`Faults`.

Testing a handler in-process takes a few lines::

    from handlers.echo import EchoBot
    from voicebot.audio import tone
    from voicebot.testing import FakeExotel, serve_handler

    async def test_echo_bot() -> None:
        voice = tone(300, 1.0, 16000)
        async with (
            serve_handler(EchoBot) as url,
            FakeExotel(url, sample_rate=16000, caller_audio=voice) as exotel,
        ):
            await exotel.run(3.0)
            await exotel.press("#")
            await exotel.wait_closed(timeout=5)
        report = exotel.result
        assert report.ok, report.summary()
        assert report.hung_up_by == "bot"
        assert report.onset(after=0.0) is not None

Times in this module are **stream times**: seconds since ``start`` was sent (``FakeExotel.started_at``
is that instant on the loop clock). Caller audio sample ``i`` belongs to stream time ``i / rate``, and
bot audio that plays at stream time ``t`` is at index ``t · rate`` of the heard track, so the two line
up for latency measurements.

:class:`Playout` (Exotel's playout queue) and :func:`check_bot_message` (the validator) are pure, so
they can be tested and reused with explicit times.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import enum
import heapq
import itertools
import json
import math
import os
import random
import secrets
import statistics
import urllib.parse
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voicebot.audio import Samples, decode, encode
from voicebot.errors import ConfigError, RemoteProtocolError
from voicebot.events import SUPPORTED_RATES, Encoding
from voicebot.protocol import DTMF_DIGITS, MAX_MEDIA_BYTES

if TYPE_CHECKING:
    from voicebot.handler import Handler

__all__ = [
    "AFTER_STOP_GRACE",
    "BotMessage",
    "BotProtocolError",
    "CallReport",
    "ChunkRecord",
    "ClearRecord",
    "FakeExotel",
    "Faults",
    "MarkRecord",
    "MessageRules",
    "Playout",
    "Rule",
    "SentMessage",
    "Underrun",
    "Violation",
    "WireOptions",
    "check_bot_message",
    "dominant_frequency",
    "find_onset",
    "parse_dtmf_script",
    "serve_handler",
    "simulate",
]

#: Bot messages arriving this long after ``stop`` was sent count as sent after the call ended (the
#: bot could not have seen ``stop`` yet for anything earlier).
AFTER_STOP_GRACE: Final = 0.5
#: Exotel's minimum chunk, 3 200 bytes of PCM16, is 1 600 samples; μ-law gets the same duration.
MIN_CHUNK_SAMPLES: Final = 1600
#: An underrun is a gap in the bot's audio shorter than this; longer silences are pauses between turns.
MAX_UNDERRUN_GAP: Final = 1.0
#: Gaps shorter than this are clock noise, not underruns.
MIN_UNDERRUN_GAP: Final = 0.001
#: Exotel rejects stream URLs this long or longer (Connect Voice AI ``StreamUrl``).
MAX_URL_LENGTH: Final = 600
#: Messages larger than this close the socket (1009) instead of being validated.
MAX_BOT_MESSAGE_BYTES: Final = 4 << 20
#: How long ``hangup`` waits for ``stop`` to leave before dropping the connection instead.
STOP_SEND_TIMEOUT: Final = 2.0
CLOSE_TIMEOUT: Final = 5.0

_CAMEL: Final = {
    "stream_sid": "streamSid",
    "sequence_number": "sequenceNumber",
    "call_sid": "callSid",
    "account_sid": "accountSid",
    "custom_parameters": "customParameters",
    "media_format": "mediaFormat",
    "sample_rate": "sampleRate",
    "bit_rate": "bitRate",
}
_BOT_EVENTS: Final = frozenset({"media", "mark", "clear"})


# ------------------------------------------------------------------------------------------ violations


class Rule(enum.StrEnum):
    """The Exotel rules a bot's messages are checked against (exotel-protocol.md §5, §13.2)."""

    BINARY_FRAME = "binary_frame"
    """Every message must be a JSON text frame."""
    NOT_JSON = "not_json"
    """The text is not a JSON object."""
    NO_EVENT = "no_event"
    """No string ``event`` field."""
    UNKNOWN_EVENT = "unknown_event"
    """Exotel accepts only ``media``, ``mark`` and ``clear`` from the bot."""
    CAMEL_CASE = "camel_case_key"
    """Keys are snake_case (``stream_sid``, not ``streamSid``)."""
    STREAM_SID_MISMATCH = "stream_sid_mismatch"
    """A ``stream_sid`` that is not the one ``start`` gave."""
    BEFORE_START = "before_start"
    """Nothing may be sent before ``start``."""
    AFTER_STOP = "after_stop"
    """Messages sent after the caller hung up (warning: Exotel ignores them)."""
    BAD_PAYLOAD = "bad_payload"
    """``media.payload`` missing, not a string, or not base64."""
    EMPTY_PAYLOAD = "empty_payload"
    """A media message with no audio."""
    ODD_LENGTH = "odd_length"
    """PCM16 payloads are whole 16-bit samples."""
    FRAME_MULTIPLE = "frame_multiple"
    """Payloads are whole 20 ms frames (a multiple of 320 bytes for PCM16 at 8 kHz)."""
    TOO_LARGE = "too_large"
    """At most 100 000 bytes per media message."""
    TOO_SMALL = "too_small"
    """At least 3 200 bytes of PCM16 (1 600 samples); a warning unless ``strict_minimum``."""
    BAD_MARK = "bad_mark"
    """A ``mark`` needs a non-empty string ``mark.name``."""


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which, what exactly, when (stream time) and how bad."""

    rule: Rule
    message: str
    at: float
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.at:8.3f}s {self.severity} {self.rule.value}: {self.message}"


class BotProtocolError(RemoteProtocolError):
    """Raised in strict mode: the bot broke one of Exotel's rules (see ``violation``)."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


# ------------------------------------------------------------------------------------------ validator


@dataclass(frozen=True, slots=True)
class MessageRules:
    """What a bot message is checked against: the stream's format and SID."""

    sample_rate: int
    encoding: Encoding
    stream_sid: str | None
    """The SID ``start`` carried, or None when it carried none (then any SID is accepted)."""
    strict_minimum: bool = False

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame on the wire."""
        return self.sample_rate // 50 * self.encoding.bytes_per_sample

    @property
    def min_bytes(self) -> int:
        """Exotel's minimum chunk: 3 200 bytes of PCM16, or the same duration of μ-law."""
        return MIN_CHUNK_SAMPLES * self.encoding.bytes_per_sample


@dataclass(frozen=True, slots=True)
class BotMessage:
    """What a bot message asks Exotel to do: play ``payload``, echo mark ``name``, or clear."""

    event: Literal["media", "mark", "clear"]
    payload: bytes = b""
    name: str = ""


def check_bot_message(
    data: str | bytes, rules: MessageRules, at: float = 0.0
) -> tuple[BotMessage | None, list[Violation]]:
    """Validate one frame from the bot; return what it asks for (None if unusable) and the violations.

    Never raises for bad input. Audio that breaks only size rules is still returned, as Exotel would
    still play it.
    """
    found: list[Violation] = []

    def violate(rule: Rule, message: str, severity: Severity = "error") -> None:
        found.append(Violation(rule, message, at, severity))

    if isinstance(data, bytes | bytearray | memoryview):
        violate(Rule.BINARY_FRAME, f"a binary frame of {len(data)} bytes; Exotel expects JSON text frames")
        return None, found
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        violate(Rule.NOT_JSON, f"not JSON ({exc}): {_preview(data)}")
        return None, found
    if not isinstance(message, dict):
        violate(Rule.NOT_JSON, f"not a JSON object: {_preview(data)}")
        return None, found
    camel = _camel_keys(message)
    if camel:
        violate(Rule.CAMEL_CASE, f"keys must be snake_case, got {', '.join(camel)}")
    event = message.get("event")
    if not isinstance(event, str):
        violate(Rule.NO_EVENT, f"no string 'event' field: {_preview(data)}")
        return None, found
    if event not in _BOT_EVENTS:
        violate(
            Rule.UNKNOWN_EVENT, f"event {event!r}; Exotel accepts only media, mark and clear from the bot"
        )
        return None, found
    sid = message.get("stream_sid")
    if rules.stream_sid is not None and sid is not None and sid != rules.stream_sid:
        violate(Rule.STREAM_SID_MISMATCH, f"stream_sid {_preview(sid)} is not {rules.stream_sid!r}")
    if event == "clear":
        return BotMessage("clear"), found
    if event == "mark":
        mark = message.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str) or not name:
            violate(Rule.BAD_MARK, f"mark needs a non-empty string mark.name: {_preview(data)}")
            return None, found
        return BotMessage("mark", name=name), found
    media = message.get("media")
    payload_text = media.get("payload") if isinstance(media, dict) else None
    if not isinstance(payload_text, str):
        violate(Rule.BAD_PAYLOAD, f"media needs a base64 string media.payload: {_preview(data)}")
        return None, found
    try:
        payload = binascii.a2b_base64(payload_text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        violate(Rule.BAD_PAYLOAD, f"media.payload is not valid base64 ({exc})")
        return None, found
    size = len(payload)
    if size == 0:
        violate(Rule.EMPTY_PAYLOAD, "media.payload carries no audio")
        return None, found
    if rules.encoding is Encoding.PCM16 and size % 2:
        violate(Rule.ODD_LENGTH, f"{size} bytes is not a whole number of 16-bit samples")
    if size % rules.frame_bytes:
        violate(
            Rule.FRAME_MULTIPLE,
            f"{size} bytes is not whole 20 ms frames (a multiple of {rules.frame_bytes} bytes at "
            f"{rules.sample_rate} Hz {rules.encoding.value}); Exotel waits 20 ms on a short frame",
        )
    if size > MAX_MEDIA_BYTES:
        violate(Rule.TOO_LARGE, f"{size} bytes is over Exotel's {MAX_MEDIA_BYTES}-byte maximum")
    if size < rules.min_bytes:
        violate(
            Rule.TOO_SMALL,
            f"{size} bytes is under Exotel's minimum of {rules.min_bytes} bytes (3 200 B of PCM16)",
            "error" if rules.strict_minimum else "warning",
        )
    return BotMessage("media", payload=payload), found


def _camel_keys(message: Mapping[str, Any]) -> list[str]:
    keys = [key for key in message if any(ch.isupper() for ch in key)]
    for nested in ("media", "mark"):
        inner = message.get(nested)
        if isinstance(inner, dict):
            keys.extend(f"{nested}.{key}" for key in inner if any(ch.isupper() for ch in key))
    return keys


def _preview(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------- playout


@dataclass(slots=True)
class ChunkRecord:
    """One media message from the bot and what became of it (times in stream seconds)."""

    arrived_at: float
    size: int
    """Decoded payload bytes."""
    samples: Samples = field(repr=False)
    start: int
    """Track index where it starts playing: ``max(arrival, end of the previous chunk)``."""
    previous_end: int = field(repr=False)
    sample_rate: int = field(repr=False)
    cleared: bool = False
    """Dropped by a ``clear`` before it started playing."""
    lead_at_arrival: float | None = None
    """Seconds of audio still queued ahead of playback when it arrived in the middle of an utterance
    (negative: the queue had already run dry that long, an underrun); None for the first chunk of an
    utterance. A few milliseconds means any network delay on a real call would have been a gap."""

    @property
    def end(self) -> int:
        """Track index one past its last sample."""
        return self.start + len(self.samples)

    @property
    def play_start(self) -> float:
        """Stream time it starts (or would have started) playing."""
        return self.start / self.sample_rate

    @property
    def play_end(self) -> float:
        """Stream time it finishes (or would have finished) playing."""
        return self.end / self.sample_rate

    @property
    def duration(self) -> float:
        """Seconds of audio it carries."""
        return len(self.samples) / self.sample_rate


@dataclass(slots=True)
class MarkRecord:
    """A mark the bot sent: when it arrived, when its audio had played, when we echoed it."""

    name: str
    received_at: float
    due: float
    """When everything sent before it has played: the earliest time it may be echoed."""
    echoed_at: float | None = None
    cleared: bool = False
    """A ``clear`` dropped audio queued before it."""

    @property
    def round_trip(self) -> float | None:
        """Seconds from its arrival to its echo (how long its audio was queued), if echoed."""
        return None if self.echoed_at is None else self.echoed_at - self.received_at


@dataclass(frozen=True, slots=True)
class ClearRecord:
    """A ``clear`` from the bot and what it dropped."""

    at: float
    dropped_chunks: int
    dropped_seconds: float
    marks_cleared: int


@dataclass(frozen=True, slots=True)
class Underrun:
    """The playout queue ran dry mid-utterance: silence from ``at`` for ``duration`` seconds."""

    at: float
    duration: float


class Playout:
    """Exotel's playout queue for the bot's audio, on a sample-exact stream clock. Pure: times are passed in.

    A chunk starts playing at ``max(arrival, end of the previous chunk)``; a mark is due once all audio
    before it has played; ``clear`` drops chunks that have not started (the playing one finishes) and
    the marks queued behind them, which are then never echoed (``marks_on_clear="drop"``, the literal
    reading of the docs) or echoed at once (``"echo"``, Twilio's behaviour).

    An underrun is a gap between two chunks with no ``mark`` or ``clear`` from the bot in between (a
    mark ends an utterance) that is at least ``MIN_UNDERRUN_GAP`` and at most ``max_underrun_gap``.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        marks_on_clear: Literal["drop", "echo"] = "drop",
        max_underrun_gap: float = MAX_UNDERRUN_GAP,
    ) -> None:
        if marks_on_clear not in ("drop", "echo"):
            raise ConfigError(f"marks_on_clear must be 'drop' or 'echo', got {marks_on_clear!r}")
        self.sample_rate = sample_rate
        self.marks_on_clear = marks_on_clear
        self.max_underrun_gap = max_underrun_gap
        self.chunks: list[ChunkRecord] = []
        self.marks: list[MarkRecord] = []
        self.clears: list[ClearRecord] = []
        self.underruns: list[Underrun] = []
        self.max_lead = 0.0
        """The most audio (seconds) ever queued ahead of playback."""
        self._unstarted: deque[ChunkRecord] = deque()
        self._pending_marks: deque[MarkRecord] = deque()
        self._queue_end = 0
        self._speaking = False
        self._ended: int | None = None

    def _index(self, t: float) -> int:
        # The first sample at or after `t`; the epsilon absorbs float noise in t * rate.
        return max(0, math.ceil(t * self.sample_rate - 1e-6))

    @property
    def ended(self) -> bool:
        """Whether the call has ended (nothing more plays)."""
        return self._ended is not None

    def add_chunk(self, samples: Samples, arrived_at: float, size: int | None = None) -> ChunkRecord:
        """Queue a chunk that arrived at ``arrived_at``; returns its record (with its play time)."""
        arrival = self._index(arrived_at)
        while self._unstarted and self._unstarted[0].start <= arrival:
            self._unstarted.popleft()
        gap = arrival - self._queue_end
        lead: float | None = None
        if self._speaking and self.chunks and gap / self.sample_rate <= self.max_underrun_gap:
            lead = -gap / self.sample_rate
            if lead <= -MIN_UNDERRUN_GAP:
                self.underruns.append(Underrun(self._queue_end / self.sample_rate, -lead))
        start = max(arrival, self._queue_end)
        record = ChunkRecord(
            arrived_at,
            len(samples) * 2 if size is None else size,
            samples,
            start,
            self._queue_end,
            self.sample_rate,
            lead_at_arrival=lead,
        )
        self.chunks.append(record)
        self._unstarted.append(record)
        self._queue_end = record.end
        self._speaking = True
        self.max_lead = max(self.max_lead, (record.end - arrival) / self.sample_rate)
        return record

    def add_mark(self, name: str, arrived_at: float) -> MarkRecord:
        """Queue a mark; it is due once everything before it has played (at once if nothing is queued)."""
        due = max(self._index(arrived_at), self._queue_end)
        record = MarkRecord(name, arrived_at, due / self.sample_rate)
        self.marks.append(record)
        self._pending_marks.append(record)
        self._speaking = False
        return record

    def clear(self, at: float) -> ClearRecord:
        """Drop the chunks that have not started playing by ``at`` and the marks queued behind them."""
        now = self._index(at)
        dropped: list[ChunkRecord] = []
        while self._unstarted and self._unstarted[-1].start > now:
            dropped.append(self._unstarted.pop())
        for chunk in dropped:
            chunk.cleared = True
        if dropped:  # popped newest first: the last one is the earliest dropped
            self._queue_end = dropped[-1].previous_end
        kept: deque[MarkRecord] = deque()
        cleared_marks = 0
        for mark in self._pending_marks:
            if mark.due * self.sample_rate > self._queue_end + 1e-6:
                mark.cleared = True
                cleared_marks += 1
                if self.marks_on_clear == "echo":
                    mark.due = max(at, 0.0)
                    kept.append(mark)
            else:
                kept.append(mark)
        self._pending_marks = deque(sorted(kept, key=lambda mark: mark.due))
        self._speaking = False
        record = ClearRecord(
            at, len(dropped), sum(len(chunk.samples) for chunk in dropped) / self.sample_rate, cleared_marks
        )
        self.clears.append(record)
        return record

    def next_mark_due(self) -> float | None:
        """When the next mark echo is due, or None if no mark is waiting."""
        if self._ended is not None or not self._pending_marks:
            return None
        return self._pending_marks[0].due

    def due_marks(self, now: float) -> list[MarkRecord]:
        """Take the marks whose echo is due by ``now``, in order (the caller sets ``echoed_at``)."""
        due: list[MarkRecord] = []
        while self._pending_marks and self._pending_marks[0].due <= now + 1e-9 and self._ended is None:
            due.append(self._pending_marks.popleft())
        return due

    def queued_seconds(self, now: float) -> float:
        """Seconds of audio queued ahead of playback at ``now``."""
        return max(0, self._queue_end - self._index(now)) / self.sample_rate

    def end(self, at: float) -> float:
        """The call ended at ``at``: nothing plays after it. Returns the seconds of audio cut off."""
        if self._ended is None:
            self._ended = self._index(at)
            self._pending_marks.clear()
        return self.cut_seconds

    @property
    def cut_seconds(self) -> float:
        """Seconds of queued audio that never played because the call ended first."""
        if self._ended is None:
            return 0.0
        ended = self._ended
        cut = sum(
            chunk.end - max(chunk.start, ended)
            for chunk in self.chunks
            if not chunk.cleared and chunk.end > ended
        )
        return cut / self.sample_rate

    def track(self, until: float) -> Samples:
        """What the caller heard from stream time 0 to ``until`` (or the end of the call), silence-filled."""
        length = self._index(until)
        if self._ended is not None:
            length = min(length, self._ended)
        heard = np.zeros(length, dtype=np.int16)
        for chunk in self.chunks:
            if chunk.cleared or chunk.start >= length:
                continue
            stop = min(chunk.end, length)
            heard[chunk.start : stop] = chunk.samples[: stop - chunk.start]
        return heard


def find_onset(track: Samples, sample_rate: int, after: float = 0.0, threshold: float = 0.05) -> float | None:
    """Stream time of the first sample at or after ``after`` whose magnitude reaches ``threshold``
    (a fraction of full scale), or None."""
    first = max(0, math.ceil(after * sample_rate - 1e-6))
    loud = np.flatnonzero(np.abs(track[first:].astype(np.int32)) >= threshold * 32768)
    return None if len(loud) == 0 else (first + int(loud[0])) / sample_rate


def dominant_frequency(samples: Samples, sample_rate: int, *, min_level: float = 0.01) -> float | None:
    """The frequency in Hz of the strongest tone in ``samples``, or None when they are quieter than
    ``min_level`` (RMS as a fraction of full scale, after removing any DC offset).

    A Hann-windowed FFT with the peak refined by interpolating between bins, so a 0.1 s window at
    8 kHz (10 Hz bins) still tells 300 Hz from 303 Hz. Meant for tests: "was that the 440 Hz greeting?"
    """
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"samples must be 1-D, got shape {values.shape}")
    if len(values) < 8:
        return None
    values = values - values.mean()
    if math.sqrt(float(np.mean(values * values))) < min_level * 32768:
        return None
    spectrum = np.abs(np.fft.rfft(values * np.hanning(len(values))))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < peak < len(spectrum) - 1:
        # A parabola through the log magnitudes of the peak bin and its neighbours: near-exact for
        # the Gaussian-like main lobe of a Hann window.
        left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
        curvature = left - 2 * centre + right
        if curvature < 0:
            offset = 0.5 * (left - right) / curvature
    return (peak + offset) * sample_rate / len(values)


# --------------------------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class WireOptions:
    """How ``FakeExotel`` spells its messages: the documented shape by default, or a variant seen in
    the field (exotel-protocol.md §4, §12)."""

    int_scalars: bool = False
    """Numbers as JSON integers (``sequence_number``, ``chunk``, ``timestamp``, ``sample_rate`` …)."""
    camel_case: bool = False
    """``streamSid``, ``sequenceNumber``, ``callSid``, ``customParameters``, ``mediaFormat`` …"""
    custom_parameters_format: Literal["object", "json", "query"] = "object"
    """``custom_parameters`` as an object, a JSON string, or a query string (``a=1&b=2``)."""
    omit_stream_sid: bool = False
    """No ``stream_sid`` anywhere (it is documented as optional)."""
    url_sample_rate: int | Literal["same", "omit"] = "same"
    """The URL's ``sample-rate``: the stream's rate, another number (to disagree with ``start``), or
    ``"omit"`` to leave the URL exactly as given."""
    url_rate_key: Literal["sample-rate", "sample_rate"] = "sample-rate"
    omit_start_sample_rate: bool = False
    """No ``media_format.sample_rate`` in ``start`` (the bot must fall back to the URL)."""
    media_encoding: str | None = None
    """``media_format.encoding`` as sent; default ``audio/x-raw`` (PCM16) or ``audio/x-mulaw``."""
    send_connected: bool = True
    start_delay: float = 0.0
    """Seconds between ``connected`` and ``start`` (a bot must not send anything in between)."""
    dtmf_flat: bool = False
    """``{"event": "dtmf", "digit": "5"}`` as in the beta extension guide, instead of ``dtmf.digit``."""
    stop_close_delay: float = 0.0
    """Seconds between sending ``stop`` and closing the socket (unless the bot closes first); what the
    bot sends meanwhile is checked (``after_stop``) but never played."""

    def __post_init__(self) -> None:
        if self.custom_parameters_format not in ("object", "json", "query"):
            raise ConfigError(
                "custom_parameters_format must be object, json or query, "
                f"got {self.custom_parameters_format!r}"
            )
        if self.url_sample_rate not in ("same", "omit") and (
            not isinstance(self.url_sample_rate, int) or self.url_sample_rate <= 0
        ):
            raise ConfigError(
                f"url_sample_rate must be 'same', 'omit' or a positive int, got {self.url_sample_rate!r}"
            )
        if self.url_rate_key not in ("sample-rate", "sample_rate"):
            raise ConfigError(f"url_rate_key must be sample-rate or sample_rate, got {self.url_rate_key!r}")
        for name in ("start_delay", "stop_close_delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 10.0:
                raise ConfigError(f"{name} must be 0-10 seconds, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Network and peer faults to inject. Times are stream seconds; chunk numbers start at 1."""

    jitter_ms: float = 0.0
    """Each media message is delayed by a random 0..``jitter_ms``."""
    reorder: bool = False
    """Let delayed messages overtake each other (by default delivery keeps sequence order)."""
    drop_chunks: frozenset[int] = frozenset()
    """Media chunk numbers never delivered (their sequence numbers are used: a gap)."""
    drop_probability: float = 0.0
    duplicate_chunks: frozenset[int] = frozenset()
    """Media chunk numbers delivered twice."""
    duplicate_probability: float = 0.0
    stall_at: float | None = None
    """From this time, deliver nothing for ``stall_seconds``."""
    stall_seconds: float = 0.0
    stall_burst: bool = True
    """After the stall, deliver what was held in one burst (a TCP stall); else media due in it is lost."""
    stop_reading_at: float | None = None
    """From this time, stop reading the socket (a half-dead peer: TCP backpressure builds at the bot)."""
    disconnect_at: float | None = None
    """At this time, drop the connection: no ``stop``, no close frame (the bot sees 1006)."""
    seed: int = 0
    """Seed of the random choices, so a faulty run is reproducible."""

    def __post_init__(self) -> None:
        if self.jitter_ms < 0:
            raise ConfigError(f"jitter_ms must be >= 0, got {self.jitter_ms}")
        for name in ("drop_probability", "duplicate_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        for name in ("stall_at", "stop_reading_at", "disconnect_at"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {value}")
        if self.stall_at is not None and self.stall_seconds <= 0:
            raise ConfigError(f"stall_seconds must be > 0 when stall_at is set, got {self.stall_seconds}")
        object.__setattr__(self, "drop_chunks", frozenset(self.drop_chunks))
        object.__setattr__(self, "duplicate_chunks", frozenset(self.duplicate_chunks))


# ---------------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message FakeExotel delivered to the bot: its sequence number, when it was due, when it left."""

    event: str
    sequence_number: int | None
    due: float
    """Nominal stream time (chunk ``k`` is due at ``k × chunk``)."""
    sent_at: float
    chunk: int | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class CallReport:
    """Everything FakeExotel saw of one call. ``ok`` is False when the bot broke an error-level rule."""

    sample_rate: int
    encoding: Encoding
    stream_sid: str
    call_sid: str
    duration: float
    """Stream time when the call ended (or when the report was taken, if it is live)."""
    heard: Samples = field(repr=False)
    """What the caller heard: one track at the stream rate from stream time 0, silent where nothing played."""
    violations: list[Violation]
    chunks: list[ChunkRecord] = field(repr=False)
    marks: list[MarkRecord]
    clears: list[ClearRecord]
    underruns: list[Underrun]
    sent: list[SentMessage] = field(repr=False)
    dropped_chunks: list[int]
    duplicated_chunks: list[int]
    hung_up_by: Literal["caller", "bot", "network", ""]
    """Who ended the call: the caller (FakeExotel), the bot (it closed the socket), or the network."""
    hangup_reason: str
    close_code: int | None
    close_reason: str | None
    audio_cut: float
    """Seconds of the bot's audio still queued when the call ended (never heard)."""
    max_lead: float
    """The most audio the bot ever had queued ahead of playback, in seconds."""

    @property
    def errors(self) -> list[Violation]:
        """Error-level violations."""
        return [v for v in self.violations if v.severity == "error"]

    @property
    def warnings(self) -> list[Violation]:
        """Warning-level violations (e.g. chunks under the 3 200-byte minimum)."""
        return [v for v in self.violations if v.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No error-level violation: what ``simulate`` turns into exit status 0."""
        return not self.errors

    @property
    def first_audio_at(self) -> float | None:
        """Stream time the bot's first audio started playing (None if none played)."""
        played = [chunk.play_start for chunk in self.chunks if not chunk.cleared]
        starts = [t for t in played if t < self.duration]
        return min(starts) if starts else None

    @property
    def chunk_sizes(self) -> Counter[int]:
        """Media payload sizes in bytes → how many messages had that size."""
        return Counter(chunk.size for chunk in self.chunks)

    @property
    def mark_round_trips(self) -> list[float]:
        """Seconds from each echoed mark's arrival to its echo."""
        return [rt for mark in self.marks if (rt := mark.round_trip) is not None]

    @property
    def underrun_seconds(self) -> float:
        """Total silence from underruns."""
        return sum(underrun.duration for underrun in self.underruns)

    @property
    def min_lead(self) -> float | None:
        """The least audio (seconds) still queued ahead of playback when a chunk arrived mid-utterance;
        negative after an underrun, None if no chunk arrived mid-utterance. Near zero means the bot
        sends just in time: on a real network, jitter would cut gaps into its audio."""
        leads = [chunk.lead_at_arrival for chunk in self.chunks if chunk.lead_at_arrival is not None]
        return min(leads) if leads else None

    def dominant_frequency(self, start: float, end: float, *, min_level: float = 0.01) -> float | None:
        """The pitch (Hz) the caller heard loudest between ``start`` and ``end`` (stream seconds), or
        None if that stretch was quieter than ``min_level`` of full scale: see :func:`dominant_frequency`."""
        return dominant_frequency(self.heard_between(start, end), self.sample_rate, min_level=min_level)

    def heard_between(self, start: float, end: float) -> Samples:
        """What the caller heard from ``start`` to ``end`` (stream seconds), zero-padded past the end."""
        return _slice(self.heard, self.sample_rate, start, end)

    def onset(self, after: float = 0.0, threshold: float = 0.05) -> float | None:
        """When the caller first heard audio reaching ``threshold`` × full scale at or after ``after``."""
        return find_onset(self.heard, self.sample_rate, after, threshold)

    def summary(self) -> str:
        """A short human-readable report: who hung up, latency, marks, chunks, underruns, violations."""
        lines = [
            f"call {self.call_sid} stream {self.stream_sid or '-'}: {self.sample_rate} Hz "
            f"{self.encoding.value}, {self.duration:.2f} s",
        ]
        close = "" if self.close_code is None else f" (close {self.close_code} {self.close_reason or ''!r})"
        lines.append(f"hung up by: {self.hung_up_by or 'nobody yet'}: {self.hangup_reason or '-'}{close}")
        first = self.first_audio_at
        audible = self.onset()
        lines.append(
            "first bot audio: "
            + ("none" if first is None else f"{first:.3f} s")
            + ("" if audible is None else f" (audible from {audible:.3f} s)")
        )
        trips = self.mark_round_trips
        cleared = sum(mark.cleared for mark in self.marks)
        unanswered = sum(mark.echoed_at is None and not mark.cleared for mark in self.marks)
        if trips:
            lines.append(
                f"marks: {len(self.marks)} received, {len(trips)} echoed after "
                f"{min(trips):.3f}/{statistics.median(trips):.3f}/{max(trips):.3f} s (min/median/max), "
                f"{cleared} cleared, {unanswered} unanswered"
            )
        else:
            lines.append(f"marks: {len(self.marks)} received, none echoed, {cleared} cleared")
        sizes = ", ".join(f"{size} B x{count}" for size, count in sorted(self.chunk_sizes.items()))
        min_lead = self.min_lead
        lines.append(
            f"chunks: {len(self.chunks)} received ({sizes or 'none'}), max lead {self.max_lead:.3f} s"
            + ("" if min_lead is None else f", min lead {round(min_lead, 3) + 0.0:.3f} s mid-utterance")
        )
        if self.underruns:
            worst = max(self.underruns, key=lambda underrun: underrun.duration)
            lines.append(
                f"underruns: {len(self.underruns)}, {self.underrun_seconds:.3f} s in total "
                f"(longest {worst.duration:.3f} s at {worst.at:.3f} s)"
            )
        else:
            lines.append("underruns: none")
        if self.clears:
            dropped = sum(clear.dropped_seconds for clear in self.clears)
            lines.append(f"clears: {len(self.clears)}, {dropped:.3f} s of audio dropped")
        if self.audio_cut > 0:
            lines.append(f"audio cut off by the end of the call: {self.audio_cut:.3f} s")
        if self.dropped_chunks or self.duplicated_chunks:
            lines.append(
                f"faults: {len(self.dropped_chunks)} caller chunk(s) dropped, "
                f"{len(self.duplicated_chunks)} duplicated"
            )
        if self.violations:
            lines.append(f"violations: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
            shown = self.violations[:20]
            lines.extend(f"  {violation}" for violation in shown)
            if len(self.violations) > len(shown):
                lines.append(f"  … and {len(self.violations) - len(shown)} more")
        else:
            lines.append("violations: none")
        lines.append("result: " + ("OK" if self.ok else "FAILED (protocol violations)"))
        return "\n".join(lines)


def _slice(track: Samples, rate: int, start: float, end: float) -> Samples:
    if end < start:
        raise ValueError(f"end ({end}) must not be before start ({start})")
    first = max(0, math.ceil(start * rate - 1e-6))
    last = max(first, math.ceil(end * rate - 1e-6))
    out = np.zeros(last - first, dtype=np.int16)
    piece = track[first:last]
    out[: len(piece)] = piece
    return out


# ------------------------------------------------------------------------------------------ FakeExotel


@dataclass(slots=True)
class _Outgoing:
    """A message on its way to the bot through the simulated network."""

    text: str
    event: str
    sequence_number: int | None
    due: float
    chunk: int | None = None
    mark: MarkRecord | None = None
    sent: asyncio.Future[bool] | None = None
    duplicate: bool = False


CallerAudio = Samples | str | os.PathLike[str] | None


class FakeExotel:
    """Exotel's side of one stream, against any ``ws://`` URL. Use ``async with FakeExotel(url) as exotel``.

    Entering connects, sends ``connected`` and ``start``, and starts streaming caller audio (``media``
    every ``chunk_ms`` at real-time pace, anchored to the loop clock) while playing out and checking
    whatever the bot sends. Leaving hangs up (``stop`` with ``callended``) if the call is still live.

    ``caller_audio``: an int16 array at ``sample_rate``, a WAV file path (converted), or None for
    silence; silence follows when it runs out. ``custom_parameters``: at most 3 pairs, 256 characters
    (Exotel's rule). ``strict``: raise :class:`BotProtocolError` (from the next await on this object)
    at the first error-level violation and end the call with 1002. ``strict_minimum``: chunks under
    3 200 bytes are errors rather than warnings. ``marks_on_clear``: see :class:`Playout`.
    ``after_stop_grace``: how long after ``stop`` the bot's messages are still in-flight rather than
    ``after_stop`` violations (matters with ``WireOptions.stop_close_delay``).
    """

    def __init__(
        self,
        url: str,
        *,
        sample_rate: int = 8000,
        encoding: Encoding | str = Encoding.PCM16,
        chunk_ms: int = 100,
        caller_audio: CallerAudio = None,
        wire: WireOptions | None = None,
        faults: Faults | None = None,
        strict: bool = False,
        strict_minimum: bool = False,
        custom_parameters: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        account_sid: str = "acmecorp1",
        from_number: str = "+919812345678",
        to_number: str = "+918045678901",
        call_sid: str | None = None,
        stream_sid: str | None = None,
        marks_on_clear: Literal["drop", "echo"] = "drop",
        after_stop_grace: float = AFTER_STOP_GRACE,
        open_timeout: float = 10.0,
    ) -> None:
        if sample_rate not in SUPPORTED_RATES or isinstance(sample_rate, bool):
            raise ConfigError(f"sample_rate must be one of {list(SUPPORTED_RATES)} Hz, got {sample_rate!r}")
        try:
            self.encoding = Encoding(encoding)
        except ValueError:
            raise ConfigError(
                f"encoding must be one of {[e.value for e in Encoding]}, got {encoding!r}"
            ) from None
        if not isinstance(chunk_ms, int) or isinstance(chunk_ms, bool) or not 10 <= chunk_ms <= 2000:
            raise ConfigError(f"chunk_ms must be an int from 10 to 2000, got {chunk_ms!r}")
        self.sample_rate = sample_rate
        self.chunk_ms = chunk_ms
        self.wire = wire or WireOptions()
        self.faults = faults or Faults()
        self.strict = strict
        self.custom_parameters = dict(custom_parameters or {})
        _check_custom_parameters(self.custom_parameters)
        self.account_sid = account_sid
        self.from_number = from_number
        self.to_number = to_number
        self.call_sid = call_sid or secrets.token_hex(16)
        self.stream_sid = stream_sid or secrets.token_hex(16)
        self.url = _stream_url(url, sample_rate, self.wire)
        self._auth = auth
        self._after_stop_grace = after_stop_grace
        self._open_timeout = open_timeout
        self._caller = _load_caller_audio(caller_audio, sample_rate)
        self._chunk_samples = sample_rate * chunk_ms // 1000
        self.rules = MessageRules(
            sample_rate,
            self.encoding,
            None if self.wire.omit_stream_sid else self.stream_sid,
            strict_minimum,
        )
        self.playout = Playout(sample_rate, marks_on_clear=marks_on_clear)
        self.violations: list[Violation] = []
        self.sent: list[SentMessage] = []
        self.dropped_chunks: list[int] = []
        self.duplicated_chunks: list[int] = []
        self._rng = random.Random(self.faults.seed)
        self._ws: ClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0: float | None = None
        self._sequence = itertools.count(1)
        self._next_chunk = 1
        self._producing = False
        self._reading = True
        self._control: list[tuple[float, int, str, Any]] = []
        self._network: list[tuple[float, int, _Outgoing]] = []
        self._order = itertools.count()
        self._last_delivery = -math.inf
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ended_at: float | None = None
        self._stop_sent_at: float | None = None
        self._hung_up_by: Literal["caller", "bot", "network", ""] = ""
        self._hangup_reason = ""
        self._strict_error: BotProtocolError | None = None
        self._failure: BaseException | None = None
        self._early_presses: list[tuple[str, float | None, int, asyncio.Future[bool]]] = []
        self._read_deadline: asyncio.Timeout | None = None

    # --- lifecycle --------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeExotel:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            if self._ws is not None and not self._closed.is_set():
                if exc_type is None:
                    await self._hangup("callended", abort=False, code=1000)
                else:
                    await self._hangup(None, abort=True, code=1000)
        finally:
            await self._shutdown_tasks()
        if exc_type is None:
            self._raise_if_failed()

    async def connect(self) -> None:
        """Open the WebSocket, send ``connected`` and ``start``, and start streaming."""
        if self._ws is not None:
            raise RuntimeError("FakeExotel is single-use: create a new one per call")
        self._loop = asyncio.get_running_loop()
        headers: dict[str, str] = {}
        if self._auth is not None:
            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        self._ws = await connect(
            self.url,
            additional_headers=headers,
            compression=None,
            open_timeout=self._open_timeout,
            ping_interval=None,
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_BOT_MESSAGE_BYTES,
        )
        self._spawn(self._read_loop(), "fake-exotel-reader")
        if self.wire.send_connected:
            await self._ws.send(_dumps({"event": "connected"}))
        if self.wire.start_delay:
            await asyncio.sleep(self.wire.start_delay)
        self._t0 = self._loop.time()
        await self._ws.send(self._start_message())
        self.sent.append(SentMessage("start", 1, 0.0, self.now))
        self._producing = True
        if self.faults.stop_reading_at is not None and self._read_deadline is not None:
            self._read_deadline.reschedule(self._t0 + self.faults.stop_reading_at)
        for digit, at, duration_ms, future in self._early_presses:
            self._schedule_press(digit, at, duration_ms, future)
        self._early_presses.clear()
        self._spawn(self._send_loop(), "fake-exotel-sender")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(self._guard(coro), name=name))

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must surface in the test, not vanish in a task
            self._failure = self._failure or exc
            if self._ws is not None and self._ws.transport is not None:
                self._ws.transport.abort()
            self._on_closed()

    async def _shutdown_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._strict_error is not None:
            raise self._strict_error

    # --- clock ------------------------------------------------------------------------------------------

    @property
    def started_at(self) -> float:
        """Loop time when ``start`` was sent: stream time 0."""
        if self._t0 is None:
            raise RuntimeError("the stream has not started: use `async with FakeExotel(...)`")
        return self._t0

    @property
    def now(self) -> float:
        """Stream time now."""
        assert self._loop is not None
        return self._loop.time() - self.started_at

    @property
    def closed(self) -> bool:
        """Whether the connection is over."""
        return self._closed.is_set()

    # --- what a test does ---------------------------------------------------------------------------

    async def run(self, duration: float | None = None, *, until: float | None = None) -> None:
        """Let the call go on for ``duration`` seconds, or until stream time ``until``, or (with neither)
        until the connection closes. Returns early if the call ends."""
        if duration is not None and until is not None:
            raise ConfigError("run: give duration or until, not both")
        deadline: float | None = None
        if duration is not None:
            deadline = self._loop_now() + duration
        elif until is not None:
            deadline = self.started_at + until
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._closed.wait()
        self._raise_if_failed()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the connection closes (e.g. the bot hangs up); ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()
        self._raise_if_failed()

    def press_at(
        self, digit: str, at: float | None = None, *, duration_ms: int = 120
    ) -> asyncio.Future[bool]:
        """Schedule a key press at stream time ``at`` (now if None); the future says whether it was sent."""
        digit = str(digit).upper()
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ConfigError(f"digit must be one of 0-9, *, #, A-D; got {digit!r}")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._t0 is None:
            self._early_presses.append((digit, at, duration_ms, future))  # sent once the stream starts
            return future
        self._schedule_press(digit, at, duration_ms, future)
        return future

    def _schedule_press(
        self, digit: str, at: float | None, duration_ms: int, future: asyncio.Future[bool]
    ) -> None:
        if self._closed.is_set() or not self._producing:
            future.set_result(False)
            return
        due = self.started_at + (self.now if at is None else at)
        heapq.heappush(self._control, (due, next(self._order), "dtmf", (digit, duration_ms, future)))
        self._wake.set()

    async def press(self, digit: str, at: float | None = None, *, duration_ms: int = 120) -> bool:
        """Press a key at stream time ``at`` (now if None) and return once it has been sent
        (True) or the call ended first (False)."""
        sent = await self.press_at(digit, at, duration_ms=duration_ms)
        self._raise_if_failed()
        return sent

    async def hangup(
        self, reason: str | None = "callended", *, abort: bool = False, code: int = 1000
    ) -> None:
        """End the call as the caller: send ``stop`` with ``reason`` (``callended``, ``stopped``) and
        close with ``code``; ``reason=None`` closes without ``stop``; ``abort`` drops the TCP connection
        (the bot sees 1006). Does nothing if the call is already over."""
        if self._ws is None:
            raise RuntimeError("not connected: use `async with FakeExotel(...)`")
        await self._hangup(reason, abort=abort, code=code)
        self._raise_if_failed()

    async def _hangup(
        self,
        reason: str | None,
        *,
        abort: bool,
        code: int,
        by: Literal["caller", "network"] = "caller",
        why: str | None = None,
    ) -> None:
        ws = self._ws
        assert ws is not None
        if self._closed.is_set() or self._hung_up_by:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                    await self._closed.wait()
            return
        self._hung_up_by = by
        self._hangup_reason = why or reason or ("connection dropped" if abort else "closed without stop")
        now = self.now if self._t0 is not None else 0.0
        self._end_stream(now)
        if reason is not None and not abort and self._t0 is not None:
            sequence_number = next(self._sequence)
            stop = self._message("stop", sequence_number)
            stop["stop"] = {
                self._key("call_sid"): self.call_sid,
                self._key("account_sid"): self.account_sid,
                "reason": reason,
            }
            sent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._transmit(_Outgoing(_dumps(stop), "stop", sequence_number, now, sent=sent), now)
            try:
                async with asyncio.timeout(STOP_SEND_TIMEOUT + self._stall_remaining(now)):
                    await sent
            except TimeoutError:
                abort = True
            if self.wire.stop_close_delay and not abort:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.wire.stop_close_delay):
                        await self._closed.wait()
        if abort or not self._reading:
            if ws.transport is not None:
                ws.transport.abort()
        else:
            with contextlib.suppress(ConnectionClosed):
                await ws.close(code)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                await self._closed.wait()

    def _end_stream(self, at: float) -> None:
        """The call is over at stream time ``at``: nothing more plays, is produced or echoed."""
        self._producing = False
        if self._ended_at is None:
            self._ended_at = at
            self.playout.end(at)
        for _, _, kind, payload in self._control:
            if kind == "dtmf" and not payload[2].done():
                payload[2].set_result(False)
        self._control.clear()
        self._wake.set()

    def _stall_remaining(self, now: float) -> float:
        faults = self.faults
        if faults.stall_at is None:
            return 0.0
        return max(0.0, faults.stall_at + faults.stall_seconds - now)

    def _loop_now(self) -> float:
        if self._loop is None:
            raise RuntimeError("not connected: use `async with FakeExotel(...)`")
        return self._loop.time()

    # --- what the caller heard ---------------------------------------------------------------------------

    def heard(self, start: float = 0.0, end: float | None = None) -> Samples:
        """What the caller heard between stream times ``start`` and ``end`` (default: up to now or the
        end of the call), at the stream rate; silence where nothing played."""
        limit = self._track_end()
        track = self.playout.track(limit)
        return _slice(track, self.sample_rate, start, limit if end is None else end)

    def onset(self, after: float = 0.0, threshold: float = 0.05) -> float | None:
        """Stream time the caller first heard audio reaching ``threshold`` × full scale after ``after``."""
        return find_onset(self.playout.track(self._track_end()), self.sample_rate, after, threshold)

    def dominant_frequency(
        self, start: float, end: float | None = None, *, min_level: float = 0.01
    ) -> float | None:
        """The pitch (Hz) the caller heard loudest between ``start`` and ``end`` (default: up to now),
        or None if it was quieter than ``min_level``: see :func:`dominant_frequency`."""
        return dominant_frequency(self.heard(start, end), self.sample_rate, min_level=min_level)

    def _track_end(self) -> float:
        if self._ended_at is not None:
            return self._ended_at
        return self.now if self._t0 is not None else 0.0

    @property
    def result(self) -> CallReport:
        """A report of the call so far (final once the call has ended)."""
        return self.report()

    def report(self) -> CallReport:
        """A report of the call so far (final once the call has ended)."""
        end = self._track_end()
        ws = self._ws
        close_code = close_reason = None
        if ws is not None and self._closed.is_set():
            close_code, close_reason = ws.close_code, ws.close_reason
        hung_up_by = self._hung_up_by
        reason = self._hangup_reason
        if not hung_up_by and self._closed.is_set():
            if ws is not None and ws.protocol.close_rcvd_then_sent:
                hung_up_by, reason = "bot", "the bot closed the connection"
            else:
                hung_up_by, reason = "network", "the connection was lost"
        return CallReport(
            sample_rate=self.sample_rate,
            encoding=self.encoding,
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            duration=end,
            heard=self.playout.track(end),
            violations=list(self.violations),
            chunks=list(self.playout.chunks),
            marks=list(self.playout.marks),
            clears=list(self.playout.clears),
            underruns=list(self.playout.underruns),
            sent=list(self.sent),
            dropped_chunks=list(self.dropped_chunks),
            duplicated_chunks=list(self.duplicated_chunks),
            hung_up_by=hung_up_by,
            hangup_reason=reason,
            close_code=close_code,
            close_reason=close_reason,
            audio_cut=self.playout.cut_seconds,
            max_lead=self.playout.max_lead,
        )

    # --- messages to the bot --------------------------------------------------------------------------

    def _key(self, snake: str) -> str:
        return _CAMEL.get(snake, snake) if self.wire.camel_case else snake

    def _number(self, value: int) -> int | str:
        return value if self.wire.int_scalars else str(value)

    def _message(self, event: str, sequence_number: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "event": event,
            self._key("sequence_number"): self._number(sequence_number),
        }
        if not self.wire.omit_stream_sid:
            message[self._key("stream_sid")] = self.stream_sid
        return message

    def _start_message(self) -> str:
        wire = self.wire
        message = self._message("start", next(self._sequence))
        start: dict[str, Any] = {}
        if not wire.omit_stream_sid:
            start[self._key("stream_sid")] = self.stream_sid
        start[self._key("call_sid")] = self.call_sid
        start[self._key("account_sid")] = self.account_sid
        start["from"] = self.from_number
        start["to"] = self.to_number
        params: Any = self.custom_parameters
        if wire.custom_parameters_format == "json":
            params = json.dumps(self.custom_parameters)
        elif wire.custom_parameters_format == "query":
            params = urllib.parse.urlencode(self.custom_parameters)
        start[self._key("custom_parameters")] = params
        media_format: dict[str, Any] = {
            "encoding": wire.media_encoding
            or ("audio/x-mulaw" if self.encoding is Encoding.MULAW else "audio/x-raw")
        }
        if not wire.omit_start_sample_rate:
            media_format[self._key("sample_rate")] = self._number(self.sample_rate)
        media_format[self._key("bit_rate")] = self._number(8 * self.encoding.bytes_per_sample)
        start[self._key("media_format")] = media_format
        message["start"] = start
        return _dumps(message)

    def _media(self, chunk: int) -> _Outgoing:
        count = self._chunk_samples
        samples = self._caller[(chunk - 1) * count : chunk * count]
        if len(samples) < count:
            samples = np.concatenate([samples, np.zeros(count - len(samples), dtype=np.int16)])
        payload = base64.b64encode(encode(samples, self.encoding)).decode("ascii")
        sequence_number = next(self._sequence)
        message = self._message("media", sequence_number)
        message["media"] = {
            "chunk": self._number(chunk),
            "timestamp": self._number(chunk * self.chunk_ms),
            "payload": payload,
        }
        due = chunk * self.chunk_ms / 1000
        return _Outgoing(_dumps(message), "media", sequence_number, due, chunk=chunk)

    def _dtmf(self, digit: str, duration_ms: int, due: float, future: asyncio.Future[bool]) -> _Outgoing:
        sequence_number = next(self._sequence)
        message = self._message("dtmf", sequence_number)
        if self.wire.dtmf_flat:
            message["digit"] = digit
        else:
            message["dtmf"] = {"digit": digit, "duration": self._number(duration_ms)}
        return _Outgoing(_dumps(message), "dtmf", sequence_number, due, sent=future)

    def _mark_echo(self, mark: MarkRecord) -> _Outgoing:
        sequence_number = next(self._sequence)
        message = self._message("mark", sequence_number)
        message["mark"] = {"name": mark.name}
        return _Outgoing(_dumps(message), "mark", sequence_number, mark.due, mark=mark)

    # --- the sender: Exotel's clock, then the simulated network ----------------------------------------

    async def _send_loop(self) -> None:
        assert self._loop is not None and self._t0 is not None
        loop, t0 = self._loop, self._t0
        chunk_seconds = self.chunk_ms / 1000
        faults = self.faults
        while not self._closed.is_set():
            self._wake.clear()
            now = loop.time()
            # Exotel's own schedule: media on the chunk clock, key presses, mark echoes. Each entry is
            # (loop time, kind, exact stream time): producing uses the exact value, so round-off in
            # t0 + t can never leave a due item unproduced (and this loop spinning).
            candidates: list[tuple[float, str, float]] = []
            if self._producing:
                media_due = self._next_chunk * chunk_seconds
                candidates.append((t0 + media_due, "media", media_due))
                if self._control:
                    candidates.append((self._control[0][0], "control", self._control[0][0] - t0))
                mark_due = self.playout.next_mark_due()
                if mark_due is not None:
                    candidates.append((t0 + mark_due, "mark", mark_due))
                if faults.disconnect_at is not None:
                    candidates.append((t0 + faults.disconnect_at, "disconnect", faults.disconnect_at))
            due, kind, stream_due = min(candidates, default=(math.inf, "", math.inf))
            if due <= now:
                await self._produce(kind, stream_due)
                continue
            if self._network and self._network[0][0] <= now:
                _, _, outgoing = heapq.heappop(self._network)
                await self._deliver(outgoing)
                continue
            wake_at = min(due, self._network[0][0] if self._network else math.inf)
            if wake_at == math.inf:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(wake_at):
                        await self._wake.wait()

    async def _produce(self, kind: str, due: float) -> None:
        if kind == "media":
            outgoing = self._media(self._next_chunk)
            self._next_chunk += 1
            self._transmit(outgoing, outgoing.due)  # exact: chunk × chunk_ms, free of clock round-off
        elif kind == "control":
            _, _, _, (digit, duration_ms, future) = heapq.heappop(self._control)
            self._transmit(self._dtmf(digit, duration_ms, due, future), due)
        elif kind == "mark":
            for mark in self.playout.due_marks(due):
                self._transmit(self._mark_echo(mark), mark.due)
        elif kind == "disconnect":
            await self._hangup(
                None, abort=True, code=1000, by="network", why=f"disconnect fault at {due:.3f} s"
            )

    def _transmit(self, outgoing: _Outgoing, due: float) -> None:
        """Hand a message to the simulated network, which may drop, duplicate, delay or hold it."""
        faults = self.faults
        deliver = due
        copies = 1
        if outgoing.event == "media" and outgoing.chunk is not None:
            chunk = outgoing.chunk
            if chunk in faults.drop_chunks or (
                faults.drop_probability and self._rng.random() < faults.drop_probability
            ):
                self.dropped_chunks.append(chunk)
                return
            if chunk in faults.duplicate_chunks or (
                faults.duplicate_probability and self._rng.random() < faults.duplicate_probability
            ):
                self.duplicated_chunks.append(chunk)
                copies = 2
            if faults.jitter_ms:
                deliver += self._rng.uniform(0.0, faults.jitter_ms / 1000)
        stall_end = (faults.stall_at or 0.0) + faults.stall_seconds
        # The 1 µs tolerance keeps round-off (0.2 + 0.4 > 0.6) from moving a chunk across an edge.
        if faults.stall_at is not None and faults.stall_at - 1e-6 <= deliver < stall_end - 1e-6:
            if not faults.stall_burst and outgoing.event == "media":
                if outgoing.chunk is not None:
                    self.dropped_chunks.append(outgoing.chunk)
                return
            deliver = stall_end
        if not faults.reorder or outgoing.event != "media":
            deliver = max(deliver, self._last_delivery)
        self._last_delivery = max(self._last_delivery, deliver)
        for copy in range(copies):
            item = outgoing if copy == 0 else _replace_duplicate(outgoing)
            heapq.heappush(self._network, (self.started_at + deliver, next(self._order), item))
        self._wake.set()

    async def _deliver(self, outgoing: _Outgoing) -> None:
        ws = self._ws
        assert ws is not None
        try:
            await ws.send(outgoing.text)
        except ConnectionClosed:
            if outgoing.sent is not None and not outgoing.sent.done():
                outgoing.sent.set_result(False)
            raise
        sent_at = self.now
        self.sent.append(
            SentMessage(
                outgoing.event,
                outgoing.sequence_number,
                outgoing.due,
                sent_at,
                outgoing.chunk,
                outgoing.duplicate,
            )
        )
        if outgoing.mark is not None:
            outgoing.mark.echoed_at = sent_at
        if outgoing.event == "stop":
            self._stop_sent_at = sent_at
        if outgoing.sent is not None and not outgoing.sent.done():
            outgoing.sent.set_result(True)

    # --- the reader: the bot's messages, checked and played out -----------------------------------------

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None and self._loop is not None
        stop_reading = self.faults.stop_reading_at
        try:
            # One deadline for all reads; `connect` sets it once stream time 0 is known.
            async with asyncio.timeout(None) as deadline:
                self._read_deadline = deadline
                if stop_reading is not None and self._t0 is not None:
                    deadline.reschedule(self._t0 + stop_reading)
                while True:
                    data = await ws.recv()
                    self._on_bot_message(data, self._loop.time())
        except TimeoutError:
            # A half-dead peer: never read again, so TCP backpressure builds at the bot.
            self._reading = False
            await ws.wait_closed()
        except ConnectionClosed:
            return
        finally:
            self._on_closed()

    def _on_bot_message(self, data: str | bytes, received: float) -> None:
        at = received - self._t0 if self._t0 is not None else 0.0
        message, found = check_bot_message(data, self.rules, at)
        for violation in found:
            self._violate(violation)
        if self._t0 is None:
            self._violate(Violation(Rule.BEFORE_START, f"{_event_of(data)} received before start", 0.0))
            return
        if self._ended_at is not None:
            if self._stop_sent_at is not None and at > self._stop_sent_at + self._after_stop_grace:
                self._violate(
                    Violation(
                        Rule.AFTER_STOP,
                        f"{_event_of(data)} {at - self._stop_sent_at:.3f} s after stop",
                        at,
                        "warning",
                    )
                )
            return
        if message is None:
            return
        if message.event == "media":
            payload = message.payload
            if self.encoding is Encoding.PCM16 and len(payload) % 2:
                payload = payload[:-1]
            self.playout.add_chunk(decode(payload, self.encoding), at, len(message.payload))
        elif message.event == "mark":
            self.playout.add_mark(message.name, at)
            self._wake.set()
        else:
            self.playout.clear(at)
            self._wake.set()

    def _violate(self, violation: Violation) -> None:
        self.violations.append(violation)
        if self.strict and violation.severity == "error" and self._strict_error is None:
            self._strict_error = BotProtocolError(violation)
            self._spawn(self._close_for_violation(violation), "fake-exotel-strict-close")

    async def _close_for_violation(self, violation: Violation) -> None:
        await self._hangup(None, abort=False, code=1002, why=f"strict mode: {violation.rule.value}")

    def _on_closed(self) -> None:
        if self._closed.is_set():
            return
        if self._ended_at is None:
            self._end_stream(self.now if self._t0 is not None else 0.0)
        for _, _, outgoing in self._network:
            if outgoing.sent is not None and not outgoing.sent.done():
                outgoing.sent.set_result(False)
        self._network.clear()
        self._closed.set()
        self._wake.set()


def _replace_duplicate(outgoing: _Outgoing) -> _Outgoing:
    return _Outgoing(
        outgoing.text,
        outgoing.event,
        outgoing.sequence_number,
        outgoing.due,
        chunk=outgoing.chunk,
        duplicate=True,
    )


def _event_of(data: str | bytes) -> str:
    if isinstance(data, bytes | bytearray | memoryview):
        return "a binary frame"
    with contextlib.suppress(ValueError, RecursionError):
        message = json.loads(data)
        if isinstance(message, dict) and isinstance(message.get("event"), str):
            return repr(message["event"])
    return "a message"


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _check_custom_parameters(params: Mapping[str, str]) -> None:
    if len(params) > 3:
        raise ConfigError(f"custom_parameters: Exotel allows at most 3 pairs, got {len(params)}")
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"custom_parameters: keys and values must be strings, got {key!r}: {value!r}")
    if len(urllib.parse.urlencode(params)) > 256:
        raise ConfigError("custom_parameters: Exotel allows at most 256 characters in total")


def _stream_url(url: str, sample_rate: int, wire: WireOptions) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"url must be ws:// or wss://, got {url!r}")
    if wire.url_sample_rate != "omit":
        rate = sample_rate if wire.url_sample_rate == "same" else wire.url_sample_rate
        query = [
            (key, value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if key not in ("sample-rate", "sample_rate")
        ]
        query.append((wire.url_rate_key, str(rate)))
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    if len(url) >= MAX_URL_LENGTH:
        raise ConfigError(f"url: Exotel rejects stream URLs of {MAX_URL_LENGTH} characters or more")
    return url


def _load_caller_audio(source: CallerAudio, sample_rate: int) -> Samples:
    if source is None:
        return np.zeros(0, dtype=np.int16)
    if isinstance(source, np.ndarray):
        if source.dtype != np.int16 or source.ndim != 1:
            raise TypeError(
                f"caller_audio must be a 1-D int16 array at the stream rate, got {source.dtype} "
                f"{source.shape}; convert with voicebot.audio.to_int16()"
            )
        return source
    from voicebot.wavfile import read_wav

    return read_wav(source, rate=sample_rate).samples


# ------------------------------------------------------------------------------------ for pytest and CLI


@contextlib.asynccontextmanager
async def serve_handler(
    handler_class: type[Handler], *, path: str = "/exotel/ws/test", **config: Any
) -> AsyncIterator[str]:
    """Serve ``handler_class`` on 127.0.0.1 (a free port) and yield its ``ws://`` URL.

    ``config`` overrides ``voicebot.config.ServeConfig`` fields (e.g. ``lead_ms=200``).
    """
    from voicebot.config import ServeConfig
    from voicebot.server import Server

    async with Server(handler_class, ServeConfig(host="127.0.0.1", port=0, **config)) as server:
        yield f"ws://127.0.0.1:{server.port}{path}"


def parse_dtmf_script(script: str) -> list[tuple[str, float]]:
    """``"1@2.5,#@6"`` → ``[("1", 2.5), ("#", 6.0)]``: keys and the stream times to press them."""
    presses: list[tuple[str, float]] = []
    for item in filter(None, (part.strip() for part in script.split(","))):
        digit, sep, at = item.partition("@")
        digit = digit.strip().upper()
        try:
            when = float(at)
        except ValueError:
            when = math.nan
        if not sep or len(digit) != 1 or digit not in DTMF_DIGITS or not math.isfinite(when) or when < 0:
            raise ConfigError(f"dtmf: {item!r} is not KEY@SECONDS (e.g. 1@2.5,#@6)")
        presses.append((digit, when))
    return presses


async def simulate(
    url_or_handler: str | type[Handler],
    *,
    wav_in: str | os.PathLike[str] | None = None,
    wav_out: str | os.PathLike[str] | None = None,
    rate: int = 8000,
    encoding: Encoding | str = Encoding.PCM16,
    dtmf_script: str = "",
    jitter_ms: float = 0.0,
    duration: float | None = None,
    tail: float = 3.0,
    wire: WireOptions | None = None,
    faults: Faults | None = None,
    custom_parameters: Mapping[str, str] | None = None,
    chunk_ms: int = 100,
    strict_minimum: bool = False,
) -> CallReport:
    """One simulated call, as ``python -m voicebot simulate`` runs it; returns the report.

    ``url_or_handler``: a ``ws://`` URL of a running server, a ``Handler`` subclass, or a
    ``module:Class`` spec (served in-process on a free port). The caller plays ``wav_in`` (any rate and
    width, converted; silence if None), presses keys per ``dtmf_script`` (``"1@2.5,#@6"``), and hangs
    up with ``callended`` at ``duration`` (default: the later of the WAV's end and the last key press,
    plus ``tail`` seconds) unless the bot hangs up first. What the caller heard goes to ``wav_out`` at
    the stream rate. ``report.ok`` is the exit-status decision.

    ``wire``, ``custom_parameters``, ``chunk_ms`` and ``strict_minimum`` are passed to
    :class:`FakeExotel`; ``faults`` too, with ``jitter_ms`` (when non-zero) overriding its jitter.
    """
    presses = parse_dtmf_script(dtmf_script)
    if duration is not None and duration <= 0:
        raise ConfigError(f"duration must be > 0 seconds, got {duration}")
    caller: Samples | None = None
    if wav_in is not None:
        from voicebot.wavfile import read_wav

        caller = read_wav(wav_in, rate=rate).samples
    if duration is None:
        speech = 0.0 if caller is None else len(caller) / rate
        duration = max([speech, *(at for _, at in presses)]) + tail
    faults = faults or Faults()
    if jitter_ms:
        faults = dataclasses.replace(faults, jitter_ms=jitter_ms)

    async def call(url: str) -> CallReport:
        async with FakeExotel(
            url,
            sample_rate=rate,
            encoding=encoding,
            chunk_ms=chunk_ms,
            caller_audio=caller,
            wire=wire,
            faults=faults,
            custom_parameters=custom_parameters,
            strict_minimum=strict_minimum,
        ) as exotel:
            for digit, at in presses:
                exotel.press_at(digit, at)
            await exotel.run(until=duration)
        return exotel.result

    if isinstance(url_or_handler, str) and url_or_handler.startswith(("ws://", "wss://")):
        report = await call(url_or_handler)
    else:
        handler_class: type[Handler]
        if isinstance(url_or_handler, str):
            from voicebot.handler import load_handler

            handler_class = load_handler(url_or_handler)
        else:
            handler_class = url_or_handler
        async with serve_handler(handler_class) as url:
            report = await call(url)
    if wav_out is not None:
        from voicebot.wavfile import write_wav

        write_wav(wav_out, report.heard, rate)
    return report
