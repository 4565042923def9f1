"""Quarantine review (twenty-ninth session): a confirmed message is no longer a false positive, spamd is
taught under the ``User:`` its scan used, and a release sends the stored addresses as they are, or not at all.

SQLite in a temporary file; no spamd is asked (``SpamdClient`` replaced by a recorder); mail goes to a
test SMTP server on loopback (aiosmtpd) or nowhere (``reinject.send`` replaced).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine
from milterd.reinject import UNSENDABLE, _unsendable
from milterd.store import MessageRecord, schema, utcnow
from milterd.text import storable
from tests.harness.milterd import write_config
from tests.harness.postfix import Sink
from tests.harness.quarantine import open_quarantine, quarantine_config
from tests.unit.test_quarantine_lifecycle_review import add, stub_send
from tests.unit.test_quarantine_store import add as store_add


def delivered(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
    return {r: "250 2.0.0 Ok" for r in recipients}, {}


class Told:
    """A stand-in for SpamdClient recording each TELL's class and user."""

    calls: list[tuple[str, str]] = []

    def __init__(self, address: Any, timeout: float = 60.0, user: str = "") -> None:
        self.user = user

    def tell(self, message: bytes, message_class: str = "ham", user: str | None = None) -> bool:
        Told.calls.append((message_class, self.user if user is None else user))
        return True


def open_with(tmp_path: Path, spamd_user: str) -> Quarantine:
    conf = write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": "127.0.0.1:9", "report_from": "postmaster@mx.test"},
        "spamd": {"enabled": True, "address": "tcp:127.0.0.1:9", "user": spamd_user},
    })
    return open_quarantine(conf)


def flags(quarantine: Quarantine, row_id: int) -> tuple[bool, bool]:
    """(quarantine.learned_ham, messages.released_as_ham) of *row_id*."""
    q, m = schema.quarantine, schema.messages
    with quarantine.store.engine.connect() as connection:
        row = connection.execute(select(q.c.learned_ham, m.c.released_as_ham).join_from(q, m, q.c.message_log_id == m.c.id).where(q.c.id == row_id)).one()
    return bool(row[0]), bool(row[1])


@pytest.mark.parametrize(("setting", "expected"), [("milterd-bayes", "milterd-bayes"), ("@recipient", "bob@example.com"), ("", "")])
def test_release_ham_and_confirm_teach_spamd_as_the_scan_s_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, expected: str) -> None:
    """Under a per-user Bayes the lesson must land in the database that scores the user's mail: both TELLs
    went without ``User:`` (spamd's default user) while the scan sent ``[spamd] user``."""
    quarantine = open_with(tmp_path, setting)
    row_id = add(quarantine)
    stub_send(monkeypatch, delivered)
    monkeypatch.setattr(quarantine_module, "SpamdClient", Told)
    Told.calls = []
    assert quarantine.release(row_id, who="admin", ham=True).ok
    quarantine.confirm(row_id)
    assert Told.calls == [("ham", expected), ("spam", expected)]


