"""The benchmark's scenario table and the running stack (one Postfix, one port per scenario).

A :class:`Scenario` is a row: a name (``--scenarios`` selects by it or by its
group), what it needs (:meth:`Scenario.unavailable` says why it must be
skipped), how to start its milter(s) (``setup`` returns a :class:`Backend`),
the share of the message count it gets (slow rows such as the scanners get a
small ``scale``), the row its ratio is against, and its targets.  To add a
row, append to ``SCENARIOS``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.report import Sample, Target
from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, free_port, wait_for_port

SENDER = "sender@example.org"
RECIPIENT = "rcpt@example.com"
HELO = "client.example.org"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class BenchPostfix(Postfix):
    """The harness's private Postfix plus one smtpd port per scenario (``-o smtpd_milters=…``)."""

    listeners: dict[int, str]

    def write_config(self) -> None:
        super().write_config()
        extra = "".join(f"127.0.0.1:{port} inet n - n - - smtpd -o smtpd_milters={spec}\n" for port, spec in self.listeners.items())
        with open(self.etc / "master.cf", "a") as master:
            master.write(extra)


@dataclass
class Backend:
    """A scenario's running part: what Postfix's smtpd_milters gets, how to count rows, how to stop."""

    milter: str = ""  # smtpd_milters value; "" for Postfix alone
    port: int = 0  # the Postfix smtpd port of this scenario (set by Bench)
    count_rows: Callable[[], int | None] = lambda: None
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    driver: Callable[[int, int], Sample] | None = None  # a row that does not go through Postfix
    size: int = 5120

    def logged(self) -> int | None:
        """Rows in the milter's SQL log now (None: this row keeps no log)."""
        return self.count_rows()

    def drive(self, messages: int, sessions: int) -> Sample:
        """Send *messages* over *sessions* and time it."""
        if self.driver is not None:
            return self.driver(messages, sessions)
        return smtp_source(self.port, messages, sessions, self.size)

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:  # noqa: BLE001 - stop everything else anyway
                pass


def smtp_source(port: int, messages: int, sessions: int, size: int) -> Sample:
    """Postfix's smtp-source against 127.0.0.1:*port*, timed from outside."""
    command = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", SENDER, "-t", RECIPIENT, "-M", HELO, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return Sample(messages, sessions, time.perf_counter() - started, ok=False, note="smtp-source timed out")
    elapsed = time.perf_counter() - started
    ok = result.returncode == 0
    note = "" if ok else f"smtp-source exit {result.returncode}: {(result.stderr or result.stdout).strip()[:200]}"
    return Sample(messages, sessions, elapsed, ok=ok, note=note)


