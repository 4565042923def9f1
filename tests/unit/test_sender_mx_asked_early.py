"""Fortieth review: a client could hide MAIL_FROM_NO_MX by making its HELO name's (or its PTR's) lookups time out.

The HELO and reverse-DNS checks run before the sender check at MAIL FROM and wait for their answers until the
stage's one DNS deadline; the sender domain's MX question was sent only after them, with that deadline already
spent, so it was never asked (MAIL_FROM_TEMPFAIL, 0 points, instead of MAIL_FROM_NO_MX, 2.5). The MX question now
goes out as MAIL FROM arrives (``Check.before_mail``), and is answered while the others wait.

A nameserver on loopback in a thread of this process: names under silent.test are never answered, every other
name does not exist (answered after 0.1 s).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Iterator

import dns.message
import dns.rcode
import pytest

from bench.scenarios import checks_off, learner_off
from milterd.config import Config
from milterd.message.pipeline import Pipeline
from milterd.milter.offline import Client, check_message
from milterd.services import build

MESSAGE = b"From: a@gone.test\r\nTo: b@example.org\r\nSubject: hi\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@gone.test>\r\n\r\nhello\r\n"


@pytest.fixture()
def nameserver() -> Iterator[tuple[int, list[str]]]:
    """The port of a nameserver that never answers for silent.test and says NXDOMAIN for the rest (0.1 s later), and the names asked."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    asked: list[str] = []

    def run() -> None:
        while True:
            try:
                wire, client = sock.recvfrom(65535)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            name = query.question[0].name.to_text().lower()
            asked.append(f"{name} {dns.rdatatype.to_text(query.question[0].rdtype)}")
            if name.endswith("silent.test."):
                continue
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.NXDOMAIN)
            # A tenth of a second away, as a nameserver across the Internet: less than what a stage's deadline
            # leaves, more than what is left of it once another check has waited it out.
            threading.Timer(0.1, sock.sendto, (reply.to_wire(), client)).start()

    threading.Thread(target=run, daemon=True).start()
    yield sock.getsockname()[1], asked
    sock.close()


def pipeline(tmp_path: Path, port: int) -> Pipeline:
    """Every check off but HELO and sender, on a one-second DNS deadline."""
    checks = checks_off()
    checks["helo"] = {"enabled": True}
    checks["sender"] = {"enabled": True}
    config = Config.model_validate({
        "dns": {"nameservers": [f"127.0.0.1:{port}"], "timeout": 1.0},
        "milter": {"trusted_networks": []},
        "rules": {"dir": str(tmp_path)},
        "checks": checks,
        **learner_off(),
    })
    return Pipeline(build(config), keep_log=False)


@pytest.mark.parametrize("helo", ["mail.silent.test", "mx.answers.test"])
def test_the_sender_domain_is_asked_whatever_the_helo_name_s_nameserver_does(tmp_path: Path, nameserver: tuple[int, list[str]], helo: str) -> None:
    port, asked = nameserver
    result = check_message(pipeline(tmp_path, port), MESSAGE, Client(addr="192.0.2.10", helo=helo, sender="u@gone.test", recipients=["b@example.org"]))
    symbols = result.details
    assert "gone.test. MX" in asked
    assert symbols.get("MAIL_FROM_NO_MX") == "gone.test: no such domain", symbols
    assert "MAIL_FROM_TEMPFAIL" not in symbols and result.symbols["MAIL_FROM_NO_MX"] == 2.5
    assert ("HELO_TEMPFAIL" in symbols) is helo.endswith("silent.test"), symbols
