"""The attachments and text bodies of an Outlook message file (``.msg``, ``.oft``), read with ``olefile``.

Outlook saves a message as a Compound File (MS-CFB) of MAPI properties
(MS-OXMSG): each attachment is a storage ``__attach_version1.0_#XXXXXXXX``
holding its names as property streams (``__substg1.0_3707001F``, the long
file name, and so on), its bytes in ``__substg1.0_37010102``, or, for an
attached message, a storage ``__substg1.0_3701000D`` laid out as a message
again, or for an OLE object that storage with the object's streams (a
Packager object's ``\\x01Ole10Native`` carries a whole file under names of
its own).  A user opens a ``.msg`` attachment with a double click and its
attachments with another, so what it carries is judged as an archive's members
(:mod:`milterd.content.archives` walks it with its budgets), and its bodies
are read for links (:mod:`milterd.content.mimetext`).

This module only reads the layout: which streams hold what.  Names in a
Compound File compare without case (MS-CFB 2.6.4), and so do they here.
Every stream olefile opens is read into memory whole, so :func:`open_compound`
opens the file strictly (an incorrect defect is an error, not a log line: with
a FAT loop a stream's declared size would otherwise be read in full), after
checking the header's sector counts against the file's size (olefile joins
its sector table one sector at a time, in time quadratic in a count a sender
writes), and the caller counts each data stream's size before opening it.
Streams are opened from their directory entries (olefile's path lookup scans
a storage's entries for each step).  olefile builds its whole directory tree
when it opens a file, about 50 µs an entry, and checks each stream against
every other (quadratic: 9,000 streams took 0.7 s): :class:`_BoundedFile`
checks them in a set and stops past ``MAX_ENTRIES`` entries (a real message
file has a few dozen, and about ten more per attachment or recipient).
"""

from __future__ import annotations

import codecs
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import IO, Iterator

import olefile

from .mimeparams import windows_codec
from .rtf import decompress

# What olefile would log about a hostile file is the listing's error here.
logging.getLogger("olefile").setLevel(logging.CRITICAL)

#: The prefix of an attachment's storage and of a property's stream (upper-cased: names compare without case).
_ATTACHMENT = "__ATTACH_VERSION1.0_#"
_PROPERTY = "__SUBSTG1.0_"
#: The fixed-size properties' stream, and its header's size in an attachment's storage (MS-OXMSG 2.4.2.2).
_PROPERTIES, _ATTACHMENT_HEADER = "__PROPERTIES_VERSION1.0", 8
#: Property ids and types (MS-OXPROPS): file names, paths (an attachment by reference), the display name (an attached
#: message's subject), the data, the attach method.
_LONG_FILENAME, _FILENAME, _DISPLAY_NAME, _DATA = "3707", "3704", "3001", "3701"
_PATHS = ("370D", "3708")
_MIME_TAG = "370E"  # PidTagAttachMimeTag  # PidTagAttachLongPathname, PidTagAttachPathname: their file names judged too
_UNICODE, _STRING8, _BINARY, _OBJECT = "001F", "001E", "0102", "000D"
_ATTACH_METHOD, _EMBEDDED_MESSAGE = 0x3705, 5
OLE_OBJECT = 6  # attach method: an OLE object
#: PidTagInternetCodepage (a message's HTML body's) and PidTagMessageCodepage (its 8-bit strings').
_INTERNET_CODEPAGE, _MESSAGE_CODEPAGE = 0x3FDE, 0x3FFD
#: Longest fixed-size properties' stream read (16 bytes a property; a message has a few hundred).
_PROPERTIES_BYTES = 64 * 1024
#: The stream of a Packager OLE object (an "embedded file"), and what a message's storage holds that an object's does not.
_PACKAGE = "\x01OLE10NATIVE"
_MESSAGE_MARKS = (_PROPERTIES, "__NAMEID_VERSION1.0", "__RECIP_VERSION1.0_#")
#: The streams of an OLE object that hold a whole document, a zip: Office's OOXML package (an object of class
#: ``Word.Document.12``, ``Excel.Sheet.12``…) and LibreOffice's ODF one.
_DOCUMENTS = frozenset({"PACKAGE", "EMBEDDEDODF"})
#: The UTF-16 names after a packaged file judged: its label and temporary path (the source path, third, is not).
_UNICODE_NAMES = 2
#: Longest name stream read (in bytes): a file name is at most a few hundred characters.
NAME_BYTES = 4096
#: A message's text bodies (PidTagBody, PidTagBodyHtml) by their streams' property id and type: content type, codec
#: ("" for an HTML body in bytes: UTF-8, else Windows' Western codepage).  The RTF body is read apart (:func:`rtf_body`).
_BODIES = {("1000", _UNICODE): ("text/plain", "utf-16-le"), ("1000", _STRING8): ("text/plain", "cp1252"),
           ("1013", _BINARY): ("text/html", ""), ("1013", _UNICODE): ("text/html", "utf-16-le"), ("1013", _STRING8): ("text/html", "cp1252")}
