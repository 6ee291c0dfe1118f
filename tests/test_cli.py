"""``python -m voicebot``: flags, environment fallbacks, and the real serve process (drain on SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from voicebot import server as server_module
from voicebot.audio import compiled_resampler_available
from voicebot.cli import build_parser, main
from voicebot.config import OPTIONS, ServeConfig
from voicebot.errors import ConfigError
from voicebot.protocol import compiled_base64_available
from voicebot.testing import FakeExotel

ROOT = Path(__file__).resolve().parent.parent


def test_flags_override_environment_which_overrides_defaults() -> None:
    args = build_parser().parse_args(["serve", "--port", "9001"])
    environ = {"VOICEBOT_PORT": "9002", "VOICEBOT_MAX_CALLS": "7", "VOICEBOT_LOOP": "asyncio"}
    config = ServeConfig.from_sources(vars(args), environ)
    assert (config.port, config.max_calls, config.loop) == (9001, 7, "asyncio")
    assert config.drain_timeout == ServeConfig().drain_timeout


def test_every_option_has_a_flag_a_variable_and_help() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for option in OPTIONS:
        assert option.flag in help_text and option.env in help_text
        assert option.env == "VOICEBOT_" + option.field.upper()


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"VOICEBOT_PORT": "eighty"}, "VOICEBOT_PORT"),
        ({"VOICEBOT_LOOP": "trio"}, "loop"),
        ({"VOICEBOT_AUTH": "nopassword"}, "USER:PASS"),
        ({"VOICEBOT_LEAD_MS": "50"}, "lead_ms"),
        ({"VOICEBOT_CHUNK_MS": "30"}, "chunk_ms"),
        ({"VOICEBOT_LEAD_MS": "200"}, "do not work at 8000 Hz"),  # less than a 200 ms chunk + margin
        ({"VOICEBOT_CHUNK_MS": "100"}, "do not work at 8000 Hz"),  # 1600 B is under the 3200 B floor
        ({"VOICEBOT_SESSION_LIMIT": "5"}, "session_limit"),  # no longer than the slack: every end would count
        ({"VOICEBOT_SESSION_LIMIT": "nan"}, "session_limit"),
    ],
)
def test_bad_environment_values_are_named(environ: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ServeConfig.from_sources({}, environ)


def test_auth_secret_never_shows_in_the_config_repr() -> None:
    assert "hunter2" not in repr(ServeConfig(auth="exotel:hunter2"))


def test_bad_handler_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--handler", "handlers.nope:Bot"], environ={}) == 2
    assert "handler" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"], environ={}) == 0
    assert capsys.readouterr().out.startswith("voicebot ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # polling for the child process to bind
            continue
        writer.close()
        return
    raise TimeoutError("server did not start")


def serve_process(port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "voicebot", "serve", "--handler", "handlers.echo:EchoBot",
         "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.mark.timeout(60)
async def test_sigterm_drains_live_calls_then_exits_0() -> None:
    port = free_port()
    process = serve_process(port, "--drain-timeout", "10")
    try:
        await wait_until_listening(port, process)
        url = f"ws://127.0.0.1:{port}/exotel/ws?sample-rate=8000"
        async with FakeExotel(url, sample_rate=8000) as exotel:
            await exotel.run(0.8)
            process.send_signal(signal.SIGTERM)
            await exotel.run(1.0)
            assert not exotel.closed, "a live call must survive the start of the drain"
            with pytest.raises(OSError):  # no new calls
                async with connect(url, open_timeout=2):
                    pass
        # The caller hung up (FakeExotel's exit): the server has nothing left and exits cleanly.
        code = await asyncio.to_thread(process.wait, 15)
        assert code == 0
        assert exotel.result.hung_up_by == "caller"
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.stderr.read().decode() if process.stderr else ""
    assert "draining" in stderr
    # Operators can tell from the log whether the install has the compiled kernels.
    if compiled_resampler_available() and compiled_base64_available():
        assert "compiled kernels: resampler and base64" in stderr
    else:
        assert "compiled kernels missing" in stderr


@pytest.mark.timeout(60)
async def test_drain_timeout_closes_remaining_calls_with_1001() -> None:
    port = free_port()
    process = serve_process(port, "--drain-timeout", "1", "--loop", "asyncio")
    try:
        await wait_until_listening(port, process)
        async with FakeExotel(f"ws://127.0.0.1:{port}/ws", sample_rate=16000) as exotel:
            await exotel.run(0.5)
            process.send_signal(signal.SIGINT)
            await exotel.wait_closed(timeout=10)
        assert exotel.result.close_code == 1001
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_readme_documents_every_serve_flag_and_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    for option in OPTIONS:
        assert f"`{option.flag}`" in readme and f"`{option.env}`" in readme, option.flag


@pytest.mark.parametrize(
    ("resampler", "base64", "expected"),
    [
        (True, True, ["compiled kernels: resampler and base64"]),
        (False, True, ["compiled kernels missing", "resampler: numpy only"]),
        (True, False, ["compiled kernels missing", "base64: binascii only"]),
    ],
)
def test_serve_says_which_compiled_kernels_it_lacks(
    resampler: bool,
    base64: bool,
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(server_module, "compiled_resampler_available", lambda: resampler)
    monkeypatch.setattr(server_module, "compiled_base64_available", lambda: base64)
    with caplog.at_level("INFO", logger="voicebot.server"):
        server_module._log_compiled_kernels()
    (record,) = caplog.records
    assert all(text in record.getMessage() for text in expected), record.getMessage()
    assert record.levelname == ("INFO" if resampler and base64 else "WARNING")
    assert ("numpy only" in record.getMessage()) is not resampler
