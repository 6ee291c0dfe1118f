"""CPU cost of the per-call pipeline alone: ``Call`` + handler + ticker, on a virtual clock.

``bench/load.py`` measures the whole server against real sockets in real time, which is the honest
figure but moves by ±10 % from run to run on a shared machine. This bench measures the part voicebot
owns, repeatably enough to tell a 3 % change:

* every call's WebSocket is a stub: ``recv`` hands over the messages a feeder queued (Exotel's
  ``connected``, ``start``, then 100 ms PCM16 ``media`` at 8 kHz, then ``stop``), ``send`` keeps a
  playout clock from each media payload's length and echoes marks once their audio has played;
* the event loop runs on a virtual clock that jumps to the next timer whenever the loop would sleep,
  so ``--seconds`` of N calls run as fast as the CPU allows and every run does the same work;
* the figure is process CPU per call-second, in µs, the feeder and stubs included (they are a small,
  fixed share; ``--handler silent`` shows the floor: a bot that receives every frame and plays nothing).

``--against DIR`` also runs a second checkout's voicebot (e.g. a ``git worktree`` of the previous
commit), alternating the two in fresh processes, and prints each run's ratio to it: compare ratios,
not absolute figures, across runs. ``--instructions`` counts instructions under valgrind's callgrind
instead of timing: the same code gives the same count to the last digit, whatever else the machine is
doing (it does not see cache misses, so it is for Python-level changes).

    python bench/pipeline.py                       # echo bot, 100 calls, 30 s each
    python bench/pipeline.py --against /tmp/base   # this checkout / that one, 5 alternations
    python bench/pipeline.py --instructions --calls 5 --seconds 3 --against /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import re
import selectors
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, cast

from loadclient import CallerAudio
from websockets.exceptions import ConnectionClosedOK
from websockets.protocol import State

ROOT: Final = Path(__file__).resolve().parent.parent
RATE: Final = 8000
CHUNK_SECONDS: Final = 0.1
CHUNK_SAMPLES: Final = 800


class VirtualClockSelector(selectors.DefaultSelector):
    """A selector that never blocks: a wait for ``timeout`` moves the loop's virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Poll without waiting; advance the clock by the time the loop meant to sleep."""
        if timeout is not None and timeout > 0:
            self.now += timeout
        return super().select(0)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual: sleeping costs no wall time."""

    def __init__(self) -> None:
        self.clock = VirtualClockSelector()
        super().__init__(self.clock)

    def time(self) -> float:
        """The virtual time."""
        return self.clock.now


class StubTransport:
    """What ``Call`` asks of a transport: its write buffer is always empty."""

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be written: none."""
        return 0


class StubConnection:
    """The parts of a ``websockets`` ``ServerConnection`` that ``Call`` uses, with Exotel's playout."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._state_open = State.OPEN
        self.state = State.OPEN
        self.transport = StubTransport()
        self._inbox: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.play_end = 0.0
        self.media_out = 0
        self.samples_out = 0
        self.marks_echoed = 0

    def deliver(self, message: str) -> None:
        """Queue a message from "Exotel" for ``recv``."""
        self._inbox.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self) -> str:
        """The next queued message; raises ``ConnectionClosed`` once closed and drained."""
        while not self._inbox:
            if self.state is not self._state_open:
                raise ConnectionClosedOK(None, None)
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._inbox.popleft()

    async def send(self, message: str) -> None:
        """Play media on the playout clock; echo marks when the audio before them has played."""
        now = self._loop.time()
        if message.startswith('{"event":"media"'):
            begin = message.find('"payload":"') + 11
            end = message.find('"', begin)
            padding = (message[end - 1] == "=") + (message[end - 2] == "=")
            samples = ((end - begin) // 4 * 3 - padding) // 2
            self.play_end = max(self.play_end, now) + samples / RATE
            self.media_out += 1
            self.samples_out += samples
        elif message.startswith('{"event":"mark"'):
            name = json.loads(message)["mark"]["name"]
            echo = json.dumps({"event": "mark", "stream_sid": "s", "mark": {"name": name}})
            self._loop.call_at(max(now, self.play_end), self._echo, echo)
        elif message.startswith('{"event":"clear"'):
            self.play_end = min(self.play_end, now)

    def _echo(self, echo: str) -> None:
        self.marks_echoed += 1
        self.deliver(echo)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close: ``recv`` raises once the inbox is drained."""
        self.state = State.CLOSED
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _silent_bot() -> Any:
    from voicebot import Handler

    class SilentBot(Handler):
        """Receives every frame and plays nothing: the floor under any bot."""

    return SilentBot


