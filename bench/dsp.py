"""Per-frame DSP cost and resampler quality, voicebot next to soxr and audioop.ratecv, in one run.

    python bench/dsp.py [--seconds S] [--quick]

Times are µs per call from ``time.perf_counter`` over a pass of ``--seconds`` of audio, as the minimum
and median over repeated passes (the minimum is the machine's best, the median what a busy machine
gives). "20 ms" rows feed one 20 ms frame per call; "100 ms" rows feed Exotel's real inbound cadence.
Ratios compare against soxr in the same run, so they hold even where absolute figures drift.

The quality table measures every resampler with ``voicebot.dspmetrics`` (the same functions the tests
assert with): passband ripple to 0.85 × the lower Nyquist, alias/image rejection, group delay of the
output content, and hold-back, the most input a streaming resampler has taken in (20 ms at a time, over
the first second) without returning output for it. Latency is group delay plus hold-back.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from voicebot import audio, dspmetrics
from voicebot.events import Encoding

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*audioop.*")
    import audioop

try:
    import soxr
except ImportError:  # the rows that need it say so
    soxr = None

Int16Array = npt.NDArray[np.int16]
Stream = Callable[[Int16Array], Any]
PAIRS = [(8000, 16000), (16000, 8000), (8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)]
FRAME_S = 0.02
CHUNK_S = 0.1


# --------------------------------------------------------------------------------------------- timing


def time_calls(call: Callable[[Any], object], inputs: Sequence[Any], repeats: int) -> tuple[float, float]:
    """(min, median) over ``repeats`` passes of the mean µs per call of ``call`` over ``inputs``."""
    call(inputs[0])  # warm caches and lazy allocations
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in inputs:
            call(item)
        per_call.append((time.perf_counter() - start) / len(inputs) * 1e6)
    return min(per_call), statistics.median(per_call)


def speech_like(seconds: float, rate: int, seed: int = 0) -> Int16Array:
    """A few drifting tones plus noise at a conversational level: realistic values, not silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    signal = np.asarray(rng.normal(0, 800, t.shape[0]), dtype=np.float64)
    for freq in (180, 730, 1900, 3100):
        signal += 3000 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6))
    return audio.to_int16(signal)


def cut(samples: Int16Array, size: int) -> list[Int16Array]:
    return [samples[i : i + size] for i in range(0, samples.shape[0] - size + 1, size)]


def fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:8.2f} /{pair[1]:8.2f}"


# ---------------------------------------------------------------------------------------- resamplers


def voicebot_stream(src: int, dst: int) -> Stream:
    return audio.Resampler(src, dst).process


def soxr_stream(src: int, dst: int) -> Stream | None:
    if soxr is None:
        return None
    return soxr.ResampleStream(src, dst, 1, dtype="int16", quality="HQ").resample_chunk  # type: ignore[no-any-return]


def ratecv_stream(src: int, dst: int) -> Stream:
    state: list[Any] = [None]

    def process(samples: Int16Array) -> Int16Array:
        converted, state[0] = audioop.ratecv(samples.tobytes(), 2, 1, src, dst, state[0])
        return np.frombuffer(converted, dtype=np.int16)

    return process


def one_shot(kind: str, src: int, dst: int) -> dspmetrics.ResampleFn | None:
    """A whole-signal resampler: stream the input in 20 ms frames, then flush the tail."""
    frame = round(FRAME_S * src)

    def run(samples: Int16Array) -> Int16Array:
        pieces: list[Int16Array] = []
        if kind == "voicebot":
            resampler = audio.Resampler(src, dst)
            pieces = [resampler.process(samples[i : i + frame]) for i in range(0, samples.shape[0], frame)]
            pieces.append(resampler.flush())
        elif kind == "soxr":
            stream = soxr.ResampleStream(src, dst, 1, dtype="int16", quality="HQ")
            pieces = [
                stream.resample_chunk(samples[i : i + frame]) for i in range(0, samples.shape[0], frame)
            ]
            pieces.append(stream.resample_chunk(samples[:0], last=True))
        else:
            process = ratecv_stream(src, dst)
            pieces = [process(samples[i : i + frame]) for i in range(0, samples.shape[0], frame)]
        return np.concatenate(pieces)

    return None if kind == "soxr" and soxr is None else run


# ------------------------------------------------------------------------------ other engineers' code


