"""Four small defects: Authentication-Results property injection, SMTP reply line length,
``milterd learn`` on a mailbox that vanishes, and one refused virus notice stopping the rest.

SQLite in temporary files; no mail is sent (``reinject.send`` is replaced by a recorder).
"""

from __future__ import annotations

import json
import mailbox
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import authres
import pytest

from milterd import authresults
from milterd import quarantine as quarantine_module
from milterd.checks.dkim import SignatureResult
from milterd.cli import main
from milterd.message.reply import MAX_REPLY_TEXT, Reply, setreply_args
from milterd.milter import offline
from milterd.quarantine import Quarantine, QuarantineError
from milterd.store import MessageRecord, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness import quarantine as quarantine_harness

# The fixtures: a SQLite store in the test's directory (conf) and its quarantine.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine


# --- Authentication-Results: a property value never ends early (RFC 8601 §2.2) ----------------
def _parsed(value: str) -> list[tuple[str, str, dict[str, str]]]:
    """(method, result, {ptype.property: value unquoted}) of each resinfo, as an RFC 8601 parser reads them."""
    header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    unquote = lambda text: re.sub(r"\\(.)", r"\1", text)  # noqa: E731 - authres keeps a quoted-string's quoted-pairs
    return [(r.method, r.result, {f"{p.type}.{p.name}": unquote(p.value) for p in r.properties}) for r in header.results]


HOSTILE_SENDERS = [
    "x;dkim=pass@evil.example",
    "x; dkim=pass header.d=bank.example@evil.example",
    'we"ird\\@x.test',
    "a b@x.test",
    "(comment)@x.test",
    "x@evil.example; dmarc=pass",
    "user@[192.0.2.1]",
    "@x.test",
    "a@b@c.test",
]


def _rewritten(value: str) -> str:
    """*value* as dkimpy writes it into the ARC-Authentication-Results it seals: parsed by authres and written back."""
    return str(authres.AuthenticationResultsHeader.parse_value(value)).partition(": ")[2]


def test_an_envelope_sender_with_at_cannot_add_a_result() -> None:
    value = authresults.build("mx.test", spf={"result": "fail", "identity": "mailfrom", "sender": "x;dkim=pass@evil.example", "helo": "h"})
    # Quoted, authres wrote it back unquoted (a dkim=pass under an ARC seal): its domain alone is shown.
    assert value == "mx.test; spf=fail smtp.mailfrom=evil.example"
    assert _parsed(value) == _parsed(_rewritten(value)) == [("spf", "fail", {"smtp.mailfrom": "evil.example"})]


@pytest.mark.parametrize("sender", HOSTILE_SENDERS)
def test_every_odd_sender_is_the_one_spf_property_or_none_even_written_back(sender: str) -> None:
    authresults._built.cache_clear()  # noqa: SLF001
    value = authresults.build("mx.test", spf={"result": "softfail", "identity": "mailfrom", "sender": sender, "helo": "h"})
    assert _parsed(value) in ([("spf", "softfail", {"smtp.mailfrom": sender})], [("spf", "softfail", {"smtp.mailfrom": sender.rpartition("@")[2]})],
                              [("spf", "softfail", {})])
    assert _parsed(_rewritten(value)) == _parsed(value)


def test_a_plain_address_is_written_as_local_part_at_domain() -> None:
    value = authresults.build("mx.test", spf={"result": "pass", "identity": "mailfrom", "sender": "first.last+tag@sub.example.org", "helo": "h"})
    assert value == "mx.test; spf=pass smtp.mailfrom=first.last+tag@sub.example.org"


def test_helo_login_and_dkim_reason_with_at_cannot_add_a_result() -> None:
    value = authresults.build(
        "mx.test",
        auth_user="u@x; dkim=pass",
        spf={"result": "none", "identity": "helo", "sender": "", "helo": "h@x;dmarc=pass"},
        dkim=[SignatureResult("d.test", "s", "permerror", reason="Unexpected characters in RFC822 header: b'X: a@b; dkim=pass'")],
    )
    assert [(method, result) for method, result, _ in _parsed(value)] == [("auth", "pass"), ("spf", "none"), ("dkim", "permerror")]
    assert [(method, result) for method, result, _ in _parsed(_rewritten(value))] == [("auth", "pass"), ("spf", "none"), ("dkim", "permerror")]
    assert "smtp.auth" not in value and "smtp.helo" not in value  # left out: no quoting survives authres's writer
    assert "reason=\"Unexpected characters in RFC822 header: b'X: a at b; dkim=pass'\"" in value


