"""The corpus row's pure parts: message preparation, the labelled subset, client addresses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from bench.corpus import LISTED_NET, client_for, select, to_smtp


def test_to_smtp_drops_the_mbox_line_and_uses_crlf() -> None:
    raw = b"From someone@example.org  Thu Aug 22 13:17:22 2002\nSubject: hi\n\nbody\r\nline\n"
    assert to_smtp(raw) == b"Subject: hi\r\n\r\nbody\r\nline\r\n"
    assert to_smtp(b"Subject: x\n\ny\n") == b"Subject: x\r\n\r\ny\r\n"


def _corpus(root: Path, ham: int, spam: int) -> Path:
    for group, count in (("easy-ham-1", ham), ("spam-1", spam)):
        (root / group).mkdir(parents=True)
        for i in range(count):
            (root / group / f"{i:05d}.txt").write_bytes(f"From x\nSubject: {group} {i}\n\nbody\n".encode())
    return root


def test_select_keeps_the_spam_share_and_is_reproducible(tmp_path: Path) -> None:
    data = _corpus(tmp_path, ham=70, spam=30)
    subset = select(data, 20)
    assert len(subset) == 20 and sum(m.label == "spam" for m in subset) == 6
    assert [m.data for m in select(data, 20)] == [m.data for m in subset]
    assert all(m.data.startswith(b"Subject: ") for m in subset)
    assert len(select(data, 500)) == 100  # bounded by the corpus


def test_spam_comes_from_listed_clients_and_ham_from_unlisted_ones() -> None:
    listed = ipaddress.ip_network(LISTED_NET)
    for index in range(300):
        assert ipaddress.ip_address(client_for("spam", index)["ADDR"]) in listed
        assert ipaddress.ip_address(client_for("ham", index)["ADDR"]) not in listed
    half = [ipaddress.ip_address(client_for("spam", i, listed_share=0.5)["ADDR"]) in listed for i in range(100)]
    assert sum(half) == 50
