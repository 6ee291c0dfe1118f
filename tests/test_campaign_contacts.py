"""Contact lists: what a campaign owner's CSV may contain, and errors that point at the row and column."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebot.campaign.contacts import ContactsError, parse_contacts, read_contacts
from voicebot.campaign.runner import DialSettings


def parse(text: str) -> list:  # type: ignore[type-arg]
    return parse_contacts(io.StringIO(text), source="list.csv")


def test_a_valid_list_normalises_numbers_and_keeps_one_extra_column_as_a_parameter() -> None:
    contacts = parse("customer_id,number,amount\nc1, +91 98123-45678 ,1500\n\nc2,09812345679,\n")
    assert [(c.row, c.customer_id, c.number, dict(c.params)) for c in contacts] == [
        (2, "c1", "+919812345678", {"amount": "1500"}),
        (4, "c2", "09812345679", {"amount": ""}),
    ]


def test_a_file_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes("\ufeffnumber,customer_id\n+919812345678,c1\n".encode())
    assert read_contacts(path)[0].customer_id == "c1"


@pytest.mark.parametrize(
    ("text", "row", "column", "words"),
    [
        ("", None, None, "empty file"),
        ("number\n+919812345678\n", 1, None, "no 'customer_id' column"),
        ("number,customer_id,amount,due,branch\n", 1, "due", "at most 1 extra column"),
        ("number,customer_id,job\n", 1, "job", "reserved"),
        ("number,customer_id,2fast\n", 1, "2fast", "start with a letter"),
        ("number,customer_id,number\n", 1, "number", "more than once"),
        ("number,customer_id\n", None, None, "no contacts"),
        ("number,customer_id\n+919812345678,c1\n12345,c2\n", 3, "number", "not a phone number"),
        ("number,customer_id\n+919812345678,\n", 2, "customer_id", "must not be empty"),
        ("number,customer_id\n+919812345678,c1\n+919812345679,c1\n", 3, "customer_id", "already on row 2"),
        ("number,customer_id\n+919812345678,c1,extra\n", 2, None, "3 fields, the header has 2"),
        ("number,customer_id,note\n+919812345678,c1," + "x" * 300 + "\n", 2, "note", "Exotel allows 256"),
        ("number,customer_id\n+919812345678," + "c" * 65 + "\n", 2, "customer_id", "at most 64"),
        ("number,customer_id\n+919812345678,c1\n09812345678,c2\n", 3, "number", "already on row 2"),
    ],
)
def test_bad_lists_are_refused_naming_the_row_and_column(
    text: str, row: int | None, column: str | None, words: str
) -> None:
    with pytest.raises(ContactsError, match=words) as caught:
        parse(text)
    assert (caught.value.row, caught.value.column) == (row, column)
    assert str(caught.value).startswith("list.csv")
    if row is not None:
        assert f"row {row}" in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContactsError, match="cannot read the file"):
        read_contacts(tmp_path / "nope.csv")


@given(
    customer_id=st.text(
        st.characters(blacklist_characters='\r\n\x00,"', blacklist_categories=("Cs",)), max_size=70
    ),
    amount=st.text(
        st.characters(blacklist_characters='\r\n\x00,"', blacklist_categories=("Cs",)), max_size=200
    ),
)
def test_every_accepted_row_makes_a_dial_request_exotel_accepts(customer_id: str, amount: str) -> None:
    text = f"number,customer_id,amount\n+919812345678,{customer_id},{amount}\n"
    try:
        (contact,) = parse(text)
    except ContactsError:
        return
    settings = DialSettings(
        caller_id="08045678901",
        stream_url="wss://bot.example.com/exotel/ws/campaign",
        status_callback="https://bot.example.com/exotel/status/token0123456789abcdef",
        sample_rate=16000,
    )
    request = settings.build("0123456789abcdef", contact.number, contact.customer_id, contact.params)
    assert request.custom_parameters == {
        "job": "0123456789abcdef",
        "customer_id": contact.customer_id,
        "amount": contact.params["amount"],
    }
