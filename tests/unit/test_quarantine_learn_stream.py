"""Learning a quarantined message from its stored pieces (the digest streamed, never the message
whole), the quarantine list's LIMIT in the SQL, and the CPython email corpus taken from every folder."""

from __future__ import annotations

import base64
import random
import sys
import tracemalloc
import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from milterd.config import load_config
from milterd.learner import tokenizer
from milterd.learner.tokenizer import MessageDigest, hashed_tokens, message_digest, message_digest_stream
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord, Store, utcnow
from milterd.store.learner import LearnerStore
from milterd.store.quarantine import QuarantineStore, QuarantineWrite, pieces
from tests.harness import corpora
from tests.harness.milterd import write_config

HEAD = b"Received: from relay.example.net\r\nFrom: Alice <alice@example.org>\r\nSubject: lunch\r\nDate: Wed, 01 May 2024 12:00:00 +0000\r\n"
BODY = b"Shall we meet for lunch?  \r\n>From the usual place\r\n>>From here\r\n\r\nbye\t\r\n\r\n \r\n"


def variants() -> list[bytes]:
    """Messages whose digest's normalisation has something to do."""
    large = base64.encodebytes(random.Random(5).randbytes(3 * 1024 * 1024)).replace(b"\n", b"\r\n")
    crlf = [
        HEAD + b"Message-ID: <1@example.org>\r\n\r\n" + BODY,
        HEAD + b"Message-ID:\r\n <folded@example.org>\r\n\r\n" + BODY,  # folded: the key is unfolded
        HEAD + b"\r\n" + BODY,  # no Message-ID: Date and From
        b"From alice@example.org Wed May  1 12:00:00 2024\r\n" + HEAD + b"\r\n" + BODY,  # an mbox's From_ line
        HEAD + b"Message-ID: <big@example.org>\r\n\r\n" + BODY + large + b">From the end\r\n\r\n\r\n",
        HEAD + b"\r\n" + b">" * 300_000 + b"From a long line" + b" " * 200_000 + b"x" + b"\t" * 100_000 + b"\r\n\r\n",
        HEAD + b"\r\n" + b">" * 300_000 + b"Fro",
        HEAD,  # no body
        HEAD + b"\r\n" + b"\r\n \r\n\t\r\n",  # a blank body
        b"",
    ]
    lf = [raw.replace(b"\r\n", b"\n") for raw in crlf]
    mixed = [
        HEAD.replace(b"\r\n", b"\n") + b"\n" + BODY + b"a CRLF CRLF later\r\n\r\nends the section there\n",
        HEAD.replace(b"\r\n", b"\n") + b"Message-ID: <lf@example.org>\n\n" + BODY.replace(b"\r\n", b"\n") + large,
    ]
    return crlf + lf + mixed


