"""Audio in the core layer: PCM16 and μ-law codecs, a streaming resampler, and fixed-size framing.

Everything here is a pure function of its inputs or a small object with explicit state; nothing touches
a socket or a clock. Samples are always 1-D ``int16`` numpy arrays (:data:`Samples`) in native byte
order; bytes on the wire are always little-endian, whatever the host.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from voicebot.errors import ConfigError
from voicebot.events import SUPPORTED_RATES, Encoding

# audioop is deprecated on 3.11/3.12 and removed in 3.13, where the ``audioop-lts`` package provides the
# same module. Its C codecs are ~5x faster than numpy lookup tables, so it is imported once, here, with
# only its own deprecation warning silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*audioop.*")
    import audioop


# The resampler's compiled kernel (voicebot/_dsp.c), built at install time where a C compiler is found.
# Without it the numpy code below does the same work, bit for bit, at 1.5-3x the CPU per step.
try:
    from voicebot import _dsp
except ImportError:
    _dsp = None  # type: ignore[assignment]

__all__ = [
    "FrameSplitter",
    "Resampler",
    "ResamplerWorkspace",
    "Samples",
    "compiled_resampler_available",
    "decode",
    "encode",
    "pcm16_from_bytes",
    "pcm16_to_bytes",
    "pcm16_to_ulaw",
    "silence",
    "to_int16",
    "tone",
    "ulaw_to_pcm16",
]

Samples: TypeAlias = npt.NDArray[np.int16]
"""Mono audio: a 1-D ``int16`` array in native byte order."""

_INT16: Final = np.dtype(np.int16)
_WIRE_INT16: Final = np.dtype("<i2")
_HOST_IS_LITTLE: Final = sys.byteorder == "little"
_INT16_MIN: Final = -32768.0
_INT16_MAX: Final = 32767.0


def _read_only(array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    array.flags.writeable = False
    return array


# As 0-d arrays, the clipping bounds skip numpy's conversion of a Python scalar on every call.
_INT16_MIN_ARRAY: Final = _read_only(np.array(_INT16_MIN))
_INT16_MAX_ARRAY: Final = _read_only(np.array(_INT16_MAX))


def _require_samples(samples: object, name: str) -> Samples:
    """Return ``samples`` if it is a 1-D int16 array, else raise naming the parameter and the rule."""
    if not isinstance(samples, np.ndarray):
        raise TypeError(f"{name} must be a numpy int16 array, got {type(samples).__name__}")
    if samples.dtype != _INT16:
        raise TypeError(
            f"{name} must have dtype int16, got {samples.dtype}; convert with voicebot.audio.to_int16()"
        )
    if samples.ndim != 1:
        raise ValueError(f"{name} must be 1-D (mono), got shape {samples.shape}")
    return samples


# --------------------------------------------------------------------------------------------- codecs


def pcm16_from_bytes(data: bytes) -> Samples:
    """Decode little-endian 16-bit PCM, dropping an odd trailing byte.

    On little-endian hosts this is a zero-copy view of ``data``: read-only when ``data`` is ``bytes``
    (call ``.copy()`` before modifying it), and aliasing the buffer when it is a ``bytearray``.
    """
    samples = np.frombuffer(data, dtype=_WIRE_INT16, count=len(data) // 2)
    return samples if _HOST_IS_LITTLE else samples.astype(_INT16)


def pcm16_to_bytes(samples: Samples) -> bytes:
    """Encode int16 samples as little-endian 16-bit PCM bytes."""
    checked = _require_samples(samples, "samples")
    if _HOST_IS_LITTLE:
        return checked.tobytes()
    return checked.astype(_WIRE_INT16).tobytes()


def ulaw_to_pcm16(data: bytes) -> Samples:
    """Decode G.711 μ-law bytes (one per sample) to int16 samples (a read-only array)."""
    # audioop works in native byte order, so its output is read back as native int16.
    return np.frombuffer(audioop.ulaw2lin(data, 2), dtype=_INT16)


def pcm16_to_ulaw(samples: Samples) -> bytes:
    """Encode int16 samples as G.711 μ-law bytes (one per sample)."""
    checked = _require_samples(samples, "samples")
    return audioop.lin2ulaw(np.ascontiguousarray(checked).data, 2)


def decode(payload: bytes, encoding: Encoding) -> Samples:
    """Decode a media payload (already base64-decoded) in the stream's encoding."""
    if encoding == Encoding.PCM16:
        return pcm16_from_bytes(payload)
    if encoding == Encoding.MULAW:
        return ulaw_to_pcm16(payload)
    raise ValueError(f"encoding must be one of {[e.value for e in Encoding]}, got {encoding!r}")


