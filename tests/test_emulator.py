"""The local Exotel emulator: its API (auth, validation, error bodies, rate limit), its callees, and the
full loop: dial → emulator → stream to a real voicebot server → status callbacks to the ops server.

Calls run in real time (rings of a fraction of a second, calls of a second or two); tests wait on
events (a terminal callback, a finished call), never on sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import sys
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from handlers.echo import EchoBot
from voicebot import Call, Handler
from voicebot.dialer.callbacks import StatusEvent
from voicebot.dialer.client import Dialer
from voicebot.dialer.errors import RateLimited
from voicebot.dialer.ops import OpsServer, StatusReceiver
from voicebot.emulator import Emulator, EmulatorConfig, Scenario, Scenarios, speech_like
from voicebot.errors import ConfigError
from voicebot.testing import serve_handler

TOKEN = "emulator-test-token-0123"
CUSTOMER = "+919812345678"
EXOPHONE = "08045678901"
TIMEOUT = 20.0
REPO = str(Path(__file__).resolve().parent.parent)


# ------------------------------------------------------------------------------------------ the rig


@dataclass
class Seen:
    """What the bot saw at ``start``: the call SID, custom parameters and stream rate."""

    call_sid: str
    custom_parameters: dict[str, str]
    stream_rate: int


def recording_bot(seen: list[Seen], base: type[Handler] = EchoBot) -> type[Handler]:
    """``base`` (the echo bot by default), also noting what each call's ``start`` carried."""

    class RecordingBot(base):  # type: ignore[valid-type, misc]
        async def on_start(self, call: Call) -> None:
            seen.append(Seen(call.call_sid, dict(call.custom_parameters), call.stream_rate))
            await super().on_start(call)

    return RecordingBot


class SilentBot(Handler):
    """Says nothing and never hangs up."""


