"""Outbound audio: the bot's samples become wire chunks Exotel plays smoothly, sent on time.

Four pure pieces. None of them touches a clock: every time is a ``now: float`` in seconds from a
monotonic clock (``loop.time()`` in the asyncio layer, plain numbers in tests).

* :class:`ChunkPlan` — the chunk sizes Exotel's rules allow at one stream rate and encoding.
* :class:`Chunker` — samples in (any sizes), exact-size chunks of whole 20 ms frames out, with marks
  kept in order right after the chunk that contains their position.
* :class:`Pacer` — a model of Exotel's playout queue: how much of our audio is buffered there, when the
  next chunk may go without exceeding the lead, and when the queue will run dry.
* :class:`OutboundStream` — Chunker + Pacer, the one object the server's writer and the bench drive.

Chunk rules (exotel-protocol.md §3, §5.2 and §12 items 3-5), at every rate and encoding: whole 20 ms
frames (PCM16: a multiple of 320 B at every rate); never shorter than 3 200 B of PCM16 *in duration*
(1 600 samples, rounded up to whole frames: 3 840 B at 24 kHz); never longer than the nominal size,
which is configurable up to 100 000 B and defaults to ``max(floor, 100 ms)``.

How the asyncio writer drives an :class:`OutboundStream` (one shared ticker for all calls)::

    # when the handler plays audio (already resampled to the stream rate):
    start = stream.pushed_samples
    stream.push(samples, loop.time())
    stream.add_mark(mark_name)                  # playback [start, stream.pushed_samples) ends here

    # one ticker task for every call, every 10-20 ms:
    now = loop.time()
    for stream in live_streams:
        for item in stream.poll(now):           # [] at once when nothing is due
            send(media(item) if isinstance(item, OutboundChunk) else mark(item.name))

    # barge-in:
    send(clear_message)
    result = stream.clear(loop.time())          # heard = clamp(result.heard_until - start, 0, length)

``poll`` is cheap when nothing is due (one comparison against a cached due time); ``next_wakeup``
tells a scheduler (or a heap of streams) when polling would next produce something. The ticker period
must stay well inside ``margin`` (default 60 ms = one frame + 40 ms of scheduling slack), because a
short chunk is flushed no earlier than ``margin`` before Exotel's queue runs dry.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from voicebot.errors import ConfigError
from voicebot.events import SUPPORTED_RATES, Encoding

__all__ = [
    "DEFAULT_LEAD",
    "DEFAULT_MARGIN",
    "DEFAULT_PREBUFFER",
    "FRAME_SECONDS",
    "MAX_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "RECOMMENDED_MAX_CHUNK_BYTES",
    "ChunkPlan",
    "Chunker",
    "ClearResult",
    "OutboundChunk",
    "OutboundItem",
    "OutboundMark",
    "OutboundStats",
    "OutboundStream",
    "Pacer",
]

#: Every chunk is made of whole frames of this length (320 B of PCM16 at 8 kHz).
FRAME_SECONDS = 0.02
#: Exotel's minimum chunk, in bytes of PCM16. For μ-law the floor is the same duration.
MIN_CHUNK_BYTES = 3200
#: Exotel's maximum chunk (decoded payload bytes).
MAX_CHUNK_BYTES = 100_000
#: Larger chunks are legal but make barge-in sluggish and the 100 000 B reading moot (§12 item 5).
RECOMMENDED_MAX_CHUNK_BYTES = 9600
#: Seconds of audio the pacer lets Exotel hold beyond what has played.
DEFAULT_LEAD = 0.4
#: A short chunk is flushed this long before Exotel's queue would run dry: one 20 ms frame plus 40 ms
#: of slack for the ticker period and send latency.
DEFAULT_MARGIN = 0.06
#: At the start of an utterance, audio is held until this much is buffered beyond the first chunk, so
#: that a real-time producer (an echo bot) keeps Exotel's queue fed instead of being padded.
DEFAULT_PREBUFFER = 0.08

_FRAMES_PER_SECOND = 50
_FLOOR_SAMPLES = MIN_CHUNK_BYTES // Encoding.PCM16.bytes_per_sample
# Float tolerance for comparisons of times in seconds (far below one sample at 24 kHz).
_EPS = 1e-9

Samples = npt.NDArray[np.int16]


def _require_finite(name: str, value: float, *, positive: bool) -> float:
    """``value`` as a float if it is finite and > 0 (``positive``) or >= 0; ConfigError otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        rule = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} must be finite and {rule} seconds, got {value!r}")
    return number


