"""``check --cross-validate`` says when a fold's scratch model learns fewer messages than the classifier needs to
score, as ``--train-*`` does: its report held no BAYES_* symbol and read as an evaluation of the classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.cli import main
from tests.conftest import message
from tests.unit.test_cli_bad_values_review19 import NO_CHECKS, _conf


def folders(tmp_path: Path, count: int) -> tuple[str, str]:
    for kind in ("ham", "spam"):
        (tmp_path / kind).mkdir()
        for n in range(count):
            (tmp_path / kind / f"{n}.eml").write_bytes(message(subject=f"{kind} {n}", body=f"{kind} words number {n}\r\n"))
    return str(tmp_path / "ham"), str(tmp_path / "spam")


@pytest.mark.parametrize(("minimum", "warned"), [(3, True), (2, False)])
def test_fix_folds_too_small_for_the_classifier_are_said(tmp_path: Path, capsys: pytest.CaptureFixture[str], minimum: int, warned: bool) -> None:
    ham, spam = folders(tmp_path, 4)  # 2 folds: each model learns 2 spam and 2 ham
    conf = _conf(tmp_path, extra=f"[learner]\nmin_spam = {minimum}\nmin_ham = {minimum}\n{NO_CHECKS}\n")
    capsys.readouterr()
    assert main(["check", "-c", str(conf), "--json", "--cross-validate", "2", "--ham", ham, "--spam", spam]) == 0
    err = capsys.readouterr().err
    said = f"a fold's model learns as few as 2 spam and 2 ham, fewer than [learner] min_spam/min_ham ({minimum}/{minimum})"
    assert (said in err) == warned, err
