"""``python -m voicebot simulate``, run for real in a subprocess, as a developer would run it.

The echo-bot runs (one per stream mode) start together in a module fixture, so the module takes about
as long as one call. The caller's WAV is written by the test at 44.1 kHz (so the command converts it):
a second of silence, a 300 Hz tone, and ``#`` pressed later. ``heard.wav`` must hold the 440 Hz
greeting, the 300 Hz echo and the 880 Hz goodbye, at the stream rate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from voicebot import silence, tone
from voicebot.testing import dominant_frequency, find_onset
from voicebot.wavfile import read_wav, write_wav

ROOT: Final = Path(__file__).resolve().parents[1]
WAV_RATE: Final = 44100
SPEECH_AT: Final = 1.0
HASH_AT: Final = 2.4
TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class Run:
    """One finished ``voicebot`` process."""

    returncode: int
    stdout: str
    stderr: str
    heard: Path

    def explain(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VOICEBOT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "voicebot", "simulate", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str], heard: Path) -> Run:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return Run(process.returncode, stdout, stderr, heard)


def _simulate(*args: str, heard: Path | None = None) -> Run:
    return _finish(_start(*args), heard or Path(os.devnull))


def _write_caller(path: Path) -> Path:
    write_wav(path, np.concatenate([silence(SPEECH_AT, WAV_RATE), tone(300, 0.6, WAV_RATE)]), WAV_RATE)
    return path


# ------------------------------------------------------------------------------------ the echo bot

#: id → (stream rate, extra flags). μ-law at two rates; the last also sends the wire variants,
#: custom parameters and 20 ms of arrival jitter.
ECHO_RUNS: Final = {
    "8k-pcm16": (8000, ()),
    "16k-pcm16": (16000, ()),
    "24k-pcm16": (24000, ()),
    "8k-mulaw": (8000, ("--encoding", "mulaw")),
    "16k-mulaw-variants": (
        16000,
        (
            "--encoding", "mulaw", "--camel-case", "--int-scalars", "--no-stream-sid",
            "--params-format", "query", "--param", "lang=hi", "--jitter-ms", "20", "--seed", "4",
        ),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def echo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every echo run, started at once, with the default handler given explicitly."""
    folder = tmp_path_factory.mktemp("simulate")
    caller = _write_caller(folder / "caller.wav")
    started = {}
    for name, (rate, extra) in ECHO_RUNS.items():
        heard = folder / f"heard-{name}.wav"
        process = _start(
            "--handler", "handlers.echo:EchoBot", "--in", str(caller), "--out", str(heard),
            "--rate", str(rate), "--dtmf", f"#@{HASH_AT}", "--duration", "10", *extra,
        )  # fmt: skip
        started[name] = (process, heard)
    return {name: _finish(process, heard) for name, (process, heard) in started.items()}


@pytest.mark.parametrize("name", ECHO_RUNS)
def test_a_clean_echo_call_exits_0_and_reports_how_it_went(name: str, echo_runs: dict[str, Run]) -> None:
    run = echo_runs[name]
    assert run.returncode == 0, run.explain()
    rate = ECHO_RUNS[name][0]
    encoding = "mulaw" if "mulaw" in name else "pcm16"
    assert f": {rate} Hz {encoding}," in run.stdout
    assert "hung up by: bot: the bot closed the connection (close 1000 'hangup')" in run.stdout
    assert "first bot audio: 0.0" in run.stdout
    assert "marks: 2 received, 2 echoed" in run.stdout
    assert "violations: none" in run.stdout
    assert run.stdout.rstrip().endswith(f"Hz written to {run.heard}")
    assert "result: OK" in run.stdout


@pytest.mark.parametrize("name", ECHO_RUNS)
def test_heard_wav_holds_the_greeting_the_echo_and_the_goodbye_at_their_pitch(
    name: str, echo_runs: dict[str, Run]
) -> None:
    heard, rate = read_wav(echo_runs[name].heard)
    assert rate == ECHO_RUNS[name][0]

    def pitch_after(moment: float, seconds: float) -> tuple[float, float | None]:
        onset = find_onset(heard, rate, after=moment)
        assert onset is not None, f"nothing heard after {moment} s"
        first, last = round((onset + 0.03) * rate), round((onset + seconds) * rate)
        return onset, dominant_frequency(heard[first:last], rate)

    greeting_at, greeting = pitch_after(0.0, 0.45)
    echo_at, echo = pitch_after(SPEECH_AT, 0.55)
    goodbye_at, goodbye = pitch_after(HASH_AT, 0.28)
    assert greeting_at < 0.3 and greeting == pytest.approx(440, abs=2)
    assert 0 < echo_at - SPEECH_AT < 1.0 and echo == pytest.approx(300, abs=2)
    assert 0 < goodbye_at - HASH_AT < 1.0 and goodbye == pytest.approx(880, abs=2)
    assert len(heard) / rate < goodbye_at + 0.3 + 0.5  # the bot hung up right after its goodbye


