"""The maintenance child: scheduled by the monotonic clock (a wall clock set back by NTP stopped every job until it
caught up, months later), ended by SIGTERM (it kept the supervisor's handler, which only set a flag), and ended by
the supervisor's shutdown (it went on as an orphan, beside a restarted milterd's own).  The fork is faked."""

from __future__ import annotations

import signal
from types import SimpleNamespace
from typing import Any

import pytest

from milterd import maintenance
from milterd.config import Config
from milterd.maintenance import Job
from milterd.milter import supervisor

FAKE_PID = 999_999_999


class Exited(BaseException):
    """What the faked os._exit raises in the child's path."""


def boss() -> supervisor.Supervisor:
    services: Any = SimpleNamespace(config=Config(), after_fork=lambda: None, close=lambda: None)
    return supervisor.Supervisor(None, Config(), services)


def test_fix_a_job_never_run_is_due_at_once() -> None:
    job = Job("hourly", lambda s: 3600, lambda s: "")
    # The monotonic clock may read less than an interval after boot: "never run" is not "run at 0".
    assert maintenance.due([job], SimpleNamespace(), {}, now=5.0) == [job]  # type: ignore[arg-type]
    assert maintenance.due([job], SimpleNamespace(), {"hourly": 5.0}, now=3604.0) == []  # type: ignore[arg-type]


def test_fix_jobs_run_each_interval_whatever_the_wall_clock_does(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[float] = []
    clock = {"monotonic": 1000.0, "wall": 2_000_000_000.0}
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock["monotonic"])
    monkeypatch.setattr(supervisor.time, "time", lambda: clock["wall"])
    monkeypatch.setattr(supervisor.os, "fork", lambda: started.append(clock["monotonic"]) or FAKE_PID)
    sup, jobs, last_run = boss(), [Job("hourly", lambda s: 3600, lambda s: "")], {}  # type: ignore[var-annotated]
    sup._maintain(jobs, last_run)
    clock["wall"] -= 365 * 86400  # NTP steps back a clock that started a year ahead
    for _ in range(3):
        clock["monotonic"] += 3600
        clock["wall"] += 3600
        sup._maintain(jobs, last_run)  # the last child is gone (no such pid): a new one may start
    assert started == [1000.0, 4600.0, 8200.0, 11800.0]


def test_fix_the_child_ends_on_sigterm_and_ignores_sighup(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def run(jobs: list[Job], services: Any) -> None:
        seen.update({sig.name: signal.getsignal(sig) for sig in saved})

    def exit_(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(supervisor.os, "fork", lambda: 0)
    monkeypatch.setattr(supervisor.os, "_exit", exit_)
    monkeypatch.setattr(supervisor.maintenance, "run_jobs", run)
    monkeypatch.setattr(supervisor, "name_process", lambda name: None)
    sup = boss()
    signal.signal(signal.SIGTERM, lambda *a: None)  # what the supervisor's own handlers do: set a flag
    try:
        with pytest.raises(Exited):
            sup._maintain([Job("hourly", lambda s: 3600, lambda s: "")], {})
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert seen == {"SIGTERM": signal.SIG_DFL, "SIGINT": signal.SIG_DFL, "SIGHUP": signal.SIG_IGN}


def test_fix_shutdown_ends_the_maintenance_child(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(supervisor.os, "kill", lambda pid, sig: calls.append(("kill", pid, sig)))
    monkeypatch.setattr(supervisor.os, "waitpid", lambda pid, flags: calls.append(("wait", pid, flags)) or (pid, 0))
    monkeypatch.setattr(supervisor.metrics, "stop", lambda: None)
    sup = boss()
    sup.maintainer = FAKE_PID
    sup._shutdown()
    assert calls == [("kill", FAKE_PID, signal.SIGTERM), ("wait", FAKE_PID, 0)]
    assert sup.maintainer == 0


def test_fix_a_hung_maintenance_process_is_killed(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    killed: list[tuple[int, int]] = []
    clock = [1000.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(supervisor.os, "waitpid", lambda pid, flags: (0, 0))  # still running
    monkeypatch.setattr(supervisor.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    sup = boss()
    sup.maintainer, sup.maintainer_started = FAKE_PID, clock[0]
    clock[0] += supervisor.MAINTENANCE_TIMEOUT  # not yet
    sup._maintain([], {})
    assert killed == []
    clock[0] += 61
    sup._maintain([], {})  # every later run waited behind it, silently
    assert killed == [(FAKE_PID, signal.SIGKILL)]
    assert f"maintenance process {FAKE_PID} still running after 3600s: killed; its jobs run again when next due" in caplog.text


def test_fix_a_failed_maintenance_process_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervisor.os, "waitpid", lambda pid, flags: (pid, 9))  # killed by SIGKILL (the OOM killer)
    monkeypatch.setattr(supervisor.os, "fork", lambda: FAKE_PID + 1)
    sup = boss()
    sup.maintainer = FAKE_PID
    sup._maintain([], {})
    assert sup.maintainer == 0
    assert f"maintenance process {FAKE_PID} was killed by signal 9 (SIGKILL)" in caplog.text
