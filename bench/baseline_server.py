"""The load bench's baseline: a bare ``websockets`` server that echoes Exotel media, re-encoded.

    python bench/baseline_server.py --host 127.0.0.1 --port 8081

The least a Python server must do for an Exotel echo call: ``websockets`` (new asyncio API) on uvloop,
``compression=None``; each text message is parsed with stdlib ``json``; each ``media`` payload is base64
decoded and sent straight back, base64 encoded again, in the compact snake_case shape voicebot writes.
No resampling, no jitter buffer, no framing, no pacing, no marks. voicebot also parses with stdlib
``json`` and ``binascii``, so the two servers pay the same per-message parsing price.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
from collections.abc import Sequence

import uvloop
from websockets.asyncio.server import ServerConnection, serve


async def echo(connection: ServerConnection) -> None:
    """Serve one call: echo every media payload until ``stop`` or the socket closes."""
    stream_sid = ""
    async for message in connection:
        event = json.loads(message)
        kind = event.get("event")
        if kind == "media":
            pcm = base64.b64decode(event["media"]["payload"])
            payload = base64.b64encode(pcm).decode("ascii")
            reply = {"event": "media", "stream_sid": stream_sid, "media": {"payload": payload}}
            await connection.send(json.dumps(reply, separators=(",", ":")))
        elif kind == "start":
            stream_sid = str(event.get("stream_sid", ""))
        elif kind == "stop":
            return


async def serve_until_signalled(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(echo, host, port, compression=None, max_size=1 << 20, max_queue=64, server_header=None):
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--host``/``--port`` and serve on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve_until_signalled(args.host, args.port))


if __name__ == "__main__":
    main()
