"""The load bench's Exotel side: hundreds of simulated calls from one lean process.

``FakeExotel`` validates and records everything a bot sends, which is right for tests and too heavy
for hundreds of calls on a two-core machine where the client's CPU competes with the server's. This
client speaks the same protocol with as little work per message as it can:

* WebSocket framing is ``websockets``' sans-I/O ``ClientProtocol`` driven straight from an
  ``asyncio.Protocol`` (no task, queue or future per message, no per-connection reader task);
* caller audio is one pre-encoded base64 payload (quiet noise), plus one with a click in it, and each
  ``media`` message is one string format with the sequence number, chunk and timestamp filled in;
* one sender task drives every call from a heap of absolute deadlines: chunk ``k`` of a call is due at
  ``start + k × 100 ms``, so late wake-ups never accumulate into drift;
* bot messages are recognised by their prefix; a media payload's length is read from the position of
  its quotes, and only marks (rare) are parsed as JSON.

Messages follow exotel-protocol.md §13.2: ``connected``, ``start`` (snake_case, string scalars, 32-hex
SIDs, ``media_format.sample_rate`` ``"8000"``), ``media`` every 100 ms (8 kHz PCM16, 1 600 bytes,
``sequence_number`` from ``"2"``, ``chunk`` from ``"1"``, ``timestamp`` in ms), ``mark`` echoes once
the audio sent before the mark has played on a real-time playout clock, and ``stop`` (``callended``).

Everything is stamped with ``time.monotonic()`` (``CLOCK_MONOTONIC``, shared with the server process
on the same machine). :func:`measure` turns the records of one window into figures.
"""

from __future__ import annotations

import asyncio
import binascii
import heapq
import itertools
import json
import secrets
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

RATE: Final = 8000
CHUNK_SECONDS: Final = 0.1
CHUNK_SAMPLES: Final = 800
#: A click chunk carries a 20 ms 1 kHz burst starting this many samples in (50 ms).
CLICK_OFFSET: Final = 400
CLICK_SAMPLES: Final = 160
CLICK_AMPLITUDE: Final = 12000
#: The echoed click is found as the first sample beyond this (the quiet noise stays below 200).
CLICK_THRESHOLD: Final = 3000
#: Every tenth chunk of a call is a click chunk (calls are phased so clicks spread over the second).
CLICK_EVERY: Final = 10
#: A click whose echo has not come back after this long is counted as lost.
CLICK_TIMEOUT: Final = 2.0
#: A silence in the bot's audio shorter than this is an underrun; longer ones are pauses.
MAX_UNDERRUN_GAP: Final = 1.0
#: Gaps shorter than this are clock noise, not underruns.
MIN_UNDERRUN_GAP: Final = 0.001
#: The sender sends everything due within this of now in one pass.
SEND_HORIZON: Final = 0.0005
#: ... and never sleeps longer than this, so a newly started call is never made to wait.
MAX_SENDER_SLEEP: Final = 0.01
#: The probe handler's datagram header (see bench/latency_probe.py).
PROBE_HEADER: Final = struct.Struct("<II")

_MEDIA_PREFIX: Final = b'{"event":"media"'
_MARK_PREFIX: Final = b'{"event":"mark"'
_CLEAR_PREFIX: Final = b'{"event":"clear"'
_PAYLOAD_KEY: Final = b'"payload":"'

Floats = npt.NDArray[np.float64]


def _payload(samples: npt.NDArray[np.int16]) -> str:
    return binascii.b2a_base64(samples.astype("<i2").tobytes(), newline=False).decode("ascii")


@dataclass(frozen=True)
class CallerAudio:
    """The two pre-encoded 100 ms payloads every call sends: quiet noise, and the same with a click."""

    quiet: str
    click: str

    @classmethod
    def make(cls, seed: int = 1) -> CallerAudio:
        """Low-level noise (what a quiet line carries) and a copy with a 1 kHz burst at 50 ms."""
        rng = np.random.default_rng(seed)
        noise = np.clip(rng.normal(0, 40, CHUNK_SAMPLES), -150, 150).astype(np.int16)
        click = noise.copy()
        t = np.arange(CLICK_SAMPLES) / RATE
        burst = CLICK_AMPLITUDE * np.sin(2 * np.pi * 1000 * t) * np.hanning(CLICK_SAMPLES) ** 0.25
        click[CLICK_OFFSET : CLICK_OFFSET + CLICK_SAMPLES] = burst.astype(np.int16)
        return cls(_payload(noise), _payload(click))


