"""TNEF containers (Outlook's winmail.dat) are listed as archives: the files they carry are judged by the same
rules, named ``winmail.dat/invoice.exe``, and a container that cannot be read is a limit finding, quickly."""

from __future__ import annotations

import base64
import io
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import tnefparse
from tnefparse.mapi import IMESSAGE_SIG

from milterd.checks.attachments import BANNED, DOUBLE, LIMIT, MISMATCH, UNREADABLE
from milterd.content import archives
from milterd.content.archives import Limits, archive_kind, list_archive
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, zipped

PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)  # e_lfanew at 0x3C points at "PE\0\0"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"

# --- a test-only TNEF writer (MS-OXTNEF 2.1.3): signature, key, then attributes --------------------------
SIGNATURE = struct.pack("<L", 0x223E9F78)
LVL_MESSAGE, LVL_ATTACHMENT = 1, 2
ATT_TNEF_VERSION, ATT_OEM_CODEPAGE, ATT_MESSAGE_CLASS = 0x00089006, 0x00069007, 0x00078008
ATT_ATTACH_REND_DATA, ATT_ATTACH_TITLE, ATT_ATTACH_DATA, ATT_ATTACHMENT = 0x00069002, 0x00018010, 0x0006800F, 0x00069005
PT_LONG, PT_OBJECT, PT_UNICODE = 0x0003, 0x000D, 0x001F
PR_DISPLAY_NAME, PR_ATTACH_DATA_OBJ, PR_ATTACH_FILENAME, PR_ATTACH_METHOD, PR_ATTACH_LONG_FILENAME = 0x3001, 0x3701, 0x3704, 0x3705, 0x3707


def attribute(level: int, attribute_id: int, data: bytes) -> bytes:
    """One attribute: level, id (its type in the high word), length, data, checksum (the data's bytes summed, mod 65536)."""
    return struct.pack("<BLL", level, attribute_id, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def sized(data: bytes) -> bytes:
    """A sized MAPI value: one item, its length, the item padded to 4 bytes."""
    return struct.pack("<2L", 1, len(data)) + data + b"\x00" * (-len(data) % 4)


def mapi(*properties: tuple[int, int, bytes]) -> bytes:
    """A MAPI property block: the count, then per property its type, id and value."""
    return struct.pack("<L", len(properties)) + b"".join(struct.pack("<2H", kind, ident) + value for kind, ident, value in properties)


def unicode(text: str) -> bytes:
    return sized((text + "\x00").encode("utf-16-le"))


def file_attachment(long_name: str | None, data: bytes, title: str | None = None) -> bytes:
    """An attachment by value, as Outlook writes one: rendering, 8.3 title, data, then its MAPI properties."""
    short = title if title is not None else (long_name or "").upper()[:12]
    props = [(PT_LONG, PR_ATTACH_METHOD, struct.pack("<L", 1)), (PT_UNICODE, PR_ATTACH_FILENAME, unicode(short))]
    if long_name is not None:
        props.append((PT_UNICODE, PR_ATTACH_LONG_FILENAME, unicode(long_name)))
    return (attribute(LVL_ATTACHMENT, ATT_ATTACH_REND_DATA, struct.pack("<HlHHL", 1, -1, 0, 0, 1))
            + attribute(LVL_ATTACHMENT, ATT_ATTACH_TITLE, short.encode() + b"\x00")
            + attribute(LVL_ATTACHMENT, ATT_ATTACH_DATA, data)
            + attribute(LVL_ATTACHMENT, ATT_ATTACHMENT, mapi(*props)))


def embedded_message(subject: str, stream: bytes) -> bytes:
    """An attached message (attach method 5): its TNEF stream after the IMessage interface id, in PR_ATTACH_DATA_OBJ."""
    props = mapi((PT_LONG, PR_ATTACH_METHOD, struct.pack("<L", 5)), (PT_UNICODE, PR_DISPLAY_NAME, unicode(subject)),
                 (PT_OBJECT, PR_ATTACH_DATA_OBJ, sized(IMESSAGE_SIG + stream)))
    return attribute(LVL_ATTACHMENT, ATT_ATTACH_REND_DATA, struct.pack("<HlHHL", 1, -1, 0, 0, 1)) + attribute(LVL_ATTACHMENT, ATT_ATTACHMENT, props)


def tnef(*attachments: bytes) -> bytes:
    """A TNEF stream: signature, key, the message's attributes, then the attachments' ones."""
    return (SIGNATURE + struct.pack("<H", 0x1234)
            + attribute(LVL_MESSAGE, ATT_TNEF_VERSION, struct.pack("<L", 0x10000))
            + attribute(LVL_MESSAGE, ATT_OEM_CODEPAGE, struct.pack("<2L", 1252, 0))
            + attribute(LVL_MESSAGE, ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\x00")
            + b"".join(attachments))


# --- through the check, as the other attachment tests drive it -----------------------------------------------
def message(data: bytes, filename: bytes = b"winmail.dat", content_type: bytes = b"application/ms-tnef") -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--zz\r\nContent-Type: " + content_type + b"\r\nContent-Disposition: attachment; filename=\"" + filename
            + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--zz--\r\n")


def checker(tmp_path: Path, options: str = "") -> object:
    return attachment_check(tmp_path, "archive_process = false\n" + options)  # unit tests fork no listing child


@pytest.fixture
def check(tmp_path: Path) -> object:
    return checker(tmp_path)


def hits_of(check: object, raw: bytes) -> dict[str, Hit]:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))  # type: ignore[attr-defined]
    return {hit.symbol: hit for hit in hits}


