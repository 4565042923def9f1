"""The fault suite's proofs: a fault that never bit is reported, not passed.

The load leaves rows, replies, delivered headers and milterd's log; each
fault's proof must find in them that the fault happened and was met.  These
build that material by hand: once as a fault that bit, once as one that did
not (the scanner never called, the resolver's answers cached, the old
workers still there).
"""

from __future__ import annotations

from typing import Any

from tests.harness.faults import LISTED_SYMBOL, Observed, prove_clamd_kill, prove_reload, prove_resolver_stop, prove_spamd_stop, prove_store_down, prove_worker_kill
from tests.harness.load import SendResult


def row(fault: str, phase: str, n: int, *symbols: str, qid: str = "") -> dict[str, Any]:
    return {"subject": f"load {fault}-{phase}-{n:06d}", "queue_id": qid or f"Q{phase}{n}", "symbols": {s: 0.0 for s in symbols}}


def sent(fault: str, phase: str, n: int, code: int = 250) -> SendResult:
    return SendResult(f"{fault}-{phase}-{n:06d}", code, "ok" if code == 250 else "4.7.1 try again", f"Q{phase}{n}" if code == 250 else "")


def summary(pid: int, qid: str) -> str:
    return f"2026-12-02T05:40:00 milterd[{pid}]: INFO {qid}: action=accept score=0.0\n"


def test_observed_sorts_by_phase_and_finds_the_serving_worker() -> None:
    seen = Observed("spamd-stop", rows=[row("spamd-stop", "a", 1), row("spamd-stop", "c", 2, qid="QX")], log=summary(42, "QX"))
    assert [r["queue_id"] for r in seen.rows_in("c")] == ["QX"]
    assert seen.phase("spamd-stop-d-000001") == "d"
    assert seen.served_by(seen.rows_in("c")) == {42} and seen.served_by(seen.rows_in("a")) == set()


def test_spamd_stop_needs_scores_before_and_after_and_errors_between() -> None:
    bit = Observed("spamd-stop", rows=[row("spamd-stop", "a", 1, "SPAMASSASSIN"), row("spamd-stop", "d", 1, "SPAMD_ERROR"), row("spamd-stop", "c", 1, "SPAMASSASSIN")])
    assert prove_spamd_stop(bit).ok
    never_called = Observed("spamd-stop", rows=[row("spamd-stop", "a", 1), row("spamd-stop", "d", 1), row("spamd-stop", "c", 1)])
    proof = prove_spamd_stop(never_called)
    assert len(proof.missing) == 3 and not proof.shown


def test_resolver_stop_is_not_shown_when_answers_come_from_a_cache() -> None:
    cached = Observed("resolver-stop", rows=[row("resolver-stop", p, 1, LISTED_SYMBOL) for p in "abdc"])
    proof = prove_resolver_stop(cached)
    assert [m for m in proof.missing if "stopped resolver" in m]
    bit = Observed("resolver-stop", rows=[row("resolver-stop", "a", 1, LISTED_SYMBOL), row("resolver-stop", "d", 1, "DNSBL_TEMPFAIL"), row("resolver-stop", "c", 1, LISTED_SYMBOL)])
    assert prove_resolver_stop(bit).ok


def test_clamd_kill_needs_clean_headers_around_errors_and_4xx() -> None:
    clean = "Subject: x\r\nX-Virus-Status: Clean"
    bit = Observed(
        "clamd-kill",
        rows=[row("clamd-kill", "d", 1, "CLAMAV_ERROR")],
        results=[sent("clamd-kill", "d", 1, 451)],
        delivered={"clamd-kill-a-000001": [clean], "clamd-kill-c-000001": [clean]},
    )
    assert prove_clamd_kill(bit).ok
    unscanned = Observed("clamd-kill", delivered={"clamd-kill-a-000001": ["Subject: x"], "clamd-kill-c-000001": ["Subject: x"]}, results=[sent("clamd-kill", "d", 1)])
    assert len(prove_clamd_kill(unscanned).missing) == 4


def test_store_down_needs_the_probe_the_log_and_a_4xx() -> None:
    seen = Observed("sqlite-lock", results=[sent("sqlite-lock", "d", 1, 451)], log="ERROR Q1: cannot store the log row: database is locked\n")
    assert prove_store_down(seen, "database is locked", "locked").ok
    assert len(prove_store_down(Observed("sqlite-lock", results=[sent("sqlite-lock", "d", 1)]), "", "locked").missing) == 3


def test_worker_kill_needs_the_death_and_a_new_worker() -> None:
    log = "milterd[1]: WARNING worker 7 was killed by signal 9 (SIGKILL)\nmilterd[1]: WARNING worker died; starting a new one\n"
    assert prove_worker_kill(Observed("worker-kill", log=log), 7, {7, 8}, {8, 9}, victim_alive=False).ok
    proof = prove_worker_kill(Observed("worker-kill"), 7, {7, 8}, {7, 8}, victim_alive=True)
    assert len(proof.missing) == 4


def test_reload_needs_new_workers_and_the_new_rule_after_it() -> None:
    rows = [row("reload", "a", 1), row("reload", "c", 1, "FAULT_RELOADED", qid="QC")]
    done = Observed("reload", rows=rows, log="INFO reload done\n" + summary(9, "QC"))
    assert prove_reload(done, {7, 8}, {9, 10}, "FAULT_RELOADED").ok
    unfinished = Observed("reload", rows=[row("reload", "a", 1), row("reload", "c", 1, qid="QC")], log=summary(7, "QC"))
    proof = prove_reload(unfinished, {7, 8}, {7, 9}, "FAULT_RELOADED")
    assert len(proof.missing) == 4 and proof.shown == ["no message before the reload hit FAULT_RELOADED"]
