"""Behaviour of the inbound jitter buffer, driven with explicit ``now`` values (never a clock)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import voicebot.jitter
from voicebot.errors import ConfigError
from voicebot.jitter import JitterBuffer, JitterConfig

Samples = npt.NDArray[np.int16]

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
CHUNK = 800  # Exotel's ~100 ms
TICK = 0.02


def speech(n: int, seed: int = 0) -> Samples:
    """Distinct, non-repeating, mostly loud samples, so misplaced or altered audio shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(-12000, 12000, n).astype(np.int16)


@dataclass(frozen=True)
class Arrival:
    now: float
    samples: Samples
    seq: int | None
    ts: int | None


def exotel_stream(
    audio: Samples,
    *,
    chunk: int = CHUNK,
    rate: int = RATE,
    t0: float = 100.0,
    delays: Sequence[float] | None = None,
    seq: bool = True,
    ts: bool = True,
) -> list[Arrival]:
    """Chunks as Exotel sends them: sent when their last sample exists, seq from 2, ts in ms."""
    out = []
    for i, start in enumerate(range(0, len(audio), chunk)):
        piece = audio[start : start + chunk]
        sent = t0 + (start + len(piece)) / rate
        out.append(
            Arrival(
                now=sent + (delays[i] if delays is not None else 0.0),
                samples=piece,
                seq=i + 2 if seq else None,
                ts=start * 1000 // rate if ts else None,
            )
        )
    return out


def drive(
    jb: JitterBuffer,
    arrivals: Iterable[Arrival],
    *,
    until: float,
    tick: float = TICK,
    first_tick: float = 0.0,
) -> list[tuple[float, list[Samples]]]:
    """Push arrivals in time order and pop on a ticker; pushes at the same instant go first."""
    events: list[tuple[float, int, Arrival | None]] = [(a.now, 0, a) for a in arrivals]
    k = 0
    while first_tick + k * tick <= until:
        events.append((first_tick + k * tick, 1, None))
        k += 1
    events.sort(key=lambda e: (e[0], e[1]))
    pops = []
    for now, kind, arrival in events:
        if arrival is not None:
            jb.push(arrival.samples, sequence_number=arrival.seq, timestamp_ms=arrival.ts, now=now)
        elif kind == 1:
            pops.append((now, jb.pop(now)))
    return pops


def play(
    jb: JitterBuffer, arrivals: Sequence[Arrival], *, tick: float = TICK, first_tick: float = 0.0
) -> Samples:
    """Everything released while ticking until the last arrival, then the flushed rest."""
    pops = drive(jb, arrivals, until=max(a.now for a in arrivals), tick=tick, first_tick=first_tick)
    return np.concatenate([joined(pops), *jb.flush()])


def joined(pops: Iterable[tuple[float, list[Samples]]]) -> Samples:
    frames = [f for _, fs in pops for f in fs]
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


def locate(haystack: Samples, needle: Samples) -> int:
    """Index where ``needle`` starts inside ``haystack`` (its first frame must be unique)."""
    for i in np.flatnonzero(haystack == needle[0]):
        if np.array_equal(haystack[i : i + FRAME], needle[:FRAME]):
            return int(i)
    raise AssertionError("needle not found")


def attenuated(frame: Samples, steps: int) -> Samples:
    return (frame.astype(np.float32) * np.float32(0.5**steps)).astype(np.int16)


