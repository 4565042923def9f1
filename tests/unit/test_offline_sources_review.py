"""The messages ``milterd learn`` and ``milterd check`` read from a folder: a FIFO or device in a Maildir fails as
one in a plain folder does (mailbox.Maildir opened it and waited for ever), and linked folders are followed."""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

import pytest

from milterd.milter.offline import sources

MESSAGE = b"From: a@example.com\nSubject: cheap pills\nMessage-ID: <p1@example.com>\n\nbuy cheap pills now\n"


def read(path: Path) -> list[tuple[str, bytes | str]]:
    """Each message's label and bytes, or the error reading it gives."""
    found: list[tuple[str, bytes | str]] = []
    for ref in sources(path):
        try:
            found.append((ref.label, ref.load()))
        except OSError as exc:
            found.append((ref.label, exc.strerror or str(exc)))
    return found


def maildir(path: Path) -> Path:
    for folder in ("cur", "new", "tmp"):
        (path / folder).mkdir(parents=True)
    return path


def test_fix_a_fifo_in_a_maildir_is_a_message_that_fails(tmp_path: Path) -> None:
    box = maildir(tmp_path / "Maildir")
    (box / "cur" / "1000.1.host:2,S").write_bytes(MESSAGE)
    os.mkfifo(box / "cur" / "2000.2.host:2,S")
    (box / "new" / ".hidden").write_bytes(MESSAGE)
    (box / "new" / "sub").mkdir()
    # The old code opened the FIFO through mailbox.Maildir and waited for a writer: learn and check hung.
    assert read(box) == [(f"{box}/1000.1.host", MESSAGE), (f"{box}/2000.2.host", "not a regular file")]
    assert read(tmp_path) == read(box)  # a Maildir found in a folder


def test_fix_a_link_to_a_device_in_a_maildir_is_not_read(tmp_path: Path) -> None:
    box = maildir(tmp_path / "Maildir")
    (box / "new" / "1.x").symlink_to("/dev/zero")
    first = next(iter(sources(box)))
    with pytest.raises(OSError, match="not a regular file"):
        first.start(100)  # check read /dev/zero without bound: 1.25 GB under a 1.5 GB limit


def test_maildir_messages_are_as_mailbox_gives_them(tmp_path: Path) -> None:
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    keys = [box.add(MESSAGE.replace(b"p1", b"p%d" % i)) for i in range(3)]
    assert read(tmp_path / "Maildir") == [(f"{tmp_path}/Maildir/{key}", box.get_bytes(key)) for key in sorted(keys)]
    ref = next(iter(sources(tmp_path / "Maildir")))
    assert ref.start(10) == box.get_bytes(sorted(keys)[0])[:10]


def test_fix_linked_folders_are_followed_once(tmp_path: Path) -> None:
    (tmp_path / "users" / "alice" / "Junk").mkdir(parents=True)
    (tmp_path / "users" / "alice" / "Junk" / "m1.eml").write_bytes(MESSAGE)
    box = maildir(tmp_path / "users" / "bob" / "Junk")
    (box / "new" / "2.y").write_bytes(MESSAGE)
    train = tmp_path / "train"
    train.mkdir()
    (train / "alice").symlink_to(tmp_path / "users" / "alice" / "Junk")
    (train / "bob").symlink_to(box)
    (train / "loop").symlink_to(train)  # a link back up: walked once
    # The old code skipped linked folders silently: "0 messages: nothing done".
    assert [label for label, _ in read(train)] == [f"{train}/alice/m1.eml", f"{train}/bob/2.y"]