# --- the writer writes what tnefparse reads -------------------------------------------------------------------
def test_the_test_writer_writes_what_tnefparse_reads() -> None:
    parsed = tnefparse.TNEF(tnef(file_attachment("invoice.exe", PE), embedded_message("Re: the invoice", tnef(file_attachment("a.txt", b"hi")))))
    first, second = parsed.attachments
    assert (first.long_filename(), first.name, first.data) == ("invoice.exe", "INVOICE.EXE", PE)
    assert all(obj.good_checksum for obj in parsed.objects)
    assert [a.long_filename() for a in second.embed.attachments] == ["a.txt"]


# --- the rules on what a container carries ------------------------------------------------------------------
def test_an_exe_in_winmail_dat_is_banned_and_the_reject_names_it(check: object) -> None:
    hits = hits_of(check, message(tnef(file_attachment("invoice.exe", PE))))
    # The long name first, then its 8.3 name (PR_ATTACH_FILENAME, the title), judged too.
    assert hits[BANNED].detail == "winmail.dat/invoice.exe: banned extension .exe; winmail.dat/INVOICE.EXE: banned extension .exe"
    assert hits[BANNED].action == Action.REJECT
    assert str(hits[BANNED].reply) == "550 5.7.1 Attachment rejected: winmail.dat/invoice.exe: banned extension .exe"
    assert LIMIT not in hits


def test_a_container_is_told_by_its_signature_under_any_name_or_type(check: object) -> None:
    data = tnef(file_attachment("invoice.pdf.exe", PE))
    assert archive_kind("attachment.bin", data[:512]) == "tnef"
    hits = hits_of(check, message(data, b"attachment.bin", b"application/octet-stream"))
    assert hits[BANNED].detail == "attachment.bin/invoice.pdf.exe: banned extension .exe"
    assert hits[DOUBLE].detail == "attachment.bin/invoice.pdf.exe: double extension .pdf.exe"


def test_a_clean_pdf_in_winmail_dat_passes(check: object) -> None:
    assert hits_of(check, message(tnef(file_attachment("invoice.pdf", PDF)))) == {}
    listing = list_archive("winmail.dat", io.BytesIO(tnef(file_attachment("invoice.pdf", PDF))), "tnef", Limits())
    # The long name is the member; the 8.3 one (PR_ATTACH_FILENAME and the title) an alias judged by its name.
    assert [(e.path, e.head) for e in listing.entries] == [("winmail.dat/invoice.pdf", PDF), ("winmail.dat/INVOICE.PDF", b"")]
    assert not listing.limits and not listing.errors


def test_an_executable_called_pdf_is_a_type_mismatch(check: object) -> None:
    hits = hits_of(check, message(tnef(file_attachment("invoice.pdf", PE))))
    assert hits[MISMATCH].detail == "winmail.dat/invoice.pdf: declared .pdf, content is a Windows executable (PE)"


def test_a_banned_short_name_behind_a_harmless_long_name_is_judged(check: object) -> None:
    # Outlook saves the long name; a decoder reading the 8.3 title (tnefparse's name) saves invoice.exe.
    hits = hits_of(check, message(tnef(file_attachment("invoice.pdf", PDF, title="invoice.exe"))))
    assert hits[BANNED].detail == "winmail.dat/invoice.exe: banned extension .exe"


def test_an_exe_in_a_zip_in_winmail_dat_is_found(check: object) -> None:
    hits = hits_of(check, message(tnef(file_attachment("docs.zip", zipped({"readme.txt": b"hi", "docs/evil.exe": PE})))))
    assert hits[BANNED].detail == "winmail.dat/docs.zip/docs/evil.exe: banned extension .exe"
    assert str(hits[BANNED].reply) == "550 5.7.1 Attachment rejected: winmail.dat/docs.zip/docs/evil.exe: banned extension .exe"


