"""doctor's rules about Postfix's settings (pure functions, no Postfix needed) and the classifier's model (an SQLite file)."""

from __future__ import annotations

import datetime as dt
import io
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from milterd.cli import main
from milterd.commands import doctor as doctor_command
from milterd.config import Config
from milterd.diagnostics import Finding, judge_model, judge_postfix, milter_entries, parse_postconf, probe_database, probe_learner, probe_serve_places, same_socket, worst
from milterd.store import Store
from milterd.store.learner import LearnerStore, ModelSummary, totals_table


def _by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings}


def test_parse_postconf_and_entries() -> None:
    settings = parse_postconf("smtpd_milters = inet:127.0.0.1:8895, { unix:milterd/milterd.sock, default_action=accept }\nmilter_protocol = 6\n")
    assert settings["milter_protocol"] == "6"
    assert milter_entries(settings["smtpd_milters"]) == ["inet:127.0.0.1:8895", "unix:milterd/milterd.sock"]


def test_same_socket() -> None:
    assert same_socket("inet:127.0.0.1:8895", "inet:127.0.0.1:8895")
    assert same_socket("inet:8895@127.0.0.1", "inet:localhost:8895")
    assert same_socket("inet:0.0.0.0:8895", "inet:10.0.0.1:8895")
    assert not same_socket("inet:127.0.0.1:8895", "inet:127.0.0.1:8896")
    assert same_socket("unix:/var/spool/postfix/milterd/milterd.sock", "unix:milterd/milterd.sock", "/var/spool/postfix")
    assert not same_socket("unix:/run/milterd.sock", "inet:127.0.0.1:8895")


def test_good_settings_are_ok() -> None:
    config = Config()
    settings = {"smtpd_milters": "inet:127.0.0.1:8895", "milter_default_action": "tempfail", "milter_content_timeout": "300s", "milter_command_timeout": "30s", "milter_protocol": "6"}
    findings = judge_postfix(config, settings)
    assert worst(findings) == "ok", findings


def test_risky_settings_warn() -> None:
    config = Config().with_changes({"clamav.enabled": True, "clamav.timeout": 120, "spamd.enabled": True, "spamd.timeout": 400})
    settings = {"smtpd_milters": "inet:127.0.0.1:9999", "milter_default_action": "accept", "milter_content_timeout": "300s", "milter_command_timeout": "1s", "milter_protocol": "2"}
    found = _by_name(judge_postfix(config, settings))
    assert found["postfix smtpd_milters"].status == "warn"
    assert found["postfix milter_default_action"].status == "warn" and "clamav" in found["postfix milter_default_action"].detail
    assert found["postfix milter_content_timeout"].status == "warn"
    assert found["postfix milter_command_timeout"].status == "warn"
    assert found["postfix milter_protocol"].status == "warn"


def test_worst() -> None:
    assert worst([Finding("a", "ok", ""), Finding("b", "skip", "")]) == "ok"
    assert worst([Finding("a", "ok", ""), Finding("b", "warn", "")]) == "warn"
    assert worst([Finding("a", "fail", ""), Finding("b", "warn", "")]) == "fail"


