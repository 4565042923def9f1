"""Review of the SIGHUP reload (milterd/milter/supervisor.py) and of the files a check reads when
the configuration is built (DKIM keys, the ARC seal key, the sender login map): any failure of a
new configuration is a refused reload, never the supervisor's end; a FIFO in a key's place is
refused, not waited on; a file the service account cannot read is said at start and at reload."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from milterd import dkimsign, maintenance
from milterd.checks.headers import Headers
from milterd.cli import main
from milterd.commands import doctor
from milterd.config import ConfigError, load_config
from milterd.milter import supervisor
from milterd.services import Services, build
from milterd.store import Store
from tests.harness.milterd import NO_RESOLVER, write_config


def _conf(root: Path, user: str = "root", **sections: dict[str, Any]) -> Path:
    """A milter.conf in *root* with a SQLite store there, the dead loopback resolver and *sections*."""
    base: dict[str, dict[str, Any]] = {
        "milter": {"user": user, "local_domains": ["example.org"]},
        "database": {"url": f"sqlite:///{root / 'milterd.sqlite'}"},
        "dns": {"nameservers": [NO_RESOLVER], "timeout": 0.3},
        "rules": {"dir": ""},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    path = write_config(root / "milter.conf", base)
    path.write_text(path.read_text().replace("\0", "\\u0000"))  # as an administrator writes a NUL in TOML
    return path


def _supervisor(conf: Path) -> supervisor.Supervisor:
    config = load_config(conf)
    return supervisor.Supervisor(str(conf), config, build(config))


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload refused")]


# --- 1. any failure of the new configuration refuses the reload -------------------------------


def test_a_nul_in_sender_login_maps_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """It raised ValueError (embedded null byte) out of build(): a traceback at start."""
    conf = _conf(tmp_path, checks={"local_domains": {"sender_login_maps": "\0"}})
    with pytest.raises(ConfigError) as raised:
        build(load_config(conf))
    assert raised.value.key == "[checks.local_domains] sender_login_maps"
    assert raised.value.file == str(conf) and "embedded null byte" in raised.value.reason


def test_reload_to_a_nul_in_sender_login_maps_is_refused_and_the_old_one_stays(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = _conf(tmp_path)
    running = _supervisor(conf)
    old = running.services
    _conf(tmp_path, checks={"local_domains": {"sender_login_maps": "\0"}})
    with caplog.at_level(logging.INFO, logger="milterd"):
        running._do_reload()
    assert running.services is old and running.workers == {}
    refusals = _refusals(caplog)
    assert len(refusals) == 1 and "[checks.local_domains] sender_login_maps" in refusals[0] and str(conf) in refusals[0]


def test_reload_refuses_an_unexpected_exception_of_a_check_setup(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only ConfigError and StoreError: whatever building the new services raises ends in
    a refusal with its reason, and the supervisor keeps its configuration (no fork is tried)."""
    conf = _conf(tmp_path)
    running = _supervisor(conf)
    old, old_config = running.services, running.config

    def broken(config: Any) -> Services:
        raise KeyError("a check's setup went wrong")

    monkeypatch.setattr(supervisor, "build", broken)
    with caplog.at_level(logging.INFO, logger="milterd"):
        running._do_reload()
    assert running.services is old and running.config is old_config
    assert _refusals(caplog) == ["reload refused, the running configuration stays: KeyError: \"a check's setup went wrong\""]


# --- 4. a FIFO in a key's place is refused at once ------------------------------------------------


