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
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.corpus import LISTED_NET, CorpusMessage
from bench.corpus import fetch as corpus_fetch
from bench.corpus import replay as corpus_replay
from bench.corpus import select as corpus_select
from bench.report import Sample, Target
from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, free_port, wait_for_port
from tests.harness.scanners import stop_group

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
    replay: Callable[[int, int, int], Sample] | None = None  # (port, messages, sessions): own client through Postfix instead of smtp-source
    prepare: Callable[["Backend"], None] | None = None  # once Postfix runs, before the warm-up (greylist: pass the triplet)
    pids: Callable[[], list[int]] = lambda: []  # worker processes, for their memory
    logs: list[Path] = field(default_factory=list)  # the milter's own logs, quoted when a run fails
    size: int = 5120

    def logged(self) -> int | None:
        """Rows in the milter's SQL log now (None: this row keeps no log)."""
        return self.count_rows()

    def drive(self, messages: int, sessions: int) -> Sample:
        """Send *messages* over *sessions* and time it."""
        if self.driver is not None:
            return self.driver(messages, sessions)
        if self.replay is not None:
            return self.replay(self.port, messages, sessions)
        return smtp_source(self.port, messages, sessions, self.size)

    def rss_mb(self) -> float | None:
        """The largest resident set of the milter's workers now, in MB (None: not a milterd row)."""
        sizes = []
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes.append(int(line.split()[1]) / 1024)
            except OSError:
                continue
        return max(sizes) if sizes else None

    def cpu_ms(self) -> float | None:
        """CPU time (user + system) the milter's workers have used so far, in ms (None: not a milter row)."""
        pids = self.pids()
        if not pids:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                continue
        return 1000.0 * total / tick

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:  # noqa: BLE001 - stop everything else anyway
                pass


def smtp_source(port: int, messages: int, sessions: int, size: int, message_file: Path | None = None) -> Sample:
    """Postfix's smtp-source against 127.0.0.1:*port*, timed from outside; *message_file*: send that
    message (``-F``: header and body, LF line ends) instead of smtp-source's own of *size* bytes."""
    body = ["-F", str(message_file)] if message_file is not None else ["-l", str(size)]
    command = ["smtp-source", "-s", str(sessions), "-m", str(messages), *body, "-f", SENDER, "-t", RECIPIENT, "-M", HELO, f"127.0.0.1:{port}"]
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

    def __init__(self, root: Path, size: int = 5120, corpus_size: int = 600, corpus_cache: Path | None = None, corpus_listed: float = 1.0,
                 corpus_from: str = "all") -> None:
        self.root = root
        self.size = size
        self.corpus_size = corpus_size
        self.corpus_listed = corpus_listed
        self.corpus_from = corpus_from  # "all" or "evaluation" (bench/corpus.py folders)
        self.corpus_cache = corpus_cache or root / "corpus"
        self._corpus: list[CorpusMessage] | None = None
        self.backends: dict[str, Backend] = {}
        self.databases: list[str] = []
        self.postfix: BenchPostfix | None = None
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_port = free_port()
        self._shared: dict[str, Any] = {}
        self.pythonpath: str | None = None  # set while a baseline twin starts: its milterd comes from there

    def shared(self, name: str, start: Callable[[Path], Any]) -> Any:
        """A daemon several rows use (clamd, spamd, the resolver): started once, stopped at the end."""
        if name not in self._shared:
            self._shared[name] = start(self.root / name)
        return self._shared[name]

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
        for backend in self.backends.values():
            if backend.prepare is not None:
                backend.prepare(backend)

    def diagnose(self, backend: Backend, lines: int = 15) -> str:
        """Warnings and errors of Postfix's maillog and of the milter's log, for a failed run."""
        found = []
        sources = ([self.postfix.maillog] if self.postfix else []) + backend.logs
        for path in sources:
            if path.exists():
                hits = [line for line in path.read_text(errors="replace").splitlines() if any(w in line for w in ("warning", "error", "fatal", "ERROR", "WARNING", "Traceback", "panic"))]
                found += [f"{path.name}: {line}" for line in hits[-lines:]]
        return "\n".join(found)

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
        if self.pythonpath:
            # An older milterd refuses keys it does not know (the switches of checks it does
            # not have): they are dropped, so the twin runs the same configuration otherwise.
            merged = prune_unknown(merged, baseline_schema(self.pythonpath))
        daemon = Milterd(root, merged, rules, socket=spec)
        saved = os.environ.get("PYTHONPATH")
        if self.pythonpath:
            os.environ["PYTHONPATH"] = self.pythonpath  # the daemon inherits it: `python -m milterd` imports that tree
        try:
            daemon.start()
        except BaseException:
            if daemon.process is not None:
                daemon.stop(timeout=10)
            raise
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        return Backend(milter=daemon.postfix_spec, count_rows=count_rows(merged["database"]["url"]), stoppers=[daemon.stop], pids=daemon.workers,
                       logs=[daemon.stderr_path])

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
        for daemon in self._shared.values():
            try:
                daemon.stop()
            except Exception:  # noqa: BLE001
                pass
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
    serial: bool = True  # also measure one-session latency
    corpus: bool = False  # sends the corpus subset (--corpus-size messages per run)

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
def checks_off() -> dict[str, dict[str, Any]]:
    """``[checks.NAME] enabled = false`` for every switchable check: the core rows run no checks."""
    from milterd.config import ChecksSection

    off = {}
    for name, info in ChecksSection.model_fields.items():
        fields = getattr(info.annotation, "model_fields", {})
        if "enabled" in fields:
            off[name] = {"enabled": False}
    if "remove_forged" in getattr(ChecksSection.model_fields["spf"].annotation, "model_fields", {}):
        # Authentication-Results (written and cleaned by the spf check) runs with SPF off too: off here.
        off["spf"].update({"authentication_results": False, "remove_forged": False})
    return off


