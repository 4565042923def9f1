"""The benchmark's pure helpers (bench/report.py): medians, ratios, targets, selection, the table.

No timing here: the figures are made up.
"""

from __future__ import annotations

import pytest

from bench.report import Row, Sample, Target, check_target, median, ratio, rotate, round_ratios, select, table, verdict_word

NAMES = ["postfix", "unix", "inet", "inet-pg", "checks", "scanners", "chain", "spamc"]
GROUPS = {"postfix": "core", "unix": "core", "inet": "core", "inet-pg": "db", "checks": "checks", "scanners": "scanners", "chain": "scanners", "spamc": "scanners"}
REFERENCES = {"inet-pg": "inet", "checks": "inet", "scanners": "chain", "chain": "spamc", "unix": "postfix", "inet": "postfix"}


def row(name: str, rates: list[float], serial_ms: list[float] = ()) -> Row:
    r = Row(name, name.title())
    r.concurrent = [Sample(1000, 10, 1000 / rate) for rate in rates]
    r.serial = [Sample(100, 1, ms / 10) for ms in serial_ms]
    return r


def test_sample_rate_and_latency() -> None:
    sample = Sample(2000, 10, 4.0)
    assert sample.rate == 500
    assert sample.ms_per_message == 2.0
    assert Sample(0, 1, 0.0).rate == 0.0


def test_median_of_rows_and_empty() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([]) is None
    assert row("x", [100, 300, 200]).rate == pytest.approx(200)
    assert row("x", []).rate is None


def test_ratio_is_against_the_reference_median() -> None:
    postfix, unix = row("postfix", [800, 1000, 900]), row("unix", [700, 600, 720])
    assert ratio(unix, postfix) == pytest.approx(700 / 900)
    assert ratio(unix, None) is None
    assert ratio(row("empty", []), postfix) is None


def test_targets() -> None:
    rows = {"postfix": row("postfix", [1000]), "inet": row("inet", [650], [3.0])}
    assert check_target(Target("ratio", 0.6, "postfix"), rows["inet"], rows)[0] is True
    met, note = check_target(Target("ratio", 0.75, "postfix"), rows["inet"], rows)
    assert met is False and "0.65" in note
    assert check_target(Target("serial_ms", 10.0), rows["inet"], rows)[0] is True
    assert check_target(Target("serial_ms", 2.0), rows["inet"], rows)[0] is False
    assert check_target(Target("ratio", 1.0, "chain"), rows["inet"], rows)[0] is None
    assert [verdict_word(x) for x in (True, False, None)] == ["PASS", "FAIL", "n/a"]
    with pytest.raises(ValueError):
        check_target(Target("bogus", 1.0), rows["inet"], rows)


def test_ratio_note_gives_the_round_by_round_ratios() -> None:
    # Row medians 360/500 = 0.72; round by round 0.70, 0.90, 0.75: median 0.75.
    rows = {"inet": row("inet", [500, 400, 600]), "auth": row("auth", [350, 360, 450])}
    met, note = check_target(Target("ratio", 0.8, "inet"), rows["auth"], rows)
    assert met is False and note.startswith("≥ 0.8 × inet: 0.72")
    assert round_ratios(rows["auth"], rows["inet"]) == pytest.approx([0.7, 0.9, 0.75])
    assert note.endswith("(per round: median 0.75, 0.70–0.90)")
    one = {"inet": row("inet", [500]), "auth": row("auth", [450])}
    assert check_target(Target("ratio", 0.8, "inet"), one["auth"], one)[1] == "≥ 0.8 × inet: 0.90"


def test_serial_max_target_is_against_the_slower_reference() -> None:
    rows = {"clamd": row("clamd", [500], [1.0]), "spamc": row("spamc", [12], [100.0]), "milterd": row("milterd", [12], [104.0])}
    met, note = check_target(Target("serial_max", 5.0, "clamd,spamc"), rows["milterd"], rows)
    assert met is True and "limit 105.0 ms" in note and "max(clamd, spamc)" in note
    assert check_target(Target("serial_max", 3.0, "clamd,spamc"), rows["milterd"], rows)[0] is False
    assert check_target(Target("serial_max", 5.0, "clamd,gone"), rows["milterd"], rows)[0] is None


def test_serial_ratio_and_cpu_targets() -> None:
    rows = {"rspamd": row("rspamd", [130], [50.0]), "checks-clamd": row("checks-clamd", [260], [10.0])}
    met, note = check_target(Target("serial_ratio", 0.25, "rspamd"), rows["checks-clamd"], rows)
    assert met is True and "0.20" in note and "× rspamd serial" in note
    assert check_target(Target("serial_ratio", 0.1, "rspamd"), rows["checks-clamd"], rows)[0] is False
    assert check_target(Target("serial_ratio", 0.25, "gone"), rows["checks-clamd"], rows)[0] is None
    worker = rows["checks-clamd"]
    worker.concurrent = [Sample(1000, 10, 4.0, cpu_ms=1500.0), Sample(1000, 10, 4.0, cpu_ms=1700.0)]
    met, note = check_target(Target("cpu_ms", 1.6), worker, rows)
    assert met is True and "1.60 ms" in note
    assert check_target(Target("cpu_ms", 1.5), worker, rows)[0] is False
    assert check_target(Target("cpu_ms", 1.6), rows["rspamd"], rows)[0] is None


def test_select_all_names_groups_and_references() -> None:
    assert select(NAMES, "", GROUPS, REFERENCES) == NAMES
    assert select(NAMES, "unix", GROUPS, REFERENCES) == ["postfix", "unix"]
    # a group, and the rows its rows are compared with, transitively
    assert select(NAMES, "scanners", GROUPS, REFERENCES) == ["postfix", "scanners", "chain", "spamc"]
    assert select(NAMES, "checks,inet-pg", GROUPS, REFERENCES) == ["postfix", "inet", "inet-pg", "checks"]
    with pytest.raises(ValueError, match="nope"):
        select(NAMES, "unix,nope", GROUPS, REFERENCES)


def test_rotate_starts_each_round_elsewhere() -> None:
    assert rotate(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotate(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotate(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert rotate([], 3) == []


def test_table_rows_ratios_skips_and_problems() -> None:
    postfix, inet = row("postfix", [1000], [2.0]), row("inet", [600], [3.0])
    inet.concurrent[0].rss_mb = 58.0
    skipped = Row("chain", "Chain", skipped="clamav-milter missing")
    broken = row("unix", [500])
    broken.problems.append("1999 log rows for 2000 messages")
    text = table([postfix, inet, skipped, broken])
    lines = text.splitlines()
    assert lines[0].startswith("| scenario |") and len(lines) == 6
    assert "0.60 × postfix" in lines[3] and "3.0" in lines[3] and "58" in lines[3]
    assert "skipped: clamav-milter missing" in lines[4]
    assert "1999 log rows" in lines[5]
    assert "0.83 × inet" in table([postfix, inet, broken], references={"unix": "inet"}).splitlines()[4]