# ------------------------------------------------------------------------------------ steady state


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_in_order_stream_comes_out_bit_identical_contiguous_and_steady(rate: int) -> None:
    audio = speech(rate * 5)
    jb = JitterBuffer(rate)
    pops = drive(jb, exotel_stream(audio, chunk=rate // 10, rate=rate), until=106.0, first_tick=100.0)
    out = joined(pops)
    frame = rate // 50
    assert all(len(f) == frame for _, fs in pops for f in fs)
    assert np.array_equal(out[: len(audio)], audio)
    # Once playout started, the clock is steady: exactly one frame per 20 ms tick until audio ends.
    counts = [len(fs) for now, fs in pops if 100.2 < now < 105.0]
    assert counts and all(c == 1 for c in counts)
    stats = jb.stats
    assert (stats.received, stats.late, stats.duplicate, stats.lost) == (50, 0, 0, 0)


def test_first_frame_is_due_at_first_arrival_plus_min_delay() -> None:
    jb = JitterBuffer(RATE)
    assert jb.next_due() is None
    jb.push(speech(CHUNK), sequence_number=2, timestamp_ms=0, now=10.0)
    due = jb.next_due()
    assert due == pytest.approx(10.02)
    assert jb.pop(10.019) == []
    assert len(jb.pop(due)) == 1  # popping exactly at next_due() releases the frame
    assert jb.next_due() == pytest.approx(10.04)
    assert jb.stats.current_depth_ms == pytest.approx(20.0)


def test_pop_returns_every_frame_due_after_a_late_tick() -> None:
    audio = speech(CHUNK)
    jb = JitterBuffer(RATE)
    jb.push(audio, sequence_number=2, timestamp_ms=0, now=1.0)
    frames = jb.pop(1.02 + 0.065)  # a tick 65 ms late: frames due at 1.02, 1.04, 1.06, 1.08
    assert len(frames) == 4
    assert np.array_equal(np.concatenate(frames), audio[: 4 * FRAME])


def test_released_frames_are_never_changed_by_the_buffer_afterwards() -> None:
    audio = speech(10 * CHUNK)
    arrivals = exotel_stream(audio)
    jb = JitterBuffer(RATE)
    for a in arrivals[:3]:
        jb.push(a.samples, sequence_number=a.seq, timestamp_ms=a.ts, now=a.now)
    early = jb.pop(100.35)
    snapshot = [f.copy() for f in early]
    drive(jb, arrivals[3:], until=102.0, first_tick=100.36)
    jb.flush()
    assert all(np.array_equal(f, s) for f, s in zip(early, snapshot, strict=True))


def test_a_consumer_mutating_a_frame_does_not_change_what_the_buffer_conceals() -> None:
    audio = speech(3 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(zero_delay=True))
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=0.0)
    frames = jb.pop(0.0)
    frames[-1][:] = 0  # the handler reuses the frame as scratch space
    jb.push(audio[2 * CHUNK :], sequence_number=4, timestamp_ms=200, now=0.3)
    concealed = jb.pop(0.3)[0]
    assert np.array_equal(concealed, attenuated(audio[CHUNK - FRAME : CHUNK], 1))


# --------------------------------------------------------------------------------------- placement


@pytest.mark.parametrize(("seq", "ts"), [(True, True), (True, False), (False, True)])
def test_out_of_order_chunks_are_put_back_in_order(seq: bool, ts: bool) -> None:
    audio = speech(8 * CHUNK)
    # Chunks 1 and 2 swap, and 5 arrives after 6: each within the 150 ms playout delay.
    delays = [0.0, 0.12, 0.0, 0.0, 0.0, 0.14, 0.0, 0.0]
    jb = JitterBuffer(RATE, JitterConfig(min_delay_ms=150, adaptive=False))
    arrivals = exotel_stream(audio, delays=delays, seq=seq, ts=ts)
    arrival_order = sorted(range(len(arrivals)), key=lambda i: arrivals[i].now)
    assert arrival_order == [0, 2, 1, 3, 4, 6, 5, 7]
    out = play(jb, arrivals, first_tick=100.0)
    assert np.array_equal(out[: len(audio)], audio)
    stats = jb.stats
    assert (stats.late, stats.lost, stats.concealed, stats.duplicate) == (0, 0, 0, 0)


def test_timestamp_noise_within_slack_is_not_mistaken_for_gaps_or_overlaps() -> None:
    audio = speech(20 * CHUNK)
    arrivals = exotel_stream(audio)
    noise = [0, 3, -2, 4, -4, 1, 0, 2, -3, 3, 4, -1, 0, 2, -2, 3, 1, -4, 0, 2]
    noisy = [Arrival(a.now, a.samples, a.seq, (a.ts or 0) + n) for a, n in zip(arrivals, noise, strict=True)]
    jb = JitterBuffer(RATE)
    out = play(jb, noisy, first_tick=100.0)
    assert np.array_equal(out[: len(audio)], audio)
    assert jb.stats.concealed == 0


def test_end_of_chunk_stamps_with_varying_sizes_stay_contiguous_when_sequence_is_adjacent() -> None:
    sizes = [800, 640, 960, 800, 720, 880, 800]
    audio = speech(sum(sizes))
    jb = JitterBuffer(RATE)
    pos, now = 0, 50.0
    for i, n in enumerate(sizes):
        pos += n
        now += n / RATE
        # The stamp marks the chunk's end, not its start: off by a chunk size difference each time.
        jb.push(audio[pos - n : pos], sequence_number=i + 2, timestamp_ms=pos * 1000 // RATE, now=now)
    out = np.concatenate(jb.flush())
    assert np.array_equal(out[: len(audio)], audio)
    assert jb.stats.concealed == 0


def test_chunks_without_sequence_or_timestamp_are_appended_as_they_arrive() -> None:
    audio = speech(10 * CHUNK)
    jb = JitterBuffer(RATE)
    out = play(jb, exotel_stream(audio, seq=False, ts=False), first_tick=100.0)
    assert np.array_equal(out[: len(audio)], audio)
    assert jb.stats.concealed == 0


def test_untimed_chunk_after_the_buffer_ran_dry_reanchors_instead_of_being_late() -> None:
    audio = speech(10 * CHUNK)
    delays = [0.0] * 5 + [0.15] * 5  # chunk 5 onwards arrives 150 ms late: the buffer runs dry once
    jb = JitterBuffer(RATE)
    out = play(jb, exotel_stream(audio, delays=delays, seq=False, ts=False), first_tick=100.0)
    stats = jb.stats
    assert stats.late == 0
    assert stats.concealed > 0
    # All the audio is there, in order, with the underrun filled in between.
    assert np.array_equal(out[: 5 * CHUNK], audio[: 5 * CHUNK])
    gap = stats.concealed * FRAME
    assert np.array_equal(out[5 * CHUNK + gap : 10 * CHUNK + gap], audio[5 * CHUNK :])


def test_untimed_audio_resuming_after_a_long_pause_plays_without_further_underruns() -> None:
    audio = speech(50 * CHUNK)
    delays = [0.0] * 20 + [2.0] * 30  # the sender pauses for two seconds after chunk 20
    jb = JitterBuffer(RATE)
    pops = drive(jb, exotel_stream(audio, delays=delays, seq=False, ts=False), until=107.0, first_tick=100.0)
    resumed = [fs for now, fs in pops if 104.2 <= now < 104.999]  # 40 ticks well after the pause
    assert sum(len(fs) for fs in resumed) == 40  # a steady frame per tick
    out = np.concatenate([joined(pops), *jb.flush()])
    tail = audio[20 * CHUNK :]
    at = locate(out, tail)
    assert np.array_equal(out[at : at + len(tail)], tail)


# ---------------------------------------------------------------------------- loss and concealment


@pytest.mark.parametrize(("seq", "ts"), [(True, True), (False, True), (True, False)])
def test_a_lost_chunk_is_concealed_by_a_decaying_repeat_then_silence(seq: bool, ts: bool) -> None:
    audio = speech(6 * CHUNK)
    arrivals = exotel_stream(audio, seq=seq, ts=ts)
    del arrivals[3]
    jb = JitterBuffer(RATE)
    out = play(jb, arrivals, first_tick=100.0)
    assert len(out) == len(audio)  # the timeline keeps its length: the gap is filled, not skipped
    last = audio[3 * CHUNK - FRAME : 3 * CHUNK]
    gap = out[3 * CHUNK : 4 * CHUNK].reshape(5, FRAME)
    assert np.array_equal(gap[0], attenuated(last, 1))  # -6 dB
    assert np.array_equal(gap[1], attenuated(last, 2))  # -12 dB: conceal_ms = 40 is two frames
    assert not gap[2:].any()  # then silence
    assert np.array_equal(out[: 3 * CHUNK], audio[: 3 * CHUNK])
    assert np.array_equal(out[4 * CHUNK : 6 * CHUNK], audio[4 * CHUNK :])
    stats = jb.stats
    assert (stats.lost, stats.concealed, stats.late) == (1, 5, 0)


@pytest.mark.parametrize(("conceal_ms", "repeated_frames"), [(0, 0), (20, 1), (60, 3)])
def test_conceal_ms_sets_how_long_the_repeat_lasts(conceal_ms: int, repeated_frames: int) -> None:
    audio = speech(3 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(zero_delay=True, conceal_ms=conceal_ms))
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=0.0)
    jb.push(audio[2 * CHUNK :], sequence_number=4, timestamp_ms=200, now=0.3)
    gap = np.concatenate(jb.pop(0.3))[CHUNK : 2 * CHUNK].reshape(5, FRAME)
    last = audio[CHUNK - FRAME : CHUNK]
    for k in range(5):
        expected = attenuated(last, k + 1) if k < repeated_frames else np.zeros(FRAME, np.int16)
        assert np.array_equal(gap[k], expected), k


def test_a_gap_not_aligned_to_frames_conceals_exactly_the_missing_samples() -> None:
    chunk = 720  # 90 ms: chunk edges fall inside frames
    audio = speech(5 * chunk)
    arrivals = exotel_stream(audio, chunk=chunk)
    del arrivals[2]
    jb = JitterBuffer(RATE, JitterConfig(conceal_ms=0))
    out = play(jb, arrivals, first_tick=100.0)
    assert np.array_equal(out[: 2 * chunk], audio[: 2 * chunk])
    assert not out[2 * chunk : 3 * chunk].any()
    assert np.array_equal(out[3 * chunk : 5 * chunk], audio[3 * chunk :])
    # Samples 1440..2160 touch frames 9..13: five frames carry concealment.
    assert jb.stats.concealed == 5


def test_a_concealment_run_continues_across_pops() -> None:
    audio = speech(3 * CHUNK)
    jb = JitterBuffer(RATE)
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=0.1)
    frames = []
    for k in range(1, 9):  # one pop per tick, through an underrun: nothing else arrives in time
        frames += jb.pop(0.1 + k * 0.02)
    last = audio[CHUNK - FRAME : CHUNK]
    assert np.array_equal(frames[5], attenuated(last, 1))
    assert np.array_equal(frames[6], attenuated(last, 2))
    assert not frames[7].any()
    assert jb.stats.concealed == 3
    assert jb.stats.lost == 0  # nothing later arrived: an underrun, not (yet) a known loss


