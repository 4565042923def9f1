"""``rules whatif`` and a 451 the score hid (thirtieth session's review): a CHECK_ERROR of a spool that could
not be read back and an ATTACH_ERROR of this machine's disk force a tempfail whatever ``on_check_error`` and
``limit_action`` say.  whatif lowered such a reject to quarantine where the milter, with the threshold raised,
answers 451."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.checks import attachments
from milterd.config import Config
from milterd.content import mimeparts
from milterd.message.model import Hit, Session, SpoolError
from milterd.message.pipeline import _spool_hit
from milterd.message.policy import decide
from milterd.tuning import forcing_symbols, whatif
from tests.harness.messages import zipped
from tests.unit.test_attachments_local_failure import PE
from tests.unit.test_attachments_tnef import checker, hits_of, message
from tests.unit.test_tuning_fourth_review import ACTIONS, MILTER

RAISED_REJECT = ACTIONS.model_copy(update={"reject": 30.0})


def logged(hits: list[Hit]) -> dict[str, Any]:
    """The log row of a message with these hits at the default thresholds (the score's reject names the score)."""
    verdict = decide(hits, lambda _s: 0.0, ACTIONS)
    assert verdict.action.label == "reject" and verdict.reason.startswith("score")
    return {"action": "reject", "score": verdict.score, "reason": verdict.reason, "symbols": verdict.symbols,
            "details": verdict.details, "client_addr": "192.0.2.1", "auth_user": ""}


def local_failure_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hit:
    def full(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise OSError(errno.ENOSPC, "No space left on device")
        yield

    monkeypatch.setattr(mimeparts, "attachments", full)
    return hits_of(checker(tmp_path), message(zipped({"setup.exe": PE}), b"files.zip", b"application/zip"))[attachments.ERROR]  # type: ignore[no-any-return]


def spool_hit() -> Hit:
    check = type("Dkim", (), {"name": "dkim"})()
    return _spool_hit(check, Session(client_addr="192.0.2.1"), SpoolError("short read"))  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["spool", "local"])
def test_a_451_that_forces_whatever_the_settings_holds_the_row(which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hit = spool_hit() if which == "spool" else local_failure_hit(tmp_path, monkeypatch)
    row = logged([Hit("SPAMASSASSIN", score=18.0), hit])
    assert decide([Hit("SPAMASSASSIN", score=18.0), hit], lambda _s: 0.0, RAISED_REJECT).action.label == "tempfail"
    # on_check_error = "accept" (the default), limit_action = "score": neither setting forces anything.
    may_force = forcing_symbols(Config().with_changes({"checks.attachments.limit_action": "score"}))
    assert hit.symbol not in may_force
    report = whatif([row], {}, RAISED_REJECT, MILTER, may_force=may_force)
    assert report.changed == 0 and report.kept_may_force == {"reject": 1}


def test_a_check_that_raised_under_accept_still_lowers() -> None:
    """A CHECK_ERROR the settings make score-only (the check's name alone in the detail) is lowered, as before."""
    row = logged([Hit("SPAMASSASSIN", score=18.0), Hit("CHECK_ERROR", detail="dkim")])
    report = whatif([row], {}, RAISED_REJECT, MILTER, may_force=forcing_symbols(Config()))
    assert report.changes == {("reject", "quarantine"): 1}