def test_confirm_after_release_as_ham_is_no_longer_a_false_positive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`release --ham` then `confirm`: the classifier's counts moved to spam, but the log row stayed
    released_as_ham (rule statistics counted the confirmed spam as a false positive) and the row learned_ham."""
    quarantine = open_with(tmp_path, "")
    row_id = add(quarantine)
    stub_send(monkeypatch, delivered)
    monkeypatch.setattr(quarantine_module, "SpamdClient", Told)
    assert quarantine.release(row_id, who="admin", ham=True).ok
    assert flags(quarantine, row_id) == (True, True)
    quarantine.confirm(row_id)
    assert flags(quarantine, row_id) == (False, False)


def add_from(quarantine: Quarantine, sender: str, recipients: list[str]) -> int:
    """Store one quarantined message from *sender* to *recipients* as the pipeline stores them (already storable)."""
    return int(store_add(quarantine, subject="addresses", recipients=recipients, sender=sender))


@pytest.fixture()
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


def sink_quarantine(tmp_path: Path, sink: Sink) -> Quarantine:
    return open_quarantine(quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}", release_smtp=f"127.0.0.1:{sink.port}"))


def test_a_source_routed_recipient_is_sent_as_stored(tmp_path: Path, sink: Sink) -> None:
    """smtplib's rcpt() rewrote ``@relay.example:c@example.com`` (a source route, which RFC 5321 says servers
    must accept) to ``<@relay.example>``, refused: the message could never be released to it."""
    quarantine = sink_quarantine(tmp_path, sink)
    row_id = add_from(quarantine, "alice@example.org", ["@relay.example:c@example.com", "bob@example.com"])
    report = quarantine.release(row_id, who="admin")
    assert report.ok and sorted(report.delivered) == ["@relay.example:c@example.com", "bob@example.com"], report
    assert len(sink.wait(1)) == 1


def test_a_recipient_stored_escaped_is_not_sent_to_an_address_never_given(tmp_path: Path, sink: Sink) -> None:
    """Undecodable 8-bit bytes of a recipient are stored as ``\\udce9`` escapes: the release sent RCPT to the
    escaped text (quoted by smtplib) and reported it released."""
    quarantine = sink_quarantine(tmp_path, sink)
    escaped = storable("j\udce9r\udcf4me@example.com")
    assert escaped == "j\\udce9r\\udcf4me@example.com"
    row_id = add_from(quarantine, "alice@example.org", [escaped, "bob@example.com"])
    report = quarantine.release(row_id, who="admin")
    assert list(report.delivered) == ["bob@example.com"]
    assert report.refused[escaped].startswith(UNSENDABLE) and "escaped" in report.refused[escaped]
    assert [m.recipients for m in sink.wait(1)] == [["bob@example.com"]]


def test_a_sender_cut_by_the_store_is_not_sent_from(tmp_path: Path, sink: Sink) -> None:
    """A sender longer than the column was cut to 512 characters and the release went out from the shortened
    address (bounces to nobody, or to someone else), unsaid."""
    quarantine = sink_quarantine(tmp_path, sink)
    long_sender = "bounce-" + "x" * 600 + "@lists.example.org"
    row_id = add_from(quarantine, MessageRecord(action="quarantine", time=utcnow(), sender=long_sender).as_row()["sender"], ["bob@example.com"])
    report = quarantine.release(row_id, who="admin")
    assert not report.ok and not report.delivered and "may have been cut" in (report.error or "")
    assert quarantine.release(row_id, who="admin", force=False).error  # given back: still releasable, still refused
    row = add_from(quarantine, "b" * 400 + "@example.org", ["bob@example.com"])
    assert quarantine.release(row, who="admin").ok


@pytest.mark.parametrize("address", ["<a@example.net>", '"Joe" <joe@example.net>', '"a<b>"@example.net'])
def test_an_address_postfix_passed_with_angle_brackets_is_sendable(address: str) -> None:
    """Postfix accepts ``RCPT TO:<<a@example.net>>`` and RFC 822 forms and passes them on as written: a first
    version of the verbatim sending refused any angle bracket (released before, refused for ever after)."""
    assert _unsendable(address, utf8=False) == ""
    assert _unsendable("a@example.net\r\nRSET", utf8=False).startswith(UNSENDABLE)


def test_a_digest_from_a_display_name_goes_from_its_address(tmp_path: Path, sink: Sink) -> None:
    """``report_from = "Quarantine <postmaster@mx.test>"``: the digest went out as MAIL FROM:<Quarantine <…>>."""
    conf = write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": f"127.0.0.1:{sink.port}", "report_from": "Quarantine <postmaster@mx.test>"},
    })
    quarantine = open_quarantine(conf)
    add_from(quarantine, "alice@example.org", ["bob@example.com"])
    quarantine.digest(["admin@example.org"], utcnow() - dt.timedelta(days=1))
    [message] = sink.wait(1)
    assert message.sender == "postmaster@mx.test" and message.header("From") == ["Quarantine <postmaster@mx.test>"]


def test_spamd_is_taught_as_the_raw_recipient_its_scan_named(tmp_path: Path) -> None:
    """A recipient with undecodable bytes is stored escaped; the scan's ``User:`` had the bytes themselves."""
    quarantine = open_with(tmp_path, "@recipient")
    assert quarantine._spamd_user({"recipients": [storable("j\udce9r\udcf4me@example.com")]}) == "j\udce9r\udcf4me@example.com"  # noqa: SLF001