def _learned(tmp_path: Path, spam: int, ham: int) -> Config:
    """A configuration whose SQLite store holds a model with *spam* and *ham* messages learned, on 2026-11-01 and 2026-11-03."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "learner.min_spam": 2, "learner.min_ham": 2})
    store = Store(config.database)
    store.upgrade()
    repository = LearnerStore(store.engine)
    for i in range(spam + ham):
        when = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.timezone.utc) + dt.timedelta(days=2 * i / max(1, spam + ham - 1))
        repository.learn(f"d{i}", [i, 1000 + i, 7], "spam" if i < spam else "ham", now=when)
    store.close()
    return config


def test_model_summary_counts_messages_tokens_and_learn_times(tmp_path: Path) -> None:
    config = _learned(tmp_path, spam=2, ham=1)
    store = Store(config.database)
    try:
        summary = LearnerStore(store.engine).summary()
    finally:
        store.close()
    assert (summary.spam, summary.ham, summary.tokens, summary.messages) == (2, 1, 7, 3)
    assert (summary.spam_messages, summary.ham_messages, summary.inflated) == (2, 1, False)
    assert summary.oldest == dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.timezone.utc)
    assert summary.newest == dt.datetime(2026, 11, 3, 8, 0, tzinfo=dt.timezone.utc)


def test_doctor_warns_while_the_classifier_abstains_and_shows_the_model(tmp_path: Path) -> None:
    abstaining = probe_learner(_learned(tmp_path / "a", spam=2, ham=1))
    assert abstaining.status == "warn" and "abstains" in abstaining.detail
    assert "2 spam and 1 ham learned, 7 tokens" in abstaining.detail and "2026-11-01 08:00 to 2026-11-03 08:00 UTC" in abstaining.detail
    scoring = probe_learner(_learned(tmp_path / "b", spam=2, ham=2))
    assert scoring.status == "ok" and "scores (BAYES_*)" in scoring.detail and "tiers" not in scoring.detail


def test_doctor_on_the_classifier_off_missing_store_and_tiers(tmp_path: Path) -> None:
    off = Config().with_changes({"learner.enabled": False})
    assert probe_learner(off).status == "skip"
    missing = Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'none.sqlite'}"})
    assert probe_learner(missing).status == "warn" and "no store yet" in probe_learner(missing).detail
    assert not (tmp_path / "none.sqlite").exists()  # doctor created nothing
    tiered = _learned(tmp_path, spam=2, ham=2).with_changes({"learner.skip_spamd_below": -1.5})
    assert probe_learner(tiered).detail.endswith("; tiers on: spamd skipped for a score at or below -1.5 before spamd")
    both = tiered.with_changes({"learner.skip_spamd_above": 9})
    assert probe_learner(both).detail.endswith("tiers on: spamd skipped for a score at or above 9 or at or below -1.5 before spamd")


def test_doctor_fails_a_store_that_is_a_loop_of_links(tmp_path: Path) -> None:
    # Was: "no such file yet (serve will create it)", where serve refuses it.
    (tmp_path / "store.sqlite").symlink_to(tmp_path / "store.sqlite")
    [finding] = probe_database(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'store.sqlite'}"}))
    assert finding.status == "fail" and finding.detail.endswith("Too many levels of symbolic links"), finding


def test_doctor_fails_a_store_below_a_file(tmp_path: Path) -> None:
    # Was: only "no such file yet (serve will create it)", where serve refuses to start (found in review).
    (tmp_path / "file").write_text("")
    config = Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'file' / 'sub' / 'milterd.sqlite'}"})
    assert [(f.name, f.status, f.detail) for f in probe_serve_places(config)] == [
        ("[database] url", "fail", f"{tmp_path / 'file'} is not a directory (serve refuses to start)")]
    assert probe_serve_places(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'new' / 'milterd.sqlite'}"})) == []


def test_doctor_skips_the_classifier_of_a_store_serve_will_upgrade(tmp_path: Path) -> None:
    # Was: FAIL "StoreError: ... no such table: learner_totals" for a store made empty beforehand (install -m 600),
    # which serve upgrades itself: doctor failed on what the database finding already says.
    store_file = tmp_path / "store.sqlite"
    store_file.touch()
    finding = probe_learner(Config().with_changes({"database.url": f"sqlite:///{store_file}"}))
    assert finding.status == "skip" and "the store's schema is not current (see database)" in finding.detail, finding


def test_doctor_warns_when_more_was_counted_than_learned(tmp_path: Path) -> None:
    config = _learned(tmp_path, spam=2, ham=2)
    assert probe_learner(config).status == "ok"
    store = Store(config.database)
    try:
        # What relearning on PostgreSQL did before b4b3dd4: the totals (and tokens) counted again, no new digest.
        with store.engine.begin() as connection:
            connection.execute(update(totals_table).values(spam=totals_table.c.spam + 1))
        assert LearnerStore(store.engine).summary().inflated
    finally:
        store.close()
    finding = probe_learner(config)
    assert finding.status == "warn"
    assert "3 spam and 2 ham learned" in finding.detail and "more counted than the 2 spam and 2 ham recorded as learned" in finding.detail
    assert finding.detail.endswith("empty the model with milterd learn --clear and learn again")


def test_judge_model_trusts_totals_that_match_the_digests() -> None:
    assert judge_model(ModelSummary(300, 300, 10, 300, 300, None, None), 200, 200).status == "ok"
    assert judge_model(ModelSummary(300, 301, 10, 300, 300, None, None), 200, 200).status == "warn"
    assert judge_model(ModelSummary(299, 300, 10, 300, 300, None, None), 200, 200).status == "ok"  # fewer counted: not this defect


def test_judge_model_without_any_learn() -> None:
    finding = judge_model(ModelSummary(0, 0, 0, 0, 0, None, None), 200, 200)
    assert finding.status == "warn" and finding.detail.startswith("0 spam and 0 ham learned, 0 tokens: abstains (no BAYES_* symbol) until 200 spam and 200 ham")


def test_command_timeout_covers_mail_from() -> None:
    # MAIL FROM first logs the transaction refused before it (a store write), then waits for its own lookups' deadline
    # and SPF's (3 s each): Postfix's 5 s gave up at MAIL FROM; a second look measured 11 s with a 5 s busy_timeout.
    settings = {"smtpd_milters": "inet:127.0.0.1:8895", "milter_default_action": "tempfail", "milter_content_timeout": "300s", "milter_protocol": "6"}
    config = Config().with_changes({"dns.timeout": 3, "database.busy_timeout": 5})
    found = _by_name(judge_postfix(config, {**settings, "milter_command_timeout": "11s"}))["postfix milter_command_timeout"]
    assert found.status == "warn" and "11s" in found.detail and "SPF" in found.detail and "busy_timeout 5s" in found.detail
    assert "postfix milter_command_timeout" not in _by_name(judge_postfix(config, {**settings, "milter_command_timeout": "12s"}))


def test_a_message_size_limit_above_clamav_max_size_warns() -> None:
    # A message over [clamav] max_size is delivered with only its start scanned (review, thirty-sixth session):
    # doctor says so where Postfix accepts such messages.
    settings = {"smtpd_milters": "inet:127.0.0.1:8895"}
    config = Config().with_changes({"clamav.enabled": True, "clamav.max_size": "25M"})
    assert _by_name(judge_postfix(config, settings))["postfix message_size_limit"].status == "ok"  # Postfix's default, 10 MB
    for limit, shown in (("52428800", "52428800 bytes"), ("0", "0 (no limit)")):
        found = _by_name(judge_postfix(config, {**settings, "message_size_limit": limit}))["postfix message_size_limit"]
        assert found.status == "warn" and found.detail.startswith(f"{shown} is above [clamav] max_size (26214400 bytes)")
    assert "postfix message_size_limit" not in _by_name(judge_postfix(Config(), {**settings, "message_size_limit": "0"}))  # clamd off


class ClosedPipe(io.StringIO):
    """stdout read by ``head -c 10``: the reader leaves after the first write."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_doctor_into_a_closed_pipe_exits_with_its_findings_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `milterd doctor | head` exited 0 whatever it found (cli.main's status for a closed pipe): a monitoring script
    # with pipefail saw a failing host as healthy (review, thirty-sixth session).
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 0.2\n[database]\nurl = "sqlite:///{tmp_path}/none.sqlite"\nauto_upgrade = false\n')
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["doctor", "-c", str(conf), "--no-postfix"]) == 1


