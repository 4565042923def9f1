"""Review 16 of the supervisor: a reload (SIGHUP) applies a new ``[milter] log_level``, and a NUL
in a user or group name of ``[milter]`` is refused with the file and the key.

On the old code (5071120):

* a changed ``log_level`` was only warned about on reload ("takes a restart"), the running level kept;
* a NUL in ``user`` or ``group`` ended ``milterd serve`` in a traceback (pwd/grp's ValueError
  "embedded null byte"), and a reload to such a file was refused with that ValueError.

No process is started: the reload's workers are not forked (the supervisor's hooks are replaced).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

import milterd
from milterd import cli
from milterd.cli import main
from milterd.config import ConfigError, load_config
from milterd.milter import supervisor
from milterd.services import build

BASE = '[dns]\nnameservers = ["127.0.0.1:9"]\n'
ACCOUNT_KEYS = ["user", "group", "socket_owner", "socket_group"]


def write_conf(tmp_path: Path, milter: str = "") -> Path:
    conf = tmp_path / "milter.conf"
    # user = "root": a reload's checks as the service account change no ids (the suite may run as root).
    conf.write_text(f'[milter]\nuser = "root"\nsocket = "inet:127.0.0.1:18999"\n{milter}\n'
                    f'[database]\nurl = "sqlite:///{tmp_path / "log.sqlite"}"\n[rules]\ndir = "{tmp_path / "rules"}"\n' + BASE)
    (tmp_path / "rules").mkdir(exist_ok=True)
    return conf


@pytest.fixture(autouse=True)
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(before)


# --- a NUL in a user or group name ------------------------------------------------------


@pytest.mark.parametrize("key", ACCOUNT_KEYS)
def test_fix_a_nul_in_a_user_or_group_name_is_refused_with_its_key(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write_conf(tmp_path).read_text().replace('user = "root"\n', "")
    path = tmp_path / "milter.conf"
    path.write_text(conf.replace("[milter]\n", f'[milter]\n{key} = "milterd\\u0000x"\n'))
    config = load_config(path)
    for euid in (0, 1000):  # refused whoever starts milterd
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        with pytest.raises(ConfigError) as caught:
            supervisor.service_account(config)
        assert caught.value.key == f"[milter] {key}" and caught.value.file == str(path)
        assert "NUL" in caught.value.reason and "\0" not in str(caught.value), caught.value


@pytest.mark.parametrize("key", ["user", "group"])
def test_fix_serve_says_which_key_holds_the_nul_not_a_traceback(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_conf(tmp_path, f'{key} = "a\\u0000b"')
    if key == "user":
        path.write_text(path.read_text().replace('user = "root"\n', ""))
    monkeypatch.setattr(supervisor, "setup_logging", lambda *args: None)  # the test's own logging stays
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root, where the old code asked pwd/grp
    assert main(["serve", "-c", str(path)]) == 2  # refused before any socket, store or worker
    err = capsys.readouterr().err
    assert err == f"milterd: {path}: [milter] {key}: contains a NUL character (\\0), which no {key} name can hold\n", err


def test_a_socket_owner_with_a_nul_is_refused_before_chown(tmp_path: Path) -> None:
    path = write_conf(tmp_path, 'socket_owner = "a\\u0000b"')
    with pytest.raises(ConfigError) as caught:
        supervisor._set_socket_owner(load_config(path), str(tmp_path / "none.sock"))
    assert caught.value.key == "[milter] socket_owner"


def test_fix_a_reload_to_a_nul_user_is_refused_naming_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_conf(tmp_path)
    config = load_config(path)
    services = build(config)
    sup = supervisor.Supervisor(str(path), config, services)
    path.write_text(path.read_text().replace('user = "root"', 'user = "a\\u0000b"'))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    try:
        with caplog.at_level(logging.INFO, logger="milterd"):
            sup._do_reload()
    finally:
        services.close()
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload refused")]
    assert refused == [f"reload refused, the running configuration stays: {path}: [milter] user: contains a NUL character (\\0), which no user name can hold"], refused
    assert sup.config is config


# --- [milter] log_level on reload -------------------------------------------------------


def reloaded(tmp_path: Path, new_level: str, monkeypatch: pytest.MonkeyPatch, replacement_starts: bool = True) -> tuple[supervisor.Supervisor, list[str]]:
    """A supervisor of a configuration at level info, with one worker, reloaded to *new_level*;
    and the supervisor's log lines.  The worker is not forked: *replacement_starts* says whether
    its replacement is ready (a pid) or died at start (None)."""
    path = write_conf(tmp_path, 'log_level = "info"')
    config = load_config(path)
    sup = supervisor.Supervisor(str(path), config, build(config))
    read_end, write_end = os.pipe()
    sup.workers = {999_999: write_end}  # an old worker, never forked
    levels: list[int] = []

    def spawn_ready() -> int | None:
        levels.append(logging.getLogger().level)  # what the new worker would inherit
        return 999_998 if replacement_starts else None

    monkeypatch.setattr(sup, "_spawn_ready", spawn_ready)
    monkeypatch.setattr(sup, "_stop_worker", lambda pid: sup.workers.pop(pid))
    path.write_text(path.read_text().replace('log_level = "info"', f'log_level = "{new_level}"'))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        sup._do_reload()
    finally:
        logging.getLogger().removeHandler(handler)
        sup.services.close()
        os.close(read_end)
        if write_end in sup.workers.values():
            os.close(write_end)
    assert levels == [logging.getLevelName(new_level.upper())]  # the new worker is forked at the new level
    return sup, [r.getMessage() for r in records]  # what passed the level in force when it was logged


@pytest.mark.parametrize("level", ["debug", "warning", "error"])
def test_fix_a_reload_applies_a_new_log_level_to_the_supervisor_and_its_new_workers(tmp_path: Path, level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sup, lines = reloaded(tmp_path, level, monkeypatch)
    assert sup.config.milter.log_level == level
    # The old code kept info, and warned "[milter] log_level changed; that takes a restart".
    assert logging.getLogger().level == logging.getLevelName(level.upper())
    assert not [line for line in lines if "takes a restart" in line], lines
    assert supervisor.warn_restart_only(load_config(write_conf(tmp_path)), sup.config) == []


def test_the_new_level_is_said_once_it_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sup, lines = reloaded(tmp_path, "debug", monkeypatch)
    assert "reload: [milter] log_level is now debug (was info)" in lines, lines
    assert "reload done" in lines


def test_a_quieter_level_is_still_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On 6eb61c3: info -> warning dropped its own "log_level is now warning" line (logged at info after the switch)."""
    _sup, lines = reloaded(tmp_path, "warning", monkeypatch)
    assert "reload: [milter] log_level is now warning (was info)" in lines, lines