# ------------------------------------------------------------------------ other outcomes, other input


def test_without_in_the_caller_is_silent_and_the_echo_bot_only_greets(tmp_path: Path) -> None:
    heard_path = tmp_path / "heard.wav"
    run = _simulate("--out", str(heard_path), "--duration", "1.5", heard=heard_path)  # default bot
    assert run.returncode == 0, run.explain()
    assert "hung up by: caller: callended" in run.stdout
    heard, rate = read_wav(heard_path)
    assert rate == 8000 and len(heard) == pytest.approx(1.5 * rate, abs=0.01 * rate)
    assert dominant_frequency(heard[: int(0.45 * rate)], rate) == pytest.approx(440, abs=2)
    assert not np.any(heard[int(0.6 * rate) :])  # the echo of a silent caller is silence


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--in", "no-such.wav"), "wav: no such file 'no-such.wav'"),
        (("--dtmf", "1@soon"), "dtmf: '1@soon' is not KEY@SECONDS"),
        (("--rate", "11025"), "argument --rate: invalid choice: 11025"),
        (("--url", "http://example.com/ws"), "url: must start with ws:// or wss://"),
        (("--handler", "handlers.echo:NoSuchBot"), "handler: 'handlers.echo:NoSuchBot' is not"),
        (("--param", "novalue"), "param: expected KEY=VALUE, got 'novalue'"),
        (("--duration", "0"), "duration must be > 0 seconds"),
    ],
    ids=["missing-wav", "bad-dtmf", "bad-rate", "not-ws-url", "no-such-class", "bad-param", "no-duration"],
)
def test_bad_input_exits_2_with_a_message_naming_the_parameter(args: tuple[str, ...], message: str) -> None:
    run = _simulate(*args)
    assert run.returncode == 2, run.explain()
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_a_bot_that_crashes_makes_the_call_fail_with_1011(tmp_path: Path) -> None:
    bot = tmp_path / "crashing_bot.py"
    bot.write_text(
        "from voicebot import Handler\n\n\n"
        "class CrashingBot(Handler):\n"
        "    async def on_start(self, call):\n"
        "        raise RuntimeError('oops')\n"
    )
    run = _simulate("--handler", f"{bot}:CrashingBot", "--duration", "3", "--log-level", "critical")
    assert run.returncode == 1, run.explain()
    assert "close 1011" in run.stdout
    assert "the call did not end cleanly: the bot closed with code 1011" in run.stderr


def test_an_unreachable_url_exits_1_and_says_so() -> None:
    run = _simulate("--url", "ws://127.0.0.1:9/exotel", "--duration", "1")  # the discard port: closed
    assert run.returncode == 1, run.explain()
    assert "cannot call ws://127.0.0.1:9/exotel" in run.stderr


# ------------------------------------------------------------------------- a bot that breaks the rules


@asynccontextmanager
async def misbehaving_bot(got: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A bot server that answers ``start`` with a 1 000-byte media payload (not whole 20 ms frames)."""

    async def handle(connection: ServerConnection) -> None:
        async for text in connection:
            message = json.loads(text)
            got.append(message)
            if message["event"] == "start":
                payload = base64.b64encode(bytes(1000)).decode()
                await connection.send(json.dumps({"event": "media", "media": {"payload": payload}}))

    async with serve(handle, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/exotel/ws/abc"


async def test_protocol_violations_exit_1_and_the_wire_variant_flags_reach_the_wire() -> None:
    got: list[dict[str, Any]] = []
    async with misbehaving_bot(got) as url:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicebot", "simulate", "--url", url, "--duration", "0.5",
            "--rate", "16000", "--camel-case", "--int-scalars", "--no-stream-sid", "--url-rate", "8000",
            "--params-format", "json", "--param", "lang=hi", "--chunk-ms", "20", "--strict-minimum",
            cwd=ROOT, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate()
    output = stdout.decode()
    assert process.returncode == 1, output + stderr.decode()
    assert "violations: 2 error(s), 0 warning(s)" in output
    assert "error frame_multiple: 1000 bytes is not whole 20 ms frames" in output
    assert "error too_small: 1000 bytes is under" in output  # a warning without --strict-minimum
    assert output.rstrip().endswith("result: FAILED (protocol violations)")
    start = next(message for message in got if message["event"] == "start")
    assert start["sequenceNumber"] == 1 and "streamSid" not in start and "stream_sid" not in start
    assert start["start"]["mediaFormat"]["sampleRate"] == 16000
    assert json.loads(start["start"]["customParameters"]) == {"lang": "hi"}
    media = [message for message in got if message["event"] == "media"]
    assert media and all(len(base64.b64decode(m["media"]["payload"])) == 640 for m in media)  # 20 ms
