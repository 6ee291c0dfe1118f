"""Outbound chunking and pacing (voicebot.pacing), with explicit ``now`` values only.

What a caller on a real call would notice: chunk sizes Exotel accepts, audio that arrives intact and
continuous, short audio neither sent early nor stuck, marks never ahead of their audio, a lead that is
never exceeded, no silence caused by late sends, and no burst after an idle gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebot.errors import ConfigError
from voicebot.events import SUPPORTED_RATES, Encoding
from voicebot.pacing import (
    MAX_CHUNK_BYTES,
    Chunker,
    ChunkPlan,
    OutboundChunk,
    OutboundItem,
    OutboundMark,
    OutboundStream,
    Pacer,
)

COMBOS = [(rate, encoding) for rate in SUPPORTED_RATES for encoding in Encoding]
COMBO_IDS = [f"{rate}-{encoding.value}" for rate, encoding in COMBOS]
combos = st.sampled_from(COMBOS)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS = 1e-9


def audio(count: int, seed: int = 0) -> np.ndarray:
    """Distinct non-zero samples, so that padding, loss and reordering all show."""
    values = np.random.default_rng(seed).integers(1, 30000, size=count, dtype=np.int16)
    signs = np.where(np.arange(count) % 2 == 0, 1, -1).astype(np.int16)
    return (values * signs).astype(np.int16)


def chunks(items: Iterable[OutboundItem]) -> list[OutboundChunk]:
    return [item for item in items if isinstance(item, OutboundChunk)]


def content(sent: Sequence[OutboundChunk]) -> np.ndarray:
    """The pushed audio the chunks carry, padding removed."""
    if not sent:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([chunk.samples[: chunk.audio_samples] for chunk in sent])


def assert_legal(chunk: OutboundChunk, rate: int, encoding: Encoding, nominal_samples: int) -> None:
    """Exotel's rules, restated from the protocol doc rather than read back from the plan."""
    frame = rate // 50
    wire_bytes = chunk.length * encoding.bytes_per_sample
    assert chunk.samples.dtype == np.int16 and chunk.samples.ndim == 1
    assert chunk.length % frame == 0, f"{chunk.length} samples is not whole 20 ms frames"
    assert chunk.length >= 1600, "shorter than 3200 B of PCM16 lasts"
    assert chunk.length <= nominal_samples
    assert wire_bytes <= MAX_CHUNK_BYTES
    if encoding is Encoding.PCM16:
        assert wire_bytes % 320 == 0 and wire_bytes >= 3200
    assert 0 <= chunk.padding < chunk.length
    assert not chunk.samples[chunk.audio_samples :].any(), "padding must be silence"
    if chunk.padding:
        # Padding only ever fills the last frame, or tops a remainder up to the floor.
        short_of_floor = chunk.audio_samples < 1600
        assert chunk.padding < frame or short_of_floor


# --------------------------------------------------------------------------------------------------
# ChunkPlan: sizes and configuration errors


@pytest.mark.parametrize(
    ("rate", "encoding", "chunk_bytes", "floor_bytes"),
    [
        (8000, Encoding.PCM16, 3200, 3200),
        (16000, Encoding.PCM16, 3200, 3200),
        (24000, Encoding.PCM16, 4800, 3840),
        (8000, Encoding.MULAW, 1600, 1600),
        (16000, Encoding.MULAW, 1600, 1600),
        (24000, Encoding.MULAW, 2400, 1920),
    ],
)
def test_default_and_floor_sizes(rate: int, encoding: Encoding, chunk_bytes: int, floor_bytes: int) -> None:
    plan = ChunkPlan(rate, encoding)
    assert plan.chunk_bytes == chunk_bytes
    assert plan.floor_bytes == floor_bytes
    assert plan.chunk_duration == pytest.approx(max(0.1, 1600 / rate))


@pytest.mark.parametrize(
    ("rate", "encoding", "chunk_bytes", "rule"),
    [
        (8000, Encoding.PCM16, 2880, ">= 3200"),
        (24000, Encoding.PCM16, 2880, ">= 3840"),
        (8000, Encoding.MULAW, 1440, ">= 1600"),
        (8000, Encoding.PCM16, 100_160, "<= 100000"),
        (24000, Encoding.PCM16, 100_800, "<= 100000"),
        (16000, Encoding.PCM16, 3520, "multiple of 640"),
        (24000, Encoding.PCM16, 3200, "multiple of 960"),
        (8000, Encoding.MULAW, 1700, "multiple of 160"),
    ],
)
def test_chunk_bytes_rules_are_enforced(rate: int, encoding: Encoding, chunk_bytes: int, rule: str) -> None:
    with pytest.raises(ConfigError, match="chunk_bytes") as raised:
        ChunkPlan(rate, encoding, chunk_bytes=chunk_bytes)
    assert rule in str(raised.value)