class LoadCall(asyncio.Protocol):
    """One simulated Exotel call on one TCP connection."""

    def __init__(self, run: LoadRun, number: int) -> None:
        self.run = run
        self.number = number
        self.click_phase = number % CLICK_EVERY
        self.stream_sid = secrets.token_hex(16)
        self.call_sid = secrets.token_hex(16)
        self.transport: asyncio.Transport | None = None
        self.protocol = ClientProtocol(parse_uri(run.url), max_size=1 << 22)
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.started_at = 0.0  # when ``start`` was sent: chunk k is due at started_at + k × 100 ms
        self.closed_at = float("inf")
        self.streaming = False
        self.error: str | None = None
        self._sequence = itertools.count(1)
        self._media_head = ""
        self.chunks_sent = 0
        self.send_times = array("d")
        # Bot audio as received: arrival time and samples per media message, and the playout clock.
        self.media_arrivals = array("d")
        self.media_samples = array("i")
        self.play_end = 0.0
        self.marks_echoed = 0
        self.clears = 0
        self.other_messages = 0
        # Echo of the click: (sent at, captured at) while one is outstanding.
        self._click: tuple[float, float] | None = None
        self.click_delays = array("d")  # click chunk sent → echoed media message received
        self.click_heard = array("d")  # click captured → click played out by the playout model
        self.clicks_sent_at = array("d")
        self.clicks_lost = 0
        # Baseline only: a 1:1 echo, so the n-th media received answers the n-th sent.
        self._unanswered: deque[float] | None = deque() if run.fifo_rtt else None
        self.round_trips = array("d")
        self.round_trip_sent_at = array("d")

    # --- transport ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Feed the WebSocket parser and handle what it produced."""
        protocol = self.protocol
        protocol.receive_data(data)
        now = time.monotonic()
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self._on_message(bytes(event.data), now)
            elif isinstance(event, Response):
                self._on_handshake()
        self._flush()

    def eof_received(self) -> bool | None:
        """The server closed its side: let the parser know, then close ours."""
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Record when the call ended."""
        self.closed_at = time.monotonic()
        self.streaming = False
        if not self.opened.done():
            self.error = self.error or f"connection lost during the handshake ({exc})"
            self.opened.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.protocol.state is State.CLOSED and not transport.is_closing():
            transport.close()

    def _send(self, text: str) -> None:
        self.protocol.send_text(text.encode("ascii"))
        self._flush()

    # --- Exotel's side of the stream ------------------------------------------------------------------

    def _on_handshake(self) -> None:
        if self.protocol.state is not State.OPEN:
            self.error = f"upgrade refused: {self.protocol.handshake_exc}"
            if not self.opened.done():
                self.opened.set_result(False)
            return
        sid = self.stream_sid
        self._send('{"event":"connected"}')
        start = {
            "event": "start",
            "sequence_number": str(next(self._sequence)),
            "stream_sid": sid,
            "start": {
                "stream_sid": sid,
                "call_sid": self.call_sid,
                "account_sid": "benchload",
                "from": "+919800000000",
                "to": "+918000000000",
                "custom_parameters": {"bench_call": str(self.number), "bench_udp": self.run.probe_address},
                "media_format": {"encoding": "audio/x-raw", "sample_rate": str(RATE), "bit_rate": "16"},
            },
        }
        self._send(json.dumps(start, separators=(",", ":")))
        self.started_at = time.monotonic()
        self._media_head = '{"event":"media","sequence_number":"%d","stream_sid":"' + sid
        self._media_head += '","media":{"chunk":"%d","timestamp":"%d","payload":"'
        self.streaming = True
        self.run.schedule(self)
        self.opened.set_result(True)

    def send_chunk(self, click: bool) -> None:
        """Send the next 100 ms of caller audio (called by the sender when it is due)."""
        chunk = self.chunks_sent + 1
        audio = self.run.audio
        head = self._media_head % (next(self._sequence), chunk, chunk * 100)
        text = head + (audio.click if click else audio.quiet) + '"}}'
        now = time.monotonic()
        self._send(text)
        self.chunks_sent = chunk
        self.send_times.append(now)
        if self._unanswered is not None:
            self._unanswered.append(now)
        if click:
            if self._click is not None:
                self.clicks_lost += 1
            captured = self.started_at + (chunk - 1) * CHUNK_SECONDS + CLICK_OFFSET / RATE
            self._click = (now, captured)
            self.clicks_sent_at.append(now)

    def send_stop(self) -> None:
        """Hang up as Exotel does when the caller hangs up: ``stop`` with reason ``callended``."""
        if not self.streaming:
            return
        self.streaming = False
        self._send(
            f'{{"event":"stop","sequence_number":"{next(self._sequence)}","stream_sid":"{self.stream_sid}",'
            f'"stop":{{"call_sid":"{self.call_sid}","account_sid":"benchload","reason":"callended"}}}}'
        )

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    # --- the bot's messages ---------------------------------------------------------------------------

    def _on_message(self, data: bytes, now: float) -> None:
        if data.startswith(_MEDIA_PREFIX):
            self._on_media(data, now)
        elif data.startswith(_MARK_PREFIX):
            name = json.loads(data)["mark"]["name"]
            delay = self.play_end - now
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._echo_mark, name)
            else:
                self._echo_mark(name)
        elif data.startswith(_CLEAR_PREFIX):
            self.clears += 1
            self.play_end = min(self.play_end, now)
        else:
            self.other_messages += 1

    def _on_media(self, data: bytes, now: float) -> None:
        begin = data.find(_PAYLOAD_KEY) + len(_PAYLOAD_KEY)
        end = data.find(b'"', begin)
        padding = (data[end - 1] == 61) + (data[end - 2] == 61)  # '='
        samples = ((end - begin) // 4 * 3 - padding) // 2
        play_start = self.play_end if self.play_end > now else now
        self.play_end = play_start + samples / RATE
        self.media_arrivals.append(now)
        self.media_samples.append(samples)
        if self._unanswered:
            sent = self._unanswered.popleft()
            self.round_trips.append(now - sent)
            self.round_trip_sent_at.append(sent)
        if self._click is not None:
            self._look_for_click(data[begin:end], now, play_start)

    def _look_for_click(self, payload: bytes, now: float, play_start: float) -> None:
        assert self._click is not None
        sent, captured = self._click
        if now - sent > CLICK_TIMEOUT:
            self._click = None
            self.clicks_lost += 1
            return
        pcm = np.frombuffer(binascii.a2b_base64(payload), dtype="<i2")
        loud = np.flatnonzero((pcm > CLICK_THRESHOLD) | (pcm < -CLICK_THRESHOLD))
        if loud.size:
            self._click = None
            self.click_delays.append(now - sent)
            self.click_heard.append(play_start + loud[0] / RATE - captured)

    @property
    def click_outstanding(self) -> bool:
        """Whether a click was sent and its echo has not been seen yet."""
        return self._click is not None

    def _echo_mark(self, name: str) -> None:
        if self.protocol.state is not State.OPEN:
            return
        self.marks_echoed += 1
        self._send(
            f'{{"event":"mark","sequence_number":"{next(self._sequence)}","stream_sid":"{self.stream_sid}",'
            f'"mark":{{"name":{json.dumps(name)}}}}}'
        )


def _factory(call: LoadCall) -> Callable[[], LoadCall]:
    return lambda: call


class _ProbeReceiver(asyncio.DatagramProtocol):
    """Keeps the probe handler's datagrams as they come; they are parsed after the run."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.datagrams = datagrams

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        """Store one report."""
        self.datagrams.append(data)


