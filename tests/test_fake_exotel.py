"""FakeExotel against tiny in-test bot servers: what it sends, how it plays the bot's audio, what it
flags, and the faults it injects. Pure pieces (Playout, check_bot_message) are tested with explicit times.

Timing assertions use the loop clock, which the in-test server shares with FakeExotel, and generous
margins; nothing sleeps to let things settle: tests wait on events (a message, a close).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from voicebot.audio import Samples, pcm16_to_bytes, pcm16_to_ulaw, tone
from voicebot.errors import ConfigError
from voicebot.events import Encoding, Start
from voicebot.protocol import parse_message, rate_from_url
from voicebot.testing import (
    BotProtocolError,
    FakeExotel,
    Faults,
    MessageRules,
    Playout,
    Rule,
    WireOptions,
    check_bot_message,
    find_onset,
    parse_dtmf_script,
    serve_handler,
    simulate,
)
from voicebot.wavfile import read_wav, write_wav

HEX32 = re.compile(r"[0-9a-f]{32}")
RATE = 16000
CHUNK_16K = 3200  # 100 ms of PCM16 at 16 kHz: the documented minimum and a whole number of 20 ms frames


# --------------------------------------------------------------------------------------- a bot in a test


@dataclass
class Got:
    """A message the bot received, and when (loop time)."""

    at: float
    message: dict[str, Any]


class Bot:
    """The bot side of one connection: records what FakeExotel sends; sends what the test scripts."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.path = conn.request.path if conn.request else ""
        self.headers = conn.request.headers if conn.request else None
        self.got: list[Got] = []
        self.sid = ""
        self.close_code: int | None = None
        self.close_reason = ""
        self.finished = asyncio.Event()
        self.error: BaseException | None = None
        self.notes: dict[str, Any] = {}

    async def recv(self) -> dict[str, Any]:
        text = await self.conn.recv()
        assert isinstance(text, str), "FakeExotel must send text frames"
        message = json.loads(text)
        self.got.append(Got(asyncio.get_running_loop().time(), message))
        if message.get("event") == "start":
            self.sid = message.get("stream_sid", "")
        return message

    async def until(self, event: str, **media: str) -> dict[str, Any]:
        """Read until a message with ``event`` (and, for media, matching ``media`` fields) arrives."""
        while True:
            message = await self.recv()
            if message.get("event") == event and all(
                str(message.get("media", {}).get(k)) == v for k, v in media.items()
            ):
                return message

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.conn.send(json.dumps(message) if isinstance(message, dict) else message)

    async def media(self, payload: bytes) -> None:
        message: dict[str, Any] = {"event": "media", "media": {"payload": base64.b64encode(payload).decode()}}
        if self.sid:
            message["stream_sid"] = self.sid
        await self.send(message)

    async def mark(self, name: str) -> None:
        await self.send({"event": "mark", "stream_sid": self.sid, "mark": {"name": name}})

    async def clear(self) -> None:
        await self.send({"event": "clear", "stream_sid": self.sid})

    async def drain(self) -> None:
        with _recording_close(self):
            while True:
                await self.recv()

    def messages(self, event: str) -> list[Got]:
        return [got for got in self.got if got.message.get("event") == event]

    async def done(self, timeout: float = 10.0) -> Bot:
        async with asyncio.timeout(timeout):
            await self.finished.wait()
        if self.error is not None:
            raise self.error
        return self


class _recording_close:
    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, ConnectionClosed):
            self.bot.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
            self.bot.close_reason = exc.rcvd.reason if exc.rcvd is not None else ""
            return True
        return False


Script = Callable[[Bot], Awaitable[None]]


async def just_listen(bot: Bot) -> None:
    """A bot that only listens."""


class BotServer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.bots: list[Bot] = []
        self.arrived = asyncio.Event()

    async def bot(self, timeout: float = 5.0) -> Bot:
        async with asyncio.timeout(timeout):
            await self.arrived.wait()
        return self.bots[0]


@asynccontextmanager
async def bot_server(
    script: Script = just_listen, path: str = "/exotel/ws/abc?tenant=acme"
) -> AsyncIterator[BotServer]:
    """A websockets server running ``script`` for each connection, then reading until it closes."""
    holder: list[BotServer] = []

    async def handler(conn: ServerConnection) -> None:
        bot = Bot(conn)
        holder[0].bots.append(bot)
        holder[0].arrived.set()
        try:
            with _recording_close(bot):
                await script(bot)
            if bot.close_code is None:
                await bot.drain()
        except BaseException as exc:
            bot.error = exc
            raise
        finally:
            bot.finished.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        holder.append(BotServer(f"ws://127.0.0.1:{port}{path}"))
        yield holder[0]


def fill(value: int, samples: int = CHUNK_16K // 2) -> bytes:
    return pcm16_to_bytes(np.full(samples, value, dtype=np.int16))


def ramp(count: int) -> Samples:
    return ((np.arange(count) % 2000) - 1000).astype(np.int16)


def stream_times(bot: Bot, exotel: FakeExotel, event: str) -> list[float]:
    return [got.at - exotel.started_at for got in bot.messages(event)]


# ---------------------------------------------------------------------------- what FakeExotel sends


async def test_sends_connected_start_media_and_stop_in_the_documented_shapes() -> None:
    caller = ramp(RATE)
    async with bot_server() as server:
        async with FakeExotel(
            server.url, sample_rate=RATE, caller_audio=caller, custom_parameters={"lang": "hi"}
        ) as exotel:
            await exotel.run(until=0.35)
        bot = await (await server.bot()).done()

    events = [got.message["event"] for got in bot.got]
    assert events[:2] == ["connected", "start"] and events[-1] == "stop"
    assert set(events[2:-1]) == {"media"}
    assert bot.got[0].message == {"event": "connected"}
    start = bot.got[1].message
    sid, call_sid = start["stream_sid"], start["start"]["call_sid"]
    assert HEX32.fullmatch(sid) and HEX32.fullmatch(call_sid) and sid != call_sid
    assert start == {
        "event": "start",
        "sequence_number": "1",
        "stream_sid": sid,
        "start": {
            "stream_sid": sid,
            "call_sid": call_sid,
            "account_sid": "acmecorp1",
            "from": "+919812345678",
            "to": "+918045678901",
            "custom_parameters": {"lang": "hi"},
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "16"},
        },
    }
    media = [got.message for got in bot.messages("media")]
    assert len(media) == 3
    for number, message in enumerate(media, start=1):
        assert message["sequence_number"] == str(number + 1)
        assert message["stream_sid"] == sid
        assert message["media"]["chunk"] == str(number)
        assert message["media"]["timestamp"] == str(number * 100)
        payload = base64.b64decode(message["media"]["payload"])
        assert payload == pcm16_to_bytes(caller[(number - 1) * 1600 : number * 1600])
    assert bot.got[-1].message == {
        "event": "stop",
        "sequence_number": "5",
        "stream_sid": sid,
        "stop": {"call_sid": call_sid, "account_sid": "acmecorp1", "reason": "callended"},
    }
    assert bot.path == "/exotel/ws/abc?tenant=acme&sample-rate=16000"
    assert bot.close_code == 1000
    report = exotel.result
    assert report.hung_up_by == "caller" and report.hangup_reason == "callended"
    assert report.stream_sid == sid and report.ok


