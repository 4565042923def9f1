"""``rules whatif`` holds a message at its action for a hit that may have forced one only when, with the settings
in effect, it may: an attachment category that only scores, a scanner or check that fails open, a DMARC action of
"score" force nothing, and the milter so configured lowers the message with the threshold; ``--since`` reads a date
written without hyphens (ISO 8601's basic form) as a date; ``milterd log`` says how many symbols its table leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milterd.checks.attachments import ENCRYPTED, MISMATCH
from milterd.checks.clamav import VIRUS
from milterd.cli import main
from milterd.config import Config, load_config
from milterd.store import MessageRecord, Store
from milterd.tuning import forcing_symbols, whatif
from tests.unit.test_tuning_fourth_review import MILTER, NO_SPAM_ACTIONS, row


@pytest.mark.parametrize(("symbol", "scoring", "forcing"), [
    (MISMATCH, {}, {"checks.attachments.mismatch_action": "quarantine"}),
    (ENCRYPTED, {}, {"checks.attachments.encrypted_action": "reject"}),
    ("SPAMD_ERROR", {}, {"spamd.on_error": "tempfail"}),
    ("CLAMAV_ERROR", {"clamav.on_error": "accept"}, {}),
    ("DMARC_FAIL_QUARANTINE", {"checks.dmarc.quarantine_action": "score"}, {}),
    ("CHECK_ERROR", {}, {"milter.on_check_error": "tempfail"}),
])
def test_fix_a_hit_that_forces_nothing_as_configured_does_not_hold_the_message(
        symbol: str, scoring: dict[str, str], forcing: dict[str, str]) -> None:
    logged = row("reject", {"BIG": 15.0, symbol: 5.0})
    scored = whatif([logged], {}, NO_SPAM_ACTIONS, MILTER, may_force=forcing_symbols(Config().with_changes(scoring)))
    # Held at reject ("may be forced") although, so configured, the hit only scores (or fails open): the milter
    # without the reject and quarantine thresholds would tag it.
    assert scored.changes == {("reject", "rewrite_subject"): 1} and not scored.kept_may_force
    forced = whatif([logged], {}, NO_SPAM_ACTIONS, MILTER, may_force=forcing_symbols(Config().with_changes(forcing)))
    assert forced.changed == 0 and forced.kept_may_force == {"reject": 1}


def test_a_virus_always_may_force() -> None:
    assert VIRUS in forcing_symbols(Config()) and "EOM_TIMEOUT" in forcing_symbols(Config())


def test_fix_whatif_on_the_log_lowers_a_message_whose_hit_only_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    store = Store(load_config(conf).database)
    store.upgrade()
    store.log_message(MessageRecord(action="reject", client_addr="192.0.2.1", score=16.5, reason="score 16.5 >= reject 15",
                                    symbols={"SPAMASSASSIN": 15.0, MISMATCH: 1.5}))
    store.close()
    # "0 would change action": held for ATTACH_TYPE_MISMATCH, which mismatch_action = "score" (the default) never forces.
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.reject=false", "--json"]) == 0
    assert [(c["from"], c["to"], c["count"]) for c in json.loads(capsys.readouterr().out)["changes"]] == [("reject", "quarantine", 1)]


@pytest.mark.parametrize("since", ["%Y-%m-%d", "%Y%m%d", "3600"])
def test_fix_since_reads_eight_digits_that_make_a_date_as_that_date(tmp_path: Path, capsys: pytest.CaptureFixture[str], since: str) -> None:
    import datetime as dt

    from milterd.units import parse_since

    assert parse_since("20261106") == dt.datetime(2026, 11, 6, tzinfo=dt.timezone.utc)
    assert parse_since("10000000") < parse_since("1s")  # no date (month 00): 10,000,000 seconds back, as before
    now = dt.datetime.now(dt.timezone.utc)
    since = (now - dt.timedelta(days=30)).strftime(since)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    store = Store(load_config(conf).database)
    store.upgrade()
    for subject, time in (("recent", now), ("old", now - dt.timedelta(days=100))):
        store.log_message(MessageRecord(action="accept", time=time, client_addr="192.0.2.1", subject=subject))
    store.close()
    # 20261106 was 20,261,106 seconds (234 days) back: the row of 100 days ago was listed too.
    assert main(["log", "-c", str(conf), "--since", since, "--json"]) == 0
    assert [row["subject"] for row in json.loads(capsys.readouterr().out)] == ["recent"]


def test_fix_the_log_table_says_how_many_symbols_it_leaves_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    store = Store(load_config(conf).database)
    store.upgrade()
    symbols = {f"RULE_{n}": 1.0 for n in range(11)}
    store.log_message(MessageRecord(action="add_header", client_addr="192.0.2.1", score=11.0, symbols=symbols, reason="score 11 >= add_header 5"))
    store.close()
    assert main(["log", "-c", str(conf)]) == 0
    assert "(+3 more: --json lists every one)" in capsys.readouterr().out
