"""Review 15 of the supervisor: a NUL in a path of milter.conf is refused at start with its key
(not a traceback), and a reload names every changed key that only a restart applies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config
from milterd.milter import supervisor

BASE = '[dns]\nnameservers = ["127.0.0.1:9"]\n'

NUL_VALUES = [
    ("[milter] spool_dir", '[milter]\nspool_dir = "/tmp/a\\u0000b"\n'),
    ("[milter] socket", '[milter]\nsocket = "unix:/tmp/a\\u0000b.sock"\n'),
    ("[database] url", '[database]\nurl = "sqlite:////tmp/a\\u0000b.sqlite"\n'),
]


def _write(tmp_path: Path, text: str) -> Path:
    conf = tmp_path / "milter.conf"
    conf.write_text(text + BASE)
    return conf


@pytest.mark.parametrize(("key", "text"), NUL_VALUES)
def test_a_nul_in_a_path_is_refused_by_load_config_with_its_key(tmp_path: Path, key: str, text: str) -> None:
    conf = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(conf)
    assert caught.value.key == key
    assert "NUL" in caught.value.reason
    assert "\0" not in str(caught.value)


def test_a_reload_names_each_changed_key_only_a_restart_applies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    running = load_config(_write(tmp_path, ""))
    changes = {
        "milter.socket": "inet:127.0.0.1:18999",
        "milter.socket_mode": "0600",
        "milter.socket_owner": "nobody",
        "milter.socket_group": "nogroup",
        "milter.user": "nobody",
        "milter.group": "nogroup",
        "milter.log_target": "syslog",
        "metrics.listen": "127.0.0.1:9899",
        "actions.reject": 20,  # applied by a reload: no warning
    }
    with caplog.at_level(logging.WARNING, logger="milterd"):
        changed = supervisor.warn_restart_only(running, running.with_changes(changes))
    assert changed == [f"[{section}] {key}" for section, key in supervisor.RESTART_ONLY]
    assert len(changed) == len(changes) - 1
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        f"reload: [{section}] {key} changed; that takes a restart, keeping {getattr(getattr(running, section), key) or chr(34) * 2}"
        for section, key in supervisor.RESTART_ONLY
    ], warned


def test_a_reload_that_changes_no_such_key_warns_of_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    running = load_config(_write(tmp_path, ""))
    with caplog.at_level(logging.WARNING, logger="milterd"):
        assert supervisor.warn_restart_only(running, running.with_changes({"actions.reject": 20})) == []
    assert not caplog.records
