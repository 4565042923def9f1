"""`milterd quarantine` from a review (thirty-first session): `list --json` wrote NaN/Infinity (no JSON), a
stored `--by` reached another administrator's terminal raw in "already released by …", and `confirm`
exited 0 when spamd had not learned the message (`release --ham` says so with status 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milterd.cli import main
from tests.harness.milterd import write_config
from tests.harness.quarantine import open_quarantine
from tests.unit.test_quarantine_lifecycle_review import stub_send
from tests.unit.test_quarantine_review29 import delivered
from tests.unit.test_quarantine_store import add


def config(tmp_path: Path, spamd: bool = False) -> Path:
    return write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": "127.0.0.1:9", "report_from": "postmaster@mx.test"},
        "spamd": {"enabled": spamd, "address": "tcp:127.0.0.1:9", "timeout": 2.0},  # a closed port: spamd is down
    })


def test_list_json_is_json_whatever_an_older_version_stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path)
    add(open_quarantine(conf), symbols={"OLD_NAN": float("nan"), "OLD_INF": float("inf")})
    assert main(["-c", str(conf), "quarantine", "list", "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(token: str) -> None:
        raise ValueError(token)

    [row] = json.loads(out, parse_constant=refuse)
    assert row["symbols"] == {"OLD_NAN": None, "OLD_INF": None}


def test_a_stored_release_by_is_escaped_for_the_next_administrator(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf = config(tmp_path)
    row_id = add(open_quarantine(conf))
    stub_send(monkeypatch, delivered)
    assert main(["-c", str(conf), "quarantine", "release", "--by", "eve\x1b]0;owned\x07\x1b[2J", str(row_id)]) == 0
    capsys.readouterr()
    assert main(["-c", str(conf), "quarantine", "release", str(row_id)]) == 1
    err = capsys.readouterr().err
    assert "already released" in err and "\x1b" not in err and "\x07" not in err
    assert "eve\\x1b]0;owned\\x07" in err


def test_confirm_says_when_spamd_did_not_learn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path, spamd=True)
    row_id = add(open_quarantine(conf))
    assert main(["-c", str(conf), "quarantine", "confirm", str(row_id)]) == 1
    out, err = capsys.readouterr()
    assert "classifier" in out and "spamd could not learn it as spam" in err
