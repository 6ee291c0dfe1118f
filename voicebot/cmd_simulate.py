"""``python -m voicebot simulate``: one call against a bot, with no phone, no Exotel account, no tunnel.

``FakeExotel`` plays Exotel's side of the stream (``voicebot.testing``): the caller speaks ``--in``
(any WAV rate and width, converted to the stream rate; silence without it), presses the keys of
``--dtmf``, and hangs up at ``--duration`` unless the bot hangs up first. What the caller heard is written
to ``--out`` at the stream rate, and the call report is printed.

The bot is a ``--handler`` served in-process on a free port, or a running server at ``--url``.

Exit status: 0 when the call went by Exotel's rules and ended cleanly; 1 when the bot broke a rule,
ended the call with a close code other than 1000 (1011 is a crashed handler), dropped the connection, or
could not be reached; 2 for bad input (a missing WAV, a malformed ``--dtmf``, …), with a message that
names the parameter.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal

from voicebot.errors import ConfigError
from voicebot.events import SUPPORTED_RATES

if TYPE_CHECKING:
    from voicebot.cli import Subparsers
    from voicebot.testing import CallReport

__all__ = ["add_parser", "run"]

DEFAULT_HANDLER: Final = "handlers.echo:EchoBot"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_INTERRUPTED: Final = 130


def add_parser(subparsers: Subparsers) -> None:
    """Add ``simulate`` and its flags."""
    parser = subparsers.add_parser(
        "simulate",
        help="call a bot with a simulated Exotel: play a WAV as the caller, record what the bot said",
        description="Call a bot the way Exotel does (AgentStream protocol, real-time pacing, playout "
        "queue, marks, clear) and check every message it sends against Exotel's rules. The caller "
        "plays --in (silent without it), presses --dtmf keys, and hangs up at --duration unless the bot "
        "hangs up first. What the caller heard goes to --out.",
        epilog="Exit status: 0 OK; 1 protocol violations, an unclean end (close code other than 1000, "
        "a dropped connection) or an unreachable --url; 2 bad input.",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--handler",
        metavar="SPEC",
        help="the bot, served in-process: module:Class or path/to/file.py:Class "
        f"[env VOICEBOT_HANDLER; default {DEFAULT_HANDLER}]",
    )
    target.add_argument("--url", help="call a running server instead: ws://host:port/path")
    parser.add_argument(
        "--in",
        dest="wav_in",
        metavar="WAV",
        help="what the caller says (PCM WAV, any rate and width); without it the caller is silent",
    )
    parser.add_argument(
        "--out", dest="wav_out", metavar="WAV", help="write what the caller heard (16-bit, stream rate)"
    )
    parser.add_argument(
        "--rate",
        type=int,
        choices=SUPPORTED_RATES,
        default=8000,
        help="stream sample rate in Hz [default 8000]",
    )
    parser.add_argument(
        "--encoding", choices=("pcm16", "mulaw"), default="pcm16", help="stream encoding [default pcm16]"
    )
    parser.add_argument(
        "--dtmf", default="", metavar="SCRIPT", help='key presses as KEY@SECONDS, e.g. "1@2.5,#@6"'
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="the caller hangs up at this stream time [default: end of --in or last key, plus --tail]",
    )
    parser.add_argument(
        "--tail",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="without --duration, how long the caller stays after speaking and pressing keys [3]",
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="delay each caller media message by a random 0..MS ms [0]",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for --jitter-ms, so a run can be repeated [0]"
    )
    parser.add_argument(
        "--chunk-ms",
        type=int,
        default=100,
        metavar="MS",
        help="caller audio per media message, as Exotel sends it [100]",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a custom parameter in start (repeatable, at most 3)",
    )
    variants = parser.add_argument_group("wire variants seen in the field")
    variants.add_argument(
        "--int-scalars", action="store_true", help="numbers as JSON integers instead of strings"
    )
    variants.add_argument(
        "--camel-case", action="store_true", help="camelCase keys (streamSid, mediaFormat, ...)"
    )
    variants.add_argument(
        "--no-stream-sid", action="store_true", help="leave stream_sid out (it is documented optional)"
    )
    variants.add_argument(
        "--params-format",
        choices=("object", "json", "query"),
        default="object",
        help="custom_parameters as an object, a JSON string or a query string [object]",
    )
    variants.add_argument(
        "--url-rate",
        metavar="RATE",
        help="the sample-rate put in the URL: a number (to disagree with start) or 'omit' "
        "[default: the stream rate]",
    )
    parser.add_argument(
        "--strict-minimum",
        action="store_true",
        help="chunks under Exotel's 3200-byte minimum are errors, not warnings",
    )
    parser.add_argument("--log-level", default="warning", help="log level of the in-process server [warning]")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Place the call, print the report, write ``--out``; return the exit status."""
    from websockets.exceptions import InvalidHandshake, InvalidURI

    from voicebot.logs import configure_logging
    from voicebot.testing import Faults, WireOptions, simulate

    target: str = args.url or args.handler or environ.get("VOICEBOT_HANDLER") or DEFAULT_HANDLER
    if args.url is not None and not args.url.startswith(("ws://", "wss://")):
        raise ConfigError(f"url: must start with ws:// or wss://, got {args.url!r}")
    if args.tail < 0:
        raise ConfigError(f"tail: must be >= 0 seconds, got {args.tail}")
    wire = WireOptions(
        int_scalars=args.int_scalars,
        camel_case=args.camel_case,
        omit_stream_sid=args.no_stream_sid,
        custom_parameters_format=args.params_format,
        url_sample_rate=_url_rate(args.url_rate),
    )
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level: {args.log_level!r} is not a logging level")
    configure_logging(args.log_level)
    try:
        report = asyncio.run(
            simulate(
                target,
                wav_in=args.wav_in,
                wav_out=args.wav_out,
                rate=args.rate,
                encoding=args.encoding,
                dtmf_script=args.dtmf,
                jitter_ms=args.jitter_ms,
                duration=args.duration,
                tail=args.tail,
                wire=wire,
                faults=Faults(seed=args.seed),
                custom_parameters=_params(args.params),
                chunk_ms=args.chunk_ms,
                strict_minimum=args.strict_minimum,
            )
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except InvalidURI as exc:
        raise ConfigError(f"url: {exc}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        print(f"voicebot: error: cannot call {target}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    if args.wav_out is not None:
        seconds = len(report.heard) / report.sample_rate
        print(f"heard: {seconds:.2f} s at {report.sample_rate} Hz written to {args.wav_out}")
    problem = _unclean_end(report)
    if problem:
        print(f"voicebot: the call did not end cleanly: {problem}", file=sys.stderr)
    return EXIT_OK if report.ok and not problem else EXIT_FAILED


def _unclean_end(report: CallReport) -> str:
    """Why the call's end is a failure (a crash, a dropped connection), or "" if it ended cleanly."""
    if report.hung_up_by == "network":
        return f"the connection was lost ({report.hangup_reason})"
    if report.close_code is not None and report.close_code != 1000:
        reason = f" {report.close_reason!r}" if report.close_reason else ""
        who = "the bot" if report.hung_up_by == "bot" else "the connection"
        return f"{who} closed with code {report.close_code}{reason}" + (
            " (the handler failed: see its log)" if report.close_code == 1011 else ""
        )
    return ""


def _url_rate(text: str | None) -> int | Literal["same", "omit"]:
    if text is None:
        return "same"
    if text == "omit":
        return "omit"
    try:
        rate = int(text)
    except ValueError:
        rate = 0
    if rate <= 0:
        raise ConfigError(f"url_rate: expected a positive number of Hz or 'omit', got {text!r}")
    return rate


def _params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"param: expected KEY=VALUE, got {item!r}")
        params[key] = value
    return params
