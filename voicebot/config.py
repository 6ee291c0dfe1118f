"""Configuration as frozen, keyword-only dataclasses with named defaults.

Precedence (DESIGN.md §5): command-line flags override ``VOICEBOT_*`` environment variables, which
override the defaults here. Only the CLI reads ``os.environ``; it passes the mapping in, so nothing is
read at import time and tests can pass any environment they like.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from voicebot.errors import ConfigError
from voicebot.protocol import DEFAULT_SESSION_LIMIT, SESSION_LIMIT_SLACK

__all__ = ["LOOPS", "OPTIONS", "Option", "ServeConfig", "parse_auth"]

LOOPS: Final = ("auto", "uvloop", "asyncio")
LOG_FORMATS: Final = ("text", "json")
_SECRET_FIELDS: Final = frozenset({"auth", "status_token"})
#: The status callback URL's token is a path segment an attacker must guess: long and URL-safe.
_STATUS_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything ``python -m voicebot serve`` needs; see ``OPTIONS`` for each field's flag and variable."""

    handler: str = "handlers.echo:EchoBot"
    host: str = "127.0.0.1"
    port: int = 8080
    loop: str = "auto"
    max_calls: int = 0
    drain_timeout: float = 30.0
    auth: str | None = None
    max_message_bytes: int = 1 << 20
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    lead_ms: int = 400
    chunk_ms: int = 0
    session_limit: float = DEFAULT_SESSION_LIMIT
    log_level: str = "info"
    log_format: str = "text"
    ops_port: int | None = None
    status_token: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port (0-65535)")
        if self.loop not in LOOPS:
            raise ConfigError(f"loop: {self.loop!r} is not one of {', '.join(LOOPS)}")
        if self.max_calls < 0:
            raise ConfigError("max_calls: must be 0 (no limit) or positive")
        if self.drain_timeout < 0:
            raise ConfigError("drain_timeout: must not be negative")
        if self.auth is not None:
            parse_auth(self.auth)
        if self.max_message_bytes < 4096:
            raise ConfigError("max_message_bytes: must be at least 4096 (one media message)")
        if self.ping_interval < 0 or self.ping_timeout < 0:
            raise ConfigError("ping_interval/ping_timeout: must not be negative (0 disables)")
        if not 100 <= self.lead_ms <= 5000:
            raise ConfigError(f"lead_ms: {self.lead_ms} is outside 100-5000 ms")
        if self.chunk_ms < 0 or self.chunk_ms % 20:
            raise ConfigError(f"chunk_ms: {self.chunk_ms} must be 0 (automatic) or a multiple of 20 ms")
        self._check_outbound_plan()
        if self.session_limit != 0 and not self.session_limit > SESSION_LIMIT_SLACK:
            raise ConfigError(
                f"session_limit: {self.session_limit} must be 0 (unknown) "
                f"or more than {SESSION_LIMIT_SLACK:g} s"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level: {self.log_level!r} is not a logging level")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format: {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        if self.ops_port is not None and not 0 <= self.ops_port <= 65535:
            raise ConfigError(f"ops_port: {self.ops_port} is not a TCP port (0-65535)")
        if self.ops_port and self.ops_port == self.port:
            raise ConfigError(f"ops_port: {self.ops_port} is the media port; use another")
        if self.status_token is not None and not _STATUS_TOKEN.fullmatch(self.status_token):
            # The error never echoes the token.
            raise ConfigError("status_token: must be 16-128 characters of A-Z, a-z, 0-9, '-' and '_'")

    def _check_outbound_plan(self) -> None:
        """Fail at start-up, not at the first call, when lead or chunk size cannot work at some rate."""
        from voicebot.events import SUPPORTED_RATES, Encoding
        from voicebot.pacing import OutboundStream

        for rate in SUPPORTED_RATES:
            for encoding in Encoding:
                try:
                    OutboundStream(rate, encoding, lead=self.lead_ms / 1000, chunk_ms=self.chunk_ms or None)
                except ConfigError as exc:
                    raise ConfigError(
                        f"lead_ms={self.lead_ms}/chunk_ms={self.chunk_ms} do not work at {rate} Hz "
                        f"{encoding.value}: {exc}"
                    ) from None

    def __repr__(self) -> str:
        # The auth secret and the status token must never reach a log line, even through a repr.
        shown: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={'***' if f.name in _SECRET_FIELDS and value else repr(value)}")
        return f"ServeConfig({', '.join(shown)})"

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> ServeConfig:
        """Build a config from parsed flags (None = not given) over ``VOICEBOT_*`` variables."""
        values: dict[str, Any] = {}
        for option in OPTIONS:
            flag_value = flags.get(option.field)
            if flag_value is not None:
                values[option.field] = flag_value
            elif option.env in environ:
                values[option.field] = option.convert(environ[option.env], option.env)
        return cls(**values)


def parse_auth(value: str) -> tuple[str, str]:
    """``USER:PASS`` → ``(user, password)``; the error never echoes the secret."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("auth: expected USER:PASS with both parts non-empty")
    return user, password


def _as_int(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an integer") from None


def _as_float(text: str, where: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def _as_str(text: str, where: str) -> str:
    return text


@dataclass(frozen=True)
class Option:
    """One setting: its config field, command-line flag, environment variable and help text."""

    field: str
    flag: str
    env: str
    convert: Callable[[str, str], Any]
    help: str
    metavar: str | None = None
    secret: bool = False


OPTIONS: Final[tuple[Option, ...]] = (
    Option("handler", "--handler", "VOICEBOT_HANDLER", _as_str,
           "the bot: module:Class or path/to/file.py:Class", "SPEC"),
    Option("host", "--host", "VOICEBOT_HOST", _as_str, "address to listen on"),
    Option("port", "--port", "VOICEBOT_PORT", _as_int,
           "media port: WebSocket upgrades and GET /healthz (0 = any)"),
    Option("loop", "--loop", "VOICEBOT_LOOP", _as_str,
           "event loop: auto (uvloop when installed), uvloop, asyncio"),
    Option("max_calls", "--max-calls", "VOICEBOT_MAX_CALLS", _as_int,
           "refuse upgrades beyond N live calls with HTTP 503 (0 = no limit)", "N"),
    Option("drain_timeout", "--drain-timeout", "VOICEBOT_DRAIN_TIMEOUT", _as_float,
           "on SIGTERM/SIGINT, seconds live calls may go on before they are closed with 1001", "SECONDS"),
    Option("auth", "--auth", "VOICEBOT_AUTH", _as_str,
           "require HTTP Basic auth USER:PASS on the upgrade (prefer the variable: flags show in ps)",
           "USER:PASS", secret=True),
    Option("max_message_bytes", "--max-message-bytes", "VOICEBOT_MAX_MESSAGE_BYTES", _as_int,
           "largest WebSocket message accepted from Exotel", "BYTES"),
    Option("ping_interval", "--ping-interval", "VOICEBOT_PING_INTERVAL", _as_float,
           "seconds between keepalive pings (0 disables)", "SECONDS"),
    Option("ping_timeout", "--ping-timeout", "VOICEBOT_PING_TIMEOUT", _as_float,
           "seconds to wait for a pong before dropping the peer (0 disables)", "SECONDS"),
    Option("lead_ms", "--lead-ms", "VOICEBOT_LEAD_MS", _as_int,
           "most audio queued at Exotel ahead of playback, in ms", "MS"),
    Option("chunk_ms", "--chunk-ms", "VOICEBOT_CHUNK_MS", _as_int,
           "outbound chunk duration in ms (0 = max(3200 B, 100 ms) per Exotel's rules)", "MS"),
    Option("session_limit", "--session-limit", "VOICEBOT_SESSION_LIMIT", _as_float,
           "Exotel's longest stream session on your plan: a stream cut there ends with the reason "
           "session_limit (0 = unknown)", "SECONDS"),
    Option("log_level", "--log-level", "VOICEBOT_LOG_LEVEL", _as_str, "debug, info, warning, error"),
    Option("log_format", "--log-format", "VOICEBOT_LOG_FORMAT", _as_str,
           "text or json (one object per line)"),
    Option("ops_port", "--ops-port", "VOICEBOT_OPS_PORT", _as_int,
           "ops HTTP port: Exotel status callbacks, /readyz, /metrics (0 = any; default off)", "PORT"),
    Option("status_token", "--status-token", "VOICEBOT_STATUS_TOKEN", _as_str,
           "secret path token of POST /exotel/status/TOKEN (generated and printed when unset; "
           "prefer the variable)", "TOKEN", secret=True),
)  # fmt: skip
