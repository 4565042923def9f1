"""Fourth review of the classifier: the digest (its memory, where a mailbox copy's body starts),
auto-learning (a large message, a message a scanner did not judge), ``milterd learn`` (a folder of
mboxes, large messages in flight with --jobs).

SQLite only (a temporary file).  Each test failed on the code before the fix it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.bayes import AUTOLEARN, BayesCheck
from milterd.cli import main
from milterd.commands import learn as learn_command
from milterd.config import DatabaseSection
from milterd.learner import tokenizer
from milterd.learner.tokenizer import hashed_tokens, message_digest, message_digest_stream, message_id_key, parse_headers, split_message
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.services import Services
from milterd.store import Store
from milterd.store.learner import LearnerStore
from tests.harness.memory import peak_while
from tests.unit import test_bayes_maintenance_review as bayes_review
from tests.unit.test_bayes_maintenance_review import learned

# The auto-learning review's fixture (services on a SQLite store in the test's directory, autolearn_spam 9,
# autolearn_ham -2) and its short message.
services = bayes_review.services
small_envelope = bayes_review.envelope


def reference_digest(raw: bytes) -> str:
    """message_digest as it was written before it was hashed in pieces (the definition), its
    header section ending at the first blank line (LF, CRLF or mixed)."""
    raw = raw[:tokenizer.MAX_DIGEST_READ]
    blank = re.search(rb"\n\r?\n", raw)
    section, body = (raw[:blank.start()], raw[blank.end():]) if blank else (raw, b"")
    message_id = message_id_key(parse_headers(section))
    lines = tokenizer._QUOTED_FROM.sub(b"", body.replace(b"\r\n", b"\n")).rstrip().split(b"\n")
    normalised = b"\n".join(line.rstrip() for line in lines)[:tokenizer.MAX_DIGEST_INPUT]  # the normalised body is cut
    return hashlib.sha256(message_id.encode("utf-8", "replace") + b"\0" + normalised).hexdigest()


SHORT_LINES = b"Message-ID: <big@example.org>\r\nSubject: big\r\n\r\n" + b"a\r\n" * (2 * 1024 * 1024)


# --- the digest of a large message --------------------------------------------------
def test_the_digest_of_a_message_of_short_lines_takes_bounded_memory() -> None:
    # Before: the body normalised whole, as a list of its lines: 6 MB of "a\r\n" took 250 MB
    # (30 MB: 1 GB and 5 s), in the worker that auto-learns and in milterd learn.
    digest, peak = peak_while(lambda: message_digest(SHORT_LINES))
    assert digest == reference_digest(SHORT_LINES)
    assert peak < 8 * 1024 * 1024  # pieces of 64 KB split into lines: a few MB, whatever the size


@pytest.mark.parametrize("raw", [
    b"",
    b"no separator at all",
    b"Message-ID: <1@x>\n\nbody\n>From quoted\n>>From twice\n\n\n",
    b"From a@b Thu Jan  1 00:00:00 2026\r\nMessage-ID: <1@x>\r\n\r\nbody  \r\n \r\n",
    b"Date: today\nFrom: a@b\n\n" + b"x" * 200_000 + b" \n" + b">" * 70_000 + b"From long\n",
    b"Subject: s\r\n\nmixed\r\n\r\nends",
])
def test_the_digest_is_its_definition_whole_or_in_pieces(raw: bytes) -> None:
    assert message_digest(raw) == reference_digest(raw)
    assert message_digest_stream(raw[at:at + 7] for at in range(0, len(raw), 7)) == reference_digest(raw)


def test_the_digest_on_random_messages_in_random_pieces() -> None:
    rnd = random.Random(4)
    pieces = [b"From ", b">From ", b">>From ", b"\r\n", b"\n", b"\r", b" ", b"\t", b"Message-ID: <a@b>", b"Date: x", b"From: y", b"abc", b":", b"\xff"]
    for _ in range(2000):
        raw = b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 200)))
        size = rnd.randrange(1, 40)
        assert message_digest(raw) == reference_digest(raw), raw
        assert message_digest_stream(raw[at:at + size] for at in range(0, len(raw), size)) == reference_digest(raw), raw


# --- the same message with other line ends ---------------------------------------------
def test_the_maildir_copy_of_a_message_with_stray_carriage_returns_is_the_same_message() -> None:
    # Sent with "\r\r\n" line ends (a CRLF text written in text mode): the milter and the quarantine
    # see "Hello\r\r\n\r\r\n", a Maildir copy "Hello\r\n\r\n" under LF headers.  Before, that CRLF
    # CRLF in the body ended the copy's header section: release --ham and a later learn --spam of
    # the delivered copy counted the message twice instead of moving it.
    body = b"Hello\r\r\n\r\r\nThe invoice is attached.\r\r\n"
    milter = b"Message-ID: <cr@example.org>\r\nSubject: invoice\r\n\r\n" + body
    maildir = b"Return-Path: <a@example.org>\nMessage-ID: <cr@example.org>\nSubject: invoice\n\n" + body.replace(b"\r\n", b"\n")
    assert message_digest(maildir) == message_digest(milter)
    assert message_digest_stream([milter[:20], milter[20:]]) == message_digest(maildir)


def test_a_message_id_near_64_kb_of_headers_names_every_copy_alike() -> None:
    # An announcement to 2,740 addresses: the Message-ID after the To field sits near the 64 KB of the header
    # section the digest read.  It was inside them in the Maildir's LF copy and past them in the milter's CRLF
    # one: two digests, so release --ham and a later learn --spam of the delivered copy counted it twice (found by review).
    to = b"To: " + b",\r\n ".join(b"user%04d@example.org" % i for i in range(2740)) + b"\r\n"
    milter = b"From: news@example.org\r\n" + to + b"Message-ID: <announce@example.org>\r\nSubject: news\r\n\r\nHello\r\n"
    maildir = b"Return-Path: <news@example.org>\nDelivered-To: user0001@example.org\n" + milter.replace(b"\r\n", b"\n")
    assert maildir.index(b"Message-ID") < 64 * 1024 < milter.index(b"Message-ID")
    assert message_digest(milter) == message_digest(maildir) == message_digest_stream([milter[:4096], milter[4096:]])
    assert message_digest(milter) != message_digest(milter.replace(b"<announce@", b"<other@"))


@pytest.mark.parametrize("name", ["Message-ID\u00a0", "\u2028Message-ID", "Message-ID\x1c", "\u3000Date"])
def test_a_field_name_with_unicode_blanks_is_read_as_before(name: str) -> None:
    # parse_headers strips a name as a str (Unicode blanks too); the whole-section reader stripped bytes,
    # and learned messages with such a name would have counted twice after an upgrade (second review).
    raw = f"{name}: <u@example.org>\r\nFrom: a@example.org\r\n\r\nbody\r\n".encode()
    assert message_digest(raw) == reference_digest(raw)


def test_the_fields_a_message_is_known_by_are_kept_to_a_bound() -> None:
    padded = b"Message-ID: <" + b"a" * (3 * tokenizer.MAX_KEY_FIELD) + b">\r\nSubject: x\r\n\r\nbody\r\n"
    assert message_digest(padded) == message_digest(padded.replace(b">\r\nSubject", b"b>\r\nSubject"))
    assert message_digest(padded) != message_digest(padded.replace(b"<a", b"<b", 1))


def test_lf_headers_ended_by_a_crlf_blank_line_have_their_body() -> None:
    # Before: no CRLF CRLF and no LF LF, so no body: the digest was the Message-ID's alone.
    mixed = b"Message-ID: <m@example.org>\nSubject: hi\n\r\nfirst body\r\n"
    assert message_digest(mixed) == message_digest(mixed.replace(b"\r\n", b"\n"))
    assert message_digest(mixed) != message_digest(mixed.replace(b"first", b"second"))


# --- auto-learning a large message ---------------------------------------------------
def large_envelope(tmp_path: Path) -> Envelope:
    spool = Spool(1024, str(tmp_path))
    _, body = split_message(SHORT_LINES)
    for start in range(0, len(body), 65536):
        spool.write(body[start:start + 65536])
    return Envelope(spool=spool, headers=[("Message-ID", b"<big@example.org>"), ("Subject", b"big")])


def test_auto_learning_a_large_message_never_holds_it_whole(services: Services, tmp_path: Path) -> None:
    # Before: the whole message read into memory (message_bytes) and its digest made whole.
    envelope = large_envelope(tmp_path)
    verdict = Verdict(action=Action.REJECT, score=12.0, symbols={"RULE": 12.0}, details={}, reason="")
    check = BayesCheck(services)
    result, peak = peak_while(lambda: check.on_verdict(Session(), envelope, verdict))
    assert result.details[AUTOLEARN] == "spam: learned"
    assert peak < 4 * 1024 * 1024
    # The message it learned is the message: learning the stored copy again counts nothing.
    repository = LearnerStore(services.store.engine)
    raw = envelope.message_bytes()
    assert repository.learn(message_digest(raw), hashed_tokens(raw[:services.config.learner.max_size]), "spam") == "already"
    assert repository.totals().spam == 1


# --- milterd learn on many mboxes and large messages ---------------------------------------
def configured(tmp_path: Path) -> Path:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = ""\n')
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    return conf


def open_under(folder: Path) -> int:
    """How many of this process's open files are under *folder*."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder))
        except OSError:
            continue
    return found


