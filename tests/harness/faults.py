"""The fault suite: one fault at a time under load, and an account of every message.

A :class:`Bench` is a sink, a private Postfix and milterd (optionally clamd,
spamd, a resolver, a PostgreSQL database).  :func:`run_fault` sends tagged
messages from several SMTP sessions, injects the fault a third of the way in
and repairs it when the middle third is sent, then reconciles what the clients were
told, what reached the sink and what milterd logged
(:func:`tests.harness.load.reconcile`).  Losing nothing proves little if the
fault never bit, so each fault then proves it did (:class:`Proof`): the killed
worker is gone and replaced, the reload finished with new workers and the new
rules in effect, the store refused another writer, the scanner was called
before and after and failed the mail in between…  ``bench/faults`` runs every
fault on hundreds of messages; ``tests/integration/test_faults.py`` runs the
same code on a smaller load.  A daemon a fault needs that is missing or does
not start is an error (:class:`DaemonError`), never a skip.

How each fault is made:

* ``worker-kill``: SIGKILL to one worker that has served mail (the supervisor replaces it);
* ``reload``: a new rule file (``FAULT_RELOADED`` on every message), then SIGHUP to the supervisor;
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
* ``resolver-stop``: the resolver (unbound) stopped, started again later; its
  DNSBL zone lists the load's client, so every answered message carries
  ``DNSBL_FAULTBL`` and milterd's DNS cache is off.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import Reconciliation, SendResult, load_id, reconcile, run_load, sink_tags, wait_delivered
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


@dataclass
class Proof:
    """What showed that a fault happened and mattered (``shown``), and what should have and did not (``missing``).

    A fault run that loses nothing proves little if the fault never bit: a
    scanner that was never called cannot fail, a reload that never finished
    replaced no worker.  Every fault states its own evidence.
    """

    shown: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def expect(self, ok: bool, text: str) -> None:
        """Record *text* as shown when *ok*, as missing otherwise."""
        (self.shown if ok else self.missing).append(text)

    @property
    def ok(self) -> bool:
        return not self.missing


#: A summary line: "2026-12-02T05:40:00 milterd[1234]: INFO 4Fh3kT0zZ9z: action=accept …".
SUMMARY = re.compile(r"milterd\[(\d+)\]: \w+ (\S+): action=")


@dataclass
class Observed:
    """What one fault run left behind, for the fault's :meth:`Fault.prove`.

    ``rows`` are milterd's log rows of this run's messages, ``results`` what
    their clients were told, ``delivered`` the header sections the sink got
    (by tag), ``log`` milterd's stderr from the injection on; phases are
    ``a`` (before), ``b`` (the round that injects), ``d`` (during), ``c``
    (after the repair).
    """

    fault: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    results: list[SendResult] = field(default_factory=list)
    delivered: dict[str, list[str]] = field(default_factory=dict)
    log: str = ""

    def phase(self, tag: str) -> str:
        """The phase letter of a message tag (``reload-c-000003`` → ``c``)."""
        return tag.removeprefix(self.fault + "-")[:1]

    def rows_in(self, *phases: str) -> list[dict[str, Any]]:
        """The log rows of messages sent in *phases*."""
        return [r for r in self.rows if self.phase((r.get("subject") or "").removeprefix("load ")) in phases]

    def results_in(self, *phases: str) -> list[SendResult]:
        """What the clients of *phases* were told."""
        return [r for r in self.results if self.phase(r.tag) in phases]

    def headers_in(self, *phases: str) -> list[str]:
        """The header sections the sink received for messages of *phases*."""
        return [h for tag, copies in self.delivered.items() if self.phase(tag) in phases for h in copies]

    def served_by(self, rows: list[dict[str, Any]]) -> set[int]:
        """The worker pids that logged the summary lines of *rows* (since the injection)."""
        pids = {qid: int(pid) for pid, qid in SUMMARY.findall(self.log)}
        return {pids[r["queue_id"]] for r in rows if r.get("queue_id") in pids}


def with_symbol(rows: list[dict[str, Any]], symbol: str) -> list[dict[str, Any]]:
    """The rows whose symbols include *symbol*."""
    return [r for r in rows if symbol in (r.get("symbols") or {})]


def refused_4xx(results: list[SendResult]) -> list[SendResult]:
    """The messages refused with a 4xx (or no answer: the client retries)."""
    return [r for r in results if not r.accepted and not 500 <= r.code < 600]


def alive(pid: int) -> bool:
    """Whether process *pid* still exists (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stopped(pid: int) -> bool:
    """Whether process *pid* is stopped (SIGSTOP)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


class Fault:
    """One fault: ``inject()`` then ``repair()``; both must return quickly-ish.

    ``prove()`` says, from what the run left behind and what inject and
    repair recorded in ``facts``, whether the fault really happened and was
    met by the load.
    """

    name = ""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.facts: dict[str, Any] = {}

    @property
    def milterd(self) -> Milterd:
        assert self.bench.milterd is not None
        return self.bench.milterd

    def inject(self) -> None:
        raise NotImplementedError

    def repair(self) -> None:
        pass

    def prove(self, seen: Observed) -> Proof:
        """The evidence that the fault happened and mattered."""
        return Proof()


def served(milterd: Milterd) -> set[int]:
    """The pids that have logged a summary line: workers, not the supervisor's maintenance process."""
    return {int(pid) for pid, _ in SUMMARY.findall(milterd.stderr())}


class WorkerKill(Fault):
    """SIGKILL to a worker that has served mail; the supervisor must replace it."""

    name = "worker-kill"

    def inject(self) -> None:
        workers = self.milterd.workers()
        serving = [p for p in workers if p in served(self.milterd)]
        victim = (serving or workers)[0]
        self.facts.update(before=set(workers), victim=victim)
        os.kill(victim, signal.SIGKILL)

    def prove(self, seen: Observed) -> Proof:
        return prove_worker_kill(seen, self.facts["victim"], self.facts["before"], set(self.milterd.workers()), alive(self.facts["victim"]))


def prove_worker_kill(seen: Observed, victim: int, before: set[int], after: set[int], victim_alive: bool) -> Proof:
    """The killed worker died of SIGKILL and is gone; a new worker runs in its place."""
    proof = Proof()
    proof.expect(f"worker {victim} was killed by signal 9" in seen.log, f"the supervisor logged worker {victim} killed by SIGKILL")
    proof.expect(not victim_alive and victim not in after, f"worker {victim} is gone")
    new = after - before
    proof.expect(bool(new), f"a new worker was started ({sorted(new)})")
    proof.expect("worker died; starting a new one" in seen.log, "the supervisor logged the replacement")
    return proof


class Reload(Fault):
    """SIGHUP with a new rule file: every worker must be replaced, and the new rules used."""

    name = "reload"
    SYMBOL = "FAULT_RELOADED"

    def inject(self) -> None:
        self.facts["before"] = set(self.milterd.workers())
        rules = Path(self.milterd.sections["rules"]["dir"])
        (rules / "fault-reload.toml").write_text(f'[[rule]]\nname = "{self.SYMBOL}"\nheader = "Subject"\nregex = \'^load \'\nscore = 0.01\n')
        self.facts["offset"] = len(self.milterd.stderr())
        self.milterd.signal(signal.SIGHUP)

    def repair(self) -> None:
        # The reload replaces the workers one by one, each finishing its
        # messages: wait (generously) until it says it is done.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = self.milterd.stderr()[self.facts["offset"]:]
            if "reload done" in log or "reload refused" in log:
                break
            time.sleep(0.2)

    def prove(self, seen: Observed) -> Proof:
        return prove_reload(seen, self.facts["before"], set(self.milterd.workers()), self.SYMBOL)


def prove_reload(seen: Observed, before: set[int], after: set[int], symbol: str) -> Proof:
    """The reload finished, every old worker is gone, new workers served the mail after it, under the new rules."""
    proof = Proof()
    proof.expect("reload done" in seen.log, "milterd logged 'reload done'")
    proof.expect(not (before & after), f"none of the old workers {sorted(before)} is left ({sorted(after)} now)")
    served_after = seen.served_by(seen.rows_in("c"))
    proof.expect(bool(served_after) and not (served_after & before), f"the mail after the reload was served by new workers {sorted(served_after)}")
    after_rows, before_rows = seen.rows_in("c"), seen.rows_in("a")
    proof.expect(bool(after_rows) and len(with_symbol(after_rows, symbol)) == len(after_rows), f"every message after the reload hit the new rule {symbol}")
    proof.expect(bool(before_rows) and not with_symbol(before_rows, symbol), f"no message before the reload hit {symbol}")
    return proof


class Restart(Fault):
    """SIGTERM to the supervisor, wait for it to exit, start it again."""

    name = "restart"

    def inject(self) -> None:
        assert self.milterd.process is not None
        self.facts.update(supervisor=self.milterd.process.pid, before=set(self.milterd.workers()))
        self.facts["status"] = self.milterd.stop()

    def repair(self) -> None:
        self.milterd.start()
        assert self.milterd.process is not None
        self.facts["new_supervisor"] = self.milterd.process.pid

    def prove(self, seen: Observed) -> Proof:
        proof = Proof()
        old, new = self.facts["supervisor"], self.facts.get("new_supervisor")
        proof.expect(self.facts["status"] == 0 and not alive(old), f"the supervisor {old} stopped (status {self.facts['status']}) and is gone")
        proof.expect(new is not None and new != old and alive(new), f"a new supervisor {new} runs")
        left = [p for p in self.facts["before"] if alive(p)]
        proof.expect(not left, f"none of the old workers is left ({left})")
        served_after = seen.served_by(seen.rows_in("c"))
        proof.expect(bool(served_after) and not (served_after & self.facts["before"]), f"the mail after the restart was served by new workers {sorted(served_after)}")
        proof.expect(bool(refused_4xx(seen.results_in("b", "d"))), "mail sent while milterd was down was refused with 4xx (milter_default_action = tempfail)")
        return proof


def prove_store_down(seen: Observed, probe: str, what: str) -> Proof:
    """The store really refused a writer, milterd said so, and the clients were told to retry."""
    proof = Proof()
    proof.expect(bool(probe), f"{what}: another writer was refused ({probe or 'it was not'})")
    proof.expect("cannot store the log row" in seen.log, "milterd logged 'cannot store the log row'")
    proof.expect(bool(refused_4xx(seen.results_in("b", "d"))), "mail met the fault and was refused with 4xx")
    return proof


class SqliteLock(Fault):
    """Hold an exclusive lock on the SQLite store from another connection."""

    name = "sqlite-lock"

    def inject(self) -> None:
        path = self.bench.database_path
        assert path is not None, "sqlite-lock needs an SQLite store"
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN EXCLUSIVE")
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            self.facts["probe"] = ""
        except sqlite3.OperationalError as exc:
            self.facts["probe"] = str(exc)
        finally:
            probe.close()

    def repair(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()

    def prove(self, seen: Observed) -> Proof:
        return prove_store_down(seen, self.facts.get("probe", ""), "the SQLite store was locked")


class PgDown(Fault):
    """Close the bench's own PostgreSQL database to connections and terminate its sessions."""

    name = "pg-down"

    def _admin(self, sql: str) -> None:
        from .pgdb import _admin

        with _admin() as conn:
            conn.execute(sql)

    @property
    def dbname(self) -> str:
        return str(self.milterd.sections["database"]["url"].rsplit("/", 1)[1])

    def inject(self) -> None:
        self._admin(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS false')
        self._admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.dbname}' AND pid <> pg_backend_pid()")
        import psycopg

        from .pgdb import HOST, PORT, USER

        try:
            psycopg.connect(host=HOST, port=PORT, user=USER, dbname=self.dbname, connect_timeout=5).close()
            self.facts["probe"] = ""
        except psycopg.OperationalError as exc:
            self.facts["probe"] = str(exc).strip().splitlines()[-1]

    def repair(self) -> None:
        self._admin(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS true')

    def prove(self, seen: Observed) -> Proof:
        return prove_store_down(seen, self.facts.get("probe", ""), "the PostgreSQL database was closed")


class ClamdKill(Fault):
    """SIGKILL to clamd, started again later on the same port."""

    name = "clamd-kill"

    def inject(self) -> None:
        clamd = self.bench.daemons["clamd"]
        self.facts["pid"] = clamd.process.pid
        os.killpg(clamd.process.pid, signal.SIGKILL)
        self.facts["status"] = clamd.process.wait()

    def repair(self) -> None:
        clamd = self.bench.daemons["clamd"].start()
        self.facts["new_pid"] = clamd.process.pid

    def prove(self, seen: Observed) -> Proof:
        proof = prove_clamd_kill(seen)
        old, new = self.facts["pid"], self.facts.get("new_pid")
        proof.expect(self.facts["status"] == -signal.SIGKILL and not alive(old), f"clamd {old} died of SIGKILL")
        proof.expect(new is not None and new != old and alive(new), f"clamd was started again ({new})")
        return proof


def prove_clamd_kill(seen: Observed) -> Proof:
    """clamd scanned the mail before and after (X-Virus-Status: Clean); the mail in between met CLAMAV_ERROR and a 4xx."""
    proof = Proof()
    for phase, when in (("a", "before"), ("c", "after")):
        headers = seen.headers_in(phase)
        clean = [h for h in headers if re.search(r"^X-Virus-Status: Clean", h, re.MULTILINE)]
        proof.expect(bool(headers) and len(clean) == len(headers), f"clamd scanned the mail delivered {when} the kill ({len(clean)}/{len(headers)} X-Virus-Status: Clean)")
    errors = with_symbol(seen.rows_in("b", "d"), "CLAMAV_ERROR")
    proof.expect(bool(errors), f"mail met the dead clamd ({len(errors)} rows with CLAMAV_ERROR)")
    proof.expect(bool(refused_4xx(seen.results_in("b", "d"))), "and was refused with 4xx ([clamav] on_error = tempfail)")
    return proof


class SpamdStop(Fault):
    """SIGSTOP to spamd's process group (a frozen scanner), SIGCONT later."""

    name = "spamd-stop"

    def inject(self) -> None:
        pid = self.bench.daemons["spamd"].process.pid
        os.killpg(pid, signal.SIGSTOP)
        time.sleep(0.1)
        self.facts["stopped"] = stopped(pid)

    def repair(self) -> None:
        os.killpg(self.bench.daemons["spamd"].process.pid, signal.SIGCONT)

    def prove(self, seen: Observed) -> Proof:
        proof = prove_spamd_stop(seen)
        proof.expect(self.facts.get("stopped", False), "spamd's process was stopped (state T)")
        return proof


def prove_spamd_stop(seen: Observed) -> Proof:
    """spamd scored the mail before and after; the mail in between met SPAMD_ERROR."""
    proof = Proof()
    before = seen.rows_in("a")
    proof.expect(bool(before) and len(with_symbol(before, "SPAMASSASSIN")) == len(before), "spamd scored every message before the fault (SPAMASSASSIN)")
    errors = with_symbol(seen.rows_in("b", "d"), "SPAMD_ERROR")
    proof.expect(bool(errors), f"mail met the frozen spamd ({len(errors)} rows with SPAMD_ERROR)")
    after = with_symbol(seen.rows_in("c"), "SPAMASSASSIN")
    proof.expect(bool(after), f"spamd scored mail again after SIGCONT ({len(after)} rows with SPAMASSASSIN)")
    return proof


class ResolverStop(Fault):
    """The resolver (unbound) stopped, started again later."""

    name = "resolver-stop"

    def inject(self) -> None:
        dns = self.bench.daemons["dns"]
        dns.stop_resolver()
        self.facts["stopped"] = dns._unbound is not None and dns._unbound.poll() is not None  # noqa: SLF001

    def repair(self) -> None:
        self.bench.daemons["dns"]._start_unbound()  # noqa: SLF001 - the harness has no public restart

    def prove(self, seen: Observed) -> Proof:
        proof = prove_resolver_stop(seen)
        proof.expect(self.facts.get("stopped", False), "unbound exited")
        return proof


#: The bench's DNSBL zone lists the load's client, so every message asks the resolver (with
#: milterd's DNS cache off) and carries DNSBL_FAULTBL while it answers.
LISTED_SYMBOL = "DNSBL_FAULTBL"


def prove_resolver_stop(seen: Observed) -> Proof:
    """The DNSBL answer came before and after; the mail in between went without it."""
    proof = Proof()
    before = seen.rows_in("a")
    proof.expect(bool(before) and len(with_symbol(before, LISTED_SYMBOL)) == len(before), f"every message before the fault was looked up ({LISTED_SYMBOL})")
    during = seen.rows_in("b", "d")
    unanswered = [r for r in during if LISTED_SYMBOL not in (r.get("symbols") or {})]
    proof.expect(bool(unanswered), f"mail met the stopped resolver ({len(unanswered)} rows without {LISTED_SYMBOL}, {len(with_symbol(during, 'DNSBL_TEMPFAIL'))} with DNSBL_TEMPFAIL)")
    after = with_symbol(seen.rows_in("c"), LISTED_SYMBOL)
    proof.expect(bool(after), f"the resolver answered again after the repair ({len(after)} rows with {LISTED_SYMBOL})")
    return proof


FAULTS: dict[str, type[Fault]] = {cls.name: cls for cls in (WorkerKill, Reload, Restart, SqliteLock, PgDown, ClamdKill, SpamdStop, ResolverStop)}


@dataclass
class FaultResult:
    """One fault's run: the reconciliation, the evidence that the fault mattered, how long it took."""

    fault: str
    reconciliation: Reconciliation
    seconds: float
    workers_after: int
    error: str = ""
    proof: Proof = field(default_factory=Proof)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated or unlogged, no injection error, and the fault shown to have bitten."""
        return self.reconciliation.ok and not self.error and self.proof.ok


def run_fault(bench: Bench, fault: Fault, count: int, sessions: int, hold: float = 0.0) -> FaultResult:
    """Send *count* messages over *sessions* sessions in three phases: before, during and after *fault*.

    The fault is injected by the first session of the middle phase after its
    first message, while the other sessions have messages in flight; the rest
    of the middle phase is sent while it lasts; it is repaired when the middle phase is over and at least *hold* seconds have
    passed (a lock longer than busy_timeout, a frozen spamd longer than its
    timeout): every message the middle phase sends after the injection meets it.
    Then the fault's :meth:`~Fault.prove` checks that it really happened and bit.
    """
    assert bench.milterd is not None and bench.postfix is not None and bench.sink is not None
    third = max(sessions, count // 3)
    state: dict[str, float] = {}
    errors: list[str] = []
    offset = len(bench.milterd.stderr())

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
    seen = Observed(
        fault.name,
        rows=[r for r in rows if (r.get("subject") or "").startswith(f"load {fault.name}-")],
        results=results,
        delivered=_delivered_headers(bench.sink, fault.name),
        log=bench.milterd.stderr()[offset:],
    )
    try:
        proof = fault.prove(seen)
    except Exception as exc:  # noqa: BLE001 - a fault whose injection failed has no facts to prove
        proof = Proof(missing=[f"no proof: {exc.__class__.__name__}: {exc}"])
    return FaultResult(fault.name, outcome, time.monotonic() - started, workers, "; ".join(errors), proof)


def _delivered_headers(sink: Sink, fault: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in list(sink.messages):
        tag = load_id(message.data)
        if tag.startswith(fault + "-"):
            found.setdefault(tag, []).append(message.headers)
    return found


def _log_rows(milterd: Milterd) -> list[dict[str, Any]]:
    for _ in range(20):
        try:
            return milterd.log_json()
        except RuntimeError:  # the store is still recovering (a lock being released)
            time.sleep(0.5)
    return milterd.log_json()


def format_table(results: list[FaultResult]) -> str:
    """The result table, one row per fault."""
    header = ["fault", "sent", "delivered once", "refused 4xx", "refused 5xx", "lost/duplicated", "unlogged", "workers after", "fault shown", "s"]
    rows = [header]
    for r in results:
        row = r.reconciliation.row()
        shown = "yes" if r.proof.ok else f"NO ({len(r.proof.missing)} missing)"
        rows.append([r.fault, str(row["sent"]), str(row["delivered once"]), str(row["refused 4xx"]), str(row["refused 5xx"]),
                     str(row["lost/duplicated"]), str(row["unlogged"]), str(r.workers_after), shown, f"{r.seconds:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def format_proof(result: FaultResult) -> str:
    """The evidence of one run, a line each: ``+`` shown, ``-`` missing."""
    return "\n".join([f"{result.fault}: + {t}" for t in result.proof.shown] + [f"{result.fault}: - {t}" for t in result.proof.missing])


def scanner_sections(daemons: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """milter.conf sections for the scanner and DNS daemons in *daemons* (short timeouts: a fault shows quickly).

    milterd's DNS cache is off: with it, a worker would answer from memory
    while the resolver is down, and the fault would never be met.
    """
    sections: dict[str, dict[str, Any]] = {}
    if "clamd" in daemons:
        sections["clamav"] = {"enabled": True, "address": daemons["clamd"].address, "timeout": 5, "on_error": "tempfail"}
    if "spamd" in daemons:
        sections["spamd"] = {"enabled": True, "address": daemons["spamd"].address, "timeout": 3, "on_error": "accept"}
    if "dns" in daemons:
        sections["dns"] = {"nameservers": [daemons["dns"].nameserver], "timeout": 1, "cache_size": 0}
    return sections


DNSBL_RULES = '[[dnsbl]]\nname = "FAULTBL"\nzone = "bl.fault.test"\nscore = 1.0\n'
#: The load's client (tests.harness.load.run_load's default XCLIENT) is listed, besides the usual test entry.
DNSBL_ZONE = "127.0.0.2\n192.0.2.10\n"
DAEMONS = {"clamd-kill": "clamd", "spamd-stop": "spamd", "resolver-stop": "dns"}


class DaemonError(RuntimeError):
    """A daemon a fault needs is not installed or did not start."""


def start_daemons(root: Path, wanted: set[str]) -> dict[str, Any]:
    """Start the scanner/DNS daemons the wanted faults need.

    One that is missing or does not start raises :class:`DaemonError` (after
    stopping those already started): a fault that cannot be made is a
    failure, never a quiet skip.
    """
    daemons: dict[str, Any] = {}
    try:
        for fault, name in DAEMONS.items():
            if fault not in wanted:
                continue
            try:
                if name == "clamd":
                    from .scanners import Clamd

                    daemons[name] = Clamd(root / "clamd").start()
                elif name == "spamd":
                    from .scanners import Spamd

                    daemons[name] = Spamd(root / "spamd", children=4).start()
                else:
                    from .dns import LocalDns

                    daemons[name] = LocalDns(root / "dns", [], {"bl.fault.test": ("ip4set", DNSBL_ZONE)}).start()
            except Exception as exc:  # noqa: BLE001 - re-raised with the fault's name
                raise DaemonError(f"{fault} needs {name}, which did not start: {exc.__class__.__name__}: {exc}") from exc
    except DaemonError:
        for daemon in daemons.values():
            daemon.stop()
        raise
    return daemons


def require_postgresql() -> None:
    """DaemonError when PostgreSQL (127.0.0.1:5432) does not answer: pg-down cannot be made."""
    from .pgdb import available

    why = available()
    if why:
        raise DaemonError(f"pg-down needs PostgreSQL on 127.0.0.1:5432: {why}")
