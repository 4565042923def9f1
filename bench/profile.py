#!/usr/bin/env python3
"""Where milterd's workers spend their CPU under load: py-spy on the bench's own rows (issue 15).

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py                          # unix (core), checks, checks-clamd
    .venv/bin/python bench/profile.py --scenarios unix --seconds 30 --native

Each chosen row of bench/scenarios.py is started as ``bench/run.py`` starts it
(one private Postfix, smtp-sink, the local resolver and clamd where the row
needs them), warmed up, and then driven as bench/run.py drives it (``smtp-source``, or the row's own client: 10 sessions, 5 KB)
while ``py-spy record --subprocesses --format raw`` samples the milter's
supervisor and its workers.  Idle stacks (waiting in a system call) are left
out by py-spy, so the samples are CPU.  The collapsed stacks are kept in
``--out`` (feed them to flamegraph.pl or speedscope); the top frames by self
and by total share of the samples are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.scenarios import SCENARIOS, Bench  # noqa: E402


def parse_stacks(lines: list[str]) -> Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) output, ``frame;frame;…;leaf COUNT`` per line, root first, as stack → samples.

    The ``process …`` and ``thread …`` pseudo-frames that ``--subprocesses``/``--threads`` add are dropped.
    """
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(f for f in stack.split(";") if f and not f.startswith(("process ", "thread ")))
        if frames:
            stacks[frames] += int(count)
    return stacks


def top_frames(stacks: Counter[tuple[str, ...]], limit: int = 25) -> list[tuple[str, float, float]]:
    """(frame, self %, total %) of the *limit* frames with the most self samples, then by total.

    Self: samples with the frame as the leaf.  Total: samples with the frame anywhere in
    the stack (a recursive frame counts once per sample).
    """
    samples = sum(stacks.values())
    if not samples:
        return []
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for frames, count in stacks.items():
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    ranked = sorted(total, key=lambda f: (-own[f], -total[f], f))[:limit]
    return [(f, 100.0 * own[f] / samples, 100.0 * total[f] / samples) for f in ranked]


def top_total(stacks: Counter[tuple[str, ...]], limit: int = 25) -> list[tuple[str, float, float]]:
    """Like :func:`top_frames`, ranked by total share (where the time goes, callers included)."""
    samples = sum(stacks.values())
    if not samples:
        return []
    rows = top_frames(stacks, limit=10**9)
    return sorted(rows, key=lambda r: (-r[2], -r[1], r[0]))[:limit]


def markdown(rows: list[tuple[str, float, float]]) -> str:
    """The frames as a Markdown table."""
    lines = ["| frame | self % | total % |", "|---|---:|---:|"]
    lines += [f"| `{frame.replace('|', '/')}` | {own:.1f} | {total:.1f} |" for frame, own, total in rows]
    return "\n".join(lines)


def parse_perf_script(lines: list[str], pids: set[int]) -> Counter[tuple[str, str]]:
    """``perf script -F pid,ip,sym,dso`` lines (``PID  IP SYMBOL (DSO)``) of the processes *pids*, as (dso, symbol) → samples."""
    found: Counter[tuple[str, str]] = Counter()
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].isdigit() or int(parts[0]) not in pids:
            continue
        rest = parts[2].rstrip()
        symbol, _, dso = rest.rpartition(" (")
        dso = dso.rstrip(")").rsplit("/", 1)[-1]
        found[(dso, symbol or "?")] += 1
    return found


def _perf(pids: list[int], seconds: int, data: Path) -> subprocess.Popen[bytes]:
    """``perf record`` of the worker processes (every CPU cycle: kernel, libmilter, pymilter, libpython, SQLite…)."""
    # System-wide, filtered by process at report time: `-p` stops following a process whose
    # libmilter threads (one per connection) come and go.
    command = ["perf", "record", "-a", "-F", "499", "-o", str(data), "--", "sleep", str(seconds)]
    print(f"profile: {' '.join(command)}", file=sys.stderr, flush=True)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(data.with_suffix(".log"), "wb"))


def perf_tables(data: Path, pids: list[int], top: int) -> str:
    """Shares of the workers' sampled cycles by shared object, then by symbol (Markdown)."""
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,ip,sym,dso"], capture_output=True, text=True).stdout
    found = parse_perf_script(script.splitlines(), set(pids))
    total = sum(found.values()) or 1
    by_dso: Counter[str] = Counter()
    for (dso, _), count in found.items():
        by_dso[dso] += count
    dsos = "\n".join(f"| `{dso}` | {100.0 * n / total:.1f} |" for dso, n in by_dso.most_common(top))
    symbols = "\n".join(f"| `{dso}` | `{sym.replace('|', '/')}` | {100.0 * n / total:.1f} |" for (dso, sym), n in found.most_common(top))
    return (f"{total} samples in the workers.\n\n| shared object | % of the workers' cycles |\n|---|---:|\n{dsos}\n\n"
            f"| shared object | symbol | % |\n|---|---|---:|\n{symbols}")


