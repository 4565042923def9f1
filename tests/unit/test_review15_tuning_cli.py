"""Review 15: ``milterd log`` into a closed pipe, and ``milterd check`` on unscored mail and hostile file names."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from milterd.cli import main
from milterd.commands.check import Progress
from milterd.config import load_config
from milterd.store import MessageRecord, Store

LOG_CONF = """[database]
url = "sqlite:///{root}/log.sqlite"
[dns]
nameservers = ["127.0.0.1:9"]
"""


@pytest.fixture()
def log_conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(LOG_CONF.format(root=tmp_path))
    store = Store(load_config(path).database)
    store.upgrade()
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(3000):  # more than a pipe buffer holds
        store.log_message(MessageRecord(action="accept", time=now, client_addr="192.0.2.9", sender=f"s{i}@example.org",
                                        subject=f"message {i}", score=1.0, symbols={"HDR_DATE_MISSING": 1.0}))
    store.close()
    return path


class ClosedPipe(io.StringIO):
    """stdout read by ``head -1``: the reader leaves after the first few writes."""

    def write(self, text: str) -> int:
        if self.tell() > 200:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


# 4. The reader leaving (| head) is not a failure to read the log.
@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_log_into_a_closed_pipe(log_conf: Path, extra: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["-c", str(log_conf), "log", "--limit", "0", *extra]) == 0
    err = capsys.readouterr().err
    assert "cannot read" not in err, err


CHECK_CONF = """[database]
url = "sqlite:///{root}/log.sqlite"
[dns]
nameservers = ["127.0.0.1:9"]
[actions]
add_header = 5
reject = 15
[checks.headers]
skip_authenticated = false
"""
MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\n\r\nhello\r\n"  # no Date, no Message-ID


@pytest.fixture()
def check_root(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text("[symbols]\nHDR_DATE_MISSING = 10.0\n")
    (tmp_path / "milter.conf").write_text(CHECK_CONF.format(root=tmp_path))
    for kind in ("ham", "spam"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "1.eml").write_bytes(MSG)
    return tmp_path


def check_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    main(["check", *argv, "--json"])
    return dict(json.loads(capsys.readouterr().out))


# 6. Unscored mail (authenticated client): no X-Spam-Status, said so, left out of the threshold table.
def test_check_unscored_message(check_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf, eml = str(check_root / "milter.conf"), str(check_root / "ham" / "1.eml")
    out = check_json(capsys, "-c", conf, "--auth-user", "bob", eml)["messages"][0]
    assert (out["action"], out["score"], out["scored"], out["x_spam_status"]) == ("accept", 11.0, False, "")
    scored = check_json(capsys, "-c", conf, eml)["messages"][0]
    assert scored["scored"] is True and scored["x_spam_status"].startswith("Yes, score=11.0")
    main(["check", "-c", conf, "--auth-user", "bob", eml])
    text = capsys.readouterr().out
    assert "1.eml: accept (not scored: trusted or authenticated client" in text


def test_mass_check_leaves_unscored_mail_out_of_the_threshold_table(check_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-c", str(check_root / "milter.conf"), "--auth-user", "bob", "--ham", str(check_root / "ham"), "--spam", str(check_root / "spam")]
    report = check_json(capsys, *argv)
    at5 = next(t for t in report["thresholds"] if t["threshold"] == 5.0)
    assert (at5["ham_flagged"], at5["spam_caught"]) == (0, 0)
    assert report["unscored"] == {"ham": 1, "spam": 1}
    assert report["overall"]["ham"]["scored"] == 0 and report["overall"]["ham"]["at"]["5"] == 0
    main(["check", *argv])
    text = capsys.readouterr().out
    assert "not scored (trusted or authenticated client; no threshold applies): 1 spam and 1 ham, left out of this table" in text


# 7. The progress bar shows a file name escaped: no terminal escape from a crafted name.
def test_progress_label_is_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(1, "always")
    progress.step("bad\x1b[31mname\r\n.eml")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\n" not in err and "\\x1b[31mname" in err