def _flat_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for inner in value.values() for key in _flat_keys(inner)}
    return set()


Check = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], str], None]


def _int_scalars(
    start: dict[str, Any], media: dict[str, Any], dtmf: dict[str, Any], stop: Any, path: str
) -> None:
    assert (start["sequence_number"], dtmf["sequence_number"], media["sequence_number"]) == (1, 2, 3)
    assert media["media"]["chunk"] == 1 and media["media"]["timestamp"] == 100
    assert start["start"]["media_format"]["sample_rate"] == 16000
    assert dtmf["dtmf"]["duration"] == 120


def _camel(start: dict[str, Any], media: dict[str, Any], dtmf: dict[str, Any], stop: Any, path: str) -> None:
    assert {"streamSid", "sequenceNumber"} <= set(start) and "stream_sid" not in start
    assert {"streamSid", "callSid", "accountSid", "customParameters", "mediaFormat"} <= set(start["start"])
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-raw",
        "sampleRate": "16000",
        "bitRate": "16",
    }
    assert "sequenceNumber" in media and "callSid" in stop["stop"]


def _params_json(start: dict[str, Any], *_: Any) -> None:
    assert json.loads(start["start"]["custom_parameters"]) == {"lang": "hi"}


def _params_query(start: dict[str, Any], *_: Any) -> None:
    assert start["start"]["custom_parameters"] == "lang=hi"


def _no_sid(start: dict[str, Any], media: dict[str, Any], dtmf: dict[str, Any], stop: Any, path: str) -> None:
    for message in (start, media, dtmf, stop):
        assert "stream_sid" not in _flat_keys(message)


def _url_disagrees(start: dict[str, Any], *rest: Any) -> None:
    assert rest[-1].endswith("sample-rate=8000")
    assert start["start"]["media_format"]["sample_rate"] == "16000"


def _url_untouched(start: dict[str, Any], *rest: Any) -> None:
    assert rest[-1] == "/exotel/ws/abc?tenant=acme"


def _url_underscore(start: dict[str, Any], *rest: Any) -> None:
    assert rest[-1].endswith("sample_rate=16000")


def _no_start_rate(start: dict[str, Any], *_: Any) -> None:
    assert start["start"]["media_format"] == {"encoding": "audio/x-raw", "bit_rate": "16"}


def _raw_encoding(start: dict[str, Any], *_: Any) -> None:
    assert start["start"]["media_format"]["encoding"] == "raw"


def _flat_dtmf(start: dict[str, Any], media: dict[str, Any], dtmf: dict[str, Any], *_: Any) -> None:
    assert dtmf["digit"] == "7" and "dtmf" not in dtmf


VARIANTS: dict[str, tuple[WireOptions, Check, int]] = {
    "int_scalars": (WireOptions(int_scalars=True), _int_scalars, 16000),
    "camel_case": (WireOptions(camel_case=True), _camel, 16000),
    "params_json": (WireOptions(custom_parameters_format="json"), _params_json, 16000),
    "params_query": (WireOptions(custom_parameters_format="query"), _params_query, 16000),
    "no_stream_sid": (WireOptions(omit_stream_sid=True), _no_sid, 16000),
    "url_rate_disagrees": (WireOptions(url_sample_rate=8000), _url_disagrees, 16000),
    "url_untouched": (WireOptions(url_sample_rate="omit"), _url_untouched, 16000),
    "url_sample_rate_key": (WireOptions(url_rate_key="sample_rate"), _url_underscore, 16000),
    "no_start_rate": (WireOptions(omit_start_sample_rate=True), _no_start_rate, 16000),
    "raw_encoding": (WireOptions(media_encoding="raw"), _raw_encoding, 16000),
    "flat_dtmf": (WireOptions(dtmf_flat=True), _flat_dtmf, 16000),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_wire_variants_are_sent_and_still_parse_as_the_same_call(variant: str) -> None:
    wire, check, expected_rate = VARIANTS[variant]
    async with bot_server() as server:
        async with FakeExotel(
            server.url, sample_rate=RATE, wire=wire, custom_parameters={"lang": "hi"}
        ) as exotel:
            await exotel.press("7", at=0.05)
            await exotel.run(until=0.15)
        bot = await (await server.bot()).done()
    start = bot.messages("start")[0].message
    media = bot.messages("media")[0].message
    dtmf = bot.messages("dtmf")[0].message
    stop = bot.messages("stop")[0].message
    check(start, media, dtmf, stop, bot.path)
    # The project's own tolerant parser reads every variant as the same call.
    url_rate, _ = rate_from_url(bot.path)
    parsed = parse_message(json.dumps(start), url_rate=url_rate)
    assert isinstance(parsed, Start)
    assert parsed.call_sid == exotel.call_sid
    assert parsed.custom_parameters == {"lang": "hi"}
    assert parsed.sample_rate == expected_rate
    assert parsed.stream_sid == ("" if wire.omit_stream_sid else exotel.stream_sid)


async def test_connected_can_be_left_out() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, wire=WireOptions(send_connected=False)) as exotel:
            await exotel.hangup()
        bot = await (await server.bot()).done()
    assert [got.message["event"] for got in bot.got] == ["start", "stop"]
    assert exotel.result.hung_up_by == "caller"


