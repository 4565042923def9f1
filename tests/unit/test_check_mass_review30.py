"""The mass check (``milterd check --ham DIR --spam DIR``) and answers that judge nothing (thirtieth session's
review): a 451 (clamd down under ``on_error = "tempfail"``) was counted as spam caught and ham flagged at every
threshold, with exit status 0; a message greylisted by ``[actions] greylist`` was counted as flagged though it is
delivered unmarked once retried."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from milterd.cli import main
from tests.conftest import message
from tests.unit.test_check_cli import RULES


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def corpus(root: Path) -> tuple[Path, Path]:
    ham, spam = root / "ham", root / "spam"
    ham.mkdir()
    spam.mkdir()
    (ham / "1").write_bytes(message(subject="lunch"))
    (spam / "1").write_bytes(message(subject="reject me"))
    return ham, spam


def config(root: Path, extra: str) -> Path:
    (root / "rules").mkdir()
    (root / "rules" / "local.toml").write_text(RULES)
    path = root / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{root}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n' + extra)
    return path


def test_a_451_is_counted_as_not_judged_never_as_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = config(tmp_path, f'[clamav]\nenabled = true\naddress = "tcp:127.0.0.1:{closed_port()}"\non_error = "tempfail"\ntimeout = 2\n')
    ham, spam = corpus(tmp_path)
    status = main(["check", "-c", str(conf), "--ham", str(ham), "--spam", str(spam), "--json"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    # The ham answered 451 is not judged; the spam's 20 points reject it whatever the scanner says (a reject outranks 451).
    assert status != 0 and report["errors"] == 1
    assert report["overall"]["ham"]["messages"] == 0 and report["overall"]["spam"]["flagged"] == 1
    assert "not judged" in err and str(ham / "1") in err


def test_a_message_greylisted_by_score_is_flagged_as_its_retry_would_be(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # BODY_TAG_ME (6) reaches the greylist threshold (5); with add_header and rewrite_subject off, the retried
    # message is delivered unmarked.  SUBJ_REJECT_ME (20) is rejected whatever greylisting does.
    extra = '[greylist]\nenabled = true\nmode = "score"\n[actions]\ngreylist = 5\nadd_header = false\nrewrite_subject = false\n'
    conf = config(tmp_path, extra)
    ham, spam = corpus(tmp_path)
    (ham / "2").write_bytes(message(subject="minutes", body="tag me please\r\n"))
    status = main(["check", "-c", str(conf), "--ham", str(ham), "--spam", str(spam), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["errors"] == 0
    assert report["overall"]["ham"]["flagged"] == 0 and report["overall"]["spam"]["flagged"] == 1
