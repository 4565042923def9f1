"""What one log row costs: ``Store.log_message`` timed in-process, by one writer and by two at once.

A worker commits the row before it answers Postfix at end of data, so this
is added to every message's latency; "two writers at once" (the two
workers of a 2-core machine) shows whether writers serialize: with no
contention two writers reach about twice one writer's rows/s.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.scenarios import Bench


def _record():  # type: ignore[no-untyped-def]
    from milterd.store import MessageRecord

    return MessageRecord(
        action="accept", mta_host="mx.test", queue_id="4Fh3kT0zZ9z", client_addr="192.0.2.10", client_name="client.example.org",
        helo="client.example.org", sender="sender@example.org", recipients=["rcpt@example.com"], subject="benchmark",
        message_id="<bench@example.org>", size=5200, score=0.0, symbols={"BENCH_A": 0.0, "BENCH_B": 0.1}, elapsed_ms=1.0,
    )


def _writer(url: str, writes: int, start: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue[tuple[float, list[float]]]") -> None:
    from milterd.config import DatabaseSection
    from milterd.store import Store

    store = Store(DatabaseSection(url=url))
    record = _record()
    store.log_message(record)  # connect, warm the pool
    start.wait()
    each = []
    began = time.perf_counter()
    for _ in range(writes):
        t0 = time.perf_counter()
        store.log_message(record)
        each.append(time.perf_counter() - t0)
    out.put((time.perf_counter() - began, each))
    store.close()


def run_writers(url: str, writers: int, writes: int) -> tuple[float, float, float]:
    """*writers* processes each commit *writes* rows at once: (rows/s overall, median ms, 95th percentile ms)."""
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, writes, start, out)) for _ in range(writers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # everyone connected
    start.set()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    wall = max(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[1])
    median = latencies[len(latencies) // 2] * 1000
    p95 = latencies[int(len(latencies) * 0.95)] * 1000
    return writers * writes / wall, median, p95


def measure(bench: "Bench", writes: int = 1000) -> list[str]:
    """The Markdown table of the store's write cost on SQLite and (when reachable) PostgreSQL."""
    from bench.scenarios import _needs_postgresql
    from milterd.config import DatabaseSection
    from milterd.store import Store

    kinds = ["sqlite"] + ([] if _needs_postgresql() else ["postgresql"])
    lines = ["| store | writers | rows/s | ms/row median | ms/row p95 |", "|---|---:|---:|---:|---:|"]
    for kind in kinds:
        url = bench.fresh_database(kind)
        store = Store(DatabaseSection(url=url))
        store.upgrade()
        store.close()
        for writers in (1, 2):
            rate, median, p95 = run_writers(url, writers, writes)
            lines.append(f"| {kind} | {writers} | {rate:.0f} | {median:.2f} | {p95:.2f} |")
    return lines
