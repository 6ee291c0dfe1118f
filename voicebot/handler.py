"""``Handler``: the one class a bot developer subclasses.

One handler instance is created per call, so instance attributes are that call's state. Hooks of one
call run one at a time (the default ``run`` awaits each before taking the next event), so handler state
needs no locks. Long work (STT, LLM, TTS) belongs in ``call.spawn(...)`` so the hooks stay quick; a
hook that blocks makes the inbound queue overflow, and the oldest caller audio is then dropped and
counted (control events are never dropped).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import ClassVar

from voicebot.call import AudioFrame, Call, CallEnded
from voicebot.errors import ConfigError
from voicebot.events import SUPPORTED_RATES, Dtmf
from voicebot.jitter import JitterConfig

__all__ = ["Handler", "load_handler"]


class Handler:
    """Base class of every bot: override the ``on_*`` hooks, or ``run`` for full control.

    Class attributes say what the bot wants; the pipeline converts both ways:

    * ``sample_rate``: the rate of ``on_audio`` frames and of audio given to ``call.play`` (8000,
      16000 or 24000; the stream's own rate may differ).
    * ``frame_ms``: the duration of each ``on_audio`` frame (10, 20, 40, … ms).
    * ``jitter``: the inbound jitter buffer's settings (zero added delay by default: frames are
      delivered as soon as complete, gaps filled).
    * ``max_queued_frames``: how much caller audio may wait for a slow handler before the oldest is
      dropped.
    """

    sample_rate: ClassVar[int] = 16000
    frame_ms: ClassVar[int] = 20
    jitter: ClassVar[JitterConfig] = JitterConfig(zero_delay=True)
    max_queued_frames: ClassVar[int] = 100

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.sample_rate not in SUPPORTED_RATES:
            raise TypeError(f"{cls.__name__}.sample_rate must be one of {list(SUPPORTED_RATES)}")
        if cls.frame_ms <= 0 or cls.frame_ms % 10:
            raise TypeError(f"{cls.__name__}.frame_ms must be a positive multiple of 10 ms")

    async def on_start(self, call: Call) -> None:
        """The stream has started: ``call`` knows its SIDs, numbers and custom parameters."""

    async def on_audio(self, call: Call, frame: AudioFrame) -> None:
        """One frame of caller audio at ``sample_rate``, ``frame_ms`` long, in call order."""

    async def on_dtmf(self, call: Call, digit: str) -> None:
        """The caller pressed a key: ``0``-``9``, ``*``, ``#`` (or ``A``-``D``)."""

    async def on_stop(self, call: Call, reason: str) -> None:
        """The call is over: ``callended`` (caller hung up), ``stopped``, ``hangup`` (we closed),
        ``socket_closed`` (dropped without ``stop``), ``shutdown``, ``error``, or ``session_limit``
        (Exotel cut the stream at its session limit, 60 minutes by default: see
        ``Call.session_time_left``)."""

    async def run(self, call: Call) -> None:
        """Drive the hooks: ``on_start``, then one hook per event until the call ends.

        Override it to consume ``async for event in call`` yourself.
        """
        await self.on_start(call)
        async for event in call:
            if isinstance(event, AudioFrame):
                await self.on_audio(call, event)
            elif isinstance(event, Dtmf):
                await self.on_dtmf(call, event.digit)
            elif isinstance(event, CallEnded):
                await self.on_stop(call, event.reason)


def load_handler(spec: str) -> type[Handler]:
    """The ``Handler`` subclass named by ``module:Class`` or ``path/to/file.py:Class``.

    Modules are imported relative to the current directory too, so ``handlers.echo:EchoBot`` works
    from a checkout whether voicebot runs as ``python -m voicebot`` or as the ``voicebot`` script.
    """
    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"handler: {spec!r} is not module:Class or path/to/file.py:Class")
    try:
        if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"handler: no file {module_name!r}")
            module_spec = importlib.util.spec_from_file_location(f"voicebot_user_{path.stem}", path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"handler: cannot load {module_name!r}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"handler: cannot import {module_name!r}: {exc}") from exc
    candidate = getattr(module, class_name, None)
    if not (isinstance(candidate, type) and issubclass(candidate, Handler)):
        raise ConfigError(f"handler: {spec!r} is not a voicebot.Handler subclass")
    return candidate