async def test_mulaw_stream_announces_itself_and_sends_one_byte_per_sample() -> None:
    caller = tone(440, 1.0, 8000)
    async with bot_server() as server:
        async with FakeExotel(server.url, encoding="mulaw", caller_audio=caller) as exotel:
            await exotel.run(until=0.15)
        bot = await (await server.bot()).done()
    media_format = bot.messages("start")[0].message["start"]["media_format"]
    assert media_format == {"encoding": "audio/x-mulaw", "sample_rate": "8000", "bit_rate": "8"}
    payload = base64.b64decode(bot.messages("media")[0].message["media"]["payload"])
    assert payload == pcm16_to_ulaw(caller[:800])
    assert exotel.encoding is Encoding.MULAW


async def test_caller_audio_comes_from_a_wav_file_converted_to_the_stream_rate(tmp_path: Path) -> None:
    path = tmp_path / "caller.wav"
    write_wav(path, tone(1000, 0.5, 8000), 8000)
    async with bot_server() as server:
        async with FakeExotel(server.url, sample_rate=RATE, caller_audio=path) as exotel:
            await exotel.run(until=0.35)
        bot = await (await server.bot()).done()
    audio = np.concatenate(
        [
            np.frombuffer(base64.b64decode(got.message["media"]["payload"]), "<i2")
            for got in bot.messages("media")
        ]
    )
    assert len(audio) == 3 * 1600
    spectrum = np.abs(np.fft.rfft(audio[400:].astype(float)))
    assert np.fft.rfftfreq(len(audio) - 400, 1 / RATE)[spectrum.argmax()] == pytest.approx(1000, abs=10)


async def test_caller_is_silent_after_the_audio_runs_out() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, caller_audio=np.full(1200, 999, dtype=np.int16)) as exotel:
            await exotel.run(until=0.25)
        bot = await (await server.bot()).done()
    first, second = (base64.b64decode(got.message["media"]["payload"]) for got in bot.messages("media")[:2])
    assert first == fill(999, 800)
    assert second == fill(999, 400) + fill(0, 400)


async def test_dtmf_is_sent_at_its_time_in_sequence_order() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url) as exotel:
            assert await exotel.press("#", at=0.25, duration_ms=80) is True
            await exotel.run(until=0.4)
        bot = await (await server.bot()).done()
    (dtmf,) = bot.messages("dtmf")
    assert dtmf.message["dtmf"] == {"digit": "#", "duration": "80"}
    assert 0.25 <= dtmf.at - exotel.started_at < 0.25 + 0.06
    numbers = [int(got.message["sequence_number"]) for got in bot.got if "sequence_number" in got.message]
    assert numbers == list(range(1, len(numbers) + 1))


async def test_a_key_press_scheduled_after_the_call_is_never_sent() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url) as exotel:
            pending = exotel.press_at("1", at=30.0)
        await (await server.bot()).done()
    assert pending.result() is False


@pytest.mark.parametrize(
    ("reason", "abort", "stop_reason", "close_code"),
    [
        ("callended", False, "callended", 1000),
        ("stopped", False, "stopped", 1000),
        (None, False, None, 1000),
        (None, True, None, 1006),
    ],
)
async def test_hangup_sends_stop_then_closes_or_closes_without_stop(
    reason: str | None, abort: bool, stop_reason: str | None, close_code: int
) -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url) as exotel:
            await exotel.run(until=0.05)
            await exotel.hangup(reason, abort=abort)
        bot = await (await server.bot()).done()
    stops = bot.messages("stop")
    assert [got.message["stop"]["reason"] for got in stops] == ([stop_reason] if stop_reason else [])
    assert bot.close_code == close_code
    report = exotel.result
    assert report.hung_up_by == "caller"
    assert report.hangup_reason == (reason or ("connection dropped" if abort else "closed without stop"))


async def test_basic_auth_is_sent_on_the_upgrade() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, auth=("key", "secret")):
            pass
        bot = await (await server.bot()).done()
    assert bot.headers is not None
    assert bot.headers["Authorization"] == "Basic " + base64.b64encode(b"key:secret").decode()


def test_bad_configuration_is_refused_with_the_rule() -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        FakeExotel("ws://x/", sample_rate=44100)
    with pytest.raises(ConfigError, match="encoding"):
        FakeExotel("ws://x/", encoding="opus")
    with pytest.raises(ConfigError, match="chunk_ms"):
        FakeExotel("ws://x/", chunk_ms=0)
    with pytest.raises(ConfigError, match="at most 3 pairs"):
        FakeExotel("ws://x/", custom_parameters={"a": "1", "b": "2", "c": "3", "d": "4"})
    with pytest.raises(ConfigError, match="ws://"):
        FakeExotel("https://x/")
    with pytest.raises(ConfigError, match="600"):
        FakeExotel("ws://x/" + "a" * 600)
    with pytest.raises(TypeError, match="int16"):
        FakeExotel("ws://x/", caller_audio=np.zeros(10))
    with pytest.raises(ConfigError, match="jitter_ms"):
        Faults(jitter_ms=-1)
    with pytest.raises(ConfigError, match="stall_seconds"):
        Faults(stall_at=1.0)
    with pytest.raises(ConfigError, match="url_sample_rate"):
        WireOptions(url_sample_rate=-5)


# --------------------------------------------------------------------------------------------- pacing


async def test_media_is_paced_in_real_time_without_drift() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, chunk_ms=20) as exotel:
            await exotel.run(until=1.0)
        bot = await (await server.bot()).done()
    media = bot.messages("media")
    assert 48 <= len(media) <= 50
    lateness = [got.at - exotel.started_at - int(got.message["media"]["chunk"]) * 0.02 for got in media]
    assert min(lateness) >= 0.0  # never before its audio exists
    assert max(lateness) < 0.05
    assert lateness[-1] < 0.05  # the 50th chunk is no later than the first: no accumulated drift


async def test_pacing_catches_up_after_the_loop_was_blocked() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, chunk_ms=20) as exotel:
            loop = asyncio.get_running_loop()
            # Block the event loop for 250 ms (a stand-in for a slow neighbour), as a fault.
            loop.call_at(exotel.started_at + 0.3, time.sleep, 0.25)
            await exotel.run(until=1.0)
        bot = await (await server.bot()).done()
    arrivals = {
        int(got.message["media"]["chunk"]): got.at - exotel.started_at for got in bot.messages("media")
    }
    assert sorted(arrivals) == list(range(1, len(arrivals) + 1))  # nothing skipped: a burst catches up
    after = [arrivals[chunk] - chunk * 0.02 for chunk in arrivals if chunk * 0.02 >= 0.65]
    assert after and max(after) < 0.05  # back on the original grid, not 250 ms late for ever


