"""``milterd check`` with a real spamd: GTUBE is explained as SpamAssassin's verdict and rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from milterd.cli import main
from tests.conftest import message
from tests.harness.scanners import Spamd

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    daemon = Spamd(tmp_path_factory.mktemp("spamd")).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory, spamd: Spamd) -> Path:
    root = tmp_path_factory.mktemp("check-spamd")
    path = root / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{root}/log.sqlite"\n\n[spamd]\nenabled = true\naddress = "{spamd.address}"\n')
    return path


def test_gtube_is_rejected_and_explained(tmp_path: Path, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gtube.eml"
    path.write_bytes(message(subject="test", body=f"{GTUBE}\r\n"))
    assert main(["check", "-c", str(conf), str(path), "--client-ip", "192.0.2.10", "--json"]) == 17
    result = json.loads(capsys.readouterr().out)["messages"][0]
    assert result["action"] == "reject"
    spam = next(s for s in result["symbols"] if s["symbol"] == "SPAMASSASSIN")
    assert spam["score"] >= 1000 and "GTUBE" in spam["detail"] and spam["check"] == "spamassassin"
    assert not (conf.parent / "log.sqlite").exists()


def test_clean_message_passes_spamd(tmp_path: Path, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clean.eml"
    path.write_bytes(message())
    assert main(["check", "-c", str(conf), str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["messages"][0]
    assert result["action"] == "accept"
    # spamd was asked and answered (an unreachable spamd also ends in accept, with SPAMD_ERROR and no SPAMASSASSIN).
    symbols = {s["symbol"]: s for s in result["symbols"]}
    assert "SPAMD_ERROR" not in symbols and symbols["SPAMASSASSIN"]["score"] < 5, result["symbols"]
