"""The message's own spool unreadable at end of message (an I/O error, or fewer bytes than were written) is
this machine's failure: 451 4.3.0 whichever check met it.  spamd's client turned the spool's OSError into
spamd's failure, so its default ``on_error = "accept"`` passed the message unscanned; the attachment check
judged such a message as having no attachment; the custom rules and URI lists as having no text."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest

from milterd import dkimsign
from milterd.config import Config
from milterd.message.model import Action, Session, Spool, SpoolError
from milterd.message.pipeline import Pipeline
from milterd.services import build
from tests.harness.pipeline import HAM, scanner_pipeline
from tests.unit.test_scanners_review import FakeServer, drive, only, spamd_answering

SPAMD_HAM = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; 0.0 / 5.0\r\n\r\n"
ATTACHED = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=setup.exe\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n")


@pytest.fixture
def failing_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of a spool fails as a disk with a bad sector does."""
    def read_at(self: Spool, offset: int, size: int) -> bytes:
        raise SpoolError("cannot read the spooled body: Input/output error") from OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Spool, "read_at", read_at)
    monkeypatch.setattr(Spool, "read", lambda self, limit=-1: read_at(self, 0, limit))


class BadSector(io.BytesIO):
    """A file whose reads fail as a disk with a bad sector does."""

    def read(self, size: int | None = -1) -> bytes:
        raise OSError(errno.EIO, "Input/output error")


def test_spool_reads_raise_spool_error_not_oserror(tmp_path: Path) -> None:
    spool = Spool(0, str(tmp_path))
    spool.write(b"x" * 100)
    spool._file = BadSector(b"x" * 100)
    with pytest.raises(SpoolError, match="Input/output error"):
        list(spool.chunks())
    with pytest.raises(SpoolError):
        spool.read()
    short = Spool(1024)
    short.write(b"y" * 100)
    short.size = 200  # written, but not there to read back
    with pytest.raises(SpoolError, match="short: 100 of 200"):
        list(short.chunks())


def test_spamd_accepting_on_error_does_not_pass_an_unreadable_message(tmp_path: Path, failing_reads: None) -> None:
    spamd = FakeServer(spamd_answering(SPAMD_HAM))
    try:
        pipeline = only(scanner_pipeline(tmp_path, spamd.address, spamd.address, spamd__on_error="accept", spamd__cache_size=0), "spamassassin")
        outcome = drive(pipeline, HAM)
    finally:
        spamd.close()
    assert outcome.verdict.action == Action.TEMPFAIL and "SPAMD_ERROR" not in outcome.verdict.symbols
    assert outcome.reply is not None and (outcome.reply.code, outcome.reply.xcode) == ("451", "4.3.0")


@pytest.mark.parametrize("check", ["attachments", "custom", "uribl"])
def test_content_checks_do_not_judge_an_unreadable_message_as_empty(tmp_path: Path, failing_reads: None, check: str) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "local.toml").write_text("[[rule]]\nname = \"TEST_BODY\"\nbody = 'hi'\nscore = 1\n")
    changes = {"dns.nameservers": ["127.0.0.1:9"], "clamav.enabled": False, "spamd.enabled": False, "rules.dir": str(rules)}
    services = build(scanner_pipeline(tmp_path, "tcp:127.0.0.1:9", "tcp:127.0.0.1:9").config.with_changes(changes))
    services.store.ensure_schema(True)
    services.checks = [c for c in services.checks if c.name == check]
    assert services.checks, check
    outcome = drive(Pipeline(services), ATTACHED)
    assert outcome.verdict.action == Action.TEMPFAIL, outcome.verdict
    assert outcome.reply is not None and outcome.reply.code == "451"


SIGNED = b"From: alice@signed.test\r\nTo: bob@example.com\r\nSubject: s\r\nMessage-ID: <1@signed.test>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nhi\r\n"


def test_signing_does_not_deliver_an_unreadable_message_unsigned(tmp_path: Path, failing_reads: None) -> None:
    # Signing met the unreadable spool after the verdict: the message went out unsigned
    # (DKIM_SIGN_ERROR), and the receiver's DMARC check would refuse it.  It waits for the retry.
    dkimsign.write_private(tmp_path / "out.key", dkimsign.generate("ed25519"))
    changes = {
        "database.url": f"sqlite:///{tmp_path / 'log.sqlite'}", "dns.nameservers": ["127.0.0.1:9"],
        "dkim_signing.enabled": True, "dkim_signing.keys": [{"domain": "signed.test", "selector": "sel", "key_file": str(tmp_path / "out.key")}],
    }
    services = build(Config().with_changes(changes))
    services.store.ensure_schema(True)
    services.checks = [c for c in services.checks if c.name == "dkim_sign"]
    assert services.checks
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet", auth_user="alice")
    try:
        outcome = drive(Pipeline(services), SIGNED, session=session, sender="alice@signed.test")
    finally:
        services.close()
    assert outcome.verdict.action == Action.TEMPFAIL and "DKIM_SIGN_ERROR" not in outcome.verdict.symbols
    assert outcome.reply is not None and (outcome.reply.code, outcome.reply.xcode) == ("451", "4.3.0")
    assert not [e for e in outcome.edits if e.name == "DKIM-Signature"]
