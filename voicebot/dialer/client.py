"""``Dialer``: Exotel's Connect Voice AI and Call Details APIs over ``aiohttp`` (exotel-protocol.md §7, §9).

::

    config = ExotelConfig.from_env(os.environ)
    async with Dialer(config) as dialer:
        call = await dialer.connect(
            to="+919812345678", caller_id="08045678901",
            stream_url="wss://bot.example.com/exotel/ws/9f2c1e", sample_rate=16000,
            record=True, custom_field="order-5531",
            status_callback="https://bot.example.com/exotel/status/TOKEN",
            status_callback_events=["answered", "terminal"],
        )
        print(call.sid, call.status)

Everything is validated before a byte is sent. Errors are translated at this boundary into the tree in
``voicebot.dialer.errors``; a dial that may or may not have happened raises ``OutcomeUnknown`` and is
never retried here. A 429 is retried after ``Retry-After`` (it is certain that nothing happened).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import aiohttp

from voicebot._version import __version__
from voicebot.dialer.api import (
    CallResource,
    ConnectRequest,
    format_exotel_time,
    lower_keys,
    parse_call_response,
    parse_rest_exception,
    salvage_call_sid,
    same_number,
)
from voicebot.dialer.config import ExotelConfig
from voicebot.dialer.errors import (
    DialerError,
    ExotelApiError,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    TemporaryFailure,
    Unreachable,
    ValidationError,
    error_for_status,
)

__all__ = ["Dialer", "parse_retry_after"]

log = logging.getLogger("voicebot.dialer")

#: The call SIDs Exotel hands out are 32 hex digits; accept any plain token, never a path.
_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Seconds waited on a 429 that carries no ``Retry-After``.
DEFAULT_RETRY_WAIT = 1.0
BODY_PREVIEW = 500

Throttle = Callable[[], Awaitable[None]]


class Dialer:
    """A client for one Exotel account. Use ``async with Dialer(config) as dialer``.

    ``session``: an ``aiohttp.ClientSession`` to use (the caller closes it); by default the dialer
    makes and closes its own. ``throttle``: awaited before every request, so an application can share
    one rate limiter (e.g. a token bucket under Exotel's 200 requests/min) between dials and lookups.
    """

    def __init__(
        self,
        config: ExotelConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.config = config
        self._session = session
        self._own_session = session is None
        self._throttle = throttle
        credentials = base64.b64encode(f"{config.api_key}:{config.api_token}".encode()).decode("ascii")
        self._authorization = f"Basic {credentials}"
        self._timeout = aiohttp.ClientTimeout(
            total=config.request_timeout, sock_connect=config.connect_timeout
        )
        self._account_path = f"/v1/Accounts/{urllib.parse.quote(config.account_sid, safe='')}"

    async def __aenter__(self) -> Dialer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session if the dialer made it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": f"voicebot/{__version__}", "Accept": "application/json"}
            )
        return self._session

    # --- dialling ---------------------------------------------------------------------------------------

    async def connect(
        self,
        *,
        to: str,
        caller_id: str,
        stream_url: str,
        stream_type: str = "bidirectional",
        sample_rate: int | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        record: bool | None = None,
        recording_channels: str | None = None,
        time_limit: int | None = None,
        time_out: int | None = None,
        custom_field: str | None = None,
        status_callback: str | None = None,
        status_callback_content_type: str | None = "application/json",
        status_callback_events: Sequence[str] = (),
        stream_name: str | None = None,
    ) -> CallResource:
        """Dial ``to`` and stream the call to ``stream_url`` (Connect Voice AI); returns the new call.

        Parameters are those of :class:`~voicebot.dialer.api.ConnectRequest` (Exotel's names in
        snake_case; ``to`` is sent as ``From``, the number Exotel dials). Raises ``ValidationError``
        before sending, a ``RequestRejected`` subclass when Exotel refuses (no call placed), or
        ``OutcomeUnknown`` when the call may have been placed (see :meth:`reconcile`).
        """
        request = ConnectRequest(
            to=to,
            caller_id=caller_id,
            stream_url=stream_url,
            stream_type=stream_type,
            sample_rate=sample_rate,
            custom_parameters=custom_parameters,
            record=record,
            recording_channels=recording_channels,
            time_limit=time_limit,
            time_out=time_out,
            custom_field=custom_field,
            status_callback=status_callback,
            status_callback_content_type=status_callback_content_type,
            status_callback_events=status_callback_events,
            stream_name=stream_name,
        )
        return await self.place(request)

    async def place(self, request: ConnectRequest) -> CallResource:
        """Send an already-built :class:`ConnectRequest`; see :meth:`connect`."""
        url = f"{self.config.api_base}{self._account_path}/Calls/connect.json"
        sent_at = datetime.datetime.now(datetime.UTC)

        def unknown(message: str, status: int | None = None, body: str = "") -> OutcomeUnknown:
            return OutcomeUnknown(
                message,
                status=status,
                body=body[:BODY_PREVIEW],
                request=request,
                sent_at=sent_at,
                call_sid=salvage_call_sid(body) if body else None,
            )

        try:
            status, headers, text = await self._send(
                "POST",
                url,
                data=request.body(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except _AfterSend as exc:
            raise unknown(
                f"no answer to the dial request ({exc.reason}); the call may have been placed"
            ) from exc
        if 200 <= status < 300:
            try:
                call = parse_call_response(text)
            except ValueError as exc:
                raise unknown(f"unreadable answer to the dial request ({exc})", status, text) from None
            log.info(
                "dialled: call %s %s",
                call.sid,
                call.status,
                extra={"call_sid": call.sid, "status": call.status},
            )
            return call
        if status >= 500:
            message, _ = parse_rest_exception(text)
            raise unknown(message or f"Exotel failed the dial request with HTTP {status}", status, text)
        raise _error(status, headers, text)

    # --- looking calls up -------------------------------------------------------------------------------

    async def get_call(self, call_sid: str, *, details: bool = False) -> CallResource:
        """``GET …/Calls/{sid}.json`` (Call Details, §9); ``details`` adds Exotel's ``Details`` object.

        Raises ``NotFound`` for an unknown SID and ``TemporaryFailure`` when Exotel cannot answer now.
        """
        if not isinstance(call_sid, str) or not _CALL_SID.fullmatch(call_sid):
            raise ValidationError("CallSid", "must be 1-64 letters, digits, '_' or '-'", call_sid)
        url = f"{self.config.api_base}{self._account_path}/Calls/{call_sid}.json"
        text = await self._read(url, {"details": "true"} if details else None)
        try:
            return parse_call_response(text)
        except ValueError as exc:
            raise TemporaryFailure(
                f"unreadable Call Details answer ({exc})", body=text[:BODY_PREVIEW]
            ) from None

    async def list_calls(
        self,
        *,
        sids: Collection[str] = (),
        from_numbers: Collection[str] = (),
        status: str | None = None,
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
        page_size: int = 50,
    ) -> list[CallResource]:
        """The first page of ``GET …/Calls.json`` (§9) with Exotel's filters: up to 100 ``sids``, up to
        5 ``from_numbers``, a ``status``, and a creation window (aware datetimes; sent in the account's
        time zone). Newest first."""
        if len(sids) > 100:
            raise ValidationError("Sid", "at most 100 call SIDs per lookup", len(sids))
        if len(from_numbers) > 5:
            raise ValidationError("From", "at most 5 numbers per lookup", len(from_numbers))
        if not 1 <= page_size <= 100:
            raise ValidationError("PageSize", "must be 1-100", page_size)
        params: dict[str, str] = {"PageSize": str(page_size), "SortBy": "DateCreated:desc"}
        if sids:
            params["Sid"] = ",".join(sids)
        if from_numbers:
            params["From"] = ",".join(from_numbers)
        if status:
            params["Status"] = status
        window = []
        tz = self.config.account_timezone
        if created_after is not None:
            window.append(f"gte:{format_exotel_time(created_after, tz)}")
        if created_before is not None:
            window.append(f"lte:{format_exotel_time(created_before, tz)}")
        if window:
            params["DateCreated"] = ";".join(window)
        url = f"{self.config.api_base}{self._account_path}/Calls.json"
        text = await self._read(url, params)
        try:
            payload = _json_object(text)
            calls = lower_keys(payload).get("calls")
            if not isinstance(calls, list):
                raise ValueError("no Calls list")
            return [CallResource.from_mapping(call) for call in calls if isinstance(call, Mapping)]
        except ValueError as exc:
            raise TemporaryFailure(f"unreadable call list ({exc})", body=text[:BODY_PREVIEW]) from None

    async def reconcile(
        self, error: OutcomeUnknown, *, known_sids: Collection[str] = (), skew: float = 120.0
    ) -> CallResource | None:
        """Settle a dial whose outcome is unknown: the call it placed, or None if Exotel knows none.

        With a SID from the answer, this is :meth:`get_call`. Without one, it lists calls to the same
        number created since the request was sent (less ``skew`` seconds for clock differences),
        leaving out ``known_sids`` (calls already accounted for, e.g. earlier attempts), and takes the
        one created closest to the send time. Exotel's lists may lag a few seconds behind a dial, so
        "None" right after the failure is weaker evidence than "None" a minute later.
        """
        if error.call_sid is not None:
            try:
                return await self.get_call(error.call_sid)
            except NotFound:
                return None
        if error.request is None or error.sent_at is None:
            raise DialerError("cannot reconcile: the error does not say what was sent, or when")
        since = error.sent_at - datetime.timedelta(seconds=skew)
        calls = await self.list_calls(from_numbers=[error.request.to], created_after=since, page_size=100)
        tz = self.config.account_timezone
        candidates: list[tuple[float, CallResource]] = []
        for call in calls:
            if call.sid in known_sids or not same_number(call.from_number, error.request.to):
                continue
            created = call.created_at(tz)
            if created is not None and created < since:
                continue
            distance = abs((created - error.sent_at).total_seconds()) if created else float("inf")
            candidates.append((distance, call))
        if not candidates:
            return None
        return min(candidates, key=lambda pair: pair[0])[1]

    # --- HTTP -------------------------------------------------------------------------------------------

    async def _read(self, url: str, params: Mapping[str, str] | None) -> str:
        """GET ``url``; the body of a 2xx, else the matching error (5xx and timeouts: TemporaryFailure)."""
        try:
            status, headers, text = await self._send("GET", url, params=params)
        except _AfterSend as exc:
            raise TemporaryFailure(f"no answer from Exotel ({exc.reason})") from exc
        if 200 <= status < 300:
            return text
        raise _error(status, headers, text)

    async def _send(
        self,
        method: Literal["GET", "POST"],
        url: str,
        *,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], str]:
        """One request, repeated after a 429 up to ``rate_limit_retries`` times; returns the first
        other answer. Raises ``Unreachable`` if no connection was made and ``_AfterSend`` if the
        request may have reached Exotel but no answer came back."""
        config = self.config
        for attempt in range(config.rate_limit_retries + 1):
            if self._throttle is not None:
                await self._throttle()
            try:
                async with self._client().request(
                    method,
                    url,
                    data=data,
                    params=params,
                    headers={**(headers or {}), "Authorization": self._authorization},
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as response:
                    text = await response.text(errors="replace")
                    status, answer_headers = response.status, dict(response.headers)
            except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
                raise Unreachable(f"cannot connect to {config.api_base}: {_describe(exc)}") from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _AfterSend(_describe(exc)) from exc
            if status != 429 or attempt == config.rate_limit_retries:
                return status, answer_headers, text
            wait = parse_retry_after(answer_headers.get("Retry-After"))
            wait = DEFAULT_RETRY_WAIT if wait is None else wait
            if wait > config.max_retry_wait:
                return status, answer_headers, text
            log.warning("Exotel rate limit (429): retrying in %.1f s", wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # the loop always returns on its last attempt


class _AfterSend(Exception):
    """The request may have reached Exotel, but no answer was read (timeout, dropped connection)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _error(status: int, headers: Mapping[str, str], text: str) -> ExotelApiError:
    message, code = parse_rest_exception(text)
    message = message or f"Exotel answered HTTP {status}"
    error_class = error_for_status(status)
    if error_class is RateLimited:
        return RateLimited(
            message,
            status=status,
            code=code,
            body=text[:BODY_PREVIEW],
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    return error_class(message, status=status, code=code, body=text[:BODY_PREVIEW])


def parse_retry_after(value: str | None, *, now: datetime.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (when - now).total_seconds())


def _json_object(text: str) -> Mapping[str, Any]:
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(payload, Mapping):
        raise ValueError("not a JSON object")
    return payload


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
