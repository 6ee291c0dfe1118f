"""The Connect Voice AI client against real local HTTP servers: an aiohttp test server that captures
requests byte for byte and answers as told, and the emulator for reconciliation. No mocks."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from voicebot.dialer.api import CallResource, ConnectRequest, normalize_number, same_number
from voicebot.dialer.client import Dialer, parse_retry_after
from voicebot.dialer.config import ExotelConfig
from voicebot.dialer.errors import (
    AuthError,
    BadRequest,
    Conflict,
    ExotelApiError,
    Forbidden,
    NotFound,
    OutcomeUnknown,
    PaymentRequired,
    RateLimited,
    RequestRejected,
    TemporaryFailure,
    Unreachable,
    ValidationError,
)
from voicebot.emulator import Emulator, EmulatorConfig, Scenario, Scenarios
from voicebot.errors import ConfigError

SID = "c0ffee11223344556677889900aabbcc"
CALL_JSON = {
    "Call": {
        "Sid": SID,
        "ParentCallSid": None,
        "DateCreated": "2026-08-20 10:15:02",
        "DateUpdated": "2026-08-20 10:15:02",
        "AccountSid": "acmecorp1",
        "To": None,
        "From": "09812345678",
        "PhoneNumberSid": "08045678901",
        "Status": "in-progress",
        "StartTime": "2026-08-20 10:15:02",
        "EndTime": None,
        "Duration": None,
        "Price": None,
        "Direction": "outbound-api",
        "AnsweredBy": None,
        "Uri": f"/v1/Accounts/acmecorp1/Calls/{SID}.json",
        "RecordingUrl": None,
    }
}
GOOD = {
    "to": "+919812345678",
    "caller_id": "08045678901",
    "stream_url": "wss://bot.example.com/exotel/ws/9f2c1e",
}


# ------------------------------------------------------------------------------- a capturing API server


@dataclass
class Captured:
    """One request as it arrived."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Responder = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