def test_an_exe_in_a_winmail_dat_in_a_zip_is_found(check: object) -> None:
    hits = hits_of(check, message(zipped({"winmail.dat": tnef(file_attachment("invoice.exe", PE))}), b"mail.zip", b"application/zip"))
    assert hits[BANNED].detail.startswith("mail.zip/winmail.dat/invoice.exe: banned extension .exe;")


def test_an_exe_in_an_embedded_message_is_found(check: object) -> None:
    inner = tnef(file_attachment("invoice.exe", PE))
    hits = hits_of(check, message(tnef(file_attachment("notes.txt", b"hello"), embedded_message("Re: the invoice", inner))))
    assert hits[BANNED].detail.startswith("winmail.dat/Re: the invoice/invoice.exe: banned extension .exe;")


# --- limits and hostile containers ----------------------------------------------------------------------------
@dataclass
class TnefWork:
    """What listing the TNEF containers of a message cost: measured, so that no test depends on the machine's speed."""

    attributes: int = 0  # attribute headers read
    read: int = 0  # bytes read from the containers
    size: int = 0  # bytes the containers hold
    streams: int = 0  # containers handed to tnefparse's own reader (it copies the rest of the stream at each attribute)
    blocks: list[bytes] = field(default_factory=list)  # MAPI property blocks given to tnefparse's decode_mapi
    refused: set[bytes] = field(default_factory=set)  # blocks recorded but not decoded (the test fails on them anyway)


class _CountingReader:
    """A container's stream that counts the bytes read from it."""

    def __init__(self, inner: IO[bytes], work: TnefWork) -> None:
        self._inner, self._work = inner, work

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._work.read += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CountingHeader:
    """archives._TNEF_ATTRIBUTE, counting the attribute headers unpacked."""

    def __init__(self, inner: struct.Struct, work: TnefWork) -> None:
        self._inner, self._work, self.size = inner, work, inner.size

    def unpack(self, data: bytes) -> tuple[Any, ...]:
        self._work.attributes += 1
        return self._inner.unpack(data)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> TnefWork:
    measured = TnefWork()
    walk, decode = archives._walk_tnef, archives.decode_mapi

    def counted_walk(path: str, data: IO[bytes], *args: Any) -> None:
        measured.size += data.seek(0, io.SEEK_END)
        data.seek(0)
        walk(path, _CountingReader(data, measured), *args)

    def counted_decode(block: bytes, codepage: str) -> Any:
        measured.blocks.append(block)
        return [] if block in measured.refused else decode(block, codepage)

    def no_stream_reader(self: Any, *args: Any, **kwargs: Any) -> None:
        measured.streams += 1
        raise ValueError("tnefparse's reader is not for hostile streams")

    monkeypatch.setattr(archives, "_walk_tnef", counted_walk)
    monkeypatch.setattr(archives, "decode_mapi", counted_decode)
    monkeypatch.setattr(archives, "_TNEF_ATTRIBUTE", _CountingHeader(archives._TNEF_ATTRIBUTE, measured))
    monkeypatch.setattr(tnefparse.TNEF, "__init__", no_stream_reader)
    return measured


