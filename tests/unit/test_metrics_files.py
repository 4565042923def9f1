"""Metric files of dead processes are folded into an archive, and a scrape never sees a counter go down.

The files are real prometheus_client multiprocess files, written in this process by its own
metric classes (a multiprocess value class whose process identifier the test sets: when it
changes, prometheus_client starts new files for the new "pid", as a forked worker does).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, mmap_dict, multiprocess, values

from milterd import dns, metrics, metricsserver
from milterd.milter.supervisor import Supervisor

Totals = dict[tuple[str, tuple[tuple[str, str], ...]], float]
#: pid → ([(action, count), ...], [seconds observed, ...]); every value exact in binary.
Processes = dict[int, tuple[list[tuple[str, float]], list[float]]]


def write(monkeypatch: pytest.MonkeyPatch, directory: Path, processes: Processes) -> None:
    """Write the multiprocess files of *processes* into *directory*, as those processes would have."""
    pid = [next(iter(processes))]  # an unlabelled histogram writes its file when it is made
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid[0]))
    registry = CollectorRegistry()  # not the global one: these are created again by every test
    messages = Counter("milterd_messages_total", "Messages logged, by action", ["action"], registry=registry)
    eom = Histogram("milterd_eom_seconds", "End of message", buckets=(0.01, 0.1, 1.0), registry=registry)
    for fake, (counts, seconds) in processes.items():
        pid[0] = fake
        for action, amount in counts:
            messages.labels(action).inc(amount)
        for value in seconds:
            eom.observe(value)


def totals(collector: Any) -> Totals:
    """Every sample a scrape would show, by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for metric in collector.collect() for s in metric.samples}


def collector(directory: Path) -> Any:
    return metrics._LockedCollector(multiprocess.MultiProcessCollector(None, path=str(directory)))  # noqa: SLF001


def raw(path: Path) -> dict[tuple[str, tuple[str, ...]], float]:
    """A file's values as written, by sample name and label values."""
    found = {}
    for key, value, _timestamp, _position in mmap_dict.MmapedDict.read_all_values_from_file(str(path)):
        _metric, name, labels, _help = json.loads(key)
        found[(name, tuple(labels.values()))] = value
    return found


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


PROCESSES: Processes = {
    101: ([("accept", 3), ("reject", 1)], [0.5, 2.0, 0.005]),
    102: ([("accept", 2), ("quarantine", 4)], [0.25, 0.0625]),
    103: ([("accept", 7)], [0.03125]),
}


