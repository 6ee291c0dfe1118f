"""Types of the compiled kernel in ``_dsp.c`` (see ``voicebot.audio.Resampler``)."""

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
