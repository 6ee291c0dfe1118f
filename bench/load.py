"""N concurrent simulated Exotel calls against voicebot's echo bot and a bare ``websockets`` baseline.

    python bench/load.py [--quick] [--max-n N] [--steps 50,100,...] [--window S] [--json FILE]
                         [--pairs K] [--pin] [--profile FILE [--profile-n N]]

Each measurement starts a fresh server as its own process and drives it from this process (a lean
Exotel-side client, ``bench/loadclient.py``), so the client's CPU is never counted as the server's:

* ``baseline``: ``python bench/baseline_server.py`` — websockets on uvloop, ``compression=None``,
  json + base64 decode of each media message and its payload echoed re-encoded; no DSP, no pacing;
* ``voicebot``: ``python -m voicebot serve --handler handlers.echo:EchoBot --host 127.0.0.1 --port P``;
* ``probe``: the same with ``--handler bench/latency_probe.py:LatencyProbeEchoBot``, the echo bot
  plus a stamp on every ``on_audio`` frame, for the inbound latency (see that module).

Calls are 8 kHz PCM16 with 100 ms media chunks at real-time pace, each chunk sent at its absolute
deadline (``start + k × 100 ms``). A run: start the server, one warm-up with 2 calls, read the
server's RSS at 0 calls, open N calls over ``N/200`` s, let them settle (greeting, mark echo), then
measure for ``--window`` seconds, then hang every call up with ``stop``. With ``--pin`` (Linux) every
server runs on one CPU of its own and the client on the others, so that "per core" is literally one
core's work and the client's load never lands on the server's core; without it the scheduler moves
both as it likes.

Figures and how they are taken:

* **server CPU**: ``utime + stime`` of the server process from ``/proc/<pid>/stat`` (all threads,
  clock ticks of 10 ms; over a 10 s window that is < 1 % of a loaded server's CPU), before and after
  the window. Divided by the call-seconds in the window it is **CPU per call-second**; its inverse is
  **calls per core** (how many such calls one fully busy core would carry at this load).
* **RSS per call**: ``VmRSS`` from ``/proc/<pid>/status`` at the end of the window minus at 0 calls
  (after the warm-up), over N.
* **inbound latency** (probe run only): the time a chunk was written to the socket by the client
  (``time.monotonic()``, the same ``CLOCK_MONOTONIC`` the server reads; on loopback that is the
  chunk's arrival at the server, plus any time the server left it unread) → ``on_audio`` entered for
  each frame that chunk completed. The chunk that completes a frame is computed from the resampler's
  exact output count (``Resampler.output_samples_after``), so no delay is assumed.
* **outbound jitter**: for consecutive bot media messages on a call, inter-arrival time minus the
  audio duration of the earlier one, as seen by the client, ``|…|`` p50/p99. It includes the pacer's
  own rhythm, not only lateness, so the bar uses what the rhythm must protect: **margin**, the audio
  still queued at Exotel when each bot chunk arrived (1st percentile, from a replay of Exotel's
  playout clock over the received chunks), and **underruns**, the gaps of that replay (0.001–1 s).
* **echo (click)**: every call sends a click once a second; "sent→recv" is the click chunk's send →
  the bot's media message carrying its echo; "heard" is the click's capture (stream time) → the
  moment Exotel's playout clock plays it back. Baseline rows also give the 1:1 message round trip.
* **client**: p99 of the client's own send lateness (send time − deadline) and its CPU share; a run
  whose client is late by more than 20 ms p99 is marked client-limited and is not used.
* **machine**: busy cores and steal from ``/proc/stat`` over the window; "other" load on a shared
  machine shows up as busy cores beyond server + client.

Real time means, for a run: server CPU <= 90 % of one core, p99 inbound latency (voicebot) or p99
round trip (baseline) <= 50 ms, underruns <= 0.1 % of call time (voicebot; the baseline does not
pace, so it has no cushion to lose), no call failed or ended early, no error in the server's log.
N steps 50, 100, 200, … (doubling, capped by ``--max-n``) until voicebot breaks the CPU or latency
bar, then bisects ``--refine`` times towards that limit and, separately, towards the largest N that
passes every bar (underruns can fail first). Every step measures both servers, so each ratio compares
figures taken minutes apart on the same machine. Calls per core is quoted at the largest N where both
servers keep within the CPU and latency bars: a saturated server falls behind and batches its work, so
its CPU per call-second reads low. With ``--pairs K`` each step runs K (baseline, voicebot) pairs and
shows the pair with the median ratio; it also prints every pair's CPU per call-second and the ratio of
each server's cheapest run, the estimate least moved by other tenants (they only ever add CPU time).

``--profile FILE`` then runs the echo bot once more at that N with ``py-spy record`` attached (200 Hz,
raw collapsed stacks into FILE; py-spy pauses the server for each sample, so this run is not one of the
measured ones) and prints the cost of each layer, activity and function in µs per call-second.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import uvloop

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

from loadclient import CHUNK_SAMPLES, RATE, LoadFigures, LoadRun, Spread, measure  # noqa: E402
from profile_summary import summarize_profile  # noqa: E402

from handlers.echo import EchoBot  # noqa: E402
from voicebot.audio import Resampler  # noqa: E402

HOST: Final = "127.0.0.1"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
CPU_BAR: Final = 0.90
LATENCY_BAR: Final = 0.050
UNDERRUN_BAR: Final = 0.001
CLIENT_LATE_BAR: Final = 0.020
ECHO_HANDLER: Final = "handlers.echo:EchoBot"
PROBE_HANDLER: Final = "bench/latency_probe.py:LatencyProbeEchoBot"
#: py-spy samples per second. It pauses the server for each sample (``--nonblocking`` gave torn
#: stacks), which is why the profiled run is never one of the measured ones.
PROFILE_RATE: Final = 200
#: The profiled window is at least this long, for enough samples.
PROFILE_SECONDS: Final = 20.0


# ------------------------------------------------------------------------------------------ /proc


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def process_rss_kib(pid: int) -> int:
    """Resident set size of a process, from ``VmRSS`` in ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class MachineTimes:
    """Aggregate CPU jiffies of the machine from the ``cpu`` line of ``/proc/stat``."""

    busy: int
    total: int
    steal: int

    @classmethod
    def read(cls) -> MachineTimes:
        """Now."""
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = values
        return cls(user + nice + system + irq + softirq, sum(values), steal)


