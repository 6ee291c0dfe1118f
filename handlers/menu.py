"""A DTMF menu bot: prompts, barge-in, awaited playbacks, a silence timeout, and a clean goodbye.

* On start it plays a welcome prompt and a menu prompt (without blocking the hooks, so the caller can
  press a key mid-prompt).
* A key pressed while a prompt is playing interrupts it (``call.clear()``): the caller is not made to
  listen to the rest of a menu they have already answered.
* ``1``, ``2`` and ``3`` each play their own "department" prompt (a different melody), then the menu
  again. ``0`` repeats the menu. ``#`` or ``9`` says goodbye and ends the call once the goodbye has been
  heard.
* If the caller does nothing for ``silence_timeout`` seconds after the menu, it re-prompts once, then
  says goodbye.

Prompts are synthesized tone sequences so the example runs without TTS; swap ``prompt()`` for your TTS.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import numpy as np

from voicebot import Call, Handler, Playback, silence, tone


def prompt(notes: list[float], sample_rate: int, note_seconds: float = 0.18) -> np.ndarray:
    """A short melody standing in for a spoken prompt: one tone per note, 40 ms gaps between."""
    parts: list[np.ndarray] = []
    for frequency in notes:
        parts.append(tone(frequency, note_seconds, sample_rate, amplitude=0.4))
        parts.append(silence(0.04, sample_rate))
    return np.concatenate(parts)


class MenuBot(Handler):
    """Press 1, 2 or 3 for a department, 0 to repeat, # to hang up."""

    sample_rate = 8000
    silence_timeout = 6.0
    departments: ClassVar[dict[str, list[float]]] = {
        "1": [523.0, 659.0, 784.0],
        "2": [784.0, 659.0, 523.0],
        "3": [440.0, 880.0, 440.0],
    }

    def __init__(self) -> None:
        self.playing: Playback | None = None
        self.choices: list[str] = []
        self.reprompted = False
        self.ending = False
        self.idle_timer: asyncio.Task[None] | None = None

    async def on_start(self, call: Call) -> None:
        call.play_nowait(prompt([392.0, 523.0], self.sample_rate))
        self.play_menu(call)

    def play_menu(self, call: Call) -> None:
        """Queue the menu prompt and restart the silence timer once it has been heard."""
        self.playing = call.play_nowait(prompt([440.0, 440.0, 494.0, 523.0], self.sample_rate))
        self.restart_idle_timer(call, self.playing)

    def restart_idle_timer(self, call: Call, after: Playback) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = call.spawn(self.wait_for_key(call, after), name="menu-idle-timer")

    async def wait_for_key(self, call: Call, after: Playback) -> None:
        """After the prompt is heard, wait for a key; re-prompt once, then give up."""
        await after.wait()
        if after.interrupted:
            return
        await asyncio.sleep(self.silence_timeout)  # a timeout, not pacing: nothing else to wait on
        if self.reprompted:
            await self.goodbye(call)
        else:
            self.reprompted = True
            self.play_menu(call)

    async def on_dtmf(self, call: Call, digit: str) -> None:
        if self.ending:
            return
        if self.playing is not None and not self.playing.done():
            call.clear()  # barge-in: the caller already chose
        self.choices.append(digit)
        if digit in ("#", "9"):
            await self.goodbye(call)
        elif digit in self.departments:
            self.playing = call.play_nowait(prompt(self.departments[digit], self.sample_rate))
            call.play_nowait(silence(0.3, self.sample_rate))
            self.play_menu(call)
        else:
            self.play_menu(call)

    async def goodbye(self, call: Call) -> None:
        """Play the goodbye, wait until it has been heard, then end the call."""
        if self.ending:
            return
        self.ending = True
        if self.idle_timer is not None and self.idle_timer is not asyncio.current_task():
            self.idle_timer.cancel()
        await call.play(prompt([523.0, 392.0, 262.0], self.sample_rate))
        await call.hangup()
