"""The server and the call pipeline, over real sockets on 127.0.0.1, driven by FakeExotel."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
from typing import ClassVar

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from voicebot import AudioFrame, Call, Encoding, Handler, Playback, tone
from voicebot import call as call_module
from voicebot.config import ServeConfig
from voicebot.server import Server
from voicebot.testing import FakeExotel, serve_handler

pytestmark = pytest.mark.timeout(60)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in ``samples`` (Hz), from a windowed FFT."""
    data = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(data))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


def level(samples: np.ndarray) -> float:
    """RMS level relative to full scale."""
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)) / 32768) if len(samples) else 0.0


class Recorder(Handler):
    """Base for test bots that hand their Call and observations back to the test."""

    calls: ClassVar[list[Call]]
    notes: ClassVar[list[object]]

    async def on_start(self, call: Call) -> None:
        type(self).calls.append(call)


def recorder(base: type[Handler] = Recorder, **attributes: object) -> type[Recorder]:
    """A fresh Recorder subclass with its own lists, so tests never share state."""
    cls = type("TestBot", (base,), {"calls": [], "notes": [], **attributes})
    return cls  # type: ignore[return-value]


# --- the greeting: resampling and encoding both ways ---


class Greeter(Recorder):
    sample_rate = 16000

    async def on_start(self, call: Call) -> None:
        await super().on_start(call)
        playback = await call.play(tone(440, 0.5, self.sample_rate))
        type(self).notes.append(playback)