def test_a_chunk_arriving_after_its_media_was_concealed_is_late_and_dropped() -> None:
    audio = speech(10 * CHUNK)
    delays = [0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # chunk 3 turns up 300 ms late
    jb = JitterBuffer(RATE)
    out = play(jb, exotel_stream(audio, delays=delays), first_tick=100.0)
    stats = jb.stats
    assert stats.late == 1
    assert stats.lost == 0  # it did arrive, so it is late rather than lost
    assert stats.concealed == 5
    last = audio[3 * CHUNK - FRAME : 3 * CHUNK]
    assert np.array_equal(out[3 * CHUNK : 3 * CHUNK + FRAME], attenuated(last, 1))  # not the late audio
    assert np.array_equal(out[4 * CHUNK :], audio[4 * CHUNK :])
    assert len(out) == len(audio)


def test_the_future_part_of_a_partly_late_chunk_is_kept() -> None:
    audio = speech(2 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(conceal_ms=0))
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=0.1)
    out = jb.pop(0.2)  # media 0..100 ms released; frames due at 0.12..0.20
    out += jb.pop(0.24)  # two more frames are due and concealed (media 100..140 ms)
    jb.push(audio[CHUNK:], sequence_number=3, timestamp_ms=100, now=0.245)
    out += jb.flush()
    played = np.concatenate(out)
    assert not played[CHUNK : CHUNK + 2 * FRAME].any()
    assert np.array_equal(played[CHUNK + 2 * FRAME : 2 * CHUNK], audio[CHUNK + 2 * FRAME :])
    assert (jb.stats.late, jb.stats.concealed) == (1, 2)


