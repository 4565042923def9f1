"""The corpus row's pure parts: message preparation, the labelled subset, client addresses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from bench.corpus import LISTED_NET, client_for, folders, select, to_smtp


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


def _folders(root: Path) -> Path:
    for group, count in (("easy-ham-1", 8), ("easy-ham-2", 6), ("hard-ham-1", 4), ("spam-1", 5), ("spam-2", 3)):
        (root / group).mkdir(parents=True)
        for i in range(count):
            (root / group / f"{i:05d}.txt").write_bytes(f"Subject: {group} {i}\n\nbody\n".encode())
    return root


def test_folders_split_by_time_with_hard_ham_cut_in_half_by_file_name(tmp_path: Path) -> None:
    data = _folders(tmp_path)
    training, evaluation = folders(data, "training"), folders(data, "evaluation")
    names = {which: {label: [f"{p.parent.name}/{p.name}" for p in paths] for label, paths in got.items()}
             for which, got in (("training", training), ("evaluation", evaluation))}
    assert names["training"]["spam"] == [f"spam-1/{i:05d}.txt" for i in range(5)]
    assert names["evaluation"]["spam"] == [f"spam-2/{i:05d}.txt" for i in range(3)]
    assert names["training"]["ham"][-2:] == ["hard-ham-1/00000.txt", "hard-ham-1/00001.txt"]
    assert names["evaluation"]["ham"][-2:] == ["hard-ham-1/00002.txt", "hard-ham-1/00003.txt"]
    assert not set(names["training"]["ham"]) & set(names["evaluation"]["ham"])
    assert sum(len(v) for v in folders(data).values()) == 26


def test_select_from_the_evaluation_folders_never_sends_a_training_message(tmp_path: Path) -> None:
    data = _folders(tmp_path)
    training = {p.read_bytes().replace(b"\n", b"\r\n") for paths in folders(data, "training").values() for p in paths}
    subset = select(data, 10, which="evaluation")
    assert subset and not {m.data for m in subset} & training
    assert all(b"spam-2" in m.data for m in subset if m.label == "spam")
