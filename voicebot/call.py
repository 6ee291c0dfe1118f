"""One ``Call`` per WebSocket connection: the asyncio glue around the sans-I/O core.

Data path (DESIGN.md §3):

* The **reader** task parses each frame with ``StreamProtocol``, decodes media, puts it through the
  jitter buffer, resamples the released audio once per wire chunk (stream rate → handler rate), cuts it
  into fixed frames and appends them to a bounded inbound queue. It never waits for the bot: when the
  queue is full the oldest *audio* is dropped and counted; DTMF and the end of the call are never
  dropped.
* The **handler** task runs ``handler.run(call)``; hooks of one call run one at a time.
* There is no writer task per call. ``play`` holds the bot's audio; once the bot's burst of plays is
  over (a ``call_soon`` callback), it is resampled to the stream rate in one step and pushed into an
  ``OutboundStream`` (chunker + pacer). The server's shared ``Ticker`` calls ``tick(now)`` when the
  pacer says a chunk may go, and ``tick`` sends whatever is due: encoded media chunks and the marks
  that tell when a playback has been heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidState
from websockets.protocol import Protocol, State

from voicebot.audio import FrameSplitter, Resampler, ResamplerWorkspace, decode, encode, to_int16
from voicebot.errors import LocalProtocolError, RemoteProtocolError
from voicebot.events import Clear, Connected, Dtmf, Encoding, Mark, Media, Start, Stop, Unknown
from voicebot.jitter import JitterBuffer
from voicebot.logs import call_ids
from voicebot.pacing import OutboundChunk, OutboundMark, OutboundStream
from voicebot.protocol import DEFAULT_SESSION_LIMIT, StreamProtocol, StreamState, remote_end_reason
from voicebot.ticker import Ticker

if TYPE_CHECKING:
    from voicebot.handler import Handler

__all__ = ["AudioFrame", "Call", "CallEnded", "CallEvent", "CallStats", "Playback"]

T = TypeVar("T")
Samples = npt.NDArray[np.int16]
_INT16: Final = np.dtype(np.int16)

#: How long a handler may keep running after its socket has closed before it is cancelled.
HANDLER_GRACE_SECONDS: Final = 10.0
#: Close codes (RFC 6455) we use.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_INTERNAL_ERROR: Final = 1011
#: Protocol errors are logged in full for the first few, then sampled, so a broken peer cannot flood logs.
_LOGGED_PROTOCOL_ERRORS: Final = 5
#: Names of marks cancelled by clear() kept to recognise their late echoes.
_MAX_CANCELLED_MARKS: Final = 1000
#: Seconds of held bot audio whose buffer is kept for the next burst (an echo bot holds 0.1 s); one
#: grown larger, by a prompt, is given back, so that a greeting does not cost every call 16 KiB.
_HELD_OUT_KEPT: Final = 0.2


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A fixed-size frame of caller audio at the handler's rate, in call order."""

    samples: Samples
    sample_rate: int
    index: int
    """Frame number since the stream started; frames are contiguous in the call's timeline."""

    @property
    def duration(self) -> float:
        """Seconds of audio in this frame."""
        return len(self.samples) / self.sample_rate

    @property
    def timestamp(self) -> float:
        """Seconds from the start of the stream to the start of this frame."""
        return self.index * len(self.samples) / self.sample_rate


_new_object: Final = object.__new__
_set_frame_samples: Final = vars(AudioFrame)["samples"].__set__
_set_frame_rate: Final = vars(AudioFrame)["sample_rate"].__set__
_set_frame_index: Final = vars(AudioFrame)["index"].__set__


