"""Review 15: gzip-, bzip2- and xz-compressed tars (and single compressed files) are looked into."""

from __future__ import annotations

import base64
import gzip
import io
import lzma
import tarfile
from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED, LIMIT, AttachmentPolicy
from milterd.content import archives
from milterd.content.archives import Limits, archive_kind, list_archive
from milterd.message.model import Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of

PE = b"MZ\x90\x00" + b"\x00" * 300

needs_libarchive = pytest.mark.skipif(archives.libarchive is None, reason="libarchive-c is not installed")


def tar_of(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_named(stored: str, data: bytes) -> bytes:
    """*data* gzipped with *stored* in the gzip header's FNAME field (as ``gzip -N`` keeps it)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=stored, mode="wb", fileobj=buffer) as out:
        out.write(data)
    return buffer.getvalue()


def message(filename: str, data: bytes) -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"" + filename.encode()
            + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--zz--\r\n")


@pytest.fixture()
def check(tmp_path: Path) -> AttachmentPolicy:
    # archive_process off: unit tests fork no child (tests/unit/conftest.py); the child runs the same walk.
    return attachment_check(tmp_path, "archive_process = false\n")


COMPRESSED_TARS = {
    "files.tar.gz": "w:gz",
    "files.tgz": "w:gz",
    "files.tar.bz2": "w:bz2",
    "files.tbz2": "w:bz2",
    "files.tar.xz": "w:xz",
    "files.txz": "w:xz",
}


@needs_libarchive
@pytest.mark.parametrize("name", list(COMPRESSED_TARS))
def test_exe_in_a_compressed_tar_is_banned(check: AttachmentPolicy, name: str) -> None:
    data = tar_of({"docs/readme.txt": b"hello\n", "docs/evil.exe": PE}, COMPRESSED_TARS[name])
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(message(name, data)))
    assert [(h.symbol, h.detail) for h in hits] == [(BANNED, f"{name}/docs/evil.exe: banned extension .exe")]


@needs_libarchive
def test_compressed_tar_listing() -> None:
    data = tar_of({"a.txt": b"text\n", "b/evil.scr": PE}, "w:xz")
    listing = list_archive("x.tar.xz", io.BytesIO(data), "xz", Limits())
    assert [(e.path, e.head[:2]) for e in listing.entries] == [("x.tar.xz/a.txt", b"te"), ("x.tar.xz/b/evil.scr", b"MZ")]
    assert (listing.limits, listing.errors, listing.encrypted) == ([], [], [])


@needs_libarchive
def test_nested_compressed_tar_in_a_tar() -> None:
    inner = tar_of({"deep.exe": PE}, "w:gz")
    listing = list_archive("outer.tar", io.BytesIO(tar_of({"inner.tgz": inner})), "tar", Limits())
    assert [e.path for e in listing.entries] == ["outer.tar/inner.tgz", "outer.tar/inner.tgz/deep.exe"]
    assert listing.errors == []


@needs_libarchive
def test_plain_gzip_of_clean_text_is_not_flagged(check: AttachmentPolicy) -> None:
    data = gzip.compress(b"a report, a few words a line\n" * 500)
    listing = list_archive("report.txt.gz", io.BytesIO(data), "gzip", Limits())
    assert [e.path for e in listing.entries] == ["report.txt.gz/report.txt"]  # named as gunzip names it
    assert (listing.limits, listing.errors) == ([], [])
    assert check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(message("report.txt.gz", data))) == []


@needs_libarchive
def test_plain_gzip_judged_by_its_stored_name_and_content(check: AttachmentPolicy) -> None:
    data = gzip_named("setup.exe", PE)
    listing = list_archive("setup.gz", io.BytesIO(data), "gzip", Limits())
    assert [(e.path, e.head[:2]) for e in listing.entries] == [("setup.gz/setup.exe", b""), ("setup.gz/setup", b"MZ")]
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(message("setup.gz", data)))
    assert (BANNED, "setup.gz/setup.exe: banned extension .exe") in [(h.symbol, h.detail) for h in hits]


@needs_libarchive
def test_empty_and_broken_compressed_files() -> None:
    empty = list_archive("nothing.gz", io.BytesIO(gzip.compress(b"")), "gzip", Limits())
    assert (empty.entries, empty.limits, empty.errors) == ([], [], [])
    broken = list_archive("broken.xz", io.BytesIO(lzma.compress(PE)[:20]), "xz", Limits())
    assert broken.entries == [] and broken.limits and broken.limits[0].startswith("broken.xz: unreadable xz archive")


@needs_libarchive
def test_compressed_tar_bomb_stops_at_max_size() -> None:
    # 64 MiB of zeros (64 KiB compressed) before the executable: reading past max_size is refused.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
        info = tarfile.TarInfo("evil.exe")
        info.size = len(PE)
        tar.addfile(info, io.BytesIO(PE))
    listing = list_archive("bomb.tar.gz", io.BytesIO(buffer.getvalue()), "gzip", Limits(max_size=1 << 20))
    assert [e.path for e in listing.entries] == ["bomb.tar.gz/zeros.bin"]
    assert listing.limits == [f"bomb.tar.gz: would decompress past {1 << 20} bytes, the rest not looked at"]


def test_a_plain_gzip_bomb_is_not_decompressed() -> None:
    # 256 MiB of text in one gzip: only its first bytes are read (no limit reached, nothing listed past it).
    if archives.libarchive is None:
        pytest.skip("libarchive-c is not installed")
    data = gzip.compress(b"x" * (256 << 20), compresslevel=1)
    listing = list_archive("big.log.gz", io.BytesIO(data), "gzip", Limits(max_size=1 << 20))
    assert [e.path for e in listing.entries] == ["big.log.gz/big.log"]
    assert (listing.limits, listing.errors) == ([], [])


def test_without_libarchive_compressed_files_are_left_alone(check: AttachmentPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "libarchive", None)
    data = tar_of({"evil.exe": PE}, "w:gz")
    assert archive_kind("files.tar.gz", data) is None
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(message("files.tar.gz", data)))
    assert all(h.symbol not in (BANNED, LIMIT, "ATTACH_ERROR") for h in hits), hits
