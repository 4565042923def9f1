"""``milterd learn`` and ``milterd check --train-*`` ended from outside (twenty-fifth session's review): SIGTERM and
SIGHUP end a run through its cleanup, a tokenizing process that dies is a failure in the summary, and a scratch
model that cannot be written is one line, never a traceback.  That the workers end with the learner (spawned,
PR_SET_PDEATHSIG) is tested with real processes in tests/integration/test_learner.py."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.cli import main
from milterd.commands import check as check_command
from milterd.commands import learn as learn_command
from milterd.config import DatabaseSection
from milterd.store import Store
from milterd.store.errors import StoreError
from milterd.store.learner import LearnerStore
from tests.unit.test_learner_fourth_review import configured


def _folder(root: Path, count: int) -> Path:
    folder = root / "spam"
    folder.mkdir()
    for n in range(count):
        (folder / f"{n:03}.eml").write_bytes(b"Message-ID: <%d@x>\nSubject: offer %d\n\nbuy cheap pills number %d now\n" % (n, n, n))
    return folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_ends_the_run_through_its_cleanup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], signum: int) -> None:
    # The learner ended where it stood (no handler): its finally never ran, its workers were orphaned and, on
    # PostgreSQL, its transaction stayed open with its locks.
    conf, folder = configured(tmp_path), _folder(tmp_path, 40)
    learned = LearnerStore.learn
    calls = []

    def learn_then_signal(self: LearnerStore, *args: Any) -> str:
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signum)
        return learned(self, *args)

    monkeypatch.setattr(LearnerStore, "learn", learn_then_signal)
    before = signal.getsignal(signum)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--spam", str(folder)]) == 128 + signum
    assert signal.getsignal(signum) is before
    err = capsys.readouterr().err
    assert f"milterd learn: stopped by {signal.Signals(signum).name} after 4 messages" in err and "Traceback" not in err
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 's.sqlite'}"))  # configured()'s store
    try:
        assert LearnerStore(store.engine).totals().spam == 4  # each message its own transaction: those done stay
    finally:
        store.close()


def test_a_tokenizing_process_that_dies_is_a_failure_in_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # A worker killed (the OOM killer) raised BrokenProcessPool through the command: a traceback, and no summary,
    # not even with --json.
    conf, folder = configured(tmp_path), _folder(tmp_path, 3)

    def dies(_executor: Any, batches: Iterator[list[bytes]], max_size: int, _window: int) -> Iterator[list[tuple[str, list[int]]]]:
        yield learn_command._prepare_batch(next(iter(batches)), max_size)
        raise BrokenProcessPool("A child process terminated abruptly")

    monkeypatch.setattr(learn_command, "_windowed", dies)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--json", "--jobs", "2", "--spam", str(folder)]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["learned"] == 3 and summary["failed"] == 1
    assert summary["errors"] == ["a tokenizing process died (killed, or out of memory): stopped after 3 messages"]


@pytest.mark.parametrize("mode", ["train", "cross-validate"])
def test_a_scratch_model_that_cannot_be_written_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], mode: str) -> None:
    # A full $TMPDIR made Store.upgrade() raise StoreError through the command: two pages of traceback.
    conf = configured(tmp_path)
    spam, ham = _folder(tmp_path, 4), tmp_path / "ham"
    ham.mkdir()
    for n in range(4):
        (ham / f"{n}.eml").write_bytes(b"Message-ID: <h%d@x>\nSubject: minutes %d\n\nthe meeting notes\n" % (n, n))

    def full(_self: Store) -> None:
        raise StoreError("cannot upgrade the schema of sqlite:///scratch/model.sqlite: OperationalError: disk I/O error")

    monkeypatch.setattr(check_command.Store, "upgrade", full)
    argv = ["check", "-c", str(conf), "--ham", str(ham), "--spam", str(spam)]
    argv += ["--train-ham", str(ham), "--train-spam", str(spam)] if mode == "train" else ["--cross-validate", "2"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "milterd: check: the scratch model: cannot upgrade the schema" in err and "Traceback" not in err
