"""Property test: any header names and values go through header/eoh/eom to a verdict.

The pipeline is driven directly (no Postfix), with a Services built from a
temporary milter.conf and SQLite store, header by header as the adapter does:
names arrive as bytes and are decoded as the adapter decodes them.  No
exception may escape, every message gets a verdict and a log row, and no check
may fail on a header (``CHECK_ERROR``: a check crashed and was caught).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milterd.config import load_config
from milterd.message.model import Action, Session
from milterd.message.pipeline import Pipeline
from milterd.services import build

KNOWN_NAMES = [b"Subject", b"From", b"To", b"Cc", b"Reply-To", b"Message-ID", b"Date", b"Received", b"Content-Type",
               b"Content-Transfer-Encoding", b"Content-Disposition", b"MIME-Version", b"X-Spam-Status", b"X-Spam-Flag",
               b"X-Spam-Score", b"Authentication-Results", b"DKIM-Signature", b"Return-Path", b"List-Unsubscribe", b"X-Mailer"]
TRICKY_VALUES = [b"", b" ", b"=?utf-8?b?w6k=?=", b"=?utf-8?q?=ZZ?=", b"=?bogus?x?y?=", b"<>", b"<@>", b"\"\" <>", b"a@", b"@b",
                 b"multipart/mixed; boundary=", b"text/plain; charset=\"\xff\"", b"Mon, 99 Foo 99999 99:99:99 +9999",
                 b"Yes, score=999 required=5.0", b"\x00", b"\r\n\t", b"(((((((((((", b"\"unterminated", b"x" * 5000]

names = st.one_of(st.sampled_from(KNOWN_NAMES), st.binary(min_size=0, max_size=40))
values = st.one_of(st.sampled_from(TRICKY_VALUES), st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
headers = st.lists(st.tuples(names, values), max_size=25)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    root: Path = tmp_path_factory.mktemp("props")
    (root / "rules").mkdir()
    (root / "milter.conf").write_text(
        f'[milter]\nhostname = "mx.test"\ntrusted_networks = []\n[database]\nurl = "sqlite:///{root / "p.sqlite"}"\n[rules]\ndir = "{root / "rules"}"\n'
        # DNS checks run too, against a port where nothing listens: every answer is an error, at once.
        '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 0.01\n'
    )
    services = build(load_config(root / "milter.conf"))
    services.store.ensure_schema(True)
    pipeline = Pipeline(services)
    yield pipeline
    pipeline.shutdown()
    services.close()


def _adapter_name(raw: bytes) -> str:
    # What adapter.MilterdMilter._header does with a name pymilter passes as bytes.
    return raw.decode("ascii", "replace")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(headers=headers, body=st.binary(max_size=2000))
def test_any_headers_get_a_verdict(pipeline: Pipeline, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    session = Session(client_addr="192.0.2.10", client_name="unknown", family="inet", helo="client.example.org")
    pipeline.connect(session)
    pipeline.helo(session)
    envelope = pipeline.new_envelope(session)
    envelope.sender = "alice@example.org"
    envelope.queue_id = "PROPTEST"
    if pipeline.mail(session, envelope) is None:
        pipeline.rcpt(session, envelope, "bob@example.com")
        pipeline.data(session, envelope)
    for name, value in headers:
        pipeline.header(session, envelope, _adapter_name(name), value)
    pipeline.eoh(session, envelope)
    if body:
        pipeline.body(session, envelope, body)
    outcome = pipeline.eom(session, envelope)
    assert isinstance(outcome.verdict.action, Action)
    assert outcome.record is not None and envelope.logged
    assert "CHECK_ERROR" not in outcome.verdict.symbols, outcome.verdict.details
    for edit in outcome.edits:  # what the adapter would hand to libmilter must be encodable
        edit.name.encode("ascii")
        edit.value.encode("utf-8", "replace")
    pipeline.finish(session, envelope)
    pipeline.close(session)
