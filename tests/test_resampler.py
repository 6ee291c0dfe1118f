"""The streaming resampler: exact sizes and chunking invariance, and audio quality measured with FFTs."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voicebot import audio, dspmetrics
from voicebot.audio import Resampler, ResamplerWorkspace, compiled_resampler_available
from voicebot.errors import ConfigError

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*audioop.*")
    import audioop

# The bars a caller would hear, stated once.
PASSBAND_RIPPLE_MAX_DB = 0.1  # peak-to-peak, from 100 Hz to 0.85 × the lower Nyquist (3.4 kHz with 8 kHz)
REJECTION_MIN_DB = 70.0  # aliases and images, relative to a passband tone of the same level
LATENCY_MAX_SECONDS = 0.003  # group delay plus anything held back
PASSBAND_GAIN_TOLERANCE_DB = 0.05  # a 1 kHz tone keeps its level

PAIRS = [(8000, 16000), (16000, 8000), (8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)]
needs_kernel = pytest.mark.skipif(
    not compiled_resampler_available(), reason="voicebot._dsp not built (no C compiler at install)"
)
# Both ways a step can run: the compiled kernel where it was built, and the numpy reference.
KERNELS = [pytest.param(True, id="compiled", marks=needs_kernel), pytest.param(False, id="numpy")]
Int16Array = npt.NDArray[np.int16]


def one_shot(src_rate: int, dst_rate: int, taps_per_phase: int = 32) -> dspmetrics.ResampleFn:
    """Resample a whole signal the way a stream ends: process everything, then flush."""

    def resample(samples: Int16Array) -> Int16Array:
        resampler = Resampler(src_rate, dst_rate, taps_per_phase=taps_per_phase)
        return np.concatenate([resampler.process(samples), resampler.flush()])

    return resample


def ratecv(src_rate: int, dst_rate: int) -> dspmetrics.ResampleFn:
    """audioop.ratecv, the resampler without an anti-aliasing filter, as a known-bad baseline."""

    def resample(samples: Int16Array) -> Int16Array:
        converted, _ = audioop.ratecv(samples.tobytes(), 2, 1, src_rate, dst_rate, None)
        return np.frombuffer(converted, dtype=np.int16)

    return resample


def noise(count: int, seed: int = 0) -> Int16Array:
    return np.random.default_rng(seed).integers(-20000, 20000, size=count).astype(np.int16)


# ------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("bad_rate", [44100, 0, -8000, 8000.0, "8000", True])
def test_unsupported_rate_is_a_config_error_naming_it(bad_rate: object) -> None:
    with pytest.raises(ConfigError, match="src_rate") as raised:
        Resampler(bad_rate, 8000)  # type: ignore[arg-type]
    assert repr(bad_rate) in str(raised.value)
    with pytest.raises(ConfigError, match="dst_rate"):
        Resampler(8000, bad_rate)  # type: ignore[arg-type]


@pytest.mark.parametrize("taps", [0, 3, 257, 32.0])
def test_bad_taps_per_phase_is_a_config_error(taps: object) -> None:
    with pytest.raises(ConfigError, match="taps_per_phase"):
        Resampler(8000, 16000, taps_per_phase=taps)  # type: ignore[arg-type]


def test_input_must_be_int16_mono() -> None:
    resampler = Resampler(8000, 16000)
    with pytest.raises(TypeError, match="int16"):
        resampler.process(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        resampler.process(np.zeros((2, 160), dtype=np.int16))


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_equal_rates_pass_copies_through(rate: int) -> None:
    resampler = Resampler(rate, rate)
    samples = noise(321)
    out = resampler.process(samples)
    assert np.array_equal(out, samples)
    out[0] += 1
    assert out[0] != samples[0], "identity must return a copy, not the caller's array"
    assert resampler.flush().shape == (0,)
    assert resampler.delay_seconds == 0.0
    assert resampler.output_samples_after(321) == 321


# ---------------------------------------------------------------------------------- sizes and state


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from([*PAIRS, (8000, 8000)]),
    samples=arrays(np.int16, st.integers(0, 2500)),
    data=st.data(),
)
def test_any_chunking_gives_bit_identical_output_and_exact_counts(
    pair: tuple[int, int], samples: Int16Array, data: st.DataObject
) -> None:
    src_rate, dst_rate = pair
    whole = Resampler(src_rate, dst_rate)
    expected = np.concatenate([whole.process(samples), whole.flush()])

    cuts = sorted(data.draw(st.lists(st.integers(0, samples.shape[0]), max_size=40), label="cuts"))
    bounds = [0, *cuts, samples.shape[0]]
    chunked = Resampler(src_rate, dst_rate)
    pieces = []
    for start, stop in itertools.pairwise(bounds):  # repeated cuts make empty chunks
        promised = chunked.outputs_for(stop - start)  # what a caller can count on before the work
        pieces.append(chunked.process(samples[start:stop]))
        assert pieces[-1].shape[0] == promised
        returned = sum(piece.shape[0] for piece in pieces)
        # Never holds back: after n inputs exactly the documented count has come out, no less.
        assert returned == chunked.output_samples_after(stop)
    pieces.append(chunked.flush())

    assert np.array_equal(np.concatenate(pieces), expected)
    exact = samples.shape[0] * dst_rate / src_rate
    assert abs(expected.shape[0] - exact) <= 1
    assert expected.shape[0] == math.ceil(exact)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_resamplers_sharing_a_workspace_give_what_each_gives_alone(data: st.DataObject) -> None:
    # A server's calls share one workspace and interleave their steps: each stream must come out
    # bit-identical to a resampler of its own, through resets and flushes, whatever the order.
    workspace = ResamplerWorkspace()
    pair, other = (
        data.draw(st.sampled_from(PAIRS), label="pair"),
        data.draw(st.sampled_from(PAIRS), label="other"),
    )
    pairs = [pair, pair, other]  # two of one design, whose steps use the very same buffer
    shared = [Resampler(src, dst, workspace=workspace) for src, dst in pairs]
    alone = [Resampler(src, dst) for src, dst in pairs]
    steps = data.draw(
        st.lists(st.tuples(st.integers(0, len(pairs) - 1), st.integers(-1, 3000)), min_size=3, max_size=30),
        label="steps",
    )
    for number, (which, size) in enumerate(steps):
        if size < 0:
            got, want = shared[which].flush(), alone[which].flush()
        else:
            chunk = noise(size, seed=number)
            got, want = shared[which].process(chunk), alone[which].process(chunk)
        assert np.array_equal(got, want)


@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_one_sample_at_a_time_and_huge_calls_match(src_rate: int, dst_rate: int) -> None:
    samples = noise(3 * src_rate // 2)  # 1.5 s: several internal steps in one call
    whole = Resampler(src_rate, dst_rate)
    expected = np.concatenate([whole.process(samples), whole.flush()])
    trickle = Resampler(src_rate, dst_rate)
    pieces = [trickle.process(samples[i : i + 1]) for i in range(500)]
    pieces += [trickle.process(samples[500:]), trickle.flush()]
    assert np.array_equal(np.concatenate(pieces), expected)


@needs_kernel
@settings(max_examples=80, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    taps_per_phase=st.sampled_from([4, 9, 32, 64, 256]),
    data=st.data(),
)
def test_compiled_kernel_gives_the_numpy_reference_bit_for_bit(
    pair: tuple[int, int], taps_per_phase: int, data: st.DataObject
) -> None:
    # Whatever the stream does: chunks of any size (empty, one sample, longer than a numpy step),
    # full-scale samples that make the filter ring past int16, strided views, flushes and resets.
    src_rate, dst_rate = pair
    compiled = Resampler(src_rate, dst_rate, taps_per_phase=taps_per_phase, compiled=True)
    reference = Resampler(src_rate, dst_rate, taps_per_phase=taps_per_phase, compiled=False)
    assert compiled.compiled and not reference.compiled
    loud = st.sampled_from([-32768, 32767, 0, 1, -1])
    steps = data.draw(
        st.lists(st.one_of(st.integers(-2, 6000), st.just(1)), min_size=1, max_size=12), label="steps"
    )
    for number, size in enumerate(steps):
        if size == -1:
            got, want = compiled.flush(), reference.flush()
        elif size == -2:
            compiled.reset()
            reference.reset()
            continue
        else:
            chunk = noise(2 * size, seed=number)[::2] if number % 3 == 1 else noise(size, seed=number)
            if number % 2:
                chunk = chunk.copy()
                chunk[:: max(1, size // 7)] = data.draw(loud, label="loud")
            got, want = compiled.process(chunk), reference.process(chunk)
        assert got.dtype == np.int16 and got.flags.writeable
        assert np.array_equal(got, want)


def test_compiled_true_without_the_kernel_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "_dsp", None)
    assert not compiled_resampler_available()
    with pytest.raises(ConfigError, match="compiled"):
        Resampler(8000, 16000, compiled=True)
    assert not Resampler(8000, 16000).compiled  # the default falls back to numpy


@needs_kernel
@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"out": np.empty(4, dtype=np.int32)}, TypeError),  # not int16
        ({"history": np.zeros(8, dtype=np.float32)}, TypeError),  # not float64
        ({"held": 9}, ValueError),  # more history than the buffer has
        ({"keep_start": 40}, ValueError),  # keeps more than came in
        ({"keep_start": -1}, ValueError),
        ({"up": 0}, ValueError),
        ({"taps": np.zeros(5)}, ValueError),  # not a whole number of phases
        ({"first": -1}, ValueError),
    ],
)
def test_kernel_refuses_arguments_that_would_reach_outside_its_buffers(
    change: dict[str, object], error: type[Exception]
) -> None:
    # The kernel indexes raw memory: a caller's mistake must be an exception, never a crash.
    kernel = audio._dsp
    assert kernel is not None
    arguments: dict[str, object] = {
        "out": np.empty(4, dtype=np.int16),
        "history": np.zeros(8),
        "chunk": np.zeros(16, dtype=np.int16),
        "taps": np.ones(4),
        "held": 0,
        "up": 2,
        "down": 1,
        "first": 0,
        "keep_start": 10,
    }
    arguments.update(change)
    with pytest.raises(error):
        kernel.polyphase_step(*arguments.values())


@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_output_count_formula(src_rate: int, dst_rate: int) -> None:
    resampler = Resampler(src_rate, dst_rate)
    up, down = dst_rate // math.gcd(src_rate, dst_rate), src_rate // math.gcd(src_rate, dst_rate)
    for n in range(0, 600, 7):
        returned = resampler.output_samples_after(n)
        assert returned == max(0, math.ceil(n * up / down) - resampler.delay_samples)
        # Everything but the group delay is out: nothing is batched or held back beyond it.
        owed = n * dst_rate / src_rate - resampler.delay_samples
        assert owed <= returned < owed + 1 or (returned == 0 and owed <= 0)


@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_reset_and_flush_start_a_fresh_stream(src_rate: int, dst_rate: int) -> None:
    utterance = noise(1234, seed=1)
    fresh = Resampler(src_rate, dst_rate)
    expected = np.concatenate([fresh.process(utterance), fresh.flush()])

    reused = Resampler(src_rate, dst_rate)
    earlier = noise(10 * src_rate, seed=2)  # long enough to cycle through any internal buffer
    frame = src_rate // 50
    for start in range(0, earlier.shape[0] - frame, frame):
        reused.process(earlier[start : start + frame])
    reused.reset()  # barge-in: the old audio must not leak into the next utterance
    assert np.array_equal(np.concatenate([reused.process(utterance), reused.flush()]), expected)

    reused.process(earlier)
    reused.flush()  # the end of an utterance also leaves a fresh state behind
    assert np.array_equal(np.concatenate([reused.process(utterance), reused.flush()]), expected)


@pytest.mark.parametrize("compiled", KERNELS)
@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_output_is_the_documented_filter_exactly(src_rate: int, dst_rate: int, compiled: bool) -> None:
    """Zero-stuff by L, convolve with `filter_taps`, keep every M-th sample: the textbook definition."""
    resampler = Resampler(src_rate, dst_rate, compiled=compiled)
    samples = noise(2000, seed=3)
    got = np.concatenate([resampler.process(samples), resampler.flush()])

    common = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // common, src_rate // common
    stuffed = np.zeros(samples.shape[0] * up)
    stuffed[::up] = samples
    filtered = np.convolve(stuffed, resampler.filter_taps)[::down]
    start = resampler.delay_samples
    reference = np.clip(np.rint(filtered[start : start + got.shape[0]]), -32768, 32767)
    assert np.array_equal(got, reference)


# ------------------------------------------------------------------------------------------ quality


@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_passband_is_flat(src_rate: int, dst_rate: int) -> None:
    resample = one_shot(src_rate, dst_rate)
    assert dspmetrics.passband_ripple_db(resample, src_rate, dst_rate) <= PASSBAND_RIPPLE_MAX_DB
    gain = dspmetrics.tone_gain_db(resample, src_rate, dst_rate, 1000.0)
    assert abs(gain) <= PASSBAND_GAIN_TOLERANCE_DB


@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_aliases_and_images_are_rejected(src_rate: int, dst_rate: int) -> None:
    assert dspmetrics.rejection_db(one_shot(src_rate, dst_rate), src_rate, dst_rate) >= REJECTION_MIN_DB


def test_a_5khz_tone_does_not_fold_into_8khz_audio() -> None:
    level = dspmetrics.spurious_level_db(one_shot(16000, 8000), 16000, 8000, 5000.0, amplitude=0.95)
    assert level <= -REJECTION_MIN_DB
    # The bar can fail: audioop.ratecv has no anti-alias filter and folds 5 kHz to a full-level 3 kHz.
    assert dspmetrics.spurious_level_db(ratecv(16000, 8000), 16000, 8000, 5000.0, amplitude=0.95) > -3.0


def test_upsampled_1khz_has_no_images_above_4khz() -> None:
    level = dspmetrics.spurious_level_db(one_shot(8000, 16000), 8000, 16000, 1000.0)
    assert level <= -REJECTION_MIN_DB
    # ratecv's linear interpolation leaves the 7 kHz image well above the bar.
    assert dspmetrics.spurious_level_db(ratecv(8000, 16000), 8000, 16000, 1000.0) > -40.0


def test_more_taps_buy_more_rejection_for_more_delay() -> None:
    short, long = Resampler(16000, 8000), Resampler(16000, 8000, taps_per_phase=64)
    assert long.delay_seconds == pytest.approx(2 * short.delay_seconds)
    assert dspmetrics.rejection_db(one_shot(16000, 8000, taps_per_phase=64), 16000, 8000) >= 90.0


@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_latency_is_the_group_delay_and_small(src_rate: int, dst_rate: int) -> None:
    resampler = Resampler(src_rate, dst_rate)
    assert resampler.delay_seconds <= LATENCY_MAX_SECONDS
    # Output is time-aligned: a pulse comes out where it went in...
    aligned = dspmetrics.group_delay_seconds(one_shot(src_rate, dst_rate), src_rate, dst_rate)
    assert abs(aligned) <= 0.25 / dst_rate
    # ...and is returned late by exactly the group delay, whatever the chunk size (no batching).
    for chunk in (1, src_rate // 50, src_rate // 10):
        stream = Resampler(src_rate, dst_rate).process
        chunks = max(40, src_rate // 50 // chunk)  # at least 20 ms, longer than the delay
        held = dspmetrics.holdback_seconds(stream, src_rate, dst_rate, chunk_samples=chunk, chunks=chunks)
        assert held == pytest.approx(resampler.delay_seconds, abs=1.0 / dst_rate)
        assert aligned + held <= LATENCY_MAX_SECONDS


@pytest.mark.parametrize("compiled", KERNELS)
@pytest.mark.parametrize(("src_rate", "dst_rate"), PAIRS)
def test_full_scale_square_wave_saturates_instead_of_wrapping(
    src_rate: int, dst_rate: int, compiled: bool
) -> None:
    period = src_rate // 100  # 100 Hz
    square = np.where(np.arange(src_rate // 2) % period < period // 2, 32767, -32768).astype(np.int16)
    resampler = Resampler(src_rate, dst_rate, compiled=compiled)
    out = np.concatenate([resampler.process(square), resampler.flush()])

    # The filter rings past full scale at every edge, so saturation is really exercised here.
    common = math.gcd(src_rate, dst_rate)
    stuffed = np.zeros(square.shape[0] * (dst_rate // common))
    stuffed[:: dst_rate // common] = square
    unclipped = np.convolve(stuffed, resampler.filter_taps)[:: src_rate // common]
    assert unclipped.max() > 32767.5 and unclipped.min() < -32768.5
    assert out.max() == 32767 and out.min() == -32768

    # Away from the edges the sign follows the input: a wrapped sample would flip it.
    out_period = period * dst_rate // src_rate
    phase = np.arange(out.shape[0]) % out_period
    margin = out_period // 8
    high = (phase >= margin) & (phase < out_period // 2 - margin)
    low = (phase >= out_period // 2 + margin) & (phase < out_period - margin)
    assert out[high].min() > 30000
    assert out[low].max() < -30000