# -------------------------------------------------------------------------------- playout (pure, exact)


def test_chunks_play_back_to_back_from_their_arrival() -> None:
    playout = Playout(8000)
    first = playout.add_chunk(np.full(800, 1, dtype=np.int16), 0.5)
    second = playout.add_chunk(np.full(800, 2, dtype=np.int16), 0.55)  # queued behind the first
    third = playout.add_chunk(np.full(800, 3, dtype=np.int16), 1.0)  # arrives after the queue ran dry
    assert (first.play_start, second.play_start, third.play_start) == (0.5, 0.6, 1.0)
    track = playout.track(1.2)
    assert len(track) == 9600
    assert not track[:4000].any() and (track[4000:4800] == 1).all() and (track[4800:5600] == 2).all()
    assert not track[5600:8000].any() and (track[8000:8800] == 3).all() and not track[8800:].any()
    assert playout.max_lead == pytest.approx(0.15)


def test_a_mark_is_due_when_the_audio_before_it_has_played() -> None:
    playout = Playout(8000)
    idle = playout.add_mark("idle", 0.2)
    assert idle.due == 0.2  # nothing queued: echoed at once
    playout.add_chunk(np.ones(1600, dtype=np.int16), 0.3)
    playout.add_chunk(np.ones(1600, dtype=np.int16), 0.31)
    mark = playout.add_mark("end", 0.32)
    assert mark.due == pytest.approx(0.7)
    assert playout.due_marks(0.2) == [idle]
    assert playout.due_marks(0.69) == []
    assert playout.next_mark_due() == pytest.approx(0.7)
    assert playout.due_marks(0.7) == [mark]


@pytest.mark.parametrize("marks_on_clear", ["drop", "echo"])
def test_clear_drops_what_has_not_started_and_the_playing_chunk_finishes(marks_on_clear: str) -> None:
    playout = Playout(8000, marks_on_clear=marks_on_clear)  # type: ignore[arg-type]
    for value in (1, 2, 3, 4):
        playout.add_chunk(np.full(800, value, dtype=np.int16), 0.0)  # 0.1 s each, queued at once
    before = playout.add_mark("before", 0.0)
    cleared = playout.clear(0.15)  # chunk 2 is playing
    assert (cleared.dropped_chunks, cleared.dropped_seconds, cleared.marks_cleared) == (2, 0.2, 1)
    assert [chunk.cleared for chunk in playout.chunks] == [False, False, True, True]
    new = playout.add_chunk(np.full(800, 9, dtype=np.int16), 0.16)
    assert new.play_start == pytest.approx(0.2)  # right after the chunk that was playing
    track = playout.track(0.5)
    assert (track[:800] == 1).all() and (track[800:1600] == 2).all() and (track[1600:2400] == 9).all()
    assert not track[2400:].any()
    assert before.cleared
    if marks_on_clear == "echo":
        assert playout.due_marks(0.15) == [before]
    else:
        assert playout.due_marks(10.0) == []


def test_a_mark_behind_the_playing_chunk_survives_a_clear() -> None:
    playout = Playout(8000)
    playout.add_chunk(np.ones(800, dtype=np.int16), 0.0)
    kept = playout.add_mark("kept", 0.0)
    playout.add_chunk(np.ones(800, dtype=np.int16), 0.0)
    playout.clear(0.05)
    assert not kept.cleared
    assert playout.due_marks(0.1) == [kept]


def test_underruns_are_gaps_inside_an_utterance_only() -> None:
    playout = Playout(8000)
    playout.add_chunk(np.ones(800, dtype=np.int16), 0.0)
    playout.add_chunk(np.ones(800, dtype=np.int16), 0.25)  # 150 ms dry mid-utterance
    playout.add_mark("utterance-end", 0.3)
    playout.add_chunk(np.ones(800, dtype=np.int16), 0.6)  # a new utterance: not an underrun
    playout.add_chunk(np.ones(800, dtype=np.int16), 2.0)  # 1.3 s later: a pause, not an underrun
    assert [(u.at, round(u.duration, 6)) for u in playout.underruns] == [(0.1, 0.15)]


def test_the_end_of_the_call_cuts_queued_audio() -> None:
    playout = Playout(8000)
    playout.add_chunk(np.ones(8000, dtype=np.int16), 0.0)
    mark = playout.add_mark("late", 0.0)
    assert playout.end(0.25) == pytest.approx(0.75)
    assert len(playout.track(5.0)) == 2000
    assert playout.due_marks(5.0) == [] and mark.echoed_at is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 2000)), min_size=1, max_size=20))
def test_playout_never_overlaps_never_plays_early_and_keeps_every_sample(
    arrivals: list[tuple[float, int]],
) -> None:
    playout = Playout(8000)
    now = 0.0
    for number, (step, length) in enumerate(arrivals, start=1):
        now += step
        playout.add_chunk(np.full(length, number, dtype=np.int16), now)
    previous_end = 0
    for chunk in playout.chunks:
        assert chunk.start >= previous_end
        assert chunk.start >= chunk.arrived_at * 8000 - 1e-6
        assert chunk.start in (previous_end, int(np.ceil(chunk.arrived_at * 8000 - 1e-6)))
        previous_end = chunk.end
    track = playout.track(previous_end / 8000)
    for number, chunk in enumerate(playout.chunks, start=1):
        assert (track[chunk.start : chunk.end] == number).all()
    assert np.count_nonzero(track) == sum(length for _, length in arrivals)


def test_onset_finds_the_first_loud_sample_after_a_time() -> None:
    track = np.zeros(8000, dtype=np.int16)
    track[1000] = 20000
    track[4000:4100] = 3000
    assert find_onset(track, 8000) == 0.125
    assert find_onset(track, 8000, after=0.2) == 0.5
    assert find_onset(track, 8000, after=0.2, threshold=0.5) is None


# ----------------------------------------------------------------------------- playout, end to end