def jitter_row(rate: int, chunks: list[Int16Array], repeats: int) -> tuple[str, tuple[float, float] | str]:
    """JitterBuffer: push one chunk, then pop on a 20 ms tick until the next chunk is due.

    Adapts to the API in voicebot/jitter.py if it exists: ``JitterBuffer(sample_rate=…[, frame_samples=…])``,
    ``push(samples, sequence_number=…, timestamp_ms=…, now=…)``, ``pop(now) -> list of frames``.
    """
    span = chunks[0].shape[0] / rate
    pops = round(span / FRAME_S)
    label = f"JitterBuffer push {span * 1000:.0f} ms + {pops} pop{'s' if pops > 1 else ''}"
    try:
        from voicebot.jitter import JitterBuffer
    except Exception as error:  # not written yet, or broken: report, don't crash the bench
        return label, f"skipped: cannot import voicebot.jitter ({error.__class__.__name__})"
    try:
        init = inspect.signature(JitterBuffer).parameters
        kwargs: dict[str, Any] = {"sample_rate": rate}
        if "frame_samples" in init:
            kwargs["frame_samples"] = round(FRAME_S * rate)
        buffer: Any = JitterBuffer(**kwargs)
        push = inspect.signature(buffer.push).parameters
        state = {"now": 0.0, "sequence": 0, "frames": 0}

        def step(samples: Int16Array) -> None:
            state["sequence"] += 1
            args: dict[str, Any] = {}
            if "sequence_number" in push:
                args["sequence_number"] = state["sequence"]
            if "timestamp_ms" in push:
                args["timestamp_ms"] = round(state["now"] * 1000)
            if "now" in push:
                args["now"] = state["now"]
            buffer.push(samples, **args)
            for _ in range(pops):
                state["frames"] += len(buffer.pop(state["now"]))
                state["now"] += FRAME_S

        for chunk in chunks:
            step(chunk)
        if state["frames"] == 0:
            return label, "skipped: pop() released no frames with the expected API"
    except Exception as error:
        return label, f"skipped: API differs from the expected one ({error!r:.80})"
    return label, time_calls(step, chunks, repeats)


def chunker_row(rate: int, frames: list[Int16Array], repeats: int) -> tuple[str, tuple[float, float] | str]:
    """Chunker: push a 20 ms frame, take the chunks it completes, encode and base64 them.

    Adapts to voicebot/pacing.py: ``Chunker(ChunkPlan(rate, encoding))`` with ``take_chunk()``, or the
    older sketch ``Chunker(sample_rate=…, encoding=…)`` with ``pop_ready()``.
    """
    label = "Chunker push + chunk + encode + base64, per 20 ms"
    try:
        from voicebot import pacing as module
    except Exception as error:
        return label, f"skipped: cannot import voicebot.pacing ({error.__class__.__name__})"
    pacing: Any = module  # its API is still settling; probe it at run time
    try:
        if hasattr(pacing, "ChunkPlan"):
            chunker = pacing.Chunker(pacing.ChunkPlan(rate, Encoding.PCM16))

            def ready() -> list[Int16Array]:
                chunk = chunker.take_chunk()
                return [] if chunk is None else [chunk.samples]
        else:
            chunker = pacing.Chunker(sample_rate=rate, encoding=Encoding.PCM16)

            def ready() -> list[Int16Array]:
                return [getattr(item, "samples", item) for item in chunker.pop_ready()]

        def step(samples: Int16Array) -> None:
            chunker.push(samples)
            for chunk in ready():
                base64.b64encode(audio.encode(chunk, Encoding.PCM16))

        step(frames[0])
    except Exception as error:
        return label, f"skipped: API differs from the expected one ({error!r:.80})"
    return label, time_calls(step, frames, repeats)


# ------------------------------------------------------------------------------------------- reports


def codec_table(seconds: float, repeats: int) -> None:
    print("== Codecs: µs per call, min / median ==")
    rows: list[tuple[str, tuple[float, float]]] = []
    for rate, span in ((8000, FRAME_S), (16000, CHUNK_S)):
        frames = cut(speech_like(seconds, rate), round(span * rate))
        payloads = [base64.b64encode(audio.pcm16_to_bytes(f)).decode() for f in frames]
        label = f"{rate // 1000}k {span * 1000:.0f} ms"
        rows.append(
            (
                f"PCM16 decode, base64 + bytes→int16 ({label})",
                time_calls(lambda p: audio.pcm16_from_bytes(base64.b64decode(p)), payloads, repeats),
            )
        )
        rows.append(
            (
                f"PCM16 encode, int16→bytes + base64 ({label})",
                time_calls(lambda f: base64.b64encode(audio.pcm16_to_bytes(f)), frames, repeats),
            )
        )
    frames = cut(speech_like(seconds, 8000), 160)
    ulaw = [audio.pcm16_to_ulaw(f) for f in frames]
    table = audio.ulaw_to_pcm16(bytes(range(256)))
    rows.append(("μ-law decode, audioop (8k 20 ms)", time_calls(audio.ulaw_to_pcm16, ulaw, repeats)))
    rows.append(
        (
            "μ-law decode, numpy table, for comparison",
            time_calls(lambda b: table[np.frombuffer(b, dtype=np.uint8)], ulaw, repeats),
        )
    )
    rows.append(("μ-law encode, audioop (8k 20 ms)", time_calls(audio.pcm16_to_ulaw, frames, repeats)))
    for label, result in rows:
        print(f"  {label:<58} {fmt(result)}")


