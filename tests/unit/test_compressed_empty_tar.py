"""A compressed file whose content starts as an empty tar would (two blocks of zeros) is the one file it holds:
gunzip gives ``invoice.zip`` and unzip and 7-Zip open that zip past its first bytes."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from typing import Callable

import pytest

from milterd.content import archives
from milterd.content.archives import Limits, list_archive

pytestmark = pytest.mark.skipif(not archives.supported("gzip"), reason="libarchive-c is not installed")

COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gz": ("gzip", gzip.compress), "bz2": ("bzip2", bz2.compress), "xz": ("xz", lzma.compress),
}


def evil_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("evil.exe", b"MZ\x90\x00" + bytes(300))
    return out.getvalue()


def paths(name: str, kind: str, data: bytes) -> list[str]:
    listing = list_archive(name, io.BytesIO(data), kind, Limits())
    assert listing.errors == [] and listing.limits == []
    return [e.path for e in listing.entries]


@pytest.mark.parametrize("extension", sorted(COMPRESSORS))
def test_fix_a_zip_after_a_tar_s_end_blocks_is_listed(extension: str) -> None:
    kind, compress = COMPRESSORS[extension]
    assert zipfile.ZipFile(io.BytesIO(bytes(1024) + evil_zip())).namelist() == ["evil.exe"]  # what unzip opens too
    name = f"invoice.zip.{extension}"
    # The old code took the zeros for an empty tar and listed nothing: the .exe was delivered.
    assert paths(name, kind, compress(bytes(1024) + evil_zip())) == [f"{name}/invoice.zip", f"{name}/invoice.zip/evil.exe"]


def tarred(name: str, data: bytes) -> bytes:
    """A tar of one file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_tars_are_still_listed_as_tars() -> None:
    assert paths("a.tar.gz", "gzip", gzip.compress(tarred("evil.exe", b"MZ"))) == ["a.tar.gz/evil.exe"]


def test_an_empty_tar_is_an_empty_file_named_as_gunzip_names_it() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w"):
        pass
    assert paths("a.tgz", "gzip", gzip.compress(out.getvalue())) == ["a.tgz/a.tar"]


def tar_then_zip() -> bytes:
    """A tar of readme.txt, then a zip of evil.exe: tar lists the first, unzip and 7-Zip the second."""
    return tarred("readme.txt", b"hi") + evil_zip()


def test_fix_a_zip_after_a_tar_of_members_is_listed_when_the_name_says_zip() -> None:
    data = tar_then_zip()
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["evil.exe"]
    # gunzip gives invoice.zip: the tar was listed (readme.txt) and the zip unzip opens never looked at.
    listed = paths("invoice.zip.gz", "gzip", gzip.compress(data))
    assert "invoice.zip.gz/invoice.zip/evil.exe" in listed and "invoice.zip.gz/readme.txt" in listed
    # Attached as invoice.zip, it was listed as the tar its first bytes say, and only as that.
    assert paths("invoice.zip", "tar", data) == ["invoice.zip/readme.txt", "invoice.zip/evil.exe"]
    # A .tar.gz is the tar it says it is.
    assert paths("docs.tar.gz", "gzip", gzip.compress(data)) == ["docs.tar.gz/readme.txt"]
