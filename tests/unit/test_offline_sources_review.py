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
    (train / "bob" / "new" / "twice").symlink_to(tmp_path / "users" / "alice" / "Junk")  # walked already: once
    # The old code skipped linked folders silently: "0 messages: nothing done".
    assert [label for label, _ in read(train)] == [f"{train}/alice/m1.eml", f"{train}/bob/2.y"]


@pytest.mark.parametrize("target", ["/", "/proc", "/proc/self/root", "..", "."])
def test_fix_links_above_the_folder_or_to_system_folders_are_said_and_not_followed(tmp_path: Path, target: str) -> None:
    train = tmp_path / "train"
    train.mkdir()
    (train / "m1.eml").write_bytes(MESSAGE)
    (train / "link").symlink_to(target)
    # A link to / or /proc walked the whole system (/proc/PID/root), learning whatever looked like mail there.
    assert read(train) == [(f"{train}/m1.eml", MESSAGE), (f"{train}/link", "a link to a folder above the one named or to a system folder: not followed")]


def test_fix_a_message_renamed_after_the_listing_is_read_under_its_new_name(tmp_path: Path) -> None:
    box = maildir(tmp_path / "Maildir")
    (box / "new" / "1.host").write_bytes(MESSAGE)
    (box / "cur" / "2.host:2,").write_bytes(MESSAGE.replace(b"p1", b"p2"))
    refs = list(sources(box))
    # The server renames as clients read and flag: new/1.host to cur/1.host:2,S, cur/2.host:2, to cur/2.host:2,RS.
    (box / "new" / "1.host").rename(box / "cur" / "1.host:2,S")
    (box / "cur" / "2.host:2,").rename(box / "cur" / "2.host:2,RS")
    assert [ref.load() for ref in refs] == [MESSAGE, MESSAGE.replace(b"p1", b"p2")]
    assert refs[0].start(4) == MESSAGE[:4]
    (box / "cur" / "1.host:2,S").unlink()  # expunged: gone under every name
    with pytest.raises(FileNotFoundError):
        refs[0].load()


def test_fix_a_link_that_cannot_be_followed_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = maildir(tmp_path / "Maildir")
    (box / "cur" / "1.host:2,S").write_bytes(MESSAGE)
    (box / "cur" / "2.host:2,S").symlink_to(tmp_path / "private" / "m")
    real = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith("2.host:2,S"):
            raise PermissionError(13, "Permission denied", str(path))  # a link into a folder this account cannot search
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    # Path.is_dir raised EACCES while listing: "<maildir>: Permission denied", every message of it lost.
    assert [label for label, _ in read(box)] == [f"{box}/1.host", f"{box}/2.host"]


def test_fix_a_maildir_whose_messages_all_moved_is_listed_again_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.milter import offline

    box = maildir(tmp_path / "Maildir")
    for n in range(50):
        (box / "new" / f"{n}.host").write_bytes(MESSAGE)
    refs = list(sources(box))
    for n in range(50):  # the server moves them all to cur/ when a client opens the folder
        (box / "new" / f"{n}.host").rename(box / "cur" / f"{n}.host:2,")
    listed = []
    real = offline._maildir_files
    monkeypatch.setattr(offline, "_maildir_files", lambda path: listed.append(path) or real(path))
    assert [ref.load() for ref in refs] == [MESSAGE] * 50
    assert len(listed) == 1  # once for each message: 20,000 moved messages took 2,800 s


def test_fix_a_message_renamed_after_the_folder_was_listed_again_is_found(tmp_path: Path) -> None:
    box = maildir(tmp_path / "Maildir")
    for key in ("1.A", "2.B", "3.C"):
        (box / "new" / key).write_bytes(MESSAGE.replace(b"p1", key.encode()))
    refs = list(sources(box))
    (box / "new" / "1.A").rename(box / "cur" / "1.A:2,S")
    assert b"1.A" in refs[0].load()  # the folder listed again
    os.utime(box / "new", ns=(1, 1))  # a time before the listing's: the next rename must show all the same
    (box / "new" / "2.B").rename(box / "cur" / "2.B:2,S")  # marked read a moment later
    # The second rename within a second was taken for an expunge: "No such file or directory", learn exited 1.
    assert b"2.B" in refs[1].load()
    (box / "new" / "3.C").unlink()  # expunged
    with pytest.raises(FileNotFoundError):
        refs[2].load()
