"""`rules whatif` scores logged messages with the weights in effect (review, thirty-third session).

Each row keeps the symbol scores it was logged with; only `--set symbols.*` changed them.  After an
administrator re-weighted a symbol in rules/, whatif reported nothing changing (and said the settings in
effect were those the rows were logged under) while the running milter gave other actions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.config import load_config
from milterd.store import MessageRecord, Store

CONF = """[database]
url = "sqlite:///{root}/log.sqlite"
[dns]
nameservers = ["127.0.0.1:9"]
[actions]
add_header = 5
rewrite_subject = 8
quarantine = 12
reject = 15
"""


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(CONF.format(root=tmp_path))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text("[symbols]\nHELO_BARE_IP = 6.0\n")  # re-weighted since (shipped: 2.0)
    store = Store(load_config(path).database)
    store.upgrade()
    store.log_message(MessageRecord(action="accept", client_addr="192.0.2.1", subject="bare ip", score=2.0, symbols={"HELO_BARE_IP": 2.0}))
    store.log_message(MessageRecord(action="accept", client_addr="192.0.2.2", subject="other", score=1.0, symbols={"HDR_DATE_MISSING": 1.0}))
    store.close()
    return path


def test_a_weight_changed_in_rules_is_what_whatif_scores_with(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "whatif", "-c", str(conf), "--json", "--set", "actions.reject=15"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] == 1 and report["changes"][0]["from"] == "accept" and report["changes"][0]["to"] == "add_header"
    assert report["changes"][0]["examples"][0]["new_score"] == 6.0
    assert report["changed_without_changes"] == 1  # the weight in effect did it, not what was asked


def test_set_still_overrides_the_weight_in_effect(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "whatif", "-c", str(conf), "--json", "--set", "symbols.HELO_BARE_IP=9"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(c["from"], c["to"], c["count"]) for c in report["changes"]] == [("accept", "rewrite_subject", 1)]
