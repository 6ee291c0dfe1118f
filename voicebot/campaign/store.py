"""Where a campaign's state lives: the ``CampaignStore`` interface and ``SqliteStore``, its embedded default.

Everything that must survive a crashed runner, or be seen by another process (the server that gets a
call's stream, the receiver that gets its callbacks), is here: contacts, attempts with their Call SIDs,
channel leases, an idempotent log of status events, and outcomes. The interface is a set of atomic
operations (claim a contact with a channel, attach a Call SID, apply an event once, record an outcome),
never queries, so a Redis implementation (one hash per contact and attempt, a sorted set of leases by
expiry, ``SET NX`` for event keys, Lua for ``claim``) can follow for several machines.

Times are wall-clock seconds (``time.time()``) passed in as ``now``: leases are compared across
processes, which share no monotonic clock.

The life of a contact::

    pending ──claim──▶ dialing ──terminal event──▶ done (completed, failed, busy …)
       ▲                  │    └─busy/no-answer, retries left──▶ pending (after the retry delay)
       └── not placed ────┘

and of an attempt: ``intent`` (written before the dial request is sent) → ``dialed`` (Call SID known)
→ ``ended`` (terminal event applied), or ``unknown`` (the request may have placed a call: look it up
before anything else), or ``not-placed`` (Exotel refused it, or a look-up showed no call).
"""

from __future__ import annotations

import abc
import contextlib
import json
import secrets
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from voicebot.campaign.contacts import Contact
from voicebot.dialer.api import TERMINAL_STATUSES
from voicebot.dialer.callbacks import StatusEvent
from voicebot.errors import ConfigError

__all__ = [
    "ATTEMPT_STATES",
    "Attempt",
    "CampaignStore",
    "ContactRecord",
    "Policy",
    "Progress",
    "SqliteStore",
]

ATTEMPT_STATES: Final = ("intent", "unknown", "dialed", "ended", "not-placed")
#: Call statuses a retry may be asked for (failed calls usually fail again; completed ones are done).
RETRYABLE: Final = frozenset({"busy", "no-answer", "failed", "canceled"})


@dataclass(frozen=True, kw_only=True)
class Policy:
    """The campaign rules every process applies the same way (stored with the campaign).

    ``retries``: extra attempts after a ``retry_on`` status (busy, no-answer …), ``retry_delay``
    seconds later. ``stream_end_grace``: after the stream ends, the channel lease lasts at most this
    long (Exotel tears the call down just after the socket closes). ``callback_grace``: if no terminal
    callback came this long after the stream ended, the call is looked up. ``settle_seconds``: a dial
    whose outcome is unknown counts as never placed only if Exotel shows no call this long after it.
    ``max_unplaced``: a contact whose dial requests failed this many times without placing a call (5xx
    answers, reconciled) is given up with status ``not-placed``.
    """

    retries: int = 0
    retry_delay: float = 300.0
    retry_on: tuple[str, ...] = ("busy", "no-answer")
    stream_end_grace: float = 2.0
    callback_grace: float = 30.0
    settle_seconds: float = 60.0
    max_unplaced: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= 20:
            raise ConfigError(f"retries: must be 0-20, got {self.retries}")
        if self.retry_delay < 0:
            raise ConfigError(f"retry_delay: must be >= 0 seconds, got {self.retry_delay}")
        unknown = sorted(set(self.retry_on) - RETRYABLE)
        if unknown:
            raise ConfigError(
                f"retry_on: {', '.join(unknown)} cannot be retried; "
                f"choose from {', '.join(sorted(RETRYABLE))}"
            )
        for name in ("stream_end_grace", "callback_grace", "settle_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0 seconds")
        if self.max_unplaced < 1:
            raise ConfigError(f"max_unplaced: must be >= 1, got {self.max_unplaced}")

    def to_json(self) -> str:
        """The policy as JSON, for the store."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """The policy stored with :meth:`to_json`."""
        data = json.loads(text)
        data["retry_on"] = tuple(data.get("retry_on", ()))
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One dial of one contact: ``id`` travels as the ``job`` custom parameter and the CustomField."""

    id: str
    contact_id: int
    customer_id: str
    number: str
    params: Mapping[str, str]
    seq: int
    state: str
    call_sid: str | None
    created_at: float
    check_after: float | None = None