@pytest.mark.parametrize(
    ("rate", "encoding"),
    [(8000, Encoding.PCM16), (16000, Encoding.PCM16), (24000, Encoding.PCM16), (8000, Encoding.MULAW)],
)
async def test_greeting_is_heard_at_the_right_pitch_and_confirmed_by_its_mark(
    rate: int, encoding: Encoding
) -> None:
    bot = recorder(Greeter)
    async with serve_handler(bot) as url, FakeExotel(url, sample_rate=rate, encoding=encoding) as exotel:
        await exotel.run(1.6)
    report = exotel.result
    assert report.ok, report.summary()
    start = report.onset()
    assert start is not None and start < 0.4
    assert dominant_frequency(report.heard_between(start + 0.05, start + 0.45), rate) == pytest.approx(
        440, abs=5
    )
    assert level(report.heard_between(start + 0.6, start + 0.9)) < 0.001  # and then silence
    (playback,) = bot.notes
    assert isinstance(playback, Playback)
    assert playback.done() and not playback.interrupted
    assert playback.heard == pytest.approx(0.5)
    assert len(report.mark_round_trips) == 1
    call = bot.calls[0]
    assert (call.stream_rate, call.encoding) == (rate, encoding)
    # max(3200 B of PCM16 = 1600 samples, 100 ms), in the stream's encoding
    expected_chunk = max(1600, rate // 10) * encoding.bytes_per_sample
    assert max(report.chunk_sizes) == expected_chunk
    assert all(size % (rate // 50 * encoding.bytes_per_sample) == 0 for size in report.chunk_sizes)


class BufferReuser(Handler):
    """Plays 20 ms frames of a tone from one reused buffer, as a bot writing into a ring would."""

    sample_rate = 8000

    async def on_start(self, call: Call) -> None:
        source = tone(440, 0.5, self.sample_rate)
        buffer = np.empty(160, dtype=np.int16)
        for start in range(0, len(source), 160):
            buffer[:] = source[start : start + 160]
            call.play_nowait(buffer)
        buffer[:] = 0  # a bot that keeps its array may scribble on it before the audio goes out
        await call.play(np.zeros(0, dtype=np.int16))


async def test_audio_played_from_a_reused_buffer_is_heard_as_it_was_when_played() -> None:
    async with serve_handler(BufferReuser) as url, FakeExotel(url) as exotel:
        await exotel.run(1.2)
    report = exotel.result
    start = report.onset()
    assert start is not None
    heard = report.heard_between(start, start + 0.5)
    assert dominant_frequency(heard, 8000) == pytest.approx(440, abs=5)
    assert level(heard[-400:]) > 0.1  # the last frame too, not the zeros written over it


async def test_call_exposes_start_metadata() -> None:
    bot = recorder()
    async with (
        serve_handler(bot) as url,
        FakeExotel(url, sample_rate=16000, custom_parameters={"tenant": "acme"}) as exotel,
    ):
        await exotel.run(0.5)
    call = bot.calls[0]
    report = exotel.result
    assert call.call_sid == report.call_sid and len(call.call_sid) == 32
    assert call.stream_sid == report.stream_sid
    assert call.account_sid == "acmecorp1"
    assert call.custom_parameters == {"tenant": "acme"}
    assert call.from_number and call.to_number


# --- echo: continuous audio comes back as full chunks ---


class Echo(Recorder):
    sample_rate = 16000

    async def on_audio(self, call: Call, frame: AudioFrame) -> None:
        call.play_nowait(frame.samples)
        type(self).notes.append(call.pending_playbacks)


@pytest.mark.parametrize("writes", ["direct", "send()"])
async def test_echo_comes_back_as_full_chunks_of_continuous_audio(
    writes: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if writes == "send()":  # a websockets without the sans-I/O protocol object: every message via send()
        monkeypatch.setattr(call_module, "_can_write_directly", lambda connection: False)
    rate = 8000
    voice = np.concatenate([np.zeros(rate // 2, np.int16), tone(300, 2.0, rate, amplitude=0.3)])
    bot = recorder(Echo)
    async with serve_handler(bot) as url, FakeExotel(url, sample_rate=rate, caller_audio=voice) as exotel:
        await exotel.run(3.5)
    assert bot.calls[0]._direct_writes is (writes == "direct")
    report = exotel.result
    assert report.ok, report.summary()
    onset = report.onset(after=0.5, threshold=0.1)
    assert onset is not None and onset - 0.5 < 0.8, f"echo latency {onset}"
    assert dominant_frequency(report.heard_between(onset + 0.2, onset + 1.6), rate) == pytest.approx(
        300, abs=5
    )
    # Continuous: no gap inside the echoed tone; the chunks are full-size (one padded tail at most).
    heard = report.heard_between(onset + 0.05, onset + 1.9)
    frames = heard[: len(heard) // 160 * 160].reshape(-1, 160)
    assert min(level(frame) for frame in frames) > 0.1
    sizes = report.chunk_sizes
    assert sizes[3200] >= 9 and sum(count for size, count in sizes.items() if size != 3200) <= 2, sizes
    assert not report.underruns
    # 20 ms plays nobody awaits are retired as they play: no marks, no growing backlog.
    assert not report.marks
    assert max(bot.notes) < 60, max(bot.notes)  # at most lead + one chunk + prebuffer of 20 ms frames


# --- barge-in ---


class Talker(Recorder):
    """Plays a long prompt; a key press interrupts it and plays a short answer instead."""

    sample_rate = 8000

    async def on_start(self, call: Call) -> None:
        await super().on_start(call)
        type(self).notes.append(call.play_nowait(tone(500, 4.0, self.sample_rate)))

    async def on_dtmf(self, call: Call, digit: str) -> None:
        interrupted = call.clear()
        type(self).notes.append(interrupted)
        type(self).notes.append(await call.play(tone(1000, 0.4, self.sample_rate)))


async def test_barge_in_clears_and_reports_how_much_was_heard() -> None:
    bot = recorder(Talker)
    async with serve_handler(bot) as url, FakeExotel(url, sample_rate=8000) as exotel:
        await exotel.press("5", at=1.5)
        await exotel.run(3.0)
    report = exotel.result
    assert report.ok, report.summary()
    assert len(report.clears) == 1
    prompt, interrupted, answer = bot.notes
    assert isinstance(prompt, Playback) and isinstance(answer, Playback)
    assert interrupted == [prompt]
    assert prompt.interrupted and 1.0 < prompt.heard < 2.0, prompt
    assert not answer.interrupted and answer.heard == pytest.approx(0.4)
    # The caller stops hearing the prompt within one chunk (200 ms at 8 kHz) after the key, then hears
    # the answer, and never the rest of the prompt.
    assert dominant_frequency(report.heard_between(1.0, 1.4), 8000) == pytest.approx(500, abs=5)
    answer_start = report.onset(after=1.75, threshold=0.05)
    assert answer_start is not None and answer_start < 2.1
    assert dominant_frequency(report.heard_between(answer_start + 0.05, answer_start + 0.35), 8000) == (
        pytest.approx(1000, abs=5)
    )
    assert level(report.heard_between(answer_start + 0.5, 3.0)) < 0.001
    assert bot.calls[0].stats.late_marks_ignored + len(report.marks) >= 1


# --- hangup after the goodbye ---


class Goodbye(Recorder):
    sample_rate = 16000

    async def on_dtmf(self, call: Call, digit: str) -> None:
        call.play_nowait(tone(880, 0.6, self.sample_rate))
        await call.hangup()


@pytest.mark.parametrize("rate", [8000, 24000])
async def test_hangup_waits_until_the_goodbye_was_heard(rate: int) -> None:
    bot = recorder(Goodbye)
    async with serve_handler(bot) as url, FakeExotel(url, sample_rate=rate) as exotel:
        await exotel.press("#", at=0.5)
        await exotel.wait_closed(timeout=5)
    report = exotel.result
    assert report.ok, report.summary()
    assert report.hung_up_by == "bot" and report.close_code == 1000
    assert report.audio_cut == 0
    start = report.onset(after=0.5)
    assert start is not None
    assert report.duration >= start + 0.6 - 0.02
    assert dominant_frequency(report.heard_between(start + 0.05, start + 0.55), rate) == pytest.approx(
        880, abs=5
    )
    assert bot.calls[0].ended is not None and bot.calls[0].ended.reason == "hangup"


# --- failures stay in their call ---


class Crasher(Recorder):
    async def on_dtmf(self, call: Call, digit: str) -> None:
        raise RuntimeError("bot bug")


async def test_a_crashing_handler_ends_only_its_own_call(caplog: pytest.LogCaptureFixture) -> None:
    class Mixed(Crasher, Echo):
        pass

    bot = recorder(Mixed)
    voice = tone(300, 3.0, 8000, amplitude=0.3)
    async with (
        serve_handler(bot) as url,
        FakeExotel(url, sample_rate=8000, caller_audio=voice) as healthy,
        FakeExotel(url, sample_rate=8000) as doomed,
    ):
        await doomed.press("1", at=0.5)
        await doomed.wait_closed(timeout=5)
        await healthy.run(2.5)
        assert not healthy.closed
    assert doomed.result.close_code == 1011
    assert healthy.result.ok and healthy.result.hung_up_by == "caller"
    assert healthy.result.onset(after=0.3, threshold=0.1) is not None  # it kept echoing
    failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "bot bug" in str(failures[0].exc_info[1])
    assert getattr(failures[0], "call_sid", None) == doomed.result.call_sid


class SpawnCrasher(Recorder):
    async def on_start(self, call: Call) -> None:
        await super().on_start(call)

        async def work() -> None:
            raise ValueError("background bug")

        call.spawn(work())


async def test_a_failing_spawned_task_ends_its_call_with_1011() -> None:
    bot = recorder(SpawnCrasher)
    async with serve_handler(bot) as url, FakeExotel(url) as exotel:
        await exotel.wait_closed(timeout=5)
    assert exotel.result.close_code == 1011
    assert bot.calls[0].ended is not None and bot.calls[0].ended.reason == "error"


class SpawnThenCancel(Recorder):
    """Spawns work and cancels it at once, before its first step, as a call ending then would."""

    async def on_start(self, call: Call) -> None:
        await super().on_start(call)

        async def work() -> None:
            await asyncio.sleep(60)

        coroutine = work()
        task = call.spawn(coroutine)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        type(self).notes.append(inspect.getcoroutinestate(coroutine))
        await call.hangup()


async def test_spawned_work_cancelled_before_it_started_is_closed_not_left_unawaited() -> None:
    # Otherwise Python warns "coroutine ... was never awaited" when it is collected.
    bot = recorder(SpawnThenCancel)
    async with serve_handler(bot) as url, FakeExotel(url) as exotel:
        await exotel.wait_closed(timeout=5)
    assert bot.notes == [inspect.CORO_CLOSED]


class Stopper(Recorder):
    async def on_stop(self, call: Call, reason: str) -> None:
        type(self).notes.append(reason)


async def until_noted(bot: type[Recorder], count: int) -> None:
    """Wait (up to ~2 s) until ``bot`` has ``count`` notes: the server sees a close after the client."""
    for _ in range(100):
        if len(bot.notes) >= count:
            return
        await asyncio.sleep(0.02)  # polling for the server side to observe the close


@pytest.mark.parametrize(
    ("how", "reason"),
    [("callended", "callended"), ("stopped", "stopped"), (None, "socket_closed"), ("abort", "socket_closed")],
)
async def test_every_way_a_call_ends_reaches_on_stop(how: str | None, reason: str) -> None:
    bot = recorder(Stopper)
    async with serve_handler(bot) as url:
        exotel = FakeExotel(url)
        async with exotel:
            await exotel.run(0.3)
            if how == "abort":
                await exotel.hangup(None, abort=True)
            else:
                await exotel.hangup(how)
        await until_noted(bot, 1)
    assert bot.notes == [reason]


class LimitWatcher(Stopper):
    async def on_start(self, call: Call) -> None:
        await super().on_start(call)
        type(self).notes.append(call.session_time_left)


@pytest.mark.parametrize(("how", "reason"), [("stopped", "session_limit"), (None, "session_limit")])
async def test_a_stream_cut_at_the_session_limit_ends_with_its_own_reason(
    how: str | None, reason: str
) -> None:
    # A 5.3 s limit is reached, less its 5 s slack, 0.3 s into the stream: a 1 s call is cut by it.
    bot = recorder(LimitWatcher)
    async with serve_handler(bot, session_limit=5.3) as url:
        async with FakeExotel(url) as exotel:
            await exotel.run(1.0)
            await exotel.hangup(how)
        await until_noted(bot, 2)
    time_left, ended = bot.notes
    assert isinstance(time_left, float) and 4.3 < time_left <= 5.3
    assert ended == reason


# --- a slow handler never stalls the reader ---


class Sleepy(Recorder):
    sample_rate = 8000
    max_queued_frames = 10

    async def on_audio(self, call: Call, frame: AudioFrame) -> None:
        if frame.index == 0:
            await asyncio.sleep(2.0)  # a hook that blocks, as a careless bot would

    async def on_dtmf(self, call: Call, digit: str) -> None:
        type(self).notes.append((digit, call.stats.frames_in, call.stats.frames_dropped))


async def test_a_slow_handler_drops_oldest_audio_but_never_control_events() -> None:
    bot = recorder(Sleepy)
    async with serve_handler(bot) as url, FakeExotel(url, sample_rate=8000) as exotel:
        await exotel.press("7", at=0.8)
        await exotel.run(2.6)
    (note,) = bot.notes
    digit, frames_in, dropped = note
    assert digit == "7"
    # The reader kept reading while the hook slept: ~2 s of 20 ms frames arrived, all but the queue's
    # 10 were dropped, and the DTMF still came through.
    assert frames_in >= 90
    assert dropped >= frames_in - 10 - 5
    assert exotel.result.ok


# --- server policy: probes, auth, admission cap ---


async def test_healthz_answers_on_the_media_port() -> None:
    async with Server(Recorder, ServeConfig(host="127.0.0.1", port=0)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 200")


async def test_basic_auth_is_required_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bot = recorder()
    async with serve_handler(bot, auth="exotel:s3cr3t-token") as url:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(
                url,
                additional_headers={"Authorization": "Basic " + base64.b64encode(b"exotel:nope").decode()},
            ):
                pass
        async with FakeExotel(url, auth=("exotel", "s3cr3t-token")) as exotel:
            await exotel.run(0.3)
    assert len(bot.calls) == 1
    server_side = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("websockets.client")
    )
    assert "Authorization: [redacted]" in server_side  # the header was logged, but not its value
    assert "s3cr3t-token" not in server_side
    assert base64.b64encode(b"exotel:s3cr3t-token").decode() not in server_side


async def test_calls_beyond_the_cap_get_503_and_the_slot_frees_up() -> None:
    bot = recorder()
    async with serve_handler(bot, max_calls=2) as url:
        async with FakeExotel(url) as first, FakeExotel(url) as second:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 503
            await first.run(0.2)
            await second.run(0.2)
        async with FakeExotel(url) as third:
            await third.run(0.2)
    assert len(bot.calls) == 3


async def test_drain_lets_live_calls_finish_then_closes_the_rest_with_1001() -> None:
    bot = recorder()
    async with Server(bot, ServeConfig(host="127.0.0.1", port=0)) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with FakeExotel(url) as exotel:
            drain = asyncio.create_task(server.drain(timeout=1.0))
            await exotel.run(0.3)
            assert not exotel.closed  # still live during the drain window
            with pytest.raises(OSError):
                async with connect(url, open_timeout=2):
                    pass
            await exotel.wait_closed(timeout=3)
            await drain
    assert exotel.result.close_code == 1001
    assert bot.calls[0].ended is not None and bot.calls[0].ended.reason == "shutdown"
