"""Release review of metrics, logging, ``milterd log`` and ``doctor``: what they print must be true and safe.

No test here sends traffic anywhere: doctor's resolver is replaced by a fake.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from milterd import diagnostics, dns, metrics
from milterd.commands import doctor
from milterd.commands.log import print_table
from milterd.config import Config
from milterd.diagnostics import Finding, judge_postfix, milter_entries, probe_dns, same_socket
from milterd.dns import Answer
from milterd.services import build


class _FakeResolver:
    """Answers A questions from a table; the real one would ask the network."""

    answers: dict[str, Answer] = {}

    def __init__(self, *_args: Any) -> None:
        self.asked: list[str] = []

    def query(self, name: str, rdtype: str, deadline: float | None = None) -> Answer:
        return self.answers.get(name, Answer(name, rdtype, "nxdomain"))

    def close(self) -> None:
        pass


def _dns_findings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answers: dict[str, tuple[str, ...]]) -> dict[str, Finding]:
    config = Config.model_validate({"rules": {"dir": str(tmp_path)}})  # the shipped zones only
    services = build(config)
    monkeypatch.setattr(_FakeResolver, "answers", {name: Answer(name, "A", "ok", records) for name, records in answers.items()})
    monkeypatch.setattr(diagnostics, "Resolver", _FakeResolver)
    try:
        return {f.name: f for f in probe_dns(config, services)}
    finally:
        services.close()


def test_doctor_does_not_call_a_refused_dnsbl_answer_ok(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Spamhaus answers 127.255.255.254 to a public resolver: the check counts every client as not
    # listed (DNSBL_REFUSED); doctor said "ok" because the test entry had an answer.
    found = _dns_findings(monkeypatch, tmp_path, {
        "2.0.0.127.zen.spamhaus.org": ("127.255.255.254",),
        "2.0.0.127.bl.spamcop.net": ("127.0.0.2",),
    })
    assert found["dns zen.spamhaus.org"].status == "warn", found
    assert "refuse" in found["dns zen.spamhaus.org"].detail
    assert found["dns bl.spamcop.net"].status == "ok"


def test_doctor_does_not_probe_the_lists_of_a_dnsbl_check_that_is_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Was: a warning per zone ("does not list its test entry"), a failure with a dead resolver, for lists not used.
    config = Config.model_validate({"rules": {"dir": str(tmp_path)}, "checks": {"dnsbl": {"enabled": False}}})
    services = build(config)
    monkeypatch.setattr(diagnostics, "Resolver", _FakeResolver)
    try:
        found = probe_dns(config, services)
    finally:
        services.close()
    assert [(f.name, f.status, f.detail) for f in found] == [("dns", "skip", "[checks.dnsbl] enabled = false")]


def test_doctor_does_not_call_an_answer_outside_loopback_ok(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A resolver rewriting NXDOMAIN to an advertising host: the check ignores answers outside 127.0.0.0/8.
    found = _dns_findings(monkeypatch, tmp_path, {"2.0.0.127.bl.spamcop.net": ("198.51.100.7",)})
    assert found["dns bl.spamcop.net"].status == "warn", found
    assert "127.0.0.0/8" in found["dns bl.spamcop.net"].detail


def test_a_relative_unix_milter_is_judged_against_postfix_queue_directory() -> None:
    # Postfix reads unix:milterd.sock as QUEUE_DIRECTORY/milterd.sock; a milterd socket elsewhere
    # that only ends the same way is not reached (doctor said "ok").
    assert not same_socket("unix:/run/milterd/milterd.sock", "unix:milterd.sock", "/var/spool/postfix")
    assert not same_socket("unix:/srv/other/milterd/milterd.sock", "unix:milterd/milterd.sock", "/var/spool/postfix")
    assert same_socket("unix:/var/spool/postfix/milterd/milterd.sock", "unix:milterd/milterd.sock", "/var/spool/postfix")
    # A second Postfix instance: postconf's own queue_directory decides.
    config = Config().with_changes({"milter.socket": "unix:/var/spool/postfix-out/milterd/milterd.sock"})
    settings = {"smtpd_milters": "unix:milterd/milterd.sock", "queue_directory": "/var/spool/postfix-out"}
    found = {f.name: f for f in judge_postfix(config, settings)}
    assert found["postfix smtpd_milters"].status == "ok", found
    assert "queue_directory" in diagnostics.POSTFIX_PARAMETERS


def test_an_empty_milter_entry_is_no_traceback() -> None:
    assert milter_entries("{ , default_action=accept }, inet:127.0.0.1:8895") == ["", "inet:127.0.0.1:8895"]


def test_doctor_text_output_escapes_what_backends_said(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A banner or a VERSION reply reaches the detail as the server wrote it.
    findings = [Finding("quarantine release_smtp", "ok", "127.0.0.1:10026: 220 mx\x1b]0;owned\x07\x1b[2J"), Finding("x\r\nFAIL", "ok", "")]
    monkeypatch.setattr(doctor, "diagnose", lambda *args, **kwargs: findings)
    assert doctor.run_doctor(argparse.Namespace(config=None, postfix_config=None, no_postfix=True, json=False, strict=False)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b]0;owned\\x07" in out and len(out.splitlines()) == 3


def test_log_table_escapes_the_queue_id(capsys: pytest.CaptureFixture[str]) -> None:
    row = {"time": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "queue_id": "Q1\x1b[2J\r\nforged", "action": "accept", "score": 0.0,
           "sender": "a@example.org", "recipients": ["c@example.net"], "subject": "hi", "symbols": {}, "reason": ""}
    print_table([row])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and len(out.splitlines()) == 2


def test_metrics_on_a_port_in_use_leave_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # serve refuses to start ([metrics] listen: Address already in use); the temporary directory,
    # the environment and the DNS cache hook it had set up stayed, and metrics counted as on.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            metrics.start(f"127.0.0.1:{busy.getsockname()[1]}")
    try:
        assert list(tmp_path.iterdir()) == []
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
        assert not metrics.enabled() and dns._cache_observer is None  # noqa: SLF001
    finally:
        monkeypatch.setattr(metrics, "_metrics", None)
        monkeypatch.setattr(metrics, "_directory", None)
        dns.observe_cache(None)