def test_learning_a_folder_of_mboxes_keeps_one_open_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Before: every mbox of the folder was opened (and kept open) before the first message was
    # learned: past the open-file limit (1024 by default) the next ones were unreadable.
    conf = configured(tmp_path)
    boxes = tmp_path / "archive"
    boxes.mkdir()
    for n in range(40):
        (boxes / f"{n:02}.mbox").write_bytes(b"".join(
            b"From a@example.org Mon Jan  1 00:00:00 2024\nMessage-ID: <%d.%d@x>\nSubject: list digest\n\nissue %d\n\n" % (n, m, m)
            for m in range(2)))
    opened: list[int] = []
    learn = LearnerStore.learn

    def counting(self: LearnerStore, *args: Any, **kwargs: Any) -> str:
        opened.append(open_under(boxes))
        return learn(self, *args, **kwargs)

    monkeypatch.setattr(LearnerStore, "learn", counting)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--json", "--spam", str(boxes)]) == 0
    assert len(opened) == 80 and max(opened) <= 2


class InlineFuture:
    """A finished future that tells the executor when its result is taken."""

    def __init__(self, executor: "InlineExecutor", value: Any, size: int) -> None:
        self.executor, self.value, self.size = executor, value, size

    def result(self) -> Any:
        self.executor.in_flight -= self.size
        return self.value


