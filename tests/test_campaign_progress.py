"""The progress line and the ``campaign status`` summary, with explicit ``now`` values."""

from __future__ import annotations

import io

from voicebot.campaign.progress import ProgressLine, format_progress, format_summary
from voicebot.campaign.store import Progress


def counts(done: int, completed: int, dialing: int = 0, total: int = 20) -> Progress:
    return Progress(
        total=total,
        pending=total - done - dialing,
        dialing=dialing,
        done=done,
        completed=completed,
        failed=done - completed,
        dialed=done + dialing,
        in_progress=dialing,
        statuses={"completed": completed, "busy": done - completed},
        outcomes={"confirmed": completed},
    )


def test_the_line_shows_dialed_in_progress_completed_failed_and_remaining() -> None:
    assert format_progress(counts(done=5, completed=3, dialing=2)) == (
        "dialed 7 | in progress 2 | completed 3 | failed 2 | remaining 15/20"
    )


def test_on_a_terminal_the_line_is_redrawn_in_place_and_a_shorter_one_blanks_the_rest() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=True)
    line.update(counts(done=5, completed=3, dialing=2), 0.0)
    line.update(counts(done=5, completed=3, dialing=2), 0.1)  # unchanged: nothing written
    line.update(counts(done=9, completed=9, dialing=0, total=9), 0.2)
    line.finish(counts(done=9, completed=9, total=9))
    first, second, final = out.getvalue().split("\r")[1:]
    assert "\n" not in first + second and final.endswith("\n")
    assert len(second) == len(first) and second.rstrip() == format_progress(counts(9, 9, 0, 9))


def test_in_a_log_a_line_is_written_at_most_every_interval() -> None:
    out = io.StringIO()
    line = ProgressLine(out, tty=False, interval=10.0)
    for second in range(25):
        line.update(counts(done=second % 20, completed=0), float(second))
    line.finish(counts(done=20, completed=20))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 0, 10 and 20 s, and the final counts
    assert lines[-1] == format_progress(counts(done=20, completed=20))
    assert "\r" not in out.getvalue()


def test_the_summary_has_status_and_outcome_tables() -> None:
    text = format_summary(counts(done=5, completed=3, dialing=2))
    assert text.splitlines()[0].startswith("contacts 20: 5 done (3 completed, 2 not), 2 dialing, 13 waiting")
    assert "status     contacts" in text and "completed         3" in text
    assert "outcome    contacts" in text and "confirmed         3" in text
