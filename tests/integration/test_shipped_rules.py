"""The shipped DNS lists apply through Postfix with a milter.conf that has no rules/ beside it.

The milter.conf lives in a directory of its own (as /etc/milterd/milter.conf
alone) with ``[rules] dir`` at its default and no such directory; rbldnsd
serves zen.spamhaus.org, the zone shipped in milterd/defaults/rules/dnsbl.toml.
"""

from __future__ import annotations

import shutil
import smtplib
from typing import Iterator

import pytest

from tests.conftest import message
from tests.harness.dns import LocalDns
from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, Sink
from tests.harness.stack import Stack, stack_root

PBL_CLIENT = "192.0.2.90"  # answered 127.0.0.10: DNSBL_SPAMHAUS_PBL (score 2, not a reject)
SBL_CLIENT = "192.0.2.91"  # answered 127.0.0.2: DNSBL_SPAMHAUS_SBL, a reject


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Stack]:
    dns = LocalDns(tmp_path_factory.mktemp("dns"), [], {
        "zen.spamhaus.org": ("ip4set", f"{PBL_CLIENT} :127.0.0.10:PBL listed\n{SBL_CLIENT} :127.0.0.2:SBL listed, see https://check.spamhaus.org/\n"),
    }).start()
    root = stack_root()
    milterd = Milterd(root / "milterd", {"dns": {"nameservers": [dns.nameserver], "timeout": 3}, "rules": {"dir": "rules"}})
    shutil.rmtree(root / "milterd" / "rules")  # the harness makes one; this milter.conf has none beside it
    milterd.start()
    postfix = Postfix(root / "postfix", relay_port=sink.port, milter=milterd.postfix_spec).start()
    stack = Stack(milterd, postfix, sink)
    yield stack
    stack.stop()
    dns.stop()
    shutil.rmtree(root, ignore_errors=True)


def client(addr: str) -> dict[str, str]:
    return {"ADDR": addr, "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def test_shipped_zone_scores_a_listed_client(stack: Stack) -> None:
    assert not (stack.milterd.root / "rules").exists()
    stack.send(message("pbl client"), xclient=client(PBL_CLIENT))
    [delivered] = stack.sink.wait(1, match=lambda m: m.header("Subject") == ["pbl client"])
    assert "DNSBL_SPAMHAUS_PBL" in delivered.header("X-Spam-Status")[0]
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "pbl client")
    assert row["symbols"]["DNSBL_SPAMHAUS_PBL"] == 2.0


def test_shipped_zone_rejects_an_sbl_client(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        stack.send(message("sbl client"), xclient=client(SBL_CLIENT))
    assert info.value.smtp_code == 554
    assert f"client [{SBL_CLIENT}] blocked using zen.spamhaus.org" in info.value.smtp_error.decode()