def test_doctor_with_its_standard_output_closed_exits_with_its_findings_status(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second look: started with fd 1 closed (sys.stdout None), the flush raised AttributeError: exit 1 whatever it found.
    monkeypatch.setattr(doctor_command, "diagnose", lambda *args, **kwargs: [Finding("classifier", "warn", "abstains")])
    monkeypatch.setattr(doctor_command, "private_client_findings", lambda path: [])
    monkeypatch.setattr(doctor_command, "reload_findings", lambda path: [])
    for stdout in (None, ClosedPipe()):
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["doctor", "--no-postfix"]) == 0  # a warning only
        assert main(["doctor", "--no-postfix", "--strict"]) == 1


def test_a_comment_pasted_after_a_main_cf_value_fails() -> None:
    """main.cf has no end-of-line comments: the README's own snippets had them, and Postfix took them as part of the
    values (non_smtpd_milters held "#", "optional:"…: cleanup answered 4.3.5 for every sendmail(1) message), while
    doctor found smtpd_milters "ok" from the address and milter_default_action "ok" (review)."""
    settings = {
        "smtpd_milters": "inet:127.0.0.1:8895", "non_smtpd_milters": "$smtpd_milters   # optional: also mail submitted with sendmail(1)",
        "milter_default_action": "tempfail     # milterd unreachable: clients retry, nothing is lost",
        "milter_content_timeout": "300s        # longer than the scanners' timeouts", "milter_protocol": "6",
    }
    found = _by_name(judge_postfix(Config(), settings))
    for name in ("non_smtpd_milters", "milter_default_action", "milter_content_timeout"):
        finding = found[f"postfix {name} comment"]
        assert finding.status == "fail" and "main.cf has no end-of-line comments" in finding.detail and "line of its own" in finding.detail
    assert "postfix smtpd_milters comment" not in found and found["postfix smtpd_milters"].status == "ok"
    assert "postfix milter_default_action" not in found  # said once, by the comment's finding
    assert worst(list(found.values())) == "fail"


@pytest.mark.parametrize("action", ["tempfial", "defer", "discard"])
def test_a_milter_default_action_postfix_does_not_know_fails(action: str) -> None:
    settings = {"smtpd_milters": "inet:127.0.0.1:8895", "milter_default_action": action}
    finding = _by_name(judge_postfix(Config(), settings))["postfix milter_default_action"]
    assert finding.status == "fail" and "4.3.5" in finding.detail and "tempfail" in finding.detail
