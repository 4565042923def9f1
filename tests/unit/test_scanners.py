"""Pure parts of the scanner clients and checks: addresses, replies, hits, headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.checks.clamav import declared_size, error_hit, status_edits, virus_hit
from milterd.checks.spamassassin import received_header, spamd_user
from milterd.config import ConfigError, load_config
from milterd.message.model import Action, Envelope, HeaderEdit, Hit, Session, Spool
from milterd.scanners import Address, ScannerError, parse_address
from milterd.scanners.clamd import parse_reply
from milterd.scanners.spamd import parse_response, parse_result, report_rules


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tcp:127.0.0.1:3310", Address("tcp", host="127.0.0.1", port=3310)),
        ("tcp:localhost:783", Address("tcp", host="localhost", port=783)),
        ("tcp:[::1]:783", Address("tcp", host="::1", port=783)),
        ("unix:/run/clamav/clamd.ctl", Address("unix", path="/run/clamav/clamd.ctl")),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert str(expected).startswith(text.split(":", 1)[0])


@pytest.mark.parametrize("text", ["", "127.0.0.1:3310", "tcp:127.0.0.1", "tcp:host:0", "tcp:host:99999", "unix:relative/path", "udp:1.2.3.4:5", "tcp::783"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_bad_address_in_config_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text('[clamav]\naddress = "127.0.0.1:3310"\n')
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert "[clamav] address" in str(info.value)
    conf.write_text('[spamd]\naddress = "tcp:localhost"\n')
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert "[spamd] address" in str(info.value)


@pytest.mark.parametrize(
    "reply, status, virus",
    [
        (b"stream: OK\x00", "OK", ""),
        (b"stream: Eicar-Test-Signature FOUND\x00", "FOUND", "Eicar-Test-Signature"),
        (b"stream: Win.Test.EICAR_HDB-1 FOUND\n", "FOUND", "Win.Test.EICAR_HDB-1"),
        (b"1: stream: OK\x00", "OK", ""),
        (b"INSTREAM size limit exceeded. ERROR\x00", "ERROR", ""),
        (b"stream: Can't allocate memory ERROR\x00", "ERROR", ""),
        (b"", "ERROR", ""),
        (b"garbage", "ERROR", ""),
    ],
)
def test_clamd_reply(reply: bytes, status: str, virus: str) -> None:
    result = parse_reply(reply)
    assert (result.status, result.virus) == (status, virus)
    assert result.infected == (status == "FOUND")


def test_spamd_symbols_answer() -> None:
    raw = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,NO_RECEIVED,NO_RELAYS\r\n"
    result = parse_result(parse_response(raw))
    assert result.spam and result.score == 1000.0 and result.required == 5.0
    assert result.rules == ("GTUBE", "NO_RECEIVED", "NO_RELAYS")


@pytest.mark.parametrize("raw", [
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: True ; 15.0 / 5.0\r\n\r\nGTU",  # cut short
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\nSpam: True ; 15.0 / 5.0\r\n\r\nGTUBE,RULE2",  # longer than it says
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: x\r\nSpam: True ; 15.0 / 5.0\r\n\r\nGTUBE",
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: True ; 15.0 / 5",  # cut inside its Spam: line
])
def test_spamd_answer_that_does_not_hold_what_it_says_is_an_error(raw: bytes) -> None:
    """libspamc's sanity check (thirtieth session's review): such an answer was taken, rules made up ("GTU")."""
    with pytest.raises(ScannerError, match="cut short"):
        parse_response(raw)


def test_spamd_ham_without_rules_and_odd_line_ends() -> None:
    result = parse_result(parse_response(b"SPAMD/1.1 0 EX_OK\nSpam: False ; -0.5 / 5.0\n\n"))
    assert not result.spam and result.score == -0.5 and result.rules == ()


def test_spamd_error_answer() -> None:
    response = parse_response(b"SPAMD/1.0 69 TELL commands are not enabled\r\n")
    assert response.code == 69 and "TELL" in response.message


def test_spamd_garbled_answers() -> None:
    with pytest.raises(ScannerError):
        parse_response(b"HTTP/1.0 200 OK\r\n\r\n")
    with pytest.raises(ScannerError):
        parse_result(parse_response(b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe\r\n\r\n"))


def test_report_rules() -> None:
    report = (
        "Content analysis details:   (1000.0 points, 5.0 required)\n\n"
        " pts rule name              description\n"
        "---- ---------------------- --------------------------------------------------\n"
        "-0.0 NO_RECEIVED            Informational: message has no Received headers\n"
        "1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email\n"
        " 1.2 MISSING_DATE           Missing Date: header\n"
        "                            continued description\n"
    )
    assert report_rules(report) == ("NO_RECEIVED", "GTUBE", "MISSING_DATE")


def test_virus_hits_follow_the_configured_action() -> None:
    reject = virus_hit("Eicar-Test-Signature", "reject")
    assert reject.action == Action.REJECT and str(reject.reply) == "550 5.7.1 Virus found: Eicar-Test-Signature"
    assert reject.detail == "Eicar-Test-Signature"
    assert virus_hit("X", "quarantine").action == Action.QUARANTINE
    assert virus_hit("X", "discard").action == Action.DISCARD
    assert "\n" not in str(virus_hit("bad\r\nname", "reject").reply)


def test_error_hits_follow_on_error() -> None:
    tempfail = error_hit("connection refused", "tempfail")
    assert tempfail.action == Action.TEMPFAIL and str(tempfail.reply).startswith("451 4.7.1")
    accept = error_hit("connection refused", "accept")
    assert accept.action is None and accept.detail == "connection refused"


def _envelope(headers: list[tuple[str, bytes]] | None = None, recipients: list[str] | None = None) -> Envelope:
    envelope = Envelope(spool=Spool(1024))
    envelope.headers = headers or []
    envelope.recipients = recipients or []
    envelope.queue_id = "4AbCdE"
    return envelope


def test_status_edits_remove_incoming_virus_headers_first() -> None:
    envelope = _envelope([("X-Virus-Status", b"Clean"), ("x-virus-status", b"Clean"), ("X-Virus-Scanned", b"forged")])
    edits = status_edits(envelope, "ClamAV using milterd at mx.test", "Clean")
    assert edits == [
        HeaderEdit("change", "X-Virus-Scanned", "", 1),
        HeaderEdit("change", "X-Virus-Status", "", 2),
        HeaderEdit("change", "X-Virus-Status", "", 1),
        HeaderEdit("add", "X-Virus-Scanned", "ClamAV using milterd at mx.test"),
        HeaderEdit("add", "X-Virus-Status", "Clean"),
    ]


def test_declared_size() -> None:
    envelope = _envelope()
    assert declared_size(envelope) is None
    envelope.mail_args = {"SIZE": "123456"}
    assert declared_size(envelope) == 123456
    envelope.mail_args = {"SIZE": "lots"}
    assert declared_size(envelope) is None


def test_received_header_in_postfix_format() -> None:
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org")
    envelope = _envelope(recipients=["bob@example.com"])
    header = received_header(session, envelope, "mx.test", now=0).decode()
    assert header == (
        "Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n"
        "\tby mx.test (Postfix) with ESMTP id 4AbCdE\r\n"
        "\tfor <bob@example.com>; Thu, 01 Jan 1970 00:00:00 -0000\r\n"
    )


def test_received_header_unknown_client_ipv6_auth_and_several_recipients() -> None:
    session = Session(client_addr="2001:db8::1", client_name="", helo="evil\r\nX-Injected: yes", auth_user="alice")
    envelope = _envelope(recipients=["a@example.com", "b@example.com"])
    header = received_header(session, envelope, "mx.test", now=0).decode()
    assert header.startswith("Received: from evilX-Injected: yes (unknown [IPv6:2001:db8::1])\r\n\tby mx.test (Postfix) with ESMTPA id 4AbCdE;\r\n\t")
    assert header.count("\r\n") == 3 and "for <" not in header


def test_spamd_user() -> None:
    envelope = _envelope(recipients=["bob@example.com", "carol@example.com"])
    assert spamd_user("", envelope) == ""
    assert spamd_user("spamfilter", envelope) == "spamfilter"
    assert spamd_user("@recipient", envelope) == "bob@example.com"
    assert spamd_user("@recipient", _envelope()) == ""


def test_virus_reply_wins_over_a_score_that_also_rejects() -> None:
    from milterd.config import ActionsSection
    from milterd.message.policy import decide

    hits = [virus_hit("Eicar-Test-Signature", "reject"), Hit("SPAMASSASSIN", score=20.0)]
    verdict = decide(hits, lambda _symbol: 5.0, ActionsSection())
    assert verdict.action == Action.REJECT
    assert str(verdict.reply) == "550 5.7.1 Virus found: Eicar-Test-Signature"