@pytest.mark.parametrize("chunk_bytes", [3200.0, True, "3200"])
def test_chunk_bytes_must_be_an_int(chunk_bytes: object) -> None:
    with pytest.raises(ConfigError, match="chunk_bytes"):
        ChunkPlan(8000, Encoding.PCM16, chunk_bytes=chunk_bytes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rate", "encoding", "chunk_ms", "samples"),
    [
        (8000, Encoding.PCM16, 200, 1600),
        (16000, Encoding.PCM16, 100, 1600),
        (24000, Encoding.PCM16, 80, 1920),
        (24000, Encoding.MULAW, 200, 4800),
    ],
)
def test_chunk_ms_sets_the_nominal_size(rate: int, encoding: Encoding, chunk_ms: int, samples: int) -> None:
    assert ChunkPlan(rate, encoding, chunk_ms=chunk_ms).chunk_samples == samples


@pytest.mark.parametrize(
    ("rate", "chunk_ms", "rule"),
    [
        (8000, 100, ">= 3200 B (200 ms)"),  # fine at 16 kHz, below the floor at 8 kHz
        (24000, 60, ">= 3840 B (80 ms)"),
        (16000, 90, "multiple of 20"),
        (16000, 0, "positive"),
        (16000, 100.0, "multiple of 20"),
        (24000, 2100, "<= 100000"),
    ],
)
def test_chunk_ms_rules_are_enforced(rate: int, chunk_ms: object, rule: str) -> None:
    with pytest.raises(ConfigError, match="chunk_ms") as raised:
        ChunkPlan(rate, Encoding.PCM16, chunk_ms=chunk_ms)  # type: ignore[arg-type]
    assert rule in str(raised.value)


def test_chunk_bytes_and_chunk_ms_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        OutboundStream(16000, chunk_bytes=3200, chunk_ms=100)


def test_largest_legal_chunk_is_accepted() -> None:
    plan = ChunkPlan(24000, Encoding.PCM16, chunk_bytes=99_840)  # 104 frames of 960 B
    assert plan.chunk_samples == 49_920


