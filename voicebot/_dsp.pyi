"""Types of the compiled kernels in ``_dsp.c`` (used by ``voicebot.audio`` and ``voicebot.protocol``)."""

import numpy as np
import numpy.typing as npt

def polyphase_step(
    out: npt.NDArray[np.int16],
    history: npt.NDArray[np.float64],
    chunk: npt.NDArray[np.int16],
    taps: npt.NDArray[np.float64],
    held: int,
    up: int,
    down: int,
    first: int,
    keep_start: int,
    /,
) -> None:
    """One streaming polyphase resampler step, in place: outputs into ``out``, new history into
    ``history``."""

def b64decode_canonical(text: str, /) -> bytes | None:
    """``binascii.a2b_base64(text, strict_mode=True)`` for canonical base64; None for any other text."""

def b64encode_ascii(data: bytes, /) -> str:
    """``binascii.b2a_base64(data, newline=False).decode("ascii")``."""
