"""The command line: ``python -m voicebot serve | version | …``.

The only module that reads ``os.environ``. Every ``serve`` flag has a ``VOICEBOT_*`` fallback; flags
win over variables, which win over defaults.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

from voicebot._version import __version__
from voicebot.config import OPTIONS, Option, ServeConfig
from voicebot.errors import ConfigError

__all__ = ["build_parser", "main"]

log = logging.getLogger("voicebot.cli")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_serve(subparsers: Subparsers) -> None:
    defaults = ServeConfig()
    parser = subparsers.add_parser(
        "serve",
        help="answer Exotel streams with a bot",
        description="Serve Exotel AgentStream WebSocket calls with a Handler subclass. Each flag falls back "
        "to the environment variable shown, then to the default.",
    )
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        shown = "none" if default is None else default
        parser.add_argument(
            option.flag,
            dest=option.field,
            default=None,
            metavar=option.metavar or option.field.upper(),
            type=_argument_type(option),
            help=f"{option.help} [env {option.env}; default {shown}]",
        )


def _argument_type(option: Option) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts with the option's converter and reports ConfigErrors."""

    def convert(text: str) -> Any:
        try:
            return option.convert(text, option.flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class Command(Protocol):
    """A subcommand module: adds its parser, then runs with the parsed args and the environment."""

    def add_parser(self, subparsers: Subparsers) -> None: ...

    def run(self, args: argparse.Namespace, environ: Mapping[str, str]) -> int: ...


#: Subcommands that live in their own modules (``voicebot/cmd_*.py``), by name; imported lazily so
#: ``voicebot serve`` never pays for the dialer's imports.
COMMAND_MODULES: dict[str, str] = {
    "simulate": "voicebot.cmd_simulate",
    "dial": "voicebot.cmd_dial",
    "emulate": "voicebot.cmd_emulate",
    "campaign": "voicebot.cmd_campaign",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``voicebot`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="voicebot", description="Put a bot on an Exotel phone call.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(subparsers)
    for module in COMMAND_MODULES.values():
        command: Command = importlib.import_module(module)
        command.add_parser(subparsers)
    subparsers.add_parser("version", help="print the version and exit")
    return parser


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voicebot.handler import load_handler
    from voicebot.logs import configure_logging
    from voicebot.server import run_server

    config = ServeConfig.from_sources(vars(args), environ)
    configure_logging(config.log_level, config.log_format)
    handler_class = load_handler(config.handler)
    run_server(handler_class, config)
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"voicebot {__version__}")
            return 0
        if args.command == "serve":
            return _serve(args, environ)
        if args.command in COMMAND_MODULES:
            command: Command = importlib.import_module(COMMAND_MODULES[args.command])
            return command.run(args, environ)
    except ConfigError as exc:
        print(f"voicebot: error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")