def client_cpu_seconds() -> float:
    """CPU seconds of this process (the load client)."""
    times = os.times()
    return times.user + times.system


# ---------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerKind:
    """One of the servers under test: how to start it and how to read it."""

    name: str
    label: str
    handler: str | None  # None: the baseline script
    probe: bool = False
    fifo_rtt: bool = False

    def command(self, port: int) -> list[str]:
        """The server's command line."""
        if self.handler is None:
            return [sys.executable, "bench/baseline_server.py", "--host", HOST, "--port", str(port)]
        return [
            sys.executable, "-m", "voicebot", "serve",
            "--handler", self.handler, "--host", HOST, "--port", str(port),
        ]  # fmt: skip


BASELINE: Final = ServerKind("baseline", "bare websockets echo", None, fifo_rtt=True)
VOICEBOT: Final = ServerKind("voicebot", "voicebot EchoBot", ECHO_HANDLER)
PROBE: Final = ServerKind("probe", "voicebot EchoBot+probe", PROBE_HANDLER, probe=True)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server under test, in its own process, its output in a temporary file."""

    def __init__(self, kind: ServerKind, cpus: frozenset[int] | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.command = kind.command(self.port)
        # Closed in close(): the log outlives this method, so no `with`.
        self._log = tempfile.TemporaryFile(mode="w+", prefix=f"load-{kind.name}-")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        if cpus:
            os.sched_setaffinity(self.process.pid, cpus)

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind.name} server exited: {self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind.name} server not ready after {timeout}s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def stop(self) -> None:
        """SIGTERM (the server drains and exits), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_lines(self) -> list[str]:
        """Everything the server printed."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().splitlines()

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the server printed."""
        return "\n".join(self.log_lines()[-lines:])

    def close(self) -> None:
        """Stop it and drop its log."""
        self.stop()
        self._log.close()


# ------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunOptions:
    """Timing of one run."""

    window: float
    server_cpus: frozenset[int] | None = None  # --pin: the CPU every server runs on
    settle: float = 2.5
    tail: float = 0.6
    calls_per_second: float = 200.0