def _audio_frame(samples: Samples, sample_rate: int, index: int) -> AudioFrame:
    """``AudioFrame(samples, sample_rate, index)`` at a third of the cost: the frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``; this sets the slots directly."""
    frame = _new_object(AudioFrame)
    _set_frame_samples(frame, samples)
    _set_frame_rate(frame, sample_rate)
    _set_frame_index(frame, index)
    return frame


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The last event of every call; ``reason`` as in ``Handler.on_stop``."""

    reason: str


CallEvent = AudioFrame | Dtmf | CallEnded


@dataclass(slots=True)
class CallStats:
    """Counters of one call, for logs, metrics and tests."""

    frames_in: int = 0
    frames_dropped: int = 0
    dtmf: int = 0
    protocol_errors: int = 0
    unknown_events: int = 0
    chunks_out: int = 0
    bytes_out: int = 0
    marks_sent: int = 0
    marks_echoed: int = 0
    late_marks_ignored: int = 0
    playbacks: int = 0
    playbacks_interrupted: int = 0
    clears: int = 0
    send_stalls: int = 0
    warnings: list[str] = field(default_factory=list)


class Playback:
    """A handle on audio given to ``call.play``: done when the caller has heard it, or interrupted.

    Await it (or ``await playback.wait()``) to wait until Exotel echoes a mark placed after it; then
    ``confirmed`` is True. A playback nobody waits for gets no mark of its own: it is retired once the
    pacing model says it has played (``confirmed`` False), so an echo bot playing every 20 ms frame
    costs no marks and keeps no growing backlog. ``heard`` tells how much was played, in seconds.
    """

    __slots__ = (
        "_call",
        "_done",
        "_future",
        "confirmed",
        "duration",
        "end",
        "heard",
        "interrupted",
        "number",
        "start",
    )

    def __init__(self, call: Call, number: int, start: int, end: int, duration: float) -> None:
        self._call = call
        self._future: asyncio.Future[None] | None = None  # created for the first waiter only
        self._done = False
        self.number = number
        self.start = start
        """First sample of this playback in the outbound stream (stream rate)."""
        self.end = end
        """One past its last sample in the outbound stream."""
        self.duration = duration
        """Seconds of audio that were played into the call."""
        self.heard = 0.0
        self.interrupted = False
        self.confirmed = False
        """Whether Exotel's mark echo confirmed it was heard (rather than the pacing model)."""

    def done(self) -> bool:
        """Whether it has been heard completely or interrupted."""
        return self._done

    @property
    def awaited(self) -> bool:
        """Whether someone is waiting for it (it then completes only on a mark echo or an interruption)."""
        return self._future is not None

    async def wait(self, timeout: float | None = None) -> Playback:
        """Wait until it has been heard (a mark after it echoed) or interrupted.

        Raises ``TimeoutError`` after ``timeout`` seconds; the playback itself goes on.
        """
        if not self._done:
            if self._future is None:
                self._future = asyncio.get_running_loop().create_future()
            self._call._ensure_mark_after(self)
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._future)
        return self

    def __await__(self) -> Generator[Any, None, Playback]:
        return self.wait().__await__()

    def _complete(self, heard: float, *, interrupted: bool, confirmed: bool) -> None:
        if self._done:
            return
        self._done = True
        self.heard = heard
        self.interrupted = interrupted
        self.confirmed = confirmed
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def __repr__(self) -> str:
        state = "interrupted" if self.interrupted else "heard" if self._done else "pending"
        return f"<Playback #{self.number} {self.duration:.2f}s {state} heard={self.heard:.2f}s>"


class _CallLog(logging.LoggerAdapter[logging.Logger]):
    """Puts the call's ids on every record it emits, whatever handlers the application installed."""

    def __init__(self, logger: logging.Logger, ids: dict[str, str]) -> None:
        super().__init__(logger, ids)
        self.ids = ids

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**self.ids, **kwargs.get("extra", {})}
        return msg, kwargs