async def test_mark_is_echoed_only_after_its_audio_has_played() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.mark("idle")
        bot.notes["idle_sent"] = asyncio.get_running_loop().time()
        await bot.until("mark")
        bot.notes["idle_echo"] = bot.got[-1].at
        bot.notes["sent"] = asyncio.get_running_loop().time()
        for _ in range(5):
            await bot.media(fill(1000))  # 5 x 100 ms
        await bot.mark("end")
        await bot.until("mark")
        bot.notes["echo"] = bot.got[-1].at

    async with bot_server(script) as server, FakeExotel(server.url, sample_rate=RATE) as exotel:
        bot = await server.bot()
        while "echo" not in bot.notes:
            await exotel.run(0.05)
    notes = bot.notes
    assert notes["idle_echo"] - notes["idle_sent"] < 0.05
    assert 0.5 - 0.002 <= notes["echo"] - notes["sent"] < 0.5 + 0.08
    marks = {mark.name: mark for mark in exotel.result.marks}
    assert marks["end"].round_trip == pytest.approx(0.5, abs=0.05)
    assert [got.message["mark"]["name"] for got in bot.messages("mark")] == ["idle", "end"]


@pytest.mark.parametrize("marks_on_clear", ["drop", "echo"])
async def test_clear_drops_unstarted_audio_and_the_caller_hears_the_rest(marks_on_clear: str) -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        for value in range(1, 11):
            await bot.media(fill(100 * value))  # 1 s of audio, 100 ms per level
        await bot.mark("old")
        await bot.until("media", chunk="3")
        await bot.clear()
        await bot.media(fill(-5000))
        await bot.mark("new")
        while bot.messages("mark")[-1:] == [] or bot.messages("mark")[-1].message["mark"]["name"] != "new":
            await bot.until("mark")

    async with bot_server(script) as server:
        async with FakeExotel(server.url, sample_rate=RATE, marks_on_clear=marks_on_clear) as exotel:  # type: ignore[arg-type]
            bot = await server.bot()
            while not any(got.message["mark"]["name"] == "new" for got in bot.messages("mark")):
                await exotel.run(0.05)
        await bot.done()
    report = exotel.result
    (clear,) = report.clears
    played = [chunk for chunk in report.chunks if not chunk.cleared]
    assert 1 <= len(played) - 1 <= 9 and clear.dropped_chunks == 11 - len(played)
    levels = [100 * value for value in range(1, len(played))] + [-5000]
    expected = np.concatenate([np.full(1600, level, dtype=np.int16) for level in levels])
    start = played[0].start
    heard = report.heard_between(start / RATE, start / RATE + len(expected) / RATE + 0.1)
    assert np.array_equal(heard[: len(expected)], expected)  # the playing chunk finished, then the new audio
    assert not heard[len(expected) :].any()
    echoed = [got.message["mark"]["name"] for got in bot.messages("mark")]
    assert echoed == (["old", "new"] if marks_on_clear == "echo" else ["new"])
    old = next(mark for mark in report.marks if mark.name == "old")
    assert old.cleared


async def test_heard_track_places_the_bot_audio_at_its_play_time() -> None:
    greeting = tone(440, 0.2, RATE)

    async def script(bot: Bot) -> None:
        await bot.until("media", chunk="3")
        await bot.media(pcm16_to_bytes(greeting[:1600]))
        await bot.media(pcm16_to_bytes(greeting[1600:]))

    async with bot_server(script) as server, FakeExotel(server.url, sample_rate=RATE) as exotel:
        await exotel.run(until=0.8)
        first = exotel.result.first_audio_at
        assert first is not None and 0.3 <= first < 0.3 + 0.06
        assert np.array_equal(exotel.heard(first, first + 0.2), greeting)
        assert not exotel.heard(0.0, first).any()
        assert not exotel.heard(first + 0.2, 0.8).any()
        onset = exotel.onset()
        assert onset is not None and first <= onset < first + 0.002
    assert len(exotel.result.heard) == pytest.approx(exotel.result.duration * RATE, abs=1)


async def test_response_latency_is_measured_on_the_callers_timeline() -> None:
    speech = np.concatenate([np.zeros(8000, dtype=np.int16), tone(300, 0.3, RATE)])  # speaks at 0.5 s

    async def script(bot: Bot) -> None:
        while True:
            message = await bot.until("media")
            audio = np.frombuffer(base64.b64decode(message["media"]["payload"]), "<i2")
            if np.abs(audio.astype(int)).max() > 5000:
                await bot.media(pcm16_to_bytes(tone(880, 0.1, RATE)))
                return

    async with (
        bot_server(script) as server,
        FakeExotel(server.url, sample_rate=RATE, caller_audio=speech) as exotel,
    ):
        await exotel.run(until=1.0)
    onset = exotel.result.onset(after=0.5)
    assert onset is not None
    # The speech is in chunk 6 (0.5-0.6 s), which leaves at 0.6 s: at least 100 ms before any reply.
    assert 0.1 - 0.002 <= onset - 0.5 < 0.1 + 0.08


async def test_underruns_are_reported_when_the_bot_falls_behind() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.media(fill(1000))
        await bot.until("media", chunk="4")  # ~0.4 s: the 100 ms chunk ran out at ~0.1 s
        await bot.media(fill(1000))
        await bot.mark("done")
        await bot.until("media", chunk="8")
        await bot.media(fill(1000))  # after a mark: a new utterance, not an underrun

    async with bot_server(script) as server, FakeExotel(server.url, sample_rate=RATE) as exotel:
        await exotel.run(until=1.0)
    report = exotel.result
    (underrun,) = report.underruns
    assert 0.3 - 0.06 < underrun.duration < 0.3 + 0.06
    assert "underruns: 1" in report.summary()


async def test_audio_still_queued_when_the_bot_hangs_up_is_cut_off() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        for _ in range(10):
            await bot.media(fill(1000))
        await bot.conn.close(1000, "bye")

    async with bot_server(script) as server, FakeExotel(server.url, sample_rate=RATE) as exotel:
        await exotel.wait_closed(timeout=5)
    report = exotel.result
    assert report.hung_up_by == "bot"
    assert (report.close_code, report.close_reason) == (1000, "bye")
    assert 0.8 < report.audio_cut <= 1.0
    assert len(report.heard) == pytest.approx(report.duration * RATE, abs=1)
    assert "audio cut off" in report.summary()


async def test_a_bot_that_drops_the_connection_is_the_network() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        assert bot.conn.transport is not None
        bot.conn.transport.abort()

    async with bot_server(script) as server, FakeExotel(server.url) as exotel:
        await exotel.wait_closed(timeout=5)
    report = exotel.result
    assert (report.hung_up_by, report.close_code) == ("network", 1006)


# ------------------------------------------------------------------------------------------ validation


def _rules(
    encoding: Encoding = Encoding.PCM16, rate: int = RATE, strict_minimum: bool = False
) -> MessageRules:
    return MessageRules(rate, encoding, "a" * 32, strict_minimum)


