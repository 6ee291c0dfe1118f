"""Logging with the call's ids on every line, without passing loggers around.

Each call sets ``call_ids`` (a ``ContextVar``) before it starts its tasks; tasks copy the context when
they are created, so every log record emitted from a call's reader, handler hooks or spawned work can
carry ``call_sid`` and ``stream_sid``. ``CallContextFilter`` puts them on the record; the CLI installs
it with a formatter that prints them. Nothing here configures logging at import time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

__all__ = ["CallContextFilter", "JsonFormatter", "TextFormatter", "call_ids", "configure_logging"]

#: The ids of the call the current task belongs to (empty outside a call).
call_ids: ContextVar[Mapping[str, str]] = ContextVar("voicebot_call_ids", default=MappingProxyType({}))


class CallContextFilter(logging.Filter):
    """Adds ``call_sid`` and ``stream_sid`` (from ``call_ids``) to every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the current call's ids; never drops a record."""
        ids = call_ids.get()
        for key in ("call_sid", "stream_sid"):
            if not hasattr(record, key):
                setattr(record, key, ids.get(key, ""))
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [call_sid] message``, the call part only when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as a single human-readable line (plus traceback lines if any)."""
        call_sid = getattr(record, "call_sid", "")
        record.call_part = f" [{call_sid}]" if call_sid else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: time, level, logger, message, call ids, extras."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "call_part"}

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record and any ``extra=`` fields to one JSON line."""
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_") and value != "":
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Install one stderr handler on the root logger (called by the CLI, never on import)."""
    handler = logging.StreamHandler()
    handler.addFilter(CallContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s%(call_part)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every failed handshake at INFO/ERROR; keep its noise below ours.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