@dataclass(frozen=True, kw_only=True)
class ContactRecord:
    """A contact as the campaign stands: ``status`` is the last call's (or ``rejected``), ``outcome``
    what the bot recorded, ``attempts`` the dials placed, ``call_sids`` in dialling order."""

    row: int
    customer_id: str
    number: str
    params: Mapping[str, str]
    state: str
    attempts: int
    call_sids: tuple[str, ...]
    status: str | None
    duration: int | None
    recording_url: str | None
    outcome: str | None


@dataclass(frozen=True, kw_only=True)
class Progress:
    """Counts for the progress line: contacts by state and final status, dials, live channels."""

    total: int
    pending: int
    dialing: int
    done: int
    completed: int
    failed: int
    dialed: int
    in_progress: int
    statuses: Mapping[str, int] = field(default_factory=dict)
    outcomes: Mapping[str, int] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        """Contacts not finished yet."""
        return self.pending + self.dialing


class CampaignStore(abc.ABC):
    """The campaign's durable state, as atomic operations (see the module docstring)."""

    # --- set-up ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        """Add contacts not yet in the campaign (matched by ``customer_id``); returns how many were new."""

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A campaign-wide value (settings, the status token), or None."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str, *, only_if_absent: bool = False) -> str:
        """Store a campaign-wide value (with ``only_if_absent``, keep an existing one); returns the value
        now stored."""

    def policy(self) -> Policy:
        """The stored :class:`Policy` (the defaults until one is set)."""
        text = self.get_meta("policy")
        return Policy() if text is None else Policy.from_json(text)

    def set_policy(self, policy: Policy) -> None:
        """Store the rules every process applies."""
        self.set_meta("policy", policy.to_json())

    # --- dialling -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def claim(self, now: float, *, channels: int, lease_seconds: float, holder: str) -> Attempt | None:
        """Atomically: if fewer than ``channels`` leases are live, take the next due contact, write an
        ``intent`` attempt for it (before anything is sent) and lease a channel for ``lease_seconds``.
        None when no channel is free or no contact is due."""

    @abc.abstractmethod
    def dial_placed(self, attempt_id: str, call_sid: str, now: float) -> None:
        """The dial placed call ``call_sid`` (or a look-up found it): attach the SID to the attempt and
        its lease, and apply any events that arrived for that SID before it was known."""

    @abc.abstractmethod
    def dial_unknown(self, attempt_id: str, call_sid: str | None, error: str, now: float) -> None:
        """The dial request may have placed a call: keep the lease, look it up before anything else."""

    @abc.abstractmethod
    def dial_not_placed(
        self,
        attempt_id: str,
        now: float,
        *,
        reason: str,
        retry_at: float | None,
        status: str = "rejected",
        limited: bool = False,
    ) -> None:
        """No call was placed: release the lease; the contact is due again at ``retry_at`` (the attempt
        does not count), or, with ``retry_at=None``, done with ``status``. ``limited``: this kind of
        failure counts towards ``Policy.max_unplaced`` (after which the contact is done, ``not-placed``)."""

    @abc.abstractmethod
    def postpone_check(self, attempt_id: str, until: float) -> None:
        """Look the attempt up again at ``until`` (Exotel did not settle it yet)."""

    # --- what happened --------------------------------------------------------------------------------

    @abc.abstractmethod
    def record_event(self, event: StatusEvent, now: float, *, source: str = "callback") -> bool:
        """Log a status event once per ``(CallSid, EventType)`` and apply it (a terminal one ends the
        attempt, releases its lease and finishes or reschedules the contact). False for a duplicate."""

    @abc.abstractmethod
    def record_outcome(self, attempt_id: str, call_sid: str, outcome: str, now: float) -> bool:
        """The bot's outcome for an attempt (found by its job id); False if no such attempt."""

    @abc.abstractmethod
    def stream_ended(self, attempt_id: str, call_sid: str, now: float) -> bool:
        """The call's stream ended: its lease lasts at most ``stream_end_grace`` more, and the call is
        looked up if no terminal callback comes within ``callback_grace``. False if no such attempt."""

    @abc.abstractmethod
    def expire_leases(self, now: float) -> int:
        """Release leases past their expiry (a crashed runner's, or calls whose end went unheard)."""

    @abc.abstractmethod
    def recheck_open_calls(self, now: float) -> int:
        """Make every call not known to have ended due for a look-up now (a runner starting up: their
        callbacks may have come while nobody was listening). Returns how many."""

    # --- reading --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def due_checks(self, now: float, *, exclude: Collection[str] = ()) -> list[Attempt]:
        """Attempts to look up now: ``intent`` or ``unknown`` ones (except ``exclude``, being dialled by
        this process), and ``dialed`` ones whose end has not been heard in time."""

    @abc.abstractmethod
    def call_sids_of(self, contact_id: int) -> set[str]:
        """Every Call SID known for a contact."""

    @abc.abstractmethod
    def next_deadline(self, now: float) -> float | None:
        """The earliest future moment something becomes due (a retry, a lease expiry, a look-up)."""

    @abc.abstractmethod
    def progress(self, now: float) -> Progress:
        """Counts for the progress line and ``campaign status``."""

    @abc.abstractmethod
    def contacts(self) -> list[ContactRecord]:
        """Every contact, in file order, with its attempts summarised (for export)."""

    def finished(self, now: float) -> bool:
        """Whether every contact is done."""
        return self.progress(now).remaining == 0

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release the store's resources."""


