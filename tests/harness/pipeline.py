"""Driving milterd's pipeline directly, as the adapter does, without the milter protocol:
for tests of the scanner checks (with or without real clamd and spamd)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from milterd.config import Config, load_config
from milterd.message.model import Envelope, Session
from milterd.message.pipeline import Outcome, Pipeline
from milterd.milter.adapter import MilterdMilter
from milterd.services import build
from tests.harness.scanners import GTUBE

HAM = b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: lunch\r\nMessage-ID: <1@example.org>\r\n\r\nSee you at noon.\r\n"
SPAM = HAM.replace(b"See you at noon.", GTUBE.encode())


def scanner_pipeline(tmp_path: Path, clamd_address: str, spamd_address: str, **changes: object) -> Pipeline:
    """A pipeline with only the clamav and spamassassin checks, logging to SQLite under *tmp_path*."""
    settings = {
        "milter.hostname": "mx.test",
        "database.url": f"sqlite:///{tmp_path / 'log.sqlite'}",
        "rules.dir": "",  # no local rules: the shipped ones only
        "clamav.enabled": True,
        "clamav.address": clamd_address,
        "spamd.enabled": True,
        "spamd.address": spamd_address,
    }
    settings.update({k.replace("__", "."): v for k, v in changes.items()})
    services = build(Config().with_changes(settings))
    # Only the scanners: the other checks' scores are not what is tested here.
    services.checks = [c for c in services.checks if c.name in ("clamav", "spamassassin")]
    services.store.ensure_schema(True)
    return Pipeline(services)


def run_message(pipeline: Pipeline, message: bytes, chunk: int = 65536, queue_id: str = "QID1") -> tuple[Outcome, Envelope]:
    """Send *message* through every stage of *pipeline* (body in *chunk*-byte pieces); the outcome at end of message."""
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
    pipeline.connect(session)
    pipeline.helo(session)
    envelope = pipeline.new_envelope(session)
    envelope.sender = "alice@example.org"
    envelope.queue_id = queue_id
    assert pipeline.mail(session, envelope) is None
    pipeline.rcpt(session, envelope, "bob@example.com")
    pipeline.data(session, envelope)
    head, _, body = message.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        pipeline.header(session, envelope, name.decode(), value.strip())
    pipeline.eoh(session, envelope)
    for start in range(0, len(body), chunk):
        pipeline.body(session, envelope, body[start : start + chunk])
    try:
        return pipeline.eom(session, envelope), envelope
    finally:
        pipeline.finish(session, envelope)
        pipeline.shutdown()


def milter_worker(conf: Path) -> Iterator[type[MilterdMilter]]:
    """MilterdMilter with its own pipeline from *conf*, as a worker sets it before serving; closed after
    (a fixture's body: ``yield from milter_worker(conf)``)."""
    services = build(load_config(conf))
    services.store.ensure_schema(True)
    pipeline = Pipeline(services)

    class Worker(MilterdMilter):
        pass

    Worker.pipeline = pipeline
    yield Worker
    pipeline.shutdown()
    services.close()
