"""Prometheus metrics across pre-forked workers (``[metrics] listen``).

The supervisor calls :func:`start` before it forks: it points
``PROMETHEUS_MULTIPROC_DIR`` at an empty directory (prometheus_client reads it
when it is first imported, which must happen after that), and serves the sum
of every process's files on ``[metrics] listen``.  Workers count through
:func:`observe`, called once per logged message; the supervisor counts
worker restarts.  With metrics off nothing is imported and :func:`observe`
returns at once.

Metrics (all prefixed ``milterd_``):

* ``messages_total{action}`` — every logged message by action (greylist,
  quarantine, reject… included);
* ``symbol_hits_total{symbol}`` — symbols in the verdicts;
* ``backend_errors_total{symbol}`` — symbols that say a backend failed or
  timed out (``*_ERROR``, ``*_TEMPFAIL``, ``*_TEMPERROR``: clamd, spamd, DNS,
  greylist store);
* ``transaction_seconds`` — MAIL FROM to the verdict (histogram);
* ``eom_seconds`` — end of message alone: scanners, policy, log write (histogram);
* ``store_errors_total`` — log rows that could not be written;
* ``worker_restarts_total`` — workers that died and were replaced;
* ``dns_cache_lookups_total{result}`` — ``hit``/``miss`` of the resolver's answer cache.

Every process writes its own ``counter_<pid>.db`` and ``histogram_<pid>.db``
(64 KiB each) and every scrape reads them all.  When the supervisor reaps a
child, :func:`process_dead` folds that pid's files into
``counter_archive.db``/``histogram_archive.db`` and deletes them, so the
directory does not grow with every restart and reload.  The fold and the
scrape take the same lock: a scrape sees the pid's files or the archive that
holds their counts, never both or neither, and a counter never goes down.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

from . import dns
from .endpoints import parse_listen

log = logging.getLogger("milterd")

#: Set in the supervisor before the workers fork; None: metrics off.
_metrics: dict[str, Any] | None = None
_directory: str | None = None
#: The multiprocess directory being served (set by :func:`start`).
_path: str | None = None
#: The metrics server's listening socket, in the supervisor; every child inherits it (:func:`after_fork_in_worker`).
_listen_socket: socket.socket | None = None
#: Held by a scrape (in the metrics server's thread) and by :func:`fold` (in the supervisor's main thread).
_lock = threading.Lock()

#: Files whose values add up across processes (a counter, a histogram's raw buckets, _sum), and so can be folded.
FOLDED_KINDS = ("counter", "histogram", "summary")
ARCHIVE = "archive"

#: The files prometheus_client's multiprocess mode writes (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``…).
_COLLECTOR_FILE = re.compile(r"^(?:counter|histogram|summary|gauge_[a-z]+)_[^/]+\.db$")

ERROR_SUFFIXES = ("_ERROR", "_TEMPFAIL", "_TEMPERROR")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def start(listen: str) -> tuple[str, int] | None:
    """In the supervisor, before forking: prepare the multiprocess directory and serve *listen*.

    Returns the address served (the port may have been 0), or None when *listen* is empty.
    """
    global _metrics, _directory, _path, _listen_socket
    if not listen:
        return None
    host, port = parse_listen(listen)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # counts of a previous run must not add up
            if _COLLECTOR_FILE.match(name):  # prometheus_client's files only: the directory may hold others (a store.db)
                os.unlink(os.path.join(directory, name))
    else:
        directory = _directory = tempfile.mkdtemp(prefix="milterd-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app, multiprocess

    from .metricsserver import serve

    registry = CollectorRegistry()
    registry.register(_LockedCollector(multiprocess.MultiProcessCollector(None, path=directory)))
    try:
        server = serve(host, port, make_wsgi_app(registry))
    except BaseException:  # a port in use, an address not here: serve refuses to start and leaves nothing behind
        if _directory:
            stop()
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            _directory = None
        raise
    _metrics = {
        "messages": Counter("milterd_messages_total", "Messages logged, by action", ["action"]),
        "symbols": Counter("milterd_symbol_hits_total", "Symbols in verdicts", ["symbol"]),
        "errors": Counter("milterd_backend_errors_total", "Symbols saying a backend (scanner, DNS, store) failed or timed out", ["symbol"]),
        "transaction": Histogram("milterd_transaction_seconds", "MAIL FROM to verdict", buckets=BUCKETS),
        "eom": Histogram("milterd_eom_seconds", "End of message: scanners, policy and log write", buckets=BUCKETS),
        "store_errors": Counter("milterd_store_errors_total", "Log rows that could not be written"),
        "restarts": Counter("milterd_worker_restarts_total", "Workers that died and were replaced"),
        "dns_cache": Counter("milterd_dns_cache_lookups_total", "DNS answers looked up in the workers' caches", ["result"]),
    }
    _path = directory
    _listen_socket = getattr(server, "socket", None)
    _count_dns_cache()
    address = server.server_address[:2]
    log.info("metrics on http://%s:%d/metrics", address[0], address[1])
    return str(address[0]), int(address[1])


class _LockedCollector:
    """The multiprocess collector, read under :data:`_lock` so that a fold is never seen half done."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector

    def collect(self) -> list[Any]:
        """Every process's metrics, summed (prometheus_client's MultiProcessCollector), from its own files only:
        its ``collect`` reads every ``*.db`` of the directory, and another (a SQLite store) failed every scrape."""
        with _lock:
            path = self._collector._path  # noqa: SLF001 - where MultiProcessCollector reads
            files = [os.path.join(path, name) for name in sorted(os.listdir(path)) if _COLLECTOR_FILE.match(name)]
            return list(self._collector.merge(files, accumulate=True))