def _media(payload: bytes, **extra: Any) -> str:
    return json.dumps(
        {
            "event": "media",
            "stream_sid": "a" * 32,
            "media": {"payload": base64.b64encode(payload).decode()},
            **extra,
        }
    )


SID = "a" * 32
PURE_CASES: list[tuple[str, str | bytes, MessageRules, set[Rule]]] = [
    ("valid media", _media(bytes(3200)), _rules(), set()),
    ("valid mark", json.dumps({"event": "mark", "stream_sid": SID, "mark": {"name": "m"}}), _rules(), set()),
    ("valid clear", json.dumps({"event": "clear", "stream_sid": SID}), _rules(), set()),
    ("no stream_sid is fine", json.dumps({"event": "clear"}), _rules(), set()),
    ("binary", b"\x00\x01", _rules(), {Rule.BINARY_FRAME}),
    ("not json", "{nope", _rules(), {Rule.NOT_JSON}),
    ("json array", "[1, 2]", _rules(), {Rule.NOT_JSON}),
    ("no event", json.dumps({"stream_sid": SID}), _rules(), {Rule.NO_EVENT}),
    ("bot sends stop", json.dumps({"event": "stop"}), _rules(), {Rule.UNKNOWN_EVENT}),
    ("camelCase sid", json.dumps({"event": "clear", "streamSid": SID}), _rules(), {Rule.CAMEL_CASE}),
    (
        "camelCase nested",
        json.dumps({"event": "mark", "mark": {"name": "m", "markName": "x"}}),
        _rules(),
        {Rule.CAMEL_CASE},
    ),
    (
        "other sid",
        json.dumps({"event": "clear", "stream_sid": "b" * 32}),
        _rules(),
        {Rule.STREAM_SID_MISMATCH},
    ),
    ("no payload", json.dumps({"event": "media", "media": {}}), _rules(), {Rule.BAD_PAYLOAD}),
    ("bad base64", json.dumps({"event": "media", "media": {"payload": "!!!"}}), _rules(), {Rule.BAD_PAYLOAD}),
    ("empty", _media(b""), _rules(), {Rule.EMPTY_PAYLOAD}),
    ("odd", _media(bytes(3841)), _rules(), {Rule.ODD_LENGTH, Rule.FRAME_MULTIPLE}),
    ("half frame", _media(bytes(3520)), _rules(), {Rule.FRAME_MULTIPLE}),
    ("too large", _media(bytes(100_480)), _rules(), {Rule.TOO_LARGE}),
    ("too small", _media(bytes(640)), _rules(), {Rule.TOO_SMALL}),
    ("mark without name", json.dumps({"event": "mark", "mark": {}}), _rules(), {Rule.BAD_MARK}),
    ("mark with empty name", json.dumps({"event": "mark", "mark": {"name": ""}}), _rules(), {Rule.BAD_MARK}),
    ("8k: 320-byte frames", _media(bytes(3520)), _rules(rate=8000), set()),
    ("24k: 3840 B is whole frames", _media(bytes(3840)), _rules(rate=24000), set()),
    ("24k: 3200 B is not", _media(bytes(3200)), _rules(rate=24000), {Rule.FRAME_MULTIPLE}),
    ("mulaw 8k minimum", _media(bytes(1600)), _rules(Encoding.MULAW, 8000), set()),
    ("mulaw odd is fine", _media(bytes(1760)), _rules(Encoding.MULAW, 8000), set()),
    ("mulaw half frame", _media(bytes(1680)), _rules(Encoding.MULAW, 8000), {Rule.FRAME_MULTIPLE}),
    ("mulaw too small", _media(bytes(800)), _rules(Encoding.MULAW, 8000), {Rule.TOO_SMALL}),
]


@pytest.mark.parametrize(
    ("case", "data", "rules", "expected"), PURE_CASES, ids=[case[0] for case in PURE_CASES]
)
def test_check_bot_message_flags_exactly_the_broken_rules(
    case: str, data: str | bytes, rules: MessageRules, expected: set[Rule]
) -> None:
    message, found = check_bot_message(data, rules, at=1.5)
    assert {violation.rule for violation in found} == expected
    assert all(violation.at == 1.5 for violation in found)
    if not expected - {
        Rule.TOO_SMALL,
        Rule.ODD_LENGTH,
        Rule.FRAME_MULTIPLE,
        Rule.TOO_LARGE,
        Rule.CAMEL_CASE,
        Rule.STREAM_SID_MISMATCH,
    }:
        assert message is not None  # still played / acted upon, as Exotel would


def test_the_minimum_chunk_is_a_warning_unless_strict() -> None:
    _, lenient = check_bot_message(_media(bytes(640)), _rules())
    _, strict = check_bot_message(_media(bytes(640)), _rules(strict_minimum=True))
    assert [v.severity for v in lenient] == ["warning"] and [v.severity for v in strict] == ["error"]


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8)).map(json.dumps),
    )
)
def test_check_bot_message_never_raises(data: str | bytes) -> None:
    check_bot_message(data, _rules())


BAD_BOTS: list[tuple[Rule, Callable[[str], str | bytes]]] = [
    (Rule.BINARY_FRAME, lambda sid: b"\x00\x01"),
    (Rule.NOT_JSON, lambda sid: "{not json"),
    (Rule.NO_EVENT, lambda sid: json.dumps({"stream_sid": sid})),
    (Rule.UNKNOWN_EVENT, lambda sid: json.dumps({"event": "start", "stream_sid": sid})),
    (Rule.CAMEL_CASE, lambda sid: json.dumps({"event": "clear", "streamSid": sid})),
    (Rule.STREAM_SID_MISMATCH, lambda sid: json.dumps({"event": "clear", "stream_sid": "0" * 32})),
    (
        Rule.BAD_PAYLOAD,
        lambda sid: json.dumps({"event": "media", "stream_sid": sid, "media": {"payload": "***"}}),
    ),
    (Rule.EMPTY_PAYLOAD, lambda sid: _media_for(sid, b"")),
    (Rule.ODD_LENGTH, lambda sid: _media_for(sid, bytes(3201))),
    (Rule.FRAME_MULTIPLE, lambda sid: _media_for(sid, bytes(3520))),
    (Rule.TOO_LARGE, lambda sid: _media_for(sid, bytes(100_480))),
    (Rule.TOO_SMALL, lambda sid: _media_for(sid, bytes(640))),
    (Rule.BAD_MARK, lambda sid: json.dumps({"event": "mark", "stream_sid": sid, "mark": {}})),
]