@dataclass
class RunResult:
    """One server at one N: what the client saw and what the server's process cost."""

    kind: str
    n: int
    window: float
    figures: LoadFigures
    server_cpu: float
    rss_idle_kib: int
    rss_loaded_kib: int
    client_cpu: float
    machine_busy_cores: float
    machine_steal_cores: float
    log_errors: list[str] = field(default_factory=list)
    log_warnings: int = 0
    profile: str | None = None

    @property
    def core_fraction(self) -> float:
        """Server CPU as a fraction of one core over the window."""
        return self.server_cpu / self.window

    @property
    def cpu_per_call_second(self) -> float:
        """Server CPU seconds per second of one call."""
        return self.server_cpu / self.figures.call_seconds if self.figures.call_seconds else math.nan

    @property
    def calls_per_core(self) -> float:
        """How many such calls one fully busy core would carry, from the CPU per call-second."""
        cost = self.cpu_per_call_second
        return 1.0 / cost if cost > 0 else math.nan

    @property
    def rss_per_call_kib(self) -> float:
        """(RSS at N calls − RSS at 0 calls) / N."""
        return (self.rss_loaded_kib - self.rss_idle_kib) / self.n

    @property
    def client_limited(self) -> bool:
        """The client could not keep its own deadlines, so the run says nothing about the server."""
        late = self.figures.send_lateness.p99
        return not late <= CLIENT_LATE_BAR

    def problems(self) -> list[str]:
        """Why this run is not real time (empty when it is)."""
        return self.capacity_problems() + self.stream_problems()

    def stream_problems(self) -> list[str]:
        """Outbound audio that ran dry at Exotel (voicebot only: the baseline does not pace)."""
        fig = self.figures
        if self.kind != "baseline" and fig.underrun_seconds > UNDERRUN_BAR * fig.call_seconds:
            return [f"underruns {fig.underrun_seconds:.2f} s > {UNDERRUN_BAR:.1%} of call time"]
        return []

    def capacity_problems(self) -> list[str]:
        """CPU, latency, failed calls, errors, and a client that could not keep pace."""
        fig = self.figures
        found = []
        if self.core_fraction > CPU_BAR:
            found.append(f"CPU {self.core_fraction:.0%} > {CPU_BAR:.0%} of a core")
        if fig.calls_failed or fig.calls_ended_early:
            found.append(f"{fig.calls_failed} calls failed, {fig.calls_ended_early} ended early")
        if self.kind == "probe" and not fig.probe_latency.p99 <= LATENCY_BAR:
            found.append(
                f"inbound latency p99 {fig.probe_latency.p99 * 1e3:.1f} ms > {LATENCY_BAR * 1e3:.0f}"
            )
        if self.kind == "baseline" and not fig.round_trip.p99 <= LATENCY_BAR:
            found.append(f"round trip p99 {fig.round_trip.p99 * 1e3:.1f} ms > {LATENCY_BAR * 1e3:.0f}")
        if self.log_errors:
            found.append(f"{len(self.log_errors)} error lines in the server log")
        if self.client_limited:
            found.append(f"client-limited (send lateness p99 {fig.send_lateness.p99 * 1e3:.0f} ms)")
        return found