def cut(raw: bytes, rng: random.Random) -> list[bytes]:
    """*raw* in pieces cut at random places (the store's pieces are 64 KiB; any cut must do)."""
    cuts = sorted(rng.randrange(len(raw) + 1) for _ in range(rng.randint(0, 20)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def test_the_streamed_digest_is_message_digest() -> None:
    rng = random.Random(1)
    for raw in variants():
        expected = message_digest(raw)
        assert message_digest_stream([raw]) == expected
        assert message_digest_stream(pieces([raw])) == expected
        assert message_digest_stream(pieces([raw], 7)) == expected
        for _ in range(5):
            assert message_digest_stream(cut(raw, rng)) == expected, raw[:200]
    small = variants()[0]
    assert message_digest_stream([bytes([byte]) for byte in small]) == message_digest(small)
    assert message_digest_stream(pieces([small.replace(b"lunch", b"dinner")])) != message_digest(small)


def test_the_streamed_digest_on_random_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random mixes of what the normalisation looks at, cut at random, with tiny bounds so that
    every path (a line longer than the bound, the input cut, the header section cut) is taken."""
    rng = random.Random(2)
    alphabet = [
        b">", b">>", b"From ", b"Fro", b"m ", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x", b"abc", b"\x0b", b"\x0c",
        b"\n\n", b"\r\n\r\n", b"Message-ID: <a@b>\n", b"message-id:\r\n <c@d>\r\n", b"Date: x\r\n", b" folded\r\n", b"\xff", b"From: q\n",
    ]
    for _ in range(3000):
        monkeypatch.setattr(tokenizer, "_LINE_CAP", rng.choice([1, 2, 3, 5, 8, 64, 65536]))
        monkeypatch.setattr(tokenizer, "MAX_DIGEST_INPUT", rng.choice([5, 17, 40, 10**9]))
        monkeypatch.setattr(tokenizer, "MAX_DIGEST_READ", rng.choice([5, 17, 40, 10**9]))
        monkeypatch.setattr(tokenizer, "MAX_HEADER_SECTION", rng.choice([3, 10, 65536]))
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert message_digest_stream(cut(raw, rng)) == message_digest(raw), raw


def test_the_streamed_digest_reads_what_message_digest_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_DIGEST_INPUT bytes of the normalised body, or MAX_DIGEST_READ bytes read, nothing counts, as in
    message_digest (bounds made small here)."""
    monkeypatch.setattr(tokenizer, "MAX_DIGEST_INPUT", 1000)
    monkeypatch.setattr(tokenizer, "MAX_DIGEST_READ", 1000)
    for raw in (b"Message-ID: <cap@example.org>\n\n" + b"word\n" * 300, b"Message-ID: <cap@example.org>\n" + b"X: y\n" * 300 + b"\nbody\n"):
        digest = MessageDigest()
        for piece in pieces([raw], 64):
            digest.update(piece)
        assert digest.hexdigest() == message_digest(raw) == message_digest(raw + b"more\n")


# --- the quarantine -----------------------------------------------------------------
@pytest.fixture()
def quarantine(tmp_path: Path) -> Quarantine:
    conf = write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
    })
    config = load_config(conf)
    store = Store(config.database)
    store.upgrade()
    return Quarantine(store, config)


def add(quarantine: Quarantine, raw: bytes, sender: str = "alice@example.org", recipient: str = "bob@example.com") -> int:
    """Store one quarantined message as the pipeline does (in pieces); its id."""
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender=sender, recipients=[recipient], subject="s", score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": sender, "recipients": [recipient], "subject": "s", "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {"TEST": 13.0}, "size": len(raw), "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: pieces([raw])))
    return int(QuarantineStore(quarantine.store.engine).rows()[0]["id"])