@pytest.mark.parametrize(("seq", "ts"), [(True, True), (True, False), (False, True)])
def test_duplicates_are_dropped_and_counted(seq: bool, ts: bool) -> None:
    audio = speech(6 * CHUNK)
    arrivals = exotel_stream(audio, seq=seq, ts=ts)

    def resent(i: int, now: float) -> Arrival:  # same seq/ts, different audio: must not be played
        return Arrival(now, arrivals[i].samples[::-1].copy(), arrivals[i].seq, arrivals[i].ts)

    # Chunk 2 again while still held; chunk 1 again after it was played.
    again = [resent(2, arrivals[3].now + 0.01), resent(1, arrivals[4].now + 0.01)]
    jb = JitterBuffer(RATE, JitterConfig(min_delay_ms=100, adaptive=False))
    out = joined(drive(jb, arrivals + again, until=101.5, first_tick=100.0))
    assert np.array_equal(out[: len(audio)], audio)
    stats = jb.stats
    assert (stats.duplicate, stats.late, stats.resyncs) == (2, 0, 0)


def test_a_repeat_of_the_first_chunk_of_a_segment_is_read_as_a_restart() -> None:
    # Over one TCP stream Exotel never resends, but a new segment starts again from seq 2 / ts 0.
    audio = speech(4 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(zero_delay=True))
    for i in range(3):
        jb.push(audio[i * CHUNK : (i + 1) * CHUNK], sequence_number=i + 2, timestamp_ms=i * 100, now=i * 0.1)
    jb.push(audio[3 * CHUNK :], sequence_number=2, timestamp_ms=0, now=0.3)
    out = np.concatenate(jb.pop(0.3))
    assert np.array_equal(out, audio)  # played after the held audio, not dropped
    assert (jb.stats.resyncs, jb.stats.duplicate) == (1, 0)


# ------------------------------------------------------------------------------- adaptive delay


