"""A stand-in for Exotel on this machine: ``python -m voicebot emulate --port 9300``.

It serves the parts of Exotel's v1 API that the dialer uses (exotel-protocol.md §7, §9) with Exotel's
Basic auth, validation, ``RestException`` error bodies and 200-requests-per-minute limit:

* ``POST /v1/Accounts/{sid}/Calls/connect.json`` (``connect`` without ``.json`` answers XML),
* ``GET /v1/Accounts/{sid}/Calls/{CallSid}.json`` (``?details=true`` adds ``Details``),
* ``GET /v1/Accounts/{sid}/Calls.json`` (filters ``Sid``, ``From``, ``Status``, ``DateCreated``,
  ``PageSize``),
* ``GET /recordings/{CallSid}.wav``: the recordings its calls made.

Each accepted call plays its callee's :class:`Scenario` (chosen by the dialled number, else the
default): it rings for ``ring_seconds``, then is busy, unanswered, failed, or answered. An answered
call opens the stream to ``StreamUrl`` with :class:`~voicebot.testing.FakeExotel`, exactly as Exotel
would (sample rate from the URL, custom parameters from its query, ``user:pass@`` sent as Basic auth,
one retry of a failed handshake), plays the caller's audio, presses the scripted keys, and ends when
the caller hangs up, the bot closes, or ``TimeLimit`` is reached. With ``Record=true`` both sides are
written to a WAV file (``single``: mixed; ``dual``: caller left, bot right). Status callbacks
(``ringing``, ``answered``, ``terminal``, or only the four default fields when no event was asked
for) go to ``StatusCallback`` in the requested encoding, retried twice on a non-2xx answer or timeout.

Where Exotel is undocumented the emulator makes a choice and says so: ``start.from`` is the ExoPhone
and ``start.to`` the customer (§12 #9); a stream ended by ``TimeLimit`` gets ``stop`` with ``stopped``;
an answered call whose stream cannot be opened ends ``failed``; ``Duration`` is filled in at once.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime
import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from xml.sax.saxutils import escape

import aiohttp
import numpy as np
from aiohttp import web
from websockets.exceptions import WebSocketException

from voicebot.audio import Samples, to_int16
from voicebot.dialer.api import (
    CALLBACK_CONTENT_TYPES,
    CALLBACK_EVENTS,
    MAX_CUSTOM_FIELD,
    MAX_STREAM_NAME,
    MAX_TIME_LIMIT,
    RECORDING_CHANNELS,
    STREAM_TYPES,
    check_http_url,
    check_number,
    check_seconds,
    check_stream_url,
    check_text,
    same_number,
    stream_url_parameters,
)
from voicebot.dialer.config import ExotelConfig
from voicebot.dialer.errors import ValidationError
from voicebot.errors import ConfigError
from voicebot.protocol import DEFAULT_SESSION_LIMIT, rate_from_url
from voicebot.testing import CallReport, FakeExotel, WireOptions, parse_dtmf_script

__all__ = [
    "CallbackAttempt",
    "EmulatedCall",
    "Emulator",
    "EmulatorConfig",
    "Scenario",
    "Scenarios",
    "speech_like",
]

log = logging.getLogger("voicebot.emulator")

Outcome = Literal["answer", "busy", "no-answer", "failed"]
OUTCOMES: Final = ("answer", "busy", "no-answer", "failed")
HANGUP_BY: Final = ("caller", "bot")
CALLBACK_ENCODINGS: Final = ("json", "urlencoded", "multipart")
API_FAULTS: Final = ("none", "error_500", "reject_500", "timeout", "garbage")
#: Exotel's documented longest stream session (§2.5).
MAX_STREAM_SECONDS: Final = DEFAULT_SESSION_LIMIT
RATE_WINDOW: Final = 60.0


# ------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """How the callee behaves, and what the API does with the dial request.

    * ``outcome``: ``answer``, ``busy``, ``no-answer`` (rings ``ring_seconds``, at most the request's
      ``TimeOut``) or ``failed``.
    * ``ring_seconds``: ringing time before the outcome.
    * ``hangup``: ``caller`` hangs up ``talk_seconds`` after the stream starts; ``bot``: the call
      lasts until the bot closes the stream (or ``TimeLimit``).
    * ``caller_audio``: ``speech`` (synthetic speech-like sound), ``silence``, or a WAV file path.
    * ``dtmf``: keys to press, ``"1@2.5,#@6"`` (stream seconds).
    * ``answered_by``: the leg's ``AnsweredBy`` (``Human``, ``Machine`` …).
    * ``callback_encoding``: force ``json``, ``urlencoded`` or ``multipart`` callbacks, whatever the
      request asked for (Exotel's form encodings differ by product; this tests the receiver).
    * ``api_fault``: ``error_500`` (the call is placed, the answer is a 500), ``reject_500`` (a 500,
      nothing placed), ``timeout`` (placed; the answer is held back past any client timeout),
      ``garbage`` (placed; a 200 whose body is not a call).
    """

    outcome: Outcome = "answer"
    ring_seconds: float = 1.0
    hangup: Literal["caller", "bot"] = "caller"
    talk_seconds: float = 10.0
    caller_audio: str = "speech"
    dtmf: str = ""
    answered_by: str = "Human"
    callback_encoding: Literal["json", "urlencoded", "multipart"] | None = None
    api_fault: Literal["none", "error_500", "reject_500", "timeout", "garbage"] = "none"

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ConfigError(f"scenario outcome: {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if not 0 <= self.ring_seconds <= 300:
            raise ConfigError(f"scenario ring_seconds: {self.ring_seconds} is outside 0-300")
        if self.hangup not in HANGUP_BY:
            raise ConfigError(f"scenario hangup: {self.hangup!r} is not caller or bot")
        if not 0 < self.talk_seconds <= MAX_STREAM_SECONDS:
            raise ConfigError(f"scenario talk_seconds: {self.talk_seconds} is outside (0, 3600]")
        if self.caller_audio not in ("speech", "silence") and not Path(self.caller_audio).is_file():
            raise ConfigError(
                f"scenario caller_audio: {self.caller_audio!r} is not speech, silence or a file"
            )
        parse_dtmf_script(self.dtmf)
        if self.callback_encoding is not None and self.callback_encoding not in CALLBACK_ENCODINGS:
            raise ConfigError(
                f"scenario callback_encoding: {self.callback_encoding!r} is not json, urlencoded or multipart"
            )
        if self.api_fault not in API_FAULTS:
            raise ConfigError(f"scenario api_fault: {self.api_fault!r} is not one of {', '.join(API_FAULTS)}")

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, base: Scenario | None = None, where: str = "scenario"
    ) -> Scenario:
        """A scenario from JSON-style data; keys not given are taken from ``base``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        try:
            return dataclasses.replace(base or cls(), **data)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Scenarios:
    """The default callee and per-number overrides (numbers compared as in §12 #10: ``+91…`` = ``0…``)."""

    default: Scenario = field(default_factory=Scenario)
    numbers: Mapping[str, Scenario] = field(default_factory=dict)

    def for_number(self, number: str) -> Scenario:
        """The scenario of the callee at ``number``."""
        for known, scenario in self.numbers.items():
            if same_number(known, number):
                return scenario
        return self.default

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "scenarios") -> Scenarios:
        """``{"default": {…}, "numbers": {"+9198…": {…}}}``; each number's keys override the default's."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a JSON object with 'default' and/or 'numbers'")
        unknown = sorted(set(data) - {"default", "numbers"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected default, numbers")
        default = Scenario.from_mapping(data.get("default") or {}, where=f"{where}.default")
        numbers: dict[str, Scenario] = {}
        raw_numbers = data.get("numbers") or {}
        if not isinstance(raw_numbers, Mapping):
            raise ConfigError(f"{where}.numbers: must be an object keyed by phone number")
        for number, overrides in raw_numbers.items():
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"{where}.numbers[{number!r}]: must be an object")
            numbers[number] = Scenario.from_mapping(
                overrides, base=default, where=f"{where}.numbers[{number!r}]"
            )
        return cls(default, numbers)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Scenarios:
        """Load scenarios from a JSON file (see :meth:`from_mapping`)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"scenarios: cannot read {os.fspath(path)!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"scenarios: {os.fspath(path)!r} is not JSON: {exc}") from None
        return cls.from_mapping(data, where=os.fspath(path))


