"""The verdict fields a sender writes never reach users: every X-Spam-* field (SpamAssassin's Level, Report and
Checker-Version, Rspamd's X-Spam), whatever ``[actions] headers`` says, which only stops milterd adding its own
(the Subject is still tagged at rewrite_subject); and X-Virus-* fields from clients clamd does not scan.

Driven through pymilter's callbacks with the helpers of tests/unit/test_adapter_pipeline_review.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest

from milterd.milter.adapter import MilterdMilter
from milterd.milter.offline import check_message

from .test_adapter_pipeline_review import Context, connect, eom, make_conf, make_pipeline

FORGED = [("X-Spam-Flag", b"NO"), ("X-Spam-Status", b"No, score=-3.0"), ("X-Spam-Level", b""), ("X-Spam-Report", b"* -5.0 ALL_TRUSTED"),
          ("X-Spam", b"No"), ("x-spam-checker-version", b"SpamAssassin 4.0.1 on mx.test"),
          ("X-Virus-Scanned", b"ClamAV using milterd at mx.test"), ("X-Virus-Status", b"Clean")]


def sent(ctx: Context, queue_id: str, subject: bytes, extra: list[tuple[str, bytes]]) -> tuple[int, list[tuple[str, str, str, int]]]:
    milter: MilterdMilter = ctx.getpriv()
    ctx._stage = -1
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
    ctx._setsymval("i", queue_id)
    assert milter.envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert milter.data() == Milter.CONTINUE
    for name, value in [("From", b"alice@example.org"), ("Subject", subject), *extra]:
        assert milter.header_bytes(name, value) == Milter.CONTINUE
    assert milter.eoh() == Milter.CONTINUE
    assert milter.body(b"Hello\r\n") == Milter.CONTINUE
    answer = eom(ctx)
    return answer, list(ctx.edits)


def removed(edits: list[tuple[str, str, str, int]]) -> set[str]:
    return {name.lower() for op, name, value, _ in edits if op == "change" and value == ""}


@pytest.mark.parametrize("headers", [True, False])
def test_fix_every_forged_spam_field_goes_and_the_subject_is_tagged(headers: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path, extra={"actions": {"headers": headers}})  # score 9: rewrite_subject
    services, pipeline = make_pipeline(conf)
    try:
        ctx = connect(pipeline, monkeypatch)
        answer, edits = sent(ctx, "QFORGED", b"SPAMME cheap pills", FORGED[:6])
        assert answer == Milter.CONTINUE
        # SpamAssassin's Level, Report and Checker-Version and Rspamd's X-Spam were delivered beside ours.
        assert removed(edits) == {"x-spam-flag", "x-spam-status", "x-spam-level", "x-spam-report", "x-spam", "x-spam-checker-version"}
        # With headers = false the Subject went untagged and the sender's "X-Spam-Flag: NO" was delivered.
        assert ("change", "Subject", " [SPAM] SPAMME cheap pills", 1) in edits
        ours = [name for op, name, _, _ in edits if op == "add"]
        assert ours == (["X-Spam-Status", "X-Spam-Score", "X-Spam-Flag"] if headers else [])
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


@pytest.mark.parametrize("who", ["trusted", "authenticated"])
def test_fix_forged_virus_fields_go_for_clients_clamd_does_not_scan(who: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra: dict[str, Any] = {"clamav": {"enabled": True, "address": "tcp:127.0.0.1:9", "scan_trusted": False}}  # nothing listens: never asked
    conf = make_conf(tmp_path, extra=extra)
    if who == "trusted":
        conf.write_text(conf.read_text().replace("trusted_networks = []", 'trusted_networks = ["192.0.2.0/24"]'))
    services, pipeline = make_pipeline(conf)
    try:
        ctx = connect(pipeline, monkeypatch)
        if who == "authenticated":
            ctx._setsymval("{auth_authen}", "alice")
        answer, edits = sent(ctx, "QVIRUS", b"hello", FORGED[6:])
        assert answer == Milter.CONTINUE
        # scan_trusted is off: nothing scanned it, and "X-Virus-Status: Clean" claimed this host had.
        assert removed(edits) == {"x-virus-scanned", "x-virus-status"}
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


def test_fix_check_reports_no_x_spam_status_the_milter_does_not_add(tmp_path: Path) -> None:
    from milterd.commands.check import offline_services
    from milterd.config import load_config
    from milterd.message.pipeline import Pipeline
    from milterd.milter.offline import Client

    conf = make_conf(tmp_path, rules='[[rule]]\nname = "TEST_REJ"\nheader = "Subject"\nregex = "REJECTME"\nscore = 20\n')
    services = offline_services(load_config(conf))
    pipeline = Pipeline(services, keep_log=False)
    try:
        raw = b"From: alice@example.org\r\nSubject: REJECTME\r\n\r\nHello\r\n"
        judged = check_message(pipeline, raw, Client("192.0.2.7", "", "client.example.org", "alice@example.org", ["bob@example.com"], ""), "m")
        assert judged.action.label == "reject"
        assert judged.spam_status == ""  # 'Yes, score=20.0 …': a header the milter never adds to a refused message
    finally:
        pipeline.shutdown()
        services.close()
