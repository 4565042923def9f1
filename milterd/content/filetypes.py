"""What a file is, by its first bytes, and whether that fits the name it carries.

Pure functions of a file's name and its first bytes (``HEAD_SIZE`` are
enough for every signature here): the attachment policy uses them to find a
"PDF" that is a Windows executable, or a picture that is a script archive.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Callable, Iterable

#: How many leading bytes :func:`sniff` needs.
HEAD_SIZE = 512

#: (offset, signature, kind), the longer signatures of one offset first.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"MZ", "pe"),
    (0, b"\x7fELF", "elf"),
    (0, b"\xcf\xfa\xed\xfe", "macho"),
    (0, b"\xce\xfa\xed\xfe", "macho"),
    (0, b"\xca\xfe\xba\xbe", "macho"),
    (0, b"%PDF-", "pdf"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"\x1f\x9d", "compress"),  # compress(1): .Z
    (0, b"LZIP", "lzip"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"MSCF", "cab"),
    (0, b"xar!", "xar"),
    (0, b"070701", "cpio"),  # SVR4 (newc)
    (0, b"070702", "cpio"),  # SVR4 with checksums
    (0, b"070707", "cpio"),  # POSIX.1 (odc)
    (0, b"\xc7\x71", "cpio"),  # old binary, little-endian
    (0, b"\x71\xc7", "cpio"),  # old binary, big-endian
    (0, b"\x60\xea", "arj"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"{\\rt", "rtf"),  # Word opens "{\\rtx1" as RTF too (oletools' RTF_MAGIC)
    (0, b"L\x00\x00\x00\x01\x14\x02\x00", "lnk"),
    (0, b"\x78\x9f\x3e\x22", "tnef"),  # 0x223E9F78 little-endian: Outlook's winmail.dat (application/ms-tnef)
    (2, b"-lh", "lzh"),  # LHA: a method such as -lh5- after the header's size and checksum
    (2, b"-lz", "lzh"),
    (7, b"**ACE**", "ace"),
    (257, b"ustar", "tar"),
)

#: Kinds that run as programs wherever they land.
EXECUTABLE_KINDS = frozenset({"pe", "elf", "macho", "lnk"})

#: Kinds that are archives (:mod:`milterd.content.archives` lists them, but :data:`UNLISTED_ARCHIVE_KINDS`).
ARCHIVE_KINDS = frozenset({"zip", "rar", "7z", "tar", "cab", "tnef", "lzh", "cpio", "xar", "arj", "ace"})
#: Archives 7-Zip or WinRAR open but nothing here lists (libarchive reads neither): what they hold is never judged.
UNLISTED_ARCHIVE_KINDS = frozenset({"arj", "ace"})

#: The image kinds sniff() tells.
_IMAGES = frozenset({"png", "jpeg", "gif"})
#: Extension → the kinds its content may be (what sniff() can tell).
_EXPECTED: dict[str, frozenset[str]] = {
    "pdf": frozenset({"pdf"}),
    # An image under another image's name (a PNG saved as photo.jpg) is shown by its content everywhere: no mismatch.
    "png": _IMAGES,
    "jpg": _IMAGES,
    "jpeg": _IMAGES,
    "gif": _IMAGES,
    "zip": frozenset({"zip"}),
    "rar": frozenset({"rar"}),
    "7z": frozenset({"7z"}),
    "gz": frozenset({"gzip"}),
    "tgz": frozenset({"gzip"}),
    "docx": frozenset({"zip"}),
    "xlsx": frozenset({"zip"}),
    "pptx": frozenset({"zip"}),
    "docm": frozenset({"zip"}),
    "xlsm": frozenset({"zip"}),
    "pptm": frozenset({"zip"}),
    "odt": frozenset({"zip"}),
    "ods": frozenset({"zip"}),
    # An Office 2007 document saved under its 97-2003 name (export.xls): Office opens it by its content; what the
    # zip holds is judged as any archive's members are, and its macros by the macro policy.
    "doc": frozenset({"ole", "rtf", "zip"}),
    "xls": frozenset({"ole", "zip"}),
    "ppt": frozenset({"ole", "zip"}),
    "msg": frozenset({"ole"}),
    "rtf": frozenset({"rtf"}),
}

#: Content types whose content sniff() can tell, as extensions of _EXPECTED.
_TYPE_EXTENSION = {
    "application/pdf": "pdf",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "application/zip": "zip",
    "application/msword": "doc",
    "application/vnd.ms-excel": "xls",
}

_NAMES = {
    "pe": "a Windows executable (PE)",
    "elf": "an ELF executable",
    "macho": "a Mach-O executable",
    "lnk": "a Windows shortcut (LNK)",
}

#: The suffix that names a file's own, unnamed, NTFS data stream.
_DATA_STREAM = "::$data"

#: The UTF-16 name of the stream that holds VBA macros in an OLE (Office 97-2003) file.
_OLE_VBA = "_VBA_PROJECT".encode("utf-16-le")


def sniff(head: bytes) -> str | None:
    """The kind of a file whose first bytes are *head* (``"pe"``, ``"pdf"``, ``"zip"``, …), or None."""
    for offset, signature, kind in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            valid = _VALID.get(kind)
            return kind if valid is None or valid(head) else None
    return None


#: What a compressed stream's header holds past its short magic, which ordinary text or data may start with
#: (a note beginning "LZIP", "BZh", a table of numbers): such a file was read as an archive, unreadable, quarantined.
_VALID: dict[str, Callable[[bytes], bool]] = {
    "bzip2": lambda head: head[3:4] in b"123456789" and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"),  # a block, or the end
    "lzip": lambda head: head[4:5] == b"\x01",  # version 1
    "compress": lambda head: len(head) > 2 and not head[2] & 0x60 and 9 <= head[2] & 0x1F <= 16,  # flags: bits 9 to 16
    "lz4": lambda head: len(head) > 4 and head[4] >> 6 == 1,  # the frame descriptor's version 01
    "xar": lambda head: head[4:6] == b"\x00\x1c",  # the header's size, 28
    # A header of hexadecimal (newc) or octal (odc) numbers; a binary one's name size and its name's end.
    "cpio": lambda head: _cpio_header(head),
    "arj": lambda head: len(head) > 10 and 0 < int.from_bytes(head[2:4], "little") <= 2600 and head[10] == 2,  # the main header
    "lzh": lambda head: head[6:7] == b"-" and head[5:6].isalnum(),
    # CAFEBABE opens a universal Mach-O binary and a Java class file alike: a fat binary's count of architectures
    # is small, a class file's version (major 45 or more) is not (file(1)'s rule).
    "macho": lambda head: head[:4] != b"\xca\xfe\xba\xbe" or int.from_bytes(head[4:8], "big") < 20,
    # The archive's main header (type 0) of a plausible size before "**ACE**": text may hold the word at byte 7.
    "ace": lambda head: len(head) > 6 and head[4] == 0 and 13 <= int.from_bytes(head[2:4], "little") <= 4096,
    # A DOS header whose e_lfanew points at the PE signature: a CSV starting "MZ,Mozambique" was a Windows executable.
    "pe": lambda head: _pe_header(head),
}

#: The farthest the PE signature of an executable may be from its start (e_lfanew) past its first bytes: Windows'
#: loader reads up to 256 MB (an e_lfanew of 16 MB or more is a crafted executable, a file that large).
_PE_MAX_OFFSET = 1 << 28
#: The control bytes text holds, which e_lfanew's last byte (0x3F) is in a text's "GB\r\n" at 0x3C.
_TEXT_CONTROLS = frozenset(b"\t\n\v\f\r")


def _pe_header(head: bytes) -> bool:
    """Whether *head* starts as a Windows executable does (its ``MZ`` already matched): a whole DOS header (64 bytes)
    whose e_lfanew points at ``PE\\0\\0`` within *head*, or, where *head* is only the file's first HEAD_SIZE bytes,
    past it, no farther than :data:`_PE_MAX_OFFSET`, in a header no text could be (a NUL in it, or e_lfanew's last
    byte a control byte text does not hold)."""
    if len(head) < 64:
        return False
    offset = int.from_bytes(head[0x3C:0x40], "little")
    if offset + 4 <= len(head):
        return head[offset:offset + 4] == b"PE\x00\x00"
    return len(head) >= HEAD_SIZE and offset < _PE_MAX_OFFSET and (0 in head[:0x40] or head[0x3F] not in _TEXT_CONTROLS)


def _cpio_header(head: bytes) -> bool:
    """Whether *head* starts as a cpio header does (its magic already matched)."""
    if head[:6] in (b"070701", b"070702"):
        return len(head) >= 110 and all(c in b"0123456789abcdefABCDEF" for c in head[6:110])
    if head[:6] == b"070707":
        return len(head) >= 76 and all(c in b"01234567" for c in head[6:76])
    size = int.from_bytes(head[20:22], "little" if head[:2] == b"\xc7\x71" else "big")
    return 1 < size <= 1024 and len(head) >= 26 + size and head[26 + size - 1] == 0


#: The types of a part that holds a message (RFC 6532's message/global is RFC 822's with UTF-8 headers;
#: Thunderbird opens message/news as it opens message/rfc822).
MESSAGE_TYPES = frozenset({"message/rfc822", "message/global", "message/news"})


def message_file(names: Iterable[str]) -> bool:
    """Whether any of *names* is a saved message's (``.eml``; a saved web page, ``.mht``/``.mhtml``, is one too):
    Outlook, Thunderbird and Apple Mail open it as mail, and a browser or Word shows an MHTML file's page, attachments and all."""
    return bool(_last_extensions(names) & _MESSAGE_FILES)


