"""The collections bot: a payment reminder with a two-key menu, for outbound campaigns.

* It reads ``customer_id`` and ``amount`` from the call's custom parameters (the campaign puts them on
  the stream URL from the contact list), plays a reminder, then the menu: **1** to confirm payment
  today, **2** to ask for a call back.
* A key pressed while a prompt plays interrupts it (``call.clear()``): barge-in.
* Silence after the menu: it re-prompts once, then says goodbye (outcome ``no-response``).
* Any other key repeats the menu. A caller who hangs up before choosing leaves ``hung-up``.
* It records the outcome (``confirmed``, ``callback``, ``no-response``, ``hung-up``) in the campaign
  store as soon as it is known, then plays the goodbye, waits until it has been heard, and hangs up.

Prompts are synthesised tone melodies standing in for speech (the text a TTS would say is logged);
override :meth:`CollectionsBot.speak` to use real TTS. Bind the bot to a campaign's store with
``CollectionsBot.using("campaign.sqlite")`` (see ``voicebot.campaign.handler``).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import ClassVar

import numpy as np

from voicebot import Call, Playback, silence, tone
from voicebot.campaign.handler import CampaignHandler

__all__ = ["CollectionsBot"]

#: Pentatonic notes the stand-in "speech" is made of.
_NOTES = (392.0, 440.0, 523.0, 587.0, 659.0, 784.0)


class CollectionsBot(CampaignHandler):
    """Payment reminder: 1 = paying today, 2 = call me back; silence re-prompts once."""

    sample_rate = 8000
    silence_timeout: ClassVar[float] = 6.0
    """Seconds to wait for a key after the menu has been heard."""
    note_seconds: ClassVar[float] = 0.16
    """Length of each tone in a synthesised prompt (shorter = quicker calls, e.g. in tests)."""
    max_notes: ClassVar[int] = 8

    def __init__(self) -> None:
        super().__init__()
        self.customer_id = ""
        self.amount = ""
        self.menu: Playback | None = None
        self.reprompted = False
        self.ending = False
        self.keys: list[str] = []
        self.key_pressed = asyncio.Event()
        self.idle_timer: asyncio.Task[None] | None = None

    # --- prompts ---------------------------------------------------------------------------------------

    def speak(self, text: str) -> np.ndarray:
        """Audio for ``text`` at ``sample_rate``: a short melody derived from the text (a TTS stand-in)."""
        seed = zlib.crc32(text.encode())
        count = min(self.max_notes, 2 + len(text) // 12)
        parts: list[np.ndarray] = []
        for index in range(count):
            frequency = _NOTES[(seed >> (3 * index)) % len(_NOTES)]
            parts.append(tone(frequency, self.note_seconds, self.sample_rate, amplitude=0.4))
            parts.append(silence(0.03, self.sample_rate))
        return np.concatenate(parts)

    def say(self, call: Call, text: str) -> Playback:
        """Queue ``text`` for the caller (without waiting) and log what is said."""
        call.log.info("bot says: %s", text)
        return call.play_nowait(self.speak(text))

    # --- hooks -----------------------------------------------------------------------------------------

    async def on_start(self, call: Call) -> None:
        params = call.custom_parameters
        self.customer_id = params.get("customer_id", "")
        self.amount = params.get("amount", "")
        due = f"a payment of {self.amount} is due" if self.amount else "a payment is due"
        self.say(call, f"Hello, this is a reminder for customer {self.customer_id}: {due} on your account.")
        self.play_menu(call)

    def play_menu(self, call: Call) -> None:
        """Queue the menu, and start waiting for a key once it has been heard."""
        self.key_pressed.clear()
        self.menu = self.say(call, "Press 1 if you will pay today. Press 2 and we will call you back.")
        if self.idle_timer is not None and self.idle_timer is not asyncio.current_task():
            self.idle_timer.cancel()
        self.idle_timer = call.spawn(self.wait_for_key(call, self.menu), name="collections-idle")

    async def wait_for_key(self, call: Call, menu: Playback) -> None:
        """After the menu is heard: no key within ``silence_timeout`` re-prompts once, then gives up."""
        await menu.wait()
        if menu.interrupted:
            return
        try:
            async with asyncio.timeout(self.silence_timeout):
                await self.key_pressed.wait()
            return
        except TimeoutError:
            pass
        if self.ending:
            return
        if not self.reprompted:
            self.reprompted = True
            self.play_menu(call)
            return
        self.record_outcome(call, "no-response")
        await self.goodbye(call, "We did not hear from you. We will try again later. Goodbye.")

    async def on_dtmf(self, call: Call, digit: str) -> None:
        if self.ending:
            return
        self.keys.append(digit)
        self.key_pressed.set()
        if call.pending_playbacks:
            call.clear()  # barge-in: the caller has chosen; stop the prompt now
        if digit == "1":
            self.record_outcome(call, "confirmed")
            await self.goodbye(call, "Thank you. We have noted that you will pay today. Goodbye.")
        elif digit == "2":
            self.record_outcome(call, "callback")
            await self.goodbye(call, "Thank you. An agent will call you back. Goodbye.")
        else:
            self.play_menu(call)

    async def on_stop(self, call: Call, reason: str) -> None:
        if self.outcome is None:
            self.record_outcome(
                call, "hung-up" if reason in ("callended", "socket_closed") else "interrupted"
            )

    async def goodbye(self, call: Call, text: str) -> None:
        """Say ``text``, wait until the caller has heard it, then hang up."""
        if self.ending:
            return
        self.ending = True
        if self.idle_timer is not None and self.idle_timer is not asyncio.current_task():
            self.idle_timer.cancel()
        call.log.info("bot says: %s", text)
        await call.play(self.speak(text))  # returns once the caller has heard it
        await call.hangup()