def test_a_sender_no_quoted_string_can_hold_is_left_out() -> None:
    value = authresults.build("mx.test", spf={"result": "fail", "identity": "mailfrom", "sender": "x\x01;dkim=pass@evil.example", "helo": "h"})
    assert value == "mx.test; spf=fail smtp.mailfrom=evil.example"  # its domain alone


# --- SMTP replies: a line is at most 512 octets (RFC 5321 §4.5.3.1.5) --------------------------
def _wire(code: str, xcode: str | None, text: str) -> bytes:
    """The reply line Postfix sends for these smfi_setreply arguments (it turns %% into %)."""
    return " ".join(part for part in (code, xcode, text.replace("%%", "%")) if part).encode() + b"\r\n"


@pytest.mark.parametrize("reply", [
    Reply("554", "5.7.1", "Service unavailable; client [192.0.2.1] blocked using zen.example; " + "x" * 2000),
    Reply("550", None, "y" * 2000),
    Reply("550", "5.7.123", "z" * 600),
    Reply("550", "5.7.1", "%" * 2000),
    Reply("550", "5.7.1", "\x01" * 1000),
    Reply.reject("Attachment rejected: " + "\u00e9" * 380 + ".exe"),
    Reply.reject(f"Message rejected: {'d' * 60 + '.' + 'e' * 60 + '.'}caf\u00e9.example publishes a DMARC policy of reject" + "!" * 400),
])
def test_a_long_reply_fits_one_smtp_line_and_keeps_its_codes(reply: Reply) -> None:
    code, xcode, text = setreply_args(reply)
    assert (code, xcode) == (reply.code, reply.xcode)
    assert len(_wire(code, xcode, text)) <= 512
    assert len(text) <= MAX_REPLY_TEXT and text.endswith("...")
    assert re.fullmatch(r"(%%|[^%])*\.\.\.", text)  # no half of a doubled %
    # Without an enhanced code some libmilter versions write two spaces: still within 512.
    assert len(f"{code} {xcode or ''} {text.replace('%%', '%')}\r\n".encode()) <= 512


def test_a_reply_that_fits_is_not_cut_and_one_octet_more_is() -> None:
    room = 512 - len("550 5.7.1 \r\n")
    assert setreply_args(Reply("550", "5.7.1", "a" * room))[2] == "a" * room
    cut = setreply_args(Reply("550", "5.7.1", "a" * (room + 1)))[2]
    assert cut == "a" * (room - 3) + "..." and len(_wire("550", "5.7.1", cut)) == 512
    assert setreply_args(Reply("550", "5.7.1", "100% " * 99))[2] == "100%% " * 99  # 495 octets on the wire


def test_a_long_reply_text_starts_with_what_the_check_said() -> None:
    code, xcode, text = setreply_args(Reply.reject("Attachment rejected: " + "\u00e9" * 380))
    assert text.startswith("Attachment rejected: \\xe9\\xe9")


# --- milterd learn: a mailbox gone between naming and reading ------------------------------
@pytest.fixture()
def learn_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = ""\n')
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    return conf