# ------------------------------------------------------------------------------------------- SQLite

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY,
    row INTEGER NOT NULL,
    customer_id TEXT NOT NULL UNIQUE,
    number TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dialing', 'done')),
    due_at REAL NOT NULL,
    status TEXT,
    outcome TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS contacts_due ON contacts (state, due_at, id);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts (id),
    seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('intent', 'unknown', 'dialed', 'ended', 'not-placed')),
    call_sid TEXT UNIQUE,
    created_at REAL NOT NULL,
    placed_at REAL,
    ended_at REAL,
    check_after REAL,
    status TEXT,
    duration INTEGER,
    recording_url TEXT,
    outcome TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_contact ON attempts (contact_id, seq);
CREATE INDEX IF NOT EXISTS attempts_open ON attempts (state, check_after);
CREATE TABLE IF NOT EXISTS leases (
    attempt_id TEXT PRIMARY KEY REFERENCES attempts (id),
    call_sid TEXT,
    holder TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
CREATE TABLE IF NOT EXISTS events (
    call_sid TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt_id TEXT,
    custom_field TEXT,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    PRIMARY KEY (call_sid, event_type)
);
"""
_SCHEMA_VERSION: Final = "1"


class SqliteStore(CampaignStore):
    """The campaign in one SQLite file (WAL mode, so readers never block the writer), safe to share
    between processes on one machine: every operation is one ``BEGIN IMMEDIATE`` transaction.

    ``path`` may be ``":memory:"`` for tests. ``busy_timeout``: seconds to wait for another process's
    transaction before failing. The operations are documented on :class:`CampaignStore`.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise ConfigError(f"db: cannot open {self.path!r}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed intent to dial survives a power cut too, not only a crashed process.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            # One statement at a time: executescript() would commit outside this transaction.
            for statement in filter(None, (part.strip() for part in _SCHEMA.split(";"))):
                db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (_SCHEMA_VERSION,)
            )

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- set-up ---------------------------------------------------------------------------------------

    def add_contacts(self, contacts: Sequence[Contact], now: float) -> int:
        added = 0
        with self._transaction() as db:
            for contact in contacts:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO contacts (row, customer_id, number, params, due_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        contact.row,
                        contact.customer_id,
                        contact.number,
                        json.dumps(dict(contact.params)),
                        now,
                        now,
                    ),
                )
                added += cursor.rowcount
        return added

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str, *, only_if_absent: bool = False) -> str:
        with self._transaction() as db:
            verb = "INSERT OR IGNORE" if only_if_absent else "INSERT OR REPLACE"
            db.execute(f"{verb} INTO meta (key, value) VALUES (?, ?)", (key, value))
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row["value"])

    # --- dialling -------------------------------------------------------------------------------------

    def claim(self, now: float, *, channels: int, lease_seconds: float, holder: str) -> Attempt | None:
        with self._transaction() as db:
            (live,) = db.execute("SELECT count(*) FROM leases WHERE expires_at > ?", (now,)).fetchone()
            if live >= channels:
                return None
            contact = db.execute(
                "SELECT * FROM contacts WHERE state = 'pending' AND due_at <= ? ORDER BY due_at, id LIMIT 1",
                (now,),
            ).fetchone()
            if contact is None:
                return None
            (seq,) = db.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM attempts WHERE contact_id = ?", (contact["id"],)
            ).fetchone()
            attempt_id = secrets.token_hex(8)
            # Due at once if this process dies before it learns what its dial request did.
            db.execute(
                "INSERT INTO attempts (id, contact_id, seq, state, created_at, check_after) "
                "VALUES (?, ?, ?, 'intent', ?, ?)",
                (attempt_id, contact["id"], seq, now, now),
            )
            db.execute(
                "INSERT INTO leases (attempt_id, holder, acquired_at, expires_at) VALUES (?, ?, ?, ?)",
                (attempt_id, holder, now, now + lease_seconds),
            )
            db.execute(
                "UPDATE contacts SET state = 'dialing', updated_at = ? WHERE id = ?", (now, contact["id"])
            )
            return Attempt(
                id=attempt_id,
                contact_id=contact["id"],
                customer_id=contact["customer_id"],
                number=contact["number"],
                params=json.loads(contact["params"]),
                seq=seq,
                state="intent",
                call_sid=None,
                created_at=now,
                check_after=now,
            )

    def dial_placed(self, attempt_id: str, call_sid: str, now: float) -> None:
        with self._transaction() as db:
            attempt = db.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            if attempt is None:
                raise KeyError(f"no attempt {attempt_id!r}")
            if attempt["state"] in ("intent", "unknown", "not-placed"):
                lease = db.execute(
                    "SELECT expires_at FROM leases WHERE attempt_id = ?", (attempt_id,)
                ).fetchone()
                # Until the end is heard, look the call up when its lease would run out.
                check = lease["expires_at"] if lease is not None else now
                db.execute(
                    "UPDATE attempts SET state = 'dialed', call_sid = ?, placed_at = coalesce(placed_at, ?), "
                    "check_after = ?, error = NULL WHERE id = ?",
                    (call_sid, now, check, attempt_id),
                )
                if attempt["state"] == "not-placed":  # a look-up was wrong after all: it is dialling
                    db.execute(
                        "UPDATE contacts SET state = 'dialing', status = NULL, updated_at = ? WHERE id = ?",
                        (now, attempt["contact_id"]),
                    )
            elif attempt["call_sid"] is None:
                db.execute("UPDATE attempts SET call_sid = ? WHERE id = ?", (call_sid, attempt_id))
            db.execute("UPDATE leases SET call_sid = ? WHERE attempt_id = ?", (call_sid, attempt_id))
            pending = db.execute(
                "SELECT body, source FROM events WHERE call_sid = ? AND applied = 0 "
                "ORDER BY event_type = 'terminal', received_at",
                (call_sid,),
            ).fetchall()
            for row in pending:
                self._apply(db, _event_from_json(row["body"]), now)

    def dial_unknown(self, attempt_id: str, call_sid: str | None, error: str, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE attempts SET state = 'unknown', call_sid = coalesce(call_sid, ?), error = ?, "
                "check_after = ? WHERE id = ? AND state = 'intent'",
                (call_sid, error[:500], now, attempt_id),
            )

    def dial_not_placed(
        self,
        attempt_id: str,
        now: float,
        *,
        reason: str,
        retry_at: float | None,
        status: str = "rejected",
        limited: bool = False,
    ) -> None:
        with self._transaction() as db:
            attempt = db.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            if attempt is None or attempt["state"] not in ("intent", "unknown"):
                return
            db.execute(
                "UPDATE attempts SET state = 'not-placed', error = ?, ended_at = ?, check_after = NULL "
                "WHERE id = ?",
                (reason[:500], now, attempt_id),
            )
            db.execute("DELETE FROM leases WHERE attempt_id = ?", (attempt_id,))
            if limited and retry_at is not None:
                (unplaced,) = db.execute(
                    "SELECT count(*) FROM attempts WHERE contact_id = ? AND state = 'not-placed'",
                    (attempt["contact_id"],),
                ).fetchone()
                if unplaced >= self._policy(db).max_unplaced:
                    retry_at, status = None, "not-placed"
            if retry_at is not None:
                db.execute(
                    "UPDATE contacts SET state = 'pending', due_at = ?, updated_at = ? WHERE id = ?",
                    (retry_at, now, attempt["contact_id"]),
                )
            else:
                db.execute(
                    "UPDATE contacts SET state = 'done', status = ?, updated_at = ? WHERE id = ?",
                    (status, now, attempt["contact_id"]),
                )

    def postpone_check(self, attempt_id: str, until: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE attempts SET check_after = ? WHERE id = ?", (until, attempt_id))

    # --- what happened --------------------------------------------------------------------------------

    def record_event(self, event: StatusEvent, now: float, *, source: str = "callback") -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO events "
                "(call_sid, event_type, status, custom_field, source, received_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    event.call_sid,
                    event.event_type,
                    event.status,
                    event.custom_field,
                    source,
                    now,
                    _event_to_json(event),
                ),
            )
            if cursor.rowcount == 0:
                return False
            self._apply(db, event, now)
        return True

    def _apply(self, db: sqlite3.Connection, event: StatusEvent, now: float) -> None:
        """Apply a logged event to its attempt, if the attempt can be found (by SID or CustomField)."""
        attempt = db.execute("SELECT * FROM attempts WHERE call_sid = ?", (event.call_sid,)).fetchone()
        if attempt is None and event.custom_field:
            attempt = db.execute(
                "SELECT * FROM attempts WHERE id = ? AND (call_sid IS NULL OR call_sid = ?)",
                (event.custom_field, event.call_sid),
            ).fetchone()
        if attempt is None:
            return  # applied when the SID is attached (dial_placed)
        db.execute(
            "UPDATE events SET applied = 1, attempt_id = ? WHERE call_sid = ? AND event_type = ?",
            (attempt["id"], event.call_sid, event.event_type),
        )
        if attempt["call_sid"] is None:
            # The callback came before the dial's answer (or instead of it): it names the call.
            db.execute(
                "UPDATE attempts SET call_sid = ?, placed_at = coalesce(placed_at, ?), "
                "state = CASE WHEN state IN ('intent', 'unknown', 'not-placed') THEN 'dialed' ELSE state END "
                "WHERE id = ?",
                (event.call_sid, now, attempt["id"]),
            )
            db.execute("UPDATE leases SET call_sid = ? WHERE attempt_id = ?", (event.call_sid, attempt["id"]))
        if not (event.terminal and event.status in TERMINAL_STATUSES) or attempt["state"] == "ended":
            return
        duration = event.conversation_duration if event.conversation_duration is not None else event.duration
        db.execute(
            "UPDATE attempts SET state = 'ended', status = ?, duration = ?, recording_url = ?, ended_at = ?, "
            "check_after = NULL WHERE id = ?",
            (event.status, duration, event.recording_url, now, attempt["id"]),
        )
        db.execute("DELETE FROM leases WHERE attempt_id = ?", (attempt["id"],))
        contact = db.execute("SELECT * FROM contacts WHERE id = ?", (attempt["contact_id"],)).fetchone()
        if contact["state"] == "done":
            return  # a late event of an earlier attempt
        policy = self._policy(db)
        (placed,) = db.execute(
            "SELECT count(*) FROM attempts WHERE contact_id = ? AND state != 'not-placed'", (contact["id"],)
        ).fetchone()
        (open_attempts,) = db.execute(
            "SELECT count(*) FROM attempts WHERE contact_id = ? AND state IN ('intent', 'unknown', 'dialed')",
            (contact["id"],),
        ).fetchone()
        if open_attempts:
            state, due = "dialing", contact["due_at"]
        elif event.status in policy.retry_on and placed < 1 + policy.retries:
            state, due = "pending", now + policy.retry_delay
        else:
            state, due = "done", contact["due_at"]
        db.execute(
            "UPDATE contacts SET state = ?, due_at = ?, status = ?, updated_at = ? WHERE id = ?",
            (state, due, event.status, now, contact["id"]),
        )

    def _policy(self, db: sqlite3.Connection) -> Policy:
        row = db.execute("SELECT value FROM meta WHERE key = 'policy'").fetchone()
        return Policy() if row is None else Policy.from_json(row["value"])

    def record_outcome(self, attempt_id: str, call_sid: str, outcome: str, now: float) -> bool:
        with self._transaction() as db:
            attempt = db.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            if attempt is None or (attempt["call_sid"] not in (None, call_sid) and call_sid):
                return False
            db.execute("UPDATE attempts SET outcome = ? WHERE id = ?", (outcome, attempt_id))
            db.execute(
                "UPDATE contacts SET outcome = ?, updated_at = ? WHERE id = ?",
                (outcome, now, attempt["contact_id"]),
            )
        if call_sid and attempt["call_sid"] is None:
            self.dial_placed(attempt_id, call_sid, now)
        return True

    def stream_ended(self, attempt_id: str, call_sid: str, now: float) -> bool:
        with self._transaction() as db:
            attempt = db.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            if attempt is None or (attempt["call_sid"] not in (None, call_sid) and call_sid):
                return False
            policy = self._policy(db)
            db.execute(
                "UPDATE leases SET expires_at = min(expires_at, ?) WHERE attempt_id = ?",
                (now + policy.stream_end_grace, attempt_id),
            )
            if attempt["state"] != "ended":
                db.execute(
                    "UPDATE attempts SET check_after = ? WHERE id = ?",
                    (now + policy.callback_grace, attempt_id),
                )
        if call_sid and attempt["call_sid"] is None:
            self.dial_placed(attempt_id, call_sid, now)
        return True

    def expire_leases(self, now: float) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM leases WHERE expires_at <= ?", (now,)).rowcount

    def recheck_open_calls(self, now: float) -> int:
        with self._transaction() as db:
            return db.execute(
                "UPDATE attempts SET check_after = ? WHERE state = 'dialed' AND check_after > ?", (now, now)
            ).rowcount

    # --- reading --------------------------------------------------------------------------------------

    def due_checks(self, now: float, *, exclude: Collection[str] = ()) -> list[Attempt]:
        rows = self._db.execute(
            "SELECT a.*, c.customer_id, c.number, c.params "
            "FROM attempts a JOIN contacts c ON c.id = a.contact_id "
            "WHERE a.state IN ('intent', 'unknown', 'dialed') AND a.check_after <= ? ORDER BY a.check_after",
            (now,),
        ).fetchall()
        return [_attempt(row) for row in rows if row["id"] not in exclude]

    def call_sids_of(self, contact_id: int) -> set[str]:
        rows = self._db.execute(
            "SELECT call_sid FROM attempts WHERE contact_id = ? AND call_sid IS NOT NULL", (contact_id,)
        ).fetchall()
        return {row["call_sid"] for row in rows}

    def next_deadline(self, now: float) -> float | None:
        (deadline,) = self._db.execute(
            "SELECT min(t) FROM ("
            " SELECT min(due_at) AS t FROM contacts WHERE state = 'pending' AND due_at > :now"
            " UNION ALL SELECT min(expires_at) FROM leases WHERE expires_at > :now"
            " UNION ALL SELECT min(check_after) FROM attempts"
            "  WHERE state IN ('intent', 'unknown', 'dialed') AND check_after > :now)",
            {"now": now},
        ).fetchone()
        return None if deadline is None else float(deadline)

    def progress(self, now: float) -> Progress:
        states = dict.fromkeys(("pending", "dialing", "done"), 0)
        statuses: dict[str, int] = {}
        outcomes: dict[str, int] = {}
        for row in self._db.execute(
            "SELECT state, status, outcome, count(*) AS n FROM contacts GROUP BY state, status, outcome"
        ):
            states[row["state"]] += row["n"]
            if row["state"] == "done":
                status = row["status"] or "unknown"
                statuses[status] = statuses.get(status, 0) + row["n"]
            if row["outcome"]:
                outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + row["n"]
        (dialed,) = self._db.execute("SELECT count(*) FROM attempts WHERE call_sid IS NOT NULL").fetchone()
        (live,) = self._db.execute("SELECT count(*) FROM leases WHERE expires_at > ?", (now,)).fetchone()
        completed = statuses.get("completed", 0)
        return Progress(
            total=sum(states.values()),
            pending=states["pending"],
            dialing=states["dialing"],
            done=states["done"],
            completed=completed,
            failed=states["done"] - completed,
            dialed=dialed,
            in_progress=live,
            statuses=statuses,
            outcomes=outcomes,
        )

    def contacts(self) -> list[ContactRecord]:
        records: list[ContactRecord] = []
        attempts: dict[int, list[sqlite3.Row]] = {}
        for row in self._db.execute("SELECT * FROM attempts ORDER BY contact_id, seq"):
            attempts.setdefault(row["contact_id"], []).append(row)
        for contact in self._db.execute("SELECT * FROM contacts ORDER BY row, id"):
            mine = [row for row in attempts.get(contact["id"], []) if row["state"] != "not-placed"]
            last = mine[-1] if mine else None
            records.append(
                ContactRecord(
                    row=contact["row"],
                    customer_id=contact["customer_id"],
                    number=contact["number"],
                    params=json.loads(contact["params"]),
                    state=contact["state"],
                    attempts=len(mine),
                    call_sids=tuple(row["call_sid"] for row in mine if row["call_sid"]),
                    status=contact["status"],
                    duration=None if last is None else last["duration"],
                    recording_url=None if last is None else last["recording_url"],
                    outcome=contact["outcome"],
                )
            )
        return records

    def events(self) -> list[dict[str, Any]]:
        """The event log, oldest first (for diagnosis and tests)."""
        rows = self._db.execute("SELECT * FROM events ORDER BY received_at, rowid").fetchall()
        return [dict(row) for row in rows]

    def attempts_of(self, customer_id: str) -> list[dict[str, Any]]:
        """A contact's attempts, in order (for diagnosis and tests)."""
        rows = self._db.execute(
            "SELECT a.* FROM attempts a JOIN contacts c ON c.id = a.contact_id WHERE c.customer_id = ? "
            "ORDER BY a.seq",
            (customer_id,),
        ).fetchall()
        return [dict(row) for row in rows]


def _attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(
        id=row["id"],
        contact_id=row["contact_id"],
        customer_id=row["customer_id"],
        number=row["number"],
        params=json.loads(row["params"]),
        seq=row["seq"],
        state=row["state"],
        call_sid=row["call_sid"],
        created_at=row["created_at"],
        check_after=row["check_after"],
    )


def _event_to_json(event: StatusEvent) -> str:
    return json.dumps(
        {
            "call_sid": event.call_sid,
            "event_type": event.event_type,
            "status": event.status,
            "conversation_duration": event.conversation_duration,
            "duration": event.duration,
            "recording_url": event.recording_url,
            "custom_field": event.custom_field,
            "fields": dict(event.fields),
        },
        default=str,
    )


def _event_from_json(text: str) -> StatusEvent:
    data = json.loads(text)
    return StatusEvent(
        call_sid=data["call_sid"],
        event_type=data["event_type"],
        status=data["status"],
        conversation_duration=data.get("conversation_duration"),
        duration=data.get("duration"),
        recording_url=data.get("recording_url"),
        custom_field=data.get("custom_field"),
        fields=data.get("fields") or {},
    )