def learner_off() -> dict[str, dict[str, Any]]:
    """``[learner] enabled = false`` where the classifier exists (on by default; a core row runs no check)."""
    from milterd import config

    section = getattr(config, "LearnerSection", None)
    return {"learner": {"enabled": False}} if section is not None and "enabled" in section.model_fields else {}


def _core(socket: str, database: str, **sections: dict[str, Any]) -> Callable[[Bench, Scenario], Backend]:
    def setup(bench: Bench, scenario: Scenario) -> Backend:
        merged = {"checks": checks_off(), **learner_off(), **sections}
        return bench.milterd(scenario.name, socket, database, merged)

    return setup


def _trivial(socket: str) -> Callable[[Bench, Scenario], Backend]:
    """bench/trivial_milter.py: what pymilter + libmilter cost with nothing behind them."""

    def setup(bench: Bench, scenario: Scenario) -> Backend:
        import sys

        root = bench.root / scenario.name
        root.mkdir(parents=True, exist_ok=True)
        if socket == "unix":
            spec = path = f"unix:{root / 'trivial.sock'}"
        else:
            port = free_port()
            spec, path = f"inet:127.0.0.1:{port}", f"inet:{port}@127.0.0.1"
        log = open(root / "trivial.log", "ab")
        process = subprocess.Popen([sys.executable, str(REPO / "bench" / "trivial_milter.py"), path, "2"], stdout=log, stderr=log, start_new_session=True)
        backend = Backend(milter=spec, stoppers=[lambda: stop_group(process), log.close], pids=lambda: _children(process.pid))
        deadline = time.monotonic() + 15
        while True:
            if socket == "unix" and Path(spec[5:]).exists():
                break
            if socket == "inet":
                try:
                    wait_for_port(port, timeout=0.2)
                    break
                except TimeoutError:
                    pass
            if time.monotonic() > deadline or process.poll() is not None:
                backend.stop()
                raise RuntimeError(f"trivial milter did not start: {(root / 'trivial.log').read_text(errors='replace')[-300:]}")
            time.sleep(0.05)
        time.sleep(0.3)
        return backend

    return setup


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _start_dns(root: Path) -> Any:
    from tests.harness.dns import LocalDns

    local_data = [
        "example.org. MX 10 mail.example.org.",
        "example.org. A 192.0.2.1",
        "mail.example.org. A 192.0.2.1",
        'example.org. TXT "v=spf1 ip4:127.0.0.0/8 ip4:192.0.2.0/24 -all"',
        "client.example.org. A 127.0.0.1",
        "example.com. MX 10 mx.example.com.",
        "mx.example.com. A 192.0.2.2",
        "PTR 127.0.0.1 client.example.org",
    ]
    # The shipped rules/dnsbl.toml zones, served locally; nothing on loopback is listed.
    lists = {zone: ("ip4set", "192.0.2.200\n") for zone in ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")}
    lists["zen.spamhaus.org"] = ("ip4set", f"192.0.2.200\n{LISTED_NET}\n")  # the corpus row's spam clients (SBL: reject)
    lists["list.dnswl.org"] = ("ip4set", "192.0.2.201 :127.0.10.0\n")
    return LocalDns(root, local_data, lists).start()


def _checks(bench: Bench, scenario: Scenario) -> Backend:
    dns = bench.shared("dns", _start_dns)
    rules_dir = REPO / "rules"
    rules = {path.name: path.read_text() for path in sorted(rules_dir.glob("*.toml"))}
    return bench.milterd(scenario.name, "inet", "sqlite", {"dns": {"nameservers": [dns.nameserver]}}, rules)


def _greylist(database: str) -> Callable[[Bench, Scenario], Backend]:
    def setup(bench: Bench, scenario: Scenario) -> Backend:
        greylist = {"enabled": True, "delay": 1, "auto_whitelist_after": 0, "whitelist_providers": False}
        backend = _core("inet", database, greylist=greylist)(bench, scenario)
        backend.prepare = _pass_triplet
        return backend

    return setup


def _pass_triplet(backend: Backend) -> None:
    """Greylisting's steady state: the one triplet smtp-source uses has passed (first try 451, retry after the delay)."""
    smtp_source(backend.port, 1, 1, backend.size)  # deferred: 451 at RCPT (and one log row)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.2)
        if smtp_source(backend.port, 1, 1, backend.size).ok:
            return
    raise RuntimeError("the greylisted triplet never passed")


def _start_clamd(root: Path) -> Any:
    from tests.harness.scanners import Clamd

    return Clamd(root).start()


def _start_spamd(root: Path) -> Any:
    from tests.harness.scanners import Spamd

    return Spamd(root, children=4).start()


def _scanners(after_clamav: bool = False) -> Callable[[Bench, Scenario], Backend]:
    def setup(bench: Bench, scenario: Scenario) -> Backend:
        clamd = bench.shared("clamd", _start_clamd)
        spamd = bench.shared("spamd", _start_spamd)
        sections = {"clamav": {"enabled": True, "address": clamd.address},
                    "spamd": {"enabled": True, "address": spamd.address, "after_clamav": after_clamav}}
        return _core("inet", "sqlite", **sections)(bench, scenario)

    return setup


def _corpus_messages(bench: Bench) -> list[CorpusMessage]:
    if bench._corpus is None:
        bench._corpus = corpus_select(corpus_fetch(bench.corpus_cache), bench.corpus_size, which=bench.corpus_from)
    return bench._corpus


def _replay(bench: Bench) -> Callable[[int, int, int], Sample]:
    messages = _corpus_messages(bench)
    return lambda port, count, sessions: corpus_replay(port, messages, count, sessions, bench.corpus_listed)


def _corpus_milterd(bench: Bench, scenario: Scenario, extra: dict[str, Any] | None = None) -> Backend:
    """milterd as an MX would run it: every check (DNSBL at connect), clamd and spamd, the shipped rules;
    *extra*: more milter.conf sections (the tiers rows')."""
    dns = bench.shared("dns", _start_dns)
    clamd = bench.shared("clamd", _start_clamd)
    spamd = bench.shared("spamd", _start_spamd)
    rules = {path.name: path.read_text() for path in sorted((REPO / "rules").glob("*.toml"))}
    # Each round replays the same messages from the same clients: that is not a retry, so the
    # result cache is off (it would answer every round after the first without spamd).
    sections = {"dns": {"nameservers": [dns.nameserver]}, "clamav": {"enabled": True, "address": clamd.address},
                "spamd": {"enabled": True, "address": spamd.address, "cache_size": 0}, **(extra or {})}
    backend = bench.milterd(scenario.name, "inet", "sqlite", sections, rules)
    backend.replay = _replay(bench)
    return backend


def _corpus_tiers(wide: bool = False) -> Callable[[Bench, Scenario], Backend]:
    """The corpus row plus the classifier with a model learned from the training folders only (before
    timing, into the row's own store) and the tiers on at the bounds bench/learner_tiers.py chose
    (*wide*: at its WIDE bounds, which the rule did not choose: the throughput at stake)."""

    def setup(bench: Bench, scenario: Scenario) -> Backend:
        from bench.learner_tiers import CHOSEN, WIDE

        assert CHOSEN is not None
        return _corpus_tiered(bench, scenario, WIDE if wide else CHOSEN)

    return setup


def _corpus_tiered(bench: Bench, scenario: Scenario, bounds: tuple[float | None, float | None]) -> Backend:
    from bench.learner_eval import learn_training
    from bench.learner_tiers import bench_bounds

    above, below = bench_bounds(bounds)  # shifted by what the mix's client, sender and Dates add before spamd
    database = bench.fresh_database("sqlite")
    learn_training(database, bench.corpus_cache)
    learner: dict[str, Any] = {"enabled": True, "skip_spamd_above": above, "skip_spamd_below": below}
    return _corpus_milterd(bench, scenario, {"learner": learner, "database": {"url": database}})


def _tiers_missing() -> str:
    from bench.learner_tiers import CHOSEN

    return "" if CHOSEN is not None else "the tiers' bounds are not chosen yet (bench/learner_tiers.py CHOSEN)"


def _corpus_chain(bench: Bench, scenario: Scenario) -> Backend:
    backend = _chain(bench, scenario, reject_at=15)  # milterd's and the MIMEDefang filter's reject threshold
    backend.replay = _replay(bench)
    return backend


def _corpus_mimedefang(bench: Bench, scenario: Scenario) -> Backend:
    """MIMEDefang 3.3, 4 workers, clamd over its unix socket, SpamAssassin in-process (bench/mimedefang.py)."""
    from bench import mimedefang

    clamd = bench.shared("clamd", _start_clamd)
    spec, stoppers = mimedefang.start(bench.root / scenario.name, clamd.unix_address[len("unix:"):])
    return Backend(milter=spec, stoppers=stoppers, replay=_replay(bench), logs=[bench.root / scenario.name / "mimedefang.log"])


def _spamd_alone(bench: Bench, scenario: Scenario) -> Backend:
    """spamd's own latency: the same message by SYMBOLS (milterd's client, in-process: no spamc start-up), no Postfix."""
    from milterd.checks.spamassassin import received_header
    from milterd.message.model import Envelope, Session, Spool
    from milterd.scanners.spamd import SpamdClient

    spamd = bench.shared("spamd", _start_spamd)
    client = SpamdClient(spamd.address, timeout=120)
    # What milterd sends: the message behind the Received: header for this hop.
    session = Session(client_addr="127.0.0.1", client_name="localhost", helo=HELO)
    envelope = Envelope(Spool(1 << 20), sender=SENDER, recipients=[RECIPIENT], queue_id="4ABC123")
    message = received_header(session, envelope, "mx.test") + sample_message(bench.size)

    def scan_one() -> str:
        client.check(message)
        return ""

    return Backend(driver=lambda messages, sessions: _threaded(scan_one, messages, sessions))


def _clamd_alone(bench: Bench, scenario: Scenario) -> Backend:
    """clamd's own latency: the same message by INSTREAM (milterd's client), no Postfix."""
    from milterd.scanners.clamd import ClamdClient

    clamd = bench.shared("clamd", _start_clamd)
    client = ClamdClient(clamd.address, timeout=30)
    message = sample_message(bench.size)

    def scan_one() -> str:
        stream = client.instream()
        stream.send(message)
        result = stream.finish()
        return "" if result.status == "OK" else f"clamd: {result.reply}"

    return Backend(driver=lambda messages, sessions: _threaded(scan_one, messages, sessions))


def _chain(bench: Bench, scenario: Scenario, reject_at: int | None = None) -> Backend:
    """The anchors: clamav-milter then spamass-milter (spamc → the same spamd), unix sockets; spamass-milter ``-r`` with *reject_at*."""
    clamd = bench.shared("clamd", _start_clamd)
    spamd = bench.shared("spamd", _start_spamd)
    root = bench.root / scenario.name
    root.mkdir(parents=True, exist_ok=True)
    clam_sock, spamass_sock = root / "clamav-milter.sock", root / "spamass-milter.sock"
    conf = root / "clamav-milter.conf"
    conf.write_text(
        f"MilterSocket unix:{clam_sock}\nMilterSocketMode 666\nFixStaleSocket true\nUser root\nForeground true\n"
        f"PidFile {root / 'clamav-milter.pid'}\nClamdSocket tcp:127.0.0.1:{clamd.port}\nOnClean Accept\nOnInfected Reject\n"
        f"OnFail Defer\nAddHeader Replace\nLogFile {root / 'clamav-milter.log'}\nMaxFileSize 25M\nReadTimeout 120\n"
    )
    log = open(root / "milters.log", "ab")
    clam = subprocess.Popen(["clamav-milter", "-c", str(conf)], stdout=log, stderr=log, start_new_session=True)
    spamass = subprocess.Popen(
        ["spamass-milter", "-p", str(spamass_sock), "-m", *(["-r", str(reject_at)] if reject_at else []), "--", "-d", "127.0.0.1", "-p", str(spamd.port)],
        stdout=log, stderr=log, start_new_session=True,
    )
    backend = Backend(milter=f"unix:{clam_sock},unix:{spamass_sock}", stoppers=[lambda: stop_group(clam), lambda: stop_group(spamass), log.close])
    deadline = time.monotonic() + 20
    while not (clam_sock.exists() and spamass_sock.exists()):
        if time.monotonic() > deadline or clam.poll() is not None or spamass.poll() is not None:
            backend.stop()
            raise RuntimeError(f"clamav-milter/spamass-milter did not start: {(root / 'milters.log').read_text(errors='replace')[-300:]}")
        time.sleep(0.1)
    os.chmod(spamass_sock, 0o666)  # this spamass-milter has no -g; Postfix's smtpd (user postfix) must connect
    return backend



def sample_message(size: int) -> bytes:
    """The message smtp-source sends with ``-l SIZE``: the same headers, lines of ``1XXX…``, ``2XXX…``
    (SpamAssassin's time depends on the content: the rows without Postfix must scan what milterd scans)."""
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nDate: Sat, 28 Nov 2026 09:51:17 +0000 (UTC)\r\n"
        f"Message-Id: <{uuid.uuid4().hex[:4]}.0001.0000@{HELO}>\r\n\r\n"
    )
    lines, left = [], size
    while left > 0:
        line = (str((len(lines) + 1) % 10) + "X" * 77)[: max(0, left - 1)]
        lines.append(line)
        left -= len(line) + 1
    return (head + "\r\n".join(lines) + "\r\n").encode()