class LoadRun:
    """Many ``LoadCall``s against one server, sent by one deadline-driven task."""

    def __init__(self, url: str, *, fifo_rtt: bool = False) -> None:
        self.url = url
        self.fifo_rtt = fifo_rtt
        self.audio = CallerAudio.make()
        self.calls: list[LoadCall] = []
        self.clicks_on = False
        self.probe_address = ""
        self.probe_datagrams: list[bytes] = []
        self._heap: list[tuple[float, int, LoadCall]] = []
        self._sender: asyncio.Task[None] | None = None
        self._udp: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> LoadRun:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ProbeReceiver(self.probe_datagrams), local_addr=("127.0.0.1", 0)
        )
        self._udp = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        host, port = transport.get_extra_info("sockname")[:2]
        self.probe_address = f"{host}:{port}"
        self._sender = asyncio.create_task(self._send_loop(), name="load-sender")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for call in self.calls:
            call.abort()
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()

    def schedule(self, call: LoadCall) -> None:
        """Start sending ``call``'s audio: its first chunk is due 100 ms after ``start``."""
        heapq.heappush(self._heap, (call.started_at + CHUNK_SECONDS, call.number, call))

    async def open_calls(self, count: int, ramp: float, host: str, port: int, timeout: float = 30.0) -> int:
        """Open ``count`` more calls spread evenly over ``ramp`` seconds; returns how many opened."""
        loop = asyncio.get_running_loop()
        first = len(self.calls)
        began = time.monotonic()
        attempts: list[asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]] = []
        for offset in range(count):
            call = LoadCall(self, first + offset)
            self.calls.append(call)
            delay = began + ramp * offset / max(count, 1) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            attempts.append(asyncio.create_task(loop.create_connection(_factory(call), host, port)))
        results = await asyncio.gather(*attempts, return_exceptions=True)
        new_calls = self.calls[first:]
        for call, result in zip(new_calls, results, strict=True):
            if isinstance(result, BaseException):
                call.error = f"connect failed: {result}"
                call.opened.set_result(False)
        await asyncio.wait([call.opened for call in new_calls], timeout=timeout)
        for call in new_calls:
            if not call.opened.done():
                call.error = call.error or f"no upgrade after {timeout}s"
                call.opened.set_result(False)
                call.abort()
        return sum(1 for call in new_calls if call.opened.result())

    async def stop_calls(self, timeout: float = 10.0) -> None:
        """Send ``stop`` on every call and wait for the server to close them (then drop the rest)."""
        self._heap.clear()
        for call in self.calls:
            call.send_stop()
        pending = [call.closed for call in self.calls if not call.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for call in self.calls:
            if not call.closed.done():
                call.abort()

    async def _send_loop(self) -> None:
        heap = self._heap
        while True:
            horizon = time.monotonic() + SEND_HORIZON
            while heap and heap[0][0] <= horizon:
                _, number, call = heapq.heappop(heap)
                if not call.streaming:
                    continue
                chunk = call.chunks_sent + 1
                call.send_chunk(self.clicks_on and chunk % CLICK_EVERY == call.click_phase)
                heapq.heappush(heap, (call.started_at + (chunk + 1) * CHUNK_SECONDS, number, call))
            wait = heap[0][0] - time.monotonic() if heap else MAX_SENDER_SLEEP
            await asyncio.sleep(min(max(wait, 0.0), MAX_SENDER_SLEEP))


# ------------------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Spread:
    """Percentiles of a sample, in seconds (NaN when there is no sample)."""

    count: int
    low: float
    """The 1st percentile."""
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: npt.ArrayLike) -> Spread:
        """The spread of ``values``."""
        data = np.asarray(values, dtype=np.float64)
        if data.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        low, p50, p99 = np.percentile(data, [1, 50, 99])
        return cls(int(data.size), float(low), float(p50), float(p99), float(data.max()))

    def ms(self) -> str:
        """``p50/p99/max`` in milliseconds."""
        if not self.count:
            return "-"
        return f"{self.p50 * 1e3:.1f}/{self.p99 * 1e3:.1f}/{self.max * 1e3:.1f}"


