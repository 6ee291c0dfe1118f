"""Exotel stream messages as frozen dataclasses: the events are the API.

Everything Exotel sends on the bot's WebSocket becomes one of these. They are plain values: no
parsing logic lives here (see ``voicebot.protocol``), and nothing here touches a socket or a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SUPPORTED_RATES",
    "Clear",
    "Connected",
    "Dtmf",
    "Encoding",
    "Event",
    "Mark",
    "Media",
    "Start",
    "Stop",
    "Unknown",
]

#: The sample rates Exotel streams at (``sample-rate`` query parameter / ``media_format``).
SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 24000)


class Encoding(enum.StrEnum):
    """How audio payloads are encoded on the wire, in both directions."""

    PCM16 = "pcm16"
    """16-bit signed little-endian linear PCM, mono: what AgentStream documents."""
    MULAW = "mulaw"
    """G.711 μ-law, one byte per sample: the ExoML ``start_stream`` path."""

    @property
    def bytes_per_sample(self) -> int:
        """Bytes one sample takes on the wire."""
        return 2 if self is Encoding.PCM16 else 1


@dataclass(frozen=True, slots=True)
class Connected:
    """The first message after the upgrade. Carries nothing we rely on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """The stream's metadata, sent once before any media.

    ``sample_rate`` and ``encoding`` are the resolved stream parameters (see
    ``voicebot.protocol.resolve_stream_format``); ``rate_source`` says where the rate came from and
    ``warnings`` lists disagreements that were resolved by the documented precedence.
    """

    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: Encoding = Encoding.PCM16
    sample_rate: int = 8000
    rate_source: str = "default"
    media_encoding: str = ""
    """The raw ``media_format.encoding`` string, informational only."""
    warnings: tuple[str, ...] = ()
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio. ``payload`` is the decoded bytes (an odd trailing byte dropped)."""

    sequence_number: int | None
    chunk: int | None
    timestamp: int | None
    """Milliseconds since the stream started, when Exotel sent one."""
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed: ``0``-``9``, ``*`` or ``#``; ``duration`` in ms when known."""

    digit: str
    duration: int | None = None
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """Exotel's echo of a mark we sent: all audio sent before it has been played."""

    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended at Exotel's side: ``callended`` (caller hung up), ``stopped``, or opaque."""

    reason: str = ""
    call_sid: str = ""
    account_sid: str = ""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Clear:
    """An inbound ``clear``: documented only bot → Exotel, accepted and ignored when Exotel sends it."""

    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message with an ``event`` we do not know; kept whole so it can be logged."""

    event: str
    raw: dict[str, Any]


Event = Connected | Start | Media | Dtmf | Mark | Stop | Clear | Unknown
