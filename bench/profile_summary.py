"""Summarise a py-spy ``--format raw`` profile as CPU cost per call-second, by layer and by function.

    python bench/profile_summary.py PROFILE.txt MS_PER_CALL_SECOND

py-spy's raw format is one line per distinct stack, ``frame;frame;… count``, each frame
``function (path:line)``, outermost first; idle samples are left out by default, so the samples are
spread over the CPU the process used. Each function's share of the samples times the measured CPU per
call-second (from ``bench/load.py``'s run with the profiler) gives its cost in µs per call-second.
"Self" counts samples where the function itself was running (including C code it called that has no
Python frame, e.g. numpy or a socket ``send``); "inclusive" counts samples where it was anywhere on
the stack.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

_FRAME: Final = re.compile(r"^(?P<name>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
#: Layers by the path py-spy prints (it shortens paths to the part below a ``sys.path`` entry).
_LAYERS: Final = (
    ("voicebot", "voicebot/"),
    ("handlers (the echo bot)", "handlers/"),
    ("websockets", "websockets/"),
    ("numpy", "numpy/"),
    ("event loop (uvloop C code, sampled as asyncio Runner.run)", "asyncio/runners.py"),
    ("asyncio (Python parts)", "asyncio/"),
    ("json", "json/"),
    ("logging", "logging/"),
)
#: Frames every sample shares (the command line's entry), left out of the inclusive table.
_ENTRY: Final = frozenset({"_run_module_as_main", "_run_code", "<module>", "main", "_serve", "run_server"})
#: What the process was doing, by the first frame below the event loop.
_ACTIVITIES: Final = (
    ("reader: parse, decode, jitter buffer, resample in, frames", "Call._read_loop"),
    ("handler task: on_audio → play_nowait (held until the burst is over)", "Call._handler_main"),
    ("release: a burst of plays resampled out, pushed to the pacer", "Call._release_after_burst"),
    ("ticker: pacing, encode, send (Call.tick)", "Ticker.run"),
)


@dataclass
class Profile:
    """Samples of one py-spy raw profile, aggregated."""

    total: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    layers: Counter[str] = field(default_factory=Counter)
    activities: Counter[str] = field(default_factory=Counter)
    callers: dict[str, Counter[str]] = field(default_factory=dict)


def _layer(path: str) -> str:
    for name, prefix in _LAYERS:
        if path.startswith(prefix):
            return name
    return "other (stdlib, interpreter)"


def _activity(names: list[str]) -> str:
    if "Runner.run" not in names:
        return "outside the event loop"
    below = names[names.index("Runner.run") + 1 :]
    if not below:
        return "event loop itself (uvloop C code: polling, socket I/O, timers, callbacks)"
    for label, name in _ACTIVITIES:
        if below[0] == name:
            return label
    if below[0].startswith("Connection.") or below[0].startswith("Protocol."):
        return "websockets callbacks: receiving, framing, keepalive"
    return f"other: {below[0]}"


def read_profile(path: Path) -> Profile:
    """Aggregate the samples of one profile: per function, per layer, per activity, per caller."""
    profile = Profile()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [m for m in (_FRAME.match(frame) for frame in stack.split(";")) if m is not None]
        if not frames:
            continue
        profile.total += count
        names = [m["name"] for m in frames]
        keys = [f"{m['name']} ({m['path']})" for m in frames]
        profile.own[keys[-1]] += count
        profile.layers[_layer(frames[-1]["path"])] += count
        profile.activities[_activity(names)] += count
        for key in set(keys):
            profile.inclusive[key] += count
        if len(keys) > 1:
            profile.callers.setdefault(keys[-1], Counter())[keys[-2]] += count
    return profile


def summarize_profile(path: Path, cpu_per_call_second: float, top: int = 18) -> str:
    """A text report: costs in µs per call-second by layer, activity and function."""
    profile = read_profile(path)
    total = profile.total
    if not total:
        return f"  no samples in {path}"
    scale = cpu_per_call_second * 1e6 / total  # µs per call-second per sample

    def cost(samples: int) -> str:
        return f"{samples * scale:6.0f} µs/cs {samples / total:6.1%}"

    lines = [f"  {total} samples; {cpu_per_call_second * 1e3:.2f} ms CPU per call-second in this run"]
    lines.append("\n  by layer (self time: the code running when sampled, C code it called included)")
    lines += [f"    {name:<64} {cost(n)}" for name, n in profile.layers.most_common()]
    lines.append("\n  by activity (inclusive, by the first frame below the event loop)")
    lines += [f"    {name:<64} {cost(n)}" for name, n in profile.activities.most_common()]
    lines.append("\n  voicebot and handler functions, inclusive (with everything they called); self after")
    ours = [
        (key, n)
        for key, n in profile.inclusive.items()
        if key.split(" (", 1)[1].startswith(("voicebot/", "handlers/")) and key.split(" (")[0] not in _ENTRY
    ]
    for key, n in sorted(ours, key=lambda item: -item[1])[:top]:
        lines.append(f"    {key:<64} {cost(n)}   self {profile.own.get(key, 0) * scale:5.0f}")
    lines.append("\n  hottest functions, self time, with their callers")
    for key, n in profile.own.most_common(top):
        lines.append(f"    {key:<64} {cost(n)}")
        callers = profile.callers.get(key, Counter())
        if key.split(" (", 1)[1].startswith("voicebot/") or len(callers) > 1:
            for caller, m in callers.most_common(3):
                lines.append(f"      ← {caller:<60} {m * scale:6.0f} µs/cs")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the summary of one profile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("ms_per_call_second", type=float, help="server CPU ms per call-second of that run")
    args = parser.parse_args(argv)
    print(summarize_profile(args.profile, args.ms_per_call_second / 1e3))


if __name__ == "__main__":
    main()