def _supervisor(pids: list[int]) -> int:
    """The parent of the workers (py-spy's --subprocesses follows its children)."""
    fields = Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="unix,checks,checks-clamd", help="bench rows to profile, one after the other")
    parser.add_argument("--seconds", type=int, default=20, help="sampling time per row")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--native", action="store_true", help="also sample C frames (pymilter, libmilter, libc)")
    parser.add_argument("--perf", action="store_true", help="sample with Linux perf instead (all CPU: kernel, C libraries, Python): shares by shared object and symbol")
    parser.add_argument("--all-threads", action="store_true",
                        help="every non-idle sample, not only those holding the GIL (py-spy's idle test misses threads blocked in C: libmilter's loop, lock waits)")
    parser.add_argument("--top", type=int, default=20, help="frames in each table")
    parser.add_argument("--out", default="", help="where the raw stacks go (default: a new directory under /tmp)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("bench/profile.py: py-spy is missing (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    wanted = [w.strip() for w in args.scenarios.split(",") if w.strip()]
    scenarios = [s for s in SCENARIOS if s.name in wanted]
    out = Path(args.out or tempfile.mkdtemp(prefix="milterd-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="milterd-bench-"))
    scratch.chmod(0o755)
    bench = Bench(scratch)
    try:
        for s in scenarios:
            why = s.unavailable()
            if why:
                print(f"profile: skipping {s.name}: {why}", file=sys.stderr)
                continue
            bench.add(s)
        bench.start_postfix()
        for name, backend in bench.backends.items():
            backend.drive(40, 2)
            pids = backend.pids()
            if not pids:
                print(f"profile: {name}: no worker processes", file=sys.stderr)
                continue
            if args.perf:
                data = out / f"{name}.perf.data"
                recorder = _perf(pids, args.seconds, data)
                sent, started, cpu_before = 0, time.monotonic(), backend.cpu_ms() or 0.0
                while recorder.poll() is None:
                    bench.wait_queue_idle()
                    sent += backend.drive(400, 10).messages
                cpu = (backend.cpu_ms() or 0.0) - cpu_before
                print(f"\n### {name}: {s_title(name)} (perf)\n\n{sent} messages in {time.monotonic() - started:.0f} s;"
                      f" workers' CPU {cpu / max(sent, 1):.2f} ms/msg (utime + stime); perf data: {data}\n\n{perf_tables(data, pids, args.top)}\n", flush=True)
                continue
            raw = out / f"{name}.txt"
            command = [spy, "record", "--pid", str(_supervisor(pids)), "--subprocesses", "--format", "raw", "--nolineno",
                       "--rate", str(args.rate), "--duration", str(args.seconds), "--output", str(raw)] + (["--native"] if args.native else []) + ([] if args.all_threads else ["--gil"])
            print(f"profile: {name}: {' '.join(command)}", file=sys.stderr, flush=True)
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(out / f"{name}.py-spy.log", "wb"))
            sent, started, cpu_before = 0, time.monotonic(), backend.cpu_ms() or 0.0
            while recorder.poll() is None:
                bench.wait_queue_idle()
                sample = backend.drive(400, 10)
                sent += sample.messages
            elapsed = time.monotonic() - started
            cpu = (backend.cpu_ms() or 0.0) - cpu_before
            stacks = parse_stacks(raw.read_text().splitlines()) if raw.exists() else Counter()
            samples = sum(stacks.values())
            sampled_ms = 1000.0 * samples / args.rate
            print(f"\n### {name}: {s_title(name)}\n\n{sent} messages in {elapsed:.0f} s; workers' CPU {cpu / max(sent, 1):.2f} ms/msg (utime + stime);"
                  f" {samples} samples at {args.rate}/s = {sampled_ms / max(sent, 1):.2f} ms/msg {'on CPU' if args.all_threads else 'holding the GIL'}"
                  f" ({100.0 * sampled_ms / cpu if cpu else 0:.0f} % of the CPU time); raw stacks: {raw}\n\nBy self time:\n\n{markdown(top_frames(stacks, args.top))}\n\n"
                  f"By total time:\n\n{markdown(top_total(stacks, args.top))}\n", flush=True)
    finally:
        bench.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def s_title(name: str) -> str:
    """The row's title in bench/scenarios.py."""
    return next((s.title for s in SCENARIOS if s.name == name), name)


if __name__ == "__main__":
    sys.exit(main())
