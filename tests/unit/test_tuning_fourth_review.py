"""Fourth review of ``rules stats|whatif``, ``log`` and the custom rules: whatif on rows a
score cannot re-derive (a forced action under a higher score, symbols that do not add up,
symbols renamed since), --set scores that are not finite, JSON without NaN or Infinity,
terminal escapes in every text column, and rule files refused with their file and rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.clamav import VIRUS
from milterd.cli import main
from milterd.config import ActionsSection, Config, ConfigError, MilterSection, load_config
from milterd.services import build
from milterd.store import MessageRecord, Store
from milterd.tuning import rescore, whatif

ACTIONS = ActionsSection(add_header=5.0, rewrite_subject=8.0, quarantine=12.0, reject=15.0)
#: Neither reject nor quarantine by score: what an administrator tries to see what they catch.
NO_SPAM_ACTIONS = ACTIONS.model_copy(update={"reject": False, "quarantine": False})
MILTER = MilterSection()


def row(action: str, symbols: dict[str, float], score: float | None = None, **extra: Any) -> dict[str, Any]:
    """A log row whose action the score chose (reason ``score … >= …``)."""
    total = round(sum(symbols.values()), 2) if score is None else score
    reason = f"score {total:g} >= {action} 1" if action != "accept" else ""
    return {"action": action, "score": total, "reason": reason, "symbols": symbols, "details": {},
            "client_addr": "192.0.2.1", "auth_user": "", **extra}


def strict_json(text: str) -> Any:
    """*text* parsed as RFC 8259 JSON: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# --- whatif: a forced action under a score that went further --------------------------------
@pytest.mark.parametrize("symbol", [VIRUS, "DMARC_FAIL_QUARANTINE", "SPAMD_ERROR"])
def test_a_score_reject_over_a_hit_that_may_force_an_action_is_not_lowered(symbol: str) -> None:
    # [clamav] action = "quarantine" (or discard), a DMARC quarantine, spamd down with on_error =
    # tempfail: under a score of 20 the row's reason is the score.  Without the reject and
    # quarantine thresholds the old code said "rewrite_subject"; the milter would still hold it.
    logged = row("reject", {"BIG": 15.0, symbol: 5.0})
    item = rescore(logged, {}, NO_SPAM_ACTIONS, MILTER)
    assert item.kept and item.new_action == "reject" and item.why == "may_force"
    report = whatif([logged], {}, NO_SPAM_ACTIONS, MILTER)
    assert report.changed == 0 and report.kept_may_force == {"reject": 1}
    assert report.as_json()["kept_may_be_forced"] == {"reject": 1}


def test_rows_without_such_a_hit_or_raised_still_move() -> None:
    assert rescore(row("reject", {"BIG": 20.0}), {}, NO_SPAM_ACTIONS, MILTER).new_action == "rewrite_subject"
    # A score quarantine cannot hide a forced one (that would be named as the reason).
    assert rescore(row("quarantine", {"BIG": 8.0, VIRUS: 5.0}), {}, NO_SPAM_ACTIONS, MILTER).new_action == "rewrite_subject"
    # Raising the action is never undoing a forced one.
    lower = ACTIONS.model_copy(update={"reject": 3.0})
    assert rescore(row("add_header", {"SMALL": 1.0, VIRUS: 5.0}), {}, lower, MILTER).new_action == "reject"


# --- whatif: rows a re-scoring cannot reproduce ----------------------------------------------
def test_a_row_whose_symbols_do_not_add_up_to_its_score_is_kept_and_counted() -> None:
    # An older version's row: score 6 logged, its symbols sum to 10.5.  With the settings
    # unchanged the old code "changed" it to rewrite_subject.
    logged = row("add_header", {"BAYES_SPAM": 9.0, "OLD": 1.5}, score=6.0)
    report = whatif([logged], {}, ACTIONS, MILTER)
    assert report.changed == 0 and report.unexplained == {"add_header": 1}
    assert report.as_json()["kept_unexplained"] == {"add_header": 1}