def _returns_or_raises(call: Callable[[], Any], fifo: Path) -> BaseException | None:
    """What *call* raised (None: it returned), failing if it still blocks after 5 s (then the
    FIFO is opened for writing, so that the blocked reader ends)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"reading {fifo} blocked")
    return outcome[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "key.fifo"
    os.mkfifo(path)
    return path


def test_a_fifo_as_dkim_key_file_is_refused_with_key_and_reason(tmp_path: Path, fifo: Path) -> None:
    conf = _conf(tmp_path, dkim_signing={"enabled": True, "keys": [{"domain": "example.org", "selector": "s", "key_file": fifo.name}]})
    error = _returns_or_raises(lambda: build(load_config(conf)), fifo)
    assert isinstance(error, ConfigError), error
    assert error.key == "[dkim_signing] keys[0].key_file" and error.reason == f"cannot read {fifo}: not a regular file"


def test_a_fifo_as_arc_seal_key_file_is_refused_with_key_and_reason(tmp_path: Path, fifo: Path) -> None:
    arc = {"enabled": True, "seal": True, "seal_domain": "example.org", "seal_selector": "s", "seal_key_file": fifo.name}
    error = _returns_or_raises(lambda: build(load_config(_conf(tmp_path, checks={"arc": arc}))), fifo)
    assert isinstance(error, ConfigError), error
    assert error.key == "[checks.arc] seal_key_file" and error.reason == f"cannot read {fifo}: not a regular file"


def test_a_fifo_as_sender_login_maps_is_refused_with_key_and_reason(tmp_path: Path, fifo: Path) -> None:
    conf = _conf(tmp_path, checks={"local_domains": {"sender_login_maps": fifo.name}})
    error = _returns_or_raises(lambda: build(load_config(conf)), fifo)
    assert isinstance(error, ConfigError), error
    assert error.key == "[checks.local_domains] sender_login_maps" and error.reason == f"cannot read {fifo}: not a regular file"


def test_key_files_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    """A device and a directory in a key's place (/dev/zero would be read until memory runs out)."""
    conf = _conf(tmp_path, dkim_signing={"enabled": True, "keys": [
        {"domain": "example.org", "selector": "s", "key_file": "/dev/null"},
    ]})
    with pytest.raises(ConfigError) as raised:
        build(load_config(conf))
    assert raised.value.reason == "cannot read /dev/null: not a regular file"
    with pytest.raises(ConfigError) as raised:
        build(load_config(_conf(tmp_path, checks={"local_domains": {"sender_login_maps": "."}})))
    assert raised.value.key == "[checks.local_domains] sender_login_maps" and "Is a directory" in raised.value.reason


def test_a_good_key_and_login_map_still_load(tmp_path: Path) -> None:
    key = tmp_path / "example.org.s.key"
    dkimsign.write_private(key, dkimsign.generate("ed25519"))
    (tmp_path / "logins").write_text("alice@example.org alice\n")
    conf = _conf(tmp_path, dkim_signing={"enabled": True, "keys": [{"domain": "example.org", "selector": "s", "key_file": key.name}]},
                 checks={"local_domains": {"sender_login_maps": "logins"}})
    services = build(load_config(conf))
    names = {check.name: check for check in services.checks}
    assert names["sender_login"].table == {"alice@example.org": {"alice"}}  # type: ignore[attr-defined]
    assert [k.selector for k in names["dkim_sign"].keys] == ["s"]  # type: ignore[attr-defined]


# --- 3. a file that the service account cannot read at a reload -----------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="milterd-reload-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as [milter] user")


