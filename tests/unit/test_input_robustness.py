"""Administrators' input files (``milterd check`` / ``milterd learn`` PATHs) and zip archives that lie or overwhelm."""

from __future__ import annotations

import errno
import io
import os
import struct
import threading
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from milterd.cli import main
from milterd.commands.learn import _batches
from milterd.content.archives import Limits, list_archive
from milterd.milter.offline import MessageRef, sources
from tests.conftest import message

PE = b"MZ\x90\x00" + b"\x00" * 300


# --- one bad file in a directory -----------------------------------------------------
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A directory of two messages around a dangling symlink, a third one below."""
    root = tmp_path / "mail"
    (root / "sub").mkdir(parents=True)
    (root / "a.eml").write_bytes(message(subject="one"))
    (root / "b.eml").symlink_to(root / "gone.eml")
    (root / "sub" / "c.eml").write_bytes(message(subject="three"))
    return root


def outcomes(refs: list[MessageRef]) -> dict[str, str]:
    """Each ref's label and what loading it gives: "ok" or the OSError's errno name."""
    found = {}
    for ref in refs:
        try:
            ref.load()
            found[ref.label] = "ok"
        except OSError as exc:
            found[ref.label] = errno.errorcode.get(exc.errno or 0, str(exc))
    return found


def test_a_dangling_symlink_is_reported_alone_and_the_rest_of_the_directory_is_read(folder: Path) -> None:
    assert outcomes(list(sources(folder))) == {f"{folder}/a.eml": "ok", f"{folder}/b.eml": "ENOENT", f"{folder}/sub/c.eml": "ok"}


def test_a_symlink_loop_is_reported_alone(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(message())
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert outcomes(list(sources(tmp_path))) == {f"{tmp_path}/a.eml": "ok", f"{tmp_path}/loop": "ELOOP"}


def _sources_within(path: Path, fifo: Path, seconds: float = 5.0) -> list[MessageRef] | OSError | None:
    """sources(*path*) listed in a thread: its refs, its error, or None when it hung (on opening *fifo*)."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(list(sources(path)))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        # Release the reader blocked in open(): a writer that closes at once gives it end of file.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
        return None
    return result[0]  # type: ignore[no-any-return]


def test_a_fifo_in_a_directory_neither_hangs_nor_hides(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(message())
    os.mkfifo(tmp_path / "pipe")
    refs = _sources_within(tmp_path, tmp_path / "pipe")
    assert isinstance(refs, list), "sources() blocked on the FIFO"
    assert outcomes(refs) == {f"{tmp_path}/a.eml": "ok", f"{tmp_path}/pipe": "EINVAL"}
    with pytest.raises(OSError, match="not a regular file"):
        next(ref for ref in refs if ref.label.endswith("pipe")).load()


def test_a_fifo_named_on_the_command_line_is_an_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    found = _sources_within(tmp_path / "pipe", tmp_path / "pipe")
    assert isinstance(found, OSError) and "not a regular file" in str(found)


def test_a_subdirectory_that_cannot_be_listed_is_reported(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root chmod 000 does not stop a listing: refuse it where os.walk lists.
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path) == str(folder / "sub"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert outcomes(list(sources(folder))) == {f"{folder}/a.eml": "ok", f"{folder}/b.eml": "ENOENT", f"{folder}/sub": "EACCES"}


def test_learn_counts_the_bad_file_and_learns_the_others(folder: Path) -> None:
    errors: Counter[str] = Counter()
    failures: list[str] = []
    learned = [raw for batch in _batches([folder], errors, failures) for raw in batch]
    assert len(learned) == 2
    assert errors == Counter(unreadable=1) and failures == [f"{folder}/b.eml: No such file or directory"]


def test_check_judges_the_others_and_names_the_bad_file(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    status = main(["check", "-c", str(conf), str(folder)])
    out, err = capsys.readouterr()
    assert status == 1  # a message could not be read
    assert "3 messages:" in out and "error 1" in out and "accept 2" in out
    assert f"{folder}/b.eml" in out + err and "No such file or directory" in out + err


# --- a zip's central directory before the member limit -------------------------------
def many_entries_zip(count: int, declared: int | None = None, zip64: bool = False) -> bytes:
    """A zip of one stored PE, ``a.exe``, named by *count* central directory entries (``a.exe``, then ``1.txt``…),
    all pointing at the same local header; its end record declares *declared* entries (default: *count*)."""
    name = b"a.exe"
    crc = zipfile.crc32(PE)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(PE), len(PE), len(name), 0) + name + PE
    central = b"".join(
        struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(PE), len(PE), len(entry), 0, 0, 0, 0, 0, 0) + entry
        for entry in [name] + [f"{i}.txt".encode() for i in range(1, count)]
    )
    total = count if declared is None else declared
    end = b""
    if zip64:
        record_at = len(local) + len(central)
        end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, len(central), len(local))
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, record_at, 1)
        total = 0xFFFF
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(total, 0xFFFF), min(total, 0xFFFF), len(central), len(local), 0)
    return local + central + end


