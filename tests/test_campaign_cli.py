"""``voicebot campaign run | status | export`` as an operator uses them. The runner is a separate process
and the bot is served by this one: they share only the campaign database, as two servers would."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
import sys
from pathlib import Path

import pytest

from handlers.collections import CollectionsBot
from voicebot.campaign.contacts import Contact
from voicebot.campaign.store import SqliteStore
from voicebot.cli import main
from voicebot.cmd_campaign import EXPORT_COLUMNS, export_csv
from voicebot.emulator import Emulator, EmulatorConfig, Scenario, Scenarios
from voicebot.testing import serve_handler

REPO = str(Path(__file__).resolve().parent.parent)
EXOPHONE = "08045678901"
TIMEOUT = 60.0

CSV = """customer_id,number,amount
c-1,+91 98000 00001,1500
c-2,+919800000002,250
c-3,09800000003,90
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_run_dials_the_list_then_status_and_export_report_every_contact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(CSV)
    db = tmp_path / "campaign.sqlite"
    scenarios = Scenarios(
        Scenario(ring_seconds=0.1, hangup="bot", talk_seconds=20, dtmf="1@0.5"),
        {
            "+919800000002": Scenario(outcome="busy", ring_seconds=0.1),
            "+919800000003": Scenario(ring_seconds=0.1, hangup="bot", talk_seconds=20, dtmf="2@0.5"),
        },
    )
    bot = CollectionsBot.using(db, note_seconds=0.05, silence_timeout=0.5)
    port = free_port()
    async with (
        Emulator(EmulatorConfig(port=0, callback_retry_delay=0.2), scenarios) as emulator,
        serve_handler(bot, path="/exotel/ws/campaign") as bot_url,
    ):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": REPO,
            "EXOTEL_ACCOUNT_SID": "emulator",
            "EXOTEL_API_KEY": "emulator-key",
            "EXOTEL_API_TOKEN": "emulator-token",
        }
        args = [
            "campaign", "run", str(contacts), "--db", str(db), "--base-url", emulator.base_url,
            "--caller-id", EXOPHONE, "--stream-url", bot_url,
            "--status-callback-base", f"http://127.0.0.1:{port}", "--listen", f"127.0.0.1:{port}",
            "--channels", "2", "--retries", "1", "--retry-delay", "0.2",
            "--time-limit", "30", "--time-out", "5",
        ]  # fmt: skip
        pipe = asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicebot", *args, env=env, stdout=pipe, stderr=pipe
        )
        async with asyncio.timeout(TIMEOUT):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert emulator.max_live_calls <= 2
        assert len(emulator.calls) == 4  # the busy number twice

    summary = out.decode()
    assert "contacts 3: 3 done (2 completed, 1 not)" in summary
    assert "confirmed" in summary and "callback" in summary
    assert "callbacks on http://127.0.0.1" in err.decode()
    assert "emulator-token" not in err.decode()

    capsys.readouterr()
    assert main(["campaign", "status", "--db", str(db)], {}) == 0
    assert "4 calls placed" in capsys.readouterr().out
    exported = tmp_path / "out.csv"
    assert main(["campaign", "export", str(exported), "--db", str(db)], {}) == 0
    rows = list(csv.DictReader(exported.open()))
    assert list(rows[0]) == [*EXPORT_COLUMNS, "amount"]
    by_id = {row["customer_id"]: row for row in rows}
    assert (by_id["c-1"]["status"], by_id["c-1"]["outcome"], by_id["c-1"]["attempts"]) == (
        "completed",
        "confirmed",
        "1",
    )
    assert (by_id["c-2"]["status"], by_id["c-2"]["outcome"], by_id["c-2"]["attempts"]) == ("busy", "", "2")
    assert (by_id["c-3"]["status"], by_id["c-3"]["outcome"], by_id["c-3"]["amount"]) == (
        "completed",
        "callback",
        "90",
    )
    assert len(by_id["c-2"]["call_sids"].split()) == 2
    assert by_id["c-1"]["recording_url"].startswith("http://127.0.0.1:")
    assert by_id["c-1"]["duration"].isdigit() and by_id["c-2"]["duration"] == "0"
    assert by_id["c-1"]["number"] == "+919800000001"


def test_export_of_an_unfinished_campaign_shows_pending_contacts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.sqlite")
    store.add_contacts([Contact(row=2, customer_id="x", number="+919800000001")], 0.0)
    out = io.StringIO()
    assert export_csv(store, out) == 1
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert (row["status"], row["attempts"], row["call_sids"], row["outcome"]) == ("pending", "0", "", "")


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("number,customer_id\n123,c1\n", "row 2, column 'number'"),
        ("number,customer_id,a,b\n", "at most 1 extra column"),
    ],
)
def test_run_refuses_a_bad_list_before_dialling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], csv_text: str, message: str
) -> None:
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(csv_text)
    env = {"EXOTEL_ACCOUNT_SID": "a", "EXOTEL_API_KEY": "k", "EXOTEL_API_TOKEN": "t"}
    code = main(
        ["campaign", "run", str(contacts), "--db", str(tmp_path / "c.sqlite"), "--caller-id", EXOPHONE,
         "--stream-url", "wss://bot.example.com/ws", "--status-callback-base", "https://bot.example.com"],
        env,
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.sqlite").exists()


def test_status_without_a_database_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["campaign", "status", "--db", str(tmp_path / "none.sqlite")], {}) == 2
    assert "no campaign database" in capsys.readouterr().err
