"""A message the policy does not score (a trusted or authenticated client's, or every recipient a spam lover's) is
marked UNSCORED in its log row, with why (thirty-fourth session).

Before, the row did not say it: `rules whatif` guessed from the trusted networks configured now, so a row of a
network removed since was re-scored as if its checks had run (a trusted relay's message, never scored, "would be
rejected"), and an administrator reading `milterd log` could not tell a trusted client's 0 from a clean message's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from milterd.cli import main
from milterd.config import ConfigError, MilterSection, load_config
from milterd.message.model import Action
from milterd.message.pipeline import Pipeline
from milterd.message.policy import UNSCORED
from milterd.milter.offline import Client, check_message
from milterd.services import build
from milterd.store import MessageRecord, Store
from milterd.tuning import not_weighted, unscored
from tests.conftest import message

RULE = "[[rule]]\nname = \"SUBJ_LOTTERY\"\nheader = \"Subject\"\nregex = '(?i)lottery'\nscore = 30\n"
CONF = """[milter]
trusted_networks = ["10.0.0.0/8"]
spam_lovers = ["abuse@"]
[database]
url = "sqlite:///{root}/log.sqlite"
[dns]
nameservers = ["127.0.0.1:9"]
"""


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(RULE)
    path = tmp_path / "milter.conf"
    path.write_text(CONF.format(root=tmp_path))
    return path


@pytest.fixture()
def pipeline(conf: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(build(load_config(conf)), keep_log=False)
    yield pipe
    pipe.shutdown()


def test_an_unscored_message_says_why_in_its_symbols(pipeline: Pipeline) -> None:
    raw = message(subject="You won the lottery")
    cases = [
        (Client(addr="10.1.2.3", sender="x@example.com", recipients=["bob@example.com"]), "trusted client 10.1.2.3"),
        (Client(addr="192.0.2.10", sender="x@example.com", recipients=["bob@example.com"], auth_user="alice"), "authenticated as alice"),
        (Client(addr="192.0.2.10", sender="x@example.com", recipients=["abuse@example.com"]), "every recipient is one of [milter] spam_lovers"),
    ]
    for client, why in cases:
        result = check_message(pipeline, raw, client)
        assert not result.error, result.error
        assert (result.action, result.scored) == (Action.ACCEPT, False)
        assert result.symbols[UNSCORED] == 0.0 and result.details[UNSCORED] == why
        assert ("SUBJ_LOTTERY" in result.symbols) == (why.startswith("every recipient"))  # a spam lover's checks ran


def test_a_scored_message_has_no_mark(pipeline: Pipeline) -> None:
    result = check_message(pipeline, message(subject="You won the lottery"), Client(addr="192.0.2.10", sender="x@example.com", recipients=["bob@example.com"]))
    assert result.scored and result.action == Action.REJECT and UNSCORED not in result.symbols


def test_a_marked_row_stays_unscored_when_its_network_is_no_longer_trusted() -> None:
    row = {"action": "accept", "client_addr": "10.1.2.3", "score": 30.0, "symbols": {"SUBJ_LOTTERY": 30.0, UNSCORED: 0.0}}
    assert unscored(row, MilterSection(trusted_networks=[]))
    assert not unscored({**row, "symbols": {"SUBJ_LOTTERY": 30.0}}, MilterSection(trusted_networks=[]))


def test_whatif_keeps_a_marked_row_whose_network_was_removed(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(load_config(conf).database)
    store.upgrade()
    store.log_message(MessageRecord(action="accept", client_addr="10.1.2.3", subject="lottery", score=30.0,
                                    symbols={"SUBJ_LOTTERY": 30.0, UNSCORED: 0.0}, details={UNSCORED: "trusted client 10.1.2.3"}))
    store.close()
    conf.write_text(CONF.format(root=tmp_path).replace('trusted_networks = ["10.0.0.0/8"]', "trusted_networks = []"))
    assert main(["rules", "whatif", "-c", str(conf), "--json", "--set", "actions.reject=20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed"] == 0, report["changes"]


def test_the_mark_is_no_weight_and_no_rule_name(conf: Path, tmp_path: Path) -> None:
    assert UNSCORED in not_weighted()
    (tmp_path / "rules" / "local.toml").write_text(RULE + "[[rule]]\nname = \"TRUSTED_LOTTERY\"\nmeta = \"SUBJ_LOTTERY and UNSCORED\"\nscore = 1\n")
    with pytest.raises(ConfigError, match="UNSCORED is only known after the verdict"):
        build(load_config(conf))
    (tmp_path / "rules" / "local.toml").write_text("[[rule]]\nname = \"UNSCORED\"\nheader = \"Subject\"\nregex = 'x'\nscore = 1\n")
    with pytest.raises(ConfigError, match="already emits this symbol"):
        build(load_config(conf))
