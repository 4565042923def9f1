"""``milterd check``: explanations, exit statuses, mbox/Maildir, mass check, corpora that must not crash."""

from __future__ import annotations

import gzip
import json
import mailbox
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.milter.offline import split_message
from tests.conftest import message
from tests.harness.corpora import cpython_email_messages

RULES = r"""
[[rule]]
name = "SUBJ_REJECT_ME"
header = "Subject"
regex = '(?i)reject me'
score = 20.0
description = "Test rule: a subject asking to be rejected"

[[rule]]
name = "BODY_TAG_ME"
body = 'tag me please'
score = 6.0
description = "Test rule: a body asking to be tagged"
"""
CLAMAV_TESTFILES = Path("/usr/share/clamav-testfiles")


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check")
    (root / "rules").mkdir()
    (root / "rules" / "local.toml").write_text(RULES)
    path = root / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{root}/log.sqlite"\n')
    return path


def check(capsys: pytest.CaptureFixture[str], conf: Path, *argv: str) -> tuple[int, str, str]:
    status = main(["check", "-c", str(conf), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def check_json(capsys: pytest.CaptureFixture[str], conf: Path, *argv: str) -> tuple[int, dict]:
    status, out, _err = check(capsys, conf, *argv, "--json")
    return status, json.loads(out)


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def test_clean_message_is_accepted_and_nothing_is_logged(tmp_path: Path, conf: Path, capsys) -> None:
    status, out = check_json(capsys, conf, str(write(tmp_path / "clean.eml", message())))
    assert status == 0
    [result] = out["messages"]
    assert result["action"] == "accept" and result["error"] == ""
    assert not {"SUBJ_REJECT_ME", "BODY_TAG_ME"} & {s["symbol"] for s in result["symbols"]}
    assert out["thresholds"]["reject"] == 15.0
    assert not (conf.parent / "log.sqlite").exists(), "check must not write the message log"


def test_header_rule_rejects_and_is_explained(tmp_path: Path, conf: Path, capsys) -> None:
    path = write(tmp_path / "rej.eml", message(subject="please Reject Me now"))
    status, out, _ = check(capsys, conf, str(path))
    assert status == 17  # 10 + reject
    assert "reject" in out.splitlines()[0]
    line = next(line for line in out.splitlines() if "SUBJ_REJECT_ME" in line)
    assert "20.00" in line and "custom" in line and "a subject asking to be rejected" in line and "[Reject Me]" in line
    assert "thresholds: add_header 5" in out and "550 5.7.1" in out
    status, data = check_json(capsys, conf, str(path))
    symbol = next(s for s in data["messages"][0]["symbols"] if s["symbol"] == "SUBJ_REJECT_ME")
    assert symbol == {"symbol": "SUBJ_REJECT_ME", "score": 20.0, "check": "custom", "description": "Test rule: a subject asking to be rejected", "detail": "Reject Me"}


def test_body_rule_tags(tmp_path: Path, conf: Path, capsys) -> None:
    status, out = check_json(capsys, conf, str(write(tmp_path / "tag.eml", message(body="could you tag me please\r\n"))))
    result = out["messages"][0]
    assert "BODY_TAG_ME" in {s["symbol"] for s in result["symbols"]}
    assert result["action"] in ("add_header", "rewrite_subject") and status in (11, 12)
    assert result["x_spam_status"].startswith("Yes, score=")


def test_client_options_reach_the_checks(tmp_path: Path, conf: Path, capsys) -> None:
    path = write(tmp_path / "rej.eml", message(subject="reject me"))
    status, out = check_json(capsys, conf, str(path), "--client-ip", "127.0.0.1")
    assert status == 0 and out["messages"][0]["action"] == "accept"  # trusted: not scored
    status, _out, err = check(capsys, conf, str(path), "--client-ip", "not-an-ip")
    assert status == 2 and "not-an-ip" in err


def test_mbox_and_maildir_every_message_with_summary(tmp_path: Path, conf: Path, capsys) -> None:
    box = mailbox.mbox(str(tmp_path / "box.mbox"))
    for subject in ("one", "reject me", "three"):
        box.add(message(subject=subject))
    box.flush()
    maildir = mailbox.Maildir(str(tmp_path / "Maildir"))
    for body in ("tag me please\r\n", "hello\r\n"):
        maildir.add(message(body=body))
    status, out, err = check(capsys, conf, str(tmp_path / "box.mbox"), str(tmp_path / "Maildir"), "--progress", "always")
    assert status == 17
    assert "5 messages:" in out and "reject 1" in out and "accept 3" in out
    assert "[#" in err  # the progress bar
    status, data = check_json(capsys, conf, str(tmp_path / "box.mbox"), str(tmp_path / "Maildir"))
    assert len(data["messages"]) == 5 and sum(data["summary"].values()) == 5 and data["summary"]["reject"] == 1


def test_unreadable_and_empty_inputs(tmp_path: Path, conf: Path, capsys) -> None:
    status, _out, err = check(capsys, conf, str(tmp_path / "missing.eml"))
    assert status == 1 and "missing.eml" in err
    status, _out, _err = check(capsys, conf)
    assert status == 2


def test_mass_check(tmp_path: Path, conf: Path, capsys) -> None:
    ham, spam = tmp_path / "ham", tmp_path / "spam"
    ham.mkdir()
    spam.mkdir()
    write(ham / "1", message(subject="lunch"))
    write(ham / "2", message(subject="minutes", body="tag me please\r\n"))  # a false positive
    write(ham / "notes.json", b'{"not": "mail"}')  # skipped: not a message
    write(spam / "1", message(subject="reject me"))
    write(spam / "2", message(subject="buy"))  # a miss
    status, report = check_json(capsys, conf, "--ham", str(ham), "--spam", str(spam))
    assert status == 0
    assert report["overall"]["ham"] | {"at": None} == {"messages": 2, "flagged": 1, "rate": 50.0, "scored": 2, "unscored": 0, "at": None}
    assert report["overall"]["spam"]["flagged"] == 1 and report["overall"]["spam"]["messages"] == 2
    assert {f["folder"]: f["messages"] for f in report["folders"]} == {str(ham): 2, str(spam): 2}
    assert report["false_positives"]["symbols"][0]["symbol"] == "BODY_TAG_ME"
    assert report["misses"]["messages"] == 1
    at15 = next(t for t in report["thresholds"] if t["threshold"] == 15.0)
    assert at15["spam_caught"] == 1 and at15["ham_flagged"] == 0 and at15["actions"] == ["reject"]
    status, out, _ = check(capsys, conf, "--ham", str(ham), "--spam", str(spam))
    assert "spam caught 50.00% (1/2), ham flagged 50.00% (1/2)" in out and "BODY_TAG_ME" in out


def test_split_message_keeps_folding_and_body() -> None:
    headers, body = split_message(b"From x@y  Mon Jan 1 00:00:00 2024\nSubject: a\n  b\nX: 1\n\nline1\nline2\n")
    assert headers == [("Subject", b"a\n  b"), ("X", b"1")]
    assert body == b"line1\r\nline2\r\n"
    headers, body = split_message(b"not a header line\nSubject: x\n")
    assert headers == [] and body.startswith(b"not a header")


def test_cpython_email_corpus_never_crashes(conf: Path, capsys) -> None:
    files = cpython_email_messages()
    status, data = check_json(capsys, conf, *map(str, files), "--client-ip", "192.0.2.10")
    assert len(data["messages"]) >= len(files)
    assert [m for m in data["messages"] if m["error"]] == []
    assert status != 1


def test_clamav_testfiles_mails_never_crash(conf: Path, capsys) -> None:
    assert CLAMAV_TESTFILES.is_dir(), f"{CLAMAV_TESTFILES}: the Debian package clamav-testfiles is missing (run .ci/setup)"
    status, data = check_json(capsys, conf, str(CLAMAV_TESTFILES))
    assert len(data["messages"]) >= 2  # clam.mail, clam.exe.mbox.*: the files that are mail
    assert [m for m in data["messages"] if m["error"]] == []
    assert status != 1


def test_outsider_text_in_the_explanation_is_escaped(tmp_path: Path, capsys) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text("[[rule]]\nname = \"SUBJ_EVIL\"\nheader = \"Subject\"\nregex = '(?i)evil.*'\nscore = 20.0\n")
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    raw = message(subject="so evil \x1b[2J\x1b[31mred\u202e")
    path = write(tmp_path / "evil\x1b[1m.eml", raw)
    status, out, _ = check(capsys, conf, str(path))
    assert status == 17
    assert "\x1b" not in out and "\u202e" not in out
    line = next(line for line in out.splitlines() if "SUBJ_EVIL" in line)
    # The rule sees the Subject without its invisible bidi override (as a reader does); the rest is escaped.
    assert "[evil \\x1b[2J\\x1b[31mred]" in line
    assert out.splitlines()[0].startswith(str(tmp_path / "evil\\x1b[1m.eml"))


def test_a_forced_refusal_whose_score_reached_reject_too_is_caught_at_every_threshold(tmp_path: Path, capsys) -> None:
    # A banned .exe (ATTACH_BANNED 5, forced reject) in a message whose rule scores 12: 17, over reject (15). At the
    # threshold 20 it was counted not caught, though the milter refuses it whatever reject is set to (found by review).
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text("[[rule]]\nname = \"SUBJ_LOTTERY\"\nheader = \"Subject\"\nregex = '(?i)lottery'\nscore = 12\n")
    conf = write(tmp_path / "milter.conf", f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'.encode())
    spam = tmp_path / "spam"
    spam.mkdir()
    exe = "TVoAAAAAAAAAAAAA"  # "MZ" and zeros: a PE executable's start
    body = ("--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream; name=a.exe\r\n"
            "Content-Disposition: attachment; filename=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n" + exe + "\r\n--b--\r\n")
    write(spam / "1", message(subject="lottery", body=body, headers={"Content-Type": 'multipart/mixed; boundary="b"'}))
    status, report = check_json(capsys, conf, "--client-ip", "192.0.2.10", "--spam", str(spam))
    assert status == 0 and report["overall"]["spam"]["flagged"] == 1
    assert {t["threshold"]: t["spam_caught"] for t in report["thresholds"]}[20.0] == 1


# --- review 28: check judges as the worker does ---------------------------------------------
LEADSPC_RULES = RULES + r"""
[[rule]]
name = "SUBJ_STARTS_FREE"
header = "Subject"
regex = '^FREE'
score = 20.0
description = "Test rule: a Subject that starts with FREE"
"""


def test_fix_header_values_go_in_as_postfix_passes_them(tmp_path: Path, capsys) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(LEADSPC_RULES)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    # Postfix passes "\tFREE money", the worker drops one space only; every blank was stripped offline, and
    # check said reject where the worker accepted.  Both read the value as given now; a header rule sees it
    # trimmed (as SpamAssassin's do: a tab after the colon had dodged a rule anchored with ^), so both hit.
    tab = write(tmp_path / "tab.eml", message().replace(b"Subject: hello", b"Subject:\tFREE money"))
    space = write(tmp_path / "space.eml", message().replace(b"Subject: hello", b"Subject: FREE money"))
    _status, report = check_json(capsys, conf, str(tab), str(space))
    assert [any(s["symbol"] == "SUBJ_STARTS_FREE" for s in m["symbols"]) for m in report["messages"]] == [True, True]


def test_fix_a_stored_bounce_is_checked_from_the_null_sender(tmp_path: Path, conf: Path, capsys) -> None:
    bounce = write(tmp_path / "bounce.eml", b"Return-Path: <>\r\n" + message().replace(b"From: ", b"X-Was-From: ", 1)
                   .replace(b"\r\n\r\n", b"\r\nFrom: MAILER-DAEMON@example.org\r\n\r\n", 1))
    from milterd.milter.offline import envelope_from_headers, split_message

    # MAIL FROM was taken from From (MAILER-DAEMON@example.org): a local sender spoofed, the SPF of another sender.
    assert envelope_from_headers(split_message(bounce.read_bytes())[0])[0] == ""


def test_fix_a_file_named_that_cannot_be_read_makes_the_status_1(tmp_path: Path, conf: Path, capsys) -> None:
    good = write(tmp_path / "good.eml", message())
    status, _out, err = check(capsys, conf, str(good), str(tmp_path / "missing.eml"))
    assert status == 1 and "missing.eml" in err  # 0: the accepted message's status, the missing one left out unsaid
    ham = tmp_path / "ham"
    ham.mkdir()
    write(ham / "1", message())
    status, _out, err = check(capsys, conf, "--ham", str(ham), "--spam", str(tmp_path / "spma"))
    assert status == 1 and "spma" in err  # "spam caught 0.00% (0/0)" and status 0


def test_fix_a_saved_message_with_blank_lines_before_its_from_line_keeps_its_headers(tmp_path: Path) -> None:
    raw = b"\n\nFrom alice@example.org Mon Jan  1 00:00:00 2024\n" + message().replace(b"\r\n", b"\n")
    # The blank line ended an empty header section: HDR_FROM_MISSING, HDR_DATE_MISSING, HDR_MSGID_MISSING.
    headers, _body = split_message(raw)
    assert [name for name, _ in headers][:2] == ["From", "To"]


@pytest.mark.parametrize(("content", "why"), [(b"", "empty"), (b"\r\n\r\n", "empty"), (None, "compressed")], ids=["empty", "blank", "gzip"])
def test_a_named_file_that_is_no_mail_is_unreadable_input(conf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           content: bytes | None, why: str) -> None:
    # It was judged: a spam mbox.gz counted as one missed spam, exit 0, where learn refuses it (review, 36th session).
    raw = gzip.compress(b"From: a@example.org\r\nSubject: x\r\n\r\nspam\r\n") if content is None else content
    status, data = check_json(capsys, conf, str(write(tmp_path / "spam.mbox.gz", raw)))
    assert status == 1 and [m["error"] for m in data["messages"]] == [f"not a mail message ({why})"]


def test_a_message_with_a_nul_byte_is_judged(conf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A second look: a NUL in the first 512 bytes made any message "compressed or binary", where Postfix and serve
    # judge it (spam with an early NUL dropped out of the mass-check rates).
    raw = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: nul\r\n\r\nhello\x00world\r\n"
    status, data = check_json(capsys, conf, str(write(tmp_path / "nul.eml", raw)))
    assert status != 1 and [m["error"] for m in data["messages"]] == [""]


def test_a_pipeline_symbol_is_named_with_its_description(conf: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # UNSCORED was printed "?" with no description (review, thirty-sixth session).
    status, out, _ = check(capsys, conf, str(write(tmp_path / "m.eml", message(subject="hello"))), "--auth-user", "alice")
    [line] = [line for line in out.splitlines() if "UNSCORED" in line]
    assert " pipeline " in line and "Not scored: a trusted or authenticated client's message" in line


def test_log_refuses_an_action_no_row_can_have(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "--action rejected" listed nothing, exit 0: as if no mail had been rejected.
    with pytest.raises(SystemExit) as info:
        main(["-c", str(conf), "log", "--action", "rejected"])
    assert info.value.code == 2 and "'rejected' is no action; one of accept, add_header" in capsys.readouterr().err
