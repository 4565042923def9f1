"""The quarantine module against a real SQLite store and a real SMTP sink on loopback."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd import cli, maintenance
from milterd.config import Config, load_config
from milterd.message.model import Envelope, Spool
from milterd.quarantine import (
    Quarantine,
    QuarantineError,
    format_digest,
    header_section,
    is_virus,
    matches,
    release_header,
)
from milterd.reinject import Target, data_lines, parse_target
from milterd.services import Services
from milterd.store import MessageRecord, Store, StoreError, schema, utcnow
from milterd.store.quarantine import QuarantineWrite, pieces
from tests.harness import quarantine as quarantine_harness
from tests.harness.milterd import write_config
from tests.harness.postfix import Sink, free_port

TLS_KEY, TLS_CERT = (Path(__file__).parents[1] / "harness" / "data" / name for name in ("localhost-key.pem", "localhost-cert.pem"))

# The fixture: the quarantine of the module's conf (its store made current).
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: QUARANTINE-ME\r\n\tfolded\r\nX-No-Space:x\r\n\r\nbody\r\n.dot\r\n"


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


@pytest.fixture()
def conf(tmp_path: Path, sink: Sink) -> Path:
    """A milter.conf with a SQLite store in the test's directory, releasing to the test's SMTP server."""
    return quarantine_harness.quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}", release_smtp=f"127.0.0.1:{sink.port}")


def add(quarantine: Quarantine, subject: str = "QUARANTINE-ME", recipients: list[str] | None = None, age: dt.timedelta = dt.timedelta(0), symbols: dict[str, float] | None = None, reason: str = "score 13.0 >= 12", mode: str = "discard", raw: bytes = RAW, sender: str = "alice@example.org") -> int:
    """Store one quarantined message as the pipeline does (log row + quarantine row, one transaction)."""
    when = utcnow() - age
    recipients = recipients or ["bob@example.com"]
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender=sender, recipients=recipients, subject=subject, score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": sender, "recipients": recipients, "subject": subject, "score": 13.0, "reason": reason,
        "symbols": symbols or {"TEST_QUARANTINE": 13.0}, "size": len(raw), "mode": mode, "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [raw[:20], raw[20:]]))
    return quarantine.rows(limit=1)[0]["id"]


def stored(quarantine: Quarantine, row_id: int) -> bytes:
    return b"".join(quarantine.message_chunks(quarantine.get(row_id)))


def test_release_header_and_hostport() -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert release_header("root@mx", when) == b"X-Milterd-Released: root@mx Wed, 01 May 2024 12:00:00 +0000\r\n"
    assert release_header("evil\r\nBcc: x", when).count(b"\r\n") == 1
    assert parse_target("127.0.0.1:10027") == Target(host="127.0.0.1", port=10027)
    assert parse_target("inet:127.0.0.1:10027") == Target(host="127.0.0.1", port=10027)
    assert parse_target("[::1]:10027") == Target(host="::1", port=10027)
    assert parse_target("relay.example.org") == Target(host="relay.example.org", port=25)
    assert parse_target("unix:/var/spool/postfix/public/milterd-reinject") == Target(path="/var/spool/postfix/public/milterd-reinject")
    for bad in ("host:port", "unix:relative/path"):
        with pytest.raises(ValueError):
            parse_target(bad)


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
    assert "raw" not in quarantine.get(first)
    assert stored(quarantine, first) == RAW
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
    [job] = [j for j in maintenance.JOBS if j.name == "quarantine-retention"]
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
    err = capsys.readouterr().err
    assert err.startswith("milterd: cannot") and "127.0.0.1" in err and "Traceback" not in err


def test_config_defaults() -> None:
    section = Config().quarantine
    assert section.mode == "discard" and not section.notify_virus_recipients
    assert section.release_smtp == "unix:/var/spool/postfix/public/milterd-reinject" and not section.release_user



def test_a_bad_release_smtp_is_refused_with_file_and_key(tmp_path: Path) -> None:
    from milterd.config import ConfigError

    for bad in ("unix:relative/socket", "host:port"):
        path = tmp_path / "bad.conf"
        path.write_text(f'[quarantine]\nrelease_smtp = "{bad}"\n')
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert str(refused.value).startswith(f"{path}: [quarantine] release_smtp: expected"), refused.value


# --- chunked storage -------------------------------------------------------------------
BIG = b"From: a@example.org\r\nSubject: QUARANTINE-ME big\r\n\r\n" + b"".join(b"%07d .line with a leading dot after it\r\n.x\r\n" % i for i in range(30000))


def test_large_message_is_stored_in_chunks_and_streamed_back(quarantine: Quarantine) -> None:
    row_id = add(quarantine, raw=BIG)
    row = quarantine.get(row_id)
    assert row["size"] == len(BIG) > 1024 * 1024
    assert quarantine.repo.chunk_count(row_id) == len(list(pieces([BIG[:20], BIG[20:]])))
    got = list(quarantine.message_chunks(row))
    assert b"".join(got) == BIG and max(len(c) for c in got) <= 64 * 1024
    assert b"".join(header_section(quarantine.message_chunks(row))) == b"From: a@example.org\r\nSubject: QUARANTINE-ME big\r\n"
    assert quarantine.delete([row_id]) == 1
    with quarantine.store.engine.connect() as connection:
        assert connection.execute(schema.quarantine_chunks.select()).first() is None


def test_release_streams_a_large_message_byte_for_byte(quarantine: Quarantine, sink: Sink) -> None:
    row_id = add(quarantine, raw=BIG, recipients=["big@example.com"])
    assert quarantine.release(row_id, who="admin@mx.test").ok
    [got] = sink.wait(1, match=lambda m: m.recipients == ["big@example.com"])
    assert got.data.split(b"\r\n", 1)[1] == BIG


def test_a_missing_chunk_is_a_store_error_and_nothing_is_released(quarantine: Quarantine, sink: Sink) -> None:
    row_id = add(quarantine, raw=BIG, recipients=["torn@example.com"])
    with quarantine.store.engine.begin() as connection:
        connection.execute(schema.quarantine_chunks.delete().where(schema.quarantine_chunks.c.chunk_ind == 3))
    with pytest.raises(StoreError, match="lacks piece 3"):
        b"".join(quarantine.message_chunks(quarantine.get(row_id)))
    report = quarantine.release(row_id)
    assert not report.delivered and "lacks piece 3" in report.error
    assert quarantine.get(row_id)["released_at"] is None
    assert [m for m in sink.wait(1, timeout=2, match=lambda m: m.recipients == ["torn@example.com"])] == []


def test_rows_from_before_chunks_stay_readable(tmp_path: Path) -> None:
    """A row written by schema 0001 (the message whole in quarantine.raw) reads back after the upgrade."""
    from alembic import command

    config = load_config(write_config(tmp_path / "old.conf", {"database": {"url": f"sqlite:///{tmp_path / 'old.sqlite'}"}}))
    store = Store(config.database)
    with store.engine.begin() as connection:
        command.upgrade(store._alembic_config(connection), "0001")
        connection.exec_driver_sql(
            "INSERT INTO quarantine (time, mta_host, queue_id, client_addr, client_name, helo, sender, recipients, subject, score, reason, symbols, size, mode, raw, release_count, learned_ham) "
            "VALUES ('2026-01-01 00:00:00', 'mx', 'Q', '', '', '', 'a@example.org', '[\"b@example.com\"]', 's', 13, 'r', '{}', ?, 'discard', ?, 0, 0)",
            (len(RAW), RAW),
        )
    assert store.upgrade() == store.head_version()
    old = Quarantine(store, config)
    [row] = old.rows()
    assert b"".join(old.message_chunks(row)) == RAW and old.repo.chunk_count(row["id"]) == 0


def test_data_stream_matches_smtplib_for_any_split() -> None:
    import re
    import smtplib

    for message in (RAW, b"a\r\n.b\r\n..c\n.d\re", b".x", b"abc\r", b"x\n\n.\n", b"\r\r\n."):
        want = smtplib._quote_periods(re.sub(rb"\r?\n|\r\Z", b"\r\n", message))  # type: ignore[attr-defined]
        want += (b"" if want.endswith(b"\r\n") else b"\r\n") + b".\r\n"
        for size in range(1, len(message) + 1):
            assert b"".join(data_lines(message[i:i + size] for i in range(0, len(message), size))) == want, (message, size)


def test_header_section_for_any_split() -> None:
    for size in range(1, len(RAW) + 1):
        assert b"".join(header_section(RAW[i:i + size] for i in range(0, len(RAW), size))) == RAW.split(b"\r\n\r\n")[0] + b"\r\n"


# --- SMTP AUTH towards a TCP re-injection smtpd ---------------------------------------------
@pytest.fixture(params=["plain", "starttls"])
def auth_sink(request: Any, tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """An SMTP server on loopback that requires AUTH (user "milterd", password "s3cret-pw") and keeps what it receives;
    the "starttls" one offers AUTH only after STARTTLS (as Postfix with smtpd_tls_auth_only), with a self-signed certificate."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    received: list[bytes] = []
    tls: dict[str, Any] = {"auth_require_tls": False}
    if request.param == "starttls":
        key, cert = TLS_KEY, TLS_CERT  # self-signed for CN=localhost, 100 years (openssl req -x509 -days 36500)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        tls = {"tls_context": context, "auth_require_tls": True}

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            received.append(envelope.original_content or envelope.content)
            return "250 2.0.0 Ok: kept"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == b"milterd" and data.password == b"s3cret-pw"
        return AuthResult(success=ok, handled=False)

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator, auth_required=True, **tls)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def test_release_with_smtp_auth_never_shows_the_password(quarantine: Quarantine, auth_sink: tuple[int, list[bytes]], tmp_path: Path, capsys: Any) -> None:
    port, received = auth_sink
    row_id = add(quarantine, subject="auth release")
    secret = tmp_path / "release.secret"
    secret.write_text("s3cret-pw\n")
    changes = {"quarantine.release_smtp": f"127.0.0.1:{port}", "quarantine.release_user": "milterd"}
    without = Quarantine(quarantine.store, quarantine.config.with_changes(changes))
    refused = without.release(row_id)
    assert not refused.delivered and refused.error  # no password file: AUTH cannot be sent, the server refuses
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-it\n")
    bad = Quarantine(quarantine.store, quarantine.config.with_changes({**changes, "quarantine.release_password_file": str(wrong)})).release(row_id)
    assert not bad.delivered and "535" in bad.error and "not-it" not in bad.error
    good = Quarantine(quarantine.store, quarantine.config.with_changes({**changes, "quarantine.release_password_file": str(secret)}))
    assert good.release(row_id).ok
    assert len(received) == 1 and received[0].split(b"\r\n", 1)[1] == RAW
    from milterd.confdoc import render_effective

    assert "s3cret-pw" not in render_effective(good.config)


def test_the_digest_offers_no_release_command_for_a_claimed_message(quarantine: Quarantine) -> None:
    # It printed "release: milterd quarantine release N" for a message already released, a command refused
    # without --force (review, thirty-sixth session).
    now = utcnow()
    base = {"time": now, "score": 12.0, "reason": "score 12", "sender": "a@example.org", "recipients": ["b@example.com"], "subject": "s"}
    released = {**base, "id": 7, "released_at": now, "released_by": "admin",
                "release_result": [{"by": "admin", "time": now.isoformat(), "delivered": True}]}
    waiting = {**base, "id": 8, "released_at": None, "released_by": None, "release_result": []}
    text = format_digest([released, waiting], quarantine.config, now - dt.timedelta(hours=1), now)
    assert "released " in text and "quarantine release 7" not in text and "quarantine release 8" in text
