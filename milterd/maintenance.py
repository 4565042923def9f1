"""Periodic housekeeping (greylist expiry, quarantine and log retention, …).

The jobs are listed in :data:`JOBS`, here and nowhere else; the supervisor
runs the due ones every minute in a short-lived child process of its own, so
that housekeeping never blocks a worker that is handling mail and the
supervisor holds no database connection.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from . import greylist, quarantine
from .checks import bayes
from .clock import utcnow

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger("milterd")


@dataclass(frozen=True)
class Job:
    """A housekeeping task: its name, how often (seconds; 0 = never) and what it does."""

    name: str
    interval: Callable[["Services"], float]
    run: Callable[["Services"], str]


def _greylist_interval(services: "Services") -> float:
    return services.config.greylist.purge_interval if services.config.greylist.enabled else 0


def _quarantine_interval(services: "Services") -> float:
    return 3600 if services.config.quarantine.retention else 0


def _log_interval(services: "Services") -> float:
    return 3600 if services.config.database.log_retention else 0


def _log_retention(services: "Services") -> str:
    """Delete the message log rows older than ``[database] log_retention``."""
    older_than = utcnow() - dt.timedelta(seconds=services.config.database.log_retention)
    count = services.store.purge_log(older_than)
    return f"deleted {count} log row{'s' if count != 1 else ''}" if count else ""


def _learner_interval(services: "Services") -> float:
    return services.config.learner.expiry_interval if services.config.learner.enabled else 0


#: Every housekeeping job the supervisor runs.
JOBS: tuple[Job, ...] = (
    Job("greylist-purge", _greylist_interval, greylist.purge_job),
    Job("quarantine-retention", _quarantine_interval, quarantine.retention_job),
    Job("learner-expiry", _learner_interval, bayes.expiry_job),
    Job("log-retention", _log_interval, _log_retention),
)


def due(jobs: list[Job], services: "Services", last_run: dict[str, float], now: float) -> list[Job]:
    """The jobs never run (not in *last_run*) or whose interval has passed since they last ran (*now*: the same clock)."""
    ready = []
    for job in jobs:
        interval = job.interval(services)
        last = last_run.get(job.name)
        if interval > 0 and (last is None or now - last >= interval):
            ready.append(job)
    return ready


def run_jobs(jobs: list[Job], services: "Services") -> None:
    """Run *jobs* one after the other; one failing job does not stop the others."""
    for job in jobs:
        try:
            result = job.run(services)
            if result:
                log.info("maintenance %s: %s", job.name, result)
        except Exception:  # noqa: BLE001
            log.exception("maintenance %s failed", job.name)
