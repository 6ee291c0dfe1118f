"""Per-message cost of ``voicebot.protocol``'s hot path, this tree next to a git revision, in one run.

    python bench/protocol_hot.py [--baseline REV] [--repeats N] [--number N]

Inbound rows time ``parse_message`` and ``StreamProtocol.receive`` on one 100 ms ``media`` message
(1 600 bytes of PCM16 at 8 kHz, base64 in the payload), the message Exotel sends ten times a second per
call, in the wire forms §4.3 and §12 allow: the documented one (snake_case, string scalars, compact), the
same with Python's default ``", "``/``": "`` spacing, camelCase keys, integer scalars, and one without
``chunk``/``timestamp``. The outbound row times ``StreamProtocol.media`` on a 1 600-byte payload.

The baseline is ``voicebot/protocol.py`` as of ``--baseline`` (default ``HEAD``), loaded from
``git show`` into its own module object next to the working tree's (``--baseline 226133e`` is the tree
before the documented-layout fast path); both share ``voicebot.events``, so
their results are compared for equality (and outbound text for byte identity) before anything is timed.
Times are µs per call from ``time.perf_counter``, as the minimum and median over ``--repeats``
interleaved passes; the ratio is baseline / this tree from the same run.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import random
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from voicebot import protocol  # noqa: E402

SID = "4b1f0c9e2d7a4e55a0c3f2b8d61e9a70"
PAYLOAD = random.Random(7).randbytes(1600)  # 100 ms of PCM16 at 8 kHz
B64 = base64.b64encode(PAYLOAD).decode("ascii")
COMPACT = (",", ":")
START = json.dumps(
    {
        "event": "start",
        "sequence_number": "1",
        "stream_sid": SID,
        "start": {"stream_sid": SID, "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000"}},
    }
)


def media_text(
    *, camel: bool = False, ints: bool = False, positions: bool = True, separators: tuple[str, str] = COMPACT
) -> str:
    """One inbound ``media`` message carrying ``PAYLOAD`` in the wire form the flags describe."""
    seq_key, sid_key = ("sequenceNumber", "streamSid") if camel else ("sequence_number", "stream_sid")
    media: dict[str, object] = {"payload": B64}
    if positions:
        media = {"chunk": 11 if ints else "11", "timestamp": 1100 if ints else "1100", "payload": B64}
    message = {"event": "media", seq_key: 12 if ints else "12", sid_key: SID, "media": media}
    return json.dumps(message, separators=separators)


FORMS: dict[str, str] = {
    "documented": media_text(),
    "spaced": media_text(separators=(", ", ": ")),
    "camelCase": media_text(camel=True),
    "int scalars": media_text(ints=True),
    "no chunk/timestamp": media_text(positions=False),
}


def load_baseline(revision: str) -> types.ModuleType:
    """``voicebot/protocol.py`` as of ``revision``, as a module object of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:voicebot/protocol.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("voicebot_protocol_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up while building the class
    exec(compile(source, f"{revision}:voicebot/protocol.py", "exec"), module.__dict__)
    return module


def streaming(module: Any) -> Any:
    """A ``StreamProtocol`` of ``module`` that has seen ``start`` (8 kHz PCM16)."""
    stream = module.StreamProtocol()
    stream.receive(START)
    return stream


def pass_time(call: Callable[[Any], object], arg: Any, number: int) -> float:
    """Mean µs per call of ``call(arg)`` over ``number`` calls."""
    started = time.perf_counter()
    for _ in range(number):
        call(arg)
    return (time.perf_counter() - started) / number * 1e6


def compare(
    name: str, old: Callable[[Any], object], new: Callable[[Any], object], arg: Any, args: argparse.Namespace
) -> None:
    """Print one row: baseline and this tree, min and median µs per call, and their ratios."""
    old(arg), new(arg)  # warm caches and lazy allocations
    old_times: list[float] = []
    new_times: list[float] = []
    for _ in range(args.repeats):  # interleaved, so drift on a busy machine hits both alike
        old_times.append(pass_time(old, arg, args.number))
        new_times.append(pass_time(new, arg, args.number))
    old_min, new_min = min(old_times), min(new_times)
    old_med, new_med = statistics.median(old_times), statistics.median(new_times)
    print(
        f"{name:<38} {old_min:8.2f} {new_min:8.2f} {old_min / new_min:6.2f}x"
        f"   {old_med:8.2f} {new_med:8.2f} {old_med / new_med:6.2f}x"
    )


def main() -> None:
    """Check baseline and tree agree, then print the timing table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against (HEAD)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved passes per row (15)")
    parser.add_argument("--number", type=int, default=5000, help="calls per pass (5000)")
    args = parser.parse_args()
    old = load_baseline(args.baseline)

    for form, text in FORMS.items():
        if old.parse_message(text) != protocol.parse_message(text):
            raise SystemExit(f"{form}: baseline and tree parse differently")
    old_stream, new_stream = streaming(old), streaming(protocol)
    if old_stream.media(PAYLOAD) != new_stream.media(PAYLOAD):
        raise SystemExit("outbound media: baseline and tree write different text")

    print(f"python {platform.python_version()} on {platform.machine()}, baseline {args.baseline}")
    print(f"{args.repeats} passes of {args.number} calls; µs per call")
    print(f"{'':<38} {'old min':>8} {'new min':>8} {'ratio':>7}   {'old med':>8} {'new med':>8} {'ratio':>7}")
    for form, text in FORMS.items():
        compare(f"parse_message, {form}", old.parse_message, protocol.parse_message, text, args)
    for form in ("documented", "camelCase", "int scalars"):
        old_receive, new_receive = streaming(old).receive, streaming(protocol).receive
        compare(f"receive, {form}", old_receive, new_receive, FORMS[form], args)
    compare("media() out, 1600 B", old_stream.media, new_stream.media, PAYLOAD, args)


if __name__ == "__main__":
    main()