def jittery_stream(seconds: float, jitter_s: float, seed: int) -> tuple[Samples, list[Arrival]]:
    audio = speech(int(seconds * RATE), seed)
    rng = np.random.default_rng(seed)
    delays = rng.uniform(-jitter_s, jitter_s, len(audio) // CHUNK) + jitter_s
    return audio, exotel_stream(audio, delays=list(delays))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_under_40ms_jitter_the_delay_rises_into_range_and_underruns_stop(seed: int) -> None:
    audio, arrivals = jittery_stream(60, 0.04, seed)
    jb = JitterBuffer(RATE)
    underruns_at: list[float] = []
    released = []
    events = sorted([(a.now, 0, a) for a in arrivals] + [(100.0 + k * TICK, 1, None) for k in range(3050)])
    for now, _, arrival in events:
        if arrival is not None:
            jb.push(arrival.samples, sequence_number=arrival.seq, timestamp_ms=arrival.ts, now=now)
            assert 20.0 - 1e-6 <= jb.stats.current_depth_ms <= 200.0 + 1e-6
            continue
        before = jb.stats.concealed
        released += jb.pop(now)
        if jb.stats.concealed > before and now < 160.0:
            underruns_at.append(now)
    assert all(t < 110.0 for t in underruns_at)  # adapted within 10 s, then none for 50 s
    stats = jb.stats
    assert 60.0 <= stats.target_depth_ms <= 140.0  # 3 J + 20 ms with J ≈ 2 × 40 / 3 ms
    assert 18.0 <= stats.jitter_ms <= 35.0
    assert stats.current_depth_ms == pytest.approx(stats.target_depth_ms, abs=15.0)
    out = np.concatenate(released)
    assert np.array_equal(out[20 * RATE : 55 * RATE], audio[20 * RATE : 55 * RATE])


def test_without_jitter_the_delay_stays_at_the_minimum() -> None:
    audio, arrivals = jittery_stream(30, 0.0, 4)
    jb = JitterBuffer(RATE)
    out = joined(drive(jb, arrivals, until=131.0, first_tick=100.0))
    stats = jb.stats
    assert stats.target_depth_ms <= 21.0
    assert stats.current_depth_ms <= 21.0
    assert stats.jitter_ms < 1.0
    assert np.array_equal(out[: len(audio)], audio)


def test_delay_bounds_hold_under_extreme_jitter() -> None:
    rng = np.random.default_rng(5)
    audio = speech(20 * RATE, 5)
    raw = rng.uniform(0, 0.6, len(audio) // CHUNK)
    arrivals = exotel_stream(audio, delays=list(raw))
    in_order = []  # a WebSocket is one TCP stream: jitter, but no reordering
    latest = 0.0
    for a in arrivals:
        latest = max(latest, a.now)
        in_order.append(Arrival(latest, a.samples, a.seq, a.ts))
    jb = JitterBuffer(RATE, JitterConfig(min_delay_ms=40, max_delay_ms=120))
    for a in in_order:
        jb.push(a.samples, sequence_number=a.seq, timestamp_ms=a.ts, now=a.now)
        jb.pop(a.now)
        assert 40.0 - 1e-6 <= jb.stats.current_depth_ms <= 120.0 + 1e-6
    assert jb.stats.target_depth_ms == pytest.approx(120.0)


def test_the_minimum_delay_holds_without_jitter() -> None:
    _, arrivals = jittery_stream(10, 0.0, 6)
    jb = JitterBuffer(RATE, JitterConfig(min_delay_ms=60))
    drive(jb, arrivals, until=111.0, first_tick=100.0)
    assert jb.stats.target_depth_ms == pytest.approx(60.0)
    assert jb.stats.current_depth_ms == pytest.approx(60.0)


def test_without_adaptation_the_delay_stays_fixed_despite_jitter() -> None:
    _, arrivals = jittery_stream(20, 0.04, 7)
    jb = JitterBuffer(RATE, JitterConfig(adaptive=False, min_delay_ms=50))
    drive(jb, arrivals, until=121.0, first_tick=100.0)
    stats = jb.stats
    assert stats.jitter_ms > 15.0
    assert stats.target_depth_ms == pytest.approx(50.0)
    assert stats.current_depth_ms == pytest.approx(50.0)


# ------------------------------------------------------------------------------ restarts and jumps


def restarted_stream(first_chunks: int, total: int, *, seq: bool, ts: bool) -> tuple[Samples, list[Arrival]]:
    """A stream whose sequence numbers and timestamps start over after ``first_chunks`` chunks."""
    audio = speech(total * CHUNK, 8)
    arrivals = exotel_stream(audio, seq=seq, ts=ts)
    restarted = []
    for i, a in enumerate(arrivals):
        j = i if i < first_chunks else i - first_chunks
        restarted.append(Arrival(a.now, a.samples, j + 2 if seq else None, j * 100 if ts else None))
    return audio, restarted


@pytest.mark.parametrize("first_chunks", [4, 30])
@pytest.mark.parametrize(("seq", "ts"), [(True, True), (True, False), (False, True)])
def test_a_restarted_stream_reanchors_and_keeps_playing(first_chunks: int, seq: bool, ts: bool) -> None:
    audio, arrivals = restarted_stream(first_chunks, 60, seq=seq, ts=ts)
    jb = JitterBuffer(RATE)
    out = joined(drive(jb, arrivals, until=107.0, first_tick=100.0))
    stats = jb.stats
    assert stats.resyncs == 1
    assert (stats.late, stats.duplicate, stats.lost) == (0, 0, 0)
    assert np.array_equal(out[: len(audio)], audio)  # the new segment follows on seamlessly


def test_a_sender_stuck_behind_our_clock_is_reanchored_within_a_second() -> None:
    audio = speech(80 * CHUNK, 9)
    arrivals = exotel_stream(audio)
    # From chunk 30 on, the stamps lag 1.5 s: every chunk repeats media already played.
    lagging = [
        Arrival(a.now, a.samples, a.seq, (a.ts or 0) - (1500 if i >= 30 else 0))
        for i, a in enumerate(arrivals)
    ]
    jb = JitterBuffer(RATE)
    out = joined(drive(jb, lagging, until=109.0, first_tick=100.0))
    stats = jb.stats
    assert stats.resyncs == 1
    assert 9 <= stats.duplicate <= 11  # a second's worth of chunks, then re-anchored
    assert np.array_equal(out[: 30 * CHUNK], audio[: 30 * CHUNK])
    tail = audio[41 * CHUNK :]  # from the second after the lag began, the audio plays again, unbroken
    at = locate(out, tail)
    assert np.array_equal(out[at : at + len(tail)], tail)


def test_an_absurd_forward_jump_reanchors_instead_of_playing_minutes_of_silence() -> None:
    audio = speech(40 * CHUNK, 10)
    arrivals = exotel_stream(audio)
    jumped = [
        Arrival(a.now, a.samples, a.seq, (a.ts or 0) + (600_000 if i >= 20 else 0))
        for i, a in enumerate(arrivals)
    ]
    jb = JitterBuffer(RATE)
    out = play(jb, jumped, first_tick=100.0)
    assert jb.stats.resyncs == 1
    assert jb.stats.concealed == 0
    assert np.array_equal(out, audio)


def test_a_moderate_forward_jump_is_a_gap() -> None:
    audio = speech(10 * CHUNK, 11)
    arrivals = exotel_stream(audio)
    jumped = [
        Arrival(a.now, a.samples, a.seq, (a.ts or 0) + (500 if i >= 5 else 0)) for i, a in enumerate(arrivals)
    ]
    jb = JitterBuffer(RATE, JitterConfig(zero_delay=True))
    out = joined(drive(jb, jumped, until=102.0, first_tick=100.0))
    assert jb.stats.resyncs == 0
    assert not out[5 * CHUNK + 2 * FRAME : 10 * CHUNK].any()  # 500 ms of (concealed) silence
    assert np.array_equal(out[10 * CHUNK : 15 * CHUNK], audio[5 * CHUNK :])


# ------------------------------------------------------------------------------------- zero delay


def test_zero_delay_releases_complete_frames_immediately_and_holds_the_remainder() -> None:
    audio = speech(2 * CHUNK + 50)
    jb = JitterBuffer(RATE, JitterConfig(zero_delay=True))
    assert jb.next_due() is None
    jb.push(audio[:850], sequence_number=2, timestamp_ms=0, now=5.0)
    assert jb.next_due() == 5.0
    first = jb.pop(0.0)  # the clock is ignored
    assert len(first) == 5
    assert jb.next_due() is None  # 50 samples held: no complete frame
    jb.push(audio[850:], sequence_number=3, timestamp_ms=106, now=5.1)
    second = jb.pop(5.1)
    assert len(second) == 5
    assert np.array_equal(np.concatenate(first + second + jb.flush())[: len(audio)], audio)


def test_zero_delay_fills_a_gap_as_soon_as_later_audio_arrives_and_drops_the_late_chunk() -> None:
    audio = speech(3 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(zero_delay=True))
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=0.0)
    assert len(jb.pop(0.0)) == 5
    assert jb.pop(1.0) == []  # nothing more until audio arrives, whatever the time
    jb.push(audio[2 * CHUNK :], sequence_number=4, timestamp_ms=200, now=0.3)
    frames = jb.pop(0.3)
    assert len(frames) == 10
    assert np.array_equal(np.concatenate(frames[5:]), audio[2 * CHUNK :])
    jb.push(audio[CHUNK : 2 * CHUNK], sequence_number=3, timestamp_ms=100, now=0.31)
    assert jb.pop(0.31) == []
    stats = jb.stats
    assert (stats.late, stats.lost, stats.concealed, stats.current_depth_ms) == (1, 0, 5, 0.0)


# ------------------------------------------------------------------------------ flush, reset, stats


def test_flush_returns_everything_held_with_the_last_frame_zero_padded() -> None:
    audio = speech(CHUNK + 100)
    jb = JitterBuffer(RATE)
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=1.0)
    jb.push(audio[CHUNK:], sequence_number=3, timestamp_ms=100, now=1.1)
    frames = jb.flush()  # not due yet: flush does not wait
    assert len(frames) == 6 and all(len(f) == FRAME for f in frames)
    out = np.concatenate(frames)
    assert np.array_equal(out[: len(audio)], audio)
    assert not out[len(audio) :].any()
    assert jb.flush() == []
    assert jb.pop(100.0) == []
    assert jb.next_due() is None
    assert jb.stats.received == 2