def _start_message(number: int) -> str:
    sid = f"{number:032x}"
    return json.dumps(
        {
            "event": "start",
            "sequence_number": "1",
            "stream_sid": sid,
            "start": {
                "stream_sid": sid,
                "call_sid": f"c{number:031x}",
                "account_sid": "benchpipeline",
                "from": "+919800000000",
                "to": "+918000000000",
                "custom_parameters": {},
                "media_format": {"encoding": "audio/x-raw", "sample_rate": str(RATE), "bit_rate": "16"},
            },
        },
        separators=(",", ":"),
    )


async def _run_calls(handler_spec: str, calls: int, seconds: float) -> dict[str, float]:
    from voicebot.call import Call
    from voicebot.handler import load_handler
    from voicebot.ticker import Ticker

    handler_class = _silent_bot() if handler_spec == "silent" else load_handler(handler_spec)
    loop = asyncio.get_running_loop()
    ticker = Ticker()
    ticker_task = asyncio.create_task(ticker.run())
    payload = CallerAudio.make().quiet  # the load bench's caller audio: quiet noise
    stubs = [StubConnection(loop) for _ in range(calls)]
    try:  # shared by every call, as the server does (checkouts before it have no workspace)
        from voicebot.audio import ResamplerWorkspace

        shared: dict[str, Any] = {"workspace": ResamplerWorkspace()}
    except ImportError:
        shared = {}
    pipelines = [
        Call(cast(Any, stub), handler_class(), ticker, url_rate=RATE, lead=0.4, **shared) for stub in stubs
    ]
    runs = [asyncio.create_task(call.run()) for call in pipelines]
    chunks = round(seconds / CHUNK_SECONDS)
    # Calls start spread over one chunk, as real calls do not all arrive in the same millisecond.
    heap = [(number * CHUNK_SECONDS / calls, number, 0) for number in range(calls)]
    cpu_began = time.process_time()
    while heap:
        due, number, sent = heapq.heappop(heap)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stub = stubs[number]
        if sent == 0:
            stub.deliver('{"event":"connected"}')
            stub.deliver(_start_message(number))
        elif sent <= chunks:
            head = f'{{"event":"media","sequence_number":"{sent + 1}","stream_sid":"{number:032x}",'
            stub.deliver(
                f'{head}"media":{{"chunk":"{sent}","timestamp":"{sent * 100}","payload":"{payload}"}}}}'
            )
        else:
            stub.deliver('{"event":"stop","stop":{"reason":"callended"}}')
            continue
        heapq.heappush(heap, (due + CHUNK_SECONDS, number, sent + 1))
    await asyncio.gather(*runs)
    cpu = time.process_time() - cpu_began
    ticker_task.cancel()
    await asyncio.gather(ticker_task, return_exceptions=True)
    call_seconds = calls * chunks * CHUNK_SECONDS
    heard = sum(stub.samples_out for stub in stubs) / RATE
    return {
        "us_per_call_second": cpu / call_seconds * 1e6,
        "calls_per_core": call_seconds / cpu,
        "bot_audio_ratio": heard / call_seconds,
        "media_out_per_call_second": sum(stub.media_out for stub in stubs) / call_seconds,
        "ticks_per_call_second": ticker.ticks / call_seconds,
        "wakeups_per_second": ticker.wakeups / (chunks * CHUNK_SECONDS),
    }