def resampler_table(seconds: float, repeats: int) -> list[tuple[str, float]]:
    print()
    kernel = "compiled kernel" if audio.compiled_resampler_available() else "numpy: kernel not built"
    print(f"== Resamplers: µs per call, min / median; ratio = voicebot ({kernel}) / soxr (min) ==")
    print(
        f"  {'pair':<13} {'cadence':>7}  {'voicebot':>18}  {'voicebot numpy':>18}  {'soxr HQ':>18}  "
        f"{'audioop.ratecv':>18}  ratio"
    )
    ratios: list[tuple[str, float]] = []
    for src, dst in PAIRS:
        signal = speech_like(seconds, src)
        for span in (FRAME_S, CHUNK_S):
            frames = cut(signal, round(span * src))
            ours = time_calls(voicebot_stream(src, dst), frames, repeats)
            reference = time_calls(audio.Resampler(src, dst, compiled=False).process, frames, repeats)
            stream = soxr_stream(src, dst)
            theirs = time_calls(stream, frames, repeats) if stream else None
            linear = time_calls(ratecv_stream(src, dst), frames, repeats)
            ratio = f"{ours[0] / theirs[0]:5.2f}x" if theirs else "  n/a"
            pair = f"{src // 1000}k→{dst // 1000}k"
            soxr_text = fmt(theirs) if theirs else f"{'(soxr missing)':>18}"
            print(
                f"  {pair:<13} {span * 1000:5.0f}ms  {fmt(ours)}  {fmt(reference)}  {soxr_text}  "
                f"{fmt(linear)}  {ratio}"
            )
            if theirs:
                ratios.append((f"{span * 1000:.0f}ms", ours[0] / theirs[0]))
    return ratios


def pipeline_table(seconds: float, repeats: int) -> None:
    print()
    print("== Other core pieces: µs per call, min / median ==")
    for rate in (8000, 16000):
        signal = speech_like(seconds, rate)
        rows = [
            jitter_row(rate, cut(signal, round(FRAME_S * rate)), repeats),
            jitter_row(rate, cut(signal, round(CHUNK_S * rate)), repeats),
            chunker_row(rate, cut(signal, round(FRAME_S * rate)), repeats),
        ]
        for label, result in rows:
            text = fmt(result) if isinstance(result, tuple) else result
            print(f"  {label + f' ({rate // 1000}k)':<58} {text}")


def quality_table(quick: bool) -> None:
    print()
    print("== Resampler quality (voicebot.dspmetrics) ==")
    print(
        f"  {'pair':<9} {'resampler':<15} {'ripple dB':>10} {'rejection dB':>13} "
        f"{'delay ms':>9} {'hold-back ms':>13} {'latency ms':>11}"
    )
    step = 200.0 if quick else 100.0
    for src, dst in PAIRS:
        for kind in ("voicebot", "soxr", "ratecv"):
            resample = one_shot(kind, src, dst)
            if resample is None:
                print(f"  {f'{src // 1000}k→{dst // 1000}k':<9} {kind:<15} (not installed)")
                continue
            ripple = dspmetrics.passband_ripple_db(resample, src, dst, step_hz=step)
            rejection = dspmetrics.rejection_db(resample, src, dst)
            delay = dspmetrics.group_delay_seconds(resample, src, dst)
            make = {"voicebot": voicebot_stream, "soxr": soxr_stream, "ratecv": ratecv_stream}[kind]
            stream = make(src, dst)
            assert stream is not None
            held = dspmetrics.holdback_seconds(
                stream, src, dst, chunk_samples=round(FRAME_S * src), chunks=50
            )
            name = "soxr HQ" if kind == "soxr" else ("audioop.ratecv" if kind == "ratecv" else kind)
            print(
                f"  {f'{src // 1000}k→{dst // 1000}k':<9} {name:<15} {ripple:10.4f} {rejection:13.1f} "
                f"{delay * 1e3:9.3f} {held * 1e3:13.2f} {(delay + held) * 1e3:11.2f}"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=None, help="audio per timing pass (default 2, quick 0.5)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer, shorter passes and a coarser ripple sweep"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 2.0)
    if not seconds > 0:
        parser.error("--seconds must be > 0")
    repeats = 7 if args.quick else 25
    seconds = max(seconds, 0.2)  # at least two 100 ms chunks per pass

    soxr_version = getattr(soxr, "__version__", "missing") if soxr else "missing"
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  soxr {soxr_version}  "
        f"cpus {os.cpu_count()}  pass {seconds:g} s × {repeats}"
    )
    print()
    codec_table(seconds, repeats)
    ratios = resampler_table(seconds, repeats)
    pipeline_table(seconds, repeats)
    quality_table(args.quick)
    if ratios:
        print()
        for cadence in ("20ms", "100ms"):
            values = [r for c, r in ratios if c == cadence]
            geo = float(np.exp(np.mean(np.log(values))))
            print(
                f"voicebot / soxr time at {cadence:>5}: geometric mean {geo:.2f}x, "
                f"range {min(values):.2f}x–{max(values):.2f}x"
            )


if __name__ == "__main__":
    main()
