"""``milterd check`` splits a message's header section as Postfix does: a field name of any printable ASCII but ":"
(RFC 5322's ftext), and "From :" (the obsolete syntax, blanks before the colon) is a From field, not an mbox From_
line.  Before, the first ended the headers (From, Date and Message-ID judged missing) and the second was dropped."""

from __future__ import annotations

from pathlib import Path

from milterd.milter.offline import looks_like_message, sources, split_message

MESSAGE = (b"Received: from a by b\r\nX-Campaign!Id: 12345\r\nX/Odd+Name=1: yes\r\nFrom: Alice <alice@example.org>\r\n"
           b"Date: Sun, 06 Dec 2026 04:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHello\r\n")


def test_fix_field_names_of_any_printable_ascii_are_fields() -> None:
    headers, body = split_message(MESSAGE)
    assert [name for name, _ in headers] == ["Received", "X-Campaign!Id", "X/Odd+Name=1", "From", "Date", "Message-ID"]
    assert body == b"Hello\r\n"
    # A line with no colon, or a blank-led first line, still ends the headers.
    assert [name for name, _ in split_message(b"Subject: a\r\nnot a field\r\nFrom: b\r\n\r\nx")[0]] == ["Subject"]


def test_fix_from_space_colon_is_a_from_field(tmp_path: Path) -> None:
    raw = b"From : Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello\r\n"
    assert split_message(raw)[0][0] == ("From", b"Alice <alice@example.org>")
    assert looks_like_message(raw)
    (tmp_path / "m.eml").write_bytes(raw)
    assert [ref.load() for ref in sources(tmp_path / "m.eml")] == [raw]  # one message, read whole


def test_mbox_from_lines_are_still_separators(tmp_path: Path) -> None:
    mbox = b"From alice@example.org Sun Dec  6 04:00:00 2026\nSubject: one\n\nbody\n\nFrom bob@example.org Sun Dec  6 04:01:00 2026\nSubject: two\n\nbody\n"
    (tmp_path / "box").write_bytes(mbox)
    assert [ref.load() for ref in sources(tmp_path / "box")] == [b"Subject: one\n\nbody\n", b"Subject: two\n\nbody\n"]
    assert split_message(mbox.split(b"\n\nFrom bob")[0])[0] == [("Subject", b"one")]