def measure(handler_spec: str, calls: int, seconds: float) -> dict[str, float]:
    """Run ``calls`` calls of ``seconds`` each through ``handler_spec`` on a virtual clock."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(_run_calls(handler_spec, calls, seconds))


def _child(checkout: Path, args: argparse.Namespace, seconds: float | None = None) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--child", "--handler", args.handler,
        "--calls", str(args.calls), "--seconds", str(seconds or args.seconds),
    ]  # fmt: skip
    # One BLAS thread and a fixed hash seed make a run's instruction count repeat exactly.
    environment = {
        **os.environ, "PYTHONPATH": str(checkout), "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"
    }  # fmt: skip
    if args.instructions:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    result = subprocess.run(
        command, cwd=checkout, env=environment, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"run in {checkout} failed:\n{result.stderr}")
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    if args.instructions:
        collected = re.search(r"Collected : (\d+)", result.stderr)
        if collected is None:
            raise SystemExit(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
        figures["instructions"] = float(collected.group(1))
    return figures


def _instructions_per_call_second(checkout: Path, args: argparse.Namespace) -> float:
    """Instructions per call-second: a run of 3x the length minus a run of 1x, so start-up cancels."""
    short = _child(checkout, args, args.seconds)
    long = _child(checkout, args, 3 * args.seconds)
    return (long["instructions"] - short["instructions"]) / (args.calls * 2 * args.seconds)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--handler", default="handlers.echo:EchoBot", help="module:Class, or silent (default: the echo bot)"
    )
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per call, in seconds (default 30)")
    parser.add_argument("--repeat", type=int, default=5, help="runs (alternations with --against), default 5")
    parser.add_argument("--against", type=Path, help="another checkout to compare with, run alternately")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count instructions under valgrind's callgrind instead of timing (exactly repeatable; "
        "slow, so use small --calls and --seconds, e.g. 5 and 3)",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(measure(args.handler, args.calls, args.seconds)))
        return
    print(f"pipeline bench: {args.handler}, {args.calls} calls x {args.seconds:g} s, virtual clock")
    if args.instructions:
        ours_count = _instructions_per_call_second(ROOT, args)
        print(f"  this checkout: {ours_count / 1e6:.3f} M instructions per call-second")
        if args.against is not None:
            theirs_count = _instructions_per_call_second(args.against.resolve(), args)
            print(f"  {args.against}: {theirs_count / 1e6:.3f} M instructions per call-second")
            print(f"  ratio this/that: {ours_count / theirs_count:.3f}")
        return
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(args.repeat):
        ours.append(_child(ROOT, args))
        if args.against is not None:
            theirs.append(_child(args.against.resolve(), args))
    _report("this checkout", ours)
    if theirs:
        _report(str(args.against), theirs)
        cost = [run["us_per_call_second"] for run in ours]
        other = [run["us_per_call_second"] for run in theirs]
        ratios = sorted(a / b for a, b in zip(cost, other, strict=True))
        listed = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"  CPU ratio this/that, per alternation: {listed}")
        fastest = min(cost) / min(other)
        print(f"  median {statistics.median(ratios):.3f}; fastest run / fastest run {fastest:.3f}")


def _report(label: str, runs: list[dict[str, float]]) -> None:
    cost = [run["us_per_call_second"] for run in runs]
    median = statistics.median(cost)
    first = runs[0]
    print(f"  {label}: {median:.0f} µs CPU per call-second = {1e6 / median:.0f} calls per core")
    print(f"    runs: {', '.join(f'{c:.0f}' for c in cost)}")
    print(
        f"    per call-second: {first['ticks_per_call_second']:.1f} ticks, "
        f"{first['media_out_per_call_second']:.1f} media sent, {first['bot_audio_ratio']:.3f} s of bot audio"
    )


if __name__ == "__main__":
    main()
