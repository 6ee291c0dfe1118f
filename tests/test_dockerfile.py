"""No Docker engine runs here, so the Dockerfile's load-bearing lines are checked by reading."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from voicebot.config import ServeConfig
from voicebot.handler import Handler
from voicebot.server import Server

DOCKERFILE = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def test_multi_stage_on_python_313_slim() -> None:
    images = instructions("FROM")
    assert len(images) >= 2 and all(image.startswith("python:3.13-slim") for image in images)


def test_runs_as_a_non_root_user() -> None:
    assert instructions("USER") and instructions("USER")[-1] not in ("root", "0")


def test_entrypoint_is_exec_form_so_sigterm_reaches_python() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "voicebot"]
    (command,) = instructions("CMD")
    assert json.loads(command)[:3] == ["serve", "--handler", "handlers.echo:EchoBot"]


def test_listens_on_all_interfaces_and_exposes_the_port() -> None:
    assert "VOICEBOT_HOST=0.0.0.0" in DOCKERFILE
    port = re.search(r"VOICEBOT_PORT=(\d+)", DOCKERFILE)
    assert port is not None and instructions("EXPOSE") == [port.group(1)]


async def test_healthcheck_command_succeeds_against_a_live_server() -> None:
    (healthcheck,) = instructions("HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[0] == "python"
    async with Server(Handler, ServeConfig(host="127.0.0.1", port=0)) as server:
        env = {**os.environ, "VOICEBOT_PORT": str(server.port)}
        process = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env)
        assert await process.wait() == 0


@pytest.mark.parametrize("needed", ["handlers", "voicebot"])
def test_copies_what_it_serves(needed: str) -> None:
    assert any(needed in line for line in instructions("COPY"))


def test_dockerignore_keeps_the_venv_out() -> None:
    ignore = (Path(__file__).resolve().parent.parent / ".dockerignore").read_text().split()
    assert ".venv*" in ignore and ".git" in ignore


def test_build_stage_compiles_the_resampler_kernel_and_the_runtime_has_no_compiler() -> None:
    joined = DOCKERFILE.replace("\\\n", " ")
    build, *_, runtime = re.split(r"^FROM ", joined, flags=re.MULTILINE)[1:]
    assert "setup.py" in build and "gcc" in build
    # The install skips a kernel it cannot compile; the image must not ship without it.
    assert "import voicebot._dsp" in build
    assert "gcc" not in runtime