class FakeApi:
    """A real HTTP server on 127.0.0.1 that records each request and answers with ``respond``."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[Captured] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Captured(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        return await self.respond(request, len(self.requests))


@asynccontextmanager
async def fake_api(respond: Responder) -> AsyncIterator[tuple[FakeApi, str]]:
    api = FakeApi(respond)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield api, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def reply(status: int = 200, body: Any = CALL_JSON, headers: dict[str, str] | None = None) -> Responder:
    async def respond(request: web.Request, count: int) -> web.StreamResponse:
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json", headers=headers)

    return respond


def config_for(base_url: str, **overrides: Any) -> ExotelConfig:
    return ExotelConfig(
        account_sid="acmecorp1", api_key="key-123", api_token="token-456", base_url=base_url, **overrides
    )


def rest_exception(status: int, message: str, code: int | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"Status": status, "Message": message}
    if code is not None:
        fields["Code"] = code
    return {"RestException": fields}


# ------------------------------------------------------------------------------------------------ config


ENV = {"EXOTEL_ACCOUNT_SID": "acmecorp1", "EXOTEL_API_KEY": "key-123", "EXOTEL_API_TOKEN": "token-456"}


@pytest.mark.parametrize(
    ("subdomain", "api_base"),
    [
        ("", "https://api.in.exotel.com"),
        ("in", "https://api.in.exotel.com"),
        ("sg", "https://api.exotel.com"),
        ("api.exotel.com", "https://api.exotel.com"),
        ("api.in.exotel.com", "https://api.in.exotel.com"),
        ("@api.in.exotel.com", "https://api.in.exotel.com"),
        ("ccm-api.exotel.com", "https://ccm-api.exotel.com"),
    ],
)
def test_config_region_from_subdomain(subdomain: str, api_base: str) -> None:
    config = ExotelConfig.from_env({**ENV, "EXOTEL_SUBDOMAIN": subdomain})
    assert config.api_base == api_base
    assert (config.account_sid, config.api_key, config.api_token) == ("acmecorp1", "key-123", "token-456")


def test_config_base_url_precedence_flag_over_variable_over_subdomain() -> None:
    environ = {**ENV, "EXOTEL_SUBDOMAIN": "sg", "EXOTEL_BASE_URL": "http://127.0.0.1:9300/"}
    assert ExotelConfig.from_env(environ).api_base == "http://127.0.0.1:9300"
    assert ExotelConfig.from_env(environ, base_url="http://proxy:8000").api_base == "http://proxy:8000"
    assert ExotelConfig.from_env(ENV, region="sg").api_base == "https://api.exotel.com"
    assert ExotelConfig.from_env(ENV, request_timeout=3.0).request_timeout == 3.0


def test_config_needs_every_credential_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="EXOTEL_API_TOKEN: not set"):
        ExotelConfig.from_env({k: v for k, v in ENV.items() if k != "EXOTEL_API_TOKEN"})
    with pytest.raises(ConfigError, match="EXOTEL_ACCOUNT_SID, EXOTEL_API_KEY, EXOTEL_API_TOKEN"):
        ExotelConfig.from_env({})


def test_config_never_shows_the_key_or_token() -> None:
    config = ExotelConfig.from_env(ENV)
    text = repr(config) + str(config)
    assert "key-123" not in text and "token-456" not in text
    assert "account_sid='acmecorp1'" in text and "api_token=***" in text


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"region": "us"}, "region"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": "http://u:p@host"}, "base_url"),
        ({"account_sid": "a/b"}, "account_sid"),
        ({"api_token": ""}, "api_token"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"rate_limit_retries": -1}, "rate_limit_retries"),
        ({"utc_offset_minutes": 9000}, "utc_offset_minutes"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"account_sid": "acme", "api_key": "k", "api_token": "t", **overrides}
    with pytest.raises(ConfigError, match=f"^{field}:"):
        ExotelConfig(**values)


# -------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"to": "9812345678"}, "From"),
        ({"to": "+0919812345678"}, "From"),
        ({"to": "+91 98123 45678"}, "From"),
        ({"to": "+91981"}, "From"),
        ({"to": "0012345678"}, "From"),
        ({"caller_id": "ExoPhone"}, "CallerId"),
        ({"stream_url": "https://bot.example.com/ws"}, "StreamUrl"),
        ({"stream_url": "ws:///no-host"}, "StreamUrl"),
        ({"stream_url": "wss://bot.example.com/ws#frag"}, "StreamUrl"),
        ({"stream_url": "wss://bot.example.com:99999/ws"}, "StreamUrl"),
        ({"stream_url": "wss://bot.example.com/" + "x" * 578}, "StreamUrl"),
        ({"stream_url": "wss://bot.example.com/ws?sample-rate=44100"}, "StreamUrl"),
        ({"stream_url": "wss://bot.example.com/ws?a=1&b=2&c=3&d=4"}, "StreamUrl"),
        ({"stream_url": "wss://bot.example.com/ws?a=" + "x" * 255}, "StreamUrl"),
        ({"custom_parameters": {"a": "1", "b": "2", "c": "3", "d": "4"}}, "StreamUrl"),
        ({"custom_parameters": {"sample-rate": "8000"}}, "custom_parameters"),
        ({"stream_type": "unidirectional"}, "StreamType"),
        ({"sample_rate": 44100}, "sample_rate"),
        ({"sample_rate": 16000, "stream_url": "wss://b.example.com/ws?sample-rate=8000"}, "sample_rate"),
        ({"record": "yes"}, "Record"),
        ({"recording_channels": "stereo"}, "RecordingChannels"),
        ({"time_limit": 0}, "TimeLimit"),
        ({"time_limit": 14401}, "TimeLimit"),
        ({"time_limit": "900"}, "TimeLimit"),
        ({"time_limit": True}, "TimeLimit"),
        ({"time_out": 0}, "TimeOut"),
        ({"custom_field": "x" * 129}, "CustomField"),
        ({"custom_field": "two\nlines"}, "CustomField"),
        ({"stream_name": "x" * 33}, "StreamName"),
        ({"status_callback": "ftp://cb.example.com/x"}, "StatusCallback"),
        (
            {"status_callback": "https://cb.example.com", "status_callback_events": ["busy"]},
            "StatusCallbackEvents",
        ),
        (
            {"status_callback": "https://cb.example.com", "status_callback_events": "terminal"},
            "StatusCallbackEvents",
        ),
        ({"status_callback_events": ["terminal"]}, "StatusCallbackEvents"),
        ({"status_callback_content_type": "text/xml"}, "StatusCallbackContentType"),
    ],
)
def test_every_rule_is_checked_before_sending(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ConnectRequest(**{**GOOD, **overrides})
    error = caught.value
    assert error.field == field
    assert str(error).startswith(f"{field}: ") and error.rule in str(error)
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"to": "09812345678", "caller_id": "+918045678901"},
        {"time_limit": 1, "time_out": 14400},
        {"time_limit": 14400},
        {"custom_field": "x" * 128, "stream_name": "x" * 32},
        {"stream_url": "wss://bot.example.com/" + "x" * 577},  # 599 characters: the longest allowed
        {"stream_url": "ws://127.0.0.1:8080/ws?a=1&b=2&c=3&sample-rate=24000"},
        {"status_callback": "http://cb.example.com/x", "status_callback_events": ["Terminal", "terminal"]},
    ],
)
def test_values_at_the_limits_are_accepted(overrides: dict[str, Any]) -> None:
    request = ConnectRequest(**{**GOOD, **overrides})
    assert len(request.full_stream_url) < 600


def test_sample_rate_and_custom_parameters_are_appended_to_the_stream_url() -> None:
    request = ConnectRequest(
        **{**GOOD, "stream_url": "wss://bot.example.com/ws/t0k?tenant=acme"},
        sample_rate=16000,
        custom_parameters={"job": "42", "name": "A B"},
    )
    assert (
        request.full_stream_url
        == "wss://bot.example.com/ws/t0k?tenant=acme&sample-rate=16000&job=42&name=A+B"
    )
    # The same rate twice is not appended twice.
    same = ConnectRequest(
        **{**GOOD, "stream_url": "wss://b.example.com/ws?sample-rate=8000"}, sample_rate=8000
    )
    assert same.full_stream_url == "wss://b.example.com/ws?sample-rate=8000"


def test_stream_url_credentials_never_show_in_a_repr() -> None:
    request = ConnectRequest(**{**GOOD, "stream_url": "wss://bot:s3cret@bot.example.com/ws"})
    assert "s3cret" not in repr(request)
    assert "wss://***@bot.example.com/ws" in repr(request)


def test_numbers_are_normalised_and_compared_across_formats() -> None:
    assert normalize_number(" +91 (981) 234-5678 ") == "+919812345678"
    assert same_number("+919812345678", "09812345678")
    assert same_number("919812345678", "+919812345678")
    assert not same_number("+919812345678", "+919812345679")
    assert not same_number("", "+919812345678")
    with pytest.raises(ValidationError, match=r"number: must be E\.164"):
        normalize_number("call me")


async def test_invalid_dial_sends_nothing() -> None:
    async with fake_api(reply()) as (api, base), Dialer(config_for(base)) as dialer:
        with pytest.raises(ValidationError, match="TimeLimit"):
            await dialer.connect(**GOOD, time_limit=0)
    assert api.requests == []


# ----------------------------------------------------------------------------------- the request on the wire


async def test_request_is_encoded_byte_for_byte_as_exotel_documents() -> None:
    async with fake_api(reply()) as (api, base), Dialer(config_for(base)) as dialer:
        call = await dialer.connect(
            **GOOD,
            sample_rate=16000,
            record=True,
            recording_channels="dual",
            time_limit=900,
            custom_field="order-5531",
            status_callback="https://bot.example.com/exotel/status/9f2c1e",
            status_callback_content_type=None,
            status_callback_events=["answered", "terminal"],
            stream_name="outbound-bot",
        )
    assert call.sid == SID
    (sent,) = api.requests
    # exotel-protocol.md §7.2's example request, exactly.
    assert sent.body == (
        b"From=%2B919812345678&CallerId=08045678901&StreamUrl=wss%3A%2F%2Fbot.example.com%2Fexotel%2Fws%2F"
        b"9f2c1e%3Fsample-rate%3D16000&StreamType=bidirectional&Record=true&RecordingChannels=dual&"
        b"TimeLimit=900&CustomField=order-5531&StatusCallback=https%3A%2F%2Fbot.example.com%2Fexotel%2F"
        b"status%2F9f2c1e&StatusCallbackEvents%5B%5D=answered&StatusCallbackEvents%5B%5D=terminal&"
        b"StreamName=outbound-bot"
    )
    assert sent.method == "POST"
    assert sent.path == "/v1/Accounts/acmecorp1/Calls/connect.json"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(b"key-123:token-456").decode()
    assert sent.headers["Accept"] == "application/json"


async def test_minimal_request_and_default_json_callbacks() -> None:
    async with fake_api(reply()) as (api, base), Dialer(config_for(base)) as dialer:
        await dialer.connect(**GOOD)
        await dialer.connect(**GOOD, time_out=20, status_callback="http://cb.example.com/s/t")
    assert api.requests[0].body == (
        b"From=%2B919812345678&CallerId=08045678901&StreamUrl=wss%3A%2F%2Fbot.example.com%2Fexotel%2Fws%2F"
        b"9f2c1e&StreamType=bidirectional"
    )
    assert api.requests[1].body.endswith(
        b"&TimeOut=20&StatusCallback=http%3A%2F%2Fcb.example.com%2Fs%2Ft"
        b"&StatusCallbackContentType=application%2Fjson"
    )


async def test_throttle_is_awaited_before_every_request() -> None:
    calls: list[int] = []

    async def throttle() -> None:
        calls.append(len(calls))

    async with fake_api(reply()) as (api, base), Dialer(config_for(base), throttle=throttle) as dialer:
        await dialer.connect(**GOOD)
        await dialer.get_call(SID)
    assert len(calls) == len(api.requests) == 2


# -------------------------------------------------------------------------------------------- answers


async def test_call_resource_is_parsed_typed_and_case_insensitively() -> None:
    lowercase = {"call": {"sid": SID, "status": "Queued", "phonenumbersid": "08045678901", "duration": "17"}}
    async with fake_api(reply(body=lowercase)) as (_, base), Dialer(config_for(base)) as dialer:
        call = await dialer.connect(**GOOD)
    assert call.sid == SID and call.status == "queued"
    assert call.phone_number_sid == "08045678901" and call.duration == 17
    assert not call.terminal

    full = CallResource.from_mapping(CALL_JSON["Call"])
    assert full.from_number == "09812345678" and full.direction == "outbound-api"
    ist = datetime.timezone(datetime.timedelta(minutes=330))
    assert full.created_at(ist) == datetime.datetime(2026, 8, 20, 10, 15, 2, tzinfo=ist)


async def test_get_call_with_details() -> None:
    body = {
        "Call": {
            **CALL_JSON["Call"],
            "Status": "completed",
            "Duration": "21",
            "Details": {"Leg1Status": "completed"},
        }
    }
    async with fake_api(reply(body=body)) as (api, base), Dialer(config_for(base)) as dialer:
        call = await dialer.get_call(SID, details=True)
        with pytest.raises(ValidationError, match="CallSid"):
            await dialer.get_call("../../etc")
    assert call.terminal and call.duration == 21 and call.details == {"Leg1Status": "completed"}
    (sent,) = api.requests
    assert sent.method == "GET" and sent.path == f"/v1/Accounts/acmecorp1/Calls/{SID}.json"
    assert sent.query == {"details": "true"}


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequest),
        (401, AuthError),
        (402, PaymentRequired),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (418, RequestRejected),
        (429, RateLimited),
    ],
)
async def test_rejections_map_to_typed_errors(status: int, error_class: type[ExotelApiError]) -> None:
    body = rest_exception(status, "The 'From' parameter is required.", code=1001)
    async with (
        fake_api(reply(status, body)) as (_, base),
        Dialer(config_for(base, rate_limit_retries=0)) as dialer,
    ):
        with pytest.raises(error_class) as caught:
            await dialer.connect(**GOOD)
    error = caught.value
    assert isinstance(error, RequestRejected)
    assert (error.status, error.message, error.code) == (status, "The 'From' parameter is required.", 1001)
    assert str(error) == f"HTTP {status}: The 'From' parameter is required."


def test_forbidden_is_an_auth_error_and_unknown_outcome_is_not_retryable() -> None:
    assert issubclass(Forbidden, AuthError)
    assert not issubclass(OutcomeUnknown, TemporaryFailure | RequestRejected)


async def test_xml_error_bodies_are_read_too() -> None:
    xml = (
        "<TwilioResponse><RestException><Status>401</Status><Message>Bad creds</Message>"
        "</RestException></TwilioResponse>"
    )
    async with fake_api(reply(401, xml)) as (_, base), Dialer(config_for(base)) as dialer:
        with pytest.raises(AuthError, match="Bad creds"):
            await dialer.connect(**GOOD)


async def test_rate_limit_honours_retry_after_then_succeeds() -> None:
    async def respond(request: web.Request, count: int) -> web.StreamResponse:
        if count == 1:
            return web.json_response(
                rest_exception(429, "Too many"), status=429, headers={"Retry-After": "0"}
            )
        return web.json_response(CALL_JSON)

    async with fake_api(respond) as (api, base), Dialer(config_for(base)) as dialer:
        call = await dialer.connect(**GOOD)
    assert call.sid == SID and len(api.requests) == 2
    assert api.requests[0].body == api.requests[1].body


async def test_rate_limit_beyond_max_wait_is_raised_with_retry_after() -> None:
    limited = reply(429, rest_exception(429, "Too many"), headers={"Retry-After": "120"})
    async with fake_api(limited) as (api, base), Dialer(config_for(base, max_retry_wait=60)) as dialer:
        with pytest.raises(RateLimited) as caught:
            await dialer.connect(**GOOD)
    assert caught.value.retry_after == 120.0 and len(api.requests) == 1


async def test_rate_limit_retries_are_bounded() -> None:
    limited = reply(429, rest_exception(429, "Too many"), headers={"Retry-After": "0"})
    async with fake_api(limited) as (api, base), Dialer(config_for(base, rate_limit_retries=2)) as dialer:
        with pytest.raises(RateLimited):
            await dialer.get_call(SID)
    assert len(api.requests) == 3


def test_retry_after_forms() -> None:
    now = datetime.datetime(2026, 8, 20, 10, 0, 0, tzinfo=datetime.UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 20 Aug 2026 10:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 20 Aug 2026 09:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_on_a_dial_are_outcome_unknown(status: int) -> None:
    failing = reply(status, rest_exception(status, "Internal error"))
    async with fake_api(failing) as (api, base), Dialer(config_for(base)) as dialer:
        with pytest.raises(OutcomeUnknown) as caught:
            await dialer.connect(**GOOD)
        with pytest.raises(TemporaryFailure):
            await dialer.get_call(SID)
    error = caught.value
    assert error.status == status and error.message == "Internal error"
    assert error.request is not None and error.request.to == GOOD["to"]
    assert error.sent_at is not None and error.call_sid is None
    assert len(api.requests) == 2  # the dial was not retried


async def test_an_unreadable_200_is_outcome_unknown_and_a_sid_in_it_is_kept() -> None:
    async with fake_api(reply(200, "<html>oops</html>")) as (_, base), Dialer(config_for(base)) as dialer:
        with pytest.raises(OutcomeUnknown, match="unreadable answer"):
            await dialer.connect(**GOOD)
    half = '{"Call": {"Sid": "' + SID + '", "Status": '  # a body cut short
    async with fake_api(reply(200, half)) as (_, base), Dialer(config_for(base)) as dialer:
        with pytest.raises(OutcomeUnknown) as caught:
            await dialer.connect(**GOOD)
    assert caught.value.call_sid == SID


async def test_a_dial_that_times_out_is_outcome_unknown() -> None:
    never = asyncio.Event()

    async def hang(request: web.Request, count: int) -> web.StreamResponse:
        await never.wait()
        raise AssertionError("unreachable")

    async with fake_api(hang) as (api, base), Dialer(config_for(base, request_timeout=0.3)) as dialer:
        with pytest.raises(OutcomeUnknown, match="no answer"):
            await dialer.connect(**GOOD)
    assert len(api.requests) == 1


async def test_a_refused_connection_is_unreachable_not_unknown() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Dialer(config_for(f"http://127.0.0.1:{port}")) as dialer:
        with pytest.raises(Unreachable, match="cannot connect"):
            await dialer.connect(**GOOD)


# ----------------------------------------------------------------------------- reconciliation (emulator)


@asynccontextmanager
async def emulator_with(fault: str, **config: Any) -> AsyncIterator[Emulator]:
    scenario = Scenario(outcome="busy", ring_seconds=0.0, api_fault=fault)  # type: ignore[arg-type]
    async with Emulator(EmulatorConfig(port=0, **config), Scenarios(scenario)) as emulator:
        yield emulator


@pytest.mark.parametrize("fault", ["error_500", "garbage", "timeout"])
async def test_reconcile_finds_a_call_placed_despite_a_failed_answer(fault: str) -> None:
    async with (
        emulator_with(fault, fault_hold_seconds=30) as emulator,
        Dialer(emulator.exotel_config(request_timeout=0.5)) as dialer,
    ):
        with pytest.raises(OutcomeUnknown) as caught:
            await dialer.connect(**GOOD)
        (placed,) = emulator.calls
        found = await dialer.reconcile(caught.value)
        assert found is not None and found.sid == placed
        assert await dialer.reconcile(caught.value, known_sids={placed}) is None


async def test_reconcile_reports_no_call_when_none_was_placed() -> None:
    async with emulator_with("reject_500") as emulator, Dialer(emulator.exotel_config()) as dialer:
        with pytest.raises(OutcomeUnknown) as caught:
            await dialer.connect(**GOOD)
        assert emulator.calls == {}
        assert await dialer.reconcile(caught.value) is None


async def test_reconcile_with_a_sid_asks_for_that_call() -> None:
    async with emulator_with("none") as emulator, Dialer(emulator.exotel_config()) as dialer:
        call = await dialer.connect(**GOOD)
        known = OutcomeUnknown("test", call_sid=call.sid)
        found = await dialer.reconcile(known)
        assert found is not None and found.sid == call.sid
        assert await dialer.reconcile(OutcomeUnknown("test", call_sid="f" * 32)) is None


async def test_list_calls_filters_by_number_and_sid() -> None:
    async with emulator_with("none") as emulator, Dialer(emulator.exotel_config()) as dialer:
        first = await dialer.connect(**GOOD)
        second = await dialer.connect(**{**GOOD, "to": "09800000002"})
        to_first = await dialer.list_calls(from_numbers=["09812345678"])
        assert [call.sid for call in to_first] == [first.sid]
        both = await dialer.list_calls(sids=[first.sid, second.sid])
        assert {call.sid for call in both} == {first.sid, second.sid}
        assert [call.sid for call in both] == [second.sid, first.sid]  # newest first
        with pytest.raises(ValidationError, match="PageSize"):
            await dialer.list_calls(page_size=0)
