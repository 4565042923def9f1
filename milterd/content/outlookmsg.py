"""The attachments of an Outlook message file (``.msg``, ``.oft``), read with ``olefile``.

Outlook saves a message as a Compound File (MS-CFB) of MAPI properties
(MS-OXMSG): each attachment is a storage ``__attach_version1.0_#XXXXXXXX``
holding its names as property streams (``__substg1.0_3707001F``, the long
file name, and so on), its bytes in ``__substg1.0_37010102``, or, for an
attached message, a storage ``__substg1.0_3701000D`` laid out as a message
again, or for an OLE object that storage with the object's streams (a
Packager object's ``\\x01Ole10Native`` carries a whole file under a label of
its own).  A user opens a ``.msg`` attachment with a double click and its
attachments with another, so what it carries is judged as an archive's members
(:mod:`milterd.content.archives` walks it with its budgets).

This module only reads the layout: which streams hold what.  Every stream
olefile opens is read into memory whole, so :func:`open_compound` opens the
file strictly (an incorrect defect is an error, not a log line: with a FAT
loop a stream's declared size would otherwise be read in full) and the caller
counts each stream's size before opening it.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import IO

import olefile

# What olefile would log about a hostile file is the listing's error here.
logging.getLogger("olefile").setLevel(logging.CRITICAL)

#: The prefix of an attachment's storage, of a property's stream, and the properties' own stream.
_ATTACHMENT = "__attach_version1.0_#"
_PROPERTY = "__substg1.0_"
#: Property ids and types (MS-OXPROPS): file names, the display name (an attached message's subject), the data.
_LONG_FILENAME, _FILENAME, _DISPLAY_NAME, _DATA = "3707", "3704", "3001", "3701"
_UNICODE, _STRING8, _BINARY, _OBJECT = "001F", "001E", "0102", "000D"
#: The stream of a Packager OLE object (an "embedded file"), and what a message's storage holds that an object's does not.
_PACKAGE = "\x01Ole10Native"
_MESSAGE_MARKS = ("__properties_version1.0", "__nameid_version1.0")
#: Longest name stream read (in bytes): a file name is at most a few hundred characters.
NAME_BYTES = 4096
#: A message's text bodies (PidTagBody, PidTagBodyHtml) by their streams' property id and type: content type, codec
#: ("" for an HTML body in bytes: UTF-8, else Windows' Western codepage).  The RTF body (1009) is not read.
_BODIES = {("1000", _UNICODE): ("text/plain", "utf-16-le"), ("1000", _STRING8): ("text/plain", "cp1252"),
           ("1013", _BINARY): ("text/html", ""), ("1013", _UNICODE): ("text/html", "utf-16-le"), ("1013", _STRING8): ("text/html", "cp1252")}


@dataclass(frozen=True)
class Node:
    """An entry of the file's directory and its path (what ``OleFileIO.openstream`` takes)."""

    entry: olefile.OleDirectoryEntry
    path: tuple[str, ...]

    def kids(self) -> list[Node]:
        """The entries of this storage, in olefile's order (by name)."""
        return [Node(kid, (*self.path, kid.name)) for kid in self.entry.kids]

    @property
    def size(self) -> int:
        """The size the directory gives this stream."""
        return int(self.entry.size)


@dataclass
class MsgAttachment:
    """One attachment of a message file: its names and where its content is."""

    #: Every name a user may see it under, the one Outlook saves it as first (long, then 8.3, then the display name).
    names: list[str] = field(default_factory=list)
    #: Its data stream (an attachment by value).
    data: Node | None = None
    #: An attached message's storage (attach method 5).
    message: Node | None = None
    #: An OLE object's Packager stream (an embedded file).
    package: Node | None = None
    #: What could not be read (a name stream longer than any name).
    errors: list[str] = field(default_factory=list)


def open_compound(data: IO[bytes]) -> tuple[olefile.OleFileIO, Node]:
    """*data* (a seekable file) as a Compound File and its root, refused (``OSError`` and others) at its first
    incorrect defect."""
    data.seek(0)
    ole = olefile.OleFileIO(data, raise_defects=olefile.DEFECT_INCORRECT)
    return ole, Node(ole.root, ())


def attachments(ole: olefile.OleFileIO, message: Node) -> list[MsgAttachment]:
    """The attachments of the message stored at *message* (the root for the file's own), in their storages' order."""
    return [_attachment(ole, kid) for kid in message.kids()
            if kid.entry.entry_type == olefile.STGTY_STORAGE and kid.entry.name.startswith(_ATTACHMENT)]


