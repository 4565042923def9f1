"""``milterd learn`` stops when the store fails message after message, instead of trying every one.

A store gone mid-run (a remote PostgreSQL restarted, a disk full) failed each remaining
message on its own, each after its own connection timeout: hours for a large Maildir.
"""

from __future__ import annotations

import json
import mailbox
from pathlib import Path
from typing import Any

import pytest

from milterd.cli import main
from milterd.commands import learn as learn_command
from milterd.store import StoreError
from milterd.store.learner import LearnerStore


def _setup(tmp_path: Path, count: int) -> tuple[Path, Path]:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = ""\n')
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    for n in range(count):
        box.add(f"From: a@example.org\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n".encode())
    return conf, tmp_path / "Maildir"


def test_a_store_that_fails_every_message_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    conf, maildir = _setup(tmp_path, 40)
    calls: list[str] = []

    def down(self: LearnerStore, digest: str, tokens: object, label: object) -> str:
        calls.append(digest)
        raise StoreError("cannot learn: OperationalError: connection refused")

    monkeypatch.setattr(LearnerStore, "learn", down)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--spam", str(maildir)]) == 1
    err = capsys.readouterr().err
    assert len(calls) == learn_command.MAX_FAILURES_IN_A_ROW
    assert "10 messages in a row could not be stored, stopping after 10 (0 changed the model): cannot learn: OperationalError: connection refused" in err


def test_failures_now_and_then_do_not_stop_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    conf, maildir = _setup(tmp_path, 40)
    real = LearnerStore.learn
    seen: list[str] = []

    def flaky(self: LearnerStore, digest: str, tokens: list[int], label: object) -> str:
        seen.append(digest)
        if len(seen) % 3 == 0:
            raise StoreError("cannot learn: OperationalError: database is locked")
        return real(self, digest, tokens, label)  # type: ignore[arg-type]

    monkeypatch.setattr(LearnerStore, "learn", flaky)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--json", "--spam", str(maildir)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["messages"] == 40 and summary["failed"] == 13 and summary["learned"] == 27
    assert summary["model"] == {"spam": 27, "ham": 0}


@pytest.mark.parametrize("totals_fail", [False, True])
def test_a_stopped_run_still_prints_its_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, totals_fail: bool) -> None:
    """`--json` promises one object: a run the store stopped (or whose totals could not be read) printed nothing."""
    conf, maildir = _setup(tmp_path, 40)
    real = LearnerStore.learn
    seen: list[str] = []

    def failing_from_the_sixth(self: LearnerStore, digest: str, tokens: Any, label: Any) -> str:
        seen.append(digest)
        if len(seen) > 5:
            raise StoreError("cannot learn: OperationalError: connection refused")
        return real(self, digest, tokens, label)

    def totals_down(self: LearnerStore) -> Any:
        raise StoreError("cannot read the model: OperationalError: connection refused")

    monkeypatch.setattr(LearnerStore, "learn", failing_from_the_sixth)
    if totals_fail:
        monkeypatch.setattr(LearnerStore, "totals", totals_down)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--json", "--spam", str(maildir)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["messages"] == 15 and summary["learned"] == 5 and summary["failed"] == 10
    assert "10 messages in a row could not be stored" in summary["stopped"]
    assert summary["model"] == (None if totals_fail else {"spam": 5, "ham": 0})