def encode(samples: Samples, encoding: Encoding) -> bytes:
    """Encode int16 samples for the wire in the stream's encoding (base64 is the caller's job)."""
    if encoding == Encoding.PCM16:
        return pcm16_to_bytes(samples)
    if encoding == Encoding.MULAW:
        return pcm16_to_ulaw(samples)
    raise ValueError(f"encoding must be one of {[e.value for e in Encoding]}, got {encoding!r}")


def to_int16(x: npt.ArrayLike) -> Samples:
    """Convert samples in int16 units (full scale ±32768) to int16: round to nearest, saturate.

    Out-of-range values clip to -32768/32767 (never wrap around); NaN becomes 0. Floats in [-1, 1]
    must be scaled by 32768 first.
    """
    values = np.asarray(x)
    if values.dtype == _INT16:
        return values.copy()
    if values.dtype.kind in "iub":
        return np.clip(values.astype(np.int64), -32768, 32767).astype(_INT16)
    if values.dtype.kind != "f":
        raise TypeError(f"x must be a real numeric array, got dtype {values.dtype}")
    rounded = np.rint(values.astype(np.float64))
    rounded[np.isnan(rounded)] = 0.0
    np.clip(rounded, _INT16_MIN, _INT16_MAX, out=rounded)
    return rounded.astype(_INT16)


# -------------------------------------------------------------------------------------------- signals


def _sample_count(seconds: float, sample_rate: int) -> int:
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"seconds must be finite and >= 0, got {seconds!r}")
    return round(seconds * sample_rate)