def _spamc(bench: Bench, scenario: Scenario) -> Backend:
    """spamd's own capacity: spamc straight to it, the same concurrency, no Postfix."""
    spamd = bench.shared("spamd", _start_spamd)
    message = sample_message(bench.size)

    def scan_one() -> str:
        result = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(spamd.port), "-x"], input=message, capture_output=True, timeout=120)
        return f"spamc exit {result.returncode}" if result.returncode != 0 else ""

    return Backend(driver=lambda messages, sessions: _threaded(scan_one, messages, sessions))


def _threaded(one: Callable[[], str], messages: int, sessions: int) -> Sample:
    """Call *one* (returns "" or a failure) *messages* times from *sessions* threads; timed."""
    failures: list[str] = []
    counter = iter(range(messages))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            try:
                failure = one()
            except Exception as exc:  # noqa: BLE001
                failure = f"{exc.__class__.__name__}: {exc}"
            if failure:
                failures.append(failure)

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return Sample(messages, sessions, elapsed, ok=not failures, note="; ".join(failures[:3]))


def _checks_clamd(socket: str) -> Callable[[Bench, Scenario], Backend]:
    """milterd as the Rspamd row's peer: its own checks on (shipped rules, the local resolver) and clamd; no spamd."""

    def setup(bench: Bench, scenario: Scenario) -> Backend:
        dns = bench.shared("dns", _start_dns)
        clamd = bench.shared("clamd", _start_clamd)
        rules = {path.name: path.read_text() for path in sorted((REPO / "rules").glob("*.toml"))}
        sections = {"dns": {"nameservers": [dns.nameserver]}, "clamav": {"enabled": True, "address": clamd.address}}
        return bench.milterd(scenario.name, socket, "sqlite", sections, rules)

    return setup