def test_folding_a_pid_removes_its_files_and_keeps_every_total(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(monkeypatch, tmp_path, PROCESSES)
    before = totals(collector(tmp_path))
    assert before[("milterd_messages_total", (("action", "accept"),))] == 12
    assert before[("milterd_eom_seconds_count", ())] == 6

    metrics.fold(str(tmp_path), 101)
    assert "counter_101.db" not in names(tmp_path) and "histogram_101.db" not in names(tmp_path)
    assert totals(collector(tmp_path)) == before  # counters, buckets, _sum and _count

    metrics.fold(str(tmp_path), 102)  # a second fold adds to the archive
    assert totals(collector(tmp_path)) == before
    assert names(tmp_path) == ["counter_103.db", "counter_archive.db", "histogram_103.db", "histogram_archive.db"]
    assert raw(tmp_path / "counter_archive.db") == {("milterd_messages_total", ("accept",)): 5.0, ("milterd_messages_total", ("reject",)): 1.0,
                                                    ("milterd_messages_total", ("quarantine",)): 4.0}
    histogram = raw(tmp_path / "histogram_archive.db")  # per-bucket counts, as prometheus_client writes them
    assert histogram[("milterd_eom_seconds_sum", ())] == 0.5 + 2.0 + 0.005 + 0.25 + 0.0625
    assert histogram[("milterd_eom_seconds_bucket", ("0.01",))] == 1 and histogram[("milterd_eom_seconds_bucket", ("1.0",))] == 2

    metrics.fold(str(tmp_path), 103)
    metrics.fold(str(tmp_path), 103)  # nothing left of it: nothing changes
    assert totals(collector(tmp_path)) == before
    assert names(tmp_path) == ["counter_archive.db", "histogram_archive.db"]


def test_a_fold_that_failed_before_leaves_no_count_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(monkeypatch, tmp_path, PROCESSES)
    before = totals(collector(tmp_path))
    (tmp_path / "counter_archive.db.partial").write_bytes((tmp_path / "counter_102.db").read_bytes())
    metrics.fold(str(tmp_path), 101)
    assert totals(collector(tmp_path)) == before


def test_a_scrape_during_folds_never_sees_a_total_change(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pids = list(range(200, 260))
    write(monkeypatch, tmp_path, {pid: ([("accept", pid % 5 + 1), (f"a{pid % 3}", 1)], [0.5 * (pid % 4), 0.25]) for pid in pids})
    scraper = collector(tmp_path)
    expected = totals(scraper)
    seen: list[Totals] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                seen.append(totals(scraper))
                time.sleep(0.0002)  # threading.Lock is not fair: let the folds in
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for pid in pids:
            metrics.fold(str(tmp_path), pid)
            scrapes = len(seen)
            while len(seen) == scrapes and thread.is_alive():  # the next fold starts while a scrape runs
                time.sleep(0.0005)
    finally:
        done.set()
        thread.join()
    assert not errors
    assert len(seen) >= len(pids)
    assert all(snapshot == expected for snapshot in seen)  # neither a drop (files gone) nor a double count
    assert names(tmp_path) == ["counter_archive.db", "histogram_archive.db"]


class _Server:
    server_address = ("127.0.0.1", 9999)


def test_the_served_registry_waits_for_a_fold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served: list[CollectorRegistry] = []

    def app(registry: CollectorRegistry) -> str:
        served.append(registry)
        return "the app"

    monkeypatch.setattr(prometheus_client, "make_wsgi_app", app)
    monkeypatch.setattr(metricsserver, "serve", lambda host, port, application: _Server())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("_directory", "_metrics", "_path"):  # what start sets: put back as it was after the test
        monkeypatch.setattr(metrics, name, None)
    try:
        metrics.start("127.0.0.1:9999")  # not bound: serve is the fake above
        write(monkeypatch, tmp_path, {101: ([("accept", 2)], [])})
        scraped: list[bytes] = []
        with metrics._lock:  # noqa: SLF001 - as a fold holds it
            scraper = threading.Thread(target=lambda: scraped.append(generate_latest(served[0])))
            scraper.start()
            scraper.join(0.3)
            assert scraper.is_alive() and not scraped
        scraper.join()
        assert b'milterd_messages_total{action="accept"} 2.0' in scraped[0]
        metrics.process_dead(101)
        assert names(tmp_path) == ["counter_archive.db", "histogram_archive.db"]
        assert b'milterd_messages_total{action="accept"} 2.0' in generate_latest(served[0])
    finally:
        for metric in (metrics._metrics or {}).values():  # noqa: SLF001
            prometheus_client.REGISTRY.unregister(metric)
        dns.observe_cache(None)


def test_process_dead_does_nothing_with_metrics_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(monkeypatch, tmp_path, {101: ([("accept", 1)], [])})
    monkeypatch.setattr(metrics, "_metrics", None)
    monkeypatch.setattr(metrics, "_path", str(tmp_path))
    metrics.process_dead(101)
    assert "counter_101.db" in names(tmp_path)
    monkeypatch.setattr(metrics, "_metrics", {})
    metrics.process_dead(101)
    assert "counter_101.db" not in names(tmp_path)


def test_the_supervisor_folds_every_child_it_reaps(monkeypatch: pytest.MonkeyPatch) -> None:
    folded: list[int] = []
    monkeypatch.setattr(metrics, "process_dead", folded.append)
    reaped = iter([(101, 0), (102, 0)])
    monkeypatch.setattr("os.waitpid", lambda pid, options: next(reaped))
    supervisor = Supervisor.__new__(Supervisor)
    supervisor._stopping = False  # noqa: SLF001
    supervisor.maintainer = 0
    supervisor.workers = {101: -1}
    supervisor.started = {101: 1.0, 103: 2.0, 104: 3.0}
    supervisor.drain_limits = {}
    supervisor.beats = {}
    assert supervisor._reap(block=True) == [101]  # noqa: SLF001 - a worker (or the maintainer) reaped by waitpid(-1)
    assert not Supervisor._alive(102)  # noqa: SLF001 - the maintainer, reaped by its own waitpid
    supervisor.workers = {103: -1}
    supervisor._forget(103)  # noqa: SLF001 - as _stop_worker does after its SIGKILL and waitpid
    assert folded == [101, 102, 103]
    assert supervisor.started == {104: 3.0}  # a reaped worker's start time goes with it; the others' stay


def test_a_reaped_maintainer_pid_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker that later gets the maintainer's old pid must not pass for it (never replaced when it dies).
    supervisor = Supervisor.__new__(Supervisor)
    supervisor.workers, supervisor.maintainer, supervisor.started, supervisor.drain_limits = {}, 4242, {}, {}
    supervisor.beats = {}
    monkeypatch.setattr(metrics, "process_dead", lambda pid: None)
    supervisor._forget(4242)
    assert supervisor.maintainer == 0


def test_start_deletes_only_prometheus_client_s_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``*.db`` of $PROMETHEUS_MULTIPROC_DIR was deleted at start: a SQLite store named ``milterd.db`` beside them too."""

    for name in ("milterd.db", "other.db", "counter_17.db", "gauge_livesum_17.db", "histogram_archive.db", "summary_3.db", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(metricsserver, "serve", lambda host, port, application: _Server())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("_directory", "_metrics", "_path"):
        monkeypatch.setattr(metrics, name, None)
    served: list[Any] = []
    monkeypatch.setattr(prometheus_client, "make_wsgi_app", lambda registry: served.append(registry))
    try:
        metrics.start("127.0.0.1:9999")
        assert {"milterd.db", "other.db", "notes.txt"} <= set(names(tmp_path))
        assert not {"counter_17.db", "gauge_livesum_17.db", "histogram_archive.db", "summary_3.db"} & set(names(tmp_path))
        # A second look: the collector read every *.db, the store's too, and each scrape failed (HTTP 500).
        write(monkeypatch, tmp_path, {101: ([("accept", 2)], [])})
        assert b'milterd_messages_total{action="accept"} 2.0' in generate_latest(served[0])
    finally:
        for metric in (metrics._metrics or {}).values():  # noqa: SLF001
            prometheus_client.REGISTRY.unregister(metric)
        dns.observe_cache(None)
