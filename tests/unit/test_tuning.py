"""``milterd rules stats|whatif|list|symbols|lint`` on a seeded log and the shipped rules/."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import tomllib
from pathlib import Path

import pytest

from milterd.checks import builtin_symbols
from milterd.cli import main
from milterd.config import ActionsSection, load_config
from milterd.store import MessageRecord, Store
from milterd.tuning import Judged, mass_report

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = {"HELO_NOT_FQDN": 1.5, "RDNS_NONE": 1.5, "BAYES_LIKE": 4.0, "URI_X": 2.0, "NEG": -1.0}
THRESHOLDS = {"add_header": 5.0, "rewrite_subject": 8.0, "quarantine": 12.0, "reject": 15.0}


def threshold_action(score: float, thresholds: dict[str, float]) -> str:
    """The test's own recomputation of the thresholds (most severe first)."""
    for name in ("reject", "quarantine", "rewrite_subject", "add_header"):
        if thresholds.get(name) is not False and score >= thresholds[name]:
            return name
    return "accept"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("tuning")
    rules = root / "rules"
    rules.mkdir()
    # The seeded symbols must be known for --set symbols.NAME: declare the non-built-in ones as rules.
    (rules / "local.toml").write_text(
        "\n".join(f"[[rule]]\nname = \"{name}\"\nbody = 'x{name}'\nscore = {score}\n" for name, score in SYMBOLS.items() if name in ("BAYES_LIKE", "URI_X", "NEG", "HELO_NOT_FQDN", "RDNS_NONE") and name not in builtin_symbols())
    )
    conf = root / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{root}/log.sqlite"\n')
    store = Store(load_config(conf).database)
    store.upgrade()
    rng = random.Random(7)
    rows: list[dict] = []
    now = dt.datetime.now(dt.timezone.utc)
    for number in range(120):
        names = [n for n in SYMBOLS if rng.random() < 0.45]
        symbols = {n: SYMBOLS[n] for n in names}
        score = round(sum(symbols.values()), 2)
        action = threshold_action(score, THRESHOLDS)
        reason = f"score {score:g} >= {action} {THRESHOLDS[action]:g}" if action != "accept" else ""
        client = f"192.0.2.{number % 250 + 1}"
        kind = number % 10
        if kind == 0:  # a virus: forced, whatever the score
            action, reason = "reject", "CLAMAV_VIRUS: Eicar-Signature"
        elif kind == 1:  # trusted client: not scored
            client, action, reason = "127.0.0.1", "accept", ""
        elif kind == 2:  # greylisted at RCPT
            action, reason = "greylist", "451 4.7.1 Greylisted"
        age = dt.timedelta(days=10) if number < 20 else dt.timedelta(hours=number % 48)
        record = MessageRecord(action=action, time=now - age, queue_id=f"Q{number:04d}", client_addr=client, sender=f"s{number}@example.org",
                               subject=f"message {number}", score=score, reason=reason, symbols=symbols,
                               released_as_ham=(number % 7 == 3))
        store.log_message(record)
        rows.append({"number": number, "action": action, "score": score, "symbols": symbols, "kind": kind, "time": now - age,
                     "released": number % 7 == 3, "client": client})
    store.close()
    return conf, rows


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_agree_with_a_recomputation(seeded, capsys) -> None:
    conf, rows = seeded
    out = run_json(capsys, "rules", "stats", "-c", str(conf), "--json")
    # Greylisted attempts (451) are counted apart: their retry, if any, is a row of its own.
    final = [r for r in rows if r["action"] != "greylist"]
    assert out["messages"] == len(final) and out["deferred_attempts"] == len(rows) - len(final)
    by_symbol = {s["symbol"]: s for s in out["symbols"]}
    for name, score in SYMBOLS.items():
        hit = [r for r in final if name in r["symbols"]]
        assert by_symbol[name]["hits"] == len(hit)
        assert by_symbol[name]["on_deferred_attempts"] == sum(1 for r in rows if r["action"] == "greylist" and name in r["symbols"])
        assert by_symbol[name]["share"] == pytest.approx(len(hit) / len(final), abs=1e-4)
        assert by_symbol[name]["mean_score"] == pytest.approx(score)
        assert by_symbol[name]["in_reject_or_quarantine"] == sum(1 for r in hit if r["action"] in ("reject", "quarantine"))
        assert by_symbol[name]["released_as_ham"] == sum(1 for r in hit if r["released"])


def test_stats_since(seeded, capsys) -> None:
    conf, rows = seeded
    out = run_json(capsys, "rules", "stats", "-c", str(conf), "--since", "7d", "--json")
    assert out["messages"] == sum(1 for r in rows if r["number"] >= 20 and r["action"] != "greylist")


def recompute_whatif(rows: list[dict], weights: dict[str, float], thresholds: dict[str, float]) -> dict[tuple[str, str], int]:
    changes: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["kind"] in (0, 1, 2):  # forced or not scored: kept
            continue
        score = round(sum(weights.get(n, s) for n, s in row["symbols"].items()), 2)
        new = threshold_action(score, thresholds)
        if new != row["action"]:
            changes[(row["action"], new)] = changes.get((row["action"], new), 0) + 1
    return changes