def test_learning_a_30_mb_message_never_holds_it_whole(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    body = base64.encodebytes(random.Random(3).randbytes(22 * 1024 * 1024)).replace(b"\n", b"\r\n")
    raw = HEAD + b"Message-ID: <big@example.org>\r\n\r\n" + BODY + body
    assert len(raw) > 30 * 1024 * 1024
    row = quarantine.get(add(quarantine, raw))
    learned: list[tuple[str, list[int]]] = []
    real_learn = LearnerStore.learn

    def spy(self: LearnerStore, digest: str, tokens: list[int], label: Any, now: Any = None) -> str:
        learned.append((digest, list(tokens)))
        return real_learn(self, digest, tokens, label, now)

    def whole(*args: Any) -> bytes:
        raise AssertionError("the message was read whole")

    monkeypatch.setattr(LearnerStore, "learn", spy)
    monkeypatch.setattr(Quarantine, "message_bytes", whole)
    tracemalloc.start()
    try:
        outcome = quarantine.learn(row, "spam")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome == "milterd's classifier: spam learned"
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert learned == [(message_digest(raw), hashed_tokens(raw[: quarantine.config.learner.max_size]))]
    # Learned once, whatever the path: what `milterd learn` or auto-learn would send is the same message.
    assert LearnerStore(quarantine.store.engine).learn(message_digest(raw), hashed_tokens(raw[:1000]), "spam") == "already"


def test_learning_from_the_quarantine_is_the_learning_of_the_message(quarantine: Quarantine) -> None:
    messages = variants()
    for raw in messages[:3]:
        outcome = quarantine.learn(quarantine.get(add(quarantine, raw)), "ham")
        assert outcome == "milterd's classifier: ham learned"
        assert LearnerStore(quarantine.store.engine).learn(message_digest(raw), hashed_tokens(raw), "ham") == "already"
    # The same message as an mbox holds it (a From_ line first): already learned.
    assert quarantine.learn(quarantine.get(add(quarantine, messages[3])), "ham") == "milterd's classifier: ham already"


# --- the list's limit -------------------------------------------------------------------
def statements(quarantine: Quarantine) -> list[str]:
    """The SQL sent from now on (a spy on the engine)."""
    sent: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(quarantine.store.engine, "before_cursor_execute", seen)
    return sent


def test_the_limit_is_in_the_sql(quarantine: Quarantine) -> None:
    for number in range(50):
        add(quarantine, b"Subject: %d\r\n\r\nbody\r\n" % number, sender=f"s{number % 3}@example.org")
    repo = QuarantineStore(quarantine.store.engine)
    every = repo.rows()
    assert len(every) == 50 and [row["id"] for row in every] == sorted((row["id"] for row in every), reverse=True)
    sent = statements(quarantine)
    assert repo.rows(limit=5) == every[:5]
    assert len(sent) == 1 and "LIMIT" in sent[0].upper()
    assert repo.rows(sender="s1@example.org", limit=5) == [row for row in every if row["sender"] == "s1@example.org"][:5]
    assert repo.rows(limit=0) == [] and len(repo.rows(limit=None)) == 50


def test_the_quarantine_list_limit_is_in_the_sql(quarantine: Quarantine) -> None:
    for number in range(50):
        add(quarantine, b"Subject: %d\r\n\r\nbody\r\n" % number, recipient=f"r{number % 2}@example.com")
    every = quarantine.rows()
    sent = statements(quarantine)
    assert quarantine.rows(limit=5) == every[:5]
    assert "LIMIT" in sent[-1].upper()
    # A filter applied after the SQL: the limit must not be in it.
    assert quarantine.rows(recipient="r1@example.com", limit=5) == [row for row in every if row["recipients"] == ["r1@example.com"]][:5]
    assert "LIMIT" not in sent[-1].upper()


# --- tests/harness/corpora.py -----------------------------------------------------------
def test_the_cpython_corpus_is_taken_from_every_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each name once, from the fullest folder holding it (this interpreter's may lack some Debian's has, or the reverse)."""
    small, full = tmp_path / "small", tmp_path / "full"
    for root, names in ((small, ["msg_x1.txt", "msg_x2.txt"]), (full, ["msg_x2.txt", "msg_x3.txt", "msg_x4.txt"])):
        (root / "test_email" / "data").mkdir(parents=True)
        for name in names:
            (root / "test_email" / "data" / name).write_text(f"{root.name}\n")
    fake = types.ModuleType("test")
    fake.__path__ = [str(small), str(full)]
    monkeypatch.setitem(sys.modules, "test", fake)
    found = corpora.cpython_email_messages()
    ours = {path.name: path.read_text() for path in found if path.name.startswith("msg_x")}
    assert ours == {"msg_x1.txt": "small\n", "msg_x2.txt": "full\n", "msg_x3.txt": "full\n", "msg_x4.txt": "full\n"}
    assert [path.name for path in found] == sorted(path.name for path in found)
    assert len(found) == len({path.name for path in found})
    folder = corpora.cpython_email_data()
    assert folder is not None and len(list(folder.glob("msg_*.txt"))) == max(len(list(f.glob("msg_*.txt"))) for f in {path.parent for path in found})
