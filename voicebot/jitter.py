"""Inbound jitter buffer: irregular Exotel chunks in, fixed frames out on a steady clock.

Exotel sends the caller's audio as ~100 ms chunks whose arrival times wobble with the network. The bot
wants fixed frames (20 ms by default) on a steady clock, and a timeline that stays true to the call's:
frame *k* is always media time ``[k * frame, (k + 1) * frame)`` after the first chunk, whatever the
network did. :class:`JitterBuffer` does that with plain function calls; it never reads a clock, every
method that needs the time takes ``now`` (seconds, monotonic, e.g. ``loop.time()``).

How it works
------------

*Placement.* Each chunk is placed on a media timeline measured in samples. A chunk with a
``timestamp_ms`` is placed relative to the known chunk with the nearest timestamp (so a slow drift
between Exotel's stamps and its sample clock never builds up); one with only a ``sequence_number`` is
placed relative to the known chunk with the nearest sequence number, assuming the missing chunks in
between were as long as the previous chunk; one with neither is appended to the audio already held
(or, if the buffer has run dry, at the playout head after re-anchoring the clock). Timestamps are whole
milliseconds and Exotel's stamp convention (start or end of chunk) is not documented, so a chunk whose
stamp puts it within ``slack_ms`` of its neighbour's edge (half a chunk if their sequence numbers are
adjacent) is placed flush against it: such a disagreement is stamp noise, not lost audio.

*Playout clock.* Frame at media position ``p`` is due at ``offset + p / sample_rate``. The offset is
anchored at the first chunk's arrival plus the target delay. Each arrival updates the RFC 3550
interarrival jitter ``J += (|D| - J) / 16`` (``D`` is the change in transit time, arrival minus media
time) and a mean transit time with the same gain, and steers the offset towards
``mean transit + target``, where ``target = clamp(3 * J + frame, min_delay, max_delay)``. The factor
3: for Gaussian jitter of deviation σ, ``J ≈ 1.13 σ``, so ``3 J ≈ 3.4 σ`` past the mean keeps ~99.9 %
of chunks on time (the same margin as the classic ``mean + 4 × mean deviation`` playout rule); for
uniform jitter of ±a, ``J = 2a/3`` and ``3 J = 2a`` covers the worst case twice over. The extra
frame covers a ticker that pops up to one frame period after a frame became due. The offset moves by
small steps only: it grows by at most 0.2 ms and shrinks by at most 0.02 ms per ms of audio received
(about one frame per 100 ms chunk when jitter appears, and ten seconds to shed 200 ms when it goes).
Moving the offset only changes *when* frames are released, never which media they hold, so the
released timeline never jumps backwards and never skips or repeats media. Following the mean transit
also absorbs clock drift between Exotel and us. Each transit sample moves the mean by at most
``max_delay_ms / 16`` (a burst after a stall is an outlier, not a new normal), and the applied delay
``offset - mean transit`` is clamped to ``[min_delay_ms, max_delay_ms]`` after every step.

*Gaps.* Media that has not arrived when its frame is due is concealed: the frame before the gap is
repeated at -6 dB, -12 dB, … (one step per frame) for ``conceal_ms``, then silence. Concealed frames
are counted in ``concealed``. ``lost`` counts missing chunks: with sequence numbers, those skipped and
not received since (RFC 3550 style: one that turns up later counts as late instead); without, each hole
concealed while later audio was already held, in units of the previous chunk's length. A chunk whose
media was already released (concealed) is ``late`` and dropped, except that the part of it still in the
future is kept. A chunk whose media was already received is a ``duplicate`` and dropped.

*Re-anchoring* (counted in ``resyncs``): the new chunk is appended to the held audio (or starts the
clock afresh at ``arrival + target`` if the buffer is dry) and placement restarts from it, when

- it lands more than ``max_gap_ms`` *behind* the newest media received: no straggler is that late,
  so the stream restarted (a new segment, sequence numbers from the start);
- it repeats media already received and carries the smallest sequence number or timestamp of the
  segment so far (a restart caught early, before it lands far behind);
- it lands more than ``max_gap_ms`` *ahead* of the newest media received: an absurd jump, which would
  otherwise become seconds of silence;
- every chunk for the last second has been dropped as late or duplicate: the sender's media clock
  lags ours for good, and waiting would drop everything. (A burst after a network stall is not this:
  its chunks are late only until the burst catches up, well within the second.)

*Bounds.* Audio held ahead of the playout head is capped at ``capacity_ms``; a chunk that would go
beyond is dropped and counted in ``overflow``. Bookkeeping (recent chunks, received spans, missing
sequence numbers) is capped too, so no input can grow memory without limit.

Driving it from asyncio
-----------------------

Call :meth:`JitterBuffer.push` for every media message with ``now = loop.time()`` at receipt. A
ticker (one shared ticker for all calls is cheapest) calls :meth:`JitterBuffer.pop` with the loop
time every ~20 ms and forwards the frames it returns, in order; a frame is due at
:meth:`JitterBuffer.next_due`, so a per-call task may instead sleep until then. ``pop`` returns every
frame due by ``now`` (several after a late tick; their media is contiguous). Because gaps are filled,
frames keep coming while the caller is silent or the network stalls, so the bot's timeline follows
the call's. At the end of the stream call :meth:`JitterBuffer.flush`. With ``zero_delay`` the clock is
ignored: ``pop`` returns every complete frame at once, and should be called right after ``push``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from voicebot.errors import ConfigError

__all__ = ["JitterBuffer", "JitterConfig", "JitterStats"]

Samples = npt.NDArray[np.int16]

_JITTER_MULTIPLIER = 3.0  # target = 3 J + frame: see the module docstring
_ESTIMATOR_GAIN = 1.0 / 16.0  # RFC 3550 §6.4.1, used for J and for the mean transit
_GROW_PER_SECOND = 0.2  # max growth of the playout delay per second of media received
_SHRINK_PER_SECOND = 0.02  # max shrink: grow fast to stop underruns, shrink slowly to avoid churn
_STUCK_RESYNC_S = 1.0  # drops in a row for this long mean the sender lags for good
_DUE_SLACK_S = 1e-6  # pop(next_due()) must release the frame despite float rounding
_RECORDS_KEPT = 32  # recent chunks kept as placement references
_SPANS_KEPT = 64  # received spans kept for duplicate detection
_MISSING_KEPT = 256  # missing sequence numbers remembered, to un-count them if they turn up
_ADJACENT_SNAP_FRACTION = 2  # adjacent sequence numbers: snap within half the shorter chunk


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class JitterConfig:
    """How the jitter buffer frames, delays and repairs inbound audio. All durations in ms."""

    frame_ms: int = 20
    """Length of every released frame."""
    min_delay_ms: int = 20
    """Lower bound of the adaptive playout delay (and the fixed delay when ``adaptive`` is off)."""
    max_delay_ms: int = 200
    """Upper bound of the adaptive playout delay."""
    adaptive: bool = True
    """Adapt the playout delay to measured jitter; otherwise hold it at ``min_delay_ms``."""
    zero_delay: bool = False
    """Release frames as soon as they are complete, ignoring the clock; gaps are still filled."""
    conceal_ms: int = 40
    """How long a gap is filled by an attenuated repeat of the last frame before silence."""
    slack_ms: int = 10
    """Timestamp disagreements up to this are stamp noise: the chunk is placed flush to its neighbour."""
    max_gap_ms: int = 2000
    """A jump in media time beyond this re-anchors: ahead, instead of seconds of silence; behind,
    because no straggler is that late (the stream restarted)."""
    capacity_ms: int = 4000
    """Most audio held ahead of the playout head; chunks beyond it are dropped (``overflow``)."""

    def __post_init__(self) -> None:
        _require_int("frame_ms", self.frame_ms, minimum=1)
        _require_int("min_delay_ms", self.min_delay_ms, minimum=0)
        _require_int("max_delay_ms", self.max_delay_ms, minimum=0)
        _require_int("conceal_ms", self.conceal_ms, minimum=0)
        _require_int("slack_ms", self.slack_ms, minimum=0)
        _require_int("max_gap_ms", self.max_gap_ms, minimum=1)
        _require_int("capacity_ms", self.capacity_ms, minimum=1)
        for name in ("adaptive", "zero_delay"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.min_delay_ms > self.max_delay_ms:
            raise ConfigError(
                f"min_delay_ms must be <= max_delay_ms, got {self.min_delay_ms} > {self.max_delay_ms}"
            )
        if self.capacity_ms < self.max_delay_ms + 2 * self.frame_ms:
            raise ConfigError(
                "capacity_ms must hold max_delay_ms plus two frames "
                f"(>= {self.max_delay_ms + 2 * self.frame_ms}), got {self.capacity_ms}"
            )


@dataclass(frozen=True, kw_only=True)
class JitterStats:
    """A snapshot of what the jitter buffer has seen and is doing.

    Counters cover the buffer's whole life (``reset`` and ``flush`` keep them).
    """

    received: int
    """Chunks pushed, whatever became of them."""
    late: int
    """Chunks that arrived after (part of) their media had been released; that part was dropped."""
    duplicate: int
    """Chunks whose media had all been received already; dropped."""
    lost: int
    """Chunks known to be missing: skipped sequence numbers not received since (one that turns up late
    counts as late instead); without sequence numbers, holes concealed before later audio, in chunks."""
    concealed: int
    """Released frames that contain concealment or silence in place of missing media."""
    overflow: int
    """Chunks dropped because they would have exceeded ``capacity_ms`` of held audio."""
    resyncs: int
    """Times the timeline was re-anchored (stream restart, absurd jump, or a sender stuck behind)."""
    current_depth_ms: float
    """Playout delay currently applied past the mean transit time (0 in zero-delay mode)."""
    target_depth_ms: float
    """Playout delay the buffer steers towards: ``clamp(3 J + frame, min, max)``."""
    jitter_ms: float
    """RFC 3550 interarrival jitter estimate J."""
    buffered_ms: float
    """Received audio held ahead of the playout head."""


class _Placed(NamedTuple):
    sequence_number: int | None
    timestamp_ms: int | None
    start: int
    length: int


class _Spans:
    """Sorted, merged, half-open sample ranges ``[start, end)`` of received media."""

    __slots__ = ("_spans",)

    def __init__(self) -> None:
        self._spans: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        spans = self._spans
        i = bisect.bisect_left(spans, (start, start))
        if i > 0 and spans[i - 1][1] >= start:
            i -= 1
            start = spans[i][0]
        j = i
        while j < len(spans) and spans[j][0] <= end:
            end = max(end, spans[j][1])
            j += 1
        spans[i:j] = [(start, end)]

    def _first_touching(self, start: int) -> int:
        return max(0, bisect.bisect_right(self._spans, (start, math.inf)) - 1)

    def parts(self, start: int, end: int) -> list[tuple[int, int]]:
        """The received sub-ranges of ``[start, end)``."""
        out: list[tuple[int, int]] = []
        for a, b in self._spans[self._first_touching(start) :]:
            if a >= end:
                break
            if b > start:
                out.append((max(a, start), min(b, end)))
        return out

    def gaps(self, start: int, end: int, parts: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """The sub-ranges of ``[start, end)`` not received (``parts``: its received ones, if known)."""
        out: list[tuple[int, int]] = []
        cursor = start
        for a, b in self.parts(start, end) if parts is None else parts:
            if a > cursor:
                out.append((cursor, a))
            cursor = b
        if cursor < end:
            out.append((cursor, end))
        return out

    def next_start(self, position: int) -> int | None:
        """Start of the first span at or after ``position``, if any."""
        i = bisect.bisect_left(self._spans, (position, position))
        return self._spans[i][0] if i < len(self._spans) else None

    def covers(self, start: int, end: int) -> bool:
        """Whether every sample of ``[start, end)`` was received."""
        return not self.gaps(start, end)

    def prune(self, before: int) -> None:
        """Forget spans that end before ``before``, and the oldest beyond the cap."""
        spans = self._spans
        if not spans or (spans[0][1] >= before and len(spans) <= _SPANS_KEPT):
            return
        keep = 0
        while keep < len(spans) and spans[keep][1] < before:
            keep += 1
        del spans[: max(keep, len(spans) - _SPANS_KEPT)]


class JitterBuffer:
    """Reorders and repairs inbound chunks and releases fixed frames behind an adaptive delay.

    ``sample_rate`` is the stream rate of the pushed samples; frames come out at the same rate. See
    the module docstring for the model, the thresholds, and how to drive it from an asyncio ticker.
    """

    def __init__(self, sample_rate: int, config: JitterConfig | None = None) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ConfigError(f"sample_rate must be a positive int, got {sample_rate!r}")
        self._config = config if config is not None else JitterConfig()
        cfg = self._config
        if (cfg.frame_ms * sample_rate) % 1000:
            raise ConfigError(
                f"frame_ms must be a whole number of samples at {sample_rate} Hz, got {cfg.frame_ms}"
            )
        self._rate = sample_rate
        self._zero_delay = cfg.zero_delay
        self._adaptive = cfg.adaptive
        self._disable_fast_paths = False  # tests compare the fast paths against the general ones
        self._frame = cfg.frame_ms * sample_rate // 1000
        self._conceal_len = cfg.conceal_ms * sample_rate // 1000
        conceal_frames = -(-self._conceal_len // self._frame)
        self._conceal_gains = (0.5 ** np.arange(1, conceal_frames + 1)).astype(np.float32)
        self._slack = cfg.slack_ms * sample_rate // 1000
        self._max_gap = cfg.max_gap_ms * sample_rate // 1000
        self._capacity = cfg.capacity_ms * sample_rate // 1000
        self._min_delay_s = cfg.min_delay_ms / 1000
        self._max_delay_s = cfg.max_delay_ms / 1000
        self._frame_s = cfg.frame_ms / 1000

        self._received = 0
        self._late = 0
        self._duplicate = 0
        self._lost = 0
        self._concealed = 0
        self._overflow = 0
        self._resyncs = 0
        self._clear_timeline()

    def _clear_timeline(self) -> None:
        self._started = False
        self._released_any = False
        self._head = 0  # media position of the next frame to release
        self._high = 0  # end of the newest media received (may lag the head after an underrun)
        self._spans = _Spans()
        self._window: Samples = np.zeros(0, dtype=np.int16)
        self._window_pos = 0  # media position of self._window[0]; always <= self._head
        self._records: deque[_Placed] = deque(maxlen=_RECORDS_KEPT)
        # How many of the newest records have strictly rising timestamps: when all of them do, the
        # newest is the unique nearest reference for a later timestamp (the in-order fast path).
        self._rising_run = 0
        self._nominal = self._frame  # length of the previous chunk
        self._max_seq: int | None = None
        self._min_seq: int | None = None
        self._min_ts: int | None = None
        self._missing: dict[int, None] = {}
        self._offset = 0.0  # the frame at media position p is due at offset + p / rate
        self._mean_transit = 0.0
        self._prev_transit: float | None = None
        self._jitter = 0.0
        self._drops_since: float | None = None
        self._ready_since: float | None = None
        self._history: Samples = np.zeros(self._frame, dtype=np.int16)  # the last frame released
        # When set, _history is stale and the last frame released is the window's frame just before the
        # head: the fast pop path leaves it there, to be copied out only when read or before the window
        # is replaced (nothing before the head is written otherwise).
        self._history_in_window = False
        self._gap_start = 0
        self._gap_end = -1  # media position where the current concealment run stopped
        self._gap_source: Samples = self._history
        self._hole_counted_to = -(2**62)  # holes before this position were counted as lost

    # ----------------------------------------------------------------------------------- public

    @property
    def config(self) -> JitterConfig:
        """The configuration this buffer was built with."""
        return self._config

    @property
    def sample_rate(self) -> int:
        """The rate of pushed and released samples."""
        return self._rate

    @property
    def frame_samples(self) -> int:
        """Length of every released frame, in samples."""
        return self._frame

    def push(
        self,
        samples: Samples,
        *,
        sequence_number: int | None,
        timestamp_ms: int | None,
        now: float,
    ) -> None:
        """Take one decoded chunk (1-D int16 at the stream rate) that arrived at ``now``.

        The samples are copied; the caller may reuse its array.
        """
        if not isinstance(samples, np.ndarray) or samples.ndim != 1 or samples.dtype != np.int16:
            raise ValueError(f"samples must be a 1-D numpy int16 array, got {_describe(samples)}")
        if type(sequence_number) is not int:
            _require_number("sequence_number", sequence_number)
        if type(timestamp_ms) is not int:
            _require_number("timestamp_ms", timestamp_ms)
        self._received += 1
        length = len(samples)
        if length == 0:
            return
        if not self._started:
            self._start(samples, sequence_number, timestamp_ms, now)
            return
        if timestamp_ms is not None and self._push_next(samples, length, sequence_number, timestamp_ms, now):
            return

        start = self._place(length, sequence_number, timestamp_ms)
        timed = start is not None
        resync = False
        if start is None:
            start = self._anchor_position(now)
        elif self._must_resync(start, length, sequence_number, timestamp_ms):
            resync = True
        elif self._spans.covers(start, start + length) or (
            self._released_any and start + length <= self._head
        ):
            if self._drops_since is not None and now - self._drops_since >= _STUCK_RESYNC_S:
                resync = True
            elif self._spans.covers(start, start + length):
                self._duplicate += 1
                self._note_drop(now)
                return
        if resync:
            start = self._resync(now)
            timed = False

        end = start + length
        if not self._released_any and start < self._head:
            self._head = start  # nothing released yet: the timeline may still start earlier
        if end - self._head > self._capacity:
            self._overflow += 1
            return

        late = start < self._head and not self._spans.covers(start, self._head)
        if timed:
            self._count_losses(start, sequence_number)
        if late:
            self._late += 1
        if end > self._head:
            self._store(max(start, self._head), end, samples[max(0, self._head - start) :])
        if late and end <= self._head:
            self._note_drop(now)
        else:
            self._drops_since = None

        self._high = max(self._high, end)
        self._remember(_Placed(sequence_number, timestamp_ms, start, length))
        self._nominal = length
        if sequence_number is not None:
            self._max_seq = (
                max(self._max_seq, sequence_number) if self._max_seq is not None else sequence_number
            )
            self._min_seq = (
                min(self._min_seq, sequence_number) if self._min_seq is not None else sequence_number
            )
        if timestamp_ms is not None:
            self._min_ts = min(self._min_ts, timestamp_ms) if self._min_ts is not None else timestamp_ms
        self._observe_arrival(start, length, now, restarted=resync)
        if self._ready_since is None and self._high - self._head >= self._frame:
            self._ready_since = now

    def pop(self, now: float) -> list[Samples]:
        """Every frame due at ``now``, in order, each exactly :attr:`frame_samples` long.

        Frames whose media is missing are concealed. The returned arrays are a fresh copy (or views of
        one) that the buffer never touches again.
        """
        block = self.pop_audio(now)
        return [] if block is None else self._frames_of(block)

    def _frames_of(self, block: Samples) -> list[Samples]:
        """``block`` (a whole number of frames) as a list of views, one per frame."""
        frame = self._frame
        if len(block) == frame:
            return [block]
        return [block[i : i + frame] for i in range(0, len(block), frame)]

    def pop_audio(self, now: float) -> Samples | None:
        """What :meth:`pop` returns, as one fresh array (the frames back to back), or None if none is due.

        For a consumer that processes the audio as a stream rather than frame by frame.
        """
        if not self._started:
            return None
        head = self._head
        frame = self._frame
        if self._zero_delay:
            count = (self._high - head) // frame
        else:
            horizon = (now + _DUE_SLACK_S - self._offset) * self._rate
            count = math.floor((horizon - head) / frame) + 1 if horizon >= head else 0
        if count <= 0:
            return None
        end = head + count * frame
        spans = self._spans._spans
        if spans and spans[-1][0] <= head and end <= spans[-1][1] and not self._disable_fast_paths:
            # All of it received, in the newest span: no gaps to conceal, one copy out of the window.
            window_pos = self._window_pos
            block = self._window[head - window_pos : end - window_pos].copy()
            self._history_in_window = True
        else:
            block = self._render(head, end)
        self._head = end
        self._released_any = True
        self._ready_since = None
        self._spans.prune(end - self._capacity)
        return block

    def next_due(self) -> float | None:
        """When :meth:`pop` will next release a frame (may be in the past), or None if never.

        With a delay, this is the due time of the frame at the playout head, defined from the first
        chunk on (gaps are concealed). In zero-delay mode it is the arrival time of the chunk that
        completed the oldest unreleased frame, or None while no frame is complete.
        """
        if not self._started:
            return None
        if self._zero_delay:
            return self._ready_since
        return self._offset + self._head / self._rate

    def flush(self) -> list[Samples]:
        """End of stream: every frame still held, due or not, the last one zero-padded.

        Gaps before the newest media are concealed. The timeline is then forgotten as by
        :meth:`reset`.
        """
        frames: list[Samples] = []
        if self._started and self._high > self._head:
            count = -(-(self._high - self._head) // self._frame)
            block = np.zeros(count * self._frame, dtype=np.int16)
            block[: self._high - self._head] = self._render(self._head, self._high)
            frames = self._frames_of(block)
        self._clear_timeline()
        return frames

    def reset(self) -> None:
        """Drop held audio and forget the timeline and timing estimates; counters are kept."""
        self._clear_timeline()

    @property
    def stats(self) -> JitterStats:
        """A snapshot of the counters and the current delay estimates."""
        held = sum(b - a for a, b in self._spans.parts(self._head, self._head + self._capacity))
        applied = self._started and not self._zero_delay
        return JitterStats(
            received=self._received,
            late=self._late,
            duplicate=self._duplicate,
            lost=self._lost,
            concealed=self._concealed,
            overflow=self._overflow,
            resyncs=self._resyncs,
            current_depth_ms=(self._offset - self._mean_transit) * 1000 if applied else 0.0,
            target_depth_ms=self._target_delay() * 1000,
            jitter_ms=self._jitter * 1000,
            buffered_ms=held * 1000 / self._rate,
        )

    # --------------------------------------------------------------------------------- placement

    def _push_next(self, samples: Samples, length: int, seq: int | None, ts: int, now: float) -> bool:
        """The common case, done cheaply: a chunk that continues the newest media with nothing missing.

        Returns False, having changed nothing, for any other chunk; :meth:`push` then takes the general
        path. It takes a chunk only where the general path would place it at the high-water mark (the
        newest record is the nearest in time and ends there) with the high-water mark at or past the
        playout head and the sequence number, if any, next: then no resync, duplicate, late, loss or
        overflow can be found, the chunk's media was not received before, and the general path would
        store all of it and extend the newest span, which is what is done here.
        """
        if self._disable_fast_paths:
            return False
        ref = self._newest_if_nearest(ts)
        if ref is None:
            return False
        max_seq = self._max_seq
        if seq is not None and (max_seq is None or seq != max_seq + 1):
            return False  # first, skipped or repeated sequence number: the general path counts it
        high = self._high
        head = self._head
        end = high + length
        if high < head or end - head > self._capacity or ref.start + ref.length != high:
            return False
        if self._timed_position(ref, length, seq, ts) != high:
            return False

        window_pos = self._window_pos
        if high < window_pos or end > window_pos + len(self._window):
            self._rewindow(min(high, head), end)
            window_pos = self._window_pos
        self._window[high - window_pos : end - window_pos] = samples
        spans = self._spans._spans  # all of them end at or before the high-water mark
        if spans and spans[-1][1] == high:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((high, end))
        self._drops_since = None
        self._high = end
        rising = self._rising_run
        self._rising_run = rising + 1 if rising < _RECORDS_KEPT else _RECORDS_KEPT
        self._records.append(_Placed(seq, ts, high, length))
        self._nominal = length
        if seq is not None:
            self._max_seq = seq  # the smallest was set with the newest, and seq is above it
        if self._min_ts is None or ts < self._min_ts:
            self._min_ts = ts
        self._observe_arrival(high, length, now, restarted=False)
        if self._ready_since is None and end - head >= self._frame:
            self._ready_since = now
        return True

    def _start(self, samples: Samples, seq: int | None, ts: int | None, now: float) -> None:
        length = len(samples)
        self._started = True
        self._head = 0
        self._window_pos = 0
        self._store(0, length, samples)
        self._high = length
        self._remember(_Placed(seq, ts, 0, length))
        self._nominal = length
        self._max_seq = self._min_seq = seq
        self._min_ts = ts
        self._mean_transit = now
        self._prev_transit = now
        self._offset = now + self._target_delay()
        if length >= self._frame:
            self._ready_since = now

    def _remember(self, record: _Placed) -> None:
        records = self._records
        newest = records[-1].timestamp_ms if records else None
        if record.timestamp_ms is None:
            self._rising_run = 0
        elif newest is not None and record.timestamp_ms > newest:
            self._rising_run = min(self._rising_run + 1, _RECORDS_KEPT)
        else:
            self._rising_run = 1
        records.append(record)

    def _newest_if_nearest(self, ts: int) -> _Placed | None:
        """The newest record, if every kept record's timestamp rises and ``ts`` is later than all of
        them: it is then the unique nearest in time, found without a scan. None otherwise."""
        records = self._records
        if records and self._rising_run == len(records) and ts > _known(records[-1].timestamp_ms):
            return records[-1]
        return None

    def _nearest_in_time(self, ts: int) -> _Placed | None:
        """The record whose timestamp is nearest ``ts`` (the earlier one on a tie), if any has one."""
        newest = self._newest_if_nearest(ts)
        if newest is not None:
            return newest
        records = self._records
        timed = [r for r in records if r.timestamp_ms is not None]
        if not timed:
            return None
        return min(timed, key=lambda r: (abs(ts - _known(r.timestamp_ms)), _known(r.timestamp_ms) > ts))

    def _place(self, length: int, seq: int | None, ts: int | None) -> int | None:
        """Media position of a new chunk from its timestamp or sequence number; None if neither."""
        if ts is not None:
            ref = self._nearest_in_time(ts)
            if ref is not None:
                return self._timed_position(ref, length, seq, ts)
        if seq is not None:
            numbered = [r for r in self._records if r.sequence_number is not None]
            if numbered:
                ref = min(
                    numbered,
                    key=lambda r: (abs(seq - _known(r.sequence_number)), _known(r.sequence_number) > seq),
                )
                step = seq - _known(ref.sequence_number)
                if step > 0:
                    return ref.start + ref.length + (step - 1) * self._nominal
                if step < 0:
                    return ref.start + (step + 1) * self._nominal - length
                return ref.start
        return None

    def _timed_position(self, ref: _Placed, length: int, seq: int | None, ts: int) -> int:
        """Where a chunk stamped ``ts`` goes, from the reference ``ref`` (which has a timestamp): its
        timestamp's offset, snapped to ``ref``'s edge when within the slack (half the shorter chunk
        for adjacent sequence numbers)."""
        ref_ts = _known(ref.timestamp_ms)
        raw = ref.start + _round_half_up((ts - ref_ts) * self._rate / 1000)
        tolerance = self._slack
        if seq is not None and ref.sequence_number is not None:
            step = seq - ref.sequence_number
            if (step == 1 and ts > ref_ts) or (step == -1 and ts < ref_ts):
                half = min(length, ref.length) // _ADJACENT_SNAP_FRACTION
                tolerance = max(tolerance, half)
        if ts == ref_ts:
            return ref.start
        if ts > ref_ts and abs(raw - (ref.start + ref.length)) <= tolerance:
            return ref.start + ref.length
        if ts < ref_ts and abs(raw + length - ref.start) <= tolerance:
            return ref.start - length
        return raw

    def _must_resync(self, start: int, length: int, seq: int | None, ts: int | None) -> bool:
        end = start + length
        if end < self._high - self._max_gap or start > self._high + self._max_gap:
            return True
        restarts = (seq is not None and self._min_seq is not None and seq <= self._min_seq) or (
            ts is not None and self._min_ts is not None and ts <= self._min_ts
        )
        return restarts and self._spans.covers(start, end)

    def _anchor_position(self, now: float) -> int:
        """Where a chunk with no usable media time goes: after the held audio, or re-anchored."""
        if self._high >= self._head or self._zero_delay:
            return max(self._high, self._head)
        # The buffer ran dry: restart the clock so this chunk plays after the target delay.
        self._offset = now + self._target_delay() - self._head / self._rate
        return self._head

    def _resync(self, now: float) -> int:
        self._resyncs += 1
        self._records.clear()
        self._rising_run = 0
        self._missing.clear()
        self._max_seq = self._min_seq = self._min_ts = None
        self._drops_since = None
        return self._anchor_position(now)

    def _count_losses(self, start: int, seq: int | None) -> None:
        if seq is not None and self._max_seq is not None:
            if seq > self._max_seq + 1:
                for missing in range(max(self._max_seq + 1, seq - _MISSING_KEPT), seq):
                    self._missing[missing] = None
                self._lost += seq - self._max_seq - 1
                while len(self._missing) > _MISSING_KEPT:
                    del self._missing[next(iter(self._missing))]
            elif seq in self._missing:
                del self._missing[seq]
                self._lost -= 1

    def _note_drop(self, now: float) -> None:
        if self._drops_since is None:
            self._drops_since = now

    # ------------------------------------------------------------------------------------ timing

    # Both run once per chunk: their clamps are spelt as comparisons rather than min()/max() calls, with
    # the same results (min(a, b) is b only if b < a; max(a, b) is b only if b > a).

    def _target_delay(self) -> float:
        if not self._adaptive:
            return self._min_delay_s
        wanted = _JITTER_MULTIPLIER * self._jitter + self._frame_s
        if not wanted > self._min_delay_s:
            wanted = self._min_delay_s
        return wanted if wanted < self._max_delay_s else self._max_delay_s

    def _observe_arrival(self, start: int, length: int, now: float, *, restarted: bool) -> None:
        rate = self._rate
        max_delay = self._max_delay_s
        transit = now - start / rate
        if restarted or self._prev_transit is None:
            mean = transit
        else:
            jitter = self._jitter
            self._jitter = jitter + (abs(transit - self._prev_transit) - jitter) * _ESTIMATOR_GAIN
            # Clipped so that one burst after a stall cannot drag the playout clock by seconds.
            deviation = transit - self._mean_transit
            if not deviation > -max_delay:
                deviation = -max_delay
            if not deviation < max_delay:
                deviation = max_delay
            mean = self._mean_transit + deviation * _ESTIMATOR_GAIN
        self._mean_transit = mean
        self._prev_transit = transit
        desired = mean + self._target_delay()
        media_s = length / rate
        offset = self._offset
        if desired > offset:
            step = media_s * _GROW_PER_SECOND
            offset += step if step < desired - offset else desired - offset
        else:
            step = media_s * _SHRINK_PER_SECOND
            offset -= step if step < offset - desired else offset - desired
        # The applied delay never leaves its bounds, even while the mean moves faster than the steps.
        least = mean + self._min_delay_s
        if not offset > least:
            offset = least
        most = mean + max_delay
        self._offset = offset if offset < most else most

    # ----------------------------------------------------------------------------------- storage

    def _store(self, start: int, end: int, samples: Samples) -> None:
        """Write the not-yet-received parts of ``[start, end)``; ``samples`` begins at ``start``."""
        if start < self._window_pos or end > self._window_pos + len(self._window):
            self._rewindow(min(start, self._head), end)
        for a, b in self._spans.gaps(start, end):
            self._window[a - self._window_pos : b - self._window_pos] = samples[a - start : b - start]
        self._spans.add(start, end)

    def _settle_history(self) -> None:
        """Copy the last frame released out of the window, if the fast pop path left it there."""
        if self._history_in_window:
            head = self._head - self._window_pos
            self._history = self._window[head - self._frame : head].copy()
            self._history_in_window = False

    def _rewindow(self, low: int, high: int) -> None:
        self._settle_history()  # the new window keeps nothing before the head
        needed = max(high, self._high) - low  # the held audio must fit as well as the new chunk
        # Room for at least half a second more, so that in-order chunks are appended in place for a while.
        size = max(needed, min(needed + max(needed, self._rate // 2), self._capacity))
        window = np.empty(size, dtype=np.int16)
        keep_from = max(self._window_pos, low, self._head)
        keep_to = min(self._window_pos + len(self._window), low + size)
        if keep_to > keep_from:
            window[keep_from - low : keep_to - low] = self._window[
                keep_from - self._window_pos : keep_to - self._window_pos
            ]
        self._window = window
        self._window_pos = low

    def _render(self, start: int, end: int) -> Samples:
        """Media ``[start, end)`` from the window, gaps concealed; counts concealed frames."""
        self._settle_history()
        out = np.empty(end - start, dtype=np.int16)
        parts = self._spans.parts(start, end)
        for a, b in parts:
            out[a - start : b - start] = self._window[a - self._window_pos : b - self._window_pos]
        gaps = self._spans.gaps(start, end, parts)
        if gaps:
            concealed_frames: set[int] = set()
            for a, b in gaps:
                self._conceal(out, start, a, b)
                if self._max_seq is None:
                    self._count_hole(a, b if b < end else self._spans.next_start(end))
                concealed_frames.update(range((a - start) // self._frame, (b - 1 - start) // self._frame + 1))
            self._concealed += len(concealed_frames)
        tail = out[-self._frame :]
        if len(tail) < self._frame:
            tail = np.concatenate([self._history[len(tail) :], tail])
        self._history = tail.copy()
        return out

    def _count_hole(self, gap_from: int, hole_end: int | None) -> None:
        """Without sequence numbers, a gap is a loss once it is concealed with later audio held."""
        if hole_end is not None and hole_end > self._hole_counted_to:
            missing = hole_end - max(gap_from, self._hole_counted_to)
            self._lost += max(1, _round_half_up(missing / self._nominal))
            self._hole_counted_to = hole_end

    def _conceal(self, out: Samples, out_start: int, gap_from: int, gap_to: int) -> None:
        """Fill ``out`` over the gap with a decaying repeat of the frame before it, then silence."""
        if gap_from != self._gap_end:
            self._gap_start = gap_from
            before = gap_from - out_start
            if before >= self._frame:
                self._gap_source = out[before - self._frame : before].copy()
            else:
                self._gap_source = np.concatenate([self._history[before:], out[:before]])
        self._gap_end = gap_to
        first = gap_from - self._gap_start
        fill = out[gap_from - out_start : gap_to - out_start]
        fill[:] = 0
        repeat_to = min(gap_to - self._gap_start, self._conceal_len)
        if first < repeat_to:
            offsets = np.arange(first, repeat_to)
            repeated = self._gap_source[offsets % self._frame] * self._conceal_gains[offsets // self._frame]
            fill[: repeat_to - first] = repeated.astype(np.int16)


def _require_number(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an int or None, got {value!r}")


def _known(value: int | None) -> int:
    assert value is not None
    return value


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__