# -------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """Where the emulator listens, the account it pretends to be, and how its callbacks behave.

    ``public_url`` is the base of ``RecordingUrl`` (default: ``http://host:port``).
    ``recordings_dir`` keeps recordings (default: a temporary directory removed on close).
    ``fault_hold_seconds``: how long an ``api_fault="timeout"`` answer is held back.
    """

    host: str = "127.0.0.1"
    port: int = 9300
    account_sid: str = "emulator"
    api_key: str = field(default="emulator-key", repr=False)
    api_token: str = field(default="emulator-token", repr=False)
    rate_limit_per_minute: int = 200
    public_url: str | None = None
    recordings_dir: str | None = None
    callback_timeout: float = 15.0
    callback_retries: int = 2
    callback_retry_delay: float = 1.0
    default_time_out: int = 30
    utc_offset_minutes: int = 330
    fault_hold_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port (0-65535)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.account_sid):
            raise ConfigError("account_sid: must be 1-64 letters, digits, '_', '.' or '-'")
        if not self.api_key or not self.api_token:
            raise ConfigError("api_key/api_token: must be non-empty")
        if self.rate_limit_per_minute < 1:
            raise ConfigError(f"rate_limit_per_minute: must be >= 1, got {self.rate_limit_per_minute}")
        if self.callback_timeout <= 0 or self.callback_retry_delay < 0 or self.callback_retries < 0:
            raise ConfigError("callback_timeout must be > 0; callback_retries and callback_retry_delay >= 0")
        if not 1 <= self.default_time_out <= MAX_TIME_LIMIT:
            raise ConfigError(f"default_time_out: must be 1-{MAX_TIME_LIMIT} seconds")
        if self.public_url is not None:
            parts = urllib.parse.urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"public_url: must be an http(s) URL, got {self.public_url!r}")


# ------------------------------------------------------------------------------------------ call state


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    """One status callback POST: which event, which try, and what came back (status or error)."""

    call_sid: str
    event_type: str
    attempt: int
    encoding: str
    status: int | None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the receiver acknowledged it (2xx)."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(eq=False)
class EmulatedCall:
    """One call the emulator placed: the request, the scenario, and everything that happened."""

    sid: str
    to: str
    """The customer (the request's ``From``)."""
    caller_id: str
    stream_url: str
    scenario: Scenario
    params: Mapping[str, Any]
    created_at: datetime.datetime
    status: str = "queued"
    started_at: datetime.datetime | None = None
    answered_at: datetime.datetime | None = None
    ended_at: datetime.datetime | None = None
    updated_at: datetime.datetime | None = None
    conversation_duration: int = 0
    leg_status: str | None = None
    recording_path: Path | None = None
    recording_url: str | None = None
    report: CallReport | None = None
    stream_sample_rate: int | None = None
    stream_error: str = ""
    callbacks: list[CallbackAttempt] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def events(self) -> tuple[str, ...]:
        """The ``StatusCallbackEvents`` asked for."""
        events: tuple[str, ...] = self.params.get("events", ())
        return events

    @property
    def duration(self) -> int | None:
        """Whole seconds from creation to the end, once ended."""
        if self.ended_at is None:
            return None
        return round((self.ended_at - self.created_at).total_seconds())


# ----------------------------------------------------------------------------------------- the emulator


class _Rejected(Exception):
    """An API request refused with ``status`` and Exotel's ``message``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class Emulator:
    """Exotel's API, callees and media client on one machine. Use ``async with Emulator(...) as exotel``.

    ``calls`` holds every call placed, by SID; :meth:`wait_done` waits for one to finish (its terminal
    callback delivered or given up). :meth:`exotel_config` is an ``ExotelConfig`` pointing here.
    """

    def __init__(self, config: EmulatorConfig | None = None, scenarios: Scenarios | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.scenarios = scenarios or Scenarios()
        self.calls: dict[str, EmulatedCall] = {}
        self.callback_attempts: list[CallbackAttempt] = []
        self.api_requests = 0
        self.live_calls = 0
        """Calls placed and not yet ended (ringing or in progress)."""
        self.max_live_calls = 0
        """The most calls ever live at once: what a channel limit must keep down."""
        self._tz = datetime.timezone(datetime.timedelta(minutes=self.config.utc_offset_minutes))
        self._expected_auth = "Basic " + base64.b64encode(
            f"{self.config.api_key}:{self.config.api_token}".encode()
        ).decode("ascii")
        self._requests: collections.deque[float] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._recordings: Path | None = None
        self._own_recordings = False
        self.app = web.Application()
        account = "/v1/Accounts/{account}"
        self.app.router.add_post(account + "/Calls/connect.json", self._connect)
        self.app.router.add_post(account + "/Calls/connect", self._connect)
        self.app.router.add_get(account + "/Calls.json", self._list_calls)
        self.app.router.add_get(account + "/Calls/{call}", self._get_call)
        self.app.router.add_get("/recordings/{name}", self._recording)

    # --- lifecycle --------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the emulator is not started")
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def base_url(self) -> str:
        """``http://host:port``: what ``EXOTEL_BASE_URL`` should be."""
        return f"http://{self.config.host}:{self.port}"

    def exotel_config(self, **overrides: Any) -> ExotelConfig:
        """An ``ExotelConfig`` with this emulator's account, credentials and base URL."""
        return ExotelConfig(
            account_sid=self.config.account_sid,
            api_key=self.config.api_key,
            api_token=self.config.api_token,
            base_url=self.base_url,
            utc_offset_minutes=self.config.utc_offset_minutes,
            **overrides,
        )

    async def start(self) -> None:
        """Bind and serve."""
        if self.config.recordings_dir is None:
            self._recordings = Path(tempfile.mkdtemp(prefix="voicebot-emulator-"))
            self._own_recordings = True
        else:
            self._recordings = Path(self.config.recordings_dir)
            self._recordings.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": "voicebot-emulator"},
            timeout=aiohttp.ClientTimeout(total=self.config.callback_timeout),
        )
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        log.info("emulating Exotel's API on %s (account %s)", self.base_url, self.config.account_sid)

    async def close(self) -> None:
        """Stop: live calls are cancelled, the server and the callback client closed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_recordings and self._recordings is not None:
            shutil.rmtree(self._recordings, ignore_errors=True)

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_done(self, call_sid: str, timeout: float | None = None) -> EmulatedCall:
        """Wait until call ``call_sid`` is over and its last callback delivered (or given up)."""
        call = self.calls[call_sid]
        async with asyncio.timeout(timeout):
            await call.done.wait()
        return call

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.now(self._tz)

    def _stamp(self, moment: datetime.datetime | None) -> str | None:
        return None if moment is None else moment.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S")

    # --- the API ----------------------------------------------------------------------------------------

    def _check_request(self, request: web.Request) -> None:
        """Auth, account and rate limit, in Exotel's order."""
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self._expected_auth.encode()):
            raise _Rejected(401, "Authentication failed: check your API key and token")
        if request.match_info["account"] != self.config.account_sid:
            raise _Rejected(404, f"Account {request.match_info['account']!r} not found")
        now = time.monotonic()
        while self._requests and self._requests[0] <= now - RATE_WINDOW:
            self._requests.popleft()
        if len(self._requests) >= self.config.rate_limit_per_minute:
            retry_after = max(1, math.ceil(self._requests[0] + RATE_WINDOW - now))
            raise _Rejected(
                429,
                f"Too many requests: the limit is {self.config.rate_limit_per_minute} per minute",
                {"Retry-After": str(retry_after)},
            )
        self._requests.append(now)
        self.api_requests += 1

    async def _connect(self, request: web.Request) -> web.Response:
        as_json = request.path.endswith(".json")
        try:
            self._check_request(request)
            form = await request.post()
            params = _validate_connect(form)
        except _Rejected as exc:
            return _error_response(exc, as_json)
        to = params["From"]
        scenario = self.scenarios.for_number(to)
        if scenario.api_fault == "reject_500":
            return _error_response(_Rejected(500, "Internal server error"), as_json)
        call = EmulatedCall(
            sid=secrets.token_hex(16),
            to=to,
            caller_id=params["CallerId"],
            stream_url=params["StreamUrl"],
            scenario=scenario,
            params=params,
            created_at=self._now(),
        )
        call.updated_at = call.created_at
        self.calls[call.sid] = call
        log.info("call %s to %s placed (%s)", call.sid, to, scenario.outcome, extra={"call_sid": call.sid})
        self._spawn(self._run_call(call), f"emulator-call-{call.sid}")
        if scenario.api_fault == "error_500":
            return _error_response(_Rejected(500, "Internal server error"), as_json)
        if scenario.api_fault == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if scenario.api_fault == "timeout":
            await asyncio.sleep(self.config.fault_hold_seconds)
        return self._call_response(call, as_json, details=False)

    async def _get_call(self, request: web.Request) -> web.Response:
        name = request.match_info["call"]
        as_json = name.endswith(".json")
        sid = name.removesuffix(".json")
        try:
            self._check_request(request)
            call = self.calls.get(sid)
            if call is None:
                raise _Rejected(404, f"Call {sid!r} not found")
        except _Rejected as exc:
            return _error_response(exc, as_json)
        details = request.query.get("details", "").lower() == "true"
        return self._call_response(call, as_json, details=details)

    async def _list_calls(self, request: web.Request) -> web.Response:
        try:
            self._check_request(request)
            query = request.query
            page_size = _query_int(query.get("PageSize", "50"), "PageSize", 1, 100)
            sids = {s for s in query.get("Sid", "").split(",") if s}
            numbers = [n for n in query.get("From", "").split(",") if n]
            status = query.get("Status", "").lower()
            after, before = self._date_window(query.get("DateCreated", ""))
        except _Rejected as exc:
            return _error_response(exc, True)
        selected = [
            call
            for call in self.calls.values()
            if (not sids or call.sid in sids)
            and (not numbers or any(same_number(call.to, n) for n in numbers))
            and (not status or call.status == status)
            and (after is None or call.created_at.replace(microsecond=0) >= after)
            and (before is None or call.created_at.replace(microsecond=0) <= before)
        ]
        selected.sort(key=lambda call: call.created_at, reverse=True)
        page = selected[:page_size]
        body = {
            "Metadata": {
                "Total": len(selected),
                "PageSize": page_size,
                "FirstPageUri": request.path_qs,
                "NextPageUri": None,
                "PrevPageUri": None,
            },
            "Calls": [self._resource(call, details=False) for call in page],
        }
        return web.json_response(body)

    def _date_window(self, value: str) -> tuple[datetime.datetime | None, datetime.datetime | None]:
        after = before = None
        for part in filter(None, value.split(";")):
            op, _, stamp = part.partition(":")
            try:
                moment = datetime.datetime.strptime(stamp.strip(), "%Y-%m-%d %H:%M:%S").replace(
                    tzinfo=self._tz
                )
            except ValueError:
                raise _Rejected(400, f"DateCreated: {part!r} is not gte:/lte:YYYY-MM-DD HH:mm:ss") from None
            if op == "gte":
                after = moment
            elif op == "lte":
                before = moment
            else:
                raise _Rejected(400, f"DateCreated: unknown operator {op!r} (gte, lte)")
        return after, before

    async def _recording(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        sid = name.removesuffix(".wav")
        call = self.calls.get(sid)
        if call is None or call.recording_path is None or not call.recording_path.is_file():
            return web.Response(status=404, text="no such recording\n")
        return web.FileResponse(call.recording_path, headers={"Content-Type": "audio/wav"})

    def _call_response(self, call: EmulatedCall, as_json: bool, *, details: bool) -> web.Response:
        resource = self._resource(call, details=details)
        if as_json:
            return web.json_response({"Call": resource})
        return web.Response(text=_xml("Call", resource), content_type="application/xml")

    def _resource(self, call: EmulatedCall, *, details: bool) -> dict[str, Any]:
        """The call as Exotel's API shows it (§7.3)."""
        duration = call.duration
        resource: dict[str, Any] = {
            "Sid": call.sid,
            "ParentCallSid": None,
            "DateCreated": self._stamp(call.created_at),
            "DateUpdated": self._stamp(call.updated_at),
            "AccountSid": self.config.account_sid,
            "To": None,
            "From": call.to,
            "PhoneNumberSid": call.caller_id,
            "Status": "in-progress" if call.status in ("queued", "ringing") else call.status,
            "StartTime": self._stamp(call.created_at),
            "EndTime": self._stamp(call.ended_at),
            "Duration": None if duration is None else str(duration),
            "Price": None,
            "Direction": "outbound-api",
            "AnsweredBy": None,
            "ForwardedFrom": None,
            "CallerName": None,
            "Uri": f"/v1/Accounts/{self.config.account_sid}/Calls/{call.sid}.json",
            "RecordingUrl": call.recording_url,
        }
        if details:
            resource["Details"] = {
                "ConversationDuration": call.conversation_duration,
                "Leg1Status": call.leg_status,
                "Leg2Status": None,
                "Legs": [{"Leg": {"Id": 1, "OnCallDuration": call.conversation_duration}}],
            }
        return resource

    # --- one call ---------------------------------------------------------------------------------------

    async def _run_call(self, call: EmulatedCall) -> None:
        outbox: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        sender = asyncio.create_task(
            self._send_callbacks(call, outbox), name=f"emulator-callbacks-{call.sid}"
        )
        self.live_calls += 1
        self.max_live_calls = max(self.max_live_calls, self.live_calls)
        try:
            await self._play(call, outbox)
        except Exception:
            log.exception("emulated call %s failed", call.sid, extra={"call_sid": call.sid})
            if call.ended_at is None:
                self._finish(call, "failed", leg_status="failed")
        finally:
            if call.ended_at is None:  # cancelled: the emulator is closing
                self._finish(call, "canceled", leg_status="canceled")
            self.live_calls -= 1
            if call.params.get("StatusCallback"):
                event = "terminal" if call.events else ""
                outbox.put_nowait((event, self._callback_fields(call, event)))
            outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(sender)
            call.done.set()

    def _set_status(self, call: EmulatedCall, status: str) -> None:
        call.status = status
        call.updated_at = self._now()

    def _finish(self, call: EmulatedCall, status: str, *, leg_status: str | None) -> None:
        call.ended_at = self._now()
        call.leg_status = leg_status
        self._set_status(call, status)
        log.info("call %s: %s", call.sid, status, extra={"call_sid": call.sid})

    async def _play(
        self, call: EmulatedCall, outbox: asyncio.Queue[tuple[str, dict[str, Any]] | None]
    ) -> None:
        scenario = call.scenario
        call.started_at = self._now()
        self._set_status(call, "ringing")
        if "ringing" in call.events:
            outbox.put_nowait(("ringing", self._callback_fields(call, "ringing")))
        ring = scenario.ring_seconds
        if scenario.outcome == "no-answer":
            ring = min(ring, float(call.params.get("TimeOut") or self.config.default_time_out))
        await asyncio.sleep(ring)  # the callee's phone ringing: real time, as Exotel's is
        if scenario.outcome != "answer":
            self._finish(call, scenario.outcome, leg_status=scenario.outcome)
            return
        call.answered_at = self._now()
        self._set_status(call, "in-progress")
        if "answered" in call.events:
            outbox.put_nowait(("answered", self._callback_fields(call, "answered")))
        report = await self._stream(call)
        if report is None:
            self._finish(call, "failed", leg_status="completed")
            return
        call.report = report
        call.conversation_duration = round(report.duration)
        if call.params.get("Record"):
            self._record(call, report)
        self._finish(call, "completed", leg_status="completed")

    async def _stream(self, call: EmulatedCall) -> CallReport | None:
        """Open the stream as Exotel does and run the callee's side of the conversation."""
        scenario = call.scenario
        url, auth = _split_userinfo(call.stream_url)
        rate = rate_from_url(url)[0] or 8000
        call.stream_sample_rate = rate
        limit = min(float(call.params.get("TimeLimit") or MAX_TIME_LIMIT), MAX_STREAM_SECONDS)
        caller = _caller_audio(scenario, rate, seed=int(call.sid[:8], 16))
        exotel: FakeExotel | None = None
        for attempt in (1, 2):  # Exotel retries a failed handshake once (§2.5)
            exotel = FakeExotel(
                url,
                sample_rate=rate,
                caller_audio=caller,
                wire=WireOptions(url_sample_rate="omit"),
                custom_parameters=dict(stream_url_parameters(url)),
                auth=auth,
                account_sid=self.config.account_sid,
                from_number=call.caller_id,
                to_number=call.to,
                call_sid=call.sid,
            )
            try:
                await exotel.connect()
                break
            except (OSError, TimeoutError, WebSocketException) as exc:
                with contextlib.suppress(Exception):
                    await exotel.__aexit__(type(exc), exc, None)
                call.stream_error = f"attempt {attempt}: {type(exc).__name__}: {exc}"
                log.warning("call %s: stream to %s failed: %s", call.sid, _masked(url), call.stream_error)
                exotel = None
        if exotel is None:
            return None
        try:
            for digit, at in parse_dtmf_script(scenario.dtmf):
                exotel.press_at(digit, at)
            caller_hangs_up = scenario.hangup == "caller" and scenario.talk_seconds <= limit
            await exotel.run(until=scenario.talk_seconds if caller_hangs_up else limit)
            if not exotel.closed:
                await exotel.hangup("callended" if caller_hangs_up else "stopped")
        finally:
            await exotel.__aexit__(None, None, None)
        return exotel.report()

    def _record(self, call: EmulatedCall, report: CallReport) -> None:
        """Both sides as a WAV file: ``single`` mixes them, ``dual`` puts the caller left, the bot right."""
        from voicebot.wavfile import write_wav

        assert self._recordings is not None
        bot = report.heard
        caller = _caller_audio(call.scenario, report.sample_rate, seed=int(call.sid[:8], 16))[: len(bot)]
        caller = np.concatenate([caller, np.zeros(len(bot) - len(caller), dtype=np.int16)])
        if call.params.get("RecordingChannels") == "dual":
            audio = np.column_stack([caller, bot]).astype(np.int16)
        else:
            audio = to_int16(caller.astype(np.int32) + bot.astype(np.int32))
        path = self._recordings / f"{call.sid}.wav"
        write_wav(path, audio, report.sample_rate)
        call.recording_path = path
        base = (self.config.public_url or self.base_url).rstrip("/")
        call.recording_url = f"{base}/recordings/{call.sid}.wav"

    # --- status callbacks -------------------------------------------------------------------------------

    def _callback_fields(self, call: EmulatedCall, event_type: str) -> dict[str, Any]:
        """The fields of one callback (§8.3): the four defaults without an event type, else all."""
        status = call.status
        recording = call.recording_url or ""
        if not event_type:
            return {
                "CallSid": call.sid,
                "DateUpdated": self._stamp(call.updated_at),
                "Status": status,
                "RecordingUrl": recording,
            }
        leg: dict[str, Any] = {"OnCallDuration": call.conversation_duration, "Status": call.leg_status}
        if call.answered_at is not None:
            leg["AnsweredBy"] = call.scenario.answered_by
        fields: dict[str, Any] = {
            "CallSid": call.sid,
            "EventType": event_type,
            "Status": status,
            "DateCreated": self._stamp(call.created_at),
            "DateUpdated": self._stamp(call.updated_at),
            "StartTime": self._stamp(call.started_at),
            "EndTime": self._stamp(call.ended_at) or "",
            "From": call.to,
            "To": "",
            "PhoneNumberSid": call.caller_id,
            "Direction": "outbound-api",
            "ConversationDuration": call.conversation_duration,
            "RecordingUrl": recording,
            "Legs": [leg],
        }
        if event_type == "terminal":
            fields["CustomField"] = call.params.get("CustomField", "")
        return fields

    async def _send_callbacks(
        self, call: EmulatedCall, outbox: asyncio.Queue[tuple[str, dict[str, Any]] | None]
    ) -> None:
        """Deliver one call's callbacks in order, each retried up to ``callback_retries`` times."""
        url = call.params.get("StatusCallback")
        encoding = call.scenario.callback_encoding or (
            "json" if call.params.get("StatusCallbackContentType") == "application/json" else "multipart"
        )
        while (item := await outbox.get()) is not None:
            if not url:
                continue
            event_type, fields = item
            body, content_type = encode_callback(fields, encoding)
            for attempt in range(1, self.config.callback_retries + 2):
                if attempt > 1:
                    await asyncio.sleep(self.config.callback_retry_delay)
                result = await self._post_callback(url, body, content_type)
                record = CallbackAttempt(call.sid, event_type or "(default)", attempt, encoding, *result)
                call.callbacks.append(record)
                self.callback_attempts.append(record)
                if record.ok:
                    break
                log.warning(
                    "call %s: %s callback attempt %d failed: %s",
                    call.sid,
                    record.event_type,
                    attempt,
                    record.error or f"HTTP {record.status}",
                )

    async def _post_callback(self, url: str, body: bytes, content_type: str) -> tuple[int | None, str, float]:
        assert self._session is not None
        began = time.perf_counter()
        try:
            async with self._session.post(url, data=body, headers={"Content-Type": content_type}) as response:
                await response.read()
                return response.status, "", time.perf_counter() - began
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - began


# ------------------------------------------------------------------------------------------- encodings


def flatten_fields(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Fields as form pairs, arrays flattened the way Exotel's form callbacks do (``Legs[0][Status]``);
    None becomes an empty string."""
    pairs: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}[{key}]", item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        else:
            pairs.append((prefix, "" if value is None else str(value)))

    for key, value in fields.items():
        walk(key, value)
    return pairs


def encode_callback(fields: Mapping[str, Any], encoding: str) -> tuple[bytes, str]:
    """A callback body and its Content-Type: ``json``, ``urlencoded`` or ``multipart`` (form-data)."""
    if encoding == "json":
        return json.dumps(fields).encode(), "application/json"
    pairs = flatten_fields(fields)
    if encoding == "urlencoded":
        return urllib.parse.urlencode(pairs).encode("ascii"), "application/x-www-form-urlencoded"
    if encoding != "multipart":
        raise ConfigError(f"callback encoding: {encoding!r} is not json, urlencoded or multipart")
    boundary = "----voicebot" + secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode()
        + b"\r\n"
        for name, value in pairs
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# ------------------------------------------------------------------------------------ the API's checks


def _validate_connect(form: Mapping[str, Any]) -> dict[str, Any]:
    """Exotel's checks of a Connect Voice AI request; ``_Rejected(400)`` with its style of message."""
    values = {key: str(value) for key, value in form.items() if not hasattr(value, "file")}
    if "Url" in values:
        raise _Rejected(400, "Connect with Flow (Url) is not emulated; send StreamUrl and StreamType")
    for name in ("From", "CallerId", "StreamUrl", "StreamType"):
        if not values.get(name):
            raise _Rejected(400, f"The '{name}' parameter is required.")
    params: dict[str, Any] = {}
    try:
        params["From"] = check_number("From", values["From"])
        params["CallerId"] = check_number("CallerId", values["CallerId"])
        check_stream_url(values["StreamUrl"])
        params["StreamUrl"] = values["StreamUrl"]
        if values["StreamType"] not in STREAM_TYPES:
            raise ValidationError("StreamType", "must be bidirectional", values["StreamType"])
        record = values.get("Record", "false").lower()
        if record not in ("true", "false"):
            raise ValidationError("Record", "must be true or false", values["Record"])
        params["Record"] = record == "true"
        channels = values.get("RecordingChannels", "single")
        if channels not in RECORDING_CHANNELS:
            raise ValidationError("RecordingChannels", "must be single or dual", channels)
        params["RecordingChannels"] = channels
        for name in ("TimeLimit", "TimeOut"):
            if name in values:
                params[name] = check_seconds(name, _as_int(values[name]), 1, MAX_TIME_LIMIT)
        if "CustomField" in values:
            params["CustomField"] = check_text("CustomField", values["CustomField"], MAX_CUSTOM_FIELD)
        if "StreamName" in values:
            params["StreamName"] = check_text("StreamName", values["StreamName"], MAX_STREAM_NAME)
        if values.get("StatusCallback"):
            check_http_url("StatusCallback", values["StatusCallback"])
            params["StatusCallback"] = values["StatusCallback"]
        content_type = values.get("StatusCallbackContentType")
        if content_type is not None:
            if content_type not in CALLBACK_CONTENT_TYPES:
                raise ValidationError(
                    "StatusCallbackContentType",
                    "must be application/json or multipart/form-data",
                    content_type,
                )
            params["StatusCallbackContentType"] = content_type
        events: list[str] = []
        for key, value in _event_fields(form):
            for name in filter(None, (part.strip().lower() for part in value.split(","))):
                if name not in CALLBACK_EVENTS:
                    raise ValidationError(key, "must be answered, terminal or ringing", value)
                if name not in events:
                    events.append(name)
        params["events"] = tuple(events)
    except ValidationError as exc:
        raise _Rejected(400, str(exc)) from None
    return params


def _event_fields(form: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``StatusCallbackEvents[]`` (repeated), ``StatusCallbackEvents[0]`` … or ``StatusCallbackEvents``."""
    return [
        (str(key), str(value))
        for key, value in form.items()  # a MultiDict yields each repeated key
        if re.fullmatch(r"StatusCallbackEvents(\[\d*\])?", str(key))
    ]


def _as_int(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _query_int(text: str, name: str, low: int, high: int) -> int:
    value = _as_int(text)
    if not isinstance(value, int) or not low <= value <= high:
        raise _Rejected(400, f"{name}: must be an integer from {low} to {high}")
    return value


def _error_response(error: _Rejected, as_json: bool) -> web.Response:
    fields = {"Status": error.status, "Message": error.message}
    if as_json:
        return web.json_response({"RestException": fields}, status=error.status, headers=error.headers)
    return web.Response(
        status=error.status,
        text=_xml("RestException", fields),
        content_type="application/xml",
        headers=error.headers,
    )


def _xml(root: str, fields: Mapping[str, Any]) -> str:
    """``<TwilioResponse><root>…</root></TwilioResponse>``, as v1 answers without ``.json``."""

    def element(name: str, value: Any) -> str:
        if isinstance(value, Mapping):
            return f"<{name}>{''.join(element(k, v) for k, v in value.items())}</{name}>"
        if isinstance(value, list):
            return "".join(element(name, item) for item in value)
        return f"<{name}>{'' if value is None else escape(str(value))}</{name}>"

    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<TwilioResponse>{element(root, fields)}</TwilioResponse>\n'
    )


def _split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``wss://user:pass@host/p`` → (``wss://host/p``, (user, pass)): Exotel sends them as Basic auth."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), (user, password)


def _masked(url: str) -> str:
    return _split_userinfo(url)[0]


# ----------------------------------------------------------------------------------------------- audio


def _caller_audio(scenario: Scenario, rate: int, seed: int) -> Samples:
    if scenario.caller_audio == "silence":
        return np.zeros(0, dtype=np.int16)
    if scenario.caller_audio == "speech":
        return speech_like(min(scenario.talk_seconds, 120.0), rate, seed=seed)
    from voicebot.wavfile import read_wav

    return read_wav(scenario.caller_audio, rate=rate).samples


def speech_like(seconds: float, rate: int, *, seed: int = 0, level: float = 0.3) -> Samples:
    """Synthetic speech-like sound: voiced syllables (a gliding 90-220 Hz pitch with a few formant
    peaks, 120-320 ms each, smooth onsets) in words, separated by short gaps and longer pauses.

    It has the rhythm and spectrum a VAD or an echo path reacts to, without shipping recordings.
    Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    total = round(seconds * rate)
    out = np.zeros(total, dtype=np.float64)
    at = round(rng.uniform(0.2, 0.5) * rate)
    while at < total:
        for _ in range(rng.randint(1, 4)):  # syllables of one word
            length = round(rng.uniform(0.12, 0.32) * rate)
            if at + length > total:
                break
            t = np.arange(length) / rate
            f0 = rng.uniform(90, 220) * (1 + rng.uniform(-0.15, 0.15) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = (rng.uniform(300, 800), rng.uniform(900, 2200), rng.uniform(2400, 3200))
            voice = np.zeros(length)
            for harmonic in range(1, 30):
                frequency = f0 * harmonic
                if frequency[0] >= rate / 2 * 0.9:
                    break
                gain = sum(1.0 / (1.0 + ((frequency - f) / 120.0) ** 2) for f in formants) / harmonic**0.5
                voice += gain * np.sin(harmonic * phase)
            voice *= np.hanning(length) ** 0.5
            peak = np.max(np.abs(voice)) or 1.0
            out[at : at + length] = voice / peak * level * rng.uniform(0.6, 1.0)
            at += length + round(rng.uniform(0.03, 0.12) * rate)
        at += round(rng.uniform(0.25, 0.7) * rate)
    return to_int16(out * 32767)
