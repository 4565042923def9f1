"""bench/profile.py's pure parts: py-spy's collapsed stacks and perf script lines to top frames (made-up samples)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import parse_perf_script, parse_stacks, top_frames, top_total


def test_collapsed_stacks_to_self_and_total_shares() -> None:
    lines = [
        'process 12:"python -m milterd";main (cli.py);eom (pipeline.py);log_message (store.py) 6',
        "main (cli.py);eom (pipeline.py) 2",
        "thread 0x7f;main (cli.py);header (adapter.py) 2",
        "garbage line",
        "recursive (x.py);recursive (x.py) 0",
    ]
    stacks = parse_stacks(lines)
    assert sum(stacks.values()) == 10
    assert ("main (cli.py)", "eom (pipeline.py)", "log_message (store.py)") in stacks  # pseudo-frames dropped
    rows = {frame: (own, total) for frame, own, total in top_frames(stacks, limit=10)}
    assert rows["log_message (store.py)"] == pytest.approx((60.0, 60.0))
    assert rows["eom (pipeline.py)"] == pytest.approx((20.0, 80.0))
    assert rows["main (cli.py)"] == pytest.approx((0.0, 100.0))
    assert top_frames(stacks, limit=1)[0][0] == "log_message (store.py)"
    assert top_total(stacks, limit=1)[0][0] == "main (cli.py)"
    assert top_frames(parse_stacks([])) == []


def test_perf_script_lines_of_the_workers_only() -> None:
    lines = [
        "  101      7f06266bcab4 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)",
        "  101      ffffffff8100 finish_task_switch.isra.0 ([kernel.kallsyms])",
        "  102      7f0626594eed mi_engine (/usr/lib/x86_64-linux-gnu/libmilter.so.1.0.1)",
        "  999      55babb7508f0 Perl_hv_common (/usr/bin/perl)",
        "  101      7f0626594eed [unknown] (/usr/lib/libsqlite3.so.0)",
    ]
    found = parse_perf_script(lines, {101, 102})
    assert found == {("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"): 1, ("[kernel.kallsyms]", "finish_task_switch.isra.0"): 1,
                     ("libmilter.so.1.0.1", "mi_engine"): 1, ("libsqlite3.so.0", "[unknown]"): 1}


def test_baseline_twin_runs_the_same_row_from_another_tree() -> None:
    from bench.scenarios import SCENARIOS, Bench, baseline_twin

    unix = next(s for s in SCENARIOS if s.name == "unix")
    seen: list[str | None] = []

    def setup(bench: Bench, scenario: object) -> object:
        seen.append(bench.pythonpath)
        return "backend"

    unix_copy = type(unix)(unix.name, unix.title, unix.group, setup)
    twin = baseline_twin(unix_copy, "abc123", Path("/tmp/base"))
    assert (twin.name, twin.reference, twin.group) == ("unix@base", "unix", unix.group) and "baseline abc123" in twin.title
    bench = Bench(Path("/nonexistent"))
    assert twin.setup is not None and twin.setup(bench, twin) == "backend"
    assert seen == ["/tmp/base"] and bench.pythonpath is None
