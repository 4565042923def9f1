"""Fifteenth session's review of the adapter and pipeline: what a trusted or authenticated client's
unscored mail carries, DKIM signing at rewrite_subject, and a client of unknown address family.

Driven through pymilter's callbacks with the helpers of tests/unit/test_adapter_pipeline_review.py.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import ClassVar

import Milter
import pytest

from milterd.checks import Check, Hits, Symbol
from milterd.commands.dkim import run_keygen
from milterd.message.model import Envelope, Hit, Session
from milterd.milter.adapter import MilterdMilter

from .test_adapter_pipeline_review import Context, connect, eom, log_rows, make_conf, make_pipeline, up_to_body


class ScoresEveryone(Check):
    """Stands in for a check that runs for trusted and authenticated clients too (spamd with scan_trusted, SPF)."""

    name: ClassVar[str] = "test_scores_everyone"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_SCORE", 0.0, "test"),)
    applies_to_trusted: ClassVar[bool] = True
    applies_to_authenticated: ClassVar[bool] = True
    score: ClassVar[float] = 6.0

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        return [Hit("TEST_SCORE", score=self.score)]


@pytest.mark.parametrize("who", ["trusted", "authenticated"])
def test_unscored_mail_gets_no_spam_headers_of_ours(who: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    conf = make_conf(tmp_path)
    if who == "trusted":
        conf.write_text(conf.read_text().replace("trusted_networks = []", 'trusted_networks = ["192.0.2.0/24"]'))
    services, pipeline = make_pipeline(conf, ScoresEveryone)
    try:
        ctx = connect(pipeline, monkeypatch)
        if who == "authenticated":
            ctx._setsymval("{auth_authen}", "alice")
        milter = up_to_body(ctx, "QUNSCORED")
        assert (milter.session.trusted, milter.session.authenticated) == (who == "trusted", who == "authenticated")
        assert eom(ctx) == Milter.CONTINUE
        Milter.close_callback(ctx)
        row = log_rows(conf, capsys)["QUNSCORED"]
        assert (row["action"], row["score"]) == ("accept", 6.0)  # logged with its score, not acted on
        assert not [name for _, name, _, _ in ctx.edits if name.lower().startswith("x-spam-")], ctx.edits
    finally:
        pipeline.shutdown()
        services.close()


def test_scored_mail_still_gets_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    conf = make_conf(tmp_path)
    services, pipeline = make_pipeline(conf, ScoresEveryone)
    try:
        ctx = connect(pipeline, monkeypatch)
        up_to_body(ctx, "QSCORED")
        eom(ctx)
        Milter.close_callback(ctx)
        assert log_rows(conf, capsys)["QSCORED"]["action"] == "add_header"
        assert ("add", "X-Spam-Flag", " YES", -1) in ctx.edits
    finally:
        pipeline.shutdown()
        services.close()


@pytest.mark.parametrize(("score", "action"), [(6, "add_header"), (9, "rewrite_subject"), (13, "quarantine")])
def test_authenticated_mail_is_signed_at_each_delivering_action(
    score: int, action: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_keygen(argparse.Namespace(domain="example.org", selector="s1", type="rsa", bits=1024, output=str(tmp_path / "k.key"))) == 0
    conf = make_conf(tmp_path)
    text = conf.read_text()
    text = text.replace("skip_authenticated = true", "skip_authenticated = false") if "skip_authenticated" in text else text.replace("[milter]\n", "[milter]\nskip_authenticated = false\n", 1)
    text += '\n[dkim_signing]\nenabled = true\nkeys = [{ domain = "example.org", selector = "s1", key_file = "k.key" }]\n'
    conf.write_text(text)
    monkeypatch.setattr(ScoresEveryone, "score", float(score))
    services, pipeline = make_pipeline(conf, ScoresEveryone)
    try:
        ctx = connect(pipeline, monkeypatch)
        ctx._setsymval("{auth_authen}", "alice")
        up_to_body(ctx, "QSIGN")
        eom(ctx)
        Milter.close_callback(ctx)
        row = log_rows(conf, capsys)["QSIGN"]
        assert row["action"] == action
        assert "DKIM_SIGNED" in row["symbols"]
        assert "DKIM-Signature" in [name for _, name, _, _ in ctx.edits]
    finally:
        pipeline.shutdown()
        services.close()


@pytest.mark.parametrize(("family", "address", "expected"), [(0, None, ("unknown", False)), (socket.AF_UNIX, "/run/local.sock", ("unix", True))])
def test_only_a_unix_socket_client_is_trusted_for_its_family(
    family: int, address: str | None, expected: tuple[str, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMFIA_UNKNOWN (pymilter: family 0, no address) is what Postfix sends for XCLIENT ADDR=[UNAVAILABLE]:
    with trusted_networks = [], such a client is not trusted; a local AF_UNIX peer is."""
    services, pipeline = make_pipeline(make_conf(tmp_path))
    try:

        class Worker(MilterdMilter):
            pass

        Worker.pipeline = pipeline
        monkeypatch.setattr(Milter, "factory", Worker)
        ctx = Context()
        assert ctx._negotiate() == Milter.CONTINUE
        ctx._stage = Milter.M_CONNECT
        assert Milter.connect_callback(ctx, "unknown", family, address) == Milter.CONTINUE
        session = ctx.getpriv().session
        assert (session.family, session.trusted) == expected
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()
