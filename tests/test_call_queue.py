"""The handler's inbound queue: arrival order, oldest audio dropped when full, control never dropped."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from voicebot.call import AudioFrame, CallEnded, _audio_frame, _InboundQueue
from voicebot.events import Dtmf


def frames(first: int, count: int) -> list[AudioFrame]:
    return [AudioFrame(np.zeros(160, dtype=np.int16), 8000, index) for index in range(first, first + count)]


def drain(queue: _InboundQueue) -> list[object]:
    out = []
    while (event := queue.get_nowait()) is not None:
        out.append(event.index if isinstance(event, AudioFrame) else event)
    return out


async def test_events_come_out_in_arrival_order() -> None:
    queue = _InboundQueue(max_audio=10)
    press = Dtmf(digit="5")
    queue.put_frames(frames(0, 2))
    queue.put_control(press)
    queue.put_frames(frames(2, 1))
    assert drain(queue) == [0, 1, press, 2]
    assert queue.dropped == 0


async def test_a_full_queue_drops_the_oldest_audio_and_keeps_control_events_in_place() -> None:
    queue = _InboundQueue(max_audio=3)
    press, end = Dtmf(digit="#"), CallEnded("callended")
    queue.put_control(press)
    queue.put_frames(frames(0, 2))
    queue.put_frames(frames(2, 3))  # 5 frames for 3 places: 0 and 1 go, behind the DTMF
    queue.put_control(end)
    queue.put_frames(frames(5, 1))  # and now 2
    assert drain(queue) == [press, 3, 4, end, 5]
    assert queue.dropped == 3


async def test_drop_audio_forgets_frames_but_not_control_events() -> None:
    queue = _InboundQueue(max_audio=10)
    press = Dtmf(digit="1")
    queue.put_frames(frames(0, 2))
    queue.put_control(press)
    queue.put_frames(frames(2, 2))
    assert queue.drop_audio() == 4
    queue.put_frames(frames(4, 1))
    assert drain(queue) == [press, 4]
    assert queue.drop_audio() == 0


async def test_a_waiting_handler_wakes_for_audio_and_for_control_events() -> None:
    queue = _InboundQueue(max_audio=10)
    press = Dtmf(digit="9")
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)  # the handler is now waiting on an empty queue
    assert not waiting.done()
    queue.put_frames(frames(0, 2))
    first = await asyncio.wait_for(waiting, 5)
    assert isinstance(first, AudioFrame) and first.index == 0
    assert (await queue.get()).index == 1  # type: ignore[union-attr]
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_control(press)
    assert await asyncio.wait_for(waiting, 5) is press


def test_the_pipelines_frames_are_the_same_frozen_audio_frames_a_bot_would_build() -> None:
    samples = np.arange(320, dtype=np.int16)
    made = _audio_frame(samples, 16000, 7)
    built = AudioFrame(samples, 16000, 7)
    assert type(made) is AudioFrame
    names = [field.name for field in dataclasses.fields(AudioFrame)]
    assert [getattr(made, name) is getattr(built, name) for name in names] == [True] * len(names)
    assert repr(made) == repr(built) and made.duration == 0.02 and made.timestamp == pytest.approx(0.14)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.index = 8  # type: ignore[misc]
