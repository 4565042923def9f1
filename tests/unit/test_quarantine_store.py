"""The quarantine module against a real SQLite store and a real SMTP sink on loopback."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd import cli, maintenance
from milterd.config import Config, load_config
from milterd.model import Envelope, Spool
from milterd.quarantine import (
    Quarantine,
    QuarantineError,
    format_digest,
    is_virus,
    matches,
    parse_hostport,
    release_header,
)
from milterd.services import Services
from milterd.store import MessageRecord, Store, utcnow
from tests.harness.milterd import write_config
from tests.harness.postfix import Sink, free_port

RAW = b"From: a@example.org\r\nSubject: QUARANTINE-ME\r\n\tfolded\r\nX-No-Space:x\r\n\r\nbody\r\n.dot\r\n"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


@pytest.fixture()
def conf(tmp_path: Path, sink: Sink) -> Path:
    return write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": f"127.0.0.1:{sink.port}", "report_from": "postmaster@mx.test"},
    })


@pytest.fixture()
def quarantine(conf: Path) -> Quarantine:
    config = load_config(conf)
    store = Store(config.database)
    store.upgrade()
    return Quarantine(store, config)


def add(quarantine: Quarantine, subject: str = "QUARANTINE-ME", recipients: list[str] | None = None, age: dt.timedelta = dt.timedelta(0), symbols: dict[str, float] | None = None, reason: str = "score 13.0 >= 12", mode: str = "discard") -> int:
    """Store one quarantined message as the pipeline does (log row + quarantine row, one transaction)."""
    when = utcnow() - age
    recipients = recipients or ["bob@example.com"]
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="alice@example.org", recipients=recipients, subject=subject, score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "alice@example.org", "recipients": recipients, "subject": subject, "score": 13.0, "reason": reason,
        "symbols": symbols or {"TEST_QUARANTINE": 13.0}, "size": len(RAW), "mode": mode, "raw": RAW, "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, row)
    return quarantine.rows(limit=1)[0]["id"]


def test_release_header_and_hostport() -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert release_header("root@mx", when) == b"X-Milterd-Released: root@mx Wed, 01 May 2024 12:00:00 +0000\r\n"
    assert release_header("evil\r\nBcc: x", when).count(b"\r\n") == 1
    assert parse_hostport("127.0.0.1:10027") == ("127.0.0.1", 10027)
    assert parse_hostport("[::1]:10027") == ("::1", 10027)
    assert parse_hostport("relay.example.org") == ("relay.example.org", 25)
    with pytest.raises(ValueError):
        parse_hostport("host:port")


def test_filters_and_virus_detection() -> None:
    row = {"sender": "Alice@example.org", "recipients": ["bob@example.com"], "reason": "score 13 >= 12", "symbols": {"CLAMAV_SKIPPED_SIZE": 0}}
    assert matches(row, sender="alice@example.org", recipient="BOB@example.com", reason="SCORE")
    assert not matches(row, recipient="carol@example.com")
    assert not is_virus(row)
    assert is_virus({**row, "symbols": {"CLAMAV_VIRUS": 5.0}})


def test_header_bytes_keep_raw_lines_when_complete() -> None:
    envelope = Envelope(spool=Spool(1024))
    envelope.headers = [("X-No-Space", b"x"), ("Subject", b"a\n\tb")]
    assert envelope.header_bytes == b"X-No-Space: x\r\nSubject: a\r\n\tb\r\n\r\n"
    envelope.raw_headers = [b"X-No-Space:x", b"Subject: a\n\tb"]
    assert envelope.header_bytes == b"X-No-Space:x\r\nSubject: a\r\n\tb\r\n\r\n"


def test_list_show_and_filters(quarantine: Quarantine) -> None:
    first = add(quarantine, recipients=["bob@example.com"])
    second = add(quarantine, recipients=["carol@example.com"], reason="virus Eicar")
    assert [r["id"] for r in quarantine.rows()] == [second, first]
    assert [r["id"] for r in quarantine.rows(recipient="carol@example.com")] == [second]
    assert [r["id"] for r in quarantine.rows(reason="eicar")] == [second]
    assert "raw" not in quarantine.rows()[0]
    assert quarantine.get(first)["raw"] == RAW
    with pytest.raises(QuarantineError, match="no quarantined message"):
        quarantine.get(999)


def test_release_once_then_refused(quarantine: Quarantine, sink: Sink) -> None:
    row_id = add(quarantine, subject="once", recipients=["bob@example.com", "carol@example.com"])
    report = quarantine.release(row_id, who="admin@mx.test")
    assert report.ok and set(report.delivered) == {"bob@example.com", "carol@example.com"}
    [got] = sink.wait(1, match=lambda m: b"QUARANTINE-ME" in m.data and m.recipients == ["bob@example.com", "carol@example.com"])
    assert got.data.split(b"\r\n", 1)[1] == RAW
    assert got.data.startswith(b"X-Milterd-Released: admin@mx.test ")
    with pytest.raises(QuarantineError, match="already released"):
        quarantine.release(row_id)
    row = quarantine.get(row_id)
    assert row["release_count"] == 1 and row["released_by"] == "admin@mx.test"
    assert row["release_result"][-1]["ok"] is True
    assert quarantine.release(row_id, force=True, to=["dave@example.com"]).ok
    assert quarantine.get(row_id)["release_count"] == 2


def test_failed_release_stays_releasable(quarantine: Quarantine, sink: Sink) -> None:
    row_id = add(quarantine)
    dead = Quarantine(quarantine.store, quarantine.config.with_changes({"quarantine.release_smtp": f"127.0.0.1:{free_port()}"}))
    report = dead.release(row_id)
    assert not report.ok and not report.delivered and report.error
    row = quarantine.get(row_id)
    assert row["released_at"] is None and row["release_count"] == 0 and row["release_result"][-1]["ok"] is False
    assert quarantine.release(row_id).ok


def test_partial_release_is_recorded_per_recipient(quarantine: Quarantine, sink: Sink) -> None:
    row_id = add(quarantine, recipients=["bob@example.com", "gone@example.com"])
    sink.refuse["gone@example.com"] = "550 5.1.1 no such user"
    try:
        report = quarantine.release(row_id)
    finally:
        del sink.refuse["gone@example.com"]
    assert report.partial and not report.ok
    assert report.refused == {"gone@example.com": "550 5.1.1 no such user"}
    row = quarantine.get(row_id)
    assert row["released_at"] is not None
    assert row["release_result"][-1]["refused"] == {"gone@example.com": "550 5.1.1 no such user"}


def test_ham_release_marks_the_log_row(quarantine: Quarantine) -> None:
    row_id = add(quarantine)
    report = quarantine.release(row_id, ham=True)
    assert report.ok and "spamd is not enabled: not learned" in report.notes
    log_id = quarantine.get(row_id)["message_log_id"]
    assert [m["released_as_ham"] for m in quarantine.store.messages() if m["id"] == log_id] == [True]


def test_ham_release_with_spamd_down_fails(quarantine: Quarantine) -> None:
    row_id = add(quarantine)
    config = quarantine.config.with_changes({"spamd.enabled": True, "spamd.address": f"tcp:127.0.0.1:{free_port()}", "spamd.timeout": 2})
    report = Quarantine(quarantine.store, config).release(row_id, ham=True)
    assert report.delivered and not report.ok and "spamd" in report.error


def test_purge_delete_and_retention_job(quarantine: Quarantine) -> None:
    old = add(quarantine, age=dt.timedelta(days=40))
    new = add(quarantine)
    assert quarantine.purge(utcnow() - dt.timedelta(days=30)) == 1
    assert [r["id"] for r in quarantine.rows()] == [new]
    old = add(quarantine, age=dt.timedelta(days=40))
    [job] = [j for j in maintenance.load_jobs() if j.name == "quarantine-retention"]
    services = Services(config=quarantine.config)
    assert job.interval(services) == 3600
    assert job.run(services) == "purged 1 quarantined message"
    assert quarantine.delete([new, old]) == 1
    assert job.interval(Services(config=quarantine.config.with_changes({"quarantine.retention": 0}))) == 0


def test_digest_text_and_mail(quarantine: Quarantine, sink: Sink) -> None:
    row_id = add(quarantine, subject="digest me")
    rows = quarantine.rows()
    text = format_digest(rows, quarantine.config, utcnow() - dt.timedelta(hours=1), utcnow())
    assert "By reason:" in text and f"quarantine release {row_id}" in text and "digest me" in text
    assert "Nothing was quarantined." in format_digest([], quarantine.config, utcnow(), utcnow())
    quarantine.digest(["postmaster@example.org"], utcnow() - dt.timedelta(hours=1))
    [mail] = sink.wait(1, match=lambda m: m.recipients == ["postmaster@example.org"] and b"digest me" in m.data)
    assert mail.sender == "postmaster@mx.test"


def test_virus_notice_goes_to_each_recipient(quarantine: Quarantine, sink: Sink) -> None:
    add(quarantine, subject="with virus", recipients=["v1@example.com", "v2@example.com"], symbols={"CLAMAV_VIRUS": 5.0}, reason="virus Eicar-Signature")
    add(quarantine, subject="just spam", recipients=["v3@example.com"])
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=1)) == 2
    got = sink.wait(2, match=lambda m: m.recipients[0] in ("v1@example.com", "v2@example.com"))
    assert sorted(m.recipients[0] for m in got) == ["v1@example.com", "v2@example.com"]


def test_cli(conf: Path, quarantine: Quarantine, capsys: Any) -> None:
    row_id = add(quarantine, subject="cli test")
    assert cli.main(["-c", str(conf), "quarantine", "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    for key in ("id", "time", "queue_id", "sender", "recipients", "subject", "score", "reason", "symbols", "size", "released_at"):
        assert key in entry
    assert cli.main(["-c", str(conf), "quarantine", "show", str(row_id)]) == 0
    assert "cli test" in capsys.readouterr().out
    assert cli.main(["-c", str(conf), "quarantine", "release", str(row_id), "--to", "x@example.com"]) == 0
    assert cli.main(["-c", str(conf), "quarantine", "release", str(row_id)]) == 1
    assert "already released" in capsys.readouterr().err
    assert cli.main(["-c", str(conf), "quarantine", "delete", "12345"]) == 1
    assert cli.main(["-c", str(conf), "quarantine", "purge", "--older-than", "30d"]) == 0


def test_cli_store_down_is_a_message(tmp_path: Path, capsys: Any) -> None:
    conf = write_config(tmp_path / "bad.conf", {"database": {"url": "postgresql+psycopg://nobody@127.0.0.1:1/none"}})
    assert cli.main(["-c", str(conf), "quarantine", "list"]) == 1
    assert "cannot read the quarantine" in capsys.readouterr().err


def test_config_defaults() -> None:
    section = Config().quarantine
    assert section.mode == "discard" and section.release_smtp == "127.0.0.1:10027" and not section.notify_virus_recipients
