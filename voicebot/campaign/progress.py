"""The campaign's progress on a terminal: one line, redrawn in place, or a line now and then in a log.

Pure apart from the stream written to: the time comes in as ``now``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from voicebot.campaign.store import Progress

__all__ = ["ProgressLine", "format_progress", "format_summary"]


def format_progress(progress: Progress) -> str:
    """``dialed 12 | in progress 3 | completed 8 | failed 2 | remaining 10/20``."""
    return (
        f"dialed {progress.dialed} | in progress {progress.in_progress} | completed {progress.completed} | "
        f"failed {progress.failed} | remaining {progress.remaining}/{progress.total}"
    )


def format_summary(progress: Progress) -> str:
    """A multi-line summary for ``campaign status``: totals, then tables of statuses and outcomes."""
    lines = [
        f"contacts {progress.total}: {progress.done} done ({progress.completed} completed, "
        f"{progress.failed} not), {progress.dialing} dialing, {progress.pending} waiting; "
        f"{progress.dialed} calls placed, {progress.in_progress} channel(s) in use",
    ]
    for title, counts in (("status", progress.statuses), ("outcome", progress.outcomes)):
        if not counts:
            continue
        width = max(len(title), *(len(name) for name in counts))
        lines.append("")
        lines.append(f"{title:<{width}}  contacts")
        for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"{name:<{width}}  {count:>8}")
    return "\n".join(lines)


class ProgressLine:
    """Writes :func:`format_progress` to ``stream``: on a terminal (``tty``) the line is redrawn in
    place whenever it changes; otherwise a full line is written when it changes, at most once every
    ``interval`` seconds, so logs stay readable."""

    def __init__(self, stream: TextIO, *, tty: bool, interval: float = 10.0) -> None:
        self._stream = stream
        self._tty = tty
        self._interval = interval
        self._last_text = ""
        self._last_at: float | None = None
        self._width = 0

    def update(self, progress: Progress, now: float) -> None:
        """Show ``progress`` (if it changed, and, off a terminal, if ``interval`` has passed)."""
        text = format_progress(progress)
        if text == self._last_text:
            return
        if not self._tty and self._last_at is not None and now - self._last_at < self._interval:
            return
        self._last_text, self._last_at = text, now
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{padding}")
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self, progress: Progress) -> None:
        """Show the final counts and end the line."""
        text = format_progress(progress)
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{padding}\n")
        elif text != self._last_text:
            self._stream.write(text + "\n")
        self._stream.flush()