def test_a_reload_that_goes_back_restores_the_running_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new workers could not start: the old configuration stays, its level too."""
    sup, _lines = reloaded(tmp_path, "debug", monkeypatch, replacement_starts=False)
    assert sup.config.milter.log_level == "info"
    assert logging.getLogger().level == logging.INFO


def test_a_refused_reload_keeps_the_running_level(tmp_path: Path) -> None:
    path = write_conf(tmp_path, 'log_level = "info"')
    config = load_config(path)
    services = build(config)
    sup = supervisor.Supervisor(str(path), config, services)
    path.write_text(path.read_text().replace('log_level = "info"', 'log_level = "debug"\nworkers = -1'))
    try:
        sup._do_reload()
    finally:
        services.close()
    assert logging.getLogger().level == logging.INFO and sup.config is config


def test_log_target_still_takes_a_restart(tmp_path: Path) -> None:
    running = load_config(write_conf(tmp_path))
    assert supervisor.warn_restart_only(running, running.with_changes({"milter.log_target": "syslog", "milter.log_level": "debug"})) == ["[milter] log_target"]


def test_set_level_is_what_setup_logging_sets() -> None:
    from milterd.logs import set_level  # here: the old code has none, and its other tests must run

    set_level("warning")
    assert logging.getLogger().level == logging.WARNING
    set_level("debug")
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming nobody (and back) needs root")
def test_a_store_behind_a_directory_the_account_cannot_enter_is_named_so(tmp_path: Path) -> None:
    """On 5071120: "user nobody cannot write /…/repo" (the directory that was fine), for a checkout under a 0700 directory (as /root is)."""
    import pwd
    import shutil
    import tempfile


    top = Path(tempfile.mkdtemp(prefix="milterd-closed-"))
    try:
        top.chmod(0o755)
        closed = top / "root"
        repo = closed / "repo"
        repo.mkdir(parents=True)
        closed.chmod(0o700)
        repo.chmod(0o777)
        config = load_config(write_conf(tmp_path)).with_changes({"database.url": f"sqlite:///{repo / 'milterd.sqlite'}"})
        nobody = pwd.getpwnam("nobody")
        os.seteuid(nobody.pw_uid)
        try:
            with pytest.raises(ConfigError) as caught:
                supervisor.check_writable(config)
        finally:
            os.seteuid(0)
        assert caught.value.key == "[database] url"
        assert caught.value.reason.endswith(f"cannot write {repo / 'milterd.sqlite'}: cannot enter {closed} (a directory the account may not search)")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_an_unknown_group_is_refused_with_user_root_and_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # user = "root" (or a start as another user) left [milter] group unread: a misspelt group started silently (review).
    config = load_config(write_conf(tmp_path, 'group = "nosuchgroup_xyz"'))
    for euid in (0, 1000):
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        with pytest.raises(ConfigError) as caught:
            supervisor.service_account(config)
        assert caught.value.key == "[milter] group" and "nosuchgroup_xyz" in caught.value.reason


def test_a_unix_socket_path_too_long_is_said_so(tmp_path: Path) -> None:
    # libmilter says only "cannot opensocket" (found by review): the reason is the path's length.
    from milterd.endpoints import parse_socket

    path = tmp_path / ("d" * 120) / "milterd.sock"
    why = supervisor._why_not(parse_socket(f"unix:{path}"))
    assert why == f"{path} is {len(str(path))} bytes long: a unix socket's path holds at most 107"
    assert supervisor._why_not(parse_socket(f"unix:{tmp_path / 'm.sock'}")) == ""


def test_the_stores_missing_directory_is_made_for_user_root_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With user = "nobody" serve made it; with user = "root" it refused the start, saying the missing directory
    # was "not a directory" (found by review).
    path = write_conf(tmp_path)
    path.write_text(path.read_text().replace(f'sqlite:///{tmp_path / "log.sqlite"}', f'sqlite:///{tmp_path / "new" / "dir" / "log.sqlite"}'))
    config = load_config(path)
    supervisor.hand_over_store(config)
    assert (tmp_path / "new" / "dir").is_dir()
    supervisor.check_writable(config)  # no ConfigError
    (tmp_path / "new" / "dir").rmdir()
    (tmp_path / "new").rmdir()
    monkeypatch.setattr(Path, "mkdir", lambda *args, **kwargs: None)  # a directory that cannot be made
    supervisor.hand_over_store(config)
    with pytest.raises(ConfigError) as caught:
        supervisor.check_writable(config)
    assert f"cannot enter {tmp_path / 'new'} (no such directory)" in caught.value.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a symlink to another account")
def test_root_makes_no_directory_through_another_accounts_symlink(tmp_path: Path) -> None:
    # user = "root": the store's missing directory was made through a symlink nobody had planted (found by review).
    import pwd  # the account database, only on the root-only path of this one test

    nobody = pwd.getpwnam("nobody")
    account, victim = tmp_path / "acct", tmp_path / "victim"
    account.mkdir()
    victim.mkdir()
    os.chown(account, nobody.pw_uid, nobody.pw_gid)
    (account / "store").symlink_to(victim)
    os.lchown(account / "store", nobody.pw_uid, nobody.pw_gid)
    path = write_conf(tmp_path)
    path.write_text(path.read_text().replace(f'sqlite:///{tmp_path / "log.sqlite"}', f'sqlite:///{account / "store" / "sub" / "x.sqlite"}'))
    supervisor.hand_over_store(load_config(path))
    assert not (victim / "sub").exists()


def test_milterd_serve_takes_sighup_over_before_its_heavy_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    # The handler was installed once serve ran: a SIGHUP during the imports before it (0.1-0.6 s) still ended
    # milterd (found by review).  cli.py installs it first for "milterd serve", nothing for other commands.
    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        monkeypatch.setattr("sys.argv", ["milterd", "log"])
        importlib.reload(cli)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        monkeypatch.setattr("sys.argv", ["milterd", "serve", "-c", "milter.conf"])
        importlib.reload(cli)
        assert signal.getsignal(signal.SIGHUP) is milterd.record_early_hup
        # The global -c before the command (review 28): only "serve" first was guarded.
        for argv in (["-c", "milter.conf", "serve"], ["--config", "serve", "log"], ["--config=x.conf", "serve"], ["--conf", "x.conf", "serve"]):
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            monkeypatch.setattr("sys.argv", ["milterd", *argv])
            importlib.reload(cli)
            expected = signal.SIG_DFL if argv[2:3] == ["log"] else milterd.record_early_hup
            assert signal.getsignal(signal.SIGHUP) is expected, argv
    finally:
        signal.signal(signal.SIGHUP, before)
        monkeypatch.undo()
        importlib.reload(cli)