@pytest.mark.parametrize(
    ("sets", "weights", "thresholds"),
    [
        (["actions.reject=6"], {}, {**THRESHOLDS, "reject": 6.0}),
        (["symbols.BAYES_LIKE=9", "actions.add_header=3"], {"BAYES_LIKE": 9.0}, {**THRESHOLDS, "add_header": 3.0}),
        (["actions.quarantine=false", "symbols.NEG=-5"], {"NEG": -5.0}, {**THRESHOLDS, "quarantine": False}),
    ],
)
def test_whatif_agrees_with_a_recomputation(seeded, capsys, sets, weights, thresholds) -> None:
    conf, rows = seeded
    argv = ["rules", "whatif", "-c", str(conf), "--json"]
    for item in sets:
        argv += ["--set", item]
    out = run_json(capsys, *argv)
    expected = recompute_whatif(rows, weights, thresholds)
    got = {(c["from"], c["to"]): c["count"] for c in out["changes"]}
    assert got == expected
    assert out["changed"] == sum(expected.values())
    # Greylisted attempts (kind 2) are not messages: counted apart, as rules stats counts them.
    assert out["messages"] == sum(1 for row in rows if row["kind"] != 2)
    assert out["deferred_attempts"] == sum(1 for row in rows if row["kind"] == 2)
    kept = sum(1 for r in rows if r["kind"] in (0, 1))  # the virus (reject: none more severe) and the trusted
    assert sum(out["kept_forced"].values()) == kept
    for change in out["changes"]:
        assert 1 <= len(change["examples"]) <= 3


def test_whatif_text_and_bad_set(seeded, capsys) -> None:
    conf, _rows = seeded
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.reject=6"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\d+ would change action", text) and "kept as they were" in text
    assert main(["rules", "whatif", "-c", str(conf), "--set", "symbols.NO_SUCH=1"]) == 2
    assert "NO_SUCH" in capsys.readouterr().err
    assert main(["rules", "whatif", "-c", str(conf), "--set", "actions.rejct=1"]) == 2


def test_symbols_toml_lists_every_builtin_symbol() -> None:
    """rules/symbols.toml is generated by `milterd rules symbols`; regenerate it when a check adds symbols."""
    table = tomllib.loads((REPO / "rules" / "symbols.toml").read_text())["symbols"]
    missing = sorted(set(builtin_symbols()) - set(table))
    assert not missing, f"not in rules/symbols.toml (run `milterd rules symbols > rules/symbols.toml`): {missing}"


def test_symbols_toml_is_what_rules_symbols_writes(capsys) -> None:
    """Names, scores and descriptions: the shipped file is the generated one (it drifted in four descriptions)."""
    assert main(["rules", "symbols", "-c", str(REPO / "milter.conf")]) == 0
    assert capsys.readouterr().out == (REPO / "rules" / "symbols.toml").read_text(), "run `milterd rules symbols > rules/symbols.toml`"


def test_shipped_configuration_lints(capsys) -> None:
    assert main(["rules", "lint", "-c", str(REPO / "milter.conf")]) == 0
    assert "OK" in capsys.readouterr().out


def test_local_toml_examples_compile(tmp_path: Path, capsys) -> None:
    text = (REPO / "rules" / "local.toml").read_text()
    uncommented = "\n".join(line[2:] if re.match(r"^# (\[|\w+ = )", line) else line for line in text.splitlines())
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(uncommented)
    (tmp_path / "milter.conf").write_text("")
    assert main(["rules", "lint", "-c", str(tmp_path / "milter.conf")]) == 0
    assert main(["rules", "list", "-c", str(tmp_path / "milter.conf"), "--json"]) == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out.split("\n", 1)[1])}
    assert listed["META_LOTTERY_WIRE"]["check"] == "custom" and listed["META_LOTTERY_WIRE"]["score"] == 3.0


def test_broken_rule_file_exit_2_names_file_and_rule(tmp_path: Path, capsys) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "bad.toml").write_text("[[rule]]\nname = \"BROKEN_ONE\"\nheader = \"Subject\"\nregex = 'a(b'\n")
    (tmp_path / "milter.conf").write_text("")
    assert main(["rules", "lint", "-c", str(tmp_path / "milter.conf")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "BROKEN_ONE" in err and "regular expression" in err


def test_mass_report_counts() -> None:
    items = [
        Judged("spam", "s", "s1", 20.0, "reject", {"A": 20.0}),
        Judged("spam", "s", "s2", 6.0, "add_header", {"A": 6.0}),
        Judged("spam", "s", "s3", 1.0, "accept", {"B": 1.0}),
        Judged("spam", "s", "s4", 0.0, "reject", {"VIRUS": 0.0}, forced=True),
        Judged("ham", "h", "h1", 5.5, "add_header", {"A": 5.5}),
        Judged("ham", "h", "h2", 0.0, "accept", {}),
    ]
    report = mass_report(items, ActionsSection())
    assert report["overall"]["spam"]["flagged"] == 3 and report["overall"]["ham"]["flagged"] == 1
    at = {row["threshold"]: row for row in report["thresholds"]}
    assert at[15.0]["spam_caught"] == 2 and at[15.0]["ham_flagged"] == 0 and at[15.0]["actions"] == ["reject"]
    assert at[3.0]["spam_caught"] == 3 and at[3.0]["ham_flagged"] == 1
    assert report["false_positives"]["symbols"][0] == {"symbol": "A", "messages": 1, "score": 5.5}
    assert report["misses"]["messages"] == 1 and report["misses"]["symbols"][0]["symbol"] == "B"