class ChunkPlan:
    """The chunk sizes Exotel's rules allow for one stream: frame, floor and nominal size.

    The nominal (and largest) chunk is ``chunk_bytes`` wire bytes, or ``chunk_ms`` milliseconds (one
    setting for every rate; give at most one of them). By default it is ``max(floor, 100 ms)`` rounded
    up to whole frames: PCM16 3 200 B at 8 and 16 kHz, 4 800 B at 24 kHz. Raises :class:`ConfigError`
    for an unsupported rate or encoding, or a size that is below the floor (200 ms at 8 kHz, 100 ms at
    16 kHz, 80 ms at 24 kHz), above 100 000 B, or not whole 20 ms frames.
    """

    __slots__ = ("_chunk_samples", "_encoding", "_floor_samples", "_frame_samples", "_sample_rate")

    def __init__(
        self,
        sample_rate: int,
        encoding: Encoding = Encoding.PCM16,
        *,
        chunk_bytes: int | None = None,
        chunk_ms: int | None = None,
    ) -> None:
        if type(sample_rate) is not int or sample_rate not in SUPPORTED_RATES:
            raise ConfigError(f"sample_rate must be one of {SUPPORTED_RATES}, got {sample_rate!r}")
        try:
            self._encoding = Encoding(encoding)
        except (TypeError, ValueError):
            names = [e.value for e in Encoding]
            raise ConfigError(f"encoding must be one of {names}, got {encoding!r}") from None
        self._sample_rate = sample_rate
        self._frame_samples = sample_rate // _FRAMES_PER_SECOND
        self._floor_samples = -(-_FLOOR_SAMPLES // self._frame_samples) * self._frame_samples
        if chunk_bytes is not None and chunk_ms is not None:
            raise ConfigError(
                f"give chunk_bytes or chunk_ms, not both (got {chunk_bytes!r} and {chunk_ms!r})"
            )
        if chunk_ms is not None:
            if type(chunk_ms) is not int or chunk_ms <= 0 or chunk_ms % 20:
                raise ConfigError(f"chunk_ms must be a positive multiple of 20 ms, got {chunk_ms!r}")
            wire_bytes = sample_rate * chunk_ms // 1000 * self._encoding.bytes_per_sample
            self._chunk_samples = self._validated_chunk_samples(wire_bytes, f"chunk_ms ({chunk_ms} ms)")
        elif chunk_bytes is not None:
            self._chunk_samples = self._validated_chunk_samples(chunk_bytes, "chunk_bytes")
        else:
            tenth = sample_rate // 10
            frames = -(-max(self._floor_samples, tenth) // self._frame_samples)
            self._chunk_samples = frames * self._frame_samples

    def _validated_chunk_samples(self, chunk_bytes: int, name: str) -> int:
        if type(chunk_bytes) is not int:
            raise ConfigError(f"{name} must be an int number of bytes, got {chunk_bytes!r}")
        where = f"at {self._sample_rate} Hz {self._encoding.value}"
        if chunk_bytes % self.frame_bytes:
            raise ConfigError(
                f"{name} must be whole 20 ms frames (a multiple of {self.frame_bytes} B {where}), "
                f"got {chunk_bytes} B"
            )
        if chunk_bytes < self.floor_bytes:
            raise ConfigError(
                f"{name} must be >= {self.floor_bytes} B "
                f"({self._floor_samples * 1000 // self._sample_rate} ms) {where}, got {chunk_bytes} B"
            )
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise ConfigError(f"{name} must be <= {MAX_CHUNK_BYTES} B, got {chunk_bytes} B")
        return chunk_bytes // self._encoding.bytes_per_sample

    def __repr__(self) -> str:
        return (
            f"ChunkPlan({self._sample_rate}, {self._encoding!s}, chunk_bytes={self.chunk_bytes}, "
            f"floor_bytes={self.floor_bytes})"
        )

    @property
    def sample_rate(self) -> int:
        """The stream rate, in Hz."""
        return self._sample_rate

    @property
    def encoding(self) -> Encoding:
        """The wire encoding the chunks will be sent in."""
        return self._encoding

    @property
    def frame_samples(self) -> int:
        """Samples in one 20 ms frame."""
        return self._frame_samples

    @property
    def floor_samples(self) -> int:
        """The shortest chunk, in samples: 1 600 rounded up to whole frames."""
        return self._floor_samples

    @property
    def chunk_samples(self) -> int:
        """The nominal (and longest) chunk, in samples."""
        return self._chunk_samples

    @property
    def frame_bytes(self) -> int:
        """Wire bytes of one 20 ms frame."""
        return self._frame_samples * self._encoding.bytes_per_sample

    @property
    def floor_bytes(self) -> int:
        """Wire bytes of the shortest chunk."""
        return self._floor_samples * self._encoding.bytes_per_sample

    @property
    def chunk_bytes(self) -> int:
        """Wire bytes of the nominal chunk."""
        return self._chunk_samples * self._encoding.bytes_per_sample

    @property
    def chunk_duration(self) -> float:
        """Seconds of audio in a nominal chunk."""
        return self._chunk_samples / self._sample_rate


@dataclass(frozen=True, slots=True, eq=False)
class OutboundChunk:
    """One wire chunk: exactly ``samples.size`` int16 samples at the stream rate, ready to encode.

    It carries the pushed audio ``[start, end)`` (positions count samples pushed since the stream was
    created) followed by ``padding`` zero samples, which only the last chunk before a pause has.
    """

    samples: Samples
    start: int
    padding: int
    sample_rate: int

    @property
    def length(self) -> int:
        """Samples on the wire, padding included."""
        return int(self.samples.size)

    @property
    def audio_samples(self) -> int:
        """Samples of pushed audio (the length without the padding)."""
        return self.length - self.padding

    @property
    def end(self) -> int:
        """Position just after the last pushed sample this chunk carries."""
        return self.start + self.audio_samples

    @property
    def duration(self) -> float:
        """Seconds this chunk takes to play, padding included."""
        return self.length / self.sample_rate


@dataclass(frozen=True, slots=True)
class OutboundMark:
    """A mark to send now: Exotel echoes it once everything sent before it has played."""

    name: str


OutboundItem = OutboundChunk | OutboundMark
"""What the chunker and the stream hand out, in the order it must go on the wire."""


@dataclass(frozen=True, slots=True)
class ClearResult:
    """What :meth:`OutboundStream.clear` dropped and where the caller stops hearing audio.

    ``dropped_marks`` were never sent: their playbacks are interrupted. ``heard_until`` is the position
    (in pushed samples) where playback stops: Exotel finishes the chunk that is playing and drops the
    rest, so a playback of ``[start, end)`` was heard for ``clamp(heard_until - start, 0, end - start)``
    samples.
    """

    dropped_marks: tuple[str, ...]
    heard_until: int


@dataclass(frozen=True, slots=True)
class OutboundStats:
    """Counters of one :class:`OutboundStream`, as a snapshot (see :class:`Pacer` for underruns)."""

    chunks_sent: int
    padded_chunks: int
    seconds_sent: float
    underruns: int
    max_lateness: float


class Chunker:
    """Turns pushed samples into wire chunks of whole frames, ``floor <= length <= nominal``.

    Consecutive pushes form one continuous stream: 20 ms frames come out as full nominal chunks of the
    same samples, never as padded fragments. Chunks are only ever cut from pending audio when asked:
    :meth:`take_chunk` returns a full nominal chunk, :meth:`flush_partial` also pads a short remainder
    (to the floor, or to whole frames when it is at least the floor). Deciding *when* to flush is the
    caller's business (see :class:`OutboundStream`).

    Marks sit at the position where pushed audio ended when they were added; :meth:`take_marks` hands
    out, in order, those whose audio has all gone into chunks.
    """

    def __init__(self, plan: ChunkPlan) -> None:
        self._plan = plan
        self._pieces: deque[Samples] = deque()
        self._head = 0  # samples of _pieces[0] already taken
        self._pending = 0
        self._pushed = 0
        self._marks: deque[tuple[int, str]] = deque()

    @property
    def plan(self) -> ChunkPlan:
        """The chunk sizes in force."""
        return self._plan

    @property
    def pushed_samples(self) -> int:
        """Position just after the last pushed sample (cleared audio included)."""
        return self._pushed

    @property
    def pending_samples(self) -> int:
        """Pushed samples not yet in a chunk."""
        return self._pending

    @property
    def emitted_samples(self) -> int:
        """Position of the first pending sample: everything before it is chunked or cleared."""
        return self._pushed - self._pending

    @property
    def next_chunk_samples(self) -> int:
        """Length the next chunk would have if it were cut now (0 when nothing is pending)."""
        plan = self._plan
        pending = self._pending
        if pending >= plan.chunk_samples or pending == 0:
            return plan.chunk_samples if pending else 0
        if pending < plan.floor_samples:
            return plan.floor_samples
        return -(-pending // plan.frame_samples) * plan.frame_samples

    @property
    def has_ready_marks(self) -> bool:
        """Whether :meth:`take_marks` would return something."""
        return bool(self._marks) and self._marks[0][0] <= self._pushed - self._pending

    def push(self, samples: Samples) -> None:
        """Append mono int16 samples at the stream rate. They are copied; any length, 0 included."""
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError(
                "samples must be a 1-D numpy int16 array at the stream rate, got "
                f"{type(samples).__name__} {getattr(samples, 'dtype', '')} {getattr(samples, 'shape', '')}"
            )
        if samples.size == 0:
            return
        self._pieces.append(samples.copy())
        self._pending += int(samples.size)
        self._pushed += int(samples.size)

    def add_mark(self, name: str) -> None:
        """Place a mark at the current end of pushed audio."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"mark name must be a non-empty str, got {name!r}")
        self._marks.append((self._pushed, name))

    def take_chunk(self) -> OutboundChunk | None:
        """A full nominal chunk of pending audio, or None when less than that is pending."""
        if self._pending < self._plan.chunk_samples:
            return None
        start = self.emitted_samples
        return OutboundChunk(self._take(self._plan.chunk_samples), start, 0, self._plan.sample_rate)

    def flush_partial(self) -> OutboundChunk | None:
        """The next chunk even if short: a full one if pending, else the remainder padded with silence.

        A remainder shorter than the floor is padded up to the floor; a longer one to whole frames, so
        only its last frame holds padding. None when nothing is pending.
        """
        length = self.next_chunk_samples
        if length == 0:
            return None
        start = self.emitted_samples
        audio = self._take(min(length, self._pending))
        padding = length - audio.size
        if padding:
            audio = np.concatenate((audio, np.zeros(padding, dtype=np.int16)))
        return OutboundChunk(audio, start, padding, self._plan.sample_rate)

    def take_marks(self) -> list[str]:
        """Names of the marks whose audio is all in chunks already handed out, in order."""
        emitted = self.emitted_samples
        names: list[str] = []
        while self._marks and self._marks[0][0] <= emitted:
            names.append(self._marks.popleft()[1])
        return names

    def drain(self, *, flush: bool = False) -> list[OutboundItem]:
        """Every item available now, unpaced: full chunks with their marks, and with ``flush`` the
        padded remainder too. For tools and tests; a live call goes through :class:`OutboundStream`."""
        items: list[OutboundItem] = [OutboundMark(name) for name in self.take_marks()]
        while (chunk := self.take_chunk() or (self.flush_partial() if flush else None)) is not None:
            items.append(chunk)
            items.extend(OutboundMark(name) for name in self.take_marks())
        return items

    def clear(self) -> list[str]:
        """Drop all pending audio and marks; return the dropped marks' names, in order."""
        dropped = [name for _, name in self._marks]
        self._marks.clear()
        self._pieces.clear()
        self._head = 0
        self._pending = 0
        return dropped

    def _take(self, count: int) -> Samples:
        first = self._pieces[0]
        if first.size - self._head >= count:  # the common case: no copy
            out = first[self._head : self._head + count]
            self._head += count
            if self._head == first.size:
                self._pieces.popleft()
                self._head = 0
        else:
            parts: list[Samples] = []
            needed = count
            while needed:
                piece = self._pieces[0]
                part = piece[self._head : self._head + needed]
                parts.append(part)
                needed -= part.size
                self._head += part.size
                if self._head == piece.size:
                    self._pieces.popleft()
                    self._head = 0
            out = np.concatenate(parts)
        self._pending -= count
        return out


class Pacer:
    """A model of Exotel's playout queue, anchored to the clock, with a bounded lead.

    Exotel plays what we send in real time, one chunk after another. ``play_end`` is when everything
    sent so far will have played; sending a chunk of ``duration`` at ``now`` moves it to
    ``max(play_end, now) + duration``: after an idle gap the queue restarts at ``now`` (re-anchoring, no
    burst to catch up), and it advances by exact durations, never by send times, so no drift builds up.

    Counters: ``chunks_sent``, ``seconds_sent``, ``underruns`` and ``max_lateness``. An underrun is a
    chunk sent after Exotel's queue had run dry although its audio was ready before that moment (the
    sender says when with ``ready_at``); its lateness is how long the queue had been dry, which is the
    silence the caller heard because we were late. Audio that only arrived after the queue ran dry is a
    pause of the producer, not an underrun.
    """

    def __init__(self, *, lead: float = DEFAULT_LEAD, margin: float = DEFAULT_MARGIN) -> None:
        self._lead = _require_finite("lead", lead, positive=True)
        self._margin = _require_finite("margin", margin, positive=False)
        self._play_end = -math.inf
        self._chunks_sent = 0
        self._seconds_sent = 0.0
        self._underruns = 0
        self._max_lateness = 0.0

    @property
    def lead(self) -> float:
        """The most audio, in seconds, Exotel may hold beyond real time."""
        return self._lead

    @property
    def margin(self) -> float:
        """How long before the queue runs dry a short chunk must be flushed, in seconds."""
        return self._margin

    @property
    def play_end(self) -> float:
        """When everything sent so far will have played (-inf before anything was sent)."""
        return self._play_end

    @property
    def chunks_sent(self) -> int:
        """Chunks recorded with :meth:`record_sent`."""
        return self._chunks_sent

    @property
    def seconds_sent(self) -> float:
        """Seconds of audio recorded with :meth:`record_sent`."""
        return self._seconds_sent

    @property
    def underruns(self) -> int:
        """Chunks sent after the queue ran dry while their audio was ready (see the class doc)."""
        return self._underruns

    @property
    def max_lateness(self) -> float:
        """The longest an underrun left Exotel's queue dry, in seconds (0.0 if none)."""
        return self._max_lateness

    def queued(self, now: float) -> float:
        """Seconds of our audio buffered at Exotel beyond real time at ``now``."""
        return max(0.0, self._play_end - now)

    def earliest_send_time(self, duration: float) -> float:
        """The earliest time a chunk of ``duration`` may go; may lie in the past, or be -inf.

        That is when ``queued + duration <= lead``; a chunk longer than the lead goes as soon as the
        queue is empty.
        """
        if duration <= self._lead:
            return self._play_end - (self._lead - duration)
        return self._play_end

    def next_send_time(self, duration: float, now: float) -> float:
        """The earliest time at or after ``now`` that a chunk of ``duration`` may be sent."""
        return max(now, self.earliest_send_time(duration))

    def underrun_time(self) -> float:
        """When Exotel's queue will run dry (-inf before anything was sent)."""
        return self._play_end

    def flush_deadline(self) -> float:
        """When a short chunk waiting for more audio must be flushed: ``margin`` before the queue runs
        dry, leaving room for the ticker period and send latency."""
        return self._play_end - self._margin

    def record_sent(self, duration: float, now: float, *, ready_at: float | None = None) -> float:
        """Record a chunk of ``duration`` seconds sent at ``now``; return when it starts playing.

        ``ready_at`` is when its audio became available to send; None means "now" (never an underrun).
        """
        if not duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
        previous_end = self._play_end
        if ready_at is not None and ready_at < previous_end and now > previous_end + _EPS:
            self._underruns += 1
            self._max_lateness = max(self._max_lateness, now - previous_end)
        starts = max(previous_end, now)
        self._play_end = starts + duration
        self._chunks_sent += 1
        self._seconds_sent += duration
        return starts

    def reset(self, *, playing_until: float | None = None) -> None:
        """Forget the queue after a ``clear``; counters are kept.

        Exotel finishes the chunk it is playing; pass when that ends as ``playing_until`` so the lead
        still counts it.
        """
        self._play_end = -math.inf if playing_until is None else playing_until


@dataclass(slots=True)
class _Sent:
    """A chunk handed out, with when the model says it plays."""

    start: int
    audio_samples: int
    play_start: float
    play_end: float


class OutboundStream:
    """Chunker + Pacer for one call: push samples and marks, poll for what may be sent at ``now``.

    What :meth:`poll` releases, and when:

    * full chunks, as fast as the lead allows (``queued + duration <= lead``);
    * a short remainder, padded, only once Exotel's queue is within ``margin`` of running dry and no
      more audio has arrived;
    * at the start of an utterance (audio pushed into an empty chunker while Exotel's queue plus the
      pending audio holds less than one chunk plus ``margin``), nothing until one chunk plus
      ``prebuffer`` is pending or that much time has passed since the utterance began. A producer
      that is ahead (a whole TTS prompt) starts at once; a real-time producer (an echo bot, a
      streaming TTS) starts ``prebuffer`` late and then keeps that cushion, so its audio goes out as
      full chunks with time to spare instead of padded fragments or just-in-time chunks;
    * marks right after the chunk that contains their position, or at once if their audio is all sent.

    Positions (``pushed_samples``, :attr:`OutboundChunk.start`, :meth:`played_samples`,
    :attr:`ClearResult.heard_until`) count samples pushed since the stream was created, padding
    excluded, cleared audio included, so a caller can note a playback's ``[start, end)`` when pushing it.
    All ``now`` values passed in must be non-decreasing.

    ``push`` may omit ``now``: that audio then counts as arriving at the next :meth:`poll` (or the next
    push that gives a time), and :meth:`next_wakeup` asks for a poll at once.

    Raises :class:`ConfigError` for bad sizes (see :class:`ChunkPlan`), a negative or non-finite
    ``margin`` or ``prebuffer``, or a ``lead`` shorter than one nominal chunk plus ``margin`` (with
    less, Exotel's queue would run dry between full chunks).
    """

    def __init__(
        self,
        sample_rate: int,
        encoding: Encoding = Encoding.PCM16,
        *,
        chunk_bytes: int | None = None,
        chunk_ms: int | None = None,
        lead: float = DEFAULT_LEAD,
        margin: float = DEFAULT_MARGIN,
        prebuffer: float = DEFAULT_PREBUFFER,
    ) -> None:
        self._plan = ChunkPlan(sample_rate, encoding, chunk_bytes=chunk_bytes, chunk_ms=chunk_ms)
        self._pacer = Pacer(lead=lead, margin=margin)
        self._prebuffer = _require_finite("prebuffer", prebuffer, positive=False)
        needed = self._plan.chunk_duration + self._pacer.margin
        if self._pacer.lead < needed - _EPS:
            raise ConfigError(
                f"lead must be >= one chunk ({self._plan.chunk_duration:.3f} s = "
                f"{self._plan.chunk_bytes} B) plus margin ({self._pacer.margin:.3f} s) = {needed:.3f} s, "
                f"got {self._pacer.lead}"
            )
        self._chunker = Chunker(self._plan)
        # The plan's figures, read on every push and poll.
        self._rate = self._plan.sample_rate
        self._chunk_samples = self._plan.chunk_samples
        self._chunk_duration = self._plan.chunk_duration
        self._prebuffer_samples = math.ceil(self._prebuffer * sample_rate - _EPS)
        # (end position, pushed at) of pending audio; None until a poll or a timed push stamps it
        self._pushes: deque[tuple[int, float | None]] = deque()
        self._unstamped = False  # some pending audio was pushed without a time
        self._utterance_undecided = False  # audio pushed into an empty chunker may start an utterance
        self._undecided_since: float | None = None  # ... when it was pushed (None: at the next poll)
        self._utterance_since: float | None = None  # set while the first chunk of an utterance waits
        self._sent: deque[_Sent] = deque()  # chunks not yet fully played, oldest first
        self._played_floor = 0  # position reached by chunks already forgotten from _sent
        self._padded_chunks = 0
        self._due_at: float | None = None  # when poll next has something to hand out; None: idle

    @property
    def plan(self) -> ChunkPlan:
        """The chunk sizes in force."""
        return self._plan

    @property
    def pacer(self) -> Pacer:
        """The playout model, for its counters (read it, do not drive it)."""
        return self._pacer

    @property
    def pushed_samples(self) -> int:
        """Position just after the last pushed sample."""
        return self._chunker.pushed_samples

    @property
    def pending_samples(self) -> int:
        """Pushed samples not yet handed out in a chunk."""
        return self._chunker.pending_samples

    @property
    def padded_chunks(self) -> int:
        """Chunks handed out with silence padding (one per pause in the audio, ideally)."""
        return self._padded_chunks

    @property
    def stats(self) -> OutboundStats:
        """A snapshot of the counters."""
        pacer = self._pacer
        return OutboundStats(
            chunks_sent=pacer.chunks_sent,
            padded_chunks=self._padded_chunks,
            seconds_sent=pacer.seconds_sent,
            underruns=pacer.underruns,
            max_lateness=pacer.max_lateness,
        )

    def push(self, samples: Samples, now: float | None = None) -> None:
        """Append int16 samples at the stream rate, available since ``now`` (None: the next poll)."""
        chunker = self._chunker
        was_empty = chunker._pending == 0
        pushed_before = chunker._pushed
        chunker.push(samples)
        if chunker._pushed == pushed_before:
            return
        if now is None:
            self._pushes.append((chunker._pushed, None))
            self._unstamped = True
            self._utterance_undecided |= was_empty
            self._refresh_due()  # due at once: the next poll stamps it
            return
        self._stamp(now)  # audio pushed earlier without a time arrived no later than this
        if was_empty:
            # Decided at the next poll, so that a burst of frames pushed together counts as one.
            self._utterance_undecided = True
            self._undecided_since = now
        self._pushes.append((chunker._pushed, now))
        self._refresh_due()

    def add_mark(self, name: str) -> None:
        """Place a mark at the current end of pushed audio; it goes out right after that audio."""
        self._chunker.add_mark(name)
        self._refresh_due()

    def poll(self, now: float) -> list[OutboundItem]:
        """Everything that may be sent at ``now``, in wire order; [] quickly when nothing is due."""
        due = self._due_at
        if due is None or now < due - _EPS:
            return []
        self._decide(now)
        self._forget_played(now)
        chunker = self._chunker
        # Marks are rare (one per awaited playback): look for them only when there are some.
        items: list[OutboundItem] = (
            [OutboundMark(name) for name in chunker.take_marks()] if chunker._marks else []
        )
        while chunker._pending and now >= self._chunk_due_at() - _EPS:
            items.append(self._send_chunk(now))
            if chunker._marks:
                items.extend(OutboundMark(name) for name in chunker.take_marks())
        self._refresh_due()
        return items

    def settle(self, now: float) -> float | None:
        """Make the decisions a :meth:`poll` at ``now`` makes before handing anything out (stamp audio
        pushed without a time, decide whether an utterance starts) and return :meth:`next_wakeup`.

        A producer that has just pushed can call this instead of polling at once: when it returns a
        time after ``now``, nothing may be sent before then, and a poll at that time gives the same
        result as polling now and then.
        """
        if self._unstamped or self._utterance_undecided:
            self._decide(now)
            self._refresh_due()
        # Otherwise nothing changed since the last push, mark, poll or clear refreshed the due time.
        return self.next_wakeup(now)

    def _decide(self, now: float) -> None:
        """Stamp audio pushed without a time, and decide whether it starts an utterance, as of ``now``."""
        if self._unstamped:
            self._stamp(now)
        if self._utterance_undecided:
            self._decide_utterance(now)

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`poll` will next have something to hand out (``now`` if already due), or None
        when nothing is pending. Valid until the next push, mark, poll or clear."""
        due = self._due_at
        return None if due is None else max(now, due)

    def played_samples(self, now: float) -> int:
        """The position playback has reached at ``now``, per the model (padding is not counted)."""
        position = self._played_floor
        rate = self._plan.sample_rate
        for sent in self._sent:
            if now >= sent.play_end:
                position = sent.start + sent.audio_samples
                continue
            if now > sent.play_start:
                elapsed = math.floor((now - sent.play_start) * rate + 1e-6)
                position = sent.start + min(sent.audio_samples, elapsed)
            break
        return position

    def clear(self, now: float) -> ClearResult:
        """Drop pending audio and marks after sending Exotel a ``clear`` at ``now``.

        Exotel drops what it has queued except the chunk already playing, so the model keeps that one
        (the lead still counts it) and forgets the rest.
        """
        dropped = self._chunker.clear()
        self._pushes.clear()
        self._unstamped = self._utterance_undecided = False
        self._undecided_since = self._utterance_since = None
        self._forget_played(now)
        heard_until = self._played_floor
        playing_until: float | None = None
        if self._sent and self._sent[0].play_start <= now:
            playing = self._sent[0]
            heard_until = playing.start + playing.audio_samples
            playing_until = playing.play_end
            self._sent = deque([playing])
        else:
            self._sent.clear()
        self._pacer.reset(playing_until=playing_until)
        self._refresh_due()
        return ClearResult(tuple(dropped), heard_until)

    def _chunk_due_at(self) -> float:
        """When the next chunk of pending audio may go (pending must be non-empty)."""
        pending = self._chunker._pending
        chunk = self._chunk_samples
        pacer = self._pacer
        if self._utterance_since is not None:
            if pending >= chunk + self._prebuffer_samples:
                hold = -math.inf
            else:
                hold = self._utterance_since + self._chunk_duration + self._prebuffer
        elif pending >= chunk:
            hold = -math.inf
        else:
            hold = pacer.flush_deadline()
        duration = self._chunker.next_chunk_samples / self._rate
        earliest = pacer.earliest_send_time(duration)
        return hold if hold > earliest else earliest

    def _decide_utterance(self, now: float) -> None:
        """Decide whether audio pushed into an empty chunker starts a new utterance.

        A real-time producer fills the pending chunk by ``now + chunk - pending``; it continues the
        stream without a padded fragment only if that is no later than the flush deadline, i.e. if
        Exotel's queue plus what is pending holds at least one chunk plus ``margin``. Otherwise the
        queue will run dry before a full chunk exists, so take that gap once and build the
        ``prebuffer`` cushion. A producer already running with its cushion keeps one chunk plus
        ``prebuffer`` in flight and so is never cut into utterances.
        """
        since = now if self._undecided_since is None else self._undecided_since
        self._utterance_undecided, self._undecided_since = False, None
        if not self._chunker.pending_samples:
            return
        plan = self._plan
        in_flight = self._pacer.queued(now) + self._chunker.pending_samples / plan.sample_rate
        if in_flight < plan.chunk_duration + self._pacer.margin - _EPS:
            self._utterance_since = since

    def _stamp(self, now: float) -> None:
        if not self._unstamped:
            return
        self._pushes = deque((end, now if at is None else at) for end, at in self._pushes)
        self._unstamped = False

    def _refresh_due(self) -> None:
        chunker = self._chunker
        # The emptiness check first: marks are rare, and it saves a property call twice per chunk.
        if self._unstamped or self._utterance_undecided or (chunker._marks and chunker.has_ready_marks):
            self._due_at = -math.inf
        elif chunker._pending:
            self._due_at = self._chunk_due_at()
        else:
            self._due_at = None

    def _send_chunk(self, now: float) -> OutboundChunk:
        chunker = self._chunker
        full = chunker._pending >= self._chunk_samples
        first = chunker.emitted_samples
        chunk = chunker.take_chunk() if full else chunker.flush_partial()
        assert chunk is not None  # pending is non-empty
        audio_samples = chunk.audio_samples
        end = first + audio_samples
        # A full chunk was ready when its last sample arrived, a padded one since its first; the start
        # of an utterance is held on purpose and so never counts as an underrun.
        ready_at = None if self._utterance_since is not None else self._pushed_at(end - 1 if full else first)
        self._utterance_since = None
        pushes = self._pushes
        while pushes and pushes[0][0] <= end:
            pushes.popleft()
        pacer = self._pacer
        play_start = pacer.record_sent(chunk.duration, now, ready_at=ready_at)
        self._sent.append(_Sent(first, audio_samples, play_start, pacer.play_end))
        if chunk.padding:
            self._padded_chunks += 1
        return chunk

    def _pushed_at(self, position: int) -> float | None:
        for end, pushed_at in self._pushes:
            if position < end:
                return pushed_at
        raise AssertionError(f"no push covers position {position}")  # pragma: no cover

    def _forget_played(self, now: float) -> None:
        while self._sent and self._sent[0].play_end <= now:
            done = self._sent.popleft()
            self._played_floor = done.start + done.audio_samples