def bodies(ole: olefile.OleFileIO, message: Node, most: int) -> tuple[list[tuple[str, str]], bool]:
    """The text bodies of the message stored at *message* as (content type, text), and whether one was left out
    for being longer than *most* bytes."""
    found, skipped = [], False
    for kid in message.kids():
        name = kid.entry.name.upper()
        key = (name[len(_PROPERTY):len(_PROPERTY) + 4], name[len(_PROPERTY) + 4:])
        if not name.startswith(_PROPERTY.upper()) or key not in _BODIES or kid.entry.entry_type != olefile.STGTY_STREAM:
            continue
        if kid.size > most:
            skipped = True
            continue
        ctype, codec = _BODIES[key]
        value = read_stream(ole, kid)
        if codec:
            text = value.decode(codec, "replace")
        else:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = value.decode("cp1252", "replace")
        found.append((ctype, text.replace("\x00", "")))
    return found, skipped


def is_message(storage: Node) -> bool:
    """Whether *storage* is laid out as a message (Outlook's attached message), not as an OLE object."""
    return any(kid.entry.name in _MESSAGE_MARKS or kid.entry.name.startswith(_PROPERTY) for kid in storage.kids())


def read_stream(ole: olefile.OleFileIO, stream: Node) -> bytes:
    """The bytes of *stream* (an empty one without opening it: some writers point one at sector 0)."""
    return b"" if stream.size == 0 else bytes(ole.openstream(list(stream.path)).read())


def package(stream: bytes) -> tuple[list[str], bytes]:
    """The names (label, then the source path's file name) and the bytes of the file in a Packager object's
    ``\\x01Ole10Native`` stream: its size, a flag, NUL-terminated label, source path, a flag, a reserved word,
    the command (its length first), then the file (its length first).  ``ValueError`` when it is cut short."""
    offset = 6  # the total size, then the flag
    label, offset = _c_string(stream, offset)
    source, offset = _c_string(stream, offset)
    offset += 4  # the flag and the reserved word
    command_length = _u32(stream, offset)
    offset += 4 + command_length
    size = _u32(stream, offset)
    offset += 4
    if offset + size > len(stream):
        raise ValueError(f"a packaged file of {size} bytes in a stream of {len(stream)}")
    base = source.replace("\\", "/").rsplit("/", 1)[-1]
    return [name for name in dict.fromkeys((label, base)) if name], stream[offset:offset + size]


def _attachment(ole: olefile.OleFileIO, storage: Node) -> MsgAttachment:
    found = MsgAttachment()
    names: dict[str, list[str]] = {_LONG_FILENAME: [], _FILENAME: [], _DISPLAY_NAME: []}
    for kid in storage.kids():
        name, stream = kid.entry.name.upper(), kid.entry.entry_type == olefile.STGTY_STREAM
        if not name.startswith(_PROPERTY.upper()):
            continue
        ident, kind = name[len(_PROPERTY):len(_PROPERTY) + 4], name[len(_PROPERTY) + 4:]
        if ident in names and kind in (_UNICODE, _STRING8) and stream:
            if kid.size > NAME_BYTES:
                found.errors.append(f"a name of {kid.size} bytes ({kid.entry.name})")
            else:
                names[ident].append(_text(read_stream(ole, kid), kind))
        elif ident == _DATA and kind == _BINARY and stream:
            found.data = kid
        elif ident == _DATA and kind == _OBJECT and kid.entry.entry_type == olefile.STGTY_STORAGE:
            if is_message(kid):
                found.message = kid
            else:
                found.package = next((k for k in kid.kids() if k.entry.name == _PACKAGE and k.entry.entry_type == olefile.STGTY_STREAM), None)
    # A display name (an attached message's subject) names only what has no file name.
    ordered = [*names[_LONG_FILENAME], *names[_FILENAME]] or names[_DISPLAY_NAME]
    found.names = [name for name in dict.fromkeys(ordered) if name]
    return found


def _text(value: bytes, kind: str) -> str:
    """A string property's value, without the NULs that end or pad it (8-bit ones read as Windows' Western codepage)."""
    text = value.decode("utf-16-le", "replace") if kind == _UNICODE else value.decode("cp1252", "replace")
    return text.replace("\x00", "").strip()


def _c_string(data: bytes, offset: int) -> tuple[str, int]:
    end = data.find(b"\x00", offset)
    if end < 0:
        raise ValueError("a packaged file's name without its NUL")
    return data[offset:end].decode("cp1252", "replace"), end + 1


def _u32(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise ValueError("a packaged file cut short")
    return int(struct.unpack_from("<L", data, offset)[0])