def test_members_depth_and_size_limits_apply() -> None:
    many = tnef(*(file_attachment(f"f{i}.txt", b"x") for i in range(20)))
    listing = list_archive("winmail.dat", io.BytesIO(many), "tnef", Limits(max_members=5))
    assert len({e.path for e in listing.entries if e.head}) == 5
    assert listing.limits == ["winmail.dat/f5.txt: past 5 members, the rest not looked at"]
    nested = tnef(file_attachment("invoice.exe", PE))
    for level in range(3):
        nested = tnef(embedded_message(f"level {level}", nested))
    listing = list_archive("winmail.dat", io.BytesIO(nested), "tnef", Limits(max_depth=3))
    assert not any(e.path.endswith("invoice.exe") for e in listing.entries)
    assert listing.limits == ["winmail.dat/level 2/level 1/level 0: archive nested deeper than 3"]
    big = tnef(file_attachment("big.zip", zipped({"zeros.bin": b"\x00" * (4 << 20)}) + b"\x00" * (2 << 20)))
    listing = list_archive("winmail.dat", io.BytesIO(big), "tnef", Limits(max_size=1 << 20))
    assert listing.limits == ["winmail.dat/big.zip: would decompress past 1048576 bytes"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_after_the_signature_are_an_unreadable_finding_quickly(check: object, seed: int, work: TnefWork) -> None:
    hostile = SIGNATURE + random.Random(seed).randbytes(5 * 1024 * 1024)
    hits = hits_of(check, message(hostile))
    # An attribute that claims more than the stream holds ends the walk: the 5 MB after its header are not read.
    assert work.size == len(hostile) and work.read <= 1024 and work.attributes <= 16 and work.streams == 0
    assert hits[UNREADABLE].detail.startswith("winmail.dat: unreadable tnef archive")


def test_a_truncated_container_is_an_unreadable_finding_and_what_came_before_is_judged(check: object, work: TnefWork) -> None:
    whole = tnef(file_attachment("notes.txt", b"hello"), file_attachment("invoice.exe", PE))
    hits = hits_of(check, message(whole[:-60]))  # cut inside the last attachment's MAPI properties
    # Each byte read at most once, each attribute once, and MAPI blocks no longer than what the stream holds.
    assert work.size == len(whole) - 60 and work.read <= work.size and work.streams == 0
    assert work.attributes <= 16 and sum(len(block) for block in work.blocks) <= work.size
    assert hits[UNREADABLE].detail.startswith("winmail.dat: unreadable tnef archive (cut short")
    assert hits[BANNED].detail == "winmail.dat/INVOICE.EXE: banned extension .exe"  # its 8.3 title came before the cut


def test_mapi_counts_that_would_loop_for_minutes_are_an_unreadable_finding_quickly(check: object, work: TnefWork) -> None:
    # 16 bytes claiming 50 million values: tnefparse's decode_mapi loops (and allocates) 50 million times.
    bomb = struct.pack("<L2HL", 1, 0x1002, PR_ATTACH_LONG_FILENAME, 50_000_000)
    hostile = tnef(file_attachment("notes.txt", b"hi"), attribute(LVL_ATTACHMENT, ATT_ATTACH_REND_DATA, b"\x00" * 14),
                   attribute(LVL_ATTACHMENT, ATT_ATTACH_TITLE, b"EVIL.EXE\x00"), attribute(LVL_ATTACHMENT, ATT_ATTACHMENT, bomb))
    work.refused.add(bomb)
    hits = hits_of(check, message(hostile))
    assert len(work.blocks) == 1 and bomb not in work.blocks  # notes.txt's properties decoded, the bomb never
    assert hits[UNREADABLE].detail == "winmail.dat: unreadable tnef archive (an attachment's MAPI properties count more values than they can hold)"
    assert hits[BANNED].detail == "winmail.dat/EVIL.EXE: banned extension .exe"


def test_a_million_tiny_attributes_cost_their_budget_not_quadratic_time(check: object, work: TnefWork) -> None:
    # tnefparse's reader copies the rest of the stream at each attribute: hours for this one.
    tiny = attribute(LVL_MESSAGE, 0x00028004, b"")
    hostile = tnef(file_attachment("invoice.exe", PE)) + tiny * 500_000
    hits = hits_of(check, message(hostile))
    # The budget: 1,000 attributes plus 16 per member allowed (2,000): 33,000 of the 500,000, each read once.
    assert work.attributes <= 1000 + 16 * 2000 and work.read <= work.attributes * len(tiny) + len(hostile) // 100 and work.streams == 0
    assert hits[LIMIT].detail == "winmail.dat: past its budget of TNEF attributes, the rest not looked at"
    assert hits[BANNED].detail.startswith("winmail.dat/invoice.exe: banned extension .exe;")


def test_a_name_tnefparse_cannot_decode_is_a_limit_finding_not_a_silent_gap() -> None:
    # A long name in the codepage with a byte cp1252 does not define: tnefparse stops there.
    props = mapi((PT_LONG, PR_ATTACH_METHOD, struct.pack("<L", 1)), (0x001E, PR_ATTACH_LONG_FILENAME, sized(b"inv\x81oice.exe\x00")))
    data = tnef(attribute(LVL_ATTACHMENT, ATT_ATTACH_REND_DATA, b"\x00" * 14), attribute(LVL_ATTACHMENT, ATT_ATTACH_DATA, PE),
                attribute(LVL_ATTACHMENT, ATT_ATTACHMENT, props))
    listing = list_archive("winmail.dat", io.BytesIO(data), "tnef", Limits())
    assert listing.errors == ["winmail.dat: unreadable tnef archive (an attachment's MAPI properties unreadable after 1 of 2 values)"]
    assert [e.path for e in listing.entries] == ["winmail.dat/(attachment 1 without a name)"]