def count_rows(url: str) -> Callable[[], int | None]:
    """A function counting the rows of the ``messages`` table at *url*."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, poolclass=None) if not url.startswith("sqlite") else create_engine(url)

    def count() -> int | None:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM messages")).scalar_one())

    return count


class Bench:
    """Everything one run starts: backends first, then one Postfix with a port per scenario."""

    def __init__(self, root: Path, size: int = 5120) -> None:
        self.root = root
        self.size = size
        self.backends: dict[str, Backend] = {}
        self.databases: list[str] = []
        self.postfix: BenchPostfix | None = None
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_port = free_port()

    def add(self, scenario: "Scenario") -> Backend:
        """Start a scenario's backend (before Postfix, which needs every port's milter spec)."""
        backend = scenario.setup(self, scenario) if scenario.setup else Backend()
        backend.size = self.size
        self.backends[scenario.name] = backend
        return backend

    def start_postfix(self) -> None:
        """Start the sink and Postfix; give each backend its smtpd port."""
        self.sink = subprocess.Popen(
            ["smtp-sink", "-u", "postfix", f"127.0.0.1:{self.sink_port}", "5000"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "smtp-sink.log", "ab"), start_new_session=True,
        )
        wait_for_port(self.sink_port)
        postfix = BenchPostfix(self.root / "postfix", relay_port=self.sink_port, extra={
            # Delivery to the sink runs beside the measurement; keep it from starving smtpd.
            "default_process_limit": "200",
            "smtpd_client_new_tls_session_rate_limit": "0",
        })
        postfix.listeners = {}
        for backend in self.backends.values():
            if backend.driver is not None:
                continue
            if backend.milter:
                backend.port = free_port()
                postfix.listeners[backend.port] = backend.milter
            else:
                backend.port = postfix.smtp_port
        self.postfix = postfix.start()
        for backend in self.backends.values():
            if backend.port:
                wait_for_port(backend.port)

    def wait_queue_idle(self, timeout: float = 180.0) -> None:
        """Wait until Postfix has delivered everything (so delivery does not overlap the next run)."""
        if self.postfix is None:
            return
        queue = self.postfix.root / "queue"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(files for sub in ("maildrop", "incoming", "active", "deferred") for _, _, files in os.walk(queue / sub)):
                return
            time.sleep(0.1)
        self.postfix.flush()

    def fresh_database(self, kind: str) -> str:
        """A new, empty database: an SQLite file here, or a PostgreSQL database dropped at stop."""
        if kind == "sqlite":
            return f"sqlite:///{self.root / ('db-' + uuid.uuid4().hex[:8] + '.sqlite')}"
        import psycopg

        name = f"milterd_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def milterd(self, name: str, socket: str, database: str, sections: dict[str, dict[str, Any]] | None = None, rules: dict[str, str] | None = None) -> Backend:
        """Start a ``milterd serve`` for a scenario; *socket* is "unix" or "inet"."""
        root = self.root / name
        if socket == "unix":
            root.mkdir(parents=True, exist_ok=True)
            spec = f"unix:{root / 'milterd.sock'}"
        else:
            spec = None  # the harness picks a free port and waits for it
        merged = {k: dict(v) for k, v in (sections or {}).items()}
        milter = merged.setdefault("milter", {})
        milter.setdefault("workers", 2)
        milter.setdefault("trusted_networks", [])  # smtp-source connects from 127.0.0.1: score it
        if socket == "unix":
            milter.setdefault("socket_owner", "postfix")
        merged.setdefault("database", {}).setdefault("url", self.fresh_database(database))
        daemon = Milterd(root, merged, rules, socket=spec).start()
        return Backend(milter=daemon.postfix_spec, count_rows=count_rows(merged["database"]["url"]), stoppers=[daemon.stop])

    def stop(self) -> None:
        """Stop Postfix, the sink, every backend; drop the PostgreSQL databases."""
        if self.postfix is not None:
            self.postfix.stop()
        if self.sink is not None:
            self.sink.terminate()
            try:
                self.sink.wait(10)
            except subprocess.TimeoutExpired:
                self.sink.kill()
        for backend in self.backends.values():
            backend.stop()
        if self.databases:
            try:
                import psycopg

                with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as connection:
                    for name in self.databases:
                        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:  # noqa: BLE001
                pass


@dataclass
class Scenario:
    """One row of the benchmark (see the module docstring)."""

    name: str
    title: str
    group: str
    setup: Callable[[Bench, "Scenario"], Backend] | None = None
    needs: Callable[[], str] = lambda: ""
    scale: float = 1.0
    reference: str = "postfix"
    targets: tuple[Target, ...] = ()

    def unavailable(self) -> str:
        """Why this row cannot run here ("" when it can)."""
        return self.needs()


# --- what rows need ---------------------------------------------------------
def _needs_module(module: str, what: str) -> Callable[[], str]:
    def check() -> str:
        return "" if importlib.util.find_spec(module) is not None else f"{module} ({what}) does not exist yet"

    return check


def _needs_postgresql() -> str:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3):
            return ""
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL on 127.0.0.1:5432 unreachable ({exc.__class__.__name__})"


def _needs_all(*checks: Callable[[], str]) -> Callable[[], str]:
    def check() -> str:
        return next((why for why in (c() for c in checks) if why), "")

    return check


def _needs_commands(*commands: str) -> Callable[[], str]:
    def check() -> str:
        missing = [c for c in commands if not shutil.which(c) and not Path("/usr/sbin", c).exists()]
        return f"missing {', '.join(missing)}" if missing else ""

    return check


# --- setups -----------------------------------------------------------------
def _core(socket: str, database: str) -> Callable[[Bench, Scenario], Backend]:
    def setup(bench: Bench, scenario: Scenario) -> Backend:
        return bench.milterd(scenario.name, socket, database)

    return setup


SCENARIOS: list[Scenario] = [
    Scenario("postfix", "Postfix alone (no milter)", "core"),
    Scenario("unix", "milterd, unix socket, SQLite log", "core", _core("unix", "sqlite"), targets=(Target("ratio", 0.75, "postfix"),)),
    Scenario("inet", "milterd, inet socket, SQLite log", "core", _core("inet", "sqlite"),
             targets=(Target("ratio", 0.6, "postfix"), Target("serial_ms", 10.0))),
    Scenario("inet-pg", "milterd, inet socket, PostgreSQL log", "db", _core("inet", "postgresql"), needs=_needs_postgresql,
             reference="inet", targets=(Target("ratio", 0.6, "postfix"),)),
]