@dataclass(frozen=True)
class LoadFigures:
    """What the client saw in one measurement window."""

    calls: int
    calls_failed: int
    calls_ended_early: int
    call_seconds: float
    send_lateness: Spread
    """Each chunk's send time minus its deadline (the client's own timeliness)."""
    outbound_chunks: int
    outbound_chunk_ms: float
    """The most common duration of the bot's media messages."""
    outbound_jitter: Spread
    """|inter-arrival − duration of the previous chunk| for consecutive bot media messages."""
    outbound_late: Spread
    """inter-arrival − duration of the previous chunk (positive: later than its audio needed)."""
    queue_margin: Spread
    """Audio still queued at Exotel when each bot chunk arrived (0 when it had run dry); ``low`` is
    the 1st percentile: how close the stream came to an underrun."""
    underruns: int
    underrun_seconds: float
    marks_echoed: int
    round_trip: Spread
    """Baseline only: media sent → its echo received (1:1)."""
    click_delay: Spread
    """A click chunk sent → the bot's media message carrying its echo received."""
    click_heard: Spread
    """The click captured (stream time) → its echo played by Exotel's playout clock."""
    clicks_sent: int
    clicks_lost: int
    probe_latency: Spread
    """Probe handler only: chunk sent → ``on_audio`` entered for each frame that chunk completed."""
    probe_frames_expected: int
    probe_errors: int
    """Stamps that map to a chunk sent after them (or a negative latency): must be 0."""


