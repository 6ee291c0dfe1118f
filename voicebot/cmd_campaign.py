"""``python -m voicebot campaign run | status | export``: outbound campaigns from a CSV contact list.

``run`` imports the contacts into the campaign database (``--db``, SQLite), serves the status callback
receiver on ``--listen`` (Exotel must reach it at ``--status-callback-base``), and dials under the
channel and request limits until every contact is done, drawing a progress line. Stop it at any time
(Ctrl-C, SIGTERM, a crash) and run the same command again: it continues where it was, without dialling
anyone twice. ``status`` prints progress and outcome tables; ``export`` writes one CSV row per contact.

Credentials come from ``EXOTEL_ACCOUNT_SID``, ``EXOTEL_API_KEY`` and ``EXOTEL_API_TOKEN`` only; the
callback token from ``--status-token``, ``VOICEBOT_STATUS_TOKEN``, or the one generated and kept in the
database on the first run. Exit status: 0 done, 1 Exotel refused the account, 2 bad input, 130 stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from voicebot.errors import ConfigError

if TYPE_CHECKING:
    from voicebot.campaign.runner import DialSettings, RunnerConfig
    from voicebot.campaign.store import CampaignStore, Progress
    from voicebot.cli import Subparsers
    from voicebot.dialer.config import ExotelConfig

__all__ = ["EXPORT_COLUMNS", "add_parser", "export_csv", "run"]

EXIT_HALTED = 1
EXIT_STOPPED = 130
DEFAULT_DB = "campaign.sqlite"
EXPORT_COLUMNS = (
    "customer_id",
    "number",
    "attempts",
    "call_sids",
    "status",
    "duration",
    "recording_url",
    "outcome",
)


def add_parser(subparsers: Subparsers) -> None:
    """Add ``campaign`` with its ``run``, ``status`` and ``export`` subcommands."""
    parser = subparsers.add_parser(
        "campaign",
        help="dial a CSV contact list with rate and channel limits; durable, restartable",
        description="Outbound campaigns over Exotel's Connect Voice AI: run, status, export.",
    )
    commands = parser.add_subparsers(dest="campaign_command", required=True, metavar="SUBCOMMAND")

    run_parser = commands.add_parser(
        "run",
        help="dial every contact (continues a stopped campaign)",
        description="Import the contacts into --db, then dial them until every one is done. Columns: number, "
        "customer_id and at most one more (all reach the bot as custom parameters, with the job id). "
        "Credentials: EXOTEL_ACCOUNT_SID, EXOTEL_API_KEY, EXOTEL_API_TOKEN; EXOTEL_SUBDOMAIN picks the "
        "region.",
    )
    run_parser.add_argument("contacts", metavar="CONTACTS.csv", help="the contact list")
    _add_db(run_parser)
    run_parser.add_argument("--caller-id", required=True, metavar="EXOPHONE", help="the ExoPhone shown")
    run_parser.add_argument(
        "--stream-url", required=True, metavar="URL", help="the bot's ws:// or wss:// URL"
    )
    run_parser.add_argument(
        "--status-callback-base",
        required=True,
        metavar="URL",
        help="the public http(s) URL of --listen; callbacks go to URL/exotel/status/TOKEN",
    )
    run_parser.add_argument(
        "--listen",
        default="127.0.0.1:9400",
        metavar="HOST:PORT",
        help="where to receive the status callbacks (default 127.0.0.1:9400)",
    )
    run_parser.add_argument(
        "--status-token",
        metavar="TOKEN",
        help="callback URL token [env VOICEBOT_STATUS_TOKEN; default: kept in --db]",
    )
    run_parser.add_argument(
        "--base-url", metavar="URL", help="API base URL, e.g. the emulator's [env EXOTEL_BASE_URL]"
    )
    run_parser.add_argument(
        "--region", choices=("in", "sg"), help="API region [env EXOTEL_SUBDOMAIN; default in]"
    )
    run_parser.add_argument("--channels", type=int, default=1, metavar="N", help="calls at once (default 1)")
    run_parser.add_argument(
        "--rate-per-minute",
        type=float,
        default=200.0,
        metavar="N",
        help="API requests per minute, dials and look-ups together (default 200, Exotel's limit)",
    )
    run_parser.add_argument("--retries", type=int, default=0, metavar="K", help="extra attempts (default 0)")
    run_parser.add_argument(
        "--retry-delay",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wait before a retry (default 300)",
    )
    run_parser.add_argument(
        "--retry-on",
        default="busy,no-answer",
        metavar="STATUSES",
        help="call statuses worth a retry, comma-separated (default busy,no-answer)",
    )
    run_parser.add_argument(
        "--sample-rate", type=int, metavar="HZ", help="stream sample rate (8000, 16000, 24000)"
    )
    run_parser.add_argument(
        "--time-limit", type=int, default=600, metavar="SECONDS", help="longest call (default 600)"
    )
    run_parser.add_argument(
        "--time-out", type=int, default=30, metavar="SECONDS", help="ring time (default 30)"
    )
    run_parser.add_argument("--no-record", action="store_true", help="do not record the calls")
    run_parser.add_argument("--recording-channels", choices=("single", "dual"))
    run_parser.add_argument("--no-progress", action="store_true", help="no progress line")
    run_parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log lines on stderr (default warning; info shows each dial and outcome)",
    )

    status_parser = commands.add_parser("status", help="progress and outcome tables")
    _add_db(status_parser)

    export_parser = commands.add_parser("export", help="one CSV row per contact, with its outcome")
    export_parser.add_argument("output", metavar="OUT.csv", help="where to write ('-' for stdout)")
    _add_db(export_parser)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="PATH", help=f"campaign database (default {DEFAULT_DB})"
    )


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the chosen ``campaign`` subcommand."""
    if args.campaign_command == "status":
        return _status(args)
    if args.campaign_command == "export":
        return _export(args)
    return _run(args, environ)


