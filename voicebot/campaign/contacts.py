"""Reading a campaign's contact list: a CSV file with a header row, validated before anything is dialled.

Columns: ``number`` (E.164 or 0-prefixed national; spaces, dashes, dots and parentheses are dropped),
``customer_id`` (unique), and any extra columns, which reach the bot as custom parameters on the
stream URL together with ``customer_id`` and the campaign's ``job`` id. Exotel passes at most 3 custom
parameters in at most 256 characters (exotel-protocol.md §2.2, §7.2), so a list may have at most one
extra column and each row's parameters must fit; every error names the row (the line in the file) and
the column. Pure: no I/O beyond reading the text given.
"""

from __future__ import annotations

import csv
import io
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from voicebot.dialer.api import (
    MAX_CUSTOM_PARAMETERS,
    MAX_CUSTOM_PARAMETERS_CHARS,
    normalize_number,
    same_number,
)
from voicebot.dialer.errors import ValidationError
from voicebot.errors import ConfigError

__all__ = [
    "JOB_ID_LENGTH",
    "JOB_PARAMETER",
    "MAX_EXTRA_COLUMNS",
    "Contact",
    "ContactsError",
    "bot_parameters",
    "parse_contacts",
    "read_contacts",
]

#: The custom parameter (and the ``CustomField``) that carries the attempt's id to the bot and back.
JOB_PARAMETER: Final = "job"
#: Attempt ids are 16 hex digits (``secrets.token_hex(8)``).
JOB_ID_LENGTH: Final = 16
#: ``job`` and ``customer_id`` take two of Exotel's three custom parameters.
MAX_EXTRA_COLUMNS: Final = MAX_CUSTOM_PARAMETERS - 2
MAX_CUSTOMER_ID: Final = 64
_COLUMN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_RESERVED: Final = frozenset({JOB_PARAMETER, "sample-rate", "sample_rate"})


class ContactsError(ConfigError):
    """A contact list that cannot be used; ``row`` is the line in the file (1 = the header), ``column``
    the column's name, when the problem is in one place."""

    def __init__(self, message: str, *, source: str, row: int | None = None, column: str | None = None):
        where = source
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.row = row
        self.column = column


@dataclass(frozen=True, kw_only=True)
class Contact:
    """One person to call: ``row`` is their line in the file, ``number`` normalised, ``params`` the
    extra columns (sent to the bot as custom parameters)."""

    row: int
    customer_id: str
    number: str
    params: Mapping[str, str] = field(default_factory=dict)


def bot_parameters(job_id: str, customer_id: str, params: Mapping[str, str]) -> dict[str, str]:
    """The custom parameters the bot receives for one attempt: ``job``, ``customer_id``, the extras."""
    return {JOB_PARAMETER: job_id, "customer_id": customer_id, **params}


def read_contacts(path: str | os.PathLike[str]) -> list[Contact]:
    """Read and validate a contact list file (UTF-8, a BOM allowed); see :func:`parse_contacts`."""
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except OSError as exc:
        raise ContactsError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ContactsError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    return parse_contacts(io.StringIO(text), source=source)


def parse_contacts(lines: Iterable[str], *, source: str = "contacts") -> list[Contact]:
    """Contacts from CSV text; ``ContactsError`` (naming row and column) for anything Exotel or the
    campaign could not use. Blank lines are skipped; there must be at least one contact."""
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ContactsError(f"unreadable CSV: {exc}", source=source, row=1) from None
    if header is None or not any(cell.strip() for cell in header):
        raise ContactsError("empty file: expected a header row with number and customer_id", source=source)
    columns = [cell.strip() for cell in header]
    _check_header(columns, source)
    extras = [name for name in columns if name not in ("number", "customer_id")]
    contacts: list[Contact] = []
    seen: dict[str, int] = {}
    numbers: dict[str, tuple[str, int]] = {}
    try:
        for cells in reader:
            row = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                raise ContactsError(
                    f"has {len(cells)} fields, the header has {len(columns)}", source=source, row=row
                )
            values = dict(zip(columns, (cell.strip() for cell in cells), strict=True))
            contact = _contact(values, extras, row, source, seen)
            _check_unique_number(contact, numbers, source)
            contacts.append(contact)
    except csv.Error as exc:
        raise ContactsError(f"unreadable CSV: {exc}", source=source, row=reader.line_num) from None
    if not contacts:
        raise ContactsError("no contacts after the header row", source=source)
    return contacts