def _overlap(start: float, end: float, lo: float, hi: float) -> float:
    return max(0.0, min(end, hi) - max(start, lo))


def measure(
    run: LoadRun, lo: float, hi: float, frames_after_chunk: npt.NDArray[np.int64] | None
) -> LoadFigures:
    """Figures for the window ``[lo, hi)`` (monotonic seconds).

    ``frames_after_chunk[k]`` is how many handler frames the server can have delivered once it has
    received ``k`` chunks (from the resampler's exact output count); it maps each probe frame to the
    chunk whose arrival completed it.
    """
    live = [call for call in run.calls if call.opened.done() and call.opened.result()]
    call_seconds = sum(_overlap(call.started_at, call.closed_at, lo, hi) for call in live)
    ended_early = sum(1 for call in live if call.closed_at < hi)
    lateness: list[Floats] = []
    jitter: list[Floats] = []
    underruns: list[float] = []
    margins: list[float] = []
    durations: list[npt.NDArray[np.int32]] = []
    chunks = 0
    for call in live:
        sent = np.frombuffer(call.send_times, dtype=np.float64)
        due = call.started_at + np.arange(1, sent.size + 1) * CHUNK_SECONDS
        in_window = (sent >= lo) & (sent < hi)
        lateness.append(sent[in_window] - due[in_window])
        arrivals = np.frombuffer(call.media_arrivals, dtype=np.float64)
        samples = np.frombuffer(call.media_samples, dtype=np.int32)
        if arrivals.size:
            seconds = samples / RATE
            gaps = np.diff(arrivals) - seconds[:-1]
            inside = (arrivals[1:] >= lo) & (arrivals[1:] < hi)
            jitter.append(gaps[inside])
            # Replay the playout clock: a chunk that arrives after the queue ran dry leaves a gap.
            play_end = arrivals[0] + seconds[0]
            for at, length in zip(arrivals[1:].tolist(), seconds[1:].tolist(), strict=True):
                gap = at - play_end
                if lo <= at < hi:
                    margins.append(max(-gap, 0.0))
                if gap > 0:
                    if MIN_UNDERRUN_GAP < gap < MAX_UNDERRUN_GAP and lo <= at < hi:
                        underruns.append(gap)
                    play_end = at + length
                else:
                    play_end += length
            window_arrivals = (arrivals >= lo) & (arrivals < hi)
            chunks += int(window_arrivals.sum())
            durations.append(samples[window_arrivals])
    gaps_all = np.concatenate(jitter) if jitter else np.zeros(0)
    all_durations = np.concatenate(durations) if durations else np.zeros(0, dtype=np.int32)
    chunk_ms = float(np.bincount(all_durations).argmax()) / RATE * 1e3 if all_durations.size else float("nan")
    underrun_gaps = np.asarray(underruns, dtype=np.float64)

    def windowed(values: array[float], stamps: array[float]) -> Floats:
        data = np.frombuffer(values, dtype=np.float64)
        at = np.frombuffer(stamps, dtype=np.float64)
        return data[(at >= lo) & (at < hi)]

    round_trips = [windowed(call.round_trips, call.round_trip_sent_at) for call in live]
    clicks_in_window = [
        (
            np.frombuffer(call.click_delays, dtype=np.float64),
            np.frombuffer(call.click_heard, dtype=np.float64),
        )
        for call in live
    ]
    # Clicks are sent only during the window, so every recorded click belongs to it.
    click_delays = np.concatenate([pair[0] for pair in clicks_in_window]) if clicks_in_window else np.zeros(0)
    click_heard = np.concatenate([pair[1] for pair in clicks_in_window]) if clicks_in_window else np.zeros(0)
    clicks_lost = sum(call.clicks_lost + call.click_outstanding for call in live)

    probe, expected, errors = _probe_latency(run, lo, hi, frames_after_chunk)
    return LoadFigures(
        calls=len(live),
        calls_failed=len(run.calls) - len(live),
        calls_ended_early=ended_early,
        call_seconds=call_seconds,
        send_lateness=Spread.of(np.concatenate(lateness) if lateness else []),
        outbound_chunks=chunks,
        outbound_chunk_ms=chunk_ms,
        outbound_jitter=Spread.of(np.abs(gaps_all)),
        outbound_late=Spread.of(gaps_all),
        queue_margin=Spread.of(margins),
        underruns=int(underrun_gaps.size),
        underrun_seconds=float(underrun_gaps.sum()),
        marks_echoed=sum(call.marks_echoed for call in live),
        round_trip=Spread.of(np.concatenate(round_trips) if round_trips else []),
        click_delay=Spread.of(click_delays),
        click_heard=Spread.of(click_heard),
        clicks_sent=sum(len(call.clicks_sent_at) for call in live),
        clicks_lost=clicks_lost,
        probe_latency=probe,
        probe_frames_expected=expected,
        probe_errors=errors,
    )