@pytest.mark.parametrize("rate", [11025, 44100, 8000.0, 0])
def test_unsupported_rate_is_a_config_error(rate: object) -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        ChunkPlan(rate)  # type: ignore[arg-type]


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="encoding"):
        ChunkPlan(8000, "alaw")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lead": 0.0}, "lead"),
        ({"lead": -1.0}, "lead"),
        ({"lead": math.nan}, "lead"),
        ({"lead": math.inf}, "lead"),
        ({"margin": -0.01}, "margin"),
        ({"margin": math.nan}, "margin"),
    ],
)
def test_pacer_config_errors(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Pacer(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prebuffer": -0.01}, "prebuffer"),
        ({"prebuffer": math.inf}, "prebuffer"),
        # 8 kHz default chunk is 200 ms; with a 60 ms margin the lead must be at least 260 ms.
        ({"lead": 0.25}, "lead"),
        # 9600 B at 8 kHz PCM16 is 600 ms: the default 400 ms lead cannot keep Exotel fed.
        ({"chunk_bytes": 9600}, "lead"),
        ({"chunk_bytes": 3000}, "chunk_bytes"),
    ],
)
def test_stream_config_errors(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        OutboundStream(8000, Encoding.PCM16, **kwargs)  # type: ignore[arg-type]


def test_stream_accepts_a_lead_of_exactly_one_chunk_plus_margin() -> None:
    stream = OutboundStream(8000, Encoding.PCM16, lead=0.26)
    assert stream.pacer.lead == 0.26


# --------------------------------------------------------------------------------------------------
# Chunker


@PROPERTY
@given(
    combo=combos,
    sizes=st.lists(st.integers(0, 6000), min_size=1, max_size=25),
    flush_after=st.sets(st.integers(0, 24)),
    frames=st.sampled_from([None, 1.0, 2.5]),
)
def test_chunks_obey_the_rules_and_carry_the_input_exactly(
    combo: tuple[int, Encoding], sizes: list[int], flush_after: set[int], frames: float | None
) -> None:
    rate, encoding = combo
    plan = ChunkPlan(rate, encoding)
    if frames is not None:  # a configured size, a few chunks' worth of frames
        count = max(
            plan.chunk_samples // plan.frame_samples, round(frames * plan.chunk_samples / plan.frame_samples)
        )
        plan = ChunkPlan(rate, encoding, chunk_bytes=count * plan.frame_bytes)
    chunker = Chunker(plan)
    source = audio(sum(sizes), seed=len(sizes))
    offset = 0
    sent: list[OutboundChunk] = []
    for index, size in enumerate(sizes):
        chunker.push(source[offset : offset + size])
        offset += size
        sent += chunks(chunker.drain(flush=index in flush_after))
    sent += chunks(chunker.drain(flush=True))
    for chunk in sent:
        assert_legal(chunk, rate, encoding, plan.chunk_samples)
    np.testing.assert_array_equal(content(sent), source)
    assert [c.start for c in sent] == [0, *(c.end for c in sent[:-1])][: len(sent)]
    assert chunker.pending_samples == 0


@pytest.mark.parametrize(("rate", "encoding"), COMBOS, ids=COMBO_IDS)
def test_20ms_frames_come_out_as_full_chunks_of_the_same_audio(rate: int, encoding: Encoding) -> None:
    chunker = Chunker(ChunkPlan(rate, encoding))
    frame = rate // 50
    source = audio(frame * 173, seed=rate)
    sent: list[OutboundChunk] = []
    for start in range(0, source.size, frame):
        chunker.push(source[start : start + frame])
        sent += chunks(chunker.drain())
    nominal = chunker.plan.chunk_samples
    assert sent and all(c.length == nominal and c.padding == 0 for c in sent)
    assert len(sent) == source.size // nominal
    np.testing.assert_array_equal(content(sent), source[: len(sent) * nominal])
    assert chunker.pending_samples == source.size - len(sent) * nominal


@pytest.mark.parametrize(("rate", "encoding"), COMBOS, ids=COMBO_IDS)
def test_short_remainder_is_held_then_padded_to_the_floor(rate: int, encoding: Encoding) -> None:
    chunker = Chunker(ChunkPlan(rate, encoding))
    tail = audio(rate // 50 * 2 + 7)  # two frames and a bit: well under the floor
    chunker.push(tail)
    assert chunker.take_chunk() is None
    assert chunks(chunker.drain()) == []
    chunk = chunker.flush_partial()
    assert chunk is not None
    assert chunk.length == chunker.plan.floor_samples
    assert chunk.padding == chunk.length - tail.size
    np.testing.assert_array_equal(chunk.samples[: tail.size], tail)
    assert chunker.flush_partial() is None


def test_remainder_above_the_floor_is_padded_only_in_its_last_frame() -> None:
    plan = ChunkPlan(24000, Encoding.PCM16, chunk_bytes=9600)  # 4800 samples, floor 1920
    chunker = Chunker(plan)
    chunker.push(audio(2000))
    chunk = chunker.flush_partial()
    assert chunk is not None
    assert (chunk.length, chunk.padding) == (2400, 400)


def test_marks_follow_the_chunk_that_contains_them() -> None:
    chunker = Chunker(ChunkPlan(16000, Encoding.PCM16))  # 1600-sample chunks
    chunker.add_mark("before-anything")
    chunker.push(audio(2400))
    chunker.add_mark("a")
    chunker.add_mark("b")
    chunker.push(audio(800))
    chunker.add_mark("c")  # exactly at the end of the second chunk
    chunker.push(audio(100))
    chunker.add_mark("d")
    items = chunker.drain()
    kinds = [item.name if isinstance(item, OutboundMark) else item.start for item in items]
    assert kinds == ["before-anything", 0, 1600, "a", "b", "c"]
    assert chunker.take_marks() == []
    tail = chunker.drain(flush=True)
    assert [type(i) for i in tail] == [OutboundChunk, OutboundMark] and tail[1] == OutboundMark("d")


def test_chunker_clear_drops_pending_audio_and_marks() -> None:
    chunker = Chunker(ChunkPlan(8000, Encoding.PCM16))
    chunker.push(audio(2000))
    chunker.add_mark("x")
    chunker.push(audio(500))
    chunker.add_mark("y")
    assert chunker.clear() == ["x", "y"]
    assert chunker.pending_samples == 0
    assert chunker.drain(flush=True) == []
    fresh = audio(1600, seed=9)
    chunker.push(fresh)
    (chunk,) = chunks(chunker.drain())
    assert chunk.start == 2500
    np.testing.assert_array_equal(chunk.samples, fresh)


@pytest.mark.parametrize(
    "bad", [np.zeros(10, dtype=np.float32), np.zeros((2, 10), dtype=np.int16), [1, 2, 3], b"\x00\x00"]
)
def test_push_rejects_anything_but_1d_int16(bad: object) -> None:
    with pytest.raises(ValueError, match="int16"):
        Chunker(ChunkPlan(8000)).push(bad)  # type: ignore[arg-type]


def test_pushed_audio_is_copied() -> None:
    chunker = Chunker(ChunkPlan(16000))
    source = audio(1600)
    expected = source.copy()
    chunker.push(source)
    source[:] = 0
    (chunk,) = chunks(chunker.drain())
    np.testing.assert_array_equal(chunk.samples, expected)


# --------------------------------------------------------------------------------------------------
# Pacer


def test_record_sent_advances_by_exact_durations_and_reanchors_after_idle() -> None:
    pacer = Pacer(lead=0.4)
    assert pacer.queued(0.0) == 0.0
    assert pacer.record_sent(0.1, 0.0) == 0.0
    assert pacer.record_sent(0.1, 0.05) == pytest.approx(0.1)  # queued behind the first
    assert pacer.play_end == pytest.approx(0.2)
    assert pacer.queued(0.05) == pytest.approx(0.15)
    assert pacer.record_sent(0.1, 5.0) == 5.0  # idle gap: restarts at now
    assert pacer.play_end == pytest.approx(5.1)
    assert pacer.queued(5.0) == pytest.approx(0.1)
    assert pacer.chunks_sent == 3
    assert pacer.seconds_sent == pytest.approx(0.3)


def test_next_send_time_keeps_the_queue_within_the_lead() -> None:
    pacer = Pacer(lead=0.4)
    assert pacer.next_send_time(0.1, 3.0) == 3.0
    for _ in range(4):
        pacer.record_sent(0.1, 3.0)
    assert pacer.next_send_time(0.1, 3.0) == pytest.approx(3.1)
    assert pacer.next_send_time(0.2, 3.0) == pytest.approx(3.2)
    assert pacer.next_send_time(0.1, 3.25) == 3.25


def test_a_chunk_longer_than_the_lead_goes_when_the_queue_is_empty() -> None:
    pacer = Pacer(lead=0.1)
    assert pacer.next_send_time(0.5, 1.0) == 1.0
    pacer.record_sent(0.5, 1.0)
    assert pacer.next_send_time(0.5, 1.2) == pytest.approx(1.5)


@settings(max_examples=200, deadline=None)
@given(
    durations=st.lists(st.sampled_from([0.02, 0.08, 0.1, 0.2, 0.3]), min_size=1, max_size=60),
    delays=st.lists(st.floats(0.0, 0.05), min_size=60, max_size=60),
)
def test_pacing_never_exceeds_the_lead_and_accumulates_no_drift(
    durations: list[float], delays: list[float]
) -> None:
    pacer = Pacer(lead=0.4, margin=0.06)
    now = 100.0
    anchor = now + delays[0] * 0.5
    for duration, delay in zip(durations, delays, strict=False):
        now = pacer.next_send_time(duration, now) + delay * 0.5  # a little late, never dry
        if pacer.chunks_sent:
            now = min(now, pacer.play_end - 0.001)
        pacer.record_sent(duration, now)
        assert pacer.queued(now) <= 0.4 + EPS
    assert pacer.play_end == pytest.approx(anchor + sum(durations), abs=1e-9)
    assert pacer.underruns == 0


def test_underruns_count_only_audio_that_was_waiting() -> None:
    pacer = Pacer(lead=0.4, margin=0.06)
    pacer.record_sent(0.1, 0.0)
    pacer.record_sent(0.1, 0.15, ready_at=0.05)  # ready while playing, sent 50 ms after it ran dry
    assert pacer.underruns == 1
    assert pacer.max_lateness == pytest.approx(0.05)
    pacer.record_sent(0.1, 0.3, ready_at=0.28)  # the producer paused: not our fault
    pacer.record_sent(0.1, 0.35, ready_at=0.3)  # sent in time
    pacer.record_sent(0.1, 0.6, ready_at=0.2)  # 100 ms of silence with audio waiting
    assert pacer.underruns == 2
    assert pacer.max_lateness == pytest.approx(0.1)


def test_deadlines_and_reset() -> None:
    pacer = Pacer(lead=0.4, margin=0.06)
    assert pacer.underrun_time() == -math.inf
    pacer.record_sent(0.3, 1.0)
    assert pacer.underrun_time() == pytest.approx(1.3)
    assert pacer.flush_deadline() == pytest.approx(1.24)
    pacer.reset()
    assert pacer.queued(1.1) == 0.0
    assert pacer.next_send_time(0.4, 1.1) == 1.1
    assert pacer.chunks_sent == 1  # counters survive a clear
    pacer.record_sent(0.2, 1.1)
    pacer.reset(playing_until=1.2)
    assert pacer.queued(1.15) == pytest.approx(0.05)


def test_record_sent_rejects_a_non_positive_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        Pacer().record_sent(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# OutboundStream


@dataclass(frozen=True)
class Cleared:
    """Timeline entry: the stream was cleared when ``position`` samples had been pushed."""

    position: int


@dataclass
class Drive:
    """Runs a stream the way the writer's shared ticker does, checking invariants on every poll."""

    stream: OutboundStream
    now: float = 0.0
    timeline: list[OutboundItem | Cleared] = field(default_factory=list)
    mark_positions: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def push(self, samples: np.ndarray, now: float | None) -> None:
        """Push at ``now``, or untimed (``None``) as a writer without a clock at hand would."""
        self.now = self.now if now is None else now
        self.stream.push(samples, now)

    def mark(self, name: str) -> None:
        self.mark_positions[name] = self.stream.pushed_samples
        self.stream.add_mark(name)

    def poll(self, now: float) -> list[OutboundItem]:
        assert now >= self.now
        self.now = now
        got = self.stream.poll(now)
        self.timeline += got
        assert self.stream.pacer.queued(now) <= self.stream.pacer.lead + EPS, "lead exceeded"
        return got

    def clear(self, now: float) -> tuple[str, ...]:
        self.now = now
        self.timeline.append(Cleared(self.stream.pushed_samples))
        dropped = self.stream.clear(now).dropped_marks
        self.dropped += dropped
        return dropped

    def run_until_idle(self, *, step: float = 0.01, limit: float = 120.0) -> None:
        while self.stream.next_wakeup(self.now) is not None:
            assert self.now < limit, "stream never went idle"
            self.poll(self.now + step)

    def sent(self) -> list[OutboundChunk]:
        return [item for item in self.timeline if isinstance(item, OutboundChunk)]

    def check_marks(self) -> None:
        """Every mark is sent or dropped; a sent one comes after all of its audio was sent (or
        cleared), and before any chunk of audio pushed after it."""
        sent_marks = [item.name for item in self.timeline if isinstance(item, OutboundMark)]
        assert sorted(sent_marks + self.dropped) == sorted(self.mark_positions)
        sent_end = cleared = 0
        for index, item in enumerate(self.timeline):
            if isinstance(item, OutboundChunk):
                sent_end = item.end
            elif isinstance(item, Cleared):
                cleared = item.position
            else:
                position = self.mark_positions[item.name]
                assert max(sent_end, cleared) >= position, f"{item} sent before its audio"
                later = [c for c in self.timeline[index + 1 :] if isinstance(c, OutboundChunk)]
                assert not later or later[0].start >= position, f"{item} held back behind later audio"


def test_idle_stream_has_nothing_to_do() -> None:
    stream = OutboundStream(16000)
    assert stream.next_wakeup(1.0) is None
    assert stream.poll(1.0) == []
    stream.push(np.zeros(0, dtype=np.int16), 1.0)
    assert stream.next_wakeup(1.0) is None


@pytest.mark.parametrize(("rate", "encoding"), COMBOS, ids=COMBO_IDS)
def test_a_prompt_goes_out_within_the_lead_then_one_chunk_per_chunk_played(
    rate: int, encoding: Encoding
) -> None:
    stream = OutboundStream(rate, encoding)
    duration = stream.plan.chunk_duration
    prompt = audio(rate * 3, seed=3)
    stream.push(prompt, 10.0)
    first = chunks(stream.poll(10.0))
    assert sum(c.duration for c in first) <= 0.4 + EPS
    assert sum(c.duration for c in first) > 0.4 - duration - EPS
    assert stream.poll(10.001) == []
    wakeup = stream.next_wakeup(10.001)
    assert wakeup is not None
    assert wakeup == pytest.approx(stream.pacer.play_end - (0.4 - duration))
    assert stream.poll(wakeup - 0.001) == []
    assert len(chunks(stream.poll(wakeup))) == 1


@pytest.mark.parametrize(("rate", "encoding"), COMBOS, ids=COMBO_IDS)
def test_short_final_chunk_is_held_until_the_underrun_deadline_then_padded(
    rate: int, encoding: Encoding
) -> None:
    stream = OutboundStream(rate, encoding)
    plan = stream.plan
    tail = plan.frame_samples * 2 + 3
    prompt = audio(plan.chunk_samples * 6 + tail, seed=4)
    drive = Drive(stream)
    drive.push(prompt, 0.0)
    while stream.pending_samples > tail:  # follow the wakeups until only the tail is left
        wakeup = stream.next_wakeup(drive.now)
        assert wakeup is not None
        drive.poll(wakeup)
    deadline = stream.pacer.play_end - stream.pacer.margin
    assert stream.next_wakeup(drive.now) == pytest.approx(deadline)
    for early in (drive.now, (drive.now + deadline) / 2, deadline - 0.001):
        assert drive.poll(early) == [], "padded before the deadline"
    (padded,) = chunks(drive.poll(deadline))
    assert padded.length == plan.floor_samples
    assert padded.padding == plan.floor_samples - tail
    assert stream.pacer.queued(deadline) > 0 and stream.pacer.underruns == 0
    np.testing.assert_array_equal(content(drive.sent()), prompt)
    assert stream.next_wakeup(deadline) is None


@pytest.mark.parametrize(("rate", "encoding"), COMBOS, ids=COMBO_IDS)
def test_short_utterance_from_idle_is_held_then_padded(rate: int, encoding: Encoding) -> None:
    stream = OutboundStream(rate, encoding, prebuffer=0.08)
    beep = audio(rate // 25, seed=5)  # 40 ms
    stream.push(beep, 7.0)
    hold = 7.0 + stream.plan.chunk_duration + 0.08
    assert stream.next_wakeup(7.0) == 7.0  # the next poll decides whether an utterance starts
    assert stream.poll(7.0) == []
    assert stream.next_wakeup(7.0) == pytest.approx(hold)
    assert stream.poll(hold - 0.001) == []
    (chunk,) = chunks(stream.poll(hold))
    assert chunk.length == stream.plan.floor_samples
    np.testing.assert_array_equal(chunk.samples[: beep.size], beep)


@PROPERTY
@given(
    combo=combos,
    frames=st.integers(1, 150),
    ticks=st.lists(st.floats(0.001, 0.02), min_size=1, max_size=40),
    frames_per_push=st.sampled_from([1, 5]),
)
def test_real_time_echo_comes_out_as_full_continuous_chunks(
    combo: tuple[int, Encoding], frames: int, ticks: list[float], frames_per_push: int
) -> None:
    """An echo bot pushing 20 ms frames in real time (or 100 ms bursts), polled every <= 20 ms."""
    rate, encoding = combo
    stream = OutboundStream(rate, encoding)
    drive = Drive(stream)
    frame = rate // 50
    source = audio(frames * frame, seed=frames)
    next_frame = 0
    tick = 0
    while next_frame < frames or stream.next_wakeup(drive.now) is not None:
        now = drive.now + ticks[tick % len(ticks)]
        tick += 1
        # every frame due by now is pushed (in bursts of frames_per_push) before the ticker polls
        while next_frame < frames:
            arrival = next_frame // frames_per_push * frames_per_push * 0.02
            if arrival > now:
                break
            drive.push(source[next_frame * frame : (next_frame + 1) * frame], max(drive.now, arrival))
            next_frame += 1
        drive.poll(now)
        assert drive.now < frames * 0.02 + 5
    sent = drive.sent()
    assert all(c.length == stream.plan.chunk_samples and c.padding == 0 for c in sent[:-1])
    assert stream.padded_chunks <= 1
    assert stream.pacer.underruns == 0
    np.testing.assert_array_equal(content(sent), source)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 30000)),
        st.tuples(st.just("untimed push"), st.integers(1, 30000)),
        st.tuples(st.just("mark"), st.just(0)),
        st.tuples(st.just("wait"), st.integers(0, 700)),  # milliseconds
        st.tuples(st.just("clear"), st.just(0)),
    ),
    min_size=1,
    max_size=30,
)