def test_learn_reports_a_maildir_gone_mid_read_and_goes_on(tmp_path: Path, learn_conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    box.add(b"From: a@example.org\r\nMessage-ID: <1@example.org>\r\n\r\nbody\r\n")
    (tmp_path / "one.eml").write_bytes(b"From: b@example.org\r\nMessage-ID: <2@example.org>\r\n\r\nother\r\n")
    real = offline._maildir

    def moved_away(path: Path) -> Iterator[offline.MessageRef]:
        shutil.rmtree(path)  # the folder is renamed or deleted after milterd saw it is a Maildir
        return real(path)

    monkeypatch.setattr(offline, "_maildir", moved_away)
    capsys.readouterr()
    assert main(["learn", "-c", str(learn_conf), "--json", "--spam", str(tmp_path / "Maildir"), str(tmp_path / "one.eml")]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["learned"] == 1 and summary["unreadable"] == 1 and summary["model"] == {"spam": 1, "ham": 0}
    assert summary["errors"] == [f"{tmp_path / 'Maildir'}: No such file or directory"]


# An mbox gone after it was listed: tests/unit/test_review15_learn_inputs.py (mailbox.mbox is no longer read).


# --- virus notices: each one on its own ---------------------------------------------------
REFUSED = "bad@example.com"
UNENCODABLE = "b\u00e9b@example.com"


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The recipients notified; REFUSED is refused at RCPT, UNENCODABLE fails as smtplib does without SMTPUTF8."""
    outbox: list[str] = []

    def send(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        b"".join(message)
        if recipients == [REFUSED]:
            return {}, {REFUSED: "550 5.1.1 <bad@example.com>: Recipient address rejected: User unknown"}
        if recipients == [UNENCODABLE]:
            UNENCODABLE.encode("ascii")
        outbox.extend(recipients)
        return {r: "250 2.0.0 Ok" for r in recipients}, {}

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    return outbox


def _add_virus(quarantine: Quarantine, recipients: list[str]) -> None:
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="a@example.org", recipients=recipients, subject="x", score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "a@example.org", "recipients": recipients, "subject": "x", "score": 13.0, "reason": "virus Eicar-Signature",
        "symbols": {"CLAMAV_VIRUS": 5.0}, "size": 10, "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [b"From: a@example.org\r\n\r\nx\r\n"]))


def test_a_refused_notice_does_not_stop_the_others(quarantine: Quarantine, sent: list[str]) -> None:
    _add_virus(quarantine, [REFUSED, "carol@example.com"])
    _add_virus(quarantine, [UNENCODABLE, "dave@example.com"])
    failed: list[str] = []
    assert quarantine.notify_virus_recipients(utcnow().replace(year=2000), failed) == 2
    assert sorted(sent) == ["carol@example.com", "dave@example.com"]
    assert len(failed) == 2
    assert any(line.startswith(f"<{REFUSED}>: ") and "550 5.1.1" in line for line in failed)
    assert any(line.startswith(f"<{UNENCODABLE}>: ") and "cannot take" in line for line in failed)


def test_without_a_list_the_failures_raise_after_every_notice_was_tried(quarantine: Quarantine, sent: list[str]) -> None:
    _add_virus(quarantine, [REFUSED, "carol@example.com"])
    with pytest.raises(QuarantineError, match="1 virus notices sent, 1 not: <bad@example.com>"):
        quarantine.notify_virus_recipients(utcnow().replace(year=2000))
    assert sent == ["carol@example.com"]


def test_digest_command_names_each_failed_notice_and_exits_1(conf: Path, quarantine: Quarantine, sent: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _add_virus(quarantine, [REFUSED, "carol@example.com", "erin@example.com"])
    capsys.readouterr()
    assert main(["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--since", "1h", "--notify-virus-recipients"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["1 messages reported to postmaster@example.org", "2 virus notices sent"]
    assert "milterd: virus notice to <bad@example.com>: " in err and "User unknown" in err
    assert sent == ["postmaster@example.org", "carol@example.com", "erin@example.com"]


def test_digest_command_exits_0_when_every_notice_went(conf: Path, quarantine: Quarantine, sent: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _add_virus(quarantine, ["carol@example.com"])
    assert main(["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--since", "1h", "--notify-virus-recipients"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 virus notices sent"


@pytest.mark.parametrize("command", [["log"], ["greylist", "list"], ["quarantine", "list"]])
def test_a_negative_limit_is_a_usage_error(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from milterd.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--limit", "-1"])
    assert exit_info.value.code == 2
    assert "negative" in capsys.readouterr().err


def test_a_helo_cannot_add_a_result_to_the_sealed_copy() -> None:
    """A review's HELO: sealed by dkimpy (authres parse and write back), it read dkim=pass header.d=bank.test."""
    helo = "a;dkim=pass(x)header.d=bank.test(x)header.i=@bank.test"
    value = authresults.build("mx.test", spf={"result": "none", "identity": "helo", "sender": "", "helo": helo})
    assert [(method, result) for method, result, _ in _parsed(_rewritten(value))] == [("spf", "none")]
