"""The protocol layer, driven by a pure-Python milter client (miltertest) against a running milterd.

These are fast checks of what Postfix cannot easily show: the negotiated bits,
per-transaction state across RSET (abort) on one connection, and the exact
replies and header edits at end of message.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterator

import pytest
from miltertest import MilterConnection
from miltertest import constants as c

from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import Milterd

RULES = {"test.toml": '[[rule]]\nname = "TEST_REJECT"\nheader = "Subject"\nregex = "REJECTME"\nscore = 100\n'}


@pytest.fixture(scope="module")
def milterd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Milterd]:
    root = tmp_path_factory.mktemp("proto")
    sections = with_sections(NO_CHECKS, {"milter": {"trusted_networks": []}})
    daemon = Milterd(root, sections, RULES, socket=f"unix:{root}/milterd.sock").start()
    yield daemon
    daemon.stop()


def connect(milterd: Milterd) -> MilterConnection:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(milterd.socket[len("unix:"):])
    conn = MilterConnection(sock)
    conn.optneg_mta()
    return conn


def start(conn: MilterConnection, addr: str = "192.0.2.7") -> None:
    conn.send_macro(c.SMFIC_CONNECT, **{"j": "mx.test", "{daemon_name}": "smtpd"})
    assert conn.send_ar(c.SMFIC_CONNECT, hostname="[" + addr + "]", family=c.SMFIA_INET, port=4321, address=addr)[0] == c.SMFIR_CONTINUE
    assert conn.send_ar(c.SMFIC_HELO, helo="client.example.org")[0] == c.SMFIR_CONTINUE


def transaction(conn: MilterConnection, subject: str, queue_id: str) -> list[tuple[str, dict]]:
    assert conn.send_ar(c.SMFIC_MAIL, args=["<alice@example.org>"])[0] == c.SMFIR_CONTINUE
    conn.send_macro(c.SMFIC_RCPT, i=queue_id)
    assert conn.send_ar(c.SMFIC_RCPT, args=["<bob@example.com>"])[0] == c.SMFIR_CONTINUE
    assert conn.send_ar(c.SMFIC_DATA)[0] == c.SMFIR_CONTINUE
    conn.send_headers([("From", "alice@example.org"), ("Subject", subject), ("X-Spam-Flag", "YES")])
    assert conn.send_ar(c.SMFIC_EOH)[0] == c.SMFIR_CONTINUE
    conn.send_body("Hello\r\n" * 10)
    conn.send_macro(c.SMFIC_BODYEOB, i=queue_id)
    return conn.send_eom()


def test_negotiation_replies_at_every_stage(milterd: Milterd) -> None:
    conn = connect(milterd)
    no_reply = c.SMFIP_NR_CONN | c.SMFIP_NR_HELO | c.SMFIP_NR_MAIL | c.SMFIP_NR_RCPT | c.SMFIP_NR_DATA | c.SMFIP_NR_HDR | c.SMFIP_NR_EOH | c.SMFIP_NR_BODY
    assert conn.protocol_flags & no_reply == 0
    assert conn.protocol_flags & c.SMFIP_NOUNKNOWN
    assert not conn.protocol_flags & (c.SMFIP_NOCONNECT | c.SMFIP_NOHELO | c.SMFIP_NOMAIL | c.SMFIP_NORCPT | c.SMFIP_NODATA | c.SMFIP_NOHDRS | c.SMFIP_NOEOH)
    assert conn.action_flags == c.SMFIF_ADDHDRS | c.SMFIF_CHGHDRS | c.SMFIF_QUARANTINE
    conn.sock.close()


def test_transactions_on_one_connection_are_independent(milterd: Milterd) -> None:
    conn = connect(milterd)
    start(conn)
    rejected = transaction(conn, "please REJECTME", "QPROTO1")
    assert rejected[-1][0] == c.SMFIR_REPLYCODE
    assert rejected[-1][1]["smtpcode"] == "550"
    assert rejected[-1][1]["text"].startswith("5.7.1 Message rejected as spam (score 100")
    conn._send(c.SMFIC_ABORT)  # RSET: Postfix expects no reply
    accepted = transaction(conn, "hello", "QPROTO2")
    assert accepted[-1][0] == c.SMFIR_CONTINUE
    edits = [(code, data) for code, data in accepted[:-1]]
    # The forged X-Spam-Flag is deleted (empty value), ours are added.
    assert (c.SMFIR_CHGHEADER, {"index": 1, "name": "X-Spam-Flag", "value": ""}) in edits
    added = {data["name"]: data["value"].strip() for code, data in edits if code == c.SMFIR_ADDHEADER}
    assert added["X-Spam-Status"] == "No, score=0.0 required=5 tests=none"
    conn._send(c.SMFIC_QUIT)
    conn.sock.close()
    rows = {row["queue_id"]: row for row in milterd.log_json()}
    assert rows["QPROTO1"]["action"] == "reject"
    assert rows["QPROTO1"]["symbols"] == {"TEST_REJECT": 100.0}
    assert rows["QPROTO2"]["action"] == "accept"
    assert rows["QPROTO2"]["symbols"] == {}


def test_eight_bit_and_nul_headers_do_not_break_the_worker(milterd: Milterd) -> None:
    conn = connect(milterd)
    start(conn, "192.0.2.8")
    assert conn.send_ar(c.SMFIC_MAIL, args=["<alice@example.org>"])[0] == c.SMFIR_CONTINUE
    conn.send_macro(c.SMFIC_RCPT, i="QPROTO3")
    assert conn.send_ar(c.SMFIC_RCPT, args=["<bob@example.com>"])[0] == c.SMFIR_CONTINUE
    # miltertest encodes text only; 8-bit and NUL bytes go out as raw packets.
    for name, value in ((b"Subject", b"caf\xe9 =?utf-8?q?broken"), (b"X-Raw", b"\xff\xfe\x80 junk")):
        packet = c.SMFIC_HEADER.encode() + name + b"\0" + value + b"\0"
        conn.sock.sendall(struct.pack("!I", len(packet)) + packet)
        assert conn.recv()[0] == c.SMFIR_CONTINUE
    assert conn.send_ar(c.SMFIC_EOH)[0] == c.SMFIR_CONTINUE
    replies = conn.send_eom()
    assert replies[-1][0] == c.SMFIR_CONTINUE
    conn.sock.close()
    assert any(row["queue_id"] == "QPROTO3" for row in milterd.log_json())