def _rspamd(socket: str) -> Callable[[Bench, Scenario], Backend]:
    """Rspamd 3.4's proxy worker as a milter, self-scan, stock rules, antivirus on the same clamd, the same resolver (bench/rspamd.py)."""

    def setup(bench: Bench, scenario: Scenario) -> Backend:
        from bench import rspamd

        dns = bench.shared("dns", _start_dns)
        clamd = bench.shared("clamd", _start_clamd)
        spec, stoppers, pids, log = rspamd.start(bench.root / scenario.name, dns.nameserver, clamd.port, socket=socket)
        return Backend(milter=spec, stoppers=stoppers, pids=pids, logs=[log])

    return setup


def _rspamd_missing() -> str:
    from bench import rspamd

    return rspamd.missing()


def baseline_schema(source: str) -> dict[str, Any]:
    """The configuration keys the milterd under *source* knows, as nested dicts (its pydantic schema)."""
    program = (
        "import json\n"
        "from milterd.config import Config\n"
        "def keys(model):\n"
        "    out = {}\n"
        "    for name, field in type(model).model_fields.items():\n"
        "        value = getattr(model, name)\n"
        "        out[name] = keys(value) if hasattr(type(value), 'model_fields') else None\n"
        "    return out\n"
        "print(json.dumps(keys(Config())))\n"
    )
    # Run from *source*: with "-c" the current directory comes first on sys.path.
    result = subprocess.run([sys.executable, "-c", program], cwd=source, env={**os.environ, "PYTHONPATH": source}, capture_output=True, text=True, check=True)
    schema: dict[str, Any] = json.loads(result.stdout)
    return schema