def test_flush_conceals_gaps_before_the_newest_audio() -> None:
    audio = speech(3 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(conceal_ms=0))
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=1.0)
    jb.push(audio[2 * CHUNK :], sequence_number=4, timestamp_ms=200, now=1.2)
    out = np.concatenate(jb.flush())
    assert np.array_equal(out[:CHUNK], audio[:CHUNK])
    assert not out[CHUNK : 2 * CHUNK].any()
    assert np.array_equal(out[2 * CHUNK :], audio[2 * CHUNK :])
    assert (jb.stats.lost, jb.stats.concealed) == (1, 5)


def test_reset_drops_held_audio_and_the_next_chunk_starts_a_new_timeline() -> None:
    audio = speech(2 * CHUNK)
    jb = JitterBuffer(RATE)
    jb.push(audio[:CHUNK], sequence_number=2, timestamp_ms=0, now=1.0)
    jb.reset()
    assert jb.next_due() is None
    assert jb.pop(5.0) == []
    assert jb.stats.buffered_ms == 0.0
    jb.push(audio[CHUNK:], sequence_number=2, timestamp_ms=0, now=7.0)  # same seq/ts: not a duplicate
    assert jb.next_due() == pytest.approx(7.02)
    assert np.array_equal(np.concatenate(jb.flush()), audio[CHUNK:])
    stats = jb.stats
    assert (stats.received, stats.duplicate) == (2, 0)


def test_stats_report_what_is_held() -> None:
    audio = speech(3 * CHUNK)
    jb = JitterBuffer(RATE)
    for i in range(3):
        jb.push(
            audio[i * CHUNK : (i + 1) * CHUNK], sequence_number=i + 2, timestamp_ms=i * 100, now=1.0 + i * 0.1
        )
    stats = jb.stats
    assert stats.received == 3
    assert stats.buffered_ms == pytest.approx(300.0)
    jb.pop(1.02 + 0.04)  # three frames
    assert jb.stats.buffered_ms == pytest.approx(240.0)


# ------------------------------------------------------------------------------------------ bounds


def test_a_flood_of_future_chunks_is_capped_and_counted() -> None:
    audio = speech(100 * CHUNK)
    jb = JitterBuffer(RATE, JitterConfig(capacity_ms=1000))
    for a in exotel_stream(audio):
        jb.push(a.samples, sequence_number=a.seq, timestamp_ms=a.ts, now=100.0)  # 10 s of audio at once
    stats = jb.stats
    assert stats.buffered_ms <= 1000.0
    assert stats.overflow == 90
    out = np.concatenate(jb.flush())
    assert np.array_equal(out, audio[: 10 * CHUNK])


def test_an_empty_chunk_is_counted_and_ignored() -> None:
    jb = JitterBuffer(RATE)
    jb.push(np.zeros(0, np.int16), sequence_number=2, timestamp_ms=0, now=1.0)
    assert jb.next_due() is None
    assert jb.stats.received == 1