def _media_for(sid: str, payload: bytes) -> str:
    return json.dumps(
        {"event": "media", "stream_sid": sid, "media": {"payload": base64.b64encode(payload).decode()}}
    )


@pytest.mark.parametrize(("rule", "make"), BAD_BOTS, ids=[rule.value for rule, _ in BAD_BOTS])
async def test_a_bad_bot_is_reported_not_crashed_on(rule: Rule, make: Callable[[str], str | bytes]) -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.send(make(bot.sid))
        await bot.conn.close()

    async with bot_server(script) as server, FakeExotel(server.url, sample_rate=RATE) as exotel:
        await exotel.wait_closed(timeout=5)
    report = exotel.result
    assert rule in {violation.rule for violation in report.violations}
    assert report.ok is (rule is Rule.TOO_SMALL)  # the minimum is a warning by default
    assert rule.value in report.summary()


async def test_anything_before_start_is_a_violation() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("connected")
        await bot.media(fill(0))

    async with (
        bot_server(script) as server,
        FakeExotel(server.url, sample_rate=RATE, wire=WireOptions(start_delay=0.3)) as exotel,
    ):
        await exotel.run(until=0.05)
    assert [v.rule for v in exotel.result.violations] == [Rule.BEFORE_START]
    assert exotel.result.chunks == []  # never played


async def test_audio_sent_after_stop_is_flagged_and_not_played() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("stop")
        await bot.media(fill(1000))

    async with (
        bot_server(script) as server,
        FakeExotel(
            server.url, sample_rate=RATE, wire=WireOptions(stop_close_delay=0.3), after_stop_grace=0.0
        ) as exotel,
    ):
        await exotel.run(until=0.1)
        await exotel.hangup()
    report = exotel.result
    assert [(v.rule, v.severity) for v in report.violations] == [(Rule.AFTER_STOP, "warning")]
    assert report.chunks == [] and report.ok


async def test_strict_mode_raises_on_the_first_violation_and_ends_the_call() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.media(fill(0))  # fine
        await bot.send(b"binary")
        await bot.send(b"more binary")

    async with bot_server(script) as server:
        with pytest.raises(BotProtocolError) as raised:
            async with FakeExotel(server.url, sample_rate=RATE, strict=True) as exotel:
                await exotel.run(5.0)
        bot = await (await server.bot()).done()
    assert raised.value.violation.rule is Rule.BINARY_FRAME
    assert bot.close_code == 1002
    assert exotel.result.hangup_reason == "strict mode: binary_frame"


async def test_strict_minimum_makes_short_chunks_fatal() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.media(fill(0, 320))

    async with bot_server(script) as server:
        with pytest.raises(BotProtocolError, match="too_small"):
            async with FakeExotel(server.url, sample_rate=RATE, strict=True, strict_minimum=True) as exotel:
                await exotel.run(5.0)


# ----------------------------------------------------------------------------------------------- faults


def _media_arrivals(bot: Bot, exotel: FakeExotel) -> list[tuple[int, int, float]]:
    """(chunk, sequence number, stream time of arrival) of each media message, in arrival order."""
    return [
        (int(got.message["media"]["chunk"]), int(got.message["sequence_number"]), got.at - exotel.started_at)
        for got in bot.messages("media")
    ]


async def test_jitter_delays_chunks_but_keeps_their_order() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, chunk_ms=20, faults=Faults(jitter_ms=80, seed=7)) as exotel:
            await exotel.run(until=1.2)
        bot = await (await server.bot()).done()
    arrivals = _media_arrivals(bot, exotel)
    assert [chunk for chunk, _, _ in arrivals] == sorted(chunk for chunk, _, _ in arrivals)
    lateness = [at - chunk * 0.02 for chunk, _, at in arrivals if chunk * 0.02 <= 1.0]
    assert min(lateness) >= 0.0
    assert max(lateness) > 0.04  # the jitter is really there
    assert max(lateness) < 0.08 + 0.05


async def test_jitter_can_reorder_chunks() -> None:
    async with bot_server() as server:
        async with FakeExotel(
            server.url, chunk_ms=20, faults=Faults(jitter_ms=200, reorder=True, seed=3)
        ) as exotel:
            await exotel.run(until=1.0)
        bot = await (await server.bot()).done()
    order = [chunk for chunk, _, _ in _media_arrivals(bot, exotel)]
    assert order != sorted(order)
    assert all(sequence == chunk + 1 for chunk, sequence, _ in _media_arrivals(bot, exotel))


async def test_dropped_chunks_leave_sequence_gaps() -> None:
    async with bot_server() as server:
        async with FakeExotel(
            server.url, chunk_ms=20, faults=Faults(drop_chunks=frozenset({3, 4}))
        ) as exotel:
            await exotel.run(until=0.15)
        bot = await (await server.bot()).done()
    arrivals = _media_arrivals(bot, exotel)
    assert [(chunk, sequence) for chunk, sequence, _ in arrivals[:4]] == [(1, 2), (2, 3), (5, 6), (6, 7)]
    assert exotel.result.dropped_chunks == [3, 4]


async def test_random_drops_are_reproducible_and_reported() -> None:
    async with bot_server() as server:
        async with FakeExotel(
            server.url, chunk_ms=20, faults=Faults(drop_probability=0.3, seed=11)
        ) as exotel:
            await exotel.run(until=0.5)
        bot = await (await server.bot()).done()
    received = {chunk for chunk, _, _ in _media_arrivals(bot, exotel)}
    produced = set(range(1, max(received | set(exotel.result.dropped_chunks)) + 1))
    assert set(exotel.result.dropped_chunks) == produced - received
    assert 0 < len(exotel.result.dropped_chunks) < len(produced)


async def test_duplicated_chunks_arrive_twice_with_the_same_sequence_number() -> None:
    async with bot_server() as server:
        async with FakeExotel(
            server.url, chunk_ms=20, faults=Faults(duplicate_chunks=frozenset({2}))
        ) as exotel:
            await exotel.run(until=0.1)
        bot = await (await server.bot()).done()
    media = [got.message for got in bot.messages("media")]
    assert [m["media"]["chunk"] for m in media[:4]] == ["1", "2", "2", "3"]
    assert media[1] == media[2]
    assert exotel.result.duplicated_chunks == [2]
    assert [sent.duplicate for sent in exotel.result.sent if sent.chunk == 2] == [False, True]