def process_dead(pid: int) -> None:
    """In the supervisor, once child *pid* is reaped: fold its metric files into the archive."""
    if _metrics is None or _path is None:
        return
    try:
        fold(_path, pid)
    except Exception:  # noqa: BLE001 - the files stay and are still counted; the supervisor goes on
        log.exception("cannot fold the metrics of process %d", pid)


def fold(directory: str, pid: int) -> None:
    """Add dead process *pid*'s counters and histograms in *directory* to the archive files and delete its own.

    The values are summed per key of prometheus_client's file format (the key holds the metric,
    sample name, labels and help, so the archive's keys are the processes' own, copied as they are);
    a histogram's file holds per-bucket counts and _sum, which add up like counters.  The archive is
    written to a file the collector does not read (not ``*.db``), renamed over the old one, and only
    then is the pid's file deleted, all under :data:`_lock`.  Gauges follow prometheus_client's
    rules (:func:`~prometheus_client.multiprocess.mark_process_dead`).
    """
    from prometheus_client import mmap_dict, multiprocess  # after start(), like its other imports; public API only

    with _lock:
        for kind in FOLDED_KINDS:
            source = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(source):
                continue
            archive = os.path.join(directory, f"{kind}_{ARCHIVE}.db")
            totals: dict[str, tuple[float, float]] = {}
            for path in [archive, source] if os.path.exists(archive) else [source]:
                for key, value, timestamp, _position in mmap_dict.MmapedDict.read_all_values_from_file(path):
                    total, latest = totals.get(key, (0.0, 0.0))
                    totals[key] = (total + value, max(latest, timestamp))
            partial = archive + ".partial"
            if os.path.exists(partial):  # left by a fold that failed: MmapedDict would add to its values
                os.unlink(partial)
            writer = mmap_dict.MmapedDict(partial)
            try:
                for key, (total, latest) in totals.items():
                    writer.write_value(key, total, latest)
            finally:
                writer.close()
            os.replace(partial, archive)
            os.unlink(source)
        multiprocess.mark_process_dead(pid, directory)


def _count_dns_cache() -> None:
    """Count hits and misses of the resolver's answer cache (the hit ratio is hit / (hit + miss)),
    through dns's observer hook, set in the supervisor before the workers fork."""
    hit, miss = _metrics["dns_cache"].labels("hit"), _metrics["dns_cache"].labels("miss")  # type: ignore[index]

    def count(found: bool) -> None:
        (hit if found else miss).inc()

    dns.observe_cache(count)


def enabled() -> bool:
    """Whether metrics are being collected in this process."""
    return _metrics is not None


def observe(record: Any, eom_started: float | None = None, stored: bool = True) -> None:
    """Count one logged message (its :class:`~milterd.store.MessageRecord`); free when metrics are off."""
    if _metrics is None:
        return
    try:
        _metrics["messages"].labels(record.action).inc()
        for symbol in record.symbols:
            _metrics["symbols"].labels(symbol).inc()
            if symbol.endswith(ERROR_SUFFIXES):
                _metrics["errors"].labels(symbol).inc()
        if record.elapsed_ms:
            _metrics["transaction"].observe(record.elapsed_ms / 1000.0)
        if eom_started is not None:
            _metrics["eom"].observe(time.monotonic() - eom_started)
        if not stored:
            _metrics["store_errors"].inc()
    except Exception:  # noqa: BLE001 - metrics must never cost a message
        log.exception("cannot update metrics")


def worker_restarted() -> None:
    """In the supervisor: a worker died and is being replaced."""
    if _metrics is not None:
        _metrics["restarts"].inc()


def after_fork_in_worker() -> None:
    """In a child just forked from the supervisor: close its copy of the metrics listening socket.

    Kept, every worker holds the port: a supervisor killed with SIGKILL leaves it
    bound until the workers have drained, and a restart cannot listen.  The
    server's thread did not survive the fork, only the descriptor did; the
    supervisor's own socket is another process's and goes on serving.  The socket
    object is detached before its descriptor is closed, so that collecting it later
    cannot close whatever file has been given the same number meanwhile.
    """
    global _listen_socket
    sock, _listen_socket = _listen_socket, None
    if sock is None:
        return
    try:
        os.close(sock.detach())
    except OSError:  # already closed: nothing held
        pass


def stop() -> None:
    """Remove the multiprocess directory milterd created itself."""
    if _directory:
        shutil.rmtree(_directory, ignore_errors=True)
