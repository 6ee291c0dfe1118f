"""A bench-only bot: ``handlers.echo.EchoBot`` that also reports when each ``on_audio`` frame arrived.

    python -m voicebot serve --handler bench/latency_probe.py:LatencyProbeEchoBot ...

It behaves exactly like the echo bot (greeting, echo, ``#`` hangs up) so its server does the same work,
and in addition stamps ``time.monotonic()`` on entry to every ``on_audio``. The load client joins those
stamps with its own send times to get the latency from a chunk's arrival at the server to the handler's
frame. Both processes run on one machine, and ``time.monotonic()`` is ``CLOCK_MONOTONIC`` there, so the
two clocks are the same clock.

The stamps travel back outside the WebSocket: the call's ``custom_parameters`` name a UDP address on
127.0.0.1 (``bench_udp``) and the call's number in the run (``bench_call``); every ``REPORT_EVERY``
frames, and at the end of the call, one datagram carries ``(call, count)`` and ``count`` pairs of
``(frame index, seconds)``. That is one ``sendto`` per call per second of audio, a cost too small to
move the server's figures (the load bench reports this bot's CPU next to the plain echo bot's).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from array import array

from handlers.echo import EchoBot
from voicebot import AudioFrame, Call

#: Frames per report: one datagram per second of 20 ms frames.
REPORT_EVERY = 50
#: Datagram header: the call's number in the run and the number of (index, time) pairs that follow.
HEADER = struct.Struct("<II")


class LatencyProbeEchoBot(EchoBot):
    """The echo bot, plus a per-frame arrival stamp sent to the load client by UDP."""

    def __init__(self) -> None:
        super().__init__()
        self._call_number = 0
        self._target: tuple[str, int] | None = None
        self._socket: socket.socket | None = None
        self._pairs = array("d")

    async def on_start(self, call: Call) -> None:
        """Read where to report from the call's custom parameters, then greet like the echo bot."""
        params = call.custom_parameters
        address = params.get("bench_udp", "")
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            self._target = (host, int(port))
            self._call_number = int(params.get("bench_call", "0") or 0)
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        await super().on_start(call)

    async def on_audio(self, call: Call, frame: AudioFrame) -> None:
        """Stamp the frame first, so the stamp is the moment the handler got it; then echo it."""
        self._pairs.append(frame.index)
        self._pairs.append(time.monotonic())
        if len(self._pairs) >= 2 * REPORT_EVERY:
            self._report()
        await super().on_audio(call, frame)

    async def on_stop(self, call: Call, reason: str) -> None:
        """Send what is left and release the socket."""
        self._report()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _report(self) -> None:
        if self._socket is None or self._target is None or not self._pairs:
            self._pairs = array("d")
            return
        datagram = HEADER.pack(self._call_number, len(self._pairs) // 2) + self._pairs.tobytes()
        self._pairs = array("d")
        # A full socket buffer loses one report; the client counts the frames it never heard about.
        with contextlib.suppress(OSError):
            self._socket.sendto(datagram, self._target)