_MESSAGE_FILES = frozenset({"eml", "mht", "mhtml"})


#: The last extensions of files a double click opens in a browser, whatever their MIME type says (an HTML page
#: sent as application/octet-stream is a phishing form; an SVG image may carry links), and of plain text files.
_HTML_FILES = frozenset({"htm", "html", "xht", "xhtm", "xhtml", "shtml", "svg", "hta"})
_TEXT_FILES = frozenset({"txt"})


def text_file_type(names: Iterable[str], mime_type: str) -> str:
    """The type an attached file of MIME type *mime_type* called *names* is read as for its text and links:
    *mime_type* for text/plain and text/html, else "text/html" or "text/plain" by its names; "" for another file."""
    if mime_type in ("text/html", "text/plain"):
        return mime_type
    last = _last_extensions(names)
    return "text/html" if last & _HTML_FILES else "text/plain" if last & _TEXT_FILES else ""


def _last_extensions(names: Iterable[str]) -> set[str]:
    """The last extension of each of *names* that has one."""
    return {ext for name in names for ext in extensions(name)[-1:]}


def outlook_name(names: Iterable[str]) -> bool:
    """Whether any of *names* is an Outlook message file's (``.msg``, or an ``.oft`` template)."""
    return any(extensions(name)[-1:] in (["msg"], ["oft"]) for name in names)