def _probe_latency(
    run: LoadRun, lo: float, hi: float, frames_after_chunk: npt.NDArray[np.int64] | None
) -> tuple[Spread, int, int]:
    """Join the probe handler's (frame, time) reports with the send times of the chunks."""
    if frames_after_chunk is None or not run.probe_datagrams:
        return Spread.of([]), 0, 0
    per_call: dict[int, list[Floats]] = {}
    for datagram in run.probe_datagrams:
        number, count = PROBE_HEADER.unpack_from(datagram)
        pairs = np.frombuffer(datagram, dtype=np.float64, offset=PROBE_HEADER.size, count=2 * count)
        per_call.setdefault(number, []).append(pairs.reshape(-1, 2))
    latencies: list[Floats] = []
    errors = 0
    expected = 0
    for call in run.calls:
        reports = per_call.get(call.number)
        sent = np.frombuffer(call.send_times, dtype=np.float64)
        in_window = int(((sent >= lo) & (sent < hi)).sum())
        expected += in_window
        if not reports:
            continue
        pairs = np.concatenate(reports)
        frames = pairs[:, 0].astype(np.int64)
        handled = pairs[:, 1]
        chunk = np.searchsorted(frames_after_chunk, frames, side="right")  # 1-based chunk number
        # Frames past the last chunk sent come from the flush at the end of the call: no latency.
        known = chunk <= sent.size
        chunk, handled = chunk[known], handled[known]
        arrived = sent[chunk - 1]
        keep = (arrived >= lo) & (arrived < hi)
        latency = handled[keep] - arrived[keep]
        errors += int((latency < 0).sum())
        latencies.append(latency)
    # `expected` counted chunks; report it in frames, as the latencies are.
    frames_per_chunk = float(frames_after_chunk[-1]) / (frames_after_chunk.size - 1)
    return (
        Spread.of(np.concatenate(latencies) if latencies else []),
        round(expected * frames_per_chunk),
        errors,
    )
