"""Per-chunk cost of the inbound jitter buffer, this tree's next to a baseline revision's, in one run.

    python bench/jitter_hot.py [--baseline REV] [--chunks N] [--repeats R]

A "chunk" is what the server does per 100 ms Exotel media message: one ``push`` plus the ``pop`` calls
that release its frames. Scenarios (8 kHz, 800-sample chunks, default ``JitterConfig``):

* ``in-order, 20 ms ticker``: seq +1, ts +100 ms, arrival every 100 ms; ``push`` then five pops 20 ms
  apart (the first at the arrival), about one frame each;
* ``in-order, server``: the same arrivals; ``pop(now)`` after each push and one more pop 50 ms later,
  as the server's coarse ticker does (1–2 pops per chunk, several frames each);
* ``jittery``: arrival delays uniform in 0–60 ms (so chunks overtake each other), 1 % of chunks lost,
  0.5 % sent twice; pops on a 20 ms ticker.

The baseline is ``voicebot/jitter.py`` as of ``--baseline`` (default ``HEAD``), read with ``git show``
and loaded as a separate module, so "old/new" is measured on the same machine in the same process.
Before timing, both versions are run once over every scenario and their released frames and stats
compared: a speed-up that changes behaviour is reported, not hidden. Times are µs per chunk from
``time.perf_counter`` over ``--chunks`` chunks, minimum and median over ``--repeats`` passes,
alternating old and new.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import voicebot.jitter  # noqa: E402

RATE = 8000
CHUNK = 800


@dataclass(frozen=True)
class Event:
    """A push (``samples`` set) or a pop at ``now``."""

    now: float
    samples: npt.NDArray[np.int16] | None = None
    seq: int | None = None
    ts: int | None = None


def in_order(chunks: int, pop_offsets: tuple[float, ...]) -> list[Event]:
    audio = (np.random.default_rng(0).standard_normal(CHUNK * 8) * 1000).astype(np.int16)
    events = []
    for k in range(chunks):
        now = k * 0.1 + 0.003
        piece = audio[(k % 8) * CHUNK : (k % 8 + 1) * CHUNK]
        events.append(Event(now, piece, k + 2, k * 100))
        events.extend(Event(now + offset) for offset in pop_offsets)
    return events


def jittery(chunks: int) -> list[Event]:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(CHUNK * 8) * 1000).astype(np.int16)
    pushes = []
    for k in range(chunks):
        if rng.random() < 0.01:
            continue
        piece = audio[(k % 8) * CHUNK : (k % 8 + 1) * CHUNK]
        for _ in range(2 if rng.random() < 0.005 else 1):
            pushes.append(Event(k * 0.1 + 0.003 + rng.uniform(0.0, 0.06), piece, k + 2, k * 100))
    pops = [Event(k * 0.02) for k in range(chunks * 5 + 10)]
    return sorted(pushes + pops, key=lambda e: (e.now, e.samples is None))


def run(module: ModuleType, events: list[Event]) -> Any:
    """Drive a fresh buffer through ``events``; returns the buffer and the frames it released."""
    jb = module.JitterBuffer(RATE)
    push, pop = jb.push, jb.pop
    released = []
    for event in events:
        if event.samples is not None:
            push(event.samples, sequence_number=event.seq, timestamp_ms=event.ts, now=event.now)
        else:
            released.extend(pop(event.now))
    return jb, released


def same_behaviour(old: ModuleType, new: ModuleType, events: list[Event]) -> bool:
    old_jb, old_frames = run(old, events)
    new_jb, new_frames = run(new, events)
    return (
        vars(old_jb.stats) == vars(new_jb.stats)
        and len(old_frames) == len(new_frames)
        and all(np.array_equal(a, b) for a, b in zip(old_frames, new_frames, strict=True))
    )


def timed(module: ModuleType, events: list[Event], chunks: int) -> float:
    start = time.perf_counter()
    run(module, events)
    return (time.perf_counter() - start) / chunks * 1e6


def load_baseline(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:voicebot/jitter.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader("jitter_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    exec(compile(source, f"{rev}:voicebot/jitter.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="HEAD", help="git revision of the old jitter.py (default HEAD)")
    parser.add_argument("--chunks", type=int, default=3000, help="chunks per timed pass (default 3000)")
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per version (default 15)")
    args = parser.parse_args()
    old, new = load_baseline(args.baseline), voicebot.jitter
    scenarios = {
        "in-order, 20 ms ticker": in_order(args.chunks, (0.0, 0.02, 0.04, 0.06, 0.08)),
        "in-order, server": in_order(args.chunks, (0.0, 0.05)),
        "jittery": jittery(args.chunks),
    }
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, baseline {args.baseline}")
    print(f"µs per chunk over {args.chunks} chunks, min / median of {args.repeats} passes")
    heads = ("old min", "new min", "old med", "new med", "old/new")
    print(f"{'scenario':<24}" + "".join(f" {h:>8}" for h in heads) + "  same")
    for name, events in scenarios.items():
        same = same_behaviour(old, new, events)
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for label, module in (("old", old), ("new", new)):
                times[label].append(timed(module, events, args.chunks))
        old_min, new_min = min(times["old"]), min(times["new"])
        old_med, new_med = statistics.median(times["old"]), statistics.median(times["new"])
        print(
            f"{name:<24} {old_min:8.2f} {new_min:8.2f} {old_med:8.2f} {new_med:8.2f} "
            f"{old_min / new_min:7.2f}x  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