#: The compressed RTF body (PidTagRtfCompressed): Outlook often keeps a message's HTML only there (``\\fromhtml1``).
_RTF = ("1009", _BINARY)
#: The Compound File header's fields (MS-CFB 2.2) up to the first DIFAT sector's count.
_HEADER = struct.Struct("<8s16s5H6s9L")
#: Most FAT sectors a file may have (they map 128 MB; olefile joins them in time quadratic in their number).
MAX_FAT_SECTORS = 2048
#: Most directory entries a file may have (olefile loads them all when it opens the file, about 1 s for these).
MAX_ENTRIES = 20_000
#: Sector numbers that name no stream (olefile skips them in its check of streams referenced twice).
_NO_STREAM_SECTORS = frozenset({0xFFFFFFFC, 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF})


class _BoundedFile(olefile.OleFileIO):
    """olefile's reader with its directory bounded to MAX_ENTRIES entries and its check of streams referenced twice
    kept in sets (olefile's lists make it quadratic).  Both override olefile 0.47's private hooks, called once per
    directory entry while the file is opened."""

    def _load_direntry(self, sid: int) -> olefile.OleDirectoryEntry:
        self._entries = getattr(self, "_entries", 0) + 1
        if self._entries > MAX_ENTRIES:
            raise ValueError(f"more than {MAX_ENTRIES} directory entries")
        return super()._load_direntry(sid)

    def _check_duplicate_stream(self, first_sect: int, minifat: bool = False) -> None:
        if not minifat and first_sect in _NO_STREAM_SECTORS:
            return
        used: set[int] = self.__dict__.setdefault("_used_minifat" if minifat else "_used_fat", set())
        if first_sect in used:
            self._raise_defect(olefile.DEFECT_INCORRECT, "Stream referenced twice")
        used.add(first_sect)


@dataclass(frozen=True)
class Node:
    """An entry of the file's directory."""

    entry: olefile.OleDirectoryEntry

    @property
    def name(self) -> str:
        """Its name, upper-cased (names in a Compound File compare without case)."""
        return self.entry.name.upper()

    @property
    def size(self) -> int:
        """The size the directory gives this stream."""
        return int(self.entry.size)

    @property
    def stream(self) -> bool:
        return bool(self.entry.entry_type == olefile.STGTY_STREAM)

    @property
    def storage(self) -> bool:
        return bool(self.entry.entry_type == olefile.STGTY_STORAGE)

    def kids(self) -> list[Node]:
        """The entries of this storage."""
        return [Node(kid) for kid in self.entry.kids]

    def property(self) -> tuple[str, str] | None:
        """(id, type) of a property stream or storage (``__substg1.0_3707001F`` → ("3707", "001F")), else None."""
        if not self.name.startswith(_PROPERTY) or len(self.name) != len(_PROPERTY) + 8:
            return None
        return self.name[len(_PROPERTY):len(_PROPERTY) + 4], self.name[len(_PROPERTY) + 4:]