# --------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"frame_ms": 0}, "frame_ms"),
        ({"frame_ms": 20.0}, "frame_ms"),
        ({"min_delay_ms": -1}, "min_delay_ms"),
        ({"min_delay_ms": 300}, "min_delay_ms"),
        ({"conceal_ms": -5}, "conceal_ms"),
        ({"slack_ms": -1}, "slack_ms"),
        ({"max_gap_ms": 0}, "max_gap_ms"),
        ({"capacity_ms": 100}, "capacity_ms"),
        ({"adaptive": 1}, "adaptive"),
        ({"zero_delay": "yes"}, "zero_delay"),
    ],
)
def test_bad_configuration_is_rejected_by_name(kwargs: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        JitterConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_rate_or_a_frame_that_is_not_whole_samples_is_rejected() -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        JitterBuffer(0)
    with pytest.raises(ConfigError, match="frame_ms"):
        JitterBuffer(22050, JitterConfig(frame_ms=1))
    assert JitterBuffer(22050).frame_samples == 441


def test_bad_samples_are_rejected() -> None:
    jb = JitterBuffer(RATE)
    with pytest.raises(ValueError, match="samples"):
        jb.push(np.zeros(10, np.float32), sequence_number=2, timestamp_ms=0, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="samples"):
        jb.push(np.zeros((2, 10), np.int16), sequence_number=2, timestamp_ms=0, now=0.0)
    with pytest.raises(ValueError, match="timestamp_ms"):
        jb.push(np.zeros(10, np.int16), sequence_number=2, timestamp_ms="0", now=0.0)  # type: ignore[arg-type]


def test_the_module_stays_in_the_core_layer() -> None:
    tree = ast.parse(Path(voicebot.jitter.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "bisect",
        "collections",
        "dataclasses",
        "math",
        "numpy",
        "typing",
        "voicebot",
    }


# -------------------------------------------------------------------------------------- properties

DELAY_S = 0.4  # > the largest chunk (150 ms) plus the largest arrival delay (250 ms)


@st.composite
def permuted_streams(draw: st.DrawFn) -> tuple[Samples, list[Arrival], bool, bool]:
    mode = draw(st.sampled_from(["both", "ts", "seq"]))
    count = draw(st.integers(1, 14))
    if mode == "seq":  # sequence numbers alone can only place equal chunks exactly
        sizes = [draw(st.integers(20, 150)) * 8] * count
    else:
        sizes = [draw(st.integers(20, 150)) * 8 for _ in range(count)]  # whole ms, as Exotel stamps
    delays = [draw(st.floats(0.0, 0.25)) for _ in range(count)]
    audio = speech(sum(sizes), draw(st.integers(0, 2**16)))
    arrivals, pos = [], 0
    for i, (n, d) in enumerate(zip(sizes, delays, strict=True)):
        pos += n
        arrivals.append(
            Arrival(
                now=50.0 + pos / RATE + d,
                samples=audio[pos - n : pos],
                seq=i + 2 if mode != "ts" else None,
                ts=(pos - n) * 1000 // RATE if mode != "seq" else None,
            )
        )
    return audio, arrivals, mode != "ts", mode != "seq"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(permuted_streams(), st.floats(0.005, 0.05))
def test_any_arrival_order_within_the_delay_window_releases_the_original_audio(
    stream: tuple[Samples, list[Arrival], bool, bool], tick: float
) -> None:
    audio, arrivals, _, _ = stream
    delay_ms = int(DELAY_S * 1000)
    jb = JitterBuffer(RATE, JitterConfig(adaptive=False, min_delay_ms=delay_ms, max_delay_ms=delay_ms))
    pops = drive(jb, arrivals, until=max(a.now for a in arrivals) + 0.1, tick=tick, first_tick=50.0)
    out = np.concatenate([joined(pops), *jb.flush()])
    assert np.array_equal(out[: len(audio)], audio)
    assert not out[len(audio) :].any()
    stats = jb.stats
    assert (stats.late, stats.lost, stats.duplicate, stats.concealed, stats.resyncs) == (0, 0, 0, 0, 0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2000),
            st.one_of(st.none(), st.integers(-5, 60)),
            st.one_of(st.none(), st.integers(-1000, 8000)),
            st.floats(0.0, 0.5),
            st.booleans(),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_any_input_yields_whole_frames_and_bounded_memory(
    pushes: list[tuple[int, int | None, int | None, float, bool]], zero_delay: bool
) -> None:
    config = JitterConfig(zero_delay=zero_delay, capacity_ms=1000, max_gap_ms=500)
    jb = JitterBuffer(RATE, config)
    now = 0.0
    for length, seq, ts, step, pop in pushes:
        now += step
        jb.push(speech(length), sequence_number=seq, timestamp_ms=ts, now=now)
        assert jb.stats.buffered_ms <= 1000.0
        if pop:
            assert all(len(f) == FRAME and f.dtype == np.int16 for f in jb.pop(now))
        due = jb.next_due()
        assert due is None or due == due  # never NaN
    assert all(len(f) == FRAME for f in jb.flush())


# A stream that starts in order and then goes wrong in every way the buffer handles, one chunk at a time.
_PERTURBATIONS = ["next"] * 8 + [
    "skip",  # lost
    "repeat",  # sent twice, the copy up to 300 ms later
    "late",  # arrives after its media was due
    "overtaken",  # held back just enough for the next chunk to arrive first
    "restart",  # sequence numbers and timestamps start again from the beginning
    "noise",  # timestamp off by up to a few ms either way
    "untimed",
    "unnumbered",
    "odd_length",
    "stall",  # this and every later chunk delayed: the buffer runs dry, then a burst
    "ahead",  # this and every later chunk sent early: the buffer fills up, maybe beyond its capacity
    "skewed",  # timestamp off by up to 150 ms either way
    "jump",  # timestamps jump ahead (a moderate gap or an absurd one)
]


@st.composite
def perturbed_streams(draw: st.DrawFn) -> tuple[JitterConfig, list[Arrival], list[float]]:
    config = draw(
        st.sampled_from(
            [
                JitterConfig(),
                JitterConfig(zero_delay=True),
                JitterConfig(adaptive=False, min_delay_ms=60, max_delay_ms=60),
                JitterConfig(max_delay_ms=100, capacity_ms=300, max_gap_ms=400, conceal_ms=20),
            ]
        )
    )
    count = draw(st.integers(1, 40))
    audio = speech(count * 150 * 8, draw(st.integers(0, 2**16)))
    arrivals: list[Arrival] = []
    pos = seq = ts = 0
    shift = 0.0
    for _ in range(count):
        action = draw(st.sampled_from(_PERTURBATIONS))
        length = draw(st.integers(1, 150)) * 8 if action == "odd_length" else CHUNK
        if action == "restart":
            seq = ts = 0
        if action == "jump":
            ts += draw(st.sampled_from([300, 3000]))
        if action == "stall":
            shift += draw(st.floats(0.1, 1.5))
        if action == "ahead":
            shift -= draw(st.floats(0.1, 1.0))
        stamp_error = {"noise": 12, "skewed": 150}.get(action, 0)
        delay = {"late": draw(st.floats(0.1, 1.5)), "overtaken": 0.15}.get(action, 0.0)
        now = 10.0 + (pos + length) / RATE + 0.003 + shift + delay
        arrival = Arrival(
            now=now,
            samples=audio[pos : pos + length],
            seq=None if action == "unnumbered" else seq + 2,
            ts=None if action == "untimed" else ts + draw(st.integers(-stamp_error, stamp_error)),
        )
        if action != "skip":
            arrivals.append(arrival)
        if action == "repeat":
            again = now + draw(st.floats(0.0, 0.3))
            arrivals.append(Arrival(again, arrival.samples, arrival.seq, arrival.ts))
        pos += length
        seq += 1
        ts += length * 1000 // RATE
    tick = draw(st.sampled_from([0.007, 0.02, 0.05, 0.1]))
    end = max(a.now for a in arrivals) + 0.3 if arrivals else 10.0
    ticks = [10.0 + k * tick for k in range(int((end - 10.0) / tick) + 1)]
    return config, arrivals, ticks


def _arrival(samples: Samples, seq: int, ts: int, now: float) -> Arrival:
    return Arrival(now=now, samples=samples, seq=seq, ts=ts)


_AUDIO = speech(6000, seed=7)
_TICKS = [1.0 + k * 0.02 for k in range(20)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(perturbed_streams(), st.booleans())
# Partly late chunk, then a late one stamped after it ending short of the newest media, then the next:
# it continues the late chunk, which is not where the newest media ends.
@example(
    (
        JitterConfig(),
        [
            _arrival(_AUDIO[:800], 2, 0, 1.0),
            _arrival(_AUDIO[800:1160], 3, 100, 1.15),
            _arrival(_AUDIO[1160:1320], 4, 120, 1.151),
            _arrival(_AUDIO[1320:], 5, 140, 1.152),
        ],
        [1.14, *_TICKS[8:]],
    ),
    False,
)
# In order, but all at once: beyond the capacity.
@example(
    (
        JitterConfig(max_delay_ms=100, capacity_ms=300),
        [_arrival(_AUDIO[i * CHUNK : (i + 1) * CHUNK], i + 2, i * 100, 1.0) for i in range(5)],
        _TICKS,
    ),
    False,
)
# The newest chunk (stamped back in time) ends at the newest media, but an older one is nearer in time
# to the next chunk.
@example(
    (
        JitterConfig(),
        [
            _arrival(_AUDIO[:800], 2, 0, 1.0),
            _arrival(_AUDIO[800:1600], 3, 100, 1.1),
            _arrival(_AUDIO[1600:3200], 4, 60, 1.101),
            _arrival(_AUDIO[3200:4000], 5, 250, 1.102),
        ],
        _TICKS[10:],
    ),
    False,
)
# Seventy 10 ms chunks at once, which are more than the received spans kept if each had its own, then a
# duplicate of one of the oldest still held.
@example(
    (
        JitterConfig(),
        [
            *(_arrival(_AUDIO[i * 80 : (i + 1) * 80], i + 2, i * 10, 1.0) for i in range(70)),
            _arrival(_AUDIO[400:480], 7, 50, 1.021),
        ],
        _TICKS[1:],
    ),
    False,
)
# A duplicate, then new media (which ends the run of drops), then another duplicate over a second later.
@example(
    (
        JitterConfig(),
        [
            _arrival(_AUDIO[:800], 2, 0, 1.0),
            _arrival(_AUDIO[800:1600], 3, 100, 1.1),
            _arrival(_AUDIO[:800], 2, 0, 1.15),
            _arrival(_AUDIO[1600:2400], 4, 200, 1.2),
            _arrival(_AUDIO[800:1600], 3, 100, 2.3),
        ],
        [1.0 + k * 0.1 for k in range(15)],
    ),
    False,
)
# A chunk with the next sequence number but the same timestamp as a short one before it.
@example(
    (JitterConfig(), [_arrival(_AUDIO[:40], 2, 0, 1.0), _arrival(_AUDIO[40:840], 3, 0, 1.001)], _TICKS),
    False,
)
def test_the_fast_paths_release_the_same_frames_and_count_the_same_as_the_general_path(
    stream: tuple[JitterConfig, list[Arrival], list[float]], pop_after_push: bool
) -> None:
    # The in-order push and the single-span pop have shortcuts; with them switched off every chunk and
    # every pop goes the general way. Both must agree on everything a caller can see, at every step.
    # A third buffer is read with pop_audio, which must give the same frames back to back.
    config, arrivals, ticks = stream
    fast, general, streamed = (
        JitterBuffer(RATE, config),
        JitterBuffer(RATE, config),
        JitterBuffer(RATE, config),
    )
    general._disable_fast_paths = True
    events = sorted([(a.now, 0, a) for a in arrivals] + [(t, 1, None) for t in ticks], key=lambda e: e[:2])
    for now, _, arrival in events:
        if arrival is not None:
            for jb in (fast, general, streamed):
                jb.push(arrival.samples, sequence_number=arrival.seq, timestamp_ms=arrival.ts, now=now)
        if arrival is None or pop_after_push:
            fast_frames, general_frames = fast.pop(now), general.pop(now)
            assert len(fast_frames) == len(general_frames)
            assert all(np.array_equal(f, g) for f, g in zip(fast_frames, general_frames, strict=True))
            block = streamed.pop_audio(now)
            if fast_frames:
                assert block is not None
                np.testing.assert_array_equal(block, np.concatenate(fast_frames))
            else:
                assert block is None
        assert fast.next_due() == general.next_due()
        assert fast.stats == general.stats
    fast_rest, general_rest = fast.flush(), general.flush()
    assert len(fast_rest) == len(general_rest)
    assert all(np.array_equal(f, g) for f, g in zip(fast_rest, general_rest, strict=True))
