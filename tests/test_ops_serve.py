"""``serve --ops-port``: the ops server beside the media server (readiness follows the drain, status
callbacks reach the handler class's ``on_status``), its configuration, and the command line."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from voicebot import Handler
from voicebot.config import ServeConfig
from voicebot.dialer.callbacks import StatusEvent
from voicebot.dialer.ops import start_ops_server
from voicebot.errors import ConfigError
from voicebot.server import Server
from voicebot.testing import FakeExotel

TOKEN = "ops-serve-test-token-42"
SID = "c0ffee11223344556677889900aabbcc"
TERMINAL = {"CallSid": SID, "EventType": "terminal", "Status": "completed", "CustomField": "order-1"}
REPO = str(Path(__file__).resolve().parent.parent)


async def get_status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def post_json(session: aiohttp.ClientSession, url: str, body: object) -> int:
    async with session.post(url, json=body) as response:
        return response.status


async def test_readyz_follows_the_drain_and_the_ops_port_outlives_the_media_port() -> None:
    received: list[StatusEvent] = []

    class Bot(Handler):
        sample_rate = 8000

        @staticmethod
        async def on_status(event: StatusEvent) -> None:
            received.append(event)

    config = ServeConfig(host="127.0.0.1", port=0, ops_port=0, status_token=TOKEN, drain_timeout=10)
    async with Server(Bot, config) as server, aiohttp.ClientSession() as session:
        ops = await start_ops_server(server, config)
        try:
            assert await get_status(session, ops.url("/readyz")) == 200
            async with FakeExotel(f"ws://127.0.0.1:{server.port}/exotel/ws/x") as exotel:
                await exotel.run(0.3)
                drain = asyncio.create_task(server.drain())
                await asyncio.sleep(0)  # let the drain begin: it marks the server not ready at once
                assert server.draining and not drain.done()
                assert await get_status(session, ops.url("/readyz")) == 503
                # Callbacks are still accepted while live calls finish.
                assert await post_json(session, ops.url(f"/exotel/status/{TOKEN}"), TERMINAL) == 200
                async with session.get(ops.url("/metrics")) as response:
                    metrics = await response.text()
                assert "voicebot_calls_active 1" in metrics and "voicebot_draining 1" in metrics
            await drain  # the call ended: the drain completes
            assert await get_status(session, ops.url("/healthz")) == 200
        finally:
            await ops.close()
    assert [(event.call_sid, event.event_type, event.custom_field) for event in received] == [
        (SID, "terminal", "order-1")
    ]


async def test_a_handler_whose_on_status_fails_gets_the_event_again_on_exotels_retry() -> None:
    """The hook runs before the 200: a failed write answers 500, so Exotel's retry is not lost."""
    attempts: list[str] = []

    class Bot(Handler):
        @staticmethod
        async def on_status(event: StatusEvent) -> None:
            attempts.append(event.call_sid)
            if len(attempts) == 1:
                raise OSError("database is locked")

    config = ServeConfig(host="127.0.0.1", port=0, ops_port=0, status_token=TOKEN)
    async with Server(Bot, config) as server, aiohttp.ClientSession() as session:
        ops = await start_ops_server(server, config)
        try:
            url = ops.url(f"/exotel/status/{TOKEN}")
            assert await post_json(session, url, TERMINAL) == 500
            assert await post_json(session, url, TERMINAL) == 200  # Exotel retries a non-2xx
            assert await post_json(session, url, TERMINAL) == 200  # a duplicate: acknowledged, not rerun
        finally:
            await ops.close()
    assert attempts == [SID, SID]


async def test_a_generated_token_is_printed_once_and_works(capsys: pytest.CaptureFixture[str]) -> None:
    config = ServeConfig(host="127.0.0.1", port=0, ops_port=0)
    async with Server(Handler, config) as server, aiohttp.ClientSession() as session:
        ops = await start_ops_server(server, config)
        try:
            line = capsys.readouterr().out.strip()
            assert line.startswith(f"status callbacks: POST http://127.0.0.1:{ops.port}/exotel/status/")
            url = line.split()[3]
            assert await post_json(session, url, TERMINAL) == 200
            assert await post_json(session, url + "x", TERMINAL) == 404
        finally:
            await ops.close()


def test_ops_settings_from_flags_and_environment() -> None:
    environ = {"VOICEBOT_OPS_PORT": "9101", "VOICEBOT_STATUS_TOKEN": TOKEN}
    config = ServeConfig.from_sources({}, environ)
    assert (config.ops_port, config.status_token) == (9101, TOKEN)
    assert ServeConfig.from_sources({"ops_port": 9102}, environ).ops_port == 9102
    assert TOKEN not in repr(config) and "status_token=***" in repr(config)
    assert ServeConfig().ops_port is None  # off unless asked for


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ops_port": 70000}, "ops_port: 70000 is not a TCP port"),
        ({"ops_port": 8080, "port": 8080}, "ops_port: 8080 is the media port"),
        ({"status_token": "short-secret"}, "status_token: must be 16-128 characters"),
        ({"status_token": "a/b" * 8}, "status_token: must be 16-128 characters"),
    ],
)
def test_bad_ops_settings_are_config_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        ServeConfig(**values)  # type: ignore[arg-type]
    assert "short-secret" not in str(caught.value)


async def test_serve_command_runs_the_ops_server_and_the_status_hook(tmp_path: Path) -> None:
    log_path = tmp_path / "events.txt"
    bot = tmp_path / "statusbot.py"
    bot.write_text(
        "from voicebot import Handler\n\n\n"
        "class StatusBot(Handler):\n"
        "    @staticmethod\n"
        "    async def on_status(event):\n"
        f"        with open({str(log_path)!r}, 'a') as out:\n"
        "            out.write(f'{event.call_sid} {event.event_type} {event.status}\\n')\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebot",
        "serve",
        "--handler",
        f"{bot}:StatusBot",
        "--port",
        "0",
        "--ops-port",
        "0",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("status callbacks: POST http://127.0.0.1:"), line
        url = line.split()[3]
        base = url.split("/exotel/")[0]
        async with aiohttp.ClientSession() as session:
            assert await get_status(session, base + "/readyz") == 200
            assert await post_json(session, url, TERMINAL) == 200
            assert await post_json(session, url, TERMINAL) == 200  # Exotel's retry: ignored
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
    assert code == 0
    assert log_path.read_text().splitlines() == [f"{SID} terminal completed"]