def _open(path: str, *, must_exist: bool) -> CampaignStore:
    from voicebot.campaign.store import SqliteStore

    if must_exist and not os.path.exists(path):
        raise ConfigError(f"--db: no campaign database at {path!r}")
    return SqliteStore(path)


def _status(args: argparse.Namespace) -> int:
    from voicebot.campaign.progress import format_summary

    store = _open(args.db, must_exist=True)
    try:
        print(format_summary(store.progress(time.time())))
    finally:
        store.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _open(args.db, must_exist=True)
    try:
        if args.output == "-":
            count = export_csv(store, sys.stdout)
        else:
            with open(args.output, "w", encoding="utf-8", newline="") as handle:
                count = export_csv(store, handle)
            print(f"{count} contacts written to {args.output}", file=sys.stderr)
    except OSError as exc:
        raise ConfigError(f"output: cannot write {args.output!r}: {exc.strerror or exc}") from None
    finally:
        store.close()
    return 0


def export_csv(store: CampaignStore, handle: TextIO) -> int:
    """Write the campaign as CSV: ``EXPORT_COLUMNS``, then the contacts' extra columns. Returns the rows."""
    records = store.contacts()
    extras: list[str] = []
    for record in records:
        extras.extend(name for name in record.params if name not in extras and name not in EXPORT_COLUMNS)
    writer = csv.writer(handle)
    writer.writerow([*EXPORT_COLUMNS, *extras])
    for record in records:
        writer.writerow(
            [
                record.customer_id,
                record.number,
                record.attempts,
                " ".join(record.call_sids),
                record.status or ("pending" if record.state != "done" else ""),
                "" if record.duration is None else record.duration,
                record.recording_url or "",
                record.outcome or "",
                *(record.params.get(name, "") for name in extras),
            ]
        )
    return len(records)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from voicebot.campaign.contacts import read_contacts
    from voicebot.campaign.runner import CampaignHalted, DialSettings, RunnerConfig
    from voicebot.campaign.store import Policy
    from voicebot.dialer.api import check_http_url
    from voicebot.dialer.config import ExotelConfig
    from voicebot.dialer.errors import ValidationError
    from voicebot.dialer.ops import STATUS_PATH, check_status_token, generate_status_token
    from voicebot.logs import configure_logging

    configure_logging(args.log_level, "text")
    exotel = ExotelConfig.from_env(environ, base_url=args.base_url, region=args.region)
    contacts = read_contacts(args.contacts)
    host, port = _listen(args.listen)
    check_http_url("--status-callback-base", args.status_callback_base)
    retry_on = tuple(filter(None, (part.strip().lower() for part in args.retry_on.split(","))))
    if not args.rate_per_minute >= 2:
        raise ConfigError(f"--rate-per-minute: must be at least 2, got {args.rate_per_minute:g}")
    policy = Policy(retries=args.retries, retry_delay=args.retry_delay, retry_on=retry_on)
    config = RunnerConfig(
        channels=args.channels,
        rate_per_minute=args.rate_per_minute,
        burst=min(10, max(1, int(args.rate_per_minute) // 20)),
    )
    store = _open(args.db, must_exist=False)
    try:
        token = args.status_token or environ.get("VOICEBOT_STATUS_TOKEN")
        if token:
            check_status_token(token, "--status-token")
        else:
            # Kept in the database: calls placed before a restart call back with the same token.
            token = store.set_meta("status_token", generate_status_token(), only_if_absent=True)
        callback = f"{args.status_callback_base.rstrip('/')}{STATUS_PATH}/{urllib.parse.quote(token)}"
        settings = DialSettings(
            caller_id=args.caller_id,
            stream_url=args.stream_url,
            status_callback=callback,
            sample_rate=args.sample_rate,
            record=not args.no_record,
            recording_channels=args.recording_channels,
            time_limit=args.time_limit,
            time_out=args.time_out,
        )
        for contact in contacts:  # every row must make a request Exotel accepts, before any is sent
            try:
                settings.build("0" * 16, contact.number, contact.customer_id, contact.params)
            except ValidationError as exc:
                raise ConfigError(f"{args.contacts}, row {contact.row}: {exc}") from None
        added = store.add_contacts(contacts, time.time())
        store.set_policy(policy)
        print(
            f"campaign {args.db}: {added} new contact(s), {len(contacts)} in the list; callbacks on "
            f"http://{host}:{port}{STATUS_PATH}/… (reached as {args.status_callback_base})",
            file=sys.stderr,
        )
        try:
            final = asyncio.run(
                _run_async(store, exotel, settings, config, token, host, port, not args.no_progress)
            )
        except CampaignHalted as exc:
            print(f"voicebot: campaign stopped: {exc}", file=sys.stderr)
            return EXIT_HALTED
        except KeyboardInterrupt:
            print("\nvoicebot: stopped; run the same command again to continue", file=sys.stderr)
            return EXIT_STOPPED
        if final is None:
            print("\nvoicebot: stopped; run the same command again to continue", file=sys.stderr)
            return EXIT_STOPPED
        from voicebot.campaign.progress import format_summary

        print(format_summary(final))
        return 0
    finally:
        store.close()


async def _run_async(
    store: CampaignStore,
    exotel: ExotelConfig,
    settings: DialSettings,
    config: RunnerConfig,
    token: str,
    host: str,
    port: int,
    show_progress: bool,
) -> Progress | None:
    """The campaign until done (its final counts) or until SIGTERM/SIGINT (None)."""
    from voicebot.campaign.progress import ProgressLine
    from voicebot.campaign.runner import run_campaign
    from voicebot.dialer.ops import StatusReceiver

    line = ProgressLine(sys.stderr, tty=sys.stderr.isatty()) if show_progress else None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def show(progress: Progress) -> None:
        if line is not None:
            line.update(progress, loop.time())

    async with asyncio.TaskGroup() as group:
        work = group.create_task(
            run_campaign(
                store,
                exotel,
                settings,
                config,
                receiver=StatusReceiver(token),
                host=host,
                port=port,
                on_progress=show,
            )
        )
        stopper = group.create_task(stop.wait())
        done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            stopper.cancel()
        else:
            work.cancel()
    if work.cancelled():
        if line is not None:
            line.finish(store.progress(time.time()))
        return None
    final = work.result()
    if line is not None:
        line.finish(final)
    return final
