"""Review 15: ESPs' forward-confirmed names are not dynamic; registered charsets Python lacks are
valid encoded-words; a Date with spaces around its time's colons is valid."""

from __future__ import annotations

import email.utils

import pytest

from milterd.checks.headers import Headers, bad_encoded_words
from milterd.checks.rdns import ReverseDns
from milterd.config import Config
from milterd.content.headertext import decoded
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services


def rdns_symbols(name: str, ip: str) -> list[str]:
    """The rdns check's symbols for a client whose name Postfix verified (no DNS asked)."""
    check = ReverseDns(Services(config=Config().with_changes({"milter.hostname": "mx.test"})))
    session = Session(client_addr=ip, client_name=name, family="inet")
    list(check.on_connect(session))
    envelope = Envelope(spool=Spool(1024))
    envelope.sender = "bounce@esp.example"
    return [hit.symbol for hit in check.on_mail(session, envelope)]


@pytest.mark.parametrize(("name", "ip"), [
    ("a8-30.smtp-out.amazonses.com", "54.240.8.30"), ("a48-112.smtp-out.amazonses.com", "54.240.48.112"),
    ("mail135-2.atl141.mcsv.net", "198.2.135.2"), ("mail180-10.suw21.mandrillapp.com", "198.2.180.10"),
])
def test_esp_names_are_not_dynamic(name: str, ip: str) -> None:
    assert rdns_symbols(name, ip) == []


@pytest.mark.parametrize(("name", "ip"), [
    ("host-203-0-113-7.dyn.example.net", "203.0.113.7"), ("113-7.pool.example.net", "203.0.113.7"), ("7-113.example.net", "203.0.113.7"),
    ("host113-7.example.net", "203.0.113.7"), ("dsl7-113.example.net", "203.0.113.7"), ("mx0-113-7.example.net", "203.0.113.7"),
])
def test_address_names_stay_dynamic(name: str, ip: str) -> None:
    assert rdns_symbols(name, ip) == ["RDNS_DYNAMIC"]


@pytest.mark.parametrize("charset", ["windows-874", "WINDOWS-874", "iso-8859-8-i", "ISO-8859-8-E", "iso-8859-6-i", "iso-8859-6-e", "windows-31j"])
def test_registered_charsets_are_valid(charset: str) -> None:
    assert bad_encoded_words(f"=?{charset}?q?abc?=") == ""


def judge(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    check = Headers(Services(config=Config()))
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), Envelope(spool=Spool(1024), headers=headers))}


def message(**changes: bytes) -> list[tuple[str, bytes]]:
    fields = {"From": b"Alice <alice@example.org>", "To": b"bob@example.com", "Date": email.utils.formatdate().encode(),
              "Message-ID": b"<abc@example.org>", "Subject": b"hi"}
    fields.update({name.replace("_", "-"): value for name, value in changes.items()})
    return list(fields.items())


def test_registered_charset_subject_is_no_invalid_encoded_word_and_decodes() -> None:
    assert "HDR_ENCODED_WORD_INVALID" not in judge(message(Subject=b"=?windows-874?q?=A1?= =?iso-8859-8-i?b?4A==?="))
    assert decoded("=?windows-874?q?=A1?= =?iso-8859-8-i?b?4A==?=") == "\u0e01\u05d0"  # Thai ko kai, Hebrew alef


def test_unknown_charset_stays_invalid() -> None:
    assert bad_encoded_words("=?x-unknown-874?q?abc?=") == "=?x-unknown-874?q?abc?="


@pytest.mark.parametrize("spacing", [" : ", ": ", " :", "\t:\t"])
def test_date_with_spaces_around_colons_is_valid(spacing: str) -> None:
    now = email.utils.formatdate(usegmt=False)  # "Fri, 04 Dec 2026 15:43:41 -0000"
    date = now.replace(":", spacing)
    assert "HDR_DATE_INVALID" not in judge(message(Date=date.encode())), date
    assert "HDR_DATE_INVALID" in judge(message(Date=now.replace(":", " ; ").encode()))