def tone(freq_hz: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> Samples:
    """A sine at ``freq_hz`` lasting ``seconds``, peak ``amplitude`` × full scale, starting at phase 0."""
    count = _sample_count(seconds, sample_rate)
    if not 0.0 <= freq_hz <= sample_rate / 2:
        raise ConfigError(f"freq_hz must be between 0 and sample_rate/2 ({sample_rate / 2}), got {freq_hz}")
    if not 0.0 <= amplitude <= 1.0:
        raise ConfigError(f"amplitude must be between 0 and 1 (fraction of full scale), got {amplitude}")
    phase = (2.0 * math.pi * freq_hz / sample_rate) * np.arange(count)
    return to_int16(amplitude * _INT16_MAX * np.sin(phase))


def silence(seconds: float, sample_rate: int) -> Samples:
    """``seconds`` of digital silence at ``sample_rate``."""
    return np.zeros(_sample_count(seconds, sample_rate), dtype=_INT16)


# ------------------------------------------------------------------------------------------ resampler


def _check_rate(name: str, rate: object) -> int:
    if not isinstance(rate, int) or isinstance(rate, bool) or rate not in SUPPORTED_RATES:
        raise ConfigError(f"{name} must be one of {list(SUPPORTED_RATES)} Hz, got {rate!r}")
    return rate


def _kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's empirical β for a window whose sidelobes sit ``attenuation_db`` down."""
    if attenuation_db > 50.0:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db > 21.0:
        return 0.5842 * math.pow(attenuation_db - 21.0, 0.4) + 0.07886 * (attenuation_db - 21.0)
    return 0.0


# Coefficients are rounded to multiples of 2**-30. An int16 sample times such a coefficient is exact in
# float64, and so is every partial sum (< 2**22 in magnitude, 52 bits of mantissa), so each output is the
# same exact number whatever order BLAS adds the products in. That is what makes the output of any
# chunking bit-identical to a single call, independent of which matrix kernel numpy picks.
_COEFF_QUANTUM: Final = 2.0**-30

# Input samples one internal step handles at most; longer inputs are processed in steps, which (by the
# exactness above) changes nothing, and bounds a step's work buffer (the shared workspace's, or the one
# the compiled kernel allocates, so a minute-long prompt does not cost megabytes at once): 100 ms at the
# highest rate, so a wire chunk or a burst of bot audio is one step.
_MAX_STEP: Final = 2400
# Outputs computed per row of the window matrix. One output per row makes the strided view copy the
# whole filter span for every output (a 33-65x blow-up of the input); ~16 per row shares that span
# between neighbours and gives BLAS a matrix instead of a vector. Measured 2-4x faster per call.
_OUTPUTS_PER_ROW: Final = 16


@dataclass(frozen=True, slots=True)
class _FilterDesign:
    """Everything about a resampler that depends only on its rates: shared by every instance."""

    up: int
    down: int
    taps: npt.NDArray[np.float64]
    matrix: npt.NDArray[np.float64]
    delay_samples: int
    reach: int
    row_span: int
    blocks_per_row: int
    phase_taps: npt.NDArray[np.float64]


@functools.lru_cache(maxsize=64)
def _filter_design(src_rate: int, dst_rate: int, taps_per_phase: int) -> _FilterDesign:
    """The polyphase filter for one rate pair, computed once per process and read-only after: a
    server with hundreds of calls keeps one copy of each matrix, hot in the CPU cache, instead of
    one per call."""
    common = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // common, src_rate // common
    if up == down:
        return _FilterDesign(
            up, down, _read_only(np.ones(1)), _read_only(np.ones((1, 1))), 0, 0, 0, 1, _read_only(np.ones(1))
        )
    high_rate = src_rate * up
    edge_hz = min(src_rate, dst_rate) / 2
    # The centre tap sits on a multiple of `down`, so the delay is a whole number of output samples
    # and the output can be time-aligned exactly.
    centre = down * math.ceil(taps_per_phase * max(up, down) / (2 * down))
    length = 2 * centre + 1
    transition = 2 * math.pi * (0.3 * edge_hz) / high_rate  # 0.85x..1.15x of the edge, in rad/sample
    attenuation_db = 2.285 * (length - 1) * transition + 7.95
    cutoff = edge_hz / high_rate  # the sinc's 6 dB point, in cycles/sample at the common rate
    offsets = np.arange(length) - centre
    taps = 2 * cutoff * np.sinc(2 * cutoff * offsets) * np.kaiser(length, _kaiser_beta(attenuation_db))
    # Each polyphase branch (taps congruent mod `up`) makes one output phase: giving every branch a
    # sum of exactly 1 passes DC at unity gain in every phase, which also restores the gain of `up`
    # that zero-stuffing takes away.
    for branch in range(up):
        taps[branch::up] /= taps[branch::up].sum()
    quantized = np.round(taps / _COEFF_QUANTUM) * _COEFF_QUANTUM
    delay_samples = centre // down

    # Outputs come in blocks of `up`, one per phase p; block q reads inputs from q·down − reach to
    # q·down + last, where `last` is how far ahead the block's final phase looks. One row of the
    # window view covers `blocks_per_row` consecutive blocks.
    last = ((up - 1) * down) // up
    reach = (2 * centre) // up
    block_span = last + reach + 1
    blocks_per_row = -(-_OUTPUTS_PER_ROW // up)
    row_span = block_span + (blocks_per_row - 1) * down
    positions = np.arange(block_span)[:, np.newaxis]
    tap = np.arange(up)[np.newaxis, :] * down + (reach - positions) * up
    block = np.where((tap >= 0) & (tap < length), quantized[np.clip(tap, 0, length - 1)], 0.0)
    matrix = np.zeros((row_span, blocks_per_row * up))
    for index in range(blocks_per_row):
        matrix[index * down : index * down + block_span, index * up : (index + 1) * up] = block
    phase_taps = np.ascontiguousarray(block.T).reshape(-1)
    return _FilterDesign(
        up,
        down,
        _read_only(quantized),
        _read_only(matrix),
        delay_samples,
        reach,
        row_span,
        blocks_per_row,
        _read_only(phase_taps),
    )


class ResamplerWorkspace:
    """Work buffers that resamplers can share: one per filter design, reused by every numpy step (the
    compiled kernel keeps its own, for the length of one step).

    A step copies its resampler's short history and the new input to the front of a buffer, works
    there, and copies the new history back, so nothing in the buffer outlives a step. A server gives
    one workspace to every resampler it runs: with hundreds of calls that is one hot buffer per rate
    pair instead of hundreds of mostly cold ones (~10 % less time per step with 400 resamplers), and
    ~10-20 KiB less memory per resampler. Share a workspace only between resamplers used from one
    thread; a resampler given none gets its own.
    """

    __slots__ = ("_by_design",)

    def __init__(self) -> None:
        self._by_design: dict[
            tuple[int, int, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
        ] = {}

    def rows(
        self, key: tuple[int, int, int], row_span: int, stride: int, needed: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """A buffer of at least ``needed`` samples and its strided view of rows (one every ``stride``)."""
        found = self._by_design.get(key)
        if found is not None and found[0].shape[0] >= needed:
            return found
        capacity = max(needed, 2 * found[0].shape[0] if found is not None else 0)
        # Zeros, and only finite samples after: the last row of a step may read past the input it was
        # given, where a zero coefficient times a stale finite sample adds exactly 0.
        buffer = np.zeros(capacity)
        item = buffer.itemsize
        rows: npt.NDArray[np.float64] = np.ndarray(
            ((capacity - row_span) // stride + 1, row_span), np.float64, buffer, 0, (stride * item, item)
        )
        rows.flags.writeable = False
        self._by_design[key] = (buffer, rows)
        return buffer, rows


class Resampler:
    """A streaming polyphase resampler between two of Exotel's rates (8000, 16000, 24000 Hz).

    The filter is a Kaiser-windowed sinc designed at the common rate ``src_rate × L`` (``L/M`` is the
    reduced ratio ``dst_rate/src_rate``): its 6 dB point is at the lower of the two Nyquist
    frequencies, its transition band runs from 0.85× to 1.15× of it, and it spans ``taps_per_phase``
    samples of the lower rate, so every ratio reaches the same ≈ 76 dB stopband (β from Kaiser's
    formula for that attenuation). Each call evaluates all new outputs at once as one strided window
    view over (history + new input) times one small precomputed matrix; history is carried between
    calls, and the arithmetic is exact before rounding, so any chunking of the input gives output
    bit-identical to one call on the whole input.

    Timing contract:

    * Output is time-aligned with the input: output sample ``k`` is the signal at time
      ``k / dst_rate``. The filter is causal, so an output sample is returned as soon as the last input
      it needs has arrived, which is :attr:`delay_seconds` (2 ms for pairs with 8 kHz, 1 ms for
      16k↔24k) after its own time. Nothing else is held back: there is no internal batching.
    * After ``n`` input samples since the last reset, :meth:`process` has returned exactly
      :meth:`output_samples_after` ``(n) = max(0, ceil(n·L/M) − delay_samples)`` samples in total.
    * :meth:`flush` feeds zeros to emit the last :attr:`delay_seconds` of audio, so that an utterance
      of ``n`` samples yields ``ceil(n·dst_rate/src_rate)`` samples in total, then resets.

    Equal rates give an identity resampler that keeps this API and returns copies.

    ``workspace``: a :class:`ResamplerWorkspace` to share with other resamplers used from the same
    thread (a server passes one to all its calls); by default the resampler has its own.

    ``compiled``: run each step in the compiled kernel (``voicebot._dsp``, built at install where a C
    compiler is found; 1.5-3x faster per step) or in numpy, the reference. The output is bit-identical
    either way. None (the default) uses the kernel when it was built; True raises ``ConfigError`` if
    it was not.
    """

    __slots__ = (
        "_blocks_per_row",
        "_compiled",
        "_delay_samples",
        "_dst_rate",
        "_held",
        "_history",
        "_input_count",
        "_key",
        "_matrix",
        "_output_count",
        "_phase_taps",
        "_reach",
        "_row_span",
        "_src_rate",
        "_step_down",
        "_step_up",
        "_taps",
        "_work",
    )

    def __init__(
        self,
        src_rate: int,
        dst_rate: int,
        *,
        taps_per_phase: int = 32,
        workspace: ResamplerWorkspace | None = None,
        compiled: bool | None = None,
    ) -> None:
        self._src_rate = _check_rate("src_rate", src_rate)
        self._dst_rate = _check_rate("dst_rate", dst_rate)
        if (
            not isinstance(taps_per_phase, int)
            or isinstance(taps_per_phase, bool)
            or not 4 <= taps_per_phase <= 256
        ):
            raise ConfigError(f"taps_per_phase must be an int from 4 to 256, got {taps_per_phase!r}")
        design = _filter_design(src_rate, dst_rate, taps_per_phase)
        self._step_up, self._step_down = design.up, design.down
        self._taps = design.taps
        self._matrix = design.matrix
        self._delay_samples = design.delay_samples
        self._reach = design.reach
        self._row_span = design.row_span
        self._blocks_per_row = design.blocks_per_row
        self._phase_taps = design.phase_taps
        available = compiled_resampler_available()
        if compiled and not available:
            raise ConfigError("compiled=True, but voicebot._dsp was not built (no C compiler at install)")
        self._compiled = available if compiled is None else compiled
        self._key = (src_rate, dst_rate, taps_per_phase)
        self._work = workspace if workspace is not None else ResamplerWorkspace()
        # The inputs the next outputs still need: history[:held] (see reset).
        self._history = np.zeros(self._row_span + 2 * self._blocks_per_row * self._step_down)
        self._held = 0
        self.reset()

    @property
    def compiled(self) -> bool:
        """Whether steps run in the compiled kernel rather than the numpy reference (same output)."""
        return self._compiled

    @property
    def src_rate(self) -> int:
        """The input sample rate in Hz."""
        return self._src_rate

    @property
    def dst_rate(self) -> int:
        """The output sample rate in Hz."""
        return self._dst_rate

    @property
    def delay_samples(self) -> int:
        """The filter's group delay in output samples: how late each output sample is returned."""
        return self._delay_samples

    @property
    def delay_seconds(self) -> float:
        """The filter's group delay in seconds (0 for equal rates): the latency this resampler adds."""
        return self._delay_samples / self._dst_rate

    @property
    def filter_taps(self) -> npt.NDArray[np.float64]:
        """The prototype low-pass at rate ``src_rate × L``, DC gain ``L`` (a read-only copy)."""
        taps = self._taps.copy()
        taps.flags.writeable = False
        return taps

    def outputs_for(self, more_input: int) -> int:
        """How many samples :meth:`process` would return for ``more_input`` further input samples."""
        if self._step_up == self._step_down:
            return more_input
        # _output_count is max(delay, ceil(taken·L/M)): the difference of two output_samples_after.
        ahead = -((-(self._input_count + more_input) * self._step_up) // self._step_down)
        return ahead - self._output_count if ahead > self._output_count else 0

    def output_samples_after(self, input_samples: int) -> int:
        """How many samples :meth:`process` returns in total for ``input_samples`` since the last reset."""
        ahead = -((-input_samples * self._step_up) // self._step_down)
        return max(0, ahead - self._delay_samples)

    def reset(self) -> None:
        """Drop all state (history and pending output), e.g. after a barge-in; the next call starts fresh."""
        self._input_count = 0
        self._output_count = self._delay_samples
        # history[0] holds input index (output_count // up)·down − reach, the first input the next
        # output block reads. Indices below 0 are the silence before the stream started.
        self._held = max(0, self._reach - (self._output_count // self._step_up) * self._step_down)
        self._history[: self._held] = 0.0

    def process(self, samples: Samples) -> Samples:
        """Resample the next piece of the stream; returns every output sample it makes available."""
        checked = _require_samples(samples, "samples")
        count = checked.shape[0]
        if self._step_up == self._step_down:
            self._input_count += count
            return checked.copy()
        if count <= _MAX_STEP:
            return self._step(checked, None)
        pieces = [self._step(checked[i : i + _MAX_STEP], None) for i in range(0, count, _MAX_STEP)]
        return np.concatenate(pieces)

    def flush(self) -> Samples:
        """Emit the tail still inside the filter, then reset.

        After an utterance of ``n`` samples, :meth:`process` plus :meth:`flush` have returned
        ``ceil(n·dst_rate/src_rate)`` samples in total.
        """
        if self._step_up == self._step_down:
            self.reset()
            return np.zeros(0, dtype=_INT16)
        up, down = self._step_up, self._step_down
        wanted = -((-self._input_count * up) // down) + self._delay_samples
        padding = max(0, -((-wanted * down) // up) - self._input_count)
        tail = self._step(np.zeros(padding, dtype=_INT16), wanted)
        self.reset()
        return tail

    def _step(self, chunk: Samples, limit: int | None) -> Samples:
        """One step of at most ``_MAX_STEP`` inputs, giving at most ``limit`` outputs in all."""
        if self._compiled:
            return self._step_compiled(chunk, limit)
        return self._step_numpy(chunk, limit)

    def _step_numpy(self, chunk: Samples, limit: int | None) -> Samples:
        up, down = self._step_up, self._step_down
        count = chunk.shape[0]
        held = self._held
        end = held + count
        stride = self._blocks_per_row * down
        # Room for the rows up to the end of the input, plus what the last row may read past it.
        buffer, rows_view = self._work.rows(
            self._key, self._row_span, stride, end + 2 * stride + self._row_span
        )
        buffer[:held] = self._history[:held]
        buffer[held:end] = chunk
        first, available = self._advance(count, limit)
        if available <= first:
            self._keep(buffer, 0, end)
            return np.zeros(0, dtype=_INT16)
        first_block = first // up
        rows = ((available - 1) // up - first_block) // self._blocks_per_row + 1
        # The last row may read past the input. The outputs returned do not use those samples (their
        # coefficients there are 0, and 0 × a stale finite sample is 0); the others are dropped.
        outputs: npt.NDArray[np.float64] = np.dot(rows_view[:rows], self._matrix).reshape(-1)
        offset = first - first_block * up
        result = outputs[offset : offset + available - first]
        np.rint(result, out=result)
        np.minimum(result, _INT16_MAX_ARRAY, out=result)
        np.maximum(result, _INT16_MIN_ARRAY, out=result)
        self._output_count = available
        self._keep(buffer, (available // up - first_block) * down, end)
        return result.astype(_INT16)

    def _advance(self, count: int, limit: int | None) -> tuple[int, int]:
        """Count ``count`` more inputs; return ``(first, available)``: this step makes outputs
        ``[first, available)`` (none when ``available <= first``), at most up to ``limit``."""
        self._input_count += count
        available = -((-self._input_count * self._step_up) // self._step_down)
        if limit is not None and limit < available:
            available = limit
        return self._output_count, available

    def _step_compiled(self, chunk: Samples, limit: int | None) -> Samples:
        """:meth:`_step_numpy` in the compiled kernel: the same outputs and history."""
        up, down = self._step_up, self._step_down
        held = self._held
        end = held + chunk.shape[0]
        first, available = self._advance(chunk.shape[0], limit)
        if available < first:
            available = first
        keep_start = (available // up - first // up) * down
        if end - keep_start > self._history.shape[0]:
            grown = np.zeros(max(end - keep_start, 2 * self._history.shape[0]))
            grown[:held] = self._history[:held]
            self._history = grown
        result = np.empty(available - first, dtype=_INT16)
        _dsp.polyphase_step(result, self._history, chunk, self._phase_taps, held, up, down, first, keep_start)
        self._output_count = available
        self._held = end - keep_start
        return result

    def _keep(self, buffer: npt.NDArray[np.float64], start: int, end: int) -> None:
        """Save ``buffer[start:end]`` as the history the next step starts from."""
        held = end - start
        if held > self._history.shape[0]:
            self._history = np.zeros(max(held, 2 * self._history.shape[0]))
        self._history[:held] = buffer[start:end]
        self._held = held


def compiled_resampler_available() -> bool:
    """Whether the resampler's compiled kernel was built; without it, resampling uses numpy alone."""
    return _dsp is not None


# -------------------------------------------------------------------------------------------- framing


class FrameSplitter:
    """Cuts a stream of samples into frames of exactly ``frame_samples``, keeping the remainder.

    Frames returned are new arrays: they never alias the input or each other's storage beyond one
    ``push`` call, so callers may keep them.
    """

    __slots__ = ("_frame_samples", "_partial", "_pending")

    def __init__(self, frame_samples: int) -> None:
        if not isinstance(frame_samples, int) or isinstance(frame_samples, bool) or frame_samples <= 0:
            raise ConfigError(f"frame_samples must be a positive int, got {frame_samples!r}")
        self._frame_samples = frame_samples
        self._partial = np.zeros(frame_samples, dtype=_INT16)
        self._pending = 0

    @classmethod
    def for_duration(cls, sample_rate: int, seconds: float = 0.02) -> FrameSplitter:
        """A splitter for frames of ``seconds`` at ``sample_rate`` (20 ms by default)."""
        count = _sample_count(seconds, sample_rate)
        if count <= 0:
            raise ConfigError(f"seconds must give at least one sample at {sample_rate} Hz, got {seconds}")
        return cls(count)

    @property
    def frame_samples(self) -> int:
        """The size of every frame :meth:`push` returns."""
        return self._frame_samples

    @property
    def pending(self) -> int:
        """Samples held back until the next frame is complete (always < ``frame_samples``)."""
        return self._pending

    def push(self, samples: Samples) -> list[Samples]:
        """Add samples; return the frames they complete, in order (possibly none)."""
        remaining = _require_samples(samples, "samples")
        size = self._frame_samples
        pending = self._pending
        total = pending + remaining.shape[0]
        if total < size:
            self._partial[pending:total] = remaining
            self._pending = total
            return []
        # The frames are views of one new block: the pending samples, then the new ones.
        framed = total - total % size
        block = np.empty(framed, dtype=_INT16)
        if pending:
            block[:pending] = self._partial[:pending]
        used = framed - pending
        block[pending:] = remaining[:used]
        rest = total - framed
        if rest:
            self._partial[:rest] = remaining[used:]
        self._pending = rest
        if framed == size:
            return [block]
        return [block[start : start + size] for start in range(0, framed, size)]

    def flush(self, pad: bool = True) -> Samples | None:
        """Return the pending samples (zero-padded to a full frame if ``pad``) or None if there are none."""
        if not self._pending:
            return None
        if pad:
            frame = self._partial.copy()
            frame[self._pending :] = 0
        else:
            frame = self._partial[: self._pending].copy()
        self._pending = 0
        return frame

    def reset(self) -> None:
        """Drop pending samples."""
        self._pending = 0
