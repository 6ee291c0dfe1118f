"""``python -m voicebot emulate``: run the local Exotel emulator until SIGINT/SIGTERM.

It answers the dialer's API calls, plays scripted callees (``--scenarios file.json``), streams answered
calls to the bot with ``FakeExotel``, and posts status callbacks. Credentials are taken from
``EXOTEL_ACCOUNT_SID``/``EXOTEL_API_KEY``/``EXOTEL_API_TOKEN`` when all are set, else emulator defaults,
which are printed with the ``export`` line that points ``voicebot dial`` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voicebot.cli import Subparsers
    from voicebot.emulator import EmulatorConfig, Scenarios

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``emulate`` and its flags."""
    parser = subparsers.add_parser(
        "emulate",
        help="run a local stand-in for Exotel's API, callees and media streams",
        description="Emulate Exotel on this machine: Calls/connect, Call Details and call lists with Basic "
        "auth, validation and a rate limit; scripted callees; streams to the bot; recordings; status "
        "callbacks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9300, help="port to listen on, 0 = any (default 9300)")
    parser.add_argument(
        "--scenarios", metavar="FILE", help='callee scenarios: {"default": {…}, "numbers": {…}}'
    )
    parser.add_argument("--recordings-dir", metavar="DIR", help="keep recordings here (default: a temp dir)")
    parser.add_argument("--public-url", metavar="URL", help="base of RecordingUrl (default http://host:port)")
    parser.add_argument("--rate-limit", type=int, default=200, metavar="N", help="API requests per minute")
    parser.add_argument(
        "--callback-retry-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wait before a callback retry",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Serve until a signal."""
    from voicebot.emulator import EmulatorConfig, Scenarios
    from voicebot.logs import configure_logging

    configure_logging(args.log_level)
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        rate_limit_per_minute=args.rate_limit,
        public_url=args.public_url,
        recordings_dir=args.recordings_dir,
        callback_retry_delay=args.callback_retry_delay,
    )
    names = ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN")
    from_env = all(environ.get(name) for name in names)
    if from_env:
        config = dataclasses.replace(
            config,
            account_sid=environ["EXOTEL_ACCOUNT_SID"],
            api_key=environ["EXOTEL_API_KEY"],
            api_token=environ["EXOTEL_API_TOKEN"],
        )
    scenarios = Scenarios.from_file(args.scenarios) if args.scenarios else Scenarios()
    asyncio.run(_serve(config, scenarios, show_credentials=not from_env))
    return 0


async def _serve(config: EmulatorConfig, scenarios: Scenarios, *, show_credentials: bool) -> None:
    from voicebot.emulator import Emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(config, scenarios) as emulator:
        print(f"emulating Exotel on {emulator.base_url}", flush=True)
        if show_credentials:
            print(
                f"  export EXOTEL_BASE_URL={emulator.base_url} EXOTEL_ACCOUNT_SID={config.account_sid} "
                f"EXOTEL_API_KEY={config.api_key} EXOTEL_API_TOKEN={config.api_token}",
                flush=True,
            )
        else:
            print(f"  export EXOTEL_BASE_URL={emulator.base_url}  (credentials from EXOTEL_*)", flush=True)
        await stop.wait()
