"""``python -m voicebot dial``: place one Connect Voice AI call and print its SID and status.

Credentials come from ``EXOTEL_ACCOUNT_SID``, ``EXOTEL_API_KEY`` and ``EXOTEL_API_TOKEN`` only (never
flags, which show in ``ps``); ``--base-url`` / ``EXOTEL_BASE_URL`` points it at ``voicebot emulate``.
Exit status: 0 placed, 1 refused or unreachable, 2 bad input, 3 outcome unknown (the request may have
placed a call; it was looked up and none was found yet, so check before dialling again).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from voicebot.errors import ConfigError

if TYPE_CHECKING:
    from voicebot.cli import Subparsers
    from voicebot.dialer.api import CallResource

__all__ = ["add_parser", "run"]

EXIT_REFUSED = 1
EXIT_UNKNOWN = 3


def add_parser(subparsers: Subparsers) -> None:
    """Add ``dial`` and its flags."""
    parser = subparsers.add_parser(
        "dial",
        help="place one outbound call that streams to a bot (Exotel Connect Voice AI)",
        description="Dial a number with Exotel's Connect Voice AI API; on answer Exotel opens the stream to "
        "--stream-url. Prints the Call SID and status. Credentials come from EXOTEL_ACCOUNT_SID, "
        "EXOTEL_API_KEY and EXOTEL_API_TOKEN; EXOTEL_SUBDOMAIN picks the region (in, sg).",
    )
    parser.add_argument("--to", required=True, metavar="NUMBER", help="the customer's number (Exotel's From)")
    parser.add_argument("--caller-id", required=True, metavar="EXOPHONE", help="the ExoPhone shown to them")
    parser.add_argument("--stream-url", required=True, metavar="URL", help="the bot's ws:// or wss:// URL")
    parser.add_argument(
        "--sample-rate", type=int, metavar="HZ", help="append sample-rate (8000, 16000, 24000)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a custom parameter for the bot, appended to the stream URL (at most 3)",
    )
    parser.add_argument("--record", action="store_true", help="record the call")
    parser.add_argument("--recording-channels", choices=("single", "dual"))
    parser.add_argument("--time-limit", type=int, metavar="SECONDS", help="longest call, 1-14400 s")
    parser.add_argument("--time-out", type=int, metavar="SECONDS", help="how long to ring")
    parser.add_argument(
        "--custom-field", metavar="TEXT", help="returned in the terminal callback (≤ 128 chars)"
    )
    parser.add_argument("--status-callback", metavar="URL", help="where Exotel posts status callbacks")
    parser.add_argument(
        "--status-callback-event",
        action="append",
        default=[],
        choices=("answered", "terminal", "ringing"),
        help="a status callback event to subscribe to (repeatable; default: terminal with --status-callback)",
    )
    parser.add_argument(
        "--status-callback-content-type",
        choices=("application/json", "multipart/form-data"),
        default="application/json",
    )
    parser.add_argument("--stream-name", metavar="NAME", help="a label for the stream (≤ 32 chars)")
    parser.add_argument(
        "--base-url", metavar="URL", help="API base URL, e.g. the emulator's [env EXOTEL_BASE_URL]"
    )
    parser.add_argument(
        "--region", choices=("in", "sg"), help="API region [env EXOTEL_SUBDOMAIN; default in]"
    )
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="HTTP request timeout (default 15)")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Place the call; print ``SID STATUS`` on stdout."""
    return asyncio.run(_dial(args, environ))


def _parameters(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param: {pair!r} is not KEY=VALUE")
        params[key] = value
    return params


async def _dial(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voicebot.dialer.client import Dialer
    from voicebot.dialer.config import ExotelConfig
    from voicebot.dialer.errors import ExotelApiError, OutcomeUnknown

    config = ExotelConfig.from_env(
        environ, base_url=args.base_url, region=args.region, request_timeout=args.timeout
    )
    events = args.status_callback_event or (["terminal"] if args.status_callback else [])
    async with Dialer(config) as dialer:
        try:
            call = await dialer.connect(
                to=args.to,
                caller_id=args.caller_id,
                stream_url=args.stream_url,
                sample_rate=args.sample_rate,
                custom_parameters=_parameters(args.param) or None,
                record=True if args.record else None,
                recording_channels=args.recording_channels,
                time_limit=args.time_limit,
                time_out=args.time_out,
                custom_field=args.custom_field,
                status_callback=args.status_callback,
                status_callback_content_type=args.status_callback_content_type,
                status_callback_events=events,
                stream_name=args.stream_name,
            )
        except OutcomeUnknown as unknown:
            print(f"voicebot: dial outcome unknown: {unknown}; looking the call up", file=sys.stderr)
            try:
                found = await dialer.reconcile(unknown)
            except ExotelApiError as exc:
                print(
                    f"voicebot: cannot look the call up: {exc}; check before dialling again", file=sys.stderr
                )
                return EXIT_UNKNOWN
            if found is None:
                print("voicebot: no such call found (yet); check before dialling again", file=sys.stderr)
                return EXIT_UNKNOWN
            _print_call(found)
            return 0
        except ExotelApiError as exc:
            print(f"voicebot: dial failed: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    _print_call(call)
    return 0


def _print_call(call: CallResource) -> None:
    print(f"{call.sid} {call.status}", flush=True)