def outlook_file(names: Iterable[str], head: bytes) -> bool:
    """Whether a file called by any of *names*, starting with *head*, is an Outlook message file (named so, and a
    Compound File): Outlook opens it as mail, attachments and all."""
    return sniff(head) == "ole" and outlook_name(names)


def extensions(name: str) -> list[str]:
    """The extensions of file *name*, lower-cased, last one last (``a.PDF.exe`` → ``["pdf", "exe"]``).

    Spaces and dots that pad the name to hide its real extension are dropped,
    and so are what follows a NUL (where C code and Windows end the name) and
    an NTFS ``::$DATA`` suffix (the file's own content).  Of
    the extensions before the last one only the short ones count; the last
    always does (``.application``, ``.settingcontent-ms`` are executable).
    """
    base = PurePosixPath(name.split("\x00", 1)[0].replace("\\", "/")).name.strip().rstrip(". ")
    if base.lower().endswith(_DATA_STREAM):  # NTFS: evil.js::$DATA is evil.js itself
        base = base[:-len(_DATA_STREAM)].rstrip(". ")
    parts = [_folded(p.strip()) for p in base.split(".")[1:]]
    return [p for i, p in enumerate(parts) if p and (len(p) <= 10 or i == len(parts) - 1)]


def _folded(extension: str) -> str:
    """*extension* lower-cased as Windows compares names (upper-cased letter by letter, then lower-cased): ``ſcr``
    (long s, upper-case S) is ``scr`` and ``pıf`` (dotless i) ``pif`` to it, as to the registry's ``.SCR``."""
    if extension.isascii():
        return extension.lower()
    return "".join(upper if len(upper := char.upper()) == 1 else char for char in extension).lower()


def describe(kind: str) -> str:
    """A kind as a reader would say it (``"pe"`` → ``"a Windows executable (PE)"``)."""
    return _NAMES.get(kind, f"{kind.upper()} data")


def mismatch(name: str, content_type: str, head: bytes, executable_extensions: frozenset[str]) -> str:
    """Why the content (*head*) does not fit the name or declared type; ``""`` when it fits or cannot be told.

    An executable is a mismatch under any name but one of *executable_extensions*
    (those the banned list judges); other kinds only where the extension or the
    content type says what the content should be.
    """
    kind = sniff(head)
    if kind is None:
        return ""
    exts = extensions(name)
    last = exts[-1] if exts else ""
    if kind in EXECUTABLE_KINDS and last not in executable_extensions:
        declared = f".{last}" if last else (content_type or "no extension")
        return f"declared {declared}, content is {describe(kind)}"
    expected_ext = last if last in _EXPECTED else _TYPE_EXTENSION.get(content_type.lower(), "")
    expected = _EXPECTED.get(expected_ext)
    if expected is not None and kind not in expected:
        return f"declared .{expected_ext}, content is {describe(kind)}"
    return ""


def ole_has_macros(data: bytes) -> bool:
    """Whether an OLE (Office 97-2003) file's bytes name a VBA project stream."""
    return _OLE_VBA in data
