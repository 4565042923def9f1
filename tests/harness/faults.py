"""The fault suite: one fault at a time under load, and an account of every message.

A :class:`Bench` is a sink, a private Postfix and milterd (optionally clamd,
spamd, a resolver, a PostgreSQL database).  :func:`run_fault` sends tagged
messages from several SMTP sessions, injects the fault a third of the way in
and repairs it when the middle third is sent, then reconciles what the clients were
told, what reached the sink and what milterd logged
(:func:`tests.harness.load.reconcile`).  ``bench/faults`` runs every fault
on hundreds of messages; ``tests/integration/test_faults.py`` runs the same
code on a smaller load.

How each fault is made:

* ``worker-kill``: SIGKILL to one worker (the supervisor replaces it);
* ``reload``: SIGHUP to the supervisor;
* ``restart``: SIGTERM to the supervisor, wait for it to exit, start it again;
* ``sqlite-lock``: another process holds ``BEGIN EXCLUSIVE`` on the SQLite
  store for a few seconds (longer than ``[database] busy_timeout``);
* ``pg-down``: on a database of its own (never the shared cluster), the
  database is closed to new connections (``ALLOW_CONNECTIONS false``) and its
  sessions are terminated — from milterd's side the same as a server that went
  away — then opened again;
* ``clamd-kill``: SIGKILL to clamd, started again later on the same port;
* ``spamd-stop``: SIGSTOP to spamd's process group (a frozen scanner: connects
  succeed, answers never come), SIGCONT later;
* ``resolver-stop``: the resolver (unbound) stopped, started again later.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .load import Reconciliation, reconcile, run_load, sink_tags, wait_delivered
from .milterd import Milterd
from .postfix import Postfix, Sink

ALL_FAULTS = ("worker-kill", "reload", "restart", "sqlite-lock", "pg-down", "clamd-kill", "spamd-stop", "resolver-stop")


@dataclass
class Bench:
    """A sink, Postfix and milterd, plus whatever daemons the faults need."""

    root: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    sink: Sink | None = None
    postfix: Postfix | None = None
    milterd: Milterd | None = None
    daemons: dict[str, Any] = field(default_factory=dict)

    def start(self) -> "Bench":
        self.root.mkdir(parents=True, exist_ok=True)
        self.sink = Sink().start()
        self.milterd = Milterd(self.root / "milterd", self.sections, self.rules).start()
        self.postfix = Postfix(self.root / "postfix", relay_port=self.sink.port, milter=self.milterd.postfix_spec).start()
        return self

    def stop(self) -> None:
        for part in (self.postfix, self.milterd, self.sink):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - stop everything whatever failed
                    pass
        for daemon in self.daemons.values():
            try:
                daemon.stop()
            except Exception:  # noqa: BLE001
                pass

    @property
    def database_path(self) -> Path | None:
        url = self.milterd.sections["database"]["url"] if self.milterd else ""
        return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


class Fault:
    """One fault: ``inject()`` then ``repair()``; both must return quickly-ish."""

    name = ""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def inject(self) -> None:
        raise NotImplementedError

    def repair(self) -> None:
        pass


class WorkerKill(Fault):
    name = "worker-kill"

    def inject(self) -> None:
        os.kill(self.bench.milterd.workers()[0], signal.SIGKILL)


class Reload(Fault):
    name = "reload"

    def inject(self) -> None:
        self.bench.milterd.signal(signal.SIGHUP)


class Restart(Fault):
    name = "restart"

    def inject(self) -> None:
        self.bench.milterd.stop()

    def repair(self) -> None:
        self.bench.milterd.start()


class SqliteLock(Fault):
    """Hold an exclusive lock on the SQLite store from another connection."""

    name = "sqlite-lock"

    def inject(self) -> None:
        path = self.bench.database_path
        assert path is not None, "sqlite-lock needs an SQLite store"
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN EXCLUSIVE")

    def repair(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


class PgDown(Fault):
    """Close the bench's own PostgreSQL database to connections and terminate its sessions."""

    name = "pg-down"

    def _admin(self, sql: str) -> None:
        from .pgdb import _admin

        with _admin() as conn:
            conn.execute(sql)

    @property
    def dbname(self) -> str:
        return self.bench.milterd.sections["database"]["url"].rsplit("/", 1)[1]

    def inject(self) -> None:
        self._admin(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS false')
        self._admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.dbname}' AND pid <> pg_backend_pid()")

    def repair(self) -> None:
        self._admin(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS true')


class ClamdKill(Fault):
    name = "clamd-kill"

    def inject(self) -> None:
        clamd = self.bench.daemons["clamd"]
        os.killpg(clamd.process.pid, signal.SIGKILL)
        clamd.process.wait()

    def repair(self) -> None:
        self.bench.daemons["clamd"].start()


class SpamdStop(Fault):
    name = "spamd-stop"

    def inject(self) -> None:
        os.killpg(self.bench.daemons["spamd"].process.pid, signal.SIGSTOP)

    def repair(self) -> None:
        os.killpg(self.bench.daemons["spamd"].process.pid, signal.SIGCONT)


class ResolverStop(Fault):
    name = "resolver-stop"

    def inject(self) -> None:
        self.bench.daemons["dns"].stop_resolver()

    def repair(self) -> None:
        self.bench.daemons["dns"]._start_unbound()  # noqa: SLF001 - the harness has no public restart


FAULTS: dict[str, type[Fault]] = {cls.name: cls for cls in (WorkerKill, Reload, Restart, SqliteLock, PgDown, ClamdKill, SpamdStop, ResolverStop)}


@dataclass
class FaultResult:
    """One fault's run: the reconciliation and how long it took."""

    fault: str
    reconciliation: Reconciliation
    seconds: float
    workers_after: int
    error: str = ""


def run_fault(bench: Bench, fault: Fault, count: int, sessions: int, hold: float = 0.0) -> FaultResult:
    """Send *count* messages over *sessions* sessions in three phases: before, during and after *fault*.

    The fault is injected by the first session of the middle phase after its
    first message, while the other sessions have messages in flight; the rest
    of the middle phase is sent while it lasts; it is repaired when the middle phase is over and at least *hold* seconds have
    passed (a lock longer than busy_timeout, a frozen spamd longer than its
    timeout): every message the middle phase sends after the injection meets it.
    """
    third = max(sessions, count // 3)
    state: dict[str, float] = {}
    errors: list[str] = []

    def inject(n: int) -> None:
        if n == 1 and "injected" not in state:
            try:
                fault.inject()
            except Exception as exc:  # noqa: BLE001 - report, never leave the load hanging
                errors.append(f"inject: {exc.__class__.__name__}: {exc}")
            state["injected"] = time.monotonic()

    started = time.monotonic()
    port = bench.postfix.smtp_port
    results = run_load(port, third, sessions=sessions, prefix=f"{fault.name}-a")
    # One message per session, the first session injecting while the others are in flight…
    results += run_load(port, sessions, sessions=sessions, prefix=f"{fault.name}-b", during=inject)
    # …then the rest of the middle third, all of it meeting the fault.
    results += run_load(port, max(0, count - 2 * third - sessions), sessions=sessions, prefix=f"{fault.name}-d")
    remaining = hold - (time.monotonic() - state.get("injected", time.monotonic()))
    if remaining > 0:
        time.sleep(remaining)
    try:
        fault.repair()
    except Exception as exc:  # noqa: BLE001
        errors.append(f"repair: {exc.__class__.__name__}: {exc}")
    results += run_load(port, third, sessions=sessions, prefix=f"{fault.name}-c")
    bench.postfix.flush()
    rows = _log_rows(bench.milterd)
    logged = {r["queue_id"] for r in rows if r.get("queue_id")}
    discarded = {r["queue_id"] for r in rows if r.get("action") in ("discard", "quarantine")}
    delivered = wait_delivered(lambda: [t for t in sink_tags(bench.sink.messages) if t.startswith(fault.name + "-")], results, timeout=60, discarded=discarded)
    outcome = reconcile(results, delivered, logged, discarded)
    workers = len(bench.milterd.workers()) if bench.milterd.process and bench.milterd.process.poll() is None else 0
    return FaultResult(fault.name, outcome, time.monotonic() - started, workers, "; ".join(errors))


def _log_rows(milterd: Milterd) -> list[dict[str, Any]]:
    for _ in range(20):
        try:
            return milterd.log_json()
        except RuntimeError:  # the store is still recovering (a lock being released)
            time.sleep(0.5)
    return milterd.log_json()


def format_table(results: list[FaultResult]) -> str:
    """The result table, one row per fault."""
    header = ["fault", "sent", "delivered once", "refused 4xx", "refused 5xx", "lost/duplicated", "unlogged", "workers after", "s"]
    rows = [header]
    for r in results:
        row = r.reconciliation.row()
        rows.append([r.fault, str(row["sent"]), str(row["delivered once"]), str(row["refused 4xx"]), str(row["refused 5xx"]),
                     str(row["lost/duplicated"]), str(row["unlogged"]), str(r.workers_after), f"{r.seconds:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def scanner_sections(daemons: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """milter.conf sections for the scanner and DNS daemons in *daemons* (short timeouts: a fault shows quickly)."""
    sections: dict[str, dict[str, Any]] = {}
    if "clamd" in daemons:
        sections["clamav"] = {"enabled": True, "address": daemons["clamd"].address, "timeout": 5, "on_error": "tempfail"}
    if "spamd" in daemons:
        sections["spamd"] = {"enabled": True, "address": daemons["spamd"].address, "timeout": 3, "on_error": "accept"}
    if "dns" in daemons:
        sections["dns"] = {"nameservers": [daemons["dns"].nameserver], "timeout": 1}
    return sections


DNSBL_RULES = '[[dnsbl]]\nname = "FAULTBL"\nzone = "bl.fault.test"\nscore = 1.0\n'


def start_daemons(root: Path, wanted: set[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the scanner/DNS daemons the wanted faults need; skip (with a note) those that cannot start."""
    daemons: dict[str, Any] = {}
    if "clamd-kill" in wanted:
        try:
            from .scanners import Clamd

            daemons["clamd"] = Clamd(root / "clamd").start()
        except Exception as exc:  # noqa: BLE001
            log(f"clamd unavailable, clamd-kill skipped: {exc}")
    if "spamd-stop" in wanted:
        try:
            from .scanners import Spamd

            daemons["spamd"] = Spamd(root / "spamd", children=4).start()
        except Exception as exc:  # noqa: BLE001
            log(f"spamd unavailable, spamd-stop skipped: {exc}")
    if "resolver-stop" in wanted:
        try:
            from .dns import LocalDns

            daemons["dns"] = LocalDns(root / "dns", [], {"bl.fault.test": ("ip4set", "127.0.0.2\n")}).start()
        except Exception as exc:  # noqa: BLE001
            log(f"resolver unavailable, resolver-stop skipped: {exc}")
    return daemons


def needs(fault: str, daemons: dict[str, Any]) -> str:
    """Why *fault* cannot run with these daemons ('' when it can)."""
    required = {"clamd-kill": "clamd", "spamd-stop": "spamd", "resolver-stop": "dns"}.get(fault)
    if required and required not in daemons:
        return f"no {required}"
    if fault == "pg-down":
        from .pgdb import available

        return available() or ""
    return ""

