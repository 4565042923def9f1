"""`milterd quarantine` from a review (thirty-third session): a line break in `digest --from` or `[quarantine]
report_from` made the digest a traceback (and the virus notices were never sent), an empty address (`Quarantine <>`)
went out as `MAIL FROM:<Quarantine <>>`, `list --sender '<>'` (the null sender as the listings show it) found
nothing, and `confirm` said nothing when spamd was skipped for the message's size."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd import quarantine as quarantine_module
from milterd.cli import main
from milterd.config import ConfigError, load_config
from milterd.quarantine import Quarantine
from milterd.reinject import report_sender
from milterd.store import MessageRecord, Store
from tests.harness.milterd import write_config
from tests.harness.quarantine import open_quarantine
from tests.unit.test_quarantine_store import RAW, add


def config(tmp_path: Path, **quarantine: object) -> Path:
    return write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": "127.0.0.1:9", **quarantine},
        "spamd": {"enabled": True, "address": "tcp:127.0.0.1:9", "timeout": 2.0, "max_size": 1024},
    })


@pytest.mark.parametrize("value", ["pm@mx.test\r\nBcc: evil@x.example", "Quarantine <>", "a@b.example, c@d.example", "postmaster",
                                   "Quarantine\u2028 <pm@mx.test>", "pm@mx.test\x1b"])
def test_report_from_must_be_one_address(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="report_from"):
        load_config(config(tmp_path, report_from=value))


@pytest.mark.parametrize("value", ["pm@mx.test", "Quarantine <pm@mx.test>", '"Mail, Quarantine" <pm@mx.test>'])
def test_report_from_names_its_address(tmp_path: Path, value: str) -> None:
    assert load_config(config(tmp_path, report_from=value)).quarantine.report_from == value
    assert report_sender(value) == "pm@mx.test"  # the digest's envelope sender


@pytest.mark.parametrize("value", ["a@b.example\r\nBcc: evil@x.example", "Quarantine <>", "Q\u2028 <a@b.example>"])
def test_digest_from_is_refused_before_anything_is_sent(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--from", value])
    assert exit_.value.code == 2
    assert "--from" in capsys.readouterr().err


def test_list_finds_the_null_sender_as_it_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path)
    quarantine = open_quarantine(conf)
    bounce = add(quarantine, sender="", subject="BOUNCE")
    add(quarantine, subject="OTHER")
    capsys.readouterr()
    for spelling in ("<>", "", " <> "):
        assert main(["-c", str(conf), "quarantine", "list", "--sender", spelling]) == 0
        listed = [line for line in capsys.readouterr().out.splitlines()[1:] if not line.startswith(" " * 8)]  # not the reason lines
        assert len(listed) == 1 and listed[0].split()[0] == str(bounce) and "BOUNCE" in listed[0], spelling
    assert main(["-c", str(conf), "quarantine", "list", "--sender", "<alice@example.org>"]) == 0
    assert "OTHER" in capsys.readouterr().out


def test_log_finds_the_null_sender_as_it_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path)
    store = Store(load_config(conf).database)
    store.upgrade()
    store.log_message(MessageRecord(action="accept", queue_id="BOUNCE", sender=""))
    store.log_message(MessageRecord(action="accept", queue_id="OTHER", sender="alice@example.org"))
    assert main(["-c", str(conf), "log", "--sender", "<>"]) == 0
    out = capsys.readouterr().out
    assert "BOUNCE" in out and "OTHER" not in out


def test_confirm_says_spamd_was_skipped_for_the_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path)
    row_id = add(open_quarantine(conf), raw=RAW + b"x" * 2048)  # larger than max_size 1K: spamd (down here) is not asked
    assert main(["-c", str(conf), "quarantine", "confirm", str(row_id)]) == 0
    out = capsys.readouterr().out
    assert "larger than [spamd] max_size" in out and "not learned" in out


def test_a_header_the_email_package_refuses_fails_that_mail_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest the email package cannot write is this command's error, not a traceback: the virus notices still go."""
    def refused(*_args: object) -> None:
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    notified: list[bool] = []
    monkeypatch.setattr(quarantine_module, "notice_message", refused)
    monkeypatch.setattr(Quarantine, "notify_virus_recipients", lambda self, since, failed=None: notified.append(True) or 0)
    conf = config(tmp_path, report_from="postmaster@mx.test")
    open_quarantine(conf)  # the schema
    assert main(["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--notify-virus-recipients"]) == 1
    out, err = capsys.readouterr()
    assert "cannot write the message" in err and "Traceback" not in err and notified == [True]
