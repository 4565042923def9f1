"""An mbox's next message starts at a From_ line with its date (review, thirty-third session).

A message saved with its From_ line (the SpamAssassin corpus's layout) whose body had a paragraph starting
"From " after a blank line ("From the desk of Dr. Bob", a 419 scam's) was cut in two: the rest never learned,
"not a mail message" for the second part, and the part learned counted apart from the whole message."""

from __future__ import annotations

import random
import re
from pathlib import Path

from milterd.milter.offline import _separator, looks_like_message, sources

SAVED = (
    b"From bob@scam.test Mon Jan  1 00:00:00 2024\n"
    b"From: Dr. Bob <bob@scam.test>\nSubject: urgent\nMessage-ID: <1@scam.test>\n\n"
    b"Dear Friend,\n\nFrom the desk of Dr. Bob, Lagos 2024\n\n"
    b"From Monday, 1 July 2024, our office hours are 9:00 to 17:00.\n\n"  # a time and a year, but no date after a sender
    b"From 9:00 to 17:00 every weekday in 2025.\n\nI have 25 million dollars for you.\n"
)


def test_a_saved_message_s_from_paragraph_does_not_split_it(tmp_path: Path) -> None:
    path = tmp_path / "419.eml"
    path.write_bytes(SAVED)
    [message] = sources(path)
    assert b"25 million dollars" in message.load() and b"Dear Friend" in message.load()


def test_dated_separators_still_split_an_mbox(tmp_path: Path) -> None:
    second = b"From alice@example.org Thu, 4 Jan 2024 10:11:12 +0000\nSubject: two\n\nbody two\n"
    third = b"From - Fri Jan  5 09:00:00 2024\nSubject: three\n\nbody three\n"  # Thunderbird's
    takeout = b"From 1234567890@xxx Mon Jan 01 00:00:00 +0000 2024\nSubject: four\n\nbody four\n"  # Gmail Takeout's
    old = b"From MAILER-DAEMON Fri Jul  8 12:08:34 93\nSubject: five\n\nbody five\n"  # a two-digit year
    path = tmp_path / "box.mbox"
    path.write_bytes(SAVED + b"\n" + second + b"\n" + third + b"\n" + takeout + b"\n" + old)
    loaded = [ref.load() for ref in sources(path)]
    assert len(loaded) == 5 and loaded[4].startswith(b"Subject: five")
    assert b"25 million dollars" in loaded[0] and loaded[1].startswith(b"Subject: two") and loaded[2].startswith(b"Subject: three")


def test_a_from_line_alone_is_no_message(tmp_path: Path) -> None:
    """A truncated mbox of a From_ line alone was learned as a message of no words (one more spam in the totals)."""
    assert not looks_like_message(b"From a@b Mon Jan  1 00:00:00 2024\n")
    assert not looks_like_message(b"\nFrom a@b Mon Jan  1 00:00:00 2024")
    assert looks_like_message(b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n")
    assert looks_like_message(b"From a@b " + b"z" * 600)  # a From_ line longer than what is looked at
    assert looks_like_message(b"Subject: x\n\nbody\n")


def test_the_separator_s_date_is_read_as_the_one_pattern_read_it() -> None:
    """The weekday, time and year are searched one after the other (one pattern with ".*" between them backtracked:
    5 s of CPU for a line of 16,000 "Mon"): the lines it takes are the ones that pattern took."""
    pattern = re.compile(rb"(?:^|\s)(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),?\s.*\b\d{1,2}:\d{2}\b.*\b\d{2,4}\b")
    pieces = [b"Mon", b"Fri,", b" ", b"  ", b"Jan", b"1", b"01", b"12:08", b"0:00:00", b":", b"93", b"2024", b"+0000", b"x", b"Monday", b"\t"]
    rng = random.Random(33)
    for _ in range(20_000):
        line = b"From a@b " + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        rest = line[5:].split(None, 1)
        assert _separator(line) == (len(rest) == 2 and bool(pattern.search(rest[1]))), line