def frames_after_chunks(chunks: int) -> npt.NDArray[np.int64]:
    """Handler frames the echo bot's pipeline can have delivered after 0, 1, … ``chunks`` chunks."""
    resampler = Resampler(RATE, EchoBot.sample_rate)
    frame = EchoBot.sample_rate * EchoBot.frame_ms // 1000
    return np.array([resampler.output_samples_after(k * CHUNK_SAMPLES) // frame for k in range(chunks + 1)])


async def run_once(
    kind: ServerKind, n: int, options: RunOptions, profile_to: Path | None = None
) -> RunResult:
    """Start ``kind``'s server, put ``n`` calls on it, measure one window, and tear it all down."""
    server = ServerProcess(kind, options.server_cpus)
    try:
        await server.wait_ready()
        url = f"ws://{HOST}:{server.port}/media?sample-rate={RATE}"
        async with LoadRun(url, fifo_rtt=kind.fifo_rtt) as warm_up:  # imports, first call's allocations
            await warm_up.open_calls(2, 0.1, HOST, server.port)
            await asyncio.sleep(1.5)
            await warm_up.stop_calls()
        await asyncio.sleep(0.5)
        rss_idle = process_rss_kib(server.pid)
        async with LoadRun(url, fifo_rtt=kind.fifo_rtt) as run:
            await run.open_calls(n, max(1.0, n / options.calls_per_second), HOST, server.port)
            await asyncio.sleep(options.settle)
            spy = await _start_profiler(server.pid, options.window, profile_to) if profile_to else None
            run.clicks_on = True
            began, cpu0, client0, machine0 = (
                time.monotonic(), process_cpu_seconds(server.pid), client_cpu_seconds(), MachineTimes.read()
            )  # fmt: skip
            await asyncio.sleep(options.window)
            ended, cpu1, client1, machine1 = (
                time.monotonic(), process_cpu_seconds(server.pid), client_cpu_seconds(), MachineTimes.read()
            )  # fmt: skip
            run.clicks_on = False
            rss_loaded = process_rss_kib(server.pid)
            await asyncio.sleep(options.tail)  # the last clicks' echoes and the probe's reports
            await run.stop_calls()
            await asyncio.sleep(0.3)
            if spy is not None:
                await spy.wait()
            total_chunks = max((call.chunks_sent for call in run.calls), default=0)
            frames = frames_after_chunks(total_chunks + 1) if kind.probe else None
            figures = measure(run, began, ended, frames)
    finally:
        server.stop()
    lines = server.log_lines()
    server.close()
    jiffies = max(machine1.total - machine0.total, 1)
    cores = os.cpu_count() or 1
    window = ended - began
    return RunResult(
        kind=kind.name,
        n=n,
        window=window,
        figures=figures,
        server_cpu=cpu1 - cpu0,
        rss_idle_kib=rss_idle,
        rss_loaded_kib=rss_loaded,
        client_cpu=client1 - client0,
        machine_busy_cores=(machine1.busy - machine0.busy) / jiffies * cores,
        machine_steal_cores=(machine1.steal - machine0.steal) / jiffies * cores,
        log_errors=[line for line in lines if " ERROR " in line or line.startswith("Traceback")],
        log_warnings=sum(1 for line in lines if " WARNING " in line),
        profile=str(profile_to) if profile_to else None,
    )


def _py_spy() -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return spy


async def _start_profiler(pid: int, seconds: float, output: Path) -> asyncio.subprocess.Process:
    spy = _py_spy()
    return await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(PROFILE_RATE), "--format", "raw", "--output", str(output),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


# --------------------------------------------------------------------------------------- printing


def _pct(value: float) -> str:
    return f"{value:.0%}" if math.isfinite(value) else "-"


ROW_HEADER: Final = (
    f"  {'server':<24}{'CPU':>5} {'ms/cs':>6} {'calls/':>7} {'RSS KiB':>8}  {'latency p50/p99/max':>20}"
    f"  {'out jitter':>10} {'margin':>6} {'under':>6}  {'click sent→recv':>15} {'heard':>11}"
    f"  {'client':>12} {'machine':>11}\n"
    f"  {'':<24}{'core':>5} {'':>6} {'core':>7} {'per call':>8}  {'ms':>20}"
    f"  {'p50/p99 ms':>10} {'p1 ms':>6} {'runs s':>6}  {'p50/p99 ms':>15} {'p50/p99 ms':>11}"
    f"  {'late99 CPU':>12} {'busy/steal':>11}"
)


def _pair(spread: Spread) -> str:
    if not spread.count:
        return "-"
    return f"{spread.p50 * 1e3:.1f}/{spread.p99 * 1e3:.1f}"


def format_row(result: RunResult) -> str:
    """One table row for one run."""
    fig = result.figures
    labels = {"baseline": BASELINE.label, "voicebot": VOICEBOT.label, "probe": PROBE.label}
    latency = fig.probe_latency if result.kind == "probe" else fig.round_trip
    latency_text = latency.ms() + (" rt" if result.kind == "baseline" else "")
    if result.kind == "voicebot":
        latency_text = "(see probe)"
    margin = f"{fig.queue_margin.low * 1e3:.0f}" if fig.queue_margin.count else "-"
    return (
        f"  {labels[result.kind]:<24}{_pct(result.core_fraction):>5} {result.cpu_per_call_second * 1e3:6.2f}"
        f" {result.calls_per_core:7.0f} {result.rss_per_call_kib:8.1f}  {latency_text:>20}"
        f"  {_pair(fig.outbound_jitter):>10} {margin:>6} {fig.underrun_seconds:6.2f}"
        f"  {_pair(fig.click_delay):>15} {_pair(fig.click_heard):>11}"
        f"  {fig.send_lateness.p99 * 1e3:5.1f} {_pct(result.client_cpu / result.window):>5}"
        f"  {result.machine_busy_cores:4.2f}/{result.machine_steal_cores:4.2f}"
    )


@dataclass
class Step:
    """Both servers (and the probe) at one N."""

    n: int
    baseline: RunResult
    voicebot: RunResult
    probe: RunResult
    pair_ratios: list[float] = field(default_factory=list)
    """With ``--pairs``: the ratio of each (baseline, voicebot) pair run back to back, in run order."""
    pair_costs: list[tuple[float, float]] = field(default_factory=list)
    """With ``--pairs``: each pair's (baseline, voicebot) CPU seconds per call-second, in run order."""

    @property
    def runs(self) -> tuple[RunResult, RunResult, RunResult]:
        """The three runs, baseline first."""
        return (self.baseline, self.voicebot, self.probe)

    @property
    def voicebot_problems(self) -> list[str]:
        """Why voicebot is not real time at this N."""
        return self.voicebot.problems() + [f"probe: {p}" for p in self.probe.problems()]

    @property
    def voicebot_ok(self) -> bool:
        """voicebot stays real time at this N: every bar."""
        return not self.voicebot_problems

    @property
    def voicebot_capacity_ok(self) -> bool:
        """voicebot keeps within the CPU and latency bars at this N (underruns aside)."""
        return not (self.voicebot.capacity_problems() or self.probe.capacity_problems())

    @property
    def baseline_ok(self) -> bool:
        """The baseline stays real time at this N."""
        return not self.baseline.problems()

    @property
    def client_limited(self) -> bool:
        """The client could not keep pace in one of the runs."""
        return any(r.client_limited for r in (self.baseline, self.voicebot, self.probe))

    @property
    def ratio(self) -> float:
        """voicebot's calls per core over the baseline's, both from this step (the median pair's)."""
        return self.voicebot.calls_per_core / self.baseline.calls_per_core

    @property
    def cheapest_costs(self) -> tuple[float, float] | None:
        """With ``--pairs``: each server's lowest CPU per call-second over its runs (baseline, voicebot).

        Other tenants only ever add CPU time to a run (cache and memory contention, a slower clock),
        never take it away, so each server's cheapest run is the best estimate of its own cost, as
        ``timeit`` takes the fastest repeat.
        """
        if not self.pair_costs:
            return None
        return min(base for base, _ in self.pair_costs), min(vb for _, vb in self.pair_costs)

    @property
    def best_ratio(self) -> float | None:
        """With ``--pairs``: the calls-per-core ratio of the cheapest runs; it complements the median
        pair, which a single disturbed run can still move."""
        cheapest = self.cheapest_costs
        return None if cheapest is None else cheapest[0] / cheapest[1]


def print_step(step: Step) -> None:
    """The step's table and verdict."""
    print(f"\n== N = {step.n} calls ==", flush=True)
    print(ROW_HEADER)
    for result in (step.baseline, step.voicebot, step.probe):
        print(format_row(result))
    probe = step.probe.figures
    print(
        f"  probe frames: {probe.probe_latency.count} stamped of ~{probe.probe_frames_expected} sent in the "
        f"window, {probe.probe_errors} unmatched; marks echoed (voicebot): "
        f"{step.voicebot.figures.marks_echoed}; "
        f"outbound chunk {step.voicebot.figures.outbound_chunk_ms:.0f} ms (voicebot), "
        f"{step.baseline.figures.outbound_chunk_ms:.0f} ms (baseline); clicks lost "
        + ", ".join(f"{r.kind} {r.figures.clicks_lost}/{r.figures.clicks_sent}" for r in step.runs)
    )
    for result in step.runs:
        if result.log_warnings:
            print(f"  {result.kind} server log: {result.log_warnings} warning lines")
        for line in result.log_errors[:3]:
            print(f"  {result.kind} server log: {line}")
    verdict = "yes" if step.voicebot_ok else "NO (" + "; ".join(step.voicebot_problems) + ")"
    base_verdict = "yes" if step.baseline_ok else "NO (" + "; ".join(step.baseline.problems()) + ")"
    print(f"  real time: voicebot {verdict}; baseline {base_verdict}")
    print(
        f"  calls per core: voicebot {step.voicebot.calls_per_core:.0f}, baseline "
        f"{step.baseline.calls_per_core:.0f}, ratio {step.ratio:.2f}"
        + (
            f" (pairs run: {', '.join(f'{r:.2f}' for r in step.pair_ratios)}; the median pair is shown)"
            if step.pair_ratios
            else ""
        ),
        flush=True,
    )
    cheapest = step.cheapest_costs
    if cheapest is not None:
        listed = ", ".join(f"{vb * 1e3:.2f}/{base * 1e3:.2f}" for base, vb in step.pair_costs)
        print(
            f"  each pair, voicebot/baseline ms per call-second: {listed}; each server's cheapest run: "
            f"voicebot {cheapest[1] * 1e3:.2f}, baseline {cheapest[0] * 1e3:.2f}, "
            f"ratio {cheapest[0] / cheapest[1]:.2f}",
            flush=True,
        )


def print_summary(steps: list[Step], search_stopped: str) -> None:
    """The table over N and the headline figures."""
    print("\n== Summary (each ratio compares the two servers within one step) ==")
    print(
        f"  {'N':>5}  {'voicebot':>8} {'ms/cs':>6} {'calls/':>7}  {'baseline':>8} {'ms/cs':>6} {'calls/':>7}"
        f"  {'ratio':>5}  {'vb RSS':>8}  {'vb p99':>6} {'vb under':>8}  {'voicebot RT':>12} {'base':>4}\n"
        f"  {'':>5}  {'CPU':>8} {'':>6} {'core':>7}  {'CPU':>8} {'':>6} {'core':>7}"
        f"  {'':>5}  {'KiB/call':>8}  {'lat ms':>6} {'runs s':>8}  {'all / CPU+lat':>12} {'RT':>4}"
    )

    def yes(ok: bool) -> str:
        return "yes" if ok else "no"

    for step in sorted(steps, key=lambda s: s.n):
        vb, base = step.voicebot, step.baseline
        flag = " (client-limited)" if step.client_limited else ""
        vb_cost, base_cost = vb.cpu_per_call_second * 1e3, base.cpu_per_call_second * 1e3
        latency = step.probe.figures.probe_latency.p99 * 1e3
        verdicts = (
            f"{yes(step.voicebot_ok):>5} / {yes(step.voicebot_capacity_ok):<4} {yes(step.baseline_ok):>4}"
        )
        print(
            f"  {step.n:5d}  {_pct(vb.core_fraction):>8} {vb_cost:6.2f} {vb.calls_per_core:7.0f}"
            f"  {_pct(base.core_fraction):>8} {base_cost:6.2f} {base.calls_per_core:7.0f}"
            f"  {step.ratio:5.2f}  {vb.rss_per_call_kib:8.1f}  {latency:6.1f}"
            f" {vb.figures.underrun_seconds:8.2f}  {verdicts}{flag}"
        )
    valid = [s for s in steps if not s.client_limited]
    print(f"  search: {search_stopped}")

    def largest(passes: Callable[[Step], bool]) -> str:
        good = [s.n for s in valid if passes(s)]
        return str(max(good)) if good else "none of the steps"

    print(
        f"  largest real-time N: voicebot {largest(lambda s: s.voicebot_ok)} with every bar, "
        f"{largest(lambda s: s.voicebot_capacity_ok)} with the CPU and latency bars alone; baseline "
        f"{largest(lambda s: s.baseline_ok)} (the search follows voicebot: a baseline that passed every "
        "step has a higher limit)"
    )
    fair = [s for s in valid if s.voicebot_capacity_ok and s.baseline_ok]
    headline = max(fair, key=lambda s: s.n) if fair else (max(valid, key=lambda s: s.n) if valid else None)
    if headline is None:
        print("  no step had a client that kept pace: no figures to report")
        return
    if not fair:
        print("  (no step kept both servers within the bars: a saturated server falls behind and batches,")
        print("   so its CPU per call-second reads low: the figures below are not capacity figures)")
    ratios = sorted(s.ratio for s in (fair or valid))
    verdict = "MET" if headline.ratio >= 0.5 else "NOT MET"
    print(
        f"  headline (N = {headline.n}, the largest step within the CPU and latency bars for both): voicebot "
        f"{headline.voicebot.cpu_per_call_second * 1e3:.2f} ms CPU per call-second = "
        f"{headline.voicebot.calls_per_core:.0f} calls per core; baseline "
        f"{headline.baseline.cpu_per_call_second * 1e3:.2f} ms = {headline.baseline.calls_per_core:.0f} "
        f"calls per core; ratio {headline.ratio:.2f} (steps within the bars: "
        f"{ratios[0]:.2f}–{ratios[-1]:.2f}, median {float(np.median(ratios)):.2f})"
    )
    if headline.best_ratio is not None:
        print(
            f"  each server's cheapest of {len(headline.pair_costs)} runs at N = {headline.n}: ratio "
            f"{headline.best_ratio:.2f} ({'>=' if headline.best_ratio >= 0.5 else '<'} 0.5)"
        )
    print(f"  target (voicebot keeps >= 0.5 of the baseline's calls per core, median pair): {verdict}")


# ------------------------------------------------------------------------------------------ search


async def measure_step(n: int, options: RunOptions, pairs: int = 1) -> Step:
    """The baseline, the echo bot and the probe at ``n`` calls, one after the other.

    With ``pairs`` > 1 the baseline and the echo bot are run that many times, alternately: the load
    other tenants put on a shared machine changes over minutes and hits the two servers unequally, so
    one pair's ratio can be off by a tenth. The step keeps the pair with the median ratio.
    """
    runs = []
    for _ in range(pairs):
        baseline = await run_once(BASELINE, n, options)
        voicebot = await run_once(VOICEBOT, n, options)
        runs.append((voicebot.calls_per_core / baseline.calls_per_core, baseline, voicebot))
    ratios = [ratio for ratio, _, _ in runs]
    costs = [(base.cpu_per_call_second, vb.cpu_per_call_second) for _, base, vb in runs]
    _, baseline, voicebot = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
    probe = await run_once(PROBE, n, options)
    step = Step(n, baseline, voicebot, probe, ratios if pairs > 1 else [], costs if pairs > 1 else [])
    print_step(step)
    return step


def _doubling(start: int, cap: int) -> list[int]:
    values = []
    n = start
    while n <= cap:
        values.append(n)
        n *= 2
    if values and values[-1] != cap and cap > values[-1]:
        values.append(cap)
    return values


async def search(args: argparse.Namespace) -> list[Step]:
    """Measure the given steps, or double N until voicebot breaks the bar and then bisect."""
    options = RunOptions(window=args.window, server_cpus=args.server_cpus)
    steps: list[Step] = []
    if args.steps:
        for n in args.steps:
            steps.append(await measure_step(n, options, args.pairs))
        print_summary(steps, "fixed steps " + ",".join(map(str, args.steps)))
        return steps
    stopped = f"reached --max-n {args.max_n}"
    for n in _doubling(args.start, args.max_n):
        step = await measure_step(n, options, args.pairs)
        steps.append(step)
        if step.client_limited:
            stopped = f"stopped at N = {n}: the load client could not keep its deadlines"
            break
        if not step.voicebot_capacity_ok:
            stopped = f"voicebot broke the CPU/latency bar at N = {n}"
            break
    # Underruns can break the bar below the CPU/latency limit, so each boundary is bisected on its own.
    for label, passes in (("all bars", _all_bars), ("CPU/latency", _capacity_bars)):
        for _ in range(args.refine):
            bracket = _bracket(steps, passes)
            if bracket is None:
                break
            middle = round(sum(bracket) / 2 / 10) * 10
            if middle in bracket:
                break
            steps.append(await measure_step(middle, options, args.pairs))
        bracket = _bracket(steps, passes)
        if bracket is not None:
            stopped += f"; {label}: between {bracket[0]} and {bracket[1]}"
    print_summary(steps, stopped)
    return steps


def _all_bars(step: Step) -> bool:
    return step.voicebot_ok and not step.client_limited


def _capacity_bars(step: Step) -> bool:
    return step.voicebot_capacity_ok and not step.client_limited


def _bracket(steps: list[Step], passes: Callable[[Step], bool]) -> tuple[int, int] | None:
    """(largest passing N, smallest failing N above it), or None when either is missing."""
    good = [s.n for s in steps if passes(s)]
    if not good:
        return None
    bad = [s.n for s in steps if s.n > max(good) and not passes(s)]
    return (max(good), min(bad)) if bad else None


async def profile(args: argparse.Namespace, steps: list[Step]) -> None:
    """Profile the echo bot's server with py-spy at one N and print the costs per call-second."""
    good = [s.n for s in steps if _capacity_bars(s)]
    n = args.profile_n or (max(good) if good else (steps[0].n if steps else 100))
    window = max(args.window, PROFILE_SECONDS)
    print(f"\n== Profile: {VOICEBOT.label} at N = {n}, py-spy at {PROFILE_RATE} Hz for {window:.0f} s ==")
    options = RunOptions(window=window, server_cpus=args.server_cpus)
    result = await run_once(VOICEBOT, n, options, profile_to=args.profile)
    print(ROW_HEADER)
    print(format_row(result))
    print(
        "  (py-spy runs beside the server during this window, so this row is not used for the figures above)"
    )
    print(summarize_profile(args.profile, result.cpu_per_call_second))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, run the search (and the profile), print everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="4 s windows, N up to 200, no bisection")
    parser.add_argument("--start", type=int, default=50, help="first N (default 50)")
    parser.add_argument("--max-n", type=int, default=None, help="largest N to try (default 1600; quick 200)")
    parser.add_argument("--steps", type=lambda text: [int(v) for v in text.split(",")], default=None,
                        help="measure exactly these N (comma-separated) instead of searching")  # fmt: skip
    parser.add_argument(
        "--window", type=float, default=None, help="measurement seconds (default 10; quick 4)"
    )
    parser.add_argument(
        "--refine", type=int, default=None, help="bisection steps after the doubling (default 2)"
    )
    parser.add_argument(
        "--pairs", type=int, default=1,
        help="run the baseline and voicebot this many times per step, alternately, and keep the median "
        "ratio (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--pin", action="store_true",
        help="run every server on one CPU of its own and this client on the others (Linux, 2+ CPUs), so "
        "that calls per core are one core's and the client never shares it",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the echo server into this file")
    parser.add_argument(
        "--profile-n", type=int, default=None, help="N to profile (default: the CPU/latency limit)"
    )
    args = parser.parse_args(argv)
    args.max_n = args.max_n or (200 if args.quick else 1600)
    args.window = args.window or (4.0 if args.quick else 10.0)
    args.refine = args.refine if args.refine is not None else (0 if args.quick else 2)
    if args.start < 1 or args.max_n < args.start or args.window <= 0 or args.pairs < 1:
        parser.error("need 1 <= --start <= --max-n, --window > 0 and --pairs >= 1")
    args.server_cpus = None
    if args.pin:
        usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(usable) < 2:
            parser.error("--pin needs Linux and at least 2 CPUs this process may use")
        args.server_cpus = frozenset(usable[-1:])
        os.sched_setaffinity(0, usable[:-1])  # the client, and the py-spy it starts

    print(
        f"load bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {sys.platform}; "
        f"window {args.window:.0f} s per run, {args.pairs} baseline/voicebot pair(s) per step"
        + (f"; servers pinned to CPU {min(args.server_cpus)}, the client to the others" if args.pin else "")
        + ";\n"
        f"  bars: CPU <= {CPU_BAR:.0%} of a core, p99 latency <= "
        f"{LATENCY_BAR * 1e3:.0f} ms, underruns <= {UNDERRUN_BAR:.1%}, client lateness p99 <= "
        f"{CLIENT_LATE_BAR * 1e3:.0f} ms"
    )
    for kind in (BASELINE, VOICEBOT, PROBE):
        print(f"  {kind.name:<8} $ {' '.join(kind.command(0)).replace(sys.executable, 'python')}  (port P)")
    print(
        "  columns: CPU = server CPU / window; ms/cs = server CPU ms per call-second; calls/core = 1 / that;"
        "\n  latency = probe: chunk sent → on_audio (ms), baseline: media sent → echo received ('rt');"
        "\n  out jitter = |inter-arrival − previous chunk's duration| of bot media; margin = audio left"
        "\n  queued at Exotel when a bot chunk arrived (1st percentile); under = underrun seconds;"
        "\n  click = echo of a click (sent → received, captured → heard);"
        "\n  client = send lateness p99 (ms) and client CPU; machine = busy and steal, in cores",
        flush=True,
    )

    async def run_all() -> list[Step]:
        steps = await search(args)
        if args.profile is not None:
            await profile(args, steps)
        return steps

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        steps = runner.run(run_all())
    if args.json is not None:
        args.json.write_text(json.dumps([_as_dict(step) for step in steps], indent=1, default=_default))


def _as_dict(step: Step) -> dict[str, Any]:
    return {
        "n": step.n,
        "ratio": step.ratio,
        "pair_ratios": step.pair_ratios,
        "pair_costs": step.pair_costs,
        "best_ratio": step.best_ratio,
        "voicebot_ok": step.voicebot_ok,
        "baseline_ok": step.baseline_ok,
        **{
            result.kind: {
                **dataclasses.asdict(result),
                "cpu_per_call_second": result.cpu_per_call_second,
                "calls_per_core": result.calls_per_core,
                "rss_per_call_kib": result.rss_per_call_kib,
            }
            for result in (step.baseline, step.voicebot, step.probe)
        },
    }


def _default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()