@PROPERTY
@given(combo=combos, script=ops, tick_ms=st.integers(5, 20), jitter=st.lists(st.floats(0, 1), min_size=1))
def test_random_traffic_keeps_every_rule(
    combo: tuple[int, Encoding], script: list[tuple[str, int]], tick_ms: int, jitter: list[float]
) -> None:
    """Random pushes, marks, pauses and clears, polled at random times at least every 20 ms: the lead is
    never exceeded, chunks are legal, marks are never early or late, nothing is lost or invented, and
    no chunk is sent late while its audio was waiting."""
    rate, encoding = combo
    stream = OutboundStream(rate, encoding)
    drive = Drive(stream)
    pushed: list[np.ndarray] = []
    kept = np.ones(0, dtype=bool)  # per pushed sample: not cleared before it was sent
    ticks = 0

    def wait(seconds: float) -> None:
        nonlocal ticks
        end = drive.now + seconds
        while drive.now < end:
            step = tick_ms / 1000 * (0.5 + 0.5 * jitter[ticks % len(jitter)])
            ticks += 1
            drive.poll(min(end, drive.now + step))

    for serial, (op, value) in enumerate(script):
        if op.endswith("push"):
            pushed.append(audio(value, seed=serial))
            kept = np.concatenate((kept, np.ones(value, dtype=bool)))
            drive.push(pushed[-1], None if op == "untimed push" else drive.now)
        elif op == "mark":
            drive.mark(f"m{serial}")
        elif op == "wait":
            wait(value / 1000)
        else:
            first_unsent = stream.pushed_samples - stream.pending_samples
            dropped = drive.clear(drive.now)
            assert set(dropped) <= set(drive.mark_positions)
            kept[first_unsent:] = False
        drive.poll(drive.now)
    while stream.next_wakeup(drive.now) is not None:  # drain everything, still ticking
        wait(0.5)
    assert stream.pacer.underruns == 0
    for chunk in drive.sent():
        assert_legal(chunk, rate, encoding, stream.plan.chunk_samples)
    everything = np.concatenate(pushed) if pushed else np.zeros(0, dtype=np.int16)
    np.testing.assert_array_equal(content(drive.sent()), everything[kept])
    drive.check_marks()