# --- the CLI on a stored log -----------------------------------------------------------------
@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    store = Store(load_config(path).database)
    store.upgrade()
    store.log_message(MessageRecord(
        action="add_header", client_addr="192.0.2.1", queue_id="Q\x1b[2J1", sender="a@example.org", score=6.0,
        reason="score 6 >= add_header 5", symbols={"HELO_BARE_IP": 2.0, "OLD_RENAMED_X": 4.0},
    ))
    store.close()
    return path


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_whatif_refuses_a_score_that_is_not_finite(conf: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    # nan counted 0 unsaid; inf rejected everything and printed Infinity in --json.
    assert main(["rules", "whatif", "-c", str(conf), "--set", f"symbols.HELO_BARE_IP={value}", "--json"]) == 2
    assert "finite" in capsys.readouterr().err


def test_whatif_names_symbols_no_check_emits_now(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.add_header=4"]) == 0
    assert "OLD_RENAMED_X 1" in capsys.readouterr().out
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.add_header=4", "--json"]) == 0
    assert strict_json(capsys.readouterr().out)["unknown_symbols"] == {"OLD_RENAMED_X": 1}


def test_whatif_text_escapes_the_queue_id(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.rewrite_subject=5.5"]) == 0
    out = capsys.readouterr().out
    assert "add_header -> rewrite_subject" in out and "\x1b" not in out and "Q\\x1b[2J1" in out


def test_log_and_stats_text_escape_symbol_names(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(load_config(conf).database)
    store.log_message(MessageRecord(action="accept", client_addr="192.0.2.1", symbols={"X\x1b]0;owned\x07": 0.5}, score=0.5))
    store.close()
    for argv in (["log"], ["rules", "stats"]):
        assert main([*argv, "-c", str(conf)]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out and "X\\x1b]0;owned\\x07" in out


@pytest.mark.parametrize("argv", [["log"], ["rules", "stats"], ["rules", "whatif", "--set", "actions.reject=false"]])
def test_json_has_no_nan_or_infinity_whatever_was_logged(conf: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    # A row of a version that let `score = inf` (TOML) through: json.dump wrote Infinity, not JSON.
    store = Store(load_config(conf).database)
    store.log_message(MessageRecord(action="reject", client_addr="192.0.2.1", score=float("inf"), reason="score inf >= reject 15",
                                    symbols={"HELO_BARE_IP": float("inf")}))
    store.close()
    assert main([*argv, "-c", str(conf), "--json"]) == 0
    data = strict_json(capsys.readouterr().out)
    if argv == ["log"]:
        assert data[0]["score"] is None and data[0]["symbols"] == {"HELO_BARE_IP": None}
    elif argv[1] == "whatif":
        assert data["changes"][0]["examples"][0]["old_score"] is None  # reject -> quarantine, at score inf


# --- custom rules refused with the file and the rule --------------------------------------
def config_with(tmp_path: Path, files: dict[str, str]) -> Config:
    (tmp_path / "rules").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "rules" / name).write_text(text)
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    return load_config(path)


def test_a_rule_defined_in_two_local_files_names_both(tmp_path: Path) -> None:
    rule = "[[rule]]\nname = \"BODY_DUP\"\nbody = '{}'\n"
    config = config_with(tmp_path, {"10-a.toml": rule.format("x"), "20-b.toml": rule.format("y")})
    with pytest.raises(ConfigError) as caught:
        build(config)
    assert caught.value.file.endswith("20-b.toml") and caught.value.key == "rule BODY_DUP"
    assert "10-a.toml" in caught.value.reason


@pytest.mark.parametrize("kind", ["body = '(?V1)x'", "header = \"Subject\"\nregex = '(?V1)x'"])
def test_a_regex_with_flags_regex_refuses_is_refused_with_file_and_rule(tmp_path: Path, kind: str) -> None:
    # regex raises ValueError for (?V1) under VERSION0: the old code named milter.conf and "check custom".
    config = config_with(tmp_path, {"local.toml": f"[[rule]]\nname = \"RX_FLAGS\"\n{kind}\n"})
    with pytest.raises(ConfigError) as caught:
        build(config)
    assert caught.value.file.endswith("local.toml") and caught.value.key.startswith("rule RX_FLAGS.")
    assert "bad regular expression" in caught.value.reason


# --- whatif: changes the settings in effect make on their own ----------------------------
def test_whatif_counts_the_changes_no_set_asked_for() -> None:
    # Logged accepted at 6 when add_header was 7; the settings in effect say add_header at 5.
    # Asked only to move rewrite_subject, the old code put this row among the changes unsaid.
    drifted = row("accept", {"BIG": 6.0})
    moved = row("add_header", {"BIG": 5.2}, reason="score 5.2 >= add_header 5")
    asked = ACTIONS.model_copy(update={"add_header": 5.5})
    report = whatif([drifted, moved], {}, asked, MILTER, current=ACTIONS)
    assert report.changes == {("accept", "add_header"): 1, ("add_header", "accept"): 1}
    assert report.unasked == {("accept", "add_header"): 1}
    assert report.as_json()["changed_without_changes"] == 1


def test_whatif_text_says_how_many_changes_no_set_asked_for(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(load_config(conf).database)
    # OLD_RULE: no rule emits it now, so it keeps its logged score (HELO_BARE_IP takes its weight in effect, 2.0).
    store.log_message(MessageRecord(action="accept", client_addr="192.0.2.1", score=6.0, symbols={"HELO_BARE_IP": 2.0, "OLD_RULE": 4.0}))
    store.close()
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.rewrite_subject=5.5"]) == 0
    out = capsys.readouterr().out
    assert "of which 1 would change with no --set at all" in out and "(1 with no --set)" in out


# --- custom rules: what would silently never hit ----------------------------------------
@pytest.mark.parametrize("header", ["Subject:", "Subject ", "X Mailer"])
def test_a_header_rule_on_a_name_no_field_has_is_refused(tmp_path: Path, header: str) -> None:
    config = config_with(tmp_path, {"local.toml": f"[[rule]]\nname = \"HDR_NEVER\"\nheader = \"{header}\"\nregex = 'x'\n"})
    with pytest.raises(ConfigError) as caught:
        build(config)
    assert caught.value.file.endswith("local.toml") and caught.value.key == "rule HDR_NEVER.header"


def test_a_meta_naming_a_symbol_of_a_check_that_is_off_is_said_at_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # clamav is off by default: "not CLAMAV_VIRUS" is true of every message.
    rules = "[[rule]]\nname = \"BODY_A\"\nbody = 'x'\n[[rule]]\nname = \"META_A\"\nmeta = 'BODY_A and not CLAMAV_VIRUS'\n"
    with caplog.at_level("WARNING", logger="milterd"):
        build(config_with(tmp_path, {"local.toml": rules}))
    said = [r.getMessage() for r in caplog.records if "META_A" in r.getMessage()]
    assert len(said) == 1 and "local.toml" in said[0] and "CLAMAV_VIRUS" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="milterd"):
        build(config_with(tmp_path, {"local.toml": rules.replace("not CLAMAV_VIRUS", "not SPF_PASS")}))
    assert not [r for r in caplog.records if "META_A" in r.getMessage()]


def test_whatif_text_escapes_logged_action_names(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(load_config(conf).database)
    store.log_message(MessageRecord(action="old\x1b[2J", client_addr="192.0.2.1", reason="a reason", score=1.0, symbols={"HELO_BARE_IP": 1.0}))
    store.close()
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.add_header=4"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "old\\x1b[2J 1" in out


def test_log_text_never_cuts_an_escape_in_half_and_whatif_cuts_a_huge_sender(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The subject column is 40 characters: the old code cut "\x9b" to "\x…".
    subject = "Hi \x1b]0;owned\x07\x1b[31mred\u202e \x9b2J and more"
    store = Store(load_config(conf).database)
    store.log_message(MessageRecord(action="add_header", client_addr="192.0.2.1", sender="s" * 5000 + "@example.org", subject=subject,
                                    score=6.0, reason="score 6 >= add_header 5", symbols={"HELO_BARE_IP": 6.0}))
    store.close()
    assert main(["log", "-c", str(conf), "--limit", "1"]) == 0
    first = capsys.readouterr().out.splitlines()[1]
    assert first.endswith("\\u202e …")
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.rewrite_subject=5.5"]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) < 400
