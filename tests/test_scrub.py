"""PII scrubbing: typed placeholders, check digits, tool-call arguments, the SQL pre-check."""

from __future__ import annotations

import re

import duckdb
import orjson
import pytest
from protege.distill.datasets.scrub import (
    TRIGGER,
    iban_ok,
    luhn_ok,
    scrub_arguments,
    scrub_message,
    scrub_text,
)

CASES = [
    ("write to john.doe+x@mail.example.co.uk today", "write to [EMAIL] today"),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("card 4111-1111-1111-1111", "card [CARD]"),
    ("amex 378282246310005.", "amex [CARD]."),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [IBAN] please"),
    ("GB82WEST12345698765432", "[IBAN]"),
    ("server 192.168.1.20 down", "server [IP_ADDRESS] down"),
    ("v6 2001:db8::8a2e:370:7334 and ::1", "v6 [IP_ADDRESS] and [IP_ADDRESS]"),
    ("call +1 (555) 123-4567 now", "call [PHONE] now"),
    ("or 555-123-4567", "or [PHONE]"),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456", "key [API_KEY]"),
    ("aws AKIAIOSFODNN7EXAMPLE", "aws [API_KEY]"),
    ("gh ghp_" + "a1" * 18, "gh [API_KEY]"),
    ("slack xoxb-1234567890-abcdefghij", "slack [API_KEY]"),
    (
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "token [JWT]",
    ),
]

KEPT = [
    "card 4111 1111 1111 1112 fails Luhn",
    "IBAN DE89 3704 0044 0532 0130 01 fails mod-97",
    "order 2024-01-15 total 123456789",
    "the time is 12:30:45",
    "pi is 3.14159265358",
    "ids like ord_41111111111111111 stay",
    "plain text without anything",
    "user@localhost",
]


@pytest.mark.parametrize("text,expected", CASES)
def test_pii_is_replaced(text, expected):
    assert scrub_text(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_non_pii_is_kept(text):
    assert scrub_text(text) == text


def test_check_digits():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


def test_tool_arguments_are_parsed_scrubbed_and_reserialized():
    args = orjson.dumps({"to": "a@b.com", "nested": {"cards": ["4111111111111111", "x"]}, "n": 5}).decode()
    out = scrub_arguments(args)
    assert orjson.loads(out) == {"to": "[EMAIL]", "nested": {"cards": ["[CARD]", "x"]}, "n": 5}
    assert scrub_arguments("not json a@b.com") == "not json [EMAIL]"


def test_message_parts_and_tool_calls_in_place():
    msg = {
        "role": "assistant",
        "content": [{"type": "text", "text": "mail a@b.com"}],
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"ip": "10.1.2.3"}'}}],
    }
    assert scrub_message(msg) is True
    assert msg["content"][0]["text"] == "mail [EMAIL]"
    assert orjson.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"ip": "[IP_ADDRESS]"}
    assert scrub_message({"role": "user", "content": "nothing here"}) is False


# The SQL pre-check runs on DuckDB only: a PostgreSQL build scrubs every row in Python (store/datasets.py);
# test_dataset_build's PII test is its proof on both backends.
@pytest.mark.backends("duckdb")
@pytest.mark.parametrize("text,_", CASES)
def test_sql_pre_check_matches_every_pii_case(text, _):
    """The DuckDB (RE2) pre-check must be a superset, or rows with PII would skip scrubbing."""
    con = duckdb.connect()
    assert con.execute("SELECT regexp_matches(?, ?)", [text, TRIGGER]).fetchone()[0]
    assert re.search(TRIGGER, text)
    con.close()


@pytest.mark.backends("duckdb")  # the SQL pre-check runs on DuckDB only (above)
def test_sql_pre_check_skips_plain_text():
    con = duckdb.connect()
    assert not con.execute("SELECT regexp_matches(?, ?)", ['[{"role":"user","content":"hello there"}]', TRIGGER]).fetchone()[0]
    con.close()