def prune_unknown(sections: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """*sections* without the keys *schema* does not have (recursively)."""
    pruned: dict[str, Any] = {}
    for key, value in sections.items():
        if key not in schema:
            continue
        known = schema[key]
        pruned[key] = prune_unknown(value, known) if isinstance(value, dict) and isinstance(known, dict) else value
    return pruned


#: Rows whose milter is milterd (``--baseline`` gives each a twin running another revision).
MILTERD_ROWS = ("unix", "inet", "inet-pg", "checks", "greylist", "greylist-pg", "scanners", "scanners-tiered", "checks-clamd", "checks-clamd-unix", "corpus", "auth", "auth-core", "auth-source", "auth-source-core")


def baseline_twin(scenario: "Scenario", revision: str, source: Path) -> "Scenario":
    """The same row with milterd imported from *source* (an export of *revision*): before/after in one interleaved run."""
    setup = scenario.setup
    assert setup is not None

    def twin_setup(bench: Bench, twin: Scenario) -> Backend:
        bench.pythonpath = str(source)
        try:
            return setup(bench, twin)
        finally:
            bench.pythonpath = None

    return Scenario(f"{scenario.name}@base", f"{scenario.title} — baseline {revision}", scenario.group, twin_setup, needs=scenario.needs,
                    scale=scenario.scale, reference=scenario.name, serial=scenario.serial, corpus=scenario.corpus)


def _auth(checks: bool, client: str = "replay") -> Callable[[Bench, Scenario], Backend]:
    """The ``auth`` rows (bench/auth.py): signed 5 KB messages with a link through Postfix; *checks*: every
    check on with the shipped rules (else the checks off, as the core rows).  *client* ``"replay"``: the
    corpus row's client, the pool of 100 signed messages from 100 client addresses; ``"smtp-source"``: the
    core rows' client, ``smtp-source -F`` with the pool's first message from 127.0.0.1."""

    def setup(bench: Bench, scenario: Scenario) -> Backend:
        from bench import auth

        resolver = bench.shared("dns-auth", auth.start_dns)
        sections: dict[str, dict[str, Any]] = {"dns": {"nameservers": [resolver.nameserver]}}
        if not checks:
            sections.update({"checks": checks_off(), **learner_off()})
        database = bench.fresh_database("sqlite")
        sections["database"] = {"url": database}
        rules = {path.name: path.read_text() for path in sorted((REPO / "rules").glob("*.toml"))} if checks else None
        backend = bench.milterd(scenario.name, "inet", "sqlite", sections, rules)
        pool = auth.signed_pool(resolver.key, bench.size)
        if client == "smtp-source":
            message_file = bench.root / scenario.name / "signed.eml"
            message_file.write_bytes(pool[0].data.replace(b"\r\n", b"\n"))  # smtp-source ends each line with CRLF itself
            backend.replay = lambda port, count, sessions: smtp_source(port, count, sessions, bench.size, message_file)
        else:
            def replay(port: int, count: int, sessions: int) -> Sample:
                sample = corpus_replay(port, pool, count, sessions)
                problem = auth.refusals(sample.note, count)
                if problem:
                    sample.ok, sample.note = False, problem
                return sample

            backend.replay = replay
        if checks:
            backend.count_rows = auth.counter(database)  # "logged" = logged with DKIM_VALID and DMARC_PASS
        return backend

    return setup


def _mimedefang_missing() -> str:
    from bench import mimedefang

    return mimedefang.missing()


REPO = Path(__file__).resolve().parents[1]
_SCANNERS = _needs_all(_needs_module("tests.harness.scanners", "the scanners' test fixtures"), _needs_module("milterd.checks.clamav", "the ClamAV check"),
                       _needs_module("milterd.checks.spamassassin", "the spamd check"), _needs_commands("clamd", "spamd", "spamc"))

SCENARIOS: list[Scenario] = [
    Scenario("postfix", "Postfix alone (no milter)", "core"),
    Scenario("unix", "milterd, unix socket, SQLite log", "core", _core("unix", "sqlite"), targets=(Target("ratio", 0.75, "postfix"),)),
    Scenario("inet", "milterd, inet socket, SQLite log", "core", _core("inet", "sqlite"),
             targets=(Target("ratio", 0.6, "postfix"), Target("serial_ms", 10.0))),
    Scenario("auth", "milterd, inet, DKIM + DMARC + URI lists, signed 5 KB messages with a link (all checks, shipped rules; own client, see bench/auth.py)",
             "auth", _auth(checks=True), needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd")),
             reference="inet", targets=(Target("ratio", 0.8, "inet"), Target("ratio", 0.8, "auth-core"))),
    Scenario("auth-core", "milterd, inet, checks off, the same signed messages and client as auth (its client-matched core)", "auth", _auth(checks=False),
             needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd")), reference="inet"),
    Scenario("auth-source", "milterd, inet, DKIM + DMARC + URI lists, one signed 5 KB message with a link sent by smtp-source -F from 127.0.0.1 (the core rows' client; all checks, shipped rules)",
             "auth", _auth(checks=True, client="smtp-source"), needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd")),
             reference="inet", targets=(Target("ratio", 0.8, "inet"), Target("ratio", 0.8, "auth-source-core"))),
    Scenario("auth-source-core", "milterd, inet, checks off, the same signed message and smtp-source -F client as auth-source (its message-matched core)", "auth",
             _auth(checks=False, client="smtp-source"), needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd")),
             reference="inet"),
    Scenario("pymilter", "floor: trivial pre-forked pymilter, unix socket (bench/trivial_milter.py)", "floor", _trivial("unix")),
    Scenario("pymilter-inet", "floor: trivial pre-forked pymilter, inet socket", "floor", _trivial("inet")),
    Scenario("inet-pg", "milterd, inet socket, PostgreSQL log", "db", _core("inet", "postgresql"), needs=_needs_postgresql,
             reference="inet", targets=(Target("ratio", 0.6, "postfix"),)),
    Scenario("checks", "milterd, inet, all checks on, local resolver (unbound + rbldnsd)", "checks", _checks,
             needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd")),
             reference="inet", targets=(Target("ratio", 0.8, "inet"),)),
    Scenario("greylist", "milterd, inet, greylisting on, steady state, SQLite", "greylist", _greylist("sqlite"),
             needs=_needs_module("milterd.greylist", "greylisting"), reference="inet", targets=(Target("ratio", 0.9, "inet"),)),
    Scenario("greylist-pg", "milterd, inet, greylisting on, steady state, PostgreSQL", "greylist", _greylist("postgresql"),
             needs=_needs_all(_needs_module("milterd.greylist", "greylisting"), _needs_postgresql), reference="inet-pg",
             targets=(Target("ratio", 0.9, "inet-pg"),)),
    Scenario("scanners", "milterd, inet, clamd + spamd (4 children)", "scanners", _scanners(), needs=_SCANNERS, scale=0.1,
             reference="chain", targets=(Target("ratio", 1.0, "chain"), Target("ratio", 0.95, "spamc"), Target("serial_max", 5.0, "clamd,spamd"))),
    Scenario("scanners-tiered", "milterd, inet, clamd + spamd, [spamd] after_clamav (spamd waits for clamd)", "scanners", _scanners(after_clamav=True),
             needs=_SCANNERS, scale=0.1, reference="chain", targets=(Target("ratio", 1.0, "chain"), Target("ratio", 0.95, "spamc"))),
    Scenario("chain", "clamav-milter + spamass-milter, unix sockets, same clamd + spamd", "scanners", _chain,
             needs=_needs_all(_SCANNERS, _needs_commands("clamav-milter", "spamass-milter")), scale=0.1, reference="spamc"),
    Scenario("spamc", "spamc straight to spamd (no Postfix), same concurrency", "scanners", _spamc, needs=_SCANNERS, scale=0.1),
    Scenario("spamd", "spamd alone: SYMBOLS of the same message and Received: header, milterd's client in-process (no Postfix)", "scanners", _spamd_alone,
             needs=_SCANNERS, scale=0.1),
    Scenario("clamd", "clamd alone: INSTREAM of the same message (no Postfix)", "scanners", _clamd_alone, needs=_SCANNERS, scale=0.5),
    Scenario("checks-clamd", "milterd, inet, its checks (local resolver) + clamd, no spamd, 2 workers", "rspamd", _checks_clamd("inet"),
             needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd", "clamd")),
             reference="rspamd", targets=(Target("ratio", 2.0, "rspamd"), Target("serial_ratio", 0.25, "rspamd"))),
    Scenario("rspamd", "Rspamd 3.4 proxy milter, inet, self-scan, stock rules, antivirus → the same clamd, the same resolver, 2 workers", "rspamd", _rspamd("inet"),
             needs=_needs_all(_rspamd_missing, _needs_commands("unbound", "rbldnsd", "clamd"))),
    Scenario("checks-clamd-unix", "milterd, unix socket, its checks (local resolver) + clamd, no spamd, 2 workers", "rspamd", _checks_clamd("unix"),
             needs=_needs_all(_needs_module("tests.harness.dns", "the checks' DNS fixtures"), _needs_commands("unbound", "rbldnsd", "clamd")),
             reference="rspamd-unix", targets=(Target("ratio", 2.0, "rspamd-unix"), Target("serial_ratio", 0.25, "rspamd-unix"))),
    Scenario("rspamd-unix", "Rspamd 3.4 proxy milter, unix socket, otherwise as above", "rspamd", _rspamd("unix"),
             needs=_needs_all(_rspamd_missing, _needs_commands("unbound", "rbldnsd", "clamd"))),
    Scenario("corpus", "corpus mix: milterd, inet, all checks (DNSBL) + clamd + spamd", "corpus", _corpus_milterd,
             needs=_needs_all(_SCANNERS, _needs_commands("unbound", "rbldnsd", "npm")), reference="corpus-mimedefang", serial=False, corpus=True,
             targets=(Target("ratio", 1.0, "corpus-mimedefang"), Target("ratio", 1.0, "corpus-chain"))),
    Scenario("corpus-tiers", "corpus mix: as corpus, plus the classifier learned from the training folders and the tiers on (bench/learner_tiers.py)",
             "corpus", _corpus_tiers(), needs=_needs_all(_SCANNERS, _needs_commands("unbound", "rbldnsd", "npm"), _tiers_missing),
             reference="corpus-mimedefang", serial=False, corpus=True,
             targets=(Target("ratio", 1.3, "corpus-mimedefang"), Target("ratio", 1.0, "corpus"))),
    Scenario("corpus-tiers-wide", "corpus mix: as corpus-tiers at bounds the rule did not choose (learner_tiers.WIDE: spamd skipped below too)",
             "corpus", _corpus_tiers(wide=True), needs=_needs_all(_SCANNERS, _needs_commands("unbound", "rbldnsd", "npm"), _tiers_missing),
             reference="corpus-mimedefang", serial=False, corpus=True),
    Scenario("corpus-chain", "corpus mix: clamav-milter + spamass-milter", "corpus", _corpus_chain,
             needs=_needs_all(_SCANNERS, _needs_commands("clamav-milter", "spamass-milter", "npm")), reference="corpus-mimedefang", serial=False, corpus=True),
    Scenario("corpus-mimedefang", "corpus mix: MIMEDefang 3.3, 4 workers, clamd + SpamAssassin in-process", "corpus", _corpus_mimedefang,
             needs=_needs_all(_SCANNERS, _mimedefang_missing, _needs_commands("npm")), reference="corpus-chain", serial=False, corpus=True),
]