class _InboundQueue:
    """Frames and control events for the handler, in arrival order.

    Audio is bounded: when full, the oldest frame is dropped. Control events are never dropped.
    """

    def __init__(self, max_audio: int) -> None:
        self._max_audio = max_audio
        self._events: deque[CallEvent] = deque()
        self._audio = 0  # frames among _events
        self._waiter: asyncio.Future[None] | None = None  # the handler, waiting for an event
        self.dropped = 0

    def put_frames(self, frames: list[AudioFrame]) -> None:
        events = self._events
        events.extend(frames)
        self._audio += len(frames)
        if self._audio > self._max_audio:
            self._drop_oldest(self._audio - self._max_audio)
        self._wake_waiter()

    def put_control(self, event: Dtmf | CallEnded) -> None:
        self._events.append(event)
        self._wake_waiter()

    def _drop_oldest(self, count: int) -> None:
        events = self._events
        while count and type(events[0]) is AudioFrame:  # the usual case: audio at the front
            events.popleft()
            count -= 1
            self._audio -= 1
            self.dropped += 1
        if count:  # control events before the oldest audio: keep them, in place
            kept: deque[CallEvent] = deque()
            for event in events:
                if count and type(event) is AudioFrame:
                    count -= 1
                    self._audio -= 1
                    self.dropped += 1
                else:
                    kept.append(event)
            self._events = kept

    def drop_audio(self) -> int:
        count = self._audio
        if count:
            self._events = deque(event for event in self._events if type(event) is not AudioFrame)
            self._audio = 0
        return count

    def _wake_waiter(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> CallEvent | None:
        """The next event, or None if there is none yet."""
        if not self._events:
            return None
        event = self._events.popleft()
        if type(event) is AudioFrame:
            self._audio -= 1
        return event

    async def get(self) -> CallEvent:
        while not self._events:
            # A bare future rather than an asyncio.Event: this wait happens once per wire chunk.
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self.get_nowait()
        assert event is not None
        return event


class Call:
    """One Exotel stream: what the bot sees of the call, and the pipeline that carries its audio.

    Attributes available from ``on_start`` on: ``call_sid``, ``stream_sid``, ``account_sid``,
    ``from_number``, ``to_number``, ``custom_parameters``, ``stream_rate``, ``encoding``. ``log`` is a
    logger whose lines carry the call's ids; ``stats`` counts what happened.
    """

    def __init__(
        self,
        connection: ServerConnection,
        handler: Handler,
        ticker: Ticker,
        *,
        url_rate: int | None = None,
        lead: float = 0.4,
        chunk_ms: int | None = None,
        write_buffer_limit: int = 64 * 1024,
        logger: logging.Logger | None = None,
        workspace: ResamplerWorkspace | None = None,
        session_limit: float | None = DEFAULT_SESSION_LIMIT,
    ) -> None:
        self._connection = connection
        self.handler = handler
        self._ticker = ticker
        self._loop = asyncio.get_running_loop()
        self._protocol = StreamProtocol(url_rate=url_rate)
        self._lead = lead
        self._chunk_ms = chunk_ms
        self._write_buffer_limit = write_buffer_limit
        self._direct_writes = _can_write_directly(connection)
        self._session_limit = session_limit or None
        self._started_at: float | None = None  # loop time when `start` arrived
        # Shared with the server's other calls (all on this thread), or the call's own.
        self._workspace = workspace if workspace is not None else ResamplerWorkspace()
        self._ids: dict[str, str] = {}
        self.log: logging.LoggerAdapter[logging.Logger] = _CallLog(
            logger or logging.getLogger("voicebot.call"), self._ids
        )
        self.stats = CallStats()
        self.handler_rate: int = handler.sample_rate
        self._frame_samples = handler.sample_rate * handler.frame_ms // 1000
        self._queue = _InboundQueue(handler.max_queued_frames)
        self._started = asyncio.Event()
        self._ended: CallEnded | None = None
        self._closing_reason: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task_group: asyncio.TaskGroup | None = None
        self._handler_task: asyncio.Task[None] | None = None
        # Inbound pipeline, built at `start` when the stream's rate is known.
        self._jitter: JitterBuffer | None = None
        self._in_resampler: Resampler | None = None
        self._splitter = FrameSplitter(self._frame_samples)
        self._frames_delivered = 0
        # Outbound pipeline.
        self._outbound: OutboundStream | None = None
        self._out_resampler: Resampler | None = None
        # The bot's audio at the handler's rate, not yet resampled: an echo bot plays every 20 ms
        # frame, and resampling once per burst instead of once per frame costs a fifth as much.
        # Held in one reused buffer: a burst is copied once, into place, and resampled from there.
        self._held_out = np.zeros(handler.sample_rate // 10, dtype=_INT16)
        self._held_out_samples = 0
        self._held_out_base = 0  # the outbound stream's end when the held audio began
        self._held_out_end = 0  # where the held audio ends in the outbound stream, once resampled
        # Releases the held audio once the bot's current burst of plays is over (see play_nowait).
        self._release_handle: asyncio.Handle | None = None
        self._playbacks: deque[Playback] = deque()
        self._playback_numbers = itertools.count(1)
        self._marks: deque[tuple[int, str]] = deque()
        self._mark_numbers = itertools.count(1)
        self._cancelled_marks: set[str] = set()
        self._control_out: list[str] = []

    # --- what the bot reads ---------------------------------------------------------------------------

    @property
    def start_event(self) -> Start | None:
        """The ``start`` message as parsed (None before the stream starts)."""
        return self._protocol.start

    @property
    def call_sid(self) -> str:
        """Exotel's call SID (matches the Connect API's ``Call.Sid``)."""
        return self._protocol.start.call_sid if self._protocol.start else ""

    @property
    def stream_sid(self) -> str:
        """Exotel's stream SID (empty if Exotel omitted it)."""
        return self._protocol.stream_sid

    @property
    def account_sid(self) -> str:
        """The Exotel account (an account name such as ``acmecorp1``)."""
        return self._protocol.start.account_sid if self._protocol.start else ""

    @property
    def from_number(self) -> str:
        """``start.from``: the caller on inbound calls; see exotel-protocol.md §12 item 9 for outbound."""
        return self._protocol.start.from_number if self._protocol.start else ""

    @property
    def to_number(self) -> str:
        """``start.to``: the number dialled on inbound calls."""
        return self._protocol.start.to_number if self._protocol.start else ""

    @property
    def custom_parameters(self) -> dict[str, str]:
        """Custom parameters from the stream URL, as ``start`` delivered them."""
        return dict(self._protocol.start.custom_parameters) if self._protocol.start else {}

    @property
    def stream_rate(self) -> int:
        """The stream's sample rate on the wire (8000, 16000 or 24000)."""
        return self._protocol.sample_rate

    @property
    def encoding(self) -> Encoding:
        """The stream's payload encoding (PCM16, or μ-law on the ExoML path)."""
        return self._protocol.encoding

    @property
    def ended(self) -> CallEnded | None:
        """How the call ended, once it has."""
        return self._ended

    @property
    def jitter_stats(self) -> Any:
        """The inbound jitter buffer's counters (None before start)."""
        return self._jitter.stats if self._jitter is not None else None

    @property
    def pacer_stats(self) -> Any:
        """The outbound pacer's counters (None before start)."""
        return self._outbound.stats if self._outbound is not None else None

    @property
    def session_time_left(self) -> float | None:
        """Seconds until Exotel's session limit cuts the stream (``session_limit`` in the server's
        settings, 60 minutes by default), counted from ``start``; None before it or with no limit.

        A long call can wrap up in time: say goodbye before it reaches 0. A stream cut there ends
        with the reason ``session_limit``.
        """
        if self._started_at is None or self._session_limit is None:
            return None
        return max(0.0, self._started_at + self._session_limit - self._loop.time())

    @property
    def pending_playbacks(self) -> int:
        """Playbacks queued or playing that have not completed yet."""
        return len(self._playbacks)

    def __aiter__(self) -> AsyncIterator[CallEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[CallEvent]:
        queue = self._queue
        while True:
            # Frames come in bursts (one wire chunk is several frames): take what is there without
            # suspending, and wait only when the queue is empty.
            event = queue.get_nowait() or await queue.get()
            yield event
            if isinstance(event, CallEnded):
                return

    # --- what the bot does ---------------------------------------------------------------------------

    def play_nowait(self, samples: npt.ArrayLike, *, sample_rate: int | None = None) -> Playback:
        """Queue audio for the caller and return at once with its ``Playback``.

        ``samples``: mono int16, or floats in [-1, 1], at the handler's ``sample_rate`` (or at
        ``sample_rate`` if given). Consecutive calls form one continuous stream.
        """
        pcm = _as_int16(samples)
        rate = sample_rate or self.handler_rate
        outbound, resampler = self._outbound, self._out_resampler
        if outbound is None or resampler is None:
            raise LocalProtocolError("cannot play before the stream has started")
        if self._ended is not None or self._closing_reason is not None:
            # The caller is gone: nothing will be heard, and that is not the bot's error.
            gone = Playback(self, next(self._playback_numbers), 0, 0, len(pcm) / rate)
            gone._complete(0.0, interrupted=True, confirmed=False)
            return gone
        if rate == self.handler_rate:
            held, count = self._held_out_samples, pcm.shape[0]
            # Positions as _stream_position() gives them before and after this audio is held. Nothing
            # is pushed to the outbound stream while audio is held, so its end is read once per burst.
            if held:
                start = self._held_out_end
                pushed = self._held_out_base
            else:
                start = pushed = self._held_out_base = outbound.pushed_samples
            end = pushed + resampler.outputs_for(held + count)
            buffer = self._held_out
            if held + count > buffer.shape[0]:
                buffer = self._grow_held_out(held + count)
            # A copy: the bot may reuse its array once this returns.
            buffer[held : held + count] = pcm
            self._held_out_samples = held + count
            self._held_out_end = end
            if self._release_handle is None:
                self._release_handle = self._loop.call_soon(self._release_after_burst)
        else:
            self._release_held_out(self._loop.time())
            one_off = Resampler(rate, self.stream_rate, workspace=self._workspace)
            start = outbound.pushed_samples
            outbound.push(np.concatenate([one_off.process(pcm), one_off.flush()]), self._loop.time())
            end = outbound.pushed_samples
            self._wake()
        playback = Playback(self, next(self._playback_numbers), start, end, len(pcm) / rate)
        self.stats.playbacks += 1
        self._playbacks.append(playback)
        return playback

    async def play(self, samples: npt.ArrayLike, *, sample_rate: int | None = None) -> Playback:
        """Play audio and wait until the caller has heard it (or it was interrupted by ``clear``)."""
        playback = self.play_nowait(samples, sample_rate=sample_rate)
        self._flush_out_resampler(playback)
        return await playback.wait()

    def clear(self) -> list[Playback]:
        """Barge-in: stop what the caller hears now and forget everything queued.

        Sends Exotel's ``clear``, drops local queued audio and marks, resets the outbound resampler
        and pacer, and completes every pending playback as interrupted (with how much was heard).
        Late echoes of their marks are ignored. Returns the playbacks it interrupted.
        """
        if self._outbound is None or self._protocol.state is not StreamState.STREAMING:
            return []
        self._control_out.append(self._protocol.clear())
        self.stats.clears += 1
        played = self._outbound.clear(self._loop.time()).heard_until
        self._held_out_samples = 0
        if self._out_resampler is not None:
            self._out_resampler.reset()
        if len(self._cancelled_marks) > _MAX_CANCELLED_MARKS:
            self._cancelled_marks.clear()  # Exotel may never echo them; do not let the set grow
        self._cancelled_marks.update(name for _, name in self._marks)
        self._marks.clear()
        interrupted = self._interrupt_playbacks(played)
        self._wake()
        return interrupted

    def drop_queued_audio(self) -> int:
        """Forget caller audio that has arrived but not reached ``on_audio`` yet; returns the frame count.

        For half-duplex bots: after a prompt, skip what the caller said while it played.
        """
        return self._queue.drop_audio()

    async def hangup(self, timeout: float = 5.0) -> None:
        """End the call once pending audio has been heard (at most ``timeout`` seconds), closing 1000.

        Exotel ends the call when the socket closes; nothing is sent over the REST API.
        """
        if self._ended is not None or self._closing_reason is not None:
            return
        pending = [playback for playback in self._playbacks if not playback.done()]
        if pending:
            last = pending[-1]
            self._flush_out_resampler(last)
            try:
                await last.wait(timeout)
            except TimeoutError:
                self.log.warning("hangup: audio not confirmed heard after %.1fs; closing anyway", timeout)
        await self._close(CLOSE_NORMAL, "hangup")

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T | None]:
        """Run ``coro`` as part of this call (e.g. STT → LLM → TTS) without blocking the hooks.

        The task is cancelled when the call ends; if it raises, the call ends with 1011 and a log
        line, like a failing hook (and the task's result is None).
        """
        if self._task_group is None or self._ended is not None:
            coro.close()
            raise RuntimeError("call.spawn() needs a live call")
        task = self._task_group.create_task(self._guard(coro), name=name or f"call-{self.call_sid}-work")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step (the call ended at once) never awaits `coro`; close
        # it, or Python warns that it was never awaited. Closing a finished coroutine does nothing.
        task.add_done_callback(lambda _: coro.close())
        return task

    # --- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the call is over; never raises for the call's own failures."""
        call_ids.set(self._ids)  # shared by reference with every task created below
        try:
            async with asyncio.TaskGroup() as group:
                self._task_group = group
                group.create_task(self._read_loop(), name="voicebot-reader")
                self._handler_task = group.create_task(self._handler_main(), name="voicebot-handler")
        except* Exception as errors:
            for error in errors.exceptions:
                self.log.error("call pipeline failed", exc_info=error)
            await self._close(CLOSE_INTERNAL_ERROR, "error")
        finally:
            self._ticker.discard(self)
            self._end("error")
            self._interrupt_playbacks(self._played_samples())

    async def _guard(self, coro: Coroutine[Any, Any, T]) -> T | None:
        try:
            return await coro
        except Exception:
            self.log.exception("spawned task failed; ending the call with 1011")
            await self._fail()
            return None

    async def _handler_main(self) -> None:
        await self._started.wait()
        if self._ended is None:
            try:
                await self.handler.run(self)
            except Exception:
                self.log.exception("handler failed; ending the call with 1011")
                await self._fail()
                return
        await self._close(CLOSE_NORMAL, "hangup")
        for task in list(self._tasks):
            task.cancel()

    async def _fail(self) -> None:
        self._end("error")
        await self._close(CLOSE_INTERNAL_ERROR, "error")
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    async def _close(self, code: int, reason: str) -> None:
        if self._closing_reason is None:
            self._closing_reason = reason
        if self._connection.state in (State.OPEN, State.CONNECTING):
            await self._connection.close(code, reason)

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Close this call with 1001 (the server is going away); the handler sees ``shutdown``."""
        self._closing_reason = self._closing_reason or reason
        await self._close(CLOSE_GOING_AWAY, reason)

    def _end(self, reason: str) -> None:
        """Deliver ``CallEnded`` once, flushing the audio still held inbound, and complete pending
        playbacks as interrupted: nothing more will be heard, and a hook awaiting one must return so
        that ``on_stop`` runs now, not when the handler's grace period runs out."""
        if self._ended is not None:
            return
        self._flush_inbound()
        self._ended = CallEnded(reason)
        if self._release_handle is not None:
            self._release_handle.cancel()
            self._release_handle = None
        self._queue.put_control(self._ended)
        self._started.set()
        self._interrupt_playbacks(self._played_samples())

    # --- reader ---------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        errors_logged = 0
        try:
            while True:
                text = await self._connection.recv()
                try:
                    event = self._protocol.receive(text)
                except RemoteProtocolError as exc:
                    self.stats.protocol_errors += 1
                    if errors_logged < _LOGGED_PROTOCOL_ERRORS or self.stats.protocol_errors % 100 == 0:
                        errors_logged += 1
                        self.log.warning(
                            "ignored a bad message (%d so far): %s", self.stats.protocol_errors, exc
                        )
                    continue
                self._on_event(event)
        except ConnectionClosed:
            self._end(self._closing_reason or self._remote_end_reason("socket_closed"))
        finally:
            if self._handler_task is not None and not self._handler_task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HANDLER_GRACE_SECONDS):
                        await asyncio.shield(self._handler_task)
                if not self._handler_task.done():
                    self.log.warning(
                        "handler still running %.0fs after the call ended; cancelling", HANDLER_GRACE_SECONDS
                    )
                    self._handler_task.cancel()

    def _on_event(self, event: object) -> None:
        if isinstance(event, Media):
            self._on_media(event)
        elif isinstance(event, Dtmf):
            self.stats.dtmf += 1
            self._queue.put_control(event)
        elif isinstance(event, Mark):
            self._on_mark(event.name)
        elif isinstance(event, Start):
            self._on_start(event)
        elif isinstance(event, Stop):
            self._end(self._remote_end_reason(event.reason or "stopped"))
        elif isinstance(event, Unknown):
            self.stats.unknown_events += 1
            self.log.info("ignored unknown event %r", event.event)
        elif isinstance(event, Clear | Connected):
            pass

    def _on_start(self, start: Start) -> None:
        self._started_at = self._loop.time()
        self._ids.update(call_sid=start.call_sid, stream_sid=start.stream_sid)
        for warning in start.warnings:
            self.stats.warnings.append(warning)
            self.log.warning("%s", warning)
        rate = start.sample_rate
        self._jitter = JitterBuffer(rate, self.handler.jitter)
        self._in_resampler = Resampler(rate, self.handler_rate, workspace=self._workspace)
        self._out_resampler = Resampler(self.handler_rate, rate, workspace=self._workspace)
        self._outbound = OutboundStream(rate, start.encoding, lead=self._lead, chunk_ms=self._chunk_ms)
        self.log.info(
            "call started: %s from=%s to=%s rate=%d (%s) encoding=%s",
            start.call_sid, start.from_number, start.to_number, rate, start.rate_source, start.encoding.value,
        )  # fmt: skip
        self._started.set()

    def _on_media(self, media: Media) -> None:
        if self._jitter is None or self._ended is not None:
            return
        now = self._loop.time()
        samples = decode(media.payload, self._protocol.encoding)
        self._jitter.push(
            samples, sequence_number=media.sequence_number, timestamp_ms=media.timestamp, now=now
        )
        self._deliver(self._jitter.pop_audio(now))
        due = self._jitter.next_due()
        if due is not None:
            self._ticker.schedule(self, due)

    def _remote_end_reason(self, reason: str) -> str:
        """``reason`` for an end that came from Exotel, or ``session_limit`` if it cut the stream there."""
        if self._started_at is None:
            return reason
        streamed = self._loop.time() - self._started_at
        ended = remote_end_reason(reason, streamed, self._session_limit)
        if ended != reason:
            self.log.warning(
                "stream cut at Exotel's session limit (%.0f s) after %.0f s; Exotel's reason: %s",
                self._session_limit, streamed, reason,
            )  # fmt: skip
        return ended

    def _deliver(self, audio: Samples | None) -> None:
        if audio is None or self._in_resampler is None:
            return
        self._deliver_at_handler_rate(self._in_resampler.process(audio))

    def _deliver_at_handler_rate(self, audio: Samples) -> None:
        pieces = self._splitter.push(audio)
        if not pieces:
            return
        rate, first = self.handler_rate, self._frames_delivered
        self._queue.put_frames([_audio_frame(samples, rate, first + k) for k, samples in enumerate(pieces)])
        self._frames_delivered = first + len(pieces)
        self.stats.frames_in = self._frames_delivered
        self.stats.frames_dropped = self._queue.dropped

    def _flush_inbound(self) -> None:
        if self._jitter is None or self._in_resampler is None:
            return
        frames = self._jitter.flush()
        if frames:
            self._deliver(np.concatenate(frames))
        self._deliver_at_handler_rate(self._in_resampler.flush())
        last = self._splitter.flush(pad=True)
        if last is not None:
            self._deliver_at_handler_rate(last)

    def _on_mark(self, name: str) -> None:
        if name in self._cancelled_marks:
            self._cancelled_marks.discard(name)
            self.stats.late_marks_ignored += 1
            return
        position = None
        while self._marks:
            position_, name_ = self._marks.popleft()
            if name_ == name:
                position = position_
                break
        if position is None:
            self.log.info("ignored echo of unknown mark %r", name)
            return
        self.stats.marks_echoed += 1
        while self._playbacks and self._playbacks[0].end <= position:
            playback = self._playbacks.popleft()
            playback._complete(playback.duration, interrupted=False, confirmed=True)

    # --- writer (driven by the shared ticker) -------------------------------------------------------

    def _wake(self) -> None:
        self._ticker.schedule(self, self._loop.time())

    async def tick(self, now: float) -> float | None:
        """Send what is due at ``now`` and release due inbound frames; return the next deadline."""
        if self._ended is not None and self._closing_reason is not None:
            return None
        if self._jitter is not None and self._ended is None:
            self._deliver(self._jitter.pop_audio(now))
        next_deadline = self._jitter.next_due() if self._jitter is not None else None
        if self._outbound is None or self._protocol.state is not StreamState.STREAMING:
            return next_deadline
        if self._connection.state is not State.OPEN:
            return None
        if not self._socket_has_room():
            # The peer is not reading: keep the audio here and look again shortly; the keepalive
            # ping times a dead peer out.
            self.stats.send_stalls += 1
            return _earliest(next_deadline, now + 0.02)
        self._release_held_out(now)
        try:
            while self._control_out:
                await self._connection.send(self._control_out.pop(0))
            for item in self._outbound.poll(now):
                if isinstance(item, OutboundChunk):
                    payload = encode(item.samples, self._protocol.encoding)
                    text = self._protocol.media(payload)
                    if self._direct_writes:
                        self._write_now(text)
                    else:
                        await self._connection.send(text)
                    self.stats.chunks_out += 1
                    self.stats.bytes_out += len(payload)
                elif isinstance(item, OutboundMark):
                    await self._connection.send(self._protocol.mark(item.name))
                    self.stats.marks_sent += 1
        except (ConnectionClosed, LocalProtocolError, InvalidState):
            return None
        self._retire_played(now)
        return _earliest(next_deadline, self._outbound.next_wakeup(now))

    def _write_now(self, text: str) -> None:
        """Send ``text`` as one text frame, the bytes ``connection.send`` would write, without its
        per-message context manager and drain (a third of a media send's CPU). What they guard is
        checked once per tick instead: the connection is open and its write buffer has room."""
        protocol = self._connection.protocol
        protocol.send_text(text.encode())
        transport = self._connection.transport
        for data in protocol.data_to_send():
            transport.write(data)

    def _retire_played(self, now: float) -> None:
        """Complete playbacks nobody awaits once the model says they have played, oldest first."""
        playbacks = self._playbacks
        if not playbacks or playbacks[0].awaited or self._outbound is None:
            return
        played = self._outbound.played_samples(now)
        while playbacks and not playbacks[0].awaited and playbacks[0].end <= played:
            playback = playbacks.popleft()
            playback._complete(playback.duration, interrupted=False, confirmed=False)

    def _socket_has_room(self) -> bool:
        transport = self._connection.transport
        return transport is not None and transport.get_write_buffer_size() <= self._write_buffer_limit

    # --- outbound bookkeeping --------------------------------------------------------------------------

    def _stream_position(self) -> int:
        """Where the next sample the bot plays will sit in the outbound stream (stream rate).

        Held audio counts as the resampler will convert it: ``process`` returns every output sample
        its input allows, so the count is known before the work is done.
        """
        assert self._outbound is not None and self._out_resampler is not None
        return self._outbound.pushed_samples + self._out_resampler.outputs_for(self._held_out_samples)

    def _release_held_out(self, now: float) -> None:
        """Resample the audio held since the last tick and push it into the outbound stream."""
        held = self._held_out_samples
        if not held or self._outbound is None or self._out_resampler is None:
            return
        expected_end = self._stream_position()
        self._held_out_samples = 0
        # process() copies what it reads, so the buffer is free for the next burst when it returns.
        self._outbound.push(self._out_resampler.process(self._held_out[:held]), now)
        assert self._outbound.pushed_samples == expected_end, "playback positions went wrong"
        if self._held_out.shape[0] > int(_HELD_OUT_KEPT * self.handler_rate):
            self._held_out = np.zeros(self.handler_rate // 10, dtype=_INT16)  # after a long prompt

    def _grow_held_out(self, needed: int) -> Samples:
        grown = np.zeros(max(needed, 2 * self._held_out.shape[0]), dtype=_INT16)
        grown[: self._held_out_samples] = self._held_out[: self._held_out_samples]
        self._held_out = grown
        return grown

    def _release_after_burst(self) -> None:
        """Resample what the bot played since the last release and let the pacer decide when to send.

        Runs once per burst of plays (an echo bot plays five frames per wire chunk), after the
        burst. The ticker is woken only for when something may go: a real-time producer's burst
        usually just adds to a pending chunk, and then no tick is spent on it.
        """
        self._release_handle = None
        outbound = self._outbound
        if outbound is None or self._ended is not None:
            return
        now = self._loop.time()
        self._release_held_out(now)
        due = outbound.settle(now)
        if due is not None:
            self._ticker.schedule(self, due)

    def _flush_out_resampler(self, playback: Playback) -> None:
        """Push the resampler's held tail so that ``playback`` is complete in the outbound stream."""
        if self._out_resampler is None or self._outbound is None or playback.done():
            return
        self._release_held_out(self._loop.time())
        tail = self._out_resampler.flush()
        if len(tail):
            self._outbound.push(tail, self._loop.time())
            if playback is self._playbacks[-1]:
                playback.end = self._outbound.pushed_samples

    def _ensure_mark_after(self, playback: Playback) -> None:
        """Make sure a mark follows ``playback``'s last sample, so its end will be confirmed."""
        if playback.done() or self._outbound is None:
            return
        if self._marks and self._marks[-1][0] >= playback.end:
            return
        self._release_held_out(self._loop.time())
        name = f"vb-{next(self._mark_numbers)}"
        self._outbound.add_mark(name)
        self._marks.append((self._outbound.pushed_samples, name))
        self._wake()

    def _played_samples(self) -> int:
        if self._outbound is None:
            return 0
        return self._outbound.played_samples(self._loop.time())

    def _interrupt_playbacks(self, played: int) -> list[Playback]:
        interrupted: list[Playback] = []
        rate = self.stream_rate
        while self._playbacks:
            playback = self._playbacks.popleft()
            heard_samples = min(max(played - playback.start, 0), playback.end - playback.start)
            playback._complete(heard_samples / rate, interrupted=True, confirmed=False)
            self.stats.playbacks_interrupted += 1
            interrupted.append(playback)
        return interrupted

    def __repr__(self) -> str:
        return f"<Call {self.call_sid or '(not started)'} rate={self.stream_rate} {self.encoding.value}>"


def _can_write_directly(connection: ServerConnection) -> bool:
    """Whether media can be written through the connection's ``protocol`` (websockets' documented
    sans-I/O ``Protocol``: ``send_text``, ``data_to_send``) and its transport; the attribute itself is
    not in websockets' reference, so without it every message goes through ``send``."""
    protocol = getattr(connection, "protocol", None)
    return isinstance(protocol, Protocol) and hasattr(connection, "transport")


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _as_int16(samples: npt.ArrayLike) -> Samples:
    if type(samples) is np.ndarray and samples.dtype is _INT16 and samples.ndim == 1:
        return samples
    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(f"play() takes mono audio as a 1-D array, got shape {array.shape}")
    if array.dtype == np.int16:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return to_int16(array * 32767.0)
    if np.issubdtype(array.dtype, np.integer):
        return to_int16(array)
    raise ValueError(f"play() takes int16 or float samples, got {array.dtype}")