@dataclass
class MsgAttachment:
    """One attachment of a message file: its names and where its contents are."""

    #: Every name a user may see it under, the one Outlook saves it as first (long, then 8.3, then the display name,
    #: then the file names of its paths).
    names: list[str] = field(default_factory=list)
    #: Its data stream (an attachment by value).
    data: Node | None = None
    #: An attached message's storage (attach method 5, or a storage laid out as one).
    message: Node | None = None
    #: An OLE object's Packager stream (an embedded file).
    package: Node | None = None
    #: Its attach method (PidTagAttachMethod: 1 by value, 5 a message, 6 an OLE object), None when it names none.
    method: int | None = None
    #: Its MIME type (PidTagAttachMimeTag), lower-cased, "" when it names none.
    mime_type: str = ""
    #: What could not be read (a name stream longer than any name).
    errors: list[str] = field(default_factory=list)


def open_compound(data: IO[bytes]) -> tuple[olefile.OleFileIO, Node]:
    """*data* (a seekable file) as a Compound File and its root, refused (``ValueError``, ``OSError`` and others) when
    its header counts more sectors than the file holds, or at olefile's first incorrect defect."""
    size = data.seek(0, os.SEEK_END)
    data.seek(0)
    header = data.read(_HEADER.size)
    if len(header) == _HEADER.size:
        fields = _HEADER.unpack(header)
        shift, fat_sectors, minifat_sectors, difat_sectors = fields[5], fields[9], fields[14], fields[16]
        sector = 1 << min(shift, 16)
        sectors = max(size // sector, 1)
        per_sector = sector // 4
        # Every FAT sector is one of the file's (writers allocate more than they need: an encrypted 14 KB workbook
        # has three where one maps it), and olefile's join of them costs their number squared (16,000 took 28 s).
        if fat_sectors > min(sectors, MAX_FAT_SECTORS) or difat_sectors > fat_sectors // max(per_sector - 1, 1) + 1 or minifat_sectors > sectors:
            raise ValueError(f"a header counting {fat_sectors} FAT, {difat_sectors} DIFAT and {minifat_sectors} MiniFAT sectors in {sectors}")
    data.seek(0)
    ole = _BoundedFile(data, raise_defects=olefile.DEFECT_INCORRECT)
    return ole, Node(ole.root)


def attachments(ole: olefile.OleFileIO, message: Node) -> Iterator[MsgAttachment]:
    """The attachments of the message stored at *message* (the root for the file's own), in their storages' order,
    each read when it is asked for (a caller that stops at its bound reads no more names)."""
    for kid in message.kids():
        if kid.storage and kid.name.startswith(_ATTACHMENT):
            yield _attachment(ole, kid)


def bodies(ole: olefile.OleFileIO, message: Node, most: int) -> tuple[list[tuple[str, str]], bool]:
    """The text bodies of the message stored at *message* as (content type, text), and whether one was left out
    for being longer than *most* bytes."""
    found, skipped = [], False
    internet, ansi = _codepages(ole, message)
    for kid in message.kids():
        key = kid.property()
        if key not in _BODIES or not kid.stream:
            continue
        if kid.size > most:
            skipped = True
            continue
        ctype, codec = _BODIES[key]
        value = read_stream(ole, kid)
        if codec == "cp1252":  # 8-bit text: in the message's codepage
            codec = ansi or internet or codec
        if codec:
            text = value.decode(codec, "replace")
        else:  # an HTML body's bytes: in the Internet codepage the message names, else UTF-8 or Windows' Western
            text = decoded_text(value, internet)
        found.append((ctype, text.replace("\x00", "")))
    return found, skipped


def decoded_text(value: bytes, codec: str | None = None) -> str:
    """*value* as text: by its byte-order mark, else in *codec* when given, else UTF-8, else Windows' Western codepage."""
    for mark, by_mark in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if value.startswith(mark):
            return value.decode(by_mark, "replace")
    if codec:
        return value.decode(codec, "replace")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("cp1252", "replace")


def _codepages(ole: olefile.OleFileIO, message: Node) -> tuple[str | None, str | None]:
    """The Python codecs of the message's PidTagInternetCodepage (its HTML's) and PidTagMessageCodepage (its 8-bit
    strings'), from its fixed-size properties (after a header of 32 bytes in the file's own message, 24 in an
    attached one); None for one it does not name or Python does not know."""
    stream = next((kid for kid in message.kids() if kid.name == _PROPERTIES and kid.stream and kid.size <= _PROPERTIES_BYTES), None)
    if stream is None:
        return None, None
    values = _fixed_properties(read_stream(ole, stream), 32 if message.entry is ole.root else 24)
    return windows_codec(values.get(_INTERNET_CODEPAGE)), windows_codec(values.get(_MESSAGE_CODEPAGE))


def rtf_body(ole: olefile.OleFileIO, message: Node, most_read: int, most: int) -> tuple[bytes, bool]:
    """The RTF body of the message stored at *message* (its stream read when at most *most_read* bytes),
    decompressed to at most *most* bytes, and whether it was whole (``b""`` and True for none).  ``ValueError`` when
    its compression is unknown or its header cut short."""
    stream = next((kid for kid in message.kids() if kid.property() == _RTF and kid.stream), None)
    if stream is None:
        return b"", True
    if stream.size > most_read:
        return b"", False
    return decompress(read_stream(ole, stream), most)


def packaged_stream(storage: Node) -> Node | None:
    """The Packager stream (``\\x01Ole10Native``: an embedded file) of an OLE object's *storage*, or None."""
    return next((kid for kid in storage.kids() if kid.name == _PACKAGE and kid.stream), None)


def packaged_streams(storage: Node) -> Iterator[tuple[list[str], Node]]:
    """The Packager streams of *storage* and of every storage under it, and their embedded documents' streams
    (:func:`document_stream`), each with the names of the storages it is in below *storage*: ``[]`` at its root (an
    OOXML document's ``oleObject1.bin``), ``["ObjectPool", "_1234"]`` for an object of a Word 97 document (Excel 97
    keeps each in a storage ``MBD…`` of the root; a document embedded in another, its objects under its own
    storage).  Walked without recursion: olefile already bounds the entries."""
    pending: list[tuple[list[str], Node]] = [([], storage)]
    while pending:
        names, node = pending.pop()
        stream = packaged_stream(node)
        if stream is not None:
            yield names, stream
        yield from ((names, kid) for kid in node.kids() if kid.stream and document_stream(kid))
        pending.extend((names + [kid.entry.name], kid) for kid in reversed(node.kids()) if kid.storage)


def document_stream(stream: Node) -> bool:
    """Whether *stream* is an OLE object's embedded document (a zip its application opens), not a Packager stream."""
    return stream.name in _DOCUMENTS


def is_message(storage: Node) -> bool:
    """Whether *storage* is laid out as a message (Outlook's attached message), not as an OLE object."""
    return any(kid.name.startswith(_MESSAGE_MARKS) or kid.property() is not None for kid in storage.kids())


def read_stream(ole: olefile.OleFileIO, stream: Node) -> bytes:
    """The bytes of *stream* (an empty one without opening it: some writers point one at sector 0)."""
    if stream.size == 0:
        return b""
    # olefile's own _open, as openstream calls it, from the entry: openstream's lookup by path is linear in the siblings.
    return bytes(ole._open(stream.entry.isectStart, stream.size).read())  # noqa: SLF001


def package(stream: bytes) -> tuple[list[str], bytes]:
    """The names and the bytes of the file in a Packager object's ``\\x01Ole10Native`` stream: its size, a flag,
    NUL-terminated label and source path, a flag and a reserved word, the temporary path Packager writes the file
    to (its length first), the file (its length first), then (newer Packagers) the names again in UTF-16, the source
    path last.  The names are the label and the temporary path's file name (the file Packager writes and opens), in
    both forms; the source path only names where it was taken from (an icon's source in older objects:
    ``C:\\WINNT\\system32\\SHELL32.DLL`` beside a PDF), so it is left out, by its place: a label or a temporary
    path named as the source is judged all the same.  ``ValueError`` when it is cut short."""
    offset = 6  # the total size, then the flag
    label, offset = _c_string(stream, offset)
    _, offset = _c_string(stream, offset)  # the source path
    offset += 4  # the flag and the reserved word
    temporary_length = _u32(stream, offset)
    offset += 4
    temporary = _name(stream[offset:offset + temporary_length].decode("cp1252", "replace"))
    offset += temporary_length
    size = _u32(stream, offset)
    offset += 4
    if offset + size > len(stream):
        raise ValueError(f"a packaged file of {size} bytes in a stream of {len(stream)}")
    data = stream[offset:offset + size]
    names = [label, _base(temporary)]
    offset += size
    for _ in range(_UNICODE_NAMES):  # the UTF-16 label and temporary path, where there are
        if offset + 4 > len(stream):
            break
        chars = _u32(stream, offset)
        end = offset + 4 + 2 * chars
        if end > len(stream):
            break
        names.append(_base(_name(stream[offset + 4:end].decode("utf-16-le", "replace"))))
        offset = end
    return [name for name in dict.fromkeys(names) if name], data


def _attachment(ole: olefile.OleFileIO, storage: Node) -> MsgAttachment:
    found = MsgAttachment()
    names: dict[str, list[str]] = {_LONG_FILENAME: [], _FILENAME: [], _DISPLAY_NAME: [], **{path: [] for path in _PATHS}}
    kids = storage.kids()
    # Read first: olefile orders the entries by name with case, and an upper-case object storage sorts before it.
    properties = next((kid for kid in kids if kid.name == _PROPERTIES and kid.stream and kid.size <= _PROPERTIES_BYTES), None)
    method = found.method = _fixed_properties(read_stream(ole, properties), _ATTACHMENT_HEADER).get(_ATTACH_METHOD) if properties else None
    for kid in kids:
        key = kid.property()
        if key is None:
            continue
        ident, kind = key
        if ident in names and kind in (_UNICODE, _STRING8) and kid.stream:
            if kid.size > NAME_BYTES:
                found.errors.append(f"a name of {kid.size} bytes ({kid.entry.name})")
            else:
                value = read_stream(ole, kid).decode("utf-16-le" if kind == _UNICODE else "cp1252", "replace")
                names[ident].append(_base(_name(value)) if ident in _PATHS else _name(value))
        elif ident == _DATA and kind == _BINARY and kid.stream:
            found.data = kid
        elif ident == _MIME_TAG and kind in (_UNICODE, _STRING8) and kid.stream and kid.size <= NAME_BYTES:
            found.mime_type = _name(read_stream(ole, kid).decode("utf-16-le" if kind == _UNICODE else "cp1252", "replace")).lower()
        elif ident == _DATA and kind == _OBJECT and kid.storage:
            # Outlook goes by the attach method; a storage laid out as a message is read as one too, and an OLE
            # object's embedded file is read whatever the method says (each reading judged).
            if method == _EMBEDDED_MESSAGE or is_message(kid):
                found.message = kid
            found.package = packaged_stream(kid)
    # A display name (an attached message's subject) names only what has no file name (an empty one is none).
    ordered = [name for name in (*names[_LONG_FILENAME], *names[_FILENAME]) if name] or names[_DISPLAY_NAME]
    ordered += [name for path in _PATHS for name in names[path]]
    found.names = [name for name in dict.fromkeys(ordered) if name]
    return found


def _fixed_properties(properties: bytes, header: int) -> dict[int, int]:
    """The 32-bit integer (PT_LONG) values of fixed-size properties (16 bytes each: type, id, flags, value), by id."""
    values: dict[int, int] = {}
    for offset in range(header, len(properties) - 15, 16):
        kind, ident, _, value = struct.unpack_from("<2HLL", properties, offset)
        if kind == 0x0003:
            values.setdefault(ident, int(value))
    return values


def _name(text: str) -> str:
    """A name as stored, without the NULs that end or pad it; a NUL inside is kept (the check judges the name cut there)."""
    return text.rstrip("\x00").strip()


def _base(path: str) -> str:
    """The file name of a Windows or Unix *path*."""
    return path.replace("\\", "/").rsplit("/", 1)[-1].strip()


def _c_string(data: bytes, offset: int) -> tuple[str, int]:
    end = data.find(b"\x00", offset)
    if end < 0:
        raise ValueError("a packaged file's name without its NUL")
    return data[offset:end].decode("cp1252", "replace"), end + 1


def _u32(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise ValueError("a packaged file cut short")
    return int(struct.unpack_from("<L", data, offset)[0])