def test_marks_never_overtake_their_audio() -> None:
    stream = OutboundStream(16000)  # 100 ms chunks
    drive = Drive(stream)
    drive.mark("hello")  # nothing before it: goes at once
    assert drive.poll(0.0) == [OutboundMark("hello")]
    drive.push(audio(2400), 0.0)
    drive.mark("a")
    drive.push(audio(2500), 0.0)
    drive.mark("b")
    got = drive.poll(0.0)
    assert [g.start if isinstance(g, OutboundChunk) else g.name for g in got] == [0, 1600, "a", 3200]
    assert stream.pending_samples == 100
    assert stream.next_wakeup(0.0) == pytest.approx(0.3 - stream.pacer.margin)
    assert drive.poll(0.2) == []  # "b" waits for the padded chunk that carries its audio
    tail = drive.poll(0.24)
    assert [type(t) for t in tail] == [OutboundChunk, OutboundMark] and tail[1] == OutboundMark("b")


def test_clear_drops_pending_audio_and_marks_and_reports_what_was_heard() -> None:
    stream = OutboundStream(16000)  # 100 ms chunks, lead 400 ms
    drive = Drive(stream)
    drive.push(audio(16000), 0.0)  # one second
    drive.mark("prompt-end")
    assert len(chunks(drive.poll(0.0))) == 4  # 0.0-0.4 queued at Exotel
    assert stream.played_samples(0.25) == 4000
    result = stream.clear(0.25)
    assert result.dropped_marks == ("prompt-end",)
    assert result.heard_until == 4800  # the chunk playing 0.2-0.3 finishes
    assert stream.pending_samples == 0
    assert stream.poll(0.25) == [] and stream.next_wakeup(0.25) is None
    assert stream.pacer.queued(0.25) == pytest.approx(0.05)
    assert stream.played_samples(0.29) == 4640
    assert stream.played_samples(0.5) == 4800  # nothing after the cut is ever played

    reply = audio(16000, seed=2)
    stream.push(reply, 0.26)
    stream.add_mark("reply-end")
    first = chunks(stream.poll(0.26))
    assert first[0].start == 16000  # new audio only; positions skip the dropped audio
    np.testing.assert_array_equal(first[0].samples, reply[:1600])
    assert stream.played_samples(0.35) == 16000 + 800  # it starts when the cut chunk ends, at 0.3


