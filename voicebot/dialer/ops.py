"""The ops HTTP server (``aiohttp.web``) beside the media server: Exotel's status callbacks, readiness,
liveness and metrics (DESIGN.md §5: ``websockets`` cannot read a POST body, so these live on a second
port, which stays up while the media port drains).

Routes:

* ``POST /exotel/status/{token}`` — a status callback (JSON, urlencoded or multipart). A wrong token
  gets 404 and a log line; an unreadable body 400; a duplicate of an accepted ``(CallSid, EventType)``
  (Exotel retries twice) 200 and nothing else. An accepted event is logged once, acknowledged with 200
  at once, then handed to the registered callbacks in arrival order.
* ``GET /readyz`` — 200 when ready, 503 while draining. ``GET /healthz`` — 200 while the process runs.
* ``GET /metrics`` — counters and gauges in the Prometheus text format.

Applications register ``async def callback(event: StatusEvent)`` with :meth:`StatusReceiver.add_callback`
(``before_ack=True`` runs it before the 200, so a store can persist the event first: if it raises, Exotel
gets a 500 and its retry is processed again), or follow one call with :meth:`StatusReceiver.watch_call`.

A ``Handler`` receives the status events of its own calls by defining ``on_status`` as a
``staticmethod`` or ``classmethod`` (status events arrive before the stream opens or after it closes,
so they belong to the class, not to one call's instance)::

    class CollectionsBot(Handler):
        @staticmethod
        async def on_status(event: StatusEvent) -> None:
            if event.terminal:
                record_outcome(event.custom_field, event.status, event.recording_url)

``serve --ops-port`` registers it; every event the server's status endpoint accepts is passed on. It
runs before the 200 (``before_ack``), so what it records is never lost: if it raises or runs past the
ack timeout, Exotel gets a 500 and its retry delivers the event again. Keep it short (a database
write); hand long work to a queue.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import inspect
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiohttp import web

from voicebot.dialer.callbacks import MAX_CALLBACK_BYTES, StatusEvent, parse_status_callback
from voicebot.dialer.errors import InvalidCallback
from voicebot.errors import ConfigError

if TYPE_CHECKING:
    from voicebot.config import ServeConfig
    from voicebot.server import Server

__all__ = [
    "STATUS_PATH",
    "Metric",
    "OpsServer",
    "StatusCallback",
    "StatusReceiver",
    "check_status_token",
    "generate_status_token",
    "handler_status_callback",
    "render_metrics",
    "server_metrics",
    "start_ops_server",
]

log = logging.getLogger("voicebot.ops")

STATUS_PATH: Final = "/exotel/status"
#: Tokens are path segments an attacker must guess: long, URL-safe.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
#: Callbacks running before the 200 must finish well inside Exotel's 15 s acknowledgement window.
DEFAULT_ACK_TIMEOUT: Final = 10.0

StatusCallback = Callable[[StatusEvent], Awaitable[None]]


class Metric(NamedTuple):
    """One sample for ``/metrics``: name, ``counter`` or ``gauge``, help text, value, labels."""

    name: str
    kind: str
    help: str
    value: float
    labels: Mapping[str, str] = {}


def generate_status_token() -> str:
    """A fresh random token for the status callback URL (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def check_status_token(token: str, where: str = "status_token") -> str:
    """``token`` if it is 16-128 URL-safe characters (letters, digits, ``-``, ``_``), else ConfigError."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ConfigError(f"{where}: must be 16-128 characters of A-Z, a-z, 0-9, '-' and '_'")
    return token


class StatusReceiver:
    """Accepts status callbacks: checks the URL token, parses, de-duplicates, logs and dispatches.

    ``dedupe_capacity``: how many ``(CallSid, EventType)`` keys are remembered (oldest forgotten
    first). ``ack_timeout``: the most time ``before_ack`` callbacks get before the request fails.
    """

    def __init__(
        self,
        token: str,
        *,
        dedupe_capacity: int = 100_000,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    ) -> None:
        self._token = check_status_token(token).encode()
        self._capacity = dedupe_capacity
        self._ack_timeout = ack_timeout
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._in_flight: dict[tuple[str, str], asyncio.Future[int]] = {}
        self._before_ack: list[StatusCallback] = []
        self._after_ack: list[StatusCallback] = []
        self._watchers: dict[str, list[StatusCallback]] = collections.defaultdict(list)
        self._queue: asyncio.Queue[StatusEvent] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        """Requests by outcome: accepted, duplicate, bad_token, invalid, failed."""

    def __repr__(self) -> str:
        return f"StatusReceiver(token=***, counts={dict(self.counts)})"

    def path_for(self, prefix: str = STATUS_PATH) -> str:
        """The callback path with the token (``/exotel/status/<token>``); put it in ``StatusCallback``."""
        return f"{prefix}/{self._token.decode()}"

    def add_callback(self, callback: StatusCallback, *, before_ack: bool = False) -> Callable[[], None]:
        """Call ``callback(event)`` for every accepted event; returns a function that unregisters it.

        By default it runs after the 200, in arrival order, one event at a time (keep it quick, or
        spawn long work). ``before_ack=True`` runs it before the 200: an exception or a timeout fails
        the request with 500, the event is not marked seen, and Exotel's retry is processed again.
        """
        callbacks = self._before_ack if before_ack else self._after_ack
        callbacks.append(callback)
        return lambda: callbacks.remove(callback) if callback in callbacks else None

    def watch_call(self, call_sid: str, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for accepted events of ``call_sid`` only (after the 200); returns a
        function that stops watching."""
        watchers = self._watchers[call_sid]
        watchers.append(callback)

        def unwatch() -> None:
            if callback in watchers:
                watchers.remove(callback)
            if not watchers:
                self._watchers.pop(call_sid, None)

        return unwatch

    def start(self) -> None:
        """Start the task that runs the after-ack callbacks."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._dispatch(), name="voicebot-status-dispatch")

    async def close(self, timeout: float = 5.0) -> None:
        """Let queued events reach their callbacks (up to ``timeout`` seconds), then stop."""
        if self._worker is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.warning("stopping with %d status event(s) not yet dispatched", self._queue.qsize())
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = None

    async def receive(self, token: str, body: bytes, content_type: str | None, peer: str = "") -> int:
        """Handle one callback request; returns the HTTP status to answer with."""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self._token):
            self.counts["bad_token"] += 1
            log.warning("status callback with a wrong token from %s: 404", peer or "?")
            return 404
        try:
            event = parse_status_callback(body, content_type)
        except InvalidCallback as exc:
            self.counts["invalid"] += 1
            log.warning("unreadable status callback from %s: %s", peer or "?", exc)
            return 400
        key = event.key
        if key in self._seen:
            self.counts["duplicate"] += 1
            log.debug("duplicate status callback %s %s ignored", *key)
            return 200
        pending = self._in_flight.get(key)
        if pending is not None:  # the same event is being accepted right now: answer as it is answered
            self.counts["duplicate"] += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        status = 500
        try:
            status = await self._accept(event)
        finally:
            self._in_flight.pop(key, None)
            future.set_result(status)
        return status

    async def _accept(self, event: StatusEvent) -> int:
        try:
            async with asyncio.timeout(self._ack_timeout):
                for callback in list(self._before_ack):
                    await callback(event)
        except Exception:
            self.counts["failed"] += 1
            log.exception(
                "a status callback failed for %s %s: answering 500 so Exotel retries",
                *event.key,
                extra={"call_sid": event.call_sid},
            )
            return 500
        self._seen[event.key] = None
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        self.counts["accepted"] += 1
        log.info(
            "status %s: %s%s%s%s",
            event.event_type or "-",
            event.status or "-",
            "" if event.conversation_duration is None else f", {event.conversation_duration} s",
            "" if event.custom_field is None else f", custom field {event.custom_field!r}",
            ", recording" if event.recording_url else "",
            extra={
                "call_sid": event.call_sid,
                "event_type": event.event_type,
                "status": event.status,
                "conversation_duration": event.conversation_duration,
                "custom_field": event.custom_field,
                "recording_url": event.recording_url,
            },
        )
        self._queue.put_nowait(event)
        return 200

    async def _dispatch(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                callbacks = [*self._after_ack, *self._watchers.get(event.call_sid, ())]
                for callback in callbacks:
                    try:
                        await callback(event)
                    except Exception:
                        log.exception(
                            "status callback %r failed for %s %s",
                            callback,
                            *event.key,
                            extra={"call_sid": event.call_sid},
                        )
            finally:
                self._queue.task_done()

    def metrics(self) -> list[Metric]:
        """Counters of callback requests by outcome."""
        outcomes = ("accepted", "duplicate", "bad_token", "invalid", "failed")
        return [
            Metric(
                "voicebot_status_callbacks_total",
                "counter",
                "Exotel status callback requests by outcome",
                self.counts[outcome],
                {"outcome": outcome},
            )
            for outcome in outcomes
        ]


class OpsServer:
    """``aiohttp.web`` server for the status callbacks, ``/readyz``, ``/healthz`` and ``/metrics``.

    Use ``async with OpsServer(receiver, port=…)``. ``ready``: whether to answer ``/readyz`` with 200
    (e.g. ``lambda: not server.draining``); ``metrics``: extra samples for ``/metrics``.
    """

    def __init__(
        self,
        receiver: StatusReceiver | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready: Callable[[], bool] | None = None,
        metrics: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self.receiver = receiver
        self.host = host
        self._requested_port = port
        self._ready = ready or (lambda: True)
        self._metrics = metrics
        self.app = web.Application(client_max_size=MAX_CALLBACK_BYTES)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics_text)
        if receiver is not None:
            self.app.router.add_post(STATUS_PATH + "/{token}", self._status)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the ops server is not started")
        port: int = self._runner.addresses[0][1]
        return port

    def url(self, path: str = "") -> str:
        """``http://host:port`` plus ``path``, for local use and tests."""
        return f"http://{self.host}:{self.port}{path}"

    async def start(self) -> None:
        """Bind and serve."""
        # access_log=None: request lines would put the status token into the logs.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._requested_port, reuse_address=True)
        await self._site.start()
        if self.receiver is not None:
            self.receiver.start()
        log.info(
            "ops server on http://%s:%d (readyz, healthz, metrics, status callbacks)", self.host, self.port
        )

    async def close(self) -> None:
        """Stop serving, after queued status events have reached their callbacks."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        if self.receiver is not None:
            await self.receiver.close()

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _status(self, request: web.Request) -> web.Response:
        assert self.receiver is not None
        body = await request.read()
        status = await self.receiver.receive(
            request.match_info["token"], body, request.headers.get("Content-Type"), request.remote or ""
        )
        return web.Response(status=status, text="ok\n" if status == 200 else f"{status}\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="draining\n")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics_text(self, request: web.Request) -> web.Response:
        samples: list[Metric] = []
        if self.receiver is not None:
            samples.extend(self.receiver.metrics())
        if self._metrics is not None:
            samples.extend(self._metrics())
        return web.Response(text=render_metrics(samples), content_type="text/plain", charset="utf-8")


def render_metrics(samples: Iterable[Metric]) -> str:
    """Samples in the Prometheus text exposition format (``# HELP``/``# TYPE`` once per name)."""
    lines: list[str] = []
    described: set[str] = set()
    for sample in samples:
        if sample.name not in described:
            described.add(sample.name)
            lines.append(f"# HELP {sample.name} {sample.help}")
            lines.append(f"# TYPE {sample.name} {sample.kind}")
        labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
        value = int(sample.value) if float(sample.value).is_integer() else sample.value
        lines.append(f"{sample.name}{{{labels}}} {value}" if labels else f"{sample.name} {value}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ------------------------------------------------------------------------------ beside the media server


def handler_status_callback(handler_class: type[Any]) -> StatusCallback | None:
    """The handler class's ``on_status`` hook, or None. It must be a static- or classmethod coroutine
    function (status events belong to the class: they come before the stream opens or after it ends)."""
    raw = inspect.getattr_static(handler_class, "on_status", None)
    if raw is None:
        return None
    if not isinstance(raw, staticmethod | classmethod):
        raise ConfigError(
            f"{handler_class.__qualname__}.on_status must be a @staticmethod or @classmethod "
            "(status events are not tied to one call's handler instance)"
        )
    hook = handler_class.on_status
    if not inspect.iscoroutinefunction(hook):
        raise ConfigError(f"{handler_class.__qualname__}.on_status must be an async def")
    callback: StatusCallback = hook
    return callback


def server_metrics(server: Server) -> Callable[[], list[Metric]]:
    """``/metrics`` samples describing a media ``Server``: live calls, calls served, refusals, draining."""

    def collect() -> list[Metric]:
        return [
            Metric("voicebot_calls_active", "gauge", "Calls being served now", len(server.calls)),
            Metric(
                "voicebot_calls_served_total", "counter", "Calls accepted since start", server.calls_served
            ),
            Metric(
                "voicebot_calls_refused_total",
                "counter",
                "Upgrades refused",
                server.refused_busy,
                {"reason": "busy"},
            ),
            Metric(
                "voicebot_calls_refused_total",
                "counter",
                "Upgrades refused",
                server.refused_auth,
                {"reason": "auth"},
            ),
            Metric("voicebot_draining", "gauge", "1 while draining", 1 if server.draining else 0),
        ]

    return collect


async def start_ops_server(server: Server, config: ServeConfig) -> OpsServer:
    """Start the ops server that ``serve --ops-port`` runs beside ``server``: ``/readyz`` follows its
    drain, ``/metrics`` shows its calls, and the handler class's ``on_status`` hook (if any) gets the
    status events. Without ``config.status_token`` a token is generated and the callback URL printed
    once on stdout (never logged), so the operator can put it in ``StatusCallback``."""
    if config.ops_port is None:
        raise ConfigError("ops_port: not set")
    token = config.status_token or generate_status_token()
    receiver = StatusReceiver(token)
    hook = handler_status_callback(server.handler_class)
    if hook is not None:
        receiver.add_callback(hook, before_ack=True)
    ops = OpsServer(
        receiver,
        host=config.host,
        port=config.ops_port,
        ready=lambda: not server.draining,
        metrics=server_metrics(server),
    )
    await ops.start()
    if config.status_token is None:
        print(
            f"status callbacks: POST {ops.url(receiver.path_for())} (a generated token; set "
            "VOICEBOT_STATUS_TOKEN to keep it across restarts)",
            flush=True,
        )
    else:
        log.info("status callbacks: POST %s", ops.url(f"{STATUS_PATH}/<VOICEBOT_STATUS_TOKEN>"))
    return ops