@pytest.mark.parametrize("burst", [True, False])
async def test_a_stall_holds_media_then_bursts_or_loses_it(burst: bool) -> None:
    faults = Faults(stall_at=0.2, stall_seconds=0.4, stall_burst=burst)
    async with bot_server() as server:
        async with FakeExotel(server.url, chunk_ms=50, faults=faults) as exotel:
            await exotel.run(until=0.9)
        bot = await (await server.bot()).done()
    arrivals = _media_arrivals(bot, exotel)
    assert not [at for _, _, at in arrivals if 0.2 + 0.04 < at < 0.6 - 0.001]
    stalled = [(chunk, at) for chunk, _, at in arrivals if 4 <= chunk <= 11]
    if burst:
        assert [chunk for chunk, _ in stalled] == list(range(4, 12))
        assert all(0.6 - 0.001 <= at < 0.6 + 0.05 for _, at in stalled)
    else:
        assert stalled == []
        assert exotel.result.dropped_chunks == list(range(4, 12))
    later = [at - chunk * 0.05 for chunk, _, at in arrivals if chunk >= 13]
    assert later and max(later) < 0.05


async def test_a_peer_that_stops_reading_builds_backpressure_at_the_bot() -> None:
    big = fill(7, 48_000)  # 96 000 bytes: one maximal, valid message

    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.media(fill(1))
        await bot.until("media", chunk="4")  # past the stop_reading_at time
        for count in range(1000):
            try:
                async with asyncio.timeout(1.0):
                    await bot.media(big)
            except TimeoutError:
                bot.notes["blocked_after"] = count
                return

    async with (
        bot_server(script) as server,
        FakeExotel(server.url, sample_rate=RATE, faults=Faults(stop_reading_at=0.3)) as exotel,
    ):
        bot = await server.bot()
        async with asyncio.timeout(30):
            while not bot.finished.is_set() and "blocked_after" not in bot.notes:
                await exotel.run(0.1)
    assert bot.notes.get("blocked_after") is not None, "the bot's sends never blocked"
    assert len(exotel.result.chunks) == 1  # nothing was read after 0.3 s


async def test_a_mid_call_disconnect_drops_the_connection_without_stop() -> None:
    async with bot_server() as server:
        async with FakeExotel(server.url, faults=Faults(disconnect_at=0.25)) as exotel:
            await exotel.wait_closed(timeout=5)
        bot = await (await server.bot()).done()
    assert bot.messages("stop") == []
    assert bot.close_code == 1006
    assert [int(got.message["media"]["chunk"]) for got in bot.messages("media")] == [1, 2]
    report = exotel.result
    assert report.hung_up_by == "network" and "disconnect" in report.hangup_reason
    assert report.duration == pytest.approx(0.25, abs=0.05)


# --------------------------------------------------------------------------------- report and simulate


async def test_summary_says_who_hung_up_and_the_verdict() -> None:
    async def script(bot: Bot) -> None:
        await bot.until("start")
        await bot.media(fill(1000))
        await bot.mark("m")
        await bot.until("mark")

    async with bot_server(script) as server, FakeExotel(server.url, sample_rate=RATE) as exotel:
        await exotel.run(until=0.3)
    summary = exotel.result.summary()
    assert "hung up by: caller: callended" in summary
    assert "first bot audio: 0.0" in summary
    assert "marks: 1 received, 1 echoed" in summary
    assert "chunks: 1 received (3200 B x1)" in summary
    assert summary.endswith("result: OK")


def test_dtmf_script_is_parsed_or_refused() -> None:
    assert parse_dtmf_script("1@2.5, #@6") == [("1", 2.5), ("#", 6.0)]
    assert parse_dtmf_script("") == []
    for bad in ("1", "x@1", "1@soon", "12@1", "1@-1"):
        with pytest.raises(ConfigError, match="dtmf"):
            parse_dtmf_script(bad)


async def test_simulate_plays_a_wav_presses_keys_and_writes_what_was_heard(tmp_path: Path) -> None:
    wav_in, wav_out = tmp_path / "caller.wav", tmp_path / "heard.wav"
    write_wav(wav_in, tone(1000, 0.4, 44100), 44100)

    async def echo(bot: Bot) -> None:  # a bot that plays the caller back
        while True:
            message = await bot.recv()
            if message["event"] == "media":
                await bot.media(base64.b64decode(message["media"]["payload"]))

    async with bot_server(echo) as server:
        report = await simulate(
            server.url, wav_in=wav_in, wav_out=wav_out, rate=RATE, dtmf_script="5@0.2", tail=0.3
        )
        bot = await (await server.bot()).done()
    assert report.ok and report.hung_up_by == "caller"
    assert report.duration == pytest.approx(0.7, abs=0.05)
    (dtmf,) = bot.messages("dtmf")
    assert dtmf.message["dtmf"]["digit"] == "5"
    heard, rate = read_wav(wav_out)
    assert rate == RATE and np.array_equal(heard, report.heard)
    with wave.open(str(wav_out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
    loud = heard[np.abs(heard.astype(int)) > 1000]
    assert len(loud) > 0.2 * RATE
    segment = report.heard_between(0.2, 0.4).astype(float)
    peak = np.fft.rfftfreq(len(segment), 1 / RATE)[np.abs(np.fft.rfft(segment)).argmax()]
    assert peak == pytest.approx(1000, abs=10)


async def test_serve_handler_runs_a_handler_in_process_for_fake_exotel() -> None:
    pytest.importorskip("voicebot.server")
    from voicebot.call import Call
    from voicebot.handler import Handler

    class HangUpOnHash(Handler):
        sample_rate = 8000

        async def on_dtmf(self, call: Call, digit: str) -> None:
            if digit == "#":
                await call.hangup()

    async with serve_handler(HangUpOnHash) as url, FakeExotel(url) as exotel:
        assert url.startswith("ws://127.0.0.1:")
        await exotel.press("#", at=0.2)
        await exotel.wait_closed(timeout=5)
    report = exotel.result
    assert report.ok, report.summary()
    assert (report.hung_up_by, report.close_code) == ("bot", 1000)
    assert 0.2 <= report.duration < 0.2 + 0.2

    report = await simulate(HangUpOnHash, dtmf_script="#@0.2", duration=5.0)
    assert (report.hung_up_by, report.close_code) == ("bot", 1000) and report.duration < 1.0
