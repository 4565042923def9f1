"""The fault suite on a small load (bench/faults runs it on hundreds of messages).

Each fault is injected under load from several SMTP sessions through the real
Postfix; every message must end delivered exactly once or refused (4xx/5xx),
never lost, duplicated or accepted without a log row; and each fault must be
shown to have bitten (tests.harness.faults.Proof): the killed worker gone and
replaced, the reload finished under the new rules, the store refusing other
writers, the scanner or resolver used before and after and failing the mail
in between.  A daemon a fault needs that is missing is an error, not a skip.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness.faults import DNSBL_RULES, FAULTS, Bench, FaultResult, format_proof, format_table, require_postgresql, run_fault, scanner_sections, start_daemons

CORE = ["worker-kill", "reload", "restart", "sqlite-lock"]
EXTERNAL = ["clamd-kill", "spamd-stop", "resolver-stop"]


def _open_dir(prefix: str) -> Path:
    # Not under pytest's basetemp: another pytest run starting meanwhile resets its
    # parents to 0700, and Postfix's unprivileged processes must traverse them.
    path = Path(tempfile.mkdtemp(prefix=f"milterd-{prefix}-"))
    path.chmod(0o755)
    return path


HOLD = {"sqlite-lock": 3.0, "pg-down": 2.0, "spamd-stop": 4.0, "clamd-kill": 1.0, "resolver-stop": 2.0}


@pytest.fixture(scope="module")
def core_bench() -> Iterator[Bench]:
    bench = Bench(_open_dir("faults"), {"milter": {"workers": 2, "shutdown_timeout": 10}, "database": {"busy_timeout": 1}})
    try:
        yield bench.start()
    finally:
        bench.stop()
        shutil.rmtree(bench.root, ignore_errors=True)


@pytest.fixture(scope="module", params=EXTERNAL)
def external_bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    """A bench with only the daemon its fault needs (spamd is slow: it must not slow the others)."""
    fault: str = request.param
    root = _open_dir(f"faults-{fault}")
    daemons: dict[str, Any] = {}
    bench = None
    try:
        daemons = start_daemons(root, {fault})  # DaemonError (the test errors) when it cannot start
        sections = {"milter": {"workers": 2}, **scanner_sections(daemons)}
        bench = Bench(root, sections, {"dnsbl.toml": DNSBL_RULES} if "dns" in daemons else {}, daemons=daemons).start()
        bench.fault = fault  # type: ignore[attr-defined]
        yield bench
    finally:
        if bench is not None:
            bench.stop()
        else:
            for daemon in daemons.values():
                daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _check(result: FaultResult) -> None:
    table = format_table([result]) + "\n" + format_proof(result)
    print(table)
    assert not result.error, result.error + "\n" + table
    assert result.reconciliation.ok, table + "\n" + "\n".join(result.reconciliation.problems)
    assert result.reconciliation.total == result.reconciliation.delivered_once + result.reconciliation.refused_4xx + result.reconciliation.refused_5xx
    assert result.workers_after >= 2, table
    assert result.reconciliation.delivered_once > 0, table
    assert result.proof.ok, "the fault was not shown to have bitten:\n" + table


@pytest.mark.parametrize("fault", CORE)
def test_core_fault_loses_nothing(core_bench: Bench, fault: str) -> None:
    _check(run_fault(core_bench, FAULTS[fault](core_bench), count=40, sessions=4, hold=HOLD.get(fault, 0.0)))


def test_external_fault_loses_nothing(external_bench: Bench) -> None:
    fault = external_bench.fault  # type: ignore[attr-defined]
    _check(run_fault(external_bench, FAULTS[fault](external_bench), count=18, sessions=3, hold=HOLD.get(fault, 0.0)))


def test_postgresql_down_loses_nothing() -> None:
    require_postgresql()  # DaemonError: PostgreSQL is part of the suite, its absence a failure
    from tests.harness.pgdb import temporary_database

    with temporary_database() as url:
        bench = Bench(_open_dir("faults-pg"), {"milter": {"workers": 2}, "database": {"url": url}})
        try:
            bench.start()
            result = run_fault(bench, FAULTS["pg-down"](bench), count=24, sessions=3, hold=HOLD["pg-down"])
        finally:
            bench.stop()
            shutil.rmtree(bench.root, ignore_errors=True)
    _check(result)
