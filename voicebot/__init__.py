"""voicebot: put a bot on an Exotel phone call.

Subclass ``Handler``, override its ``on_*`` hooks, and serve it with ``python -m voicebot serve``.

The names below are imported lazily, so ``import voicebot.protocol`` (pure, stdlib only) does not pull
in numpy, asyncio or websockets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from voicebot._version import __version__

if TYPE_CHECKING:
    from voicebot.audio import Resampler, silence, tone
    from voicebot.call import AudioFrame, Call, CallEnded, CallStats, Playback
    from voicebot.errors import (
        ConfigError,
        LocalProtocolError,
        ProtocolError,
        RemoteProtocolError,
        VoicebotError,
    )
    from voicebot.events import Encoding
    from voicebot.handler import Handler, load_handler

_EXPORTS = {
    "Resampler": "voicebot.audio",
    "silence": "voicebot.audio",
    "tone": "voicebot.audio",
    "AudioFrame": "voicebot.call",
    "Call": "voicebot.call",
    "CallEnded": "voicebot.call",
    "CallStats": "voicebot.call",
    "Playback": "voicebot.call",
    "ConfigError": "voicebot.errors",
    "LocalProtocolError": "voicebot.errors",
    "ProtocolError": "voicebot.errors",
    "RemoteProtocolError": "voicebot.errors",
    "VoicebotError": "voicebot.errors",
    "Encoding": "voicebot.events",
    "Handler": "voicebot.handler",
    "load_handler": "voicebot.handler",
}

__all__ = [
    "AudioFrame",
    "Call",
    "CallEnded",
    "CallStats",
    "ConfigError",
    "Encoding",
    "Handler",
    "LocalProtocolError",
    "Playback",
    "ProtocolError",
    "RemoteProtocolError",
    "Resampler",
    "VoicebotError",
    "__version__",
    "load_handler",
    "silence",
    "tone",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'voicebot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