class InlineExecutor:
    """ProcessPoolExecutor's part that milterd learn uses, in this process: how many bytes of messages are in flight."""

    def __init__(self, max_workers: int, **_options: Any) -> None:
        self.in_flight = self.most = 0
        self.sizes: list[int] = []
        INLINE.append(self)

    def submit(self, call: Any, batch: list[bytes], *args: Any) -> InlineFuture:
        size = sum(len(raw) for raw in batch)
        self.sizes.extend(len(raw) for raw in batch)
        self.in_flight += size
        self.most = max(self.most, self.in_flight)
        return InlineFuture(self, call(batch, *args), size)

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


INLINE: list[InlineExecutor] = []


def test_jobs_keep_a_bounded_amount_of_messages_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Before: 4 × N batches of 16 messages in flight whatever their size (--jobs 4 on a folder of
    # 10 MB messages: 2.5 GB), and each message whole (the digest reads MAX_DIGEST_READ bytes).
    monkeypatch.setattr(learn_command, "ProcessPoolExecutor", InlineExecutor)
    read = 16 * 1024 * 1024  # what the digest reads at most, made smaller than the huge message
    monkeypatch.setattr(tokenizer, "MAX_DIGEST_READ", read)
    monkeypatch.setattr(learn_command, "MAX_DIGEST_READ", read)
    INLINE.clear()
    conf = configured(tmp_path)
    folder = tmp_path / "ham"
    folder.mkdir()
    attachment = b"QUJD" * (256 * 1024 // 4) + b"\n"
    for n in range(24):
        (folder / f"{n:02}.eml").write_bytes(b"Message-ID: <%d@x>\nSubject: report\n\n" % n + attachment * 4 * 2)  # 2 MB
    (folder / "huge.eml").write_bytes(b"Message-ID: <huge@x>\nSubject: huge\n\n" + attachment * (4 * 33))  # 33 MB
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--json", "--jobs", "2", "--ham", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["learned"] == 25
    executor, = INLINE
    assert max(executor.sizes) == read  # what the digest reads: the rest stays on disk
    assert executor.most <= 2 * learn_command.BATCH_BYTES + read
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 's.sqlite'}"))
    try:
        assert LearnerStore(store.engine).label(message_digest((folder / "huge.eml").read_bytes())) == "ham"
    finally:
        store.close()


# --- auto-learning a message some check did not judge --------------------------------------
AUTHENTICATED = {"SPF_PASS": -0.5, "DKIM_VALID": -0.1, "DKIM_VALID_AUTHOR": -0.1, "DMARC_PASS": -0.5, "ARC_TRUSTED": -0.5, "WHITELIST": -1.0}


@pytest.mark.parametrize("unjudged", ["SPAMD_ERROR", "SPAMD_SKIPPED_SIZE", "CLAMAV_ERROR", "CLAMAV_SKIPPED_SIZE", "CHECK_ERROR"])
def test_an_accepted_message_a_scanner_did_not_judge_is_not_learned_as_ham(services: Services, unjudged: str) -> None:
    # Before: spamd down (its default on_error is "accept"): spam passing SPF, DKIM and DMARC was
    # accepted at -2.7 without spamd's points, and learned as ham (autolearn_ham = -2).
    symbols = {**AUTHENTICATED, unjudged: 0.0}
    verdict = Verdict(action=Action.ACCEPT, score=sum(symbols.values()), symbols=symbols, details={}, reason="")
    result = BayesCheck(services).on_verdict(Session(), small_envelope(), verdict)
    assert AUTOLEARN not in result.details
    assert learned(services) == (0, 0)


@pytest.mark.parametrize(("unjudged", "counted"), [
    ("SPAMD_ERROR", (0, 0)), ("SPAMD_SKIPPED_SIZE", (0, 0)), ("CHECK_ERROR", (0, 0)),
    ("CLAMAV_ERROR", (1, 0)), ("CLAMAV_SKIPPED_SIZE", (1, 0)),  # a virus scan never lowers a score
])
def test_spam_is_learned_unless_spamd_or_a_check_might_have_said_otherwise(services: Services, unjudged: str, counted: tuple[int, int]) -> None:
    symbols = {"RBL": 6.0, "URIBL": 6.0, unjudged: 0.0}
    verdict = Verdict(action=Action.REJECT, score=12.0, symbols=symbols, details={}, reason="")
    BayesCheck(services).on_verdict(Session(), small_envelope(), verdict)
    assert learned(services) == counted


def test_with_spamd_on_spam_it_never_judged_is_not_learned(services: Services) -> None:
    # Before: [spamd] after_clamav (or a reject forced before spamd's tier) left spamd unasked and unrecorded, and
    # the message was learned as spam on the other checks' points alone.
    verdict = Verdict(action=Action.REJECT, score=12.0, symbols={"RBL": 6.0, "URIBL": 6.0}, details={}, reason="")
    spamd_on = Services(config=services.config.with_changes({"spamd.enabled": True}))
    try:
        assert AUTOLEARN not in BayesCheck(spamd_on).on_verdict(Session(), small_envelope(), verdict).details
        assert learned(services) == (0, 0)
        judged = replace(verdict, symbols={**verdict.symbols, "SPAMASSASSIN": 0.0})
        assert BayesCheck(spamd_on).on_verdict(Session(), small_envelope(), judged).details[AUTOLEARN] == "spam: learned"
    finally:
        spamd_on.close()


def test_what_a_message_carries_does_not_count_towards_auto_learning(services: Services) -> None:
    # spamd judged the site's words 0.5: the 18 points of EICAR and the attachments are not evidence about them.
    carried = {"CLAMAV_VIRUS": 5.0, "ATTACH_BANNED": 5.0, "ATTACH_DOUBLE_EXT": 5.0, "ATTACH_TYPE_MISMATCH": 3.0}
    verdict = Verdict(action=Action.REJECT, score=21.5, symbols={**carried, "HDR_FROM_MISSING": 2.0, "HDR_DATE_PAST": 1.0, "SPAMASSASSIN": 0.5}, details={}, reason="")
    assert AUTOLEARN not in BayesCheck(services).on_verdict(Session(), small_envelope(), verdict).details
    assert learned(services) == (0, 0)
    spam = Verdict(action=Action.REJECT, score=30.0, symbols={**carried, "SPAMASSASSIN": 12.0}, details={}, reason="")
    assert BayesCheck(services).on_verdict(Session(), small_envelope(), spam).details[AUTOLEARN] == "spam: learned"


def test_a_message_every_check_judged_is_still_learned_as_ham(services: Services) -> None:
    verdict = Verdict(action=Action.ACCEPT, score=-2.7, symbols={**AUTHENTICATED, "SPAMASSASSIN": -0.5}, details={}, reason="")
    assert BayesCheck(services).on_verdict(Session(), small_envelope(), verdict).details[AUTOLEARN] == "ham: learned"
    assert learned(services) == (0, 1)
