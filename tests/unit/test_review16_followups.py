"""Review 16 follow-ups of ``[greylist] on_error = "tempfail"`` (c625484) and of the URI lists' options.

1. ``milterd doctor``: Postfix's ``milter_default_action = accept`` while greylisting fails
   closed is named, as the scanners' and the log's ``on_error = "tempfail"`` are.
2. ``rules whatif``: a row that a greylist store that did not answer tempfailed (score mode:
   its reason starts with the score that greylisted it) is not re-scored as if the store had
   answered, as a scanner's 451 is not; a row of ``on_error = "accept"`` (the message went on)
   is re-scored as before.  ``whatif`` and ``rules stats`` count the tempfail as a deferred attempt.
3. ``[checks.uribl] ip_lists``: its description gives no example address that is never looked up.

The rows of 2. are those the pipeline logs, the greylist table taken away under it.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from milterd.checks.uribl import UriblChecks
from milterd.cli import main as cli_main
from milterd.config import ActionsSection, Config, MilterSection, load_config
from milterd.diagnostics import Finding, judge_postfix
from milterd.message.model import Envelope, Session
from milterd.message.pipeline import Pipeline
from milterd.services import Services, build
from milterd.tuning import log_stats, rescore, whatif
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import NO_RESOLVER, write_config

POSTFIX = {"smtpd_milters": "inet:127.0.0.1:8895", "milter_default_action": "accept", "milter_content_timeout": "300s",
           "milter_command_timeout": "30s", "milter_protocol": "6"}
DEFAULT_ACTION = "postfix milter_default_action"


def default_action_finding(changes: dict[str, object], default_action: str = "accept") -> Finding:
    findings = judge_postfix(Config().with_changes(changes), {**POSTFIX, "milter_default_action": default_action})
    [finding] = [f for f in findings if f.name == DEFAULT_ACTION]
    return finding


# --- 1. doctor -----------------------------------------------------------------------------
def test_doctor_names_greylisting_that_fails_closed_under_accept() -> None:
    # The log fails open: before, only the generic warning, greylisting's 451 unnamed.
    finding = default_action_finding({"database.on_error": "accept", "greylist.enabled": True, "greylist.on_error": "tempfail"})
    assert finding.status == "warn"
    assert finding.detail.startswith("accept while greylist fail closed (on_error = tempfail)"), finding.detail


def test_doctor_names_greylisting_beside_the_others() -> None:
    finding = default_action_finding({"clamav.enabled": True, "greylist.enabled": True, "greylist.on_error": "tempfail"})
    assert finding.detail.startswith("accept while clamav, database, greylist fail closed"), finding.detail


@pytest.mark.parametrize("changes", [
    {"greylist.enabled": True, "greylist.on_error": "accept"},     # fails open (the default)
    {"greylist.enabled": False, "greylist.on_error": "tempfail"},  # off: nothing to fail, as a scanner that is off
])
def test_doctor_leaves_greylisting_out_when_it_cannot_fail_closed(changes: dict[str, object]) -> None:
    finding = default_action_finding({"database.on_error": "accept", **changes})
    assert "greylist" not in finding.detail and finding.detail.startswith("accept: when milterd is down"), finding.detail


def test_doctor_is_content_with_tempfail_whatever_greylisting_does() -> None:
    finding = default_action_finding({"greylist.enabled": True, "greylist.on_error": "tempfail"}, default_action="tempfail")
    assert (finding.status, finding.detail) == ("ok", "tempfail")


# --- 2. whatif and stats on the rows the pipeline logs ------------------------------------------
RULES = '[[rule]]\nname = "SUBJ_GREYME"\nheader = "Subject"\nregex = "greyme"\nscore = 50.0\n'
#: The thresholds the rows are logged under: a score of 50 greylists (the store down: tempfail, or rewrite_subject with accept).
ACTIONS = {"add_header": 5.0, "rewrite_subject": 8.0, "greylist": 40.0, "quarantine": False, "reject": False}
MILTER = MilterSection(trusted_networks=[])


@pytest.fixture
def logged_row(tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """The log row of a message scoring 50 in score mode with the greylist store gone, by ``[greylist] on_error``."""
    made: list[tuple[Pipeline, Services]] = []

    def log_one(on_error: str) -> dict[str, Any]:
        root = tmp_path / on_error
        (root / "rules").mkdir(parents=True)
        (root / "rules" / "grey.toml").write_text(RULES)
        conf = write_config(root / "milter.conf", with_sections(NO_CHECKS, {
            "milter": {"hostname": "mx.test", "trusted_networks": [], "spool_memory": 1024},
            "dns": {"nameservers": [NO_RESOLVER]},
            "database": {"url": f"sqlite:///{root / 'log.sqlite'}"},
            "rules": {"dir": str(root / "rules")},
            "actions": ACTIONS,
            "greylist": {"enabled": True, "mode": "score", "delay": 300, "whitelist_providers": False, "auto_whitelist_after": 0, "on_error": on_error},
        }))
        services = build(load_config(conf))
        services.store.ensure_schema(True)
        built = Pipeline(services)
        made.append((built, services))
        with sqlite3.connect(root / "log.sqlite") as db:
            db.execute("ALTER TABLE greylist RENAME TO greylist_away")  # every read of it fails in the driver
        session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
        built.connect(session)
        built.helo(session)
        envelope: Envelope = built.new_envelope(session)
        envelope.sender, envelope.queue_id = "alice@example.org", f"Q{on_error.upper()}"
        assert built.mail(session, envelope) is None
        assert built.rcpt(session, envelope, "bob@example.com") is None
        assert built.data(session, envelope) is None
        for name, value in (("From", b"alice@example.org"), ("To", b"bob@example.com"), ("Subject", b"greyme now"), ("Message-ID", b"<1@example.org>")):
            built.header(session, envelope, name, value)
        built.eoh(session, envelope)
        built.body(session, envelope, b"hello\r\n")
        try:
            built.eom(session, envelope)
        finally:
            built.finish(session, envelope)
        [row] = services.store.messages(limit=None)
        return row

    yield log_one
    for built, services in made:
        built.shutdown()
        services.close()


def thresholds(**changes: object) -> ActionsSection:
    return ActionsSection(**{**ACTIONS, **changes})


def test_the_rows_are_what_the_milter_logs(logged_row: Callable[[str], dict[str, Any]]) -> None:
    tempfailed, passed = logged_row("tempfail"), logged_row("accept")
    assert tempfailed["action"] == "tempfail" and "GREYLIST_ERROR" in tempfailed["symbols"] and tempfailed["reason"].startswith("score 50 ")
    assert passed["action"] == "rewrite_subject" and "GREYLIST_ERROR" in passed["symbols"] and passed["reason"].startswith("score 50 ")


@pytest.mark.parametrize(("weights", "actions"), [
    ({}, thresholds(greylist=False)),         # before: rewrite_subject, as if on_error = accept
    ({"SUBJ_GREYME": 0.0}, thresholds()),      # before: accept
    ({}, thresholds()),                        # the settings it was logged under, before: rewrite_subject
])
def test_whatif_keeps_a_greylist_store_tempfail(logged_row: Callable[[str], dict[str, Any]], weights: dict[str, float], actions: ActionsSection) -> None:
    item = rescore(logged_row("tempfail"), weights, actions, MILTER)
    assert (item.old_action, item.new_action, item.why) == ("tempfail", "tempfail", "forced")


def test_whatif_raises_a_greylist_store_tempfail_to_a_reject_the_score_reaches(logged_row: Callable[[str], dict[str, Any]]) -> None:
    # A score at reject is rejected before greylisting asks the store: the milter's answer.
    item = rescore(logged_row("tempfail"), {}, thresholds(reject=30.0), MILTER)
    assert (item.new_action, item.why) == ("reject", "")


@pytest.mark.parametrize(("weights", "actions", "expected"), [
    ({}, thresholds(), "rewrite_subject"),
    ({}, thresholds(greylist=False), "rewrite_subject"),
    ({"SUBJ_GREYME": 6.0}, thresholds(), "add_header"),
    ({"SUBJ_GREYME": 0.0}, thresholds(), "accept"),
    ({}, thresholds(reject=30.0), "reject"),
])
def test_whatif_rescores_an_accept_mode_greylist_error_as_before(
    logged_row: Callable[[str], dict[str, Any]], weights: dict[str, float], actions: ActionsSection, expected: str,
) -> None:
    item = rescore(logged_row("accept"), weights, actions, MILTER)
    assert (item.new_action, item.why) == (expected, "")


def test_whatif_and_stats_count_the_tempfail_as_a_deferred_attempt(logged_row: Callable[[str], dict[str, Any]]) -> None:
    rows = [logged_row("tempfail"), logged_row("accept")]
    report = whatif(rows, {"SUBJ_GREYME": 0.0}, thresholds(), MILTER)
    assert report.messages == 1 and report.deferred == {"tempfail": 1}
    assert report.changes == {("rewrite_subject", "accept"): 1}  # the accept-mode message; the 451 is no message
    stats = log_stats(rows)
    assert stats.messages == 1 and stats.deferred == {"tempfail": 1}
    [error] = [s for s in stats.symbols if s.symbol == "GREYLIST_ERROR"]
    assert (error.hits, error.deferred) == (1, 1)


# --- 3. the ip_lists description -------------------------------------------------------------
def test_ip_lists_description_names_no_address_that_is_never_looked_up() -> None:
    description = UriblChecks.model_fields["ip_lists"].description or ""
    for literal in re.findall(r"\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*::[0-9A-Fa-f:]*", description):
        try:
            address = ipaddress.ip_address(literal)
        except ValueError:
            continue
        assert address.is_global, f"{literal}: an address link uribl never looks up (not is_global)"
    assert "public" in description


def test_milter_conf_carries_the_description() -> None:
    description = UriblChecks.model_fields["ip_lists"].description or ""
    conf = (Path(__file__).resolve().parents[2] / "milter.conf").read_text()
    assert f"# {description}\nip_lists = " in conf


# --- greylist whitelist: --json without ACTION, and a reader that leaves (| head) ------------------
class _ClosedPipe(io.StringIO):
    """stdout read by ``head -1``: the reader leaves after the first few writes."""

    def write(self, text: str) -> int:
        if self.tell() > 100:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def _greylist_conf(tmp_path: Path) -> Path:
    path = tmp_path / "g.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/g.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    assert cli_main(["db", "upgrade", "-c", str(path)]) == 0
    return path


def test_greylist_whitelist_takes_json_without_an_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On 0b97d2f: `milterd greylist whitelist --json` was 'unrecognized arguments: --json' (exit 2)."""
    path = _greylist_conf(tmp_path)
    capsys.readouterr()
    assert cli_main(["greylist", "whitelist", "--json", "-c", str(path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    # Before the option's place: the list parser's own default (False) overwrote it (review of ad3fbc9).
    assert cli_main(["greylist", "whitelist", "--json", "list", "-c", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert any(r["kind"] == "client" and r["value"] == ".google.com" for r in rows)


def test_greylist_whitelist_into_a_closed_pipe(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On 0b97d2f: `milterd greylist whitelist | head -1` said 'cannot use the greylist: BrokenPipeError' and exited 1."""
    path = _greylist_conf(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli_main(["greylist", "whitelist", "-c", str(path)]) == 0
    assert "cannot use the greylist" not in capsys.readouterr().err
