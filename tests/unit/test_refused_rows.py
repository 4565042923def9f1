"""The log row of a transaction refused before end of message: its reason is bounded however many recipients
were refused (a client sending 5,000 RCPT TO to be greylisted wrote a reason of 380 KB into the log; found by
review).  Driven through pymilter's TestCtx as in test_undecodable_helo.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Iterator

import Milter
import pytest
from Milter import testctx

from milterd.cli import main
from milterd.message.pipeline import REASON_RECIPIENTS, REASON_WIDTH, refused_reason
from milterd.milter.adapter import MilterdMilter
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config
from tests.harness.pipeline import milter_worker


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refused")
    sections = with_sections(NO_CHECKS, {
        "milter": {"hostname": "mx.test", "trusted_networks": []},
        "dns": {"nameservers": ["127.0.0.1:9"]},
        "greylist": {"enabled": True, "mode": "triplet"},
        "database": {"url": f"sqlite:///{root / 'log.sqlite'}"},
    })
    return write_config(root / "milter.conf", sections)


@pytest.fixture(scope="module")
def milter_class(conf: Path) -> Iterator[type[MilterdMilter]]:
    yield from milter_worker(conf)


def test_a_greylisted_transaction_of_many_recipients_has_a_bounded_reason(
        milter_class: type[MilterdMilter], conf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Milter, "factory", milter_class)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    ctx = testctx.TestCtx()
    assert ctx._negotiate() == Milter.CONTINUE
    ctx._stage = Milter.M_CONNECT
    assert Milter.connect_callback(ctx, "[198.51.100.9]", socket.AF_INET, ("198.51.100.9", 4321)) == Milter.CONTINUE
    ctx._stage = None
    assert ctx._helo("client.example.org") == Milter.CONTINUE
    ctx._setsymval("i", "QMANY")
    assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    recipients = [f"user{i}-{'x' * 40}@example.com" for i in range(300)]
    assert {ctx._envrcpt(f"<{r}>") for r in recipients} == {Milter.TEMPFAIL}
    assert ctx.getpriv().abort() == Milter.CONTINUE
    Milter.close_callback(ctx)
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0"]) == 0
    [row] = [r for r in json.loads(capsys.readouterr().out) if r["queue_id"] == "QMANY"]
    assert row["action"] == "greylist" and row["recipients"] == recipients  # every recipient stays in its own column
    assert len(row["reason"]) <= REASON_WIDTH and row["reason"].startswith(f"<{recipients[0]}>: 451 4.7.1")
    assert row["reason"].endswith(f"; and {300 - REASON_RECIPIENTS} more")


def test_the_reason_names_the_first_recipients_and_how_many_more() -> None:
    assert refused_reason([("a@x", "451 wait")]) == "<a@x>: 451 wait"
    refused = [(f"r{i}@x", "451 wait") for i in range(REASON_RECIPIENTS + 2)]
    assert refused_reason(refused) == "; ".join(f"<r{i}@x>: 451 wait" for i in range(REASON_RECIPIENTS)) + "; and 2 more"
    assert len(refused_reason([("a" * 100_000 + "@x", "451 wait")])) == REASON_WIDTH
