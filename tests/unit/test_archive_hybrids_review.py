"""Files that are two archives at once (a tar followed by a zip), found by every name a tool gives them: the name a
gzip header stores (gunzip -N and 7-Zip use it), a zip member's Unicode Path when it is listed later in a child,
and listed once, in the child or here, never both; text that reads "**ACE**" at its eighth byte is no ACE archive."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import pytest

from milterd.checks.attachments import LIMIT
from milterd.content import archives
from milterd.content.archives import Limits, list_archive
from milterd.content.filetypes import sniff
from milterd.message.model import Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of
from tests.unit.test_attachments_evasion_review import message, unicode_path_zip
from tests.unit.test_compressed_empty_tar import evil_zip, tar_then_zip, tarred

pytestmark = pytest.mark.skipif(not archives.supported("gzip"), reason="libarchive-c is not installed")


def gzipped(data: bytes, stored: str) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename=stored, fileobj=out, mode="wb") as packed:
        packed.write(data)
    return out.getvalue()


CONTENTS = {"tar-then-zip": tar_then_zip, "pdf-then-zip": lambda: b"%PDF-1.4\n" + evil_zip()}


def gzip_stored_name_is_used(child: bool, content: str) -> None:
    """The check of the name a gzip header stores, here or in a listing child (tests/integration/test_archive_hybrids_child.py)."""
    data = gzipped(CONTENTS[content](), "invoice.zip")
    listing = list_archive("invoice.gz", io.BytesIO(data), "gzip", Limits(child=child))
    # gunzip -N and 7-Zip give invoice.zip, which unzip opens: only gunzip's own name (invoice) was looked at.
    assert any(e.path.endswith("/evil.exe") for e in listing.entries), listing.entries


def deferred_member_keeps_its_other_names(child: bool) -> None:
    data = unicode_path_zip("inner.tar", "inner.zip", tar_then_zip())
    listing = list_archive("outer.zip", io.BytesIO(data), "zip", Limits(child=child))
    # unzip extracts it as inner.zip (its Unicode Path), whose zip holds evil.exe: the listing child never knew that name.
    assert any(e.path.endswith("/evil.exe") for e in listing.entries), listing.entries


def tar_then_zip_paths(child: bool) -> list[str]:
    return [e.path for e in list_archive("a.zip", io.BytesIO(tar_then_zip()), "tar", Limits(child=child)).entries]


@pytest.mark.parametrize("content", sorted(CONTENTS))
def test_fix_the_name_a_gzip_header_stores_is_one_the_file_goes_by(content: str) -> None:
    gzip_stored_name_is_used(False, content)


def test_fix_a_deferred_member_keeps_its_other_names() -> None:
    deferred_member_keeps_its_other_names(False)


def test_a_tar_then_zip_named_zip_is_listed_as_both() -> None:
    assert tar_then_zip_paths(False) == ["a.zip/readme.txt", "a.zip/evil.exe"]


def test_fix_a_compressed_tar_named_for_another_archive_is_not_listed_twice() -> None:
    data = gzip.compress(tarred("a.txt", b"hi"))
    assert [e.path for e in list_archive("data.7z.gz", io.BytesIO(data), "gzip", Limits()).entries] == ["data.7z.gz/a.txt"]


@pytest.mark.parametrize("text", [b"# Team **ACE** retrospective\n", b"Status **ACE** project: on track\r\n", b"Group, **ACE**,12,14\r\n"])
def test_fix_text_with_ace_at_its_eighth_byte_is_no_archive(text: bytes, tmp_path: Path) -> None:
    assert sniff(text) is None
    check = attachment_check(tmp_path)
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(message(b"notes.md", text)))
    assert LIMIT not in {h.symbol for h in hits}


def test_fix_a_java_class_is_no_mach_o_binary() -> None:
    java8 = b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + bytes(40)  # minor 0, major 52
    fat = b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + bytes(40)  # two architectures
    assert (sniff(java8), sniff(fat), sniff(b"\xcf\xfa\xed\xfe" + bytes(12))) == (None, "macho", "macho")


@pytest.mark.parametrize("content", sorted(CONTENTS))
def test_fix_an_attachment_s_other_name_saying_zip_gz_is_one_gunzip_names_its_file_by(content: str) -> None:
    data = gzip.compress(CONTENTS[content]())
    # A part called invoice.gz whose Content-Type name is invoice.zip.gz: a client may save it as either.
    listing = list_archive("invoice.gz", io.BytesIO(data), "gzip", Limits(), ("invoice.zip.gz",))
    assert any(e.path.endswith("/evil.exe") for e in listing.entries), listing.entries


def gzip_naming(data: bytes, stored: bytes) -> bytes:
    """A gzip member of *data* whose header stores *stored* as it is (GzipFile keeps only a path's last part)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = packer.compress(data) + packer.flush()
    return (b"\x1f\x8b\x08\x08" + bytes(4) + b"\x00\x03" + stored + b"\x00" + body
            + zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little"))


def test_fix_a_long_stored_name_is_read_whole() -> None:
    stored = b"/".join([b"D" * 250] * 5) + b"/invoice.zip"  # 7-Zip extracts names of some 4 KB
    assert gzip.decompress(gzip_naming(b"x", stored)) == b"x"
    listing = list_archive("invoice.gz", io.BytesIO(gzip_naming(tar_then_zip(), stored)), "gzip", Limits())
    assert any(e.path.endswith("/evil.exe") for e in listing.entries), listing.entries


def test_fix_an_other_name_that_is_no_compressed_name_names_no_member() -> None:
    data = gzip.compress(b"plain report text\n")
    # A part called report.gz whose Content-Type name is report.exe: saved as report.exe, it is the gzip itself (judged
    # by that name already), never a report.exe member inside it that would be rejected as an executable.
    listing = list_archive("report.gz", io.BytesIO(data), "gzip", Limits(), ("report.exe",))
    assert [e.path for e in listing.entries] == ["report.gz/report"], listing.entries
