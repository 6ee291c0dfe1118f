"""The echo bot: a greeting tone, then the caller's own voice back; ``#`` ends the call.

Its behaviour is a contract that tests, the simulator and the README rely on:

* on start it plays a 0.5 s 440 Hz tone;
* it echoes the caller's audio back (what was said during the greeting is skipped);
* on DTMF ``#`` it plays a 0.3 s 880 Hz tone and hangs up once that has been heard.
"""

from __future__ import annotations

from voicebot import AudioFrame, Call, Handler, tone


class EchoBot(Handler):
    """Greets with a beep, repeats what it hears, says goodbye with a higher beep on ``#``."""

    sample_rate = 16_000

    async def on_start(self, call: Call) -> None:
        await call.play(tone(440, 0.5, self.sample_rate))
        call.drop_queued_audio()

    async def on_audio(self, call: Call, frame: AudioFrame) -> None:
        call.play_nowait(frame.samples)

    async def on_dtmf(self, call: Call, digit: str) -> None:
        if digit == "#":
            await call.play(tone(880, 0.3, self.sample_rate))
            await call.hangup()
