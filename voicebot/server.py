"""The media server: Exotel's WebSocket connections in, one ``Call`` each.

``Server`` wraps a ``websockets`` (new asyncio API) server with what operators need: ``GET /healthz``,
optional HTTP Basic auth on the upgrade (compared in constant time), an admission cap answered with 503
so Exotel's single retry can land elsewhere, the stream's ``sample-rate`` read from the upgrade URL, one
shared ``Ticker`` pacing every call, and a drain that lets live calls finish before closing the rest
with 1001.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import http
import logging
import signal
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

from voicebot.audio import ResamplerWorkspace, compiled_resampler_available
from voicebot.call import Call
from voicebot.config import ServeConfig, parse_auth
from voicebot.handler import Handler
from voicebot.protocol import compiled_base64_available, rate_from_url
from voicebot.ticker import Ticker

__all__ = ["Server", "run_server"]

log = logging.getLogger("voicebot.server")
#: The logger handed to websockets; its debug lines echo request headers, so credentials are redacted.
websockets_log = logging.getLogger("voicebot.server.websockets")

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


class RedactSecrets(logging.Filter):
    """Replaces the value of credential headers in websockets' ``< Name: value`` debug lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact, never drop."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True


HEALTH_PATH = "/healthz"


class Server:
    """Serves one handler class over Exotel's stream protocol. Use ``async with Server(...)``."""

    def __init__(self, handler_class: type[Handler], config: ServeConfig | None = None) -> None:
        self.handler_class = handler_class
        self.config = config or ServeConfig()
        self.ticker = Ticker()
        # Every call runs on this server's loop thread, so their resamplers can share work buffers.
        self.workspace = ResamplerWorkspace()
        self.calls: set[Call] = set()
        self.draining = False
        self.calls_served = 0
        self.refused_busy = 0
        self.refused_auth = 0
        self._expected_auth: bytes | None = None
        if self.config.auth is not None:
            user, password = parse_auth(self.config.auth)
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._expected_auth = f"Basic {token}".encode()
        self._admitted: set[ServerConnection] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ws: WebSocketServer | None = None
        if not any(isinstance(f, RedactSecrets) for f in websockets_log.filters):
            websockets_log.addFilter(RedactSecrets())
        self._ticker_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound media port (useful with ``port=0``)."""
        if self._ws is None:
            raise RuntimeError("the server is not started")
        port: int = self._ws.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and start accepting connections."""
        config = self.config
        self._ticker_task = asyncio.create_task(self.ticker.run(), name="voicebot-ticker")
        self._ws = await serve(
            self._serve_connection,
            config.host,
            config.port,
            process_request=self._process_request,
            compression=None,
            max_size=config.max_message_bytes,
            max_queue=64,
            ping_interval=config.ping_interval or None,
            ping_timeout=config.ping_timeout or None,
            close_timeout=5,
            server_header=None,
            logger=websockets_log,
        )
        log.info(
            "serving %s.%s on ws://%s:%d (max calls %s, auth %s)",
            self.handler_class.__module__, self.handler_class.__qualname__, config.host, self.port,
            config.max_calls or "unlimited", "on" if self._expected_auth else "off",
        )  # fmt: skip

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting calls, let live ones finish for ``timeout`` seconds, then close the rest (1001)."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.draining = True
        if self._ws is not None:
            self._ws.server.close()  # stop listening; live connections go on
        if self.calls:
            log.info("draining: %d live call(s), up to %.0fs", len(self.calls), timeout)
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("drain timeout: closing %d call(s) with 1001", len(self.calls))
        await self.close()

    async def close(self) -> None:
        """Close every live call with 1001 and stop the server."""
        self.draining = True
        if self.calls:
            await asyncio.gather(*(call.shutdown() for call in list(self.calls)), return_exceptions=True)
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        if self._ticker_task is not None:
            self._ticker_task.cancel()
            await asyncio.gather(self._ticker_task, return_exceptions=True)
            self._ticker_task = None

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            status = http.HTTPStatus.SERVICE_UNAVAILABLE if self.draining else http.HTTPStatus.OK
            return connection.respond(status, "draining\n" if self.draining else "ok\n")
        if self._expected_auth is not None and not self._authorized(request.headers):
            self.refused_auth += 1
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "authentication required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="voicebot", charset="UTF-8"'
            return response
        if self.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        limit = self.config.max_calls
        if limit:
            self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
            if len(self._admitted) >= limit:
                self.refused_busy += 1
                log.warning("refused a call: %d live calls is the limit", limit)
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many calls\n")
            self._admitted.add(connection)
        return None

    def _authorized(self, headers: Headers) -> bool:
        assert self._expected_auth is not None
        given = headers.get("Authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._expected_auth)

    async def _serve_connection(self, connection: ServerConnection) -> None:
        url_rate, warning = rate_from_url(connection.request.path if connection.request else "")
        if warning:
            log.warning("%s", warning)
        call = Call(
            connection,
            self.handler_class(),
            self.ticker,
            url_rate=url_rate,
            lead=self.config.lead_ms / 1000,
            chunk_ms=self.config.chunk_ms or None,
            workspace=self.workspace,
            session_limit=self.config.session_limit,
        )
        self.calls.add(call)
        self._idle.clear()
        self.calls_served += 1
        try:
            await call.run()
        finally:
            self.calls.discard(call)
            self._admitted.discard(connection)
            if not self.calls:
                self._idle.set()
            log.info("call ended: %s (%s)", call.call_sid or "-", call.ended.reason if call.ended else "?")


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve_until_signalled(handler_class: type[Handler], config: ServeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = Server(handler_class, config)
    await server.start()
    ops = None
    try:
        if config.ops_port is not None:
            # aiohttp is imported only when the ops port is on; it stays up while the media port drains.
            from voicebot.dialer.ops import start_ops_server

            ops = await start_ops_server(server, config)
        await stop.wait()
        log.info("signal received: draining")
    finally:
        await server.drain()
        if ops is not None:
            await ops.close()
        log.info("stopped after %d call(s)", server.calls_served)


def _log_compiled_kernels() -> None:
    """Say whether the compiled kernels were built: without them a call costs noticeably more CPU."""
    missing = [
        what
        for what, built in (
            ("resampler: numpy only, 1.5-3x the CPU per step", compiled_resampler_available()),
            ("base64: binascii only, 2.5-7x the CPU per message", compiled_base64_available()),
        )
        if not built
    ]
    if missing:
        log.warning("compiled kernels missing (reinstall with a C compiler): %s", "; ".join(missing))
    else:
        log.info("compiled kernels: resampler and base64")


def run_server(handler_class: type[Handler], config: ServeConfig, **runner_options: Any) -> None:
    """Run the server until SIGTERM/SIGINT, on uvloop unless ``config.loop`` says otherwise."""
    factory = _loop_factory(config.loop)
    with asyncio.Runner(loop_factory=factory, **runner_options) as runner:
        log.info("event loop: %s", "uvloop" if factory else "asyncio")
        _log_compiled_kernels()
        runner.run(_serve_until_signalled(handler_class, config))
