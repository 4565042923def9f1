"""``milterd check`` drives the worker's own adapter (MilterdMilter, in process through
pymilter's TestCtx): what the adapter does before the pipeline, such as [milter]'s
header limits, applies to a checked message as it does to one from Postfix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milterd.cli import main
from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.milterd import write_config


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    sections = with_sections(NO_CHECKS, {"milter": {"max_headers": 12}, "database": {"url": f"sqlite:///{tmp_path / 'log.sqlite'}"}})
    return write_config(tmp_path / "milter.conf", sections)


def check_json(capsys: pytest.CaptureFixture[str], conf: Path, path: Path) -> tuple[int, dict]:
    status = main(["check", "-c", str(conf), str(path), "--json"])
    return status, json.loads(capsys.readouterr().out)["messages"][0]


def test_header_limit_refuses_a_checked_message_as_the_worker_does(tmp_path: Path, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    many = tmp_path / "many.eml"
    many.write_bytes(message(headers={f"X-Extra-{i}": "x" for i in range(20)}))
    status, result = check_json(capsys, conf, many)
    assert status == 17 and result["action"] == "reject" and result["stage"] == "header"
    assert result["reply"] == result["reason"] == "554 5.6.0 Too many headers" and result["forced_by"] == "HDR_TOO_MANY"
    assert [s["symbol"] for s in result["symbols"]] == ["HDR_TOO_MANY"]
    few = tmp_path / "few.eml"
    few.write_bytes(message())
    status, result = check_json(capsys, conf, few)
    assert status == 0 and result["action"] == "accept" and result["stage"] == "eom"
