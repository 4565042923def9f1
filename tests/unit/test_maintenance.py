"""The housekeeping jobs: one explicit list, nothing registered by importing a module."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from milterd import greylist, maintenance, quarantine
from milterd.checks import bayes
from milterd.config import Config


def test_jobs_are_listed_in_one_place() -> None:
    assert [job.name for job in maintenance.JOBS] == ["greylist-purge", "quarantine-retention", "learner-expiry", "log-retention"]
    assert [job.run for job in maintenance.JOBS][:3] == [greylist.purge_job, quarantine.retention_job, bayes.expiry_job]
    assert not hasattr(maintenance, "register"), "jobs must not register themselves as an import side effect"


def test_intervals_follow_the_configuration() -> None:
    services: Any = SimpleNamespace(config=Config())
    intervals = {job.name: job.interval(services) for job in maintenance.JOBS}
    assert intervals == {"greylist-purge": 0, "quarantine-retention": 3600, "learner-expiry": 86400, "log-retention": 3600}  # greylisting is off by default
    services.config = Config.model_validate({"greylist": {"enabled": True, "purge_interval": 600}, "quarantine": {"retention": 0}, "learner": {"enabled": False},
                                             "database": {"log_retention": 0}})
    assert {job.name: job.interval(services) for job in maintenance.JOBS} == {"greylist-purge": 600, "quarantine-retention": 0, "learner-expiry": 0, "log-retention": 0}


def test_due_and_a_failing_job_does_not_stop_the_others() -> None:
    ran: list[str] = []

    def fail(_services: Any) -> str:
        raise RuntimeError("boom")

    jobs = [maintenance.Job("a", lambda s: 60, fail), maintenance.Job("b", lambda s: 60, lambda s: ran.append("b") or "done"), maintenance.Job("off", lambda s: 0, fail)]
    services: Any = SimpleNamespace()
    ready = maintenance.due(jobs, services, {"b": 100.0}, now=130.0)
    assert [job.name for job in ready] == ["a"]
    maintenance.run_jobs(maintenance.due(jobs, services, {}, now=130.0), services)
    assert ran == ["b"]