def test_the_helper_builds_zips_that_zipfile_reads() -> None:
    for data in (many_entries_zip(3), many_entries_zip(3, zip64=True)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.namelist() == ["a.exe", "1.txt", "2.txt"] and archive.read("a.exe") == PE


@pytest.mark.parametrize("zip64", [False, True])
def test_a_zip_declaring_far_more_entries_than_the_limit_is_not_parsed(zip64: bool, directory_reads: list[int]) -> None:
    listing = list_archive("many.zip", io.BytesIO(many_entries_zip(5000, zip64=zip64)), "zip", Limits(max_members=10))
    assert directory_reads == [] and listing.entries == [] and listing.errors == []
    assert listing.limits == ["many.zip: past 10 members (5000 entries declared), not looked at"]


def test_a_zip_just_past_the_limit_is_still_listed_up_to_it(directory_reads: list[int]) -> None:
    listing = list_archive("some.zip", io.BytesIO(many_entries_zip(50)), "zip", Limits(max_members=10))
    assert directory_reads == [1] and len(listing.entries) == 10 and listing.entries[0].path == "some.zip/a.exe"


def test_a_zip_lying_about_its_entry_count_is_listed_as_today(directory_reads: list[int]) -> None:
    # 200,000 entries claimed, but the central directory has room for 2: zipfile reads the two.
    listing = list_archive("liar.zip", io.BytesIO(many_entries_zip(2, declared=200_000)), "zip", Limits(max_members=10))
    assert directory_reads == [1] and [e.path for e in listing.entries] == ["liar.zip/a.exe", "liar.zip/1.txt"]


def test_a_zip_without_an_end_record_is_an_error_and_listed_as_unzip_lists_it() -> None:
    """zipfile cannot open it; unzip and libarchive extract a.exe from its local header."""
    data = many_entries_zip(3)
    listing = list_archive("cut.zip", io.BytesIO(data[:-22]), "zip", Limits())
    assert [e.path for e in listing.entries] == ["cut.zip/a.exe"]
    assert listing.errors and listing.errors[0].startswith("cut.zip: unreadable zip archive")


def test_a_nested_zip_past_the_remaining_members_is_not_parsed(directory_reads: list[int]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as outer:
        outer.writestr("first.txt", b"x")
        outer.writestr("inner.zip", many_entries_zip(3000))
        outer.writestr("last.exe", PE)
    listing = list_archive("outer.zip", buffer, "zip", Limits(max_members=1000))
    assert directory_reads == [1]  # the outer one only
    assert "outer.zip/inner.zip: past 1000 members (3000 entries declared), not looked at" in listing.limits
    # Its members were not looked at, so they spent none of the budget: the outer zip's last member is judged.
    assert [e.path for e in listing.entries] == ["outer.zip/first.txt", "outer.zip/inner.zip", "outer.zip/last.exe"]