@needs_root
def test_a_root_only_key_is_named_for_the_service_account(open_dir: Path) -> None:
    """milterd dkim keygen, run as root, writes a key of mode 0600: serve reads it as root, a
    reload as [milter] user, which cannot; the key, the file and the way out are named."""
    key = open_dir / "example.org.s.key"
    dkimsign.write_private(key, dkimsign.generate("ed25519"))
    (open_dir / "logins").write_text("alice@example.org alice\n")
    os.chmod(open_dir / "logins", 0o644)
    conf = _conf(open_dir, user="nobody", dkim_signing={"enabled": True, "keys": [{"domain": "example.org", "selector": "s", "key_file": key.name}]},
                 checks={"local_domains": {"sender_login_maps": "logins"}})
    os.chmod(conf, 0o644)
    config = load_config(conf)
    blockers = supervisor.reload_blockers(config)
    assert os.geteuid() == 0 and os.getegid() == 0  # root's ids came back
    assert [(b.file, b.key) for b in blockers] == [(str(conf), "[dkim_signing] keys[0].key_file")]
    assert blockers[0].reason.startswith(f"user nobody cannot read {key}, which a reload (SIGHUP) reads again")
    assert f"chmod g+r {key}" in blockers[0].reason
    findings = doctor.reload_findings(str(conf))
    assert [(f.status, f.detail) for f in findings] == [("warn", str(blockers[0]))]
    os.chmod(key, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    assert supervisor.reload_blockers(config) == [] and doctor.reload_findings(str(conf)) == []


@needs_root
def test_a_reload_that_cannot_read_a_key_says_why(open_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor after the drop (seen here as: not root, the account being root's own check)."""
    key = open_dir / "example.org.s.key"
    dkimsign.write_private(key, dkimsign.generate("ed25519"))
    conf = _conf(open_dir, user="root")
    running = _supervisor(conf)
    _conf(open_dir, user="nobody", dkim_signing={"enabled": True, "keys": [{"domain": "example.org", "selector": "s", "key_file": key.name}]})
    os.chmod(conf, 0o644)
    old = running.services
    with caplog.at_level(logging.INFO, logger="milterd"):
        running._do_reload()
    assert running.services is old
    refusals = _refusals(caplog)
    assert len(refusals) == 1 and f"[dkim_signing] keys[0].key_file: user nobody cannot read {key}" in refusals[0], refusals


def test_a_check_whose_setup_raises_is_refused_as_a_configuration_error_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """serve and check turn only ConfigError into a clean refusal: any other failure of a check's setup is one now."""
    def broken(self: Headers, services: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Headers, "__init__", broken)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    assert main(["-c", str(conf), "rules", "lint"]) == 2
    err = capsys.readouterr().err
    assert "check headers: cannot be set up: RuntimeError: boom" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="asks as another account (nobody), which needs root")
def test_a_config_in_a_directory_the_account_cannot_enter_is_named_not_a_traceback(tmp_path: Path) -> None:
    """pytest's directories are root's, 0700: as nobody, even asking whether milter.conf is a directory failed
    (PermissionError out of doctor); the file is named as one a reload cannot read."""
    tmp_path.chmod(0o700)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[milter]\nuser = "nobody"\n[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    problems = supervisor.reload_blockers(load_config(conf))
    assert os.geteuid() == 0
    assert [str(p) for p in problems][:1] == [f"{conf}: user nobody cannot read {conf}, which a reload (SIGHUP) reads again as that user: "
                                              f"make it readable by it (chgrp nogroup {conf}; chmod g+r {conf}), or restart milterd instead of reloading"]


# --- the supervisor when the system refuses a fork, and a reload without -c ------------------------


def test_a_refused_fork_is_retried_later_not_the_supervisor_s_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Was: OSError (EMFILE: idle metrics connections had used every descriptor) out of os.pipe() in the main loop:
    the supervisor died of it, and every worker with it."""
    boss = _supervisor(_conf(tmp_path))

    def no_descriptor() -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(supervisor.os, "pipe", no_descriptor)
    with caplog.at_level(logging.ERROR):
        boss._reap_and_replace()
    assert boss.workers == {} and boss._not_before > 0
    assert "cannot start a worker: Too many open files; trying again in 5s" in caplog.text


def test_a_refused_fork_leaves_no_pipe_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boss = _supervisor(_conf(tmp_path))

    def no_process() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(supervisor.os, "fork", no_process)
    before = len(os.listdir("/proc/self/fd"))
    boss._reap_and_replace()
    assert boss._spawn_ready() is None
    assert len(os.listdir("/proc/self/fd")) == before and boss.workers == {}


def test_a_reload_without_c_reads_the_file_it_started_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Was: started without -c, a reload searched again: with milter.conf moved away it took the embedded defaults
    ("new configuration accepted": another store, the system's resolver, no thresholds of the site)."""
    conf = _conf(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.path == conf.resolve()
    boss = supervisor.Supervisor(None, config, build(config))
    conf.rename(tmp_path / "moved.conf")
    with caplog.at_level(logging.ERROR):
        boss._do_reload()
    assert boss.config is config
    assert "reload refused, the running configuration stays" in caplog.text and "milter.conf" in caplog.text


def test_metrics_that_cannot_be_imported_refuse_the_start_with_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: ModuleNotFoundError out of serve (the interpreter unreadable to [milter] user), the socket left behind."""
    conf = _conf(tmp_path, milter={"socket": f"unix:{tmp_path / 'milter.sock'}"}, metrics={"listen": "127.0.0.1:9899"})
    boss = _supervisor(conf)

    def unreadable(listen: str) -> None:
        raise ModuleNotFoundError("No module named 'gzip'")

    monkeypatch.setattr(supervisor.metrics, "start", unreadable)
    # run() sets the daemon's umask and signal handlers: this process's are put back after it.
    umask = os.umask(0o022)
    os.umask(umask)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with pytest.raises(ConfigError) as refused:
            boss.run()
    finally:
        os.umask(umask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert refused.value.key == "[metrics] listen" and "No module named 'gzip'" in refused.value.reason
    assert not (tmp_path / "milter.sock").exists()


def _no_process() -> int:
    raise OSError(11, "Resource temporarily unavailable")


def test_a_refused_maintenance_fork_is_tried_at_a_later_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Was: BlockingIOError out of the main loop (the jobs are due at start): the supervisor died, the workers with it."""
    boss = _supervisor(_conf(tmp_path))
    monkeypatch.setattr(supervisor.os, "fork", _no_process)
    last_run: dict[str, float] = {}
    with caplog.at_level(logging.ERROR):
        boss._maintain(list(maintenance.JOBS), last_run)
    assert last_run == {} and boss.maintainer == 0  # still due
    assert "cannot start the maintenance jobs" in caplog.text and "tried again later" in caplog.text


def test_a_reload_whose_fallback_fork_is_refused_keeps_the_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A reload whose second new worker did not start puts workers of the old configuration back: that fork, refused
    too, ended the supervisor (found in review). Now the main loop starts them once it can."""
    boss = _supervisor(_conf(tmp_path, milter={"workers": 3}))
    for pid in (900001, 900002, 900003):
        read_end, write_end = os.pipe()
        os.close(read_end)
        boss.workers[pid] = write_end
    new_workers = [900011, 900012]

    def ready() -> int | None:
        if not new_workers:
            return None
        pid = new_workers.pop(0)
        read_end, boss.workers[pid] = os.pipe()
        os.close(read_end)
        return pid

    monkeypatch.setattr(boss, "_spawn_ready", ready)
    monkeypatch.setattr(boss, "_stop_worker", lambda pid: boss._signal_stop(pid))
    monkeypatch.setattr(supervisor.os, "fork", _no_process)
    with caplog.at_level(logging.ERROR):
        boss._do_reload()
    assert "reload refused, the running configuration stays" in caplog.text
    assert "cannot start a worker: Resource temporarily unavailable" in caplog.text and boss._not_before > 0
    # No worker of the refused configuration serves on (the second one did, its stop skipped: found in review).
    assert [pid for pid, fd in boss.workers.items() if fd >= 0] == [900003]
    for fd in boss.workers.values():
        if fd >= 0:
            os.close(fd)


def test_fix_a_reload_to_a_spool_dir_that_cannot_be_written_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = _conf(tmp_path)
    running = _supervisor(conf)
    old = running.services
    _conf(tmp_path, milter={"spool_dir": str(tmp_path / "no-such-dir")})
    # A start refuses it; a reload accepted it, and every message past spool_memory was then answered 451.
    with caplog.at_level(logging.INFO, logger="milterd"):
        running._do_reload()
    assert running.services is old and running.workers == {}
    refusals = _refusals(caplog)
    assert len(refusals) == 1 and "[milter] spool_dir" in refusals[0] and "no-such-dir" in refusals[0]


def test_a_reload_to_a_sqlite_store_in_a_directory_not_made_yet_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = _conf(tmp_path)
    running = _supervisor(conf)
    _conf(tmp_path, database={"url": f"sqlite:///{tmp_path / 'store' / 'milterd.sqlite'}"})
    # The spool check of the reload (above) checked the store too, and refused a directory the store makes itself.
    with caplog.at_level(logging.INFO, logger="milterd"):
        running._do_reload()
    assert _refusals(caplog) == [] and (tmp_path / "store").is_dir()


@needs_root
def test_fix_the_reload_s_store_check_refuses_a_read_only_store_and_takes_one_the_account_can_make(open_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    readonly = open_dir / "ro.sqlite"
    conf = _conf(open_dir, user="nobody", database={"url": f"sqlite:///{readonly}"})
    os.chmod(conf, 0o644)
    config = load_config(conf)
    store = Store(config.database)
    store.upgrade()  # current: the reload's schema check only reads it
    store.close()
    for made in open_dir.glob("ro.sqlite*"):
        os.chmod(made, 0o644)  # root's: nobody may read them only
    with supervisor._as_service_account(config), pytest.raises(ConfigError, match=r"\[database\] url: user nobody cannot write"):
        supervisor.check_writable(config)
    running = _supervisor(_conf(open_dir, user="nobody"))
    old = running.services
    _conf(open_dir, user="nobody", database={"url": f"sqlite:///{readonly}"})
    # Checked as the spool only, the reload took it, and every write of the workers then failed (451).
    with supervisor._as_service_account(config), caplog.at_level(logging.INFO, logger="milterd"):
        running._do_reload()
    assert running.services is old and any("[database] url: user nobody cannot write" in r for r in _refusals(caplog)), _refusals(caplog)
    shared = open_dir / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    config = load_config(_conf(open_dir, user="nobody", database={"url": f"sqlite:///{shared / 'new' / 'store.sqlite'}"}))
    with supervisor._as_service_account(config):
        supervisor.check_writable(config, makeable=True)  # a reload's: a directory the account can make, the store makes
