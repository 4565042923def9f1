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
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

from . import dns
from .endpoints import parse_listen

log = logging.getLogger("milterd")

#: Set in the supervisor before the workers fork; None: metrics off.
_metrics: dict[str, Any] | None = None
_directory: str | None = None

ERROR_SUFFIXES = ("_ERROR", "_TEMPFAIL", "_TEMPERROR")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def start(listen: str) -> tuple[str, int] | None:
    """In the supervisor, before forking: prepare the multiprocess directory and serve *listen*.

    Returns the address served (the port may have been 0), or None when *listen* is empty.
    """
    global _metrics, _directory
    if not listen:
        return None
    host, port = parse_listen(listen)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # counts of a previous run must not add up
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
    else:
        directory = _directory = tempfile.mkdtemp(prefix="milterd-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
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
    _count_dns_cache()
    address = server.server_address[:2]
    log.info("metrics on http://%s:%d/metrics", address[0], address[1])
    return str(address[0]), int(address[1])


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


def stop() -> None:
    """Remove the multiprocess directory milterd created itself."""
    if _directory:
        shutil.rmtree(_directory, ignore_errors=True)