@dataclass
class Rig:
    emulator: Emulator
    dialer: Dialer
    ops: OpsServer
    receiver: StatusReceiver
    bot_url: str
    seen: list[Seen]
    events: list[StatusEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status_callback(self) -> str:
        return self.ops.url(self.receiver.path_for())

    async def event(self, call_sid: str, event_type: str = "terminal") -> StatusEvent:
        """Wait for the status event ``(call_sid, event_type)`` to reach the application."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for event in self.events:
                    if event.key == (call_sid, event_type):
                        return event
                self.arrived.clear()
                await self.arrived.wait()

    async def dial(self, **overrides: Any) -> str:
        params: dict[str, Any] = {
            "to": CUSTOMER,
            "caller_id": EXOPHONE,
            "stream_url": self.bot_url,
            "custom_field": "order-5531",
            "status_callback": self.status_callback,
            "status_callback_events": ["ringing", "answered", "terminal"],
            **overrides,
        }
        call = await self.dialer.connect(**params)
        return call.sid


@asynccontextmanager
async def rig(
    scenarios: Scenarios,
    *,
    bot: type[Handler] | None = None,
    seen: list[Seen] | None = None,
    before_ack: Any = None,
    **emulator_config: Any,
) -> AsyncIterator[Rig]:
    seen = [] if seen is None else seen
    handler = bot or recording_bot(seen)
    receiver = StatusReceiver(TOKEN)
    config = EmulatorConfig(port=0, callback_retry_delay=0.01, **emulator_config)
    async with (
        Emulator(config, scenarios) as emulator,
        serve_handler(handler, path="/exotel/ws/t0k3n") as bot_url,
        OpsServer(receiver) as ops,
        Dialer(emulator.exotel_config()) as dialer,
    ):
        the_rig = Rig(emulator, dialer, ops, receiver, bot_url, seen)

        async def collect(event: StatusEvent) -> None:
            the_rig.events.append(event)
            the_rig.arrived.set()

        receiver.add_callback(collect)
        if before_ack is not None:
            receiver.add_callback(before_ack, before_ack=True)
        yield the_rig


QUICK = Scenario(ring_seconds=0.2, talk_seconds=1.5)


# ------------------------------------------------------------------------------------- the full loop


async def test_answered_call_streams_to_the_bot_and_the_terminal_callback_carries_the_outcome() -> None:
    async with rig(Scenarios(QUICK)) as r:
        sid = await r.dial(
            sample_rate=16000, custom_parameters={"job": "7"}, record=True, recording_channels="dual"
        )
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
        # The bot saw the same Call SID, the custom parameter and the rate from the URL.
        assert r.seen == [Seen(sid, {"job": "7"}, 16000)]
        assert [event.event_type for event in r.events] == ["ringing", "answered", "terminal"]
        assert [event.status for event in r.events] == ["ringing", "in-progress", "completed"]
        assert terminal.call_sid == sid and terminal.custom_field == "order-5531"
        assert terminal.conversation_duration in (1, 2)
        assert terminal.legs[0].status == "completed" and terminal.answered_by == "Human"
        assert terminal.recording_url == f"{r.emulator.base_url}/recordings/{sid}.wav"
        assert call.report is not None and call.report.ok, call.report.summary()
        assert call.report.hung_up_by == "caller"
        # The recording: caller on the left, the bot (its greeting tone, then the echo) on the right.
        async with aiohttp.ClientSession() as session, session.get(terminal.recording_url) as response:
            assert response.status == 200
            data = await response.read()
        details = await r.dialer.get_call(sid, details=True)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 16000)
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert abs(len(audio) / 16000 - call.report.duration) < 0.05
    caller, bot = np.abs(audio.astype(np.int32)).T
    assert caller.max() > 3000  # the callee's speech-like audio
    assert bot[: 16000 // 2].mean() > 3000  # the echo bot's 0.5 s greeting tone
    assert details.status == "completed" and details.recording_url == terminal.recording_url
    assert details.duration is not None and details.details is not None


async def test_busy_callee_never_streams() -> None:
    scenarios = Scenarios(QUICK, {"09800000001": Scenario(outcome="busy", ring_seconds=0.1)})
    async with rig(scenarios) as r:
        sid = await r.dial(to="+919800000001", record=True)
        terminal = await r.event(sid)
        assert [event.event_type for event in r.events] == ["ringing", "terminal"]
    assert terminal.status == "busy" and terminal.custom_field == "order-5531"
    assert terminal.conversation_duration == 0 and terminal.recording_url is None
    assert terminal.legs[0].status == "busy"
    assert r.seen == []


async def test_no_answer_rings_until_time_out() -> None:
    scenarios = Scenarios(Scenario(outcome="no-answer", ring_seconds=300))
    async with rig(scenarios) as r:
        sid = await r.dial(time_out=1)
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert terminal.status == "no-answer" and terminal.legs[0].status == "no-answer"
    assert call.duration is not None and call.duration <= 3
    assert r.seen == []


async def test_bot_hangs_up_after_the_callers_key() -> None:
    scenarios = Scenarios(Scenario(ring_seconds=0.1, hangup="bot", dtmf="#@1.0"))
    async with rig(scenarios) as r:
        sid = await r.dial()
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert terminal.status == "completed"
    assert call.report is not None and call.report.hung_up_by == "bot"
    assert call.report.ok, call.report.summary()


async def test_time_limit_ends_a_call_nobody_hangs_up() -> None:
    seen: list[Seen] = []
    scenarios = Scenarios(Scenario(ring_seconds=0.1, hangup="bot", caller_audio="silence"))
    async with rig(scenarios, bot=recording_bot(seen, SilentBot), seen=seen) as r:
        sid = await r.dial(time_limit=1)
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert terminal.status == "completed" and terminal.conversation_duration == 1
    assert call.report is not None and call.report.hangup_reason == "stopped"
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("content_type", "forced", "expected"),
    [
        ("application/json", None, "json"),
        ("multipart/form-data", None, "multipart"),
        (None, None, "multipart"),  # Exotel's documented default
        ("application/json", "urlencoded", "urlencoded"),
    ],
)
async def test_callbacks_come_in_the_requested_encoding(
    content_type: str | None, forced: str | None, expected: str
) -> None:
    scenario = Scenario(outcome="busy", ring_seconds=0.0, callback_encoding=forced)  # type: ignore[arg-type]
    async with rig(Scenarios(scenario)) as r:
        sid = await r.dial(status_callback_content_type=content_type)
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert {attempt.encoding for attempt in call.callbacks} == {expected}
    assert terminal.custom_field == "order-5531" and terminal.legs[0].status == "busy"
    assert terminal.fields["Legs"][0]["Status"] == "busy"


async def test_without_events_one_callback_with_the_default_fields() -> None:
    async with rig(Scenarios(Scenario(outcome="failed", ring_seconds=0.0))) as r:
        sid = await r.dial(status_callback_events=[])
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert set(terminal.fields) == {"CallSid", "DateUpdated", "Status", "RecordingUrl"}
    assert terminal.status == "failed" and len(call.callbacks) == 1


async def test_failed_callbacks_are_retried_twice_then_given_up() -> None:
    async def refuse(event: StatusEvent) -> None:
        raise RuntimeError("store down")

    async with rig(Scenarios(Scenario(outcome="busy", ring_seconds=0.0)), before_ack=refuse) as r:
        sid = await r.dial(status_callback_events=["terminal"])
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert [(a.attempt, a.status) for a in call.callbacks] == [(1, 500), (2, 500), (3, 500)]
    assert r.events == []


async def test_a_retry_that_succeeds_is_accepted_once() -> None:
    failures = [RuntimeError("busy"), RuntimeError("busy")]

    async def flaky(event: StatusEvent) -> None:
        if failures:
            raise failures.pop()

    async with rig(Scenarios(Scenario(outcome="busy", ring_seconds=0.0)), before_ack=flaky) as r:
        sid = await r.dial(status_callback_events=["terminal"])
        await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert [(a.attempt, a.status) for a in call.callbacks] == [(1, 500), (2, 500), (3, 200)]
    assert len(r.events) == 1


async def test_the_emulator_counts_calls_live_at_once() -> None:
    scenarios = Scenarios(Scenario(outcome="busy", ring_seconds=0.3))
    async with rig(scenarios) as r:
        sids = await asyncio.gather(*(r.dial(status_callback_events=["terminal"]) for _ in range(3)))
        await asyncio.gather(*(r.emulator.wait_done(sid, TIMEOUT) for sid in sids))
        after = await r.dial(status_callback_events=["terminal"])
        await r.emulator.wait_done(after, TIMEOUT)
    assert r.emulator.max_live_calls == 3 and r.emulator.live_calls == 0


async def test_a_stream_that_cannot_open_is_tried_twice_and_the_call_fails() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{probe.getsockname()[1]}/exotel/ws/x"
    async with rig(Scenarios(Scenario(ring_seconds=0.0))) as r:
        sid = await r.dial(stream_url=dead)
        terminal = await r.event(sid)
        call = await r.emulator.wait_done(sid, TIMEOUT)
    assert terminal.status == "failed" and "attempt 2" in call.stream_error


async def test_stream_url_credentials_are_sent_as_basic_auth() -> None:
    seen: list[Seen] = []
    scenarios = Scenarios(Scenario(ring_seconds=0.0, talk_seconds=0.5))
    async with (
        rig(scenarios, bot=recording_bot(seen), seen=seen) as r,
        serve_handler(recording_bot(seen), auth="exotel:pa55") as guarded,
    ):
        good = guarded.replace("ws://", "ws://exotel:pa55@")
        bad = guarded.replace("ws://", "ws://exotel:wrong@")
        ok_sid = await r.dial(stream_url=good)
        bad_sid = await r.dial(stream_url=bad)
        ok_terminal = await r.event(ok_sid)
        bad_terminal = await r.event(bad_sid)
        bad_call = await r.emulator.wait_done(bad_sid, TIMEOUT)
    assert ok_terminal.status == "completed" and [s.call_sid for s in seen] == [ok_sid]
    assert bad_terminal.status == "failed" and "401" in bad_call.stream_error


# ------------------------------------------------------------------------------------------ the API


@asynccontextmanager
async def api(**config: Any) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession, dict[str, str]]]:
    scenario = Scenario(outcome="busy", ring_seconds=0.0)
    async with Emulator(EmulatorConfig(port=0, **config), Scenarios(scenario)) as emulator:
        token = base64.b64encode(b"emulator-key:emulator-token").decode()
        async with aiohttp.ClientSession(base_url=emulator.base_url) as session:
            yield emulator, session, {"Authorization": f"Basic {token}"}


CONNECT = "/v1/Accounts/emulator/Calls/connect.json"
FORM = {
    "From": CUSTOMER,
    "CallerId": EXOPHONE,
    "StreamUrl": "ws://127.0.0.1:9/ws",
    "StreamType": "bidirectional",
}


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"From": None}, 400, "The 'From' parameter is required."),
        ({"CallerId": None}, 400, "The 'CallerId' parameter is required."),
        ({"StreamType": "unidirectional"}, 400, "StreamType: must be bidirectional"),
        ({"From": "12345"}, 400, "From: must be E.164"),
        ({"StreamUrl": "https://bot/ws"}, 400, "StreamUrl: must be a ws:// or wss:// URL"),
        ({"TimeLimit": "14401"}, 400, "TimeLimit: must be an integer from 1 to 14400"),
        ({"CustomField": "x" * 129}, 400, "CustomField: must be a string of at most 128"),
        ({"StreamName": "x" * 33}, 400, "StreamName: must be a string of at most 32"),
        ({"RecordingChannels": "stereo"}, 400, "RecordingChannels: must be single or dual"),
        ({"Record": "maybe"}, 400, "Record: must be true or false"),
        (
            {"StatusCallbackEvents[]": "busy"},
            400,
            "StatusCallbackEvents[]: must be answered, terminal or ringing",
        ),
        ({"StatusCallbackContentType": "text/xml"}, 400, "StatusCallbackContentType"),
        (
            {"Url": "http://my.exotel.com/x/exoml/start_voice/1"},
            400,
            "Connect with Flow (Url) is not emulated",
        ),
    ],
)
async def test_connect_validates_like_exotel(
    change: dict[str, str | None], status: int, message: str
) -> None:
    form = {key: value for key, value in {**FORM, **change}.items() if value is not None}
    async with api() as (emulator, session, auth), session.post(CONNECT, data=form, headers=auth) as response:
        body = await response.json()
    assert response.status == status
    assert body["RestException"]["Status"] == status
    assert body["RestException"]["Message"].startswith(message)
    assert emulator.calls == {}


async def test_auth_account_and_unknown_call_errors() -> None:
    async with api() as (_, session, auth):
        async with session.post(CONNECT, data=FORM) as response:
            assert (
                response.status == 401
                and "Authentication" in (await response.json())["RestException"]["Message"]
            )
        bad = {"Authorization": "Basic " + base64.b64encode(b"emulator-key:nope").decode()}
        async with session.post(CONNECT, data=FORM, headers=bad) as response:
            assert response.status == 401
        async with session.post("/v1/Accounts/other/Calls/connect.json", data=FORM, headers=auth) as response:
            assert response.status == 404
        async with session.get(f"/v1/Accounts/emulator/Calls/{'f' * 32}.json", headers=auth) as response:
            assert response.status == 404
        async with session.get(f"/recordings/{'f' * 32}.wav") as response:
            assert response.status == 404


async def test_without_json_suffix_answers_are_xml() -> None:
    async with api() as (_, session, auth):
        async with session.post("/v1/Accounts/emulator/Calls/connect", data=FORM, headers=auth) as response:
            text = await response.text()
        assert response.status == 200 and text.startswith('<?xml version="1.0"')
        assert "<TwilioResponse><Call><Sid>" in text and "<Direction>outbound-api</Direction>" in text
        async with session.post("/v1/Accounts/emulator/Calls/connect", data={}, headers=auth) as response:
            text = await response.text()
        assert response.status == 400 and "<RestException><Status>400</Status>" in text


async def test_indexed_events_and_multipart_bodies_are_accepted() -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    for key, value in {**FORM, "StatusCallback": "http://127.0.0.1:9/cb"}.items():
        form.add_field(key, value)
    form.add_field("StatusCallbackEvents[0]", "terminal")
    form.add_field("StatusCallbackEvents[1]", "Answered")
    async with api() as (emulator, session, auth), session.post(CONNECT, data=form, headers=auth) as response:
        body = await response.json()
        call = emulator.calls[body["Call"]["Sid"]]
    assert response.status == 200 and call.events == ("terminal", "answered")


async def test_rate_limit_answers_429_with_retry_after() -> None:
    async with api(rate_limit_per_minute=2) as (emulator, session, auth):
        for _ in range(2):
            async with session.post(CONNECT, data=FORM, headers=auth) as response:
                assert response.status == 200
        async with session.post(CONNECT, data=FORM, headers=auth) as response:
            body = await response.json()
            retry_after = int(response.headers["Retry-After"])
        assert response.status == 429 and body["RestException"]["Status"] == 429
        assert 1 <= retry_after <= 60
        async with Dialer(emulator.exotel_config(rate_limit_retries=0)) as dialer:
            with pytest.raises(RateLimited) as caught:
                await dialer.get_call("f" * 32)
        assert caught.value.retry_after is not None and 1 <= caught.value.retry_after <= 60
        assert len(emulator.calls) == 2


# ------------------------------------------------------------------------------------------ scenarios


def test_scenarios_per_number_override_the_default() -> None:
    scenarios = Scenarios.from_mapping(
        {
            "default": {"ring_seconds": 2, "talk_seconds": 5},
            "numbers": {"+919800000001": {"outcome": "busy"}, "09800000002": {"dtmf": "1@2"}},
        }
    )
    busy = scenarios.for_number("09800000001")
    assert (busy.outcome, busy.ring_seconds, busy.talk_seconds) == ("busy", 2, 5)
    assert scenarios.for_number("+919800000002").dtmf == "1@2"
    assert scenarios.for_number("+919899999999") == scenarios.default


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"default": {"outcome": "voicemail"}}, "outcome"),
        ({"default": {"ringing": 2}}, "unknown key"),
        ({"numbers": {"+919800000001": {"dtmf": "x"}}}, "dtmf"),
        ({"numbers": {"+919800000001": {"caller_audio": "/no/such.wav"}}}, "caller_audio"),
        ({"callees": {}}, "unknown key"),
        ({"default": {"talk_seconds": 0}}, "talk_seconds"),
    ],
)
def test_bad_scenarios_are_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Scenarios.from_mapping(data)


def test_scenarios_load_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "scenarios.json"
    path.write_text(json.dumps({"default": {"outcome": "no-answer"}}))
    assert Scenarios.from_file(path).default.outcome == "no-answer"
    path.write_text("{oops")
    with pytest.raises(ConfigError, match="not JSON"):
        Scenarios.from_file(path)


def test_speech_like_audio_has_syllables_and_pauses() -> None:
    audio = speech_like(5.0, 8000, seed=3)
    assert audio.dtype == np.int16 and len(audio) == 40000
    assert np.array_equal(audio, speech_like(5.0, 8000, seed=3))
    frames = np.abs(audio.astype(np.int32)).reshape(-1, 160).mean(axis=1)  # 20 ms frames
    quiet = float(np.mean(frames < 100))
    assert 0.15 < quiet < 0.8  # speech with pauses, not a tone and not silence
    assert frames.max() > 1500  # mean level of the loudest 20 ms: speech at a normal level


# ------------------------------------------------------------------------------------------------ CLI


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebot",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def cli_env(emulator: Emulator, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": REPO,
        "EXOTEL_ACCOUNT_SID": "emulator",
        "EXOTEL_API_KEY": "emulator-key",
        "EXOTEL_API_TOKEN": "emulator-token",
        "EXOTEL_BASE_URL": emulator.base_url,
        **extra,
    }


async def test_dial_command_prints_the_call_sid_and_status() -> None:
    async with api() as (emulator, _, _):
        env = cli_env(emulator)
        code, out, err = await run_cli(
            "dial", "--to", CUSTOMER, "--caller-id", EXOPHONE, "--stream-url", "ws://127.0.0.1:9/ws", env=env
        )
        assert code == 0, err
        sid, status = out.split()
        assert sid in emulator.calls and status == "in-progress"
        code, out, err = await run_cli(
            "dial", "--to", "12345", "--caller-id", EXOPHONE, "--stream-url", "ws://127.0.0.1:9/ws", env=env
        )
        assert code == 2 and "From: must be E.164" in err
        code, out, err = await run_cli(
            "dial",
            "--to",
            CUSTOMER,
            "--caller-id",
            EXOPHONE,
            "--stream-url",
            "ws://127.0.0.1:9/ws",
            env={**env, "EXOTEL_API_TOKEN": "wrong"},
        )
        assert code == 1 and "HTTP 401" in err and "wrong" not in err


async def test_emulate_command_serves_until_terminated() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebot", "emulate", "--port", "0", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
            assert line.startswith("emulating Exotel on http://127.0.0.1:")
            base = line.split()[-1]
            exports = (await process.stdout.readline()).decode()
            assert f"EXOTEL_BASE_URL={base}" in exports and "EXOTEL_API_TOKEN=emulator-token" in exports
            async with (
                aiohttp.ClientSession() as session,
                session.post(base + CONNECT, data=FORM) as response,
            ):
                assert response.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