def _check_unique_number(contact: Contact, numbers: dict[str, tuple[str, int]], source: str) -> None:
    """Two contacts with one number could not be told apart when Exotel is asked which call a lost dial
    answer placed (calls are listed by number), and the person would be called twice."""
    key = re.sub(r"\D", "", contact.number).lstrip("0")[-10:]
    earlier = numbers.get(key)
    if earlier is not None and same_number(earlier[0], contact.number):
        raise ContactsError(
            f"{contact.number} is already on row {earlier[1]} (as {earlier[0]}); each number may appear once",
            source=source,
            row=contact.row,
            column="number",
        )
    numbers[key] = (contact.number, contact.row)


def _check_header(columns: list[str], source: str) -> None:
    for name in columns:
        if not name:
            raise ContactsError("a column has no name", source=source, row=1)
        if not _COLUMN.fullmatch(name):
            raise ContactsError(
                "column names must start with a letter and use only letters, digits, '_' and '-' "
                "(at most 32 characters): they become custom parameter names",
                source=source,
                row=1,
                column=name,
            )
        if name in _RESERVED:
            raise ContactsError(
                f"{name!r} is reserved (the campaign sends it itself)", source=source, row=1, column=name
            )
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise ContactsError("column appears more than once", source=source, row=1, column=duplicates[0])
    for required in ("number", "customer_id"):
        if required not in columns:
            raise ContactsError(f"the header has no {required!r} column", source=source, row=1)
    extras = [name for name in columns if name not in ("number", "customer_id")]
    if len(extras) > MAX_EXTRA_COLUMNS:
        raise ContactsError(
            f"Exotel passes at most {MAX_CUSTOM_PARAMETERS} custom parameters to the bot and the campaign "
            f"uses two ({JOB_PARAMETER}, customer_id), so at most {MAX_EXTRA_COLUMNS} extra column(s); "
            f"this file has {len(extras)} ({', '.join(extras)})",
            source=source,
            row=1,
            column=extras[MAX_EXTRA_COLUMNS],
        )


def _contact(
    values: dict[str, str], extras: list[str], row: int, source: str, seen: dict[str, int]
) -> Contact:
    try:
        number = normalize_number(values["number"])
    except ValidationError:
        raise ContactsError(
            f"{values['number']!r} is not a phone number: E.164 (+919812345678) or 0-prefixed national "
            "(09812345678)",
            source=source,
            row=row,
            column="number",
        ) from None
    customer_id = values["customer_id"]
    if not customer_id:
        raise ContactsError("must not be empty", source=source, row=row, column="customer_id")
    if len(customer_id) > MAX_CUSTOMER_ID or any(ch in customer_id for ch in "\r\n\x00"):
        raise ContactsError(
            f"must be one line of at most {MAX_CUSTOMER_ID} characters",
            source=source,
            row=row,
            column="customer_id",
        )
    if customer_id in seen:
        raise ContactsError(
            f"{customer_id!r} is already on row {seen[customer_id]}",
            source=source,
            row=row,
            column="customer_id",
        )
    seen[customer_id] = row
    params = {name: values[name] for name in extras}
    for name, value in params.items():
        if any(ch in value for ch in "\r\n\x00"):
            raise ContactsError("must be one line", source=source, row=row, column=name)
    encoded = urllib.parse.urlencode(bot_parameters("0" * JOB_ID_LENGTH, customer_id, params))
    if len(encoded) > MAX_CUSTOM_PARAMETERS_CHARS:
        longest = max(["customer_id", *extras], key=lambda name: len(values[name]))
        raise ContactsError(
            f"the custom parameters of this row take {len(encoded)} characters on the stream URL; Exotel "
            f"allows {MAX_CUSTOM_PARAMETERS_CHARS} (shorten the longest value)",
            source=source,
            row=row,
            column=longest,
        )
    return Contact(row=row, customer_id=customer_id, number=number, params=params)