def test_played_samples_ignores_padding() -> None:
    stream = OutboundStream(16000)
    stream.push(audio(640), 0.0)  # 40 ms at idle: held 180 ms, then padded to 100 ms
    (chunk,) = chunks(stream.poll(0.18))
    assert chunk.padding == 960
    assert stream.played_samples(0.1) == 0
    assert stream.played_samples(0.2) == 320
    assert stream.played_samples(0.25) == 640
    assert stream.played_samples(9.0) == 640


@pytest.mark.parametrize(("rate", "encoding"), COMBOS, ids=COMBO_IDS)
def test_no_burst_after_an_idle_gap(rate: int, encoding: Encoding) -> None:
    stream = OutboundStream(rate, encoding)
    drive = Drive(stream)
    drive.push(audio(rate // 2), 0.0)  # half a second, then ten seconds of silence
    drive.run_until_idle()
    played_before = stream.played_samples(10.0)
    assert played_before == rate // 2
    before = stream.pacer.chunks_sent
    drive.push(audio(rate * 2, seed=1), 10.0)  # a two-second prompt
    burst = chunks(drive.poll(10.0))
    assert burst and sum(c.duration for c in burst) <= 0.4 + EPS
    assert stream.pacer.queued(10.0) <= 0.4 + EPS
    assert stream.played_samples(10.05) == played_before + round(0.05 * rate)  # playback restarts at now
    drive.run_until_idle()
    after_gap = drive.sent()[-(stream.pacer.chunks_sent - before) :]
    assert after_gap[0] is burst[0]
    # Re-anchored once at 10.0 and then played back to back: no second anchor, no lost time.
    assert stream.pacer.play_end == pytest.approx(10.0 + sum(c.duration for c in after_gap), abs=1e-9)


def test_a_long_stream_does_not_drift() -> None:
    """Sixty seconds sent in response to jittery ticks end exactly sixty seconds after they began."""
    stream = OutboundStream(8000)
    drive = Drive(stream)
    drive.push(audio(8000 * 60), 3.0)
    drive.poll(3.0)
    jitter = np.random.default_rng(1).uniform(0.001, 0.02, size=10_000)
    index = 0
    while stream.next_wakeup(drive.now) is not None:
        drive.poll(drive.now + float(jitter[index]))
        index += 1
    assert stream.pacer.underruns == 0
    assert stream.pacer.play_end == pytest.approx(3.0 + 60.0, abs=1e-6)
    assert stream.played_samples(63.0) == 8000 * 60


@pytest.mark.parametrize("queued_at_start", [0.0, 0.05, 0.1, 0.15])
def test_real_time_audio_starting_while_a_prompt_ends_is_not_fragmented(queued_at_start: float) -> None:
    """An echo that begins while the end of a prompt still plays is an utterance start, not a
    continuation that would be flushed in padded scraps before the prompt runs out."""
    stream = OutboundStream(16000)  # 100 ms chunks, 60 ms margin, 80 ms prebuffer
    drive = Drive(stream)
    drive.push(audio(8000), 0.0)  # a 500 ms prompt: exactly five chunks
    begin = 0.5 - queued_at_start
    frames = audio(320 * 50, seed=7)  # then one second of 20 ms frames in real time
    pushed = 0
    for tick in range(200):  # the shared ticker, every 10 ms
        now = tick * 0.01
        while pushed < 50 and begin + pushed * 0.02 <= now + EPS:
            drive.push(frames[pushed * 320 : (pushed + 1) * 320], now)
            pushed += 1
        drive.poll(now)
    assert pushed == 50
    drive.run_until_idle()
    assert stream.padded_chunks == 0
    assert all(c.length == 1600 and c.padding == 0 for c in drive.sent())
    assert stream.pacer.underruns == 0
    np.testing.assert_array_equal(content(drive.sent())[8000:], frames)


def test_push_without_a_time_counts_from_the_next_poll() -> None:
    stream = OutboundStream(16000)
    stream.push(audio(640))  # 40 ms, no time given
    assert stream.next_wakeup(5.0) == 5.0  # asks to be polled at once, to learn the time
    assert stream.poll(5.0) == []  # an utterance starting at 5.0: held for chunk + prebuffer
    assert stream.next_wakeup(5.0) == pytest.approx(5.18)
    assert stream.poll(5.179) == []
    (chunk,) = chunks(stream.poll(5.18))
    assert chunk.padding == 960


def test_untimed_audio_is_stamped_by_a_later_timed_push() -> None:
    stream = OutboundStream(16000)
    stream.push(audio(320))
    stream.push(audio(320), 2.0)
    assert stream.poll(2.0) == []
    assert stream.next_wakeup(2.0) == pytest.approx(2.18)
    assert stream.poll(2.1) == []


def test_stats_report_a_late_ticker_as_an_underrun() -> None:
    stream = OutboundStream(16000)
    stream.push(audio(16000), 0.0)  # one second, all available at once
    assert len(chunks(stream.poll(0.0))) == 4
    assert stream.stats.underruns == 0
    late = chunks(stream.poll(0.55))  # the ticker stalled: Exotel ran dry at 0.4 with audio waiting
    assert late
    stats = stream.stats
    assert stats.underruns == 1
    assert stats.max_lateness == pytest.approx(0.15)
    assert stats.chunks_sent == 4 + len(late)
    assert stats.seconds_sent == pytest.approx(0.1 * stats.chunks_sent)
    assert stats.padded_chunks == 0


def test_untimed_push_asks_for_a_poll_at_once_even_while_audio_is_queued() -> None:
    stream = OutboundStream(16000)
    stream.push(audio(8000), 0.0)
    stream.poll(0.0)  # 400 ms queued, 100 ms pending
    assert stream.next_wakeup(0.01) == pytest.approx(0.1)
    stream.push(audio(320))
    assert stream.next_wakeup(0.01) == 0.01  # the stream must learn when this audio arrived
    assert stream.poll(0.01) == []
    assert stream.next_wakeup(0.01) == pytest.approx(0.1)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize(
    ("burst_ms", "jitter_ms", "frames_per_burst"), [(100, 0, 1), (100, 15, 5), (20, 0, 1), (20, 8, 1)]
)
def test_a_real_time_producer_keeps_its_cushion_after_the_start(
    rate: int, burst_ms: int, jitter_ms: int, frames_per_burst: int
) -> None:
    """An echo bot streams in real time (Exotel's 100 ms chunks, maybe as five 20 ms frames pushed at
    once, or 20 ms frames), a little late at times: after the first chunk, every chunk goes out while
    Exotel still has at least ``margin`` of audio queued, so network delay on the way to Exotel never
    becomes an audible gap."""
    stream = OutboundStream(rate)  # 200 ms chunks at 8 kHz, 100 ms at 16 kHz; 60 ms margin
    drive = Drive(stream)
    burst = rate * burst_ms // 1000
    source = audio(rate * 10, seed=3)
    lateness = np.random.default_rng(5).uniform(0.0, jitter_ms / 1000, size=len(source) // burst)
    queued_when_sent: list[float] = []
    pushed = 0
    for tick in range(1200):  # the shared ticker, every 10 ms, for 12 s
        now = tick * 0.01
        while pushed < len(lateness) and (pushed + 1) * burst_ms / 1000 + lateness[pushed] <= now + EPS:
            for frame in np.array_split(source[pushed * burst : (pushed + 1) * burst], frames_per_burst):
                drive.push(frame, now)
            pushed += 1
        queued = stream.pacer.queued(now)
        for chunk in (item for item in drive.poll(now) if isinstance(item, OutboundChunk)):
            queued_when_sent.append(queued)
            queued += chunk.duration
    drive.run_until_idle()
    assert pushed == len(lateness)
    assert min(queued_when_sent[1:-1]) >= stream.pacer.margin - EPS
    assert stream.pacer.underruns == 0
    assert stream.padded_chunks <= 1  # only the tail, if any
    np.testing.assert_array_equal(content(drive.sent())[: len(source)], source)


def _echo_bursts(rate: int, jitter_ms: int, seconds: float = 6.0) -> list[tuple[float, np.ndarray]]:
    """A real-time producer: Exotel's 100 ms of audio at a time, a little late at times."""
    burst = rate // 10
    source = audio(int(rate * seconds), seed=4)
    lateness = np.random.default_rng(6).uniform(0.0, jitter_ms / 1000, size=len(source) // burst)
    return [((k + 1) * 0.1 + late, source[k * burst : (k + 1) * burst]) for k, late in enumerate(lateness)]


def _drive_by_wakeups(
    stream: OutboundStream, bursts: list[tuple[float, np.ndarray]], *, settle: bool
) -> tuple[list[tuple[float, OutboundChunk]], int]:
    """Push each burst as five frames, then either poll at once (``settle=False``) or ``settle`` and
    poll only when that says; afterwards poll whenever ``next_wakeup`` says. Returns each chunk with
    its send time, and how many polls handed out nothing."""
    sent: list[tuple[float, OutboundChunk]] = []
    empty_polls = 0
    wake: float | None = None

    def poll(now: float) -> float | None:
        nonlocal empty_polls
        items = stream.poll(now)
        sent.extend((now, item) for item in items if isinstance(item, OutboundChunk))
        empty_polls += not items
        return stream.next_wakeup(now)

    for at, samples in bursts:
        while wake is not None and wake <= at:
            wake = poll(wake)
        for frame in np.array_split(samples, 5):
            stream.push(frame, at)
        wake = stream.settle(at) if settle else poll(at)
        if wake is not None and wake <= at:
            wake = poll(at)
    while wake is not None:
        wake = poll(wake)
    return sent, empty_polls


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("jitter_ms", [0, 15])
def test_settle_lets_a_producer_skip_polls_without_changing_what_is_sent(rate: int, jitter_ms: int) -> None:
    """The writer releases a bot's burst of plays, calls ``settle`` and wakes only at the time it
    returns: the chunks, their audio and their send times are exactly those of polling after every
    burst, while far fewer polls come up empty."""
    bursts = _echo_bursts(rate, jitter_ms)
    polled, polled_empty = _drive_by_wakeups(OutboundStream(rate), bursts, settle=False)
    settled, settled_empty = _drive_by_wakeups(OutboundStream(rate), bursts, settle=True)
    assert [(at, chunk.start, chunk.audio_samples) for at, chunk in settled] == [
        (at, chunk.start, chunk.audio_samples) for at, chunk in polled
    ]
    np.testing.assert_array_equal(
        content([chunk for _, chunk in settled]), content([chunk for _, chunk in polled])
    )
    if OutboundStream(rate).plan.chunk_samples > rate // 10:  # 200 ms chunks at 8 kHz: bursts that only add
        assert polled_empty >= len(bursts) // 2 - 2
    assert settled_empty <= 2
