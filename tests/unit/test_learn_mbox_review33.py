"""An mbox's next message starts at a From_ line with its date (review, thirty-third session).

A message saved with its From_ line (the SpamAssassin corpus's layout) whose body had a paragraph starting
"From " after a blank line ("From the desk of Dr. Bob", a 419 scam's) was cut in two: the rest never learned,
"not a mail message" for the second part, and the part learned counted apart from the whole message."""

from __future__ import annotations

from pathlib import Path

from milterd.milter.offline import sources

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
    from milterd.milter.offline import looks_like_message

    assert not looks_like_message(b"From a@b Mon Jan  1 00:00:00 2024\n")
    assert not looks_like_message(b"\nFrom a@b Mon Jan  1 00:00:00 2024")
    assert looks_like_message(b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n")
    assert looks_like_message(b"From a@b " + b"z" * 600)  # a From_ line longer than what is looked at
    assert looks_like_message(b"Subject: x\n\nbody\n")
