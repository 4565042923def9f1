"""The names inside an archive attachment, listed within bounds.

Zip archives are read with the standard library; 7z, rar, cab and tar with
``libarchive-c`` when it is installed (optional: Debian's ``libarchive13`` and
PyPI's ``libarchive-c``), and so are gzip, bzip2 and xz streams: the tar in
one (``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``), else the one file it
holds, named as gunzip names it (``a.exe.gz`` holds ``a.exe``) and by the
name a gzip header stores.  Archives inside archives are opened too, down to
``Limits.max_depth``.  What is kept is each member's first bytes (to tell its
type) and the nested archives themselves, and all of that together stops at
``Limits.max_size``, whatever the archive's directory claims: an archive bomb
costs at most that much kept data (in memory, then a temporary file).  In a
zip nothing else is decompressed, unless zipfile cannot find its central
directory (cut short, or followed by more than 64 KB): unzip and libarchive
still extract such a zip from its local headers, so it is listed by
libarchive too, as the kinds below.  In a compressed tar (gzip, bzip2, xz,
or one named ``.tar`` that libarchive finds compressed) the rest of each
member is decompressed to reach the next one: that is read here and counted
in ``Limits.max_size`` too (:func:`_counted_entries`), so a bomb stops there.
In a solid 7z, rar or cab, libarchive must decompress every member it
passes, the rest of one whose first bytes alone were read included, and
that work is not counted in ``Limits.max_size``: it is bounded by the child's
CPU time and timeout (``CHILD_CPU_SECONDS``, ``CHILD_TIMEOUT``, and the
CPU of all the children of one message, ``Limits.max_child_seconds``) with
``Limits.child``, and by nothing when it is off (``archive_process = false``).
Members past ``Limits.max_members`` are not looked at, and a zip whose end of
central directory record declares far more entries is not opened at all
(zipfile would parse its whole directory first), nor one whose directory would
take the bytes of directories parsed past ``Limits.max_directory`` (whatever
its count says: zipfile parses the directory's bytes).  What was not looked at is
reported in ``Listing.limits``, never silently skipped.

A TNEF container (Outlook's ``winmail.dat``, told by its signature) is
listed as an archive: each attachment it carries is a member, named by its
long file name with its other names (the 8.3 one, the title) judged too, and
an embedded message (another TNEF stream) is a nested archive.  Its MAPI
properties are decoded by ``tnefparse``, but the stream is walked here, one
attribute at a time, with the bytes read counted in ``Limits.max_size`` and
the attributes in a budget of their own: tnefparse's own reader copies the
rest of the stream at each attribute, and its property decoder loops as often
as a count says, both without end on a hostile container (:func:`_mapi_values`
checks each property block first).

An Outlook message file (``.msg`` or ``.oft`` by name, a Compound File by its
first bytes) is listed as an archive too: each attachment is a member by its
file name, an attached message a nested archive of its own attachments, and
a Packager object (an "embedded file") the file it carries, by its label.
:mod:`milterd.content.outlookmsg` reads the layout; every stream it opens is
counted in ``Limits.max_size`` first.

A document that may embed a Packager object, told by its first bytes whatever its name, is listed too
(:data:`_EMBEDDING_KINDS`): a Compound File (a Word or Excel 97 document, an OOXML document's
``oleObject1.bin``) by the file each Packager stream in it carries, under the storages it is in, and an RTF
document by its ``\\objdata`` groups' objects; Word writes such a file out and runs it on a double click.  An
object that holds a whole document (an OOXML ``Package`` stream, ODF's ``EmbeddedOdf``) is that document, a zip
walked as a nested archive; a Compound File nested deeper than olefile's recursion reads is a limit.

A uuencoded (xxencoded, yEnc) file, by its name (``.uue``, ``.uu``, ``.xxe``) or a ``begin 644 name`` line in its
first bytes, is listed as an archive of the files it holds, decoded (:mod:`milterd.content.uuencode`): WinRAR and
7-Zip open one so and save ``invoice.uue/invoice.exe``.  It is decoded in the worker, each line counted in
``Limits.max_size`` as :data:`_ENCODED_LINE` bytes at least (:func:`_charged_lines`).  A compressed stream is read
with its own filter only: libarchive's others would uudecode ``files.uue.gz`` too, and lose its files' names.

libarchive is C code reading hostile input.  With ``Limits.child`` (the
attachment check's ``archive_process``, on by default) every archive that
needs it is listed in a short-lived forked child (:func:`_walk_in_child`) with
bounded memory and CPU, as amavisd-new runs its decoders apart: a crash there
is a limit of the listing (``Listing.limits``), never a dead worker.  Zip stays in the worker (Python's
own ``zipfile``), but for one that zipfile cannot open.
"""

from __future__ import annotations

import base64
import bz2
import codecs
import ctypes
import errno
import faulthandler
import io
import json
import logging
import lzma
import math
import os
import re
import resource
import selectors
import shutil
import signal
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple

from olefile import OleFileIO
from tnefparse import TNEF
from tnefparse.codepage import Codepage
from tnefparse.mapi import IMESSAGE_SIG, decode_mapi
from tnefparse.properties import MAPI_ATTACH_DATA_OBJ, MAPI_ATTACH_FILENAME, MAPI_ATTACH_LONG_FILENAME, MAPI_DISPLAY_NAME

from ..pythonthread import run_on_python_thread
from .filetypes import ARCHIVE_KINDS, HEAD_SIZE, UNLISTED_ARCHIVE_KINDS, extensions, message_file, outlook_file, outlook_name, sniff
from .outlookmsg import OLE_OBJECT, Node, document_stream, open_compound, package, packaged_streams, read_stream
from .outlookmsg import attachments as msg_attachments
from .rtf import embedded_objects
from .uuencode import UU_EXTENSIONS, encoded_files, encoded_head

try:  # optional: 7z, rar, cab, tar and compressed streams (Debian libarchive13 + PyPI libarchive-c)
    import libarchive  # type: ignore[import-untyped,import-not-found,unused-ignore]
except (ImportError, OSError):  # OSError: the Python package without the shared library
    libarchive = None

# What tnefparse would log about a hostile container is a listing error here.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL)

#: The IStorage interface id (0000000B-0000-0000-C000-000000000046) before an OLE object's storage in a TNEF stream.
_IID_ISTORAGE = bytes.fromhex("0b00000000000000c000000000000046")
#: Extensions of Compound Files their own program opens (Office 97 documents, Visio, Publisher, Project, installers).
_OLE_DOCUMENTS = frozenset({"doc", "dot", "xls", "xlt", "xla", "ppt", "pot", "pps", "vsd", "vss", "vst", "pub", "mpp", "msi", "msp", "wps"})
#: Documents listed for the objects they embed, told by their first bytes whatever their name: a Compound File (a Word
#: or Excel 97 document, an OOXML document's ``oleObject1.bin``) and RTF.  Word writes a Packager object's file out and
#: runs it on a double click; a document without one is no archive (no limit of depth is met before one is found).
_EMBEDDING_KINDS = frozenset({"ole", "rtf"})
#: Kinds listed in the worker (Python reading them), never in a listing child.
_IN_WORKER = frozenset({"zip", "tnef", "msg", "uue", *_EMBEDDING_KINDS})
#: Extensions of archives that are opened even when their first bytes do not say so.
_ARCHIVE_EXTENSIONS = {"zip": "zip", "rar": "rar", "7z": "7z", "tar": "tar", "cab": "cab", "lzh": "lzh", "lha": "lzh", "cpio": "cpio",
                       "xar": "xar", "arj": "arj", "ace": "ace"}
#: Compressed streams (as sniff() names them, and "lzma", which has no magic) listed by libarchive: a tar in them, or
#: the one file they hold.  7-Zip opens every one of them, and Windows 11's Explorer (libarchive) the newer ones.
COMPRESSED_KINDS = frozenset({"gzip", "bzip2", "xz", "zstd", "compress", "lzip", "lz4", "lzma"})
#: Extensions of compressed files opened as such whatever their first bytes: raw LZMA (``.lzma``) has no magic.
_COMPRESSED_EXTENSIONS = {"lzma": "lzma", "tlz": "lzma"}
#: The extension of a compressed file → that of the file it holds (``a.exe.gz`` holds ``a.exe``, ``a.tgz`` ``a.tar``).
_DECOMPRESSED_EXTENSIONS = {
    "gz": "", "z": "", "bz2": "", "bz": "", "xz": "", "zst": "", "lz": "", "lzma": "", "lz4": "",
    "tgz": ".tar", "tbz": ".tar", "tbz2": ".tar", "txz": ".tar", "tzst": ".tar", "tlz": ".tar",
}
_CHUNK = 65536
#: The largest LZMA dictionary given to a zip member's decoder (what 7-Zip's -mx9 uses is 64 MB).
_LZMA_DICTIONARY = 256 * 1024 * 1024
#: What reading one zip member may raise (unsupported method, bad data or CRC, a password needed).
_MEMBER_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)
#: Nested archives up to this size stay in memory while they are listed.
_MEMORY = 1024 * 1024
#: A zip declaring more entries than the members left plus this (or plus ``max_members`` when larger) is not opened.
_ZIP_ENTRIES_MARGIN = 1000
#: The members an attachment's Office documents may still open past their parts' budget: the objects they embed and
#: what those hold (:func:`_late_object`).
_LATE_MEMBERS = 200
#: The parts past an Office document's parts' budget whose first bytes are read for an object (:func:`_object_head`),
#: all the attachment's documents together: some 10 µs each, and zip directories of 5 MB hold some 70,000 entries.
_LATE_HEADS = 20_000
#: The first bytes of an object whatever its part's name (``word/media/image9.png``): a Compound File, a zip, RTF.
_OBJECT_HEADS = (b"\xd0\xcf\x11\xe0", b"PK\x03\x04", b"{\\rt")
#: Office documents that are zip files (OOXML, OpenDocument): Word, Excel or LibreOffice opens one, nobody
#: extracts its parts, so a limit met among its own parts (a 300-slide deck has over 1,000, an embedded
#: workbook is one more level) is only noted (``Listing.errors``); its parts are counted apart from the
#: attachment's other members, and an archive embedded in it (a user can open that) is judged as any other.
_DOCUMENT_EXTENSIONS = frozenset({
    "docx", "docm", "dotx", "dotm", "xlsx", "xlsm", "xltx", "xltm", "xlsb", "xlam", "pptx", "pptm", "potx", "potm",
    "ppsx", "ppsm", "ppam", "sldx", "sldm", "vsdx", "vsdm", "vssx", "vstx", "odt", "ods", "odp", "odg", "odf", "ott", "ots", "otp", "otg",
})
#: The zip end of central directory record, the ZIP64 one and its locator (APPNOTE 4.3.14 to 4.3.16), little-endian.
_EOCD, _EOCD_SIGNATURE = struct.Struct("<4s4H2LH"), b"PK\x05\x06"
_EOCD64, _EOCD64_SIGNATURE = struct.Struct("<4sQ2H2L4Q"), b"PK\x06\x06"
_EOCD64_LOCATOR, _EOCD64_LOCATOR_SIGNATURE = struct.Struct("<4sLQL"), b"PK\x06\x07"
_CENTRAL_ENTRY_MIN = 46
#: A zip local file header (APPNOTE 4.3.7), and the id of the Info-ZIP Unicode Path extra field (APPNOTE 4.6.9).
_LOCAL_HEADER, _LOCAL_SIGNATURE = struct.Struct("<4s2B4HL2L2H"), b"PK\x03\x04"
_UNICODE_PATH = 0x7075
#: The ZIP64 extended information field's header ID.
_ZIP64 = 0x0001
#: A TNEF attribute's header (level, id, type, length; MS-OXTNEF 2.1.3.1), the checksum after its data, the stream's start.
_TNEF_ATTRIBUTE, _TNEF_CHECKSUM = struct.Struct("<BHHL"), 2
_TNEF_START = struct.calcsize("<LH")  # signature, key
#: TNEF attributes read per attachment, over all its containers: this many, plus this many per member allowed.
_TNEF_ATTRIBUTES, _TNEF_ATTRIBUTES_PER_MEMBER = 1000, 16
#: MAPI property types (MS-OXCDATA 2.11.1) by the size of one value, and those of values with a length.
_MAPI_FIXED = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16}
_MAPI_SIZED = frozenset({0x0000, 0x000D, 0x001E, 0x001F, 0x0102})
_MAPI_MULTIPLE, _MAPI_NAMED = 0x1000, 0x8000
#: Values (and items of values) in one attachment's MAPI properties: a real one has a few dozen.
_MAPI_VALUES = 4096
_U32 = struct.Struct("<L")


@dataclass(frozen=True)
class Limits:
    """How far an archive is looked into."""

    max_depth: int = 3
    max_members: int = 2000
    max_size: int = 50 * 1024 * 1024
    #: Most bytes of zip central directories parsed, all nested zips together (an entry takes 46 bytes and its
    #: name): 150 tars each carrying a deck of 2,000 parts cost zipfile 2,000 entries each however few members are listed.
    max_directory: int = 5 * 1024 * 1024
    #: Most seconds of CPU the listing children (with ``child``) may take, all together, with what forking and
    #: waiting for each costs the worker (CHILD_MIN_SECONDS at least): about 10 ms a fork, and a zip may carry 2,000 gzip files.
    max_child_seconds: float = 10.0
    #: List what libarchive reads in a forked child (:func:`_walk_in_child`) instead of this process.
    child: bool = False


@dataclass(frozen=True)
class Entry:
    """One member of an archive: its path from the attachment down (``a.zip/b.zip/c.exe``)."""

    path: str
    encrypted: bool
    head: bytes


@dataclass
class Listing:
    """What was found inside an attachment, and what could not be looked at."""

    entries: list[Entry] = field(default_factory=list)
    encrypted: list[str] = field(default_factory=list)
    #: What a limit kept from being looked at (nested too deep, too many members, too much to decompress):
    #: a sender can build it, so a banned file may be there.
    limits: list[str] = field(default_factory=list)
    #: What could not be read or listed (a damaged archive, a kind without its library): its names as far as read.
    errors: list[str] = field(default_factory=list)
    #: The members that are messages (``.eml`` by a name a tool gives them), by path, each a temporary file
    #: the caller closes: a mail client opens one with its attachments, which the caller judges as an attached message's.
    messages: list[tuple[str, IO[bytes]]] = field(default_factory=list)
    #: Bytes decompressed (or decoded) to list it, of ``Limits.max_size``.
    decompressed: int = 0
    #: Bytes of zip central directories parsed, of ``Limits.max_directory``.
    directory: int = 0
    #: Seconds the listing children took, of ``Limits.max_child_seconds``.
    child_seconds: float = 0.0


class _Job(NamedTuple):
    """An archive for a listing child: its path, its data (a seekable file), its kind, its depth and its other paths."""

    path: str
    data: IO[bytes]
    kind: str
    depth: int
    aliases: tuple[str, ...] = ()


@dataclass
class _Budget:
    size: int
    members: int
    #: The members the attachment's Office documents may still have, all of them together (one more
    #: max_members): a fresh budget per document let documents nested in documents list millions of parts.
    documents: int = 0
    #: Whether the walk is inside an Office document (its parts counted in ``documents``).
    in_document: bool = False
    #: The members the Office documents may still open past ``documents`` (:func:`_late_object`), and whether the
    #: walk is in one such object (its members counted in ``late``).
    late: int = _LATE_MEMBERS
    late_open: bool = False
    #: The parts past ``documents`` whose first bytes may still be read for an object (:func:`_object_head`).
    late_heads: int = _LATE_HEADS
    #: TNEF attributes left to read (each costs its header, however small).
    attributes: int = _TNEF_ATTRIBUTES
    #: Bytes of zip central directories left to parse (``Limits.max_directory``).
    directory: int = 0
    #: Seconds of CPU left to the listing children (``Limits.max_child_seconds``).
    child_seconds: float = 0.0
    #: Bytes of zips left to search for members their directory leaves out, and local headers left to read so
    #: (:func:`_hidden_members`), for the whole attachment: a zip of 700 zips each searched anew took 8 s.
    hidden_bytes: int = 0
    hidden_headers: int = 0
    #: The libarchive kinds found in zips, listed after the rest (:func:`_walk_deferred`), together in one child: a
    #: fork each cost the worker about 10 ms, and a zip may carry 2,000 gzip files.
    deferred: list[_Job] = field(default_factory=list)


#: errno values that say the machine failed, not the archive: no space, quota, file descriptors, memory.
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def local_failure(exc: BaseException) -> bool:
    """Whether *exc* is this machine running short (disk, quota, file descriptors, memory), which
    no content can cause: the message must wait (451), not pass as unreadable or as having no attachment."""
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS)


def supported(kind: str) -> bool:
    """Whether archives of *kind* (as :func:`milterd.content.filetypes.sniff` names them) can be listed here."""
    return kind in _IN_WORKER or ((kind in ARCHIVE_KINDS or kind in COMPRESSED_KINDS) and kind not in UNLISTED_ARCHIVE_KINDS and libarchive is not None)


def archive_kind(name: str, head: bytes) -> str | None:
    """The archive kind of a file called *name* starting with *head*, or None when it is no archive."""
    kind = sniff(head)
    if kind in ARCHIVE_KINDS or (kind in COMPRESSED_KINDS and libarchive is not None):
        return kind
    if outlook_file([name], head):
        return "msg"
    exts = extensions(name)
    if exts and exts[-1] in _COMPRESSED_EXTENSIONS and libarchive is not None:
        return _COMPRESSED_EXTENSIONS[exts[-1]]
    if exts and exts[-1] in UU_EXTENSIONS:
        return "uue"
    # Also under other first bytes: unzip, 7-Zip and libarchive open an invoice.zip that starts
    # with a self-extractor's stub or a GIF header (they look for the archive, not at byte 0).
    return _ARCHIVE_EXTENSIONS.get(exts[-1]) if exts else None


def archive_kind_of(names: Iterable[str], head: bytes) -> str | None:
    """:func:`archive_kind` of the first of *names* (a file's name, then the others a tool may give it) that has one,
    else the kind of a document that may embed a Packager object (:data:`_EMBEDDING_KINDS`), by *head*, else
    ``"uue"`` for a file *head* shows uuencoded files in (after its names: a zip named so is opened as one)."""
    kind = next((kind for kind in (archive_kind(name, head) for name in names) if kind), None)
    if kind is None and (sniffed := sniff(head)) in _EMBEDDING_KINDS:
        return sniffed
    if kind is None and encoded_head(head):
        return "uue"
    return kind


def list_archive(name: str, data: IO[bytes], kind: str, limits: Limits, aliases: tuple[str, ...] = ()) -> Listing:
    """The members of archive *data* (a seekable file of *kind*) called *name* (or *aliases*, the other names
    a mail client may save it under), nested archives included.

    On a libmilter thread the listing runs on a thread Python started (:func:`run_on_python_thread`): libarchive's
    read callbacks (ctypes) on the former used another connection's Python thread state, or a freed one, and a
    listing child forked there crashed at its first read (SIGSEGV, up to half the listings through Postfix under
    concurrent connections: held as ATTACH_ARCHIVE_LIMIT); in the worker (``archive_process = false``) it crashed
    the worker.
    """
    return run_on_python_thread(lambda: _list_archive(name, data, kind, limits, aliases))


def _list_archive(name: str, data: IO[bytes], kind: str, limits: Limits, aliases: tuple[str, ...]) -> Listing:
    """:func:`list_archive` on the calling thread."""
    listing = Listing()
    budget = _Budget(limits.max_size, limits.max_members, limits.max_members, late=min(_LATE_MEMBERS, limits.max_members), attributes=_TNEF_ATTRIBUTES + _TNEF_ATTRIBUTES_PER_MEMBER * limits.max_members,
                     directory=limits.max_directory, child_seconds=limits.max_child_seconds,
                     hidden_bytes=_HIDDEN_SEARCH, hidden_headers=max(limits.max_members, _ZIP_ENTRIES_MARGIN))
    try:
        _walk(name, data, kind, 1, limits, budget, listing, aliases)
        _walk_deferred(limits, budget, listing)
    finally:
        for job in budget.deferred:
            job.data.close()
        listing.decompressed = limits.max_size - max(budget.size, 0)
        listing.directory = limits.max_directory - budget.directory
        listing.child_seconds = limits.max_child_seconds - budget.child_seconds
    return listing


def _walk(path: str, data: IO[bytes], kind: str, depth: int, limits: Limits, budget: _Budget, listing: Listing, aliases: tuple[str, ...] = (),
          office: bool = False) -> None:
    """List the archive *data* of *kind* called *path* (and *aliases*); *office*: a zip an OLE object holds as its document."""
    try:
        if kind == "zip":
            try:
                _walk_zip(path, data, depth, limits, budget, listing, aliases, office)
            except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
                if libarchive is None:
                    raise
                # No end of central directory where zipfile looks (the zip cut short, or followed by more
                # than 64 KB), or one name flagged UTF-8 that is not: unzip, 7-Zip and libarchive still
                # extract the rest, libarchive from the local headers when it must.
                listing.errors.append(f"{path}: unreadable zip archive ({exc.__class__.__name__}: {str(exc)[:80]}), listed by libarchive")
                _walk_libarchive_kind(path, data, kind, depth, limits, budget, listing)
        elif kind == "tnef":
            _walk_tnef(path, data, depth, limits, budget, listing)
        elif kind == "msg":
            _walk_msg(path, data, depth, limits, budget, listing)
        elif kind == "ole":
            # A document olefile cannot read strictly is noted, not held: Word opens legitimate ones it finds a defect in.
            _walk_compound(path, data, depth, limits, budget, listing, listing.errors)
        elif kind == "rtf":
            _walk_rtf(path, data, depth, limits, budget, listing)
        elif kind == "uue":
            _walk_uue(path, data, depth, limits, budget, listing)
        elif supported(kind):
            _walk_libarchive_kind(path, data, kind, depth, limits, budget, listing, aliases)
            if limits.child:
                return  # the child walked it as here, the zip after it included
        elif kind in UNLISTED_ARCHIVE_KINDS:
            listing.limits.append(f"{path}: {kind} archives cannot be listed here (7-Zip or WinRAR opens it)")
        else:
            listing.errors.append(f"{path}: {kind} archives cannot be listed (libarchive-c is not installed)")
        if kind != "zip" and _named_zip((path, *aliases)) and _zip_directory(data)[0] is not None:
            # A tar (or a 7z…) named .zip that ends as a zip: unzip and 7-Zip open that zip, found from the file's end.
            _walk_zip(path, data, depth, limits, budget, listing, aliases)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, OSError, RuntimeError) as exc:
        if local_failure(exc):
            raise  # the disk full while a member was copied out: not the archive's doing
        # The listing stopped here, a limit: unzip, GNU tar and 7-Zip carry on past the damage, a banned file and all.
        listing.limits.append(f"{path}: unreadable {kind} archive ({exc.__class__.__name__}: {str(exc)[:80]})")
    except Exception as exc:  # noqa: BLE001 - libarchive's errors, anything a hostile archive provokes
        if local_failure(exc):
            raise
        if any(word in str(exc).lower() for word in ("encrypt", "passphrase", "password")):
            listing.encrypted.append(path)
        else:
            listing.limits.append(f"{path}: unreadable {kind} archive ({exc.__class__.__name__})")


def _walk_libarchive_kind(path: str, data: IO[bytes], kind: str, depth: int, limits: Limits, budget: _Budget, listing: Listing,
                          aliases: tuple[str, ...] = ()) -> None:
    if limits.child:
        _walk_children([_Job(path, data, kind, depth, aliases)], limits, budget, listing)
    else:
        _walk_libarchive(path, data, depth, limits, budget, listing, kind, aliases)


def _walk_deferred(limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The archives deferred in ``budget.deferred``, with those they defer in turn: in one child with ``Limits.child``
    (where what they defer is walked), else here, in the same order."""
    while budget.deferred:
        jobs, budget.deferred = budget.deferred, []
        try:
            if limits.child:
                _walk_children(jobs, limits, budget, listing)
            else:
                for job in jobs:
                    _walk(job.path, job.data, job.kind, job.depth, limits, budget, listing, job.aliases)
        finally:
            for job in jobs:
                job.data.close()


def _walk_children(jobs: list[_Job], limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The archives of *jobs* listed in one child (:func:`_walk_in_child`), within the CPU the message has left for it."""
    if budget.child_seconds <= 0:
        listing.limits.extend(f"{job.path}: {job.kind} archive past the CPU time left to listing processes, not looked at" for job in jobs)
        return
    try:
        _walk_in_child(jobs, limits, budget, listing)
    except OSError as exc:
        if local_failure(exc):
            raise
        listing.limits.extend(f"{job.path}: unreadable {job.kind} archive ({exc.__class__.__name__}: {str(exc)[:80]})" for job in jobs)


def _take_member(path: str, limits: Limits, budget: _Budget, listing: Listing, notes: list[str] | None = None) -> bool:
    budget.members -= 1
    if budget.members == -1:
        # In an object opened past a document's parts' budget the members are those left of the late allowance.
        spent = f"the {min(_LATE_MEMBERS, limits.max_members)} objects opened past the parts' budget" if budget.late_open else f"{limits.max_members} members"
        (listing.limits if notes is None else notes).append(f"{path}: past {spent}, the rest not looked at")
    return budget.members >= 0


#: Extensions of files that 7-Zip, WinZip or the system open as archives, besides those archive_kind knows by
#: name (a zip called p.zipx or p.epub): an unreadable member so named may hold what it was never opened for.
_OPENED_AS_ARCHIVES = frozenset({"zipx", "z01", "jar", "xpi", "epub", "ipa", "apk", "appx", "msix", "lzh", "lha", "arj", "cpio", "xar", "wim", "iso", "img"})


def _named_zip(names: Iterable[str]) -> bool:
    """Whether any of *names* (paths) has an extension that says zip (``.zip``)."""
    for name in names:
        exts = extensions(name.rsplit("/", 1)[-1])
        if exts and _ARCHIVE_EXTENSIONS.get(exts[-1]) == "zip":
            return True
    return False


def _packed(name: str) -> bool:
    """Whether *name* says an archive or a compressed file (``.zip``, ``.zipx``, ``.tgz``, ``.gz``…): a tool opens it for what it holds."""
    exts = extensions(name)
    last = exts[-1] if exts else ""
    return archive_kind(name, b"") is not None or last in _DECOMPRESSED_EXTENSIONS or last in _OPENED_AS_ARCHIVES


def _document(name: str) -> bool:
    """Whether *name* is an Office document's (:data:`_DOCUMENT_EXTENSIONS`)."""
    exts = extensions(name)
    return bool(exts) and exts[-1] in _DOCUMENT_EXTENSIONS


def _walk_zip(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing, aliases: tuple[str, ...] = (),
              office: bool = False) -> None:
    """List the zip *data* called *path* (and *aliases*: the other names a tool may give it); *office*: an OLE object's
    document (an OOXML or ODF package), an Office document whatever its path says."""
    declared, room = _zip_directory(data)
    # zipfile parses the whole central directory before the first member is counted (150,000 entries:
    # over a second and 80 MB); directories are entries but no members, hence the margin.
    if declared is not None and declared > max(budget.members, 0) + max(limits.max_members, _ZIP_ENTRIES_MARGIN):
        listing.limits.append(f"{path}: past {limits.max_members} members ({declared} entries declared), not looked at")
        return
    # However few of its members are listed (an Office document's past its parts' budget), the whole directory is parsed.
    if room > budget.directory:
        listing.limits.append(f"{path}: a zip directory of {room} bytes, past the {max(budget.directory, 0)} left to parse, not looked at")
        return
    budget.directory -= room
    with zipfile.ZipFile(data) as archive:
        document = (office or all(_document(name) for name in (path, *aliases))) and _office_parts(archive)
        # An Office document's parts have a member budget of their own (a document in a document shares it,
        # already in budget.members); the parts a limit leaves out are a note.
        if not document or budget.in_document:
            _walk_zip_members(path, archive, data, depth, limits, budget, listing, listing.errors if document else listing.limits, document)
        else:
            outer = budget.members
            budget.members, budget.in_document = budget.documents, True
            try:
                _walk_zip_members(path, archive, data, depth, limits, budget, listing, listing.errors, document)
            finally:
                budget.documents, budget.members, budget.in_document = budget.members, outer, False
        _hidden_members(path, archive, data, limits, budget, listing)


#: The most bytes of an attachment's zips searched for members their central directory does not name (:func:`_hidden_members`).
_HIDDEN_SEARCH = 64 * 1024 * 1024
#: The most bytes of a hidden member's compressed data read for its first bytes.
_HIDDEN_HEAD = 64 * 1024
#: The bytes searched for a local header at a time.
_HIDDEN_WINDOW = 64 * 1024


def _hidden_members(path: str, archive: zipfile.ZipFile, data: IO[bytes], limits: Limits, budget: _Budget, listing: Listing) -> None:
    """Judge the members of the zip *data* whose local header no entry of its central directory points at.

    zipfile, unzip and Explorer list a zip from its central directory (the last one, of zips put end to end); 7-Zip
    and WinRAR also from the local headers, and open a member the directory leaves out, or the first of two zips
    concatenated ("zip concatenation", seen in malware campaigns): such an ``evil.exe`` was never judged.  Every
    local header outside the members' own data and the central directory is read for its name and first bytes
    (stored or deflated); an archive or a saved message so hidden is not opened, a limit.
    """
    if budget.hidden_bytes <= 0 or budget.hidden_headers <= 0:
        return  # spent on the attachment's other zips, and said so once
    end = data.seek(0, os.SEEK_END)
    # The directory and after it: no member.  Each extent within the file: a directory may put an offset past its
    # end (up to 2**64 with ZIP64), and the search below, moving one byte a read of nothing, ran to it for hours.
    extents = [(archive.start_dir, end), *(_member_extent(data, info) for info in archive.infolist())]
    taken = sorted((min(max(start, 0), end), min(max(stop, 0), end)) for start, stop in extents)
    referenced = {info.header_offset for info in archive.infolist()}
    listed = {(entry.path, entry.head) for entry in listing.entries}  # a directory that lies about offsets: each once
    at = 0
    for start, stop in [*taken, (end, end)]:
        while at < start and budget.hidden_bytes > 0 and budget.hidden_headers > 0 and budget.members > 0:
            data.seek(at)
            block = data.read(min(start - at, _HIDDEN_WINDOW) + 3)
            if not block:
                break  # the file's end: nothing more to search
            budget.hidden_bytes -= len(block)
            found = block.find(_LOCAL_SIGNATURE)
            if found < 0 or at + found >= start:
                at += max(len(block) - 3, 1)
                continue
            at += found
            if at not in referenced:
                budget.hidden_headers -= 1
                _hidden_member(path, data, at, limits, budget, listing, listed)
            at += 4
        at = max(at, stop)
        if budget.hidden_bytes <= 0 or budget.hidden_headers <= 0:
            listing.limits.append(f"{path}: past {_HIDDEN_SEARCH // 2**20} MB or {max(limits.max_members, _ZIP_ENTRIES_MARGIN)} headers"
                                  " searched for members zip directories leave out, the rest not looked at")
            return


def _local_header(data: IO[bytes], offset: int) -> tuple[Any, ...] | None:
    """The fields of the zip local header at *offset* of *data* (``_LOCAL_HEADER``), *data* left past them; None where
    there is none (before the file's start, cut short, another signature)."""
    if offset < 0:  # a lying directory puts it before the file's start
        return None
    data.seek(offset)
    header = data.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        return None
    return _LOCAL_HEADER.unpack(header)


def _local_name(data: IO[bytes], fields: tuple[Any, ...]) -> str:
    """The file name that follows the local header *fields* in *data*: UTF-8 with its flag (bit 11), else CP437."""
    return data.read(fields[10]).decode("utf-8" if fields[3] & 0x800 else "cp437", "replace")


def _member_extent(data: IO[bytes], info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where the member *info* of the zip *data* starts and ends: its local header (whose name and extra field may
    be longer than its directory entry's), its data, and its data descriptor when it has one."""
    start = info.header_offset
    fields = _local_header(data, start)
    if fields is None:
        return start, start
    # The data's size as the local header says it, unless it says ZIP64's or a data descriptor holds it: a
    # directory that overstates a stored member's size would hide the local headers inside that span.
    size = info.compress_size if fields[8] == 0xFFFFFFFF or fields[3] & 0x8 else min(fields[8], info.compress_size)
    header_end = start + _LOCAL_HEADER.size + fields[10] + fields[11]
    stop = header_end + size
    if fields[3] & 0x8:  # a data descriptor: with or without its signature, sizes of 4 or (ZIP64) 8 bytes
        descriptor = _data_descriptor(data, stop, info)
        # Only the directory says where the data ends: a size it overstates, with no descriptor of this member
        # there, would hide the local headers inside that span (an evil.exe 7-Zip opens): only the header is taken.
        return (start, stop + descriptor) if descriptor else (start, header_end)
    if fields[8] == 0xFFFFFFFF and not _zip64_sizes_agree(data, start, fields, info):
        return start, header_end
    return start, stop


def _data_descriptor(data: IO[bytes], at: int, info: zipfile.ZipInfo) -> int:
    """The length of the data descriptor of *info* at *at* (its signature optional, sizes of 4 or 8 bytes), or 0
    when what is there does not hold the member's CRC and sizes."""
    data.seek(at)
    found = data.read(28)
    body = found[4:] if found[:4] == b"PK\x07\x08" else found
    signature = len(found) - len(body)
    for width, form in ((8, "<IQQ"), (4, "<III")):
        length = 4 + 2 * width
        if len(body) >= length and struct.unpack(form, body[:length]) == (info.CRC, info.compress_size, info.file_size):
            return signature + length
    return 0


def _zip64_sizes_agree(data: IO[bytes], start: int, fields: tuple[Any, ...], info: zipfile.ZipInfo) -> bool:
    """Whether the ZIP64 extra field of the local header at *start* gives the compressed size the directory gives."""
    data.seek(start + _LOCAL_HEADER.size + fields[10])
    for kind, body in _extra_fields(data.read(fields[11])):
        if kind == _ZIP64 and len(body) >= 16:  # a local header's holds both sizes: original, then compressed
            return bool(struct.unpack_from("<Q", body, 8)[0] == info.compress_size)
    return False


def _hidden_member(path: str, data: IO[bytes], offset: int, limits: Limits, budget: _Budget, listing: Listing,
                   listed: set[tuple[str, bytes]]) -> None:
    """Judge the member whose local header is at *offset* of *data* (:func:`_hidden_members`), unless *listed*
    already holds its path and first bytes."""
    fields = _local_header(data, offset)
    if fields is None:
        return
    flags, method, compressed, extra_length = fields[3], fields[4], fields[8], fields[11]
    name = _local_name(data, fields)
    if not name or name.endswith("/"):
        return
    member = f"{path}/{name}"
    data.seek(extra_length, os.SEEK_CUR)
    if flags & 0x1:
        if (member, b"") not in listed and _take_member(member, limits, budget, listing):
            listing.entries.append(Entry(member, True, b""))
            listing.encrypted.append(member)
            if _sealed([name]):
                listing.limits.append(f"{member}: an encrypted archive or message, never looked into")
        return
    # A size of 0 with a data descriptor (flag 3) is unknown: the head is read from what follows, as far as it goes.
    body = data.read(min(compressed if compressed and not flags & 0x8 else _HIDDEN_HEAD, _HIDDEN_HEAD))
    budget.hidden_bytes -= len(body)
    head = b""
    if method == 0:
        head = body[:HEAD_SIZE]
    elif method == 8:
        try:
            head = zlib.decompressobj(-15).decompress(body, HEAD_SIZE)
        except zlib.error:
            head = b""
    if (member, head) in listed or not _take_member(member, limits, budget, listing):
        return
    listing.entries.append(Entry(member, False, head))
    if archive_kind(name, head) is not None or message_file([name]):
        listing.limits.append(f"{member}: a member the zip's directory leaves out, not opened")


def _office_parts(archive: zipfile.ZipFile) -> bool:
    """Whether *archive* is laid out as an Office document: OOXML's ``[Content_Types].xml``, or ODF's first entry ``mimetype``."""
    names = archive.namelist()
    return "[Content_Types].xml" in names or names[:1] == ["mimetype"]


def _walk_zip_members(path: str, archive: zipfile.ZipFile, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing,
                      notes: list[str], document: bool = False) -> None:
    """List the members of *archive* (the zip *data* called *path*); the members past the budget go to *notes*.  Of an
    Office *document*, the objects it embeds past the budget are still opened (:func:`_late_object`)."""
    named: set[str] = set()  # the paths listed so far: an alias names a file once
    # The parts' budget spent (or a document in an object opened past it): only the document's objects are opened.
    late = document and budget.late_open
    if late:
        notes.append(f"{path}: a document in an object past {limits.max_members} parts, only its objects looked at")
    for info in archive.infolist():
        aliases = [f"{path}/{alias}" for alias in _zip_aliases(data, info)]
        if info.is_dir() and not aliases:
            continue
        member = f"{path}/{info.filename}"
        if not late and _take_member(member, limits, budget, listing, notes):
            _zip_member(member, archive, data, info, aliases, named, depth, limits, budget, listing)
            continue
        if not document:
            return
        late = True
        if _object_part((info.filename, *aliases)) or _object_head(member, archive, data, info, budget, listing):
            _late_object(member, archive, data, info, aliases, named, depth, limits, budget, listing)


#: The folders of an Office document's parts that are objects it embeds: OOXML's ``word/embeddings``, ODF's ``Object 1``.
_OBJECT_FOLDER = re.compile(r"(?:^|/)(?:embeddings/|object \d+(?:/|$))", re.IGNORECASE)


def _object_part(names: Iterable[str]) -> bool:
    """Whether an Office document's part called by any of *names* is an object it embeds: in its ``embeddings``
    folder (or ODF's ``Object 1``), an ``oleObject1.bin``, or a document, archive or message by its name."""
    for name in names:
        base = name.rsplit("/", 1)[-1]
        exts = extensions(base)
        if (_OBJECT_FOLDER.search(name) or base.lower().startswith("oleobject") or _document(base) or _packed(base)
                or message_file([base]) or (exts and exts[-1] in _OLE_DOCUMENTS)):
            return True
    return False


def _object_head(member: str, archive: zipfile.ZipFile, data: IO[bytes], info: zipfile.ZipInfo, budget: _Budget,
                 listing: Listing) -> bool:
    """Whether the part *info* past an Office document's parts' budget starts as an object (:data:`_OBJECT_HEADS`),
    whatever its name: Word runs a Packager object stored as ``word/media/image9.png`` or ``word/activeX/x.bin``.
    Past :data:`_LATE_HEADS` such parts, a limit: one may be an object."""
    if info.is_dir():
        return False
    budget.late_heads -= 1
    if budget.late_heads < 0:
        if budget.late_heads == -1:
            listing.limits.append(f"{member}: past the {_LATE_HEADS} parts read past the parts' budget, the rest not looked at")
        return False
    try:
        with _open_member(archive, data, info) as stream:
            head = stream.read(len(_OBJECT_HEADS[0]))
    except _MEMBER_ERRORS:
        return False  # an unreadable part (encrypted, damaged): named only, noted as the parts past the budget are
    budget.size -= len(head)
    return head.startswith(_OBJECT_HEADS)


def _late_object(member: str, archive: zipfile.ZipFile, data: IO[bytes], info: zipfile.ZipInfo, aliases: list[str],
                 named: set[str], depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """An object an Office document embeds past its parts' budget, opened with what it holds from the members the
    attachment's documents have past theirs (:data:`_LATE_MEMBERS`); past those, a limit."""
    # Opened, not only noted: padding a deck past archive_max_members with pictures hid the Packager object after them
    # (a note was ATTACH_UNREADABLE, scored); a limit for every large document with an embedded chart would hold many.
    if budget.late_open:  # in such an object already: its members are those
        if _take_member(member, limits, budget, listing, listing.limits):
            _zip_member(member, archive, data, info, aliases, named, depth, limits, budget, listing)
        return
    spent, budget.members, budget.late_open = budget.members, budget.late, True
    try:
        if _take_member(member, limits, budget, listing, listing.limits):
            _zip_member(member, archive, data, info, aliases, named, depth, limits, budget, listing)
    finally:
        budget.late, budget.members, budget.late_open = budget.members, spent, False


#: The last extension of a split archive's volume: 7-Zip's ``.001``, RAR's old ``.r00``, a split zip's ``.z01``.
_VOLUME = re.compile(r"\d{3}|[rz]\d{2}")


def _sealed(names: Iterable[str]) -> bool:
    """Whether an encrypted member called by any of *names* is an archive, a volume of one or a message (saved, or
    Outlook's) by its name: what it holds, a banned file too, is never looked into."""
    return any(_packed(name) or _volume(name) or message_file([name]) or outlook_name([name]) for name in names)


def _volume(name: str) -> bool:
    """Whether *name* is a split archive's volume's (:data:`_VOLUME`): 7-Zip and WinRAR open the archive from it."""
    exts = extensions(name.rsplit("/", 1)[-1])
    return bool(exts) and _VOLUME.fullmatch(exts[-1]) is not None


def _zip_member(member: str, archive: zipfile.ZipFile, data: IO[bytes], info: zipfile.ZipInfo, aliases: list[str],
                named: set[str], depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """List the member *info* of *archive* (the zip *data*) called *member*, taken from the budget: its entry and its
    aliases' (*named*: the paths listed so far), and what it holds when it is an archive or a message."""
    encrypted = bool(info.flag_bits & 0x1)
    named.add(member)
    listing.entries.extend(Entry(alias, encrypted, b"") for alias in aliases if alias not in named)
    named.update(aliases)
    if encrypted:
        listing.entries.append(Entry(member, True, b""))
        listing.encrypted.append(member)
        if _sealed((info.filename, *aliases)):
            listing.limits.append(f"{member}: an encrypted archive or message, never looked into")
        return
    try:
        head = _read_head(archive, data, info, budget)
    except _MEMBER_ERRORS as exc:
        # One unreadable member (deflate64, a bad CRC) leaves the other names to judge; an archive or a saved
        # message by its name is a limit (unzip keeps a member with a bad CRC, 7-Zip reads deflate64).
        listing.entries.append(Entry(member, False, b""))
        unread = listing.limits if _sealed((info.filename, *aliases)) else listing.errors
        unread.append(f"{member}: unreadable member ({exc.__class__.__name__}: {str(exc)[:80]})")
        return
    listing.entries.append(Entry(member, False, head))
    # A saved message: a mail client opens it with its attachments, which the caller judges.
    if message_file((info.filename, *aliases)):
        if stat.S_ISLNK(info.external_attr >> 16):
            # unzip makes it a symbolic link (zip -y stores one so): opened, it is the file it points to.
            listing.limits.append(f"{member}: a link named as a message, to a file never opened as one")
        elif copy := _copied_member(member, archive, data, info, limits, budget, listing):
            listing.messages.append((member, copy))
    # unzip may extract it under an alias (its Unicode Path): docs.zip named notes.txt is still an archive.
    inner = archive_kind_of((info.filename, *aliases), head)
    if inner is None:
        return
    if depth >= limits.max_depth and inner not in _EMBEDDING_KINDS:  # a document: a limit only where it embeds an object
        listing.limits.append(f"{member}: archive nested deeper than {limits.max_depth}")
        return
    nested = _copied_member(member, archive, data, info, limits, budget, listing)
    if nested is None:
        return
    if inner not in _IN_WORKER and supported(inner):
        budget.deferred.append(_Job(member, nested, inner, depth + 1, tuple(aliases)))  # with the others, in one child: _walk_deferred
        return
    with nested:
        _walk(member, nested, inner, depth + 1, limits, budget, listing, tuple(aliases))


def _copied_member(member: str, archive: zipfile.ZipFile, data: IO[bytes], info: zipfile.ZipInfo, limits: Limits,
                   budget: _Budget, listing: Listing) -> IO[bytes] | None:
    """The zip member *info* (a nested archive, a message) decompressed to a temporary file within the budget, or
    None with the reason in ``listing.limits``: what it holds is never looked at (unzip keeps a member with a bad CRC)."""
    if info.file_size > budget.size:
        listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
        return None
    try:
        with _open_member(archive, data, info) as stream:
            copy = _copy_bounded(stream, budget)
    except _MEMBER_ERRORS as exc:
        listing.limits.append(f"{member}: unreadable member ({exc.__class__.__name__}: {str(exc)[:80]})")
        return None
    if copy is None:
        listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
    return copy


def _zip_aliases(data: IO[bytes], info: zipfile.ZipInfo) -> list[str]:
    """The names other than ``info.filename`` an unzip tool may give the member: the Info-ZIP Unicode
    Path of its central directory entry (unzip, 7-Zip and libarchive prefer it), and the name and
    Unicode Path of its local header (libarchive reads the local header; zipfile only the directory)."""
    names = [_unicode_path(info.extra)]
    fields = _local_header(data, info.header_offset)
    if fields is not None:
        names.append(_local_name(data, fields))
        names.append(_unicode_path(data.read(fields[11])))
    known = {info.filename, info.orig_filename, ""}
    return [name for name in dict.fromkeys(names) if name not in known]


def _unicode_path(extra: bytes) -> str:
    """The name in an Info-ZIP Unicode Path field (version 1) of a zip extra field, or ``""``."""
    for kind, body in _extra_fields(extra):
        if kind == _UNICODE_PATH and len(body) >= 5 and body[0] == 1:  # version 1; a field cut short is the last one
            return body[5:].decode("utf-8", "replace")
    return ""


def _extra_fields(extra: bytes) -> Iterator[tuple[int, bytes]]:
    """The (header ID, data) of each field of a zip extra field; the last one's data may be cut short."""
    while len(extra) >= 4:
        kind, size = struct.unpack_from("<2H", extra)
        yield kind, extra[4:4 + size]
        extra = extra[4 + size:]


def _zip_directory(data: IO[bytes]) -> tuple[int | None, int]:
    """The entries that the zip *data*'s end of central directory record (its ZIP64 one when present)
    declares, found where and as ``zipfile`` finds it (None when there is none, or when its central
    directory has no room for that many: a count that lies), and the bytes of directory zipfile would
    parse there, whatever the count (0 when there is no record)."""
    end = data.seek(0, os.SEEK_END)
    start = max(end - _EOCD.size - (1 << 16), 0)  # zipfile's window: the longest comment, and a byte
    data.seek(start)
    tail = data.read(end - start)
    at = len(tail) - _EOCD.size
    if not (at >= 0 and tail[at:at + 4] == _EOCD_SIGNATURE and tail[-2:] == b"\0\0"):
        at = tail.rfind(_EOCD_SIGNATURE)
        if at < 0 or at + _EOCD.size > len(tail):
            return None, 0
    _, _, _, _, entries, directory_size, _, _ = _EOCD.unpack_from(tail, at)
    record = start + at
    locator = record - _EOCD64_LOCATOR.size
    if locator - _EOCD64.size >= 0:
        data.seek(locator - _EOCD64.size)
        zip64 = data.read(_EOCD64.size + _EOCD64_LOCATOR.size)
        if len(zip64) == _EOCD64.size + _EOCD64_LOCATOR.size and zip64[-_EOCD64_LOCATOR.size:][:4] == _EOCD64_LOCATOR_SIGNATURE \
                and zip64[:4] == _EOCD64_SIGNATURE:
            fields = _EOCD64.unpack_from(zip64)
            entries, directory_size, record = fields[7], fields[8], locator - _EOCD64.size
    # zipfile reads the directory's size in bytes (no more than the file holds) and parses entries until they are used up.
    room = min(directory_size, end)
    # Each central directory entry takes at least 46 bytes, and the directory lies before its end record.
    if entries * _CENTRAL_ENTRY_MIN > directory_size or directory_size > record:
        return None, room
    return int(entries), room


def _read_head(archive: zipfile.ZipFile, data: IO[bytes], info: zipfile.ZipInfo, budget: _Budget) -> bytes:
    if budget.size <= 0:
        return b""
    with _open_member(archive, data, info) as stream:
        head = stream.read(min(HEAD_SIZE, budget.size))
    budget.size -= len(head)
    return head


def _open_member(archive: zipfile.ZipFile, data: IO[bytes], info: zipfile.ZipInfo) -> IO[bytes]:
    """The member *info* of the zip *data* (opened as *archive*) to read from, decompressing no more than is read."""
    if info.compress_type in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        return io.BufferedReader(_BoundedMember(data, info), HEAD_SIZE)  # a head read decompresses no more than the head
    return archive.open(info)


class _BoundedMember(io.RawIOBase):
    """A bzip2 or LZMA zip member read as zipfile reads it (its data after the local header, the size and CRC of its
    directory entry), never decompressing more than each read asks for.

    zipfile bounds the output of a read for deflate only: for these methods it decompresses each 4 KB it reads whole
    (``ZipExtFile._read1``), and 4 KB of bzip2 are a gigabyte of zeros: a 1 KB zip took a worker to 2 GB for the 512
    bytes of a member's head.
    """

    def __init__(self, data: IO[bytes], info: zipfile.ZipInfo) -> None:
        fields = _local_header(data, info.header_offset)
        if fields is None:
            raise zipfile.BadZipFile("Bad magic number for file header")
        self._data = data
        self._offset = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
        self._compressed = info.compress_size  # left to read
        self._left = self._size = info.file_size  # left to give, in all
        self._crc = 0
        self._expected_crc = info.CRC
        self._pending = b""  # the start of an LZMA member, until its header is whole
        self._decompressor: Any = bz2.BZ2Decompressor() if info.compress_type == zipfile.ZIP_BZIP2 else None
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Decompress at most ``len(buffer)`` bytes into *buffer*; 0 at the member's end."""
        wanted = min(len(buffer), self._left)
        out = b""
        while wanted > 0 and not out and not self._ended:
            needs_input = self._decompressor is None or self._decompressor.needs_input
            chunk = self._raw(_CHUNK) if needs_input else b""
            if needs_input and not chunk:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            if self._decompressor is None:
                chunk = self._lzma_decompressor(chunk)
                if self._decompressor is None:
                    continue
            out = self._decompressor.decompress(chunk, wanted)
            self._ended = self._decompressor.eof
        self._left -= len(out)
        self._crc = zlib.crc32(out, self._crc)
        if (self._ended or self._left <= 0) and self._crc != self._expected_crc:
            raise zipfile.BadZipFile("Bad CRC-32 for file")
        buffer[:len(out)] = out
        return len(out)

    def _raw(self, size: int) -> bytes:
        self._data.seek(self._offset)
        chunk = self._data.read(min(size, self._compressed))
        self._offset += len(chunk)
        self._compressed -= len(chunk)
        return chunk

    def _lzma_decompressor(self, chunk: bytes) -> bytes:
        """Set the LZMA decoder from zip's LZMA header (APPNOTE 5.8.8: version, properties' size, properties) once
        *chunk* holds it (a header cut short is read on); what follows the header."""
        self._pending += chunk
        if len(self._pending) < 4 or len(self._pending) < 4 + struct.unpack_from("<H", self._pending, 2)[0]:
            return b""
        size = struct.unpack_from("<H", self._pending, 2)[0]
        properties = self._pending[4:4 + size]
        if size != 5:
            raise zipfile.BadZipFile(f"LZMA properties of {size} bytes")
        # lc, lp and pb packed in one byte, then the dictionary's size (the .lzma header's first five bytes).
        packed, dict_size = properties[0], struct.unpack_from("<I", properties, 1)[0]
        if packed >= 9 * 5 * 5:
            raise zipfile.BadZipFile("Bad LZMA properties")
        lc, lp, pb = packed % 9, packed // 9 % 5, packed // 45
        # liblzma allocates the whole dictionary first (a header asking for 4 GB needs 4 GB), and references reach
        # no further back than the output so far, which ends at the member's size.
        dict_size = max(min(dict_size, self._size, _LZMA_DICTIONARY), 4096)
        lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": lp, "pb": pb}
        self._decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1])
        rest, self._pending = self._pending[4 + size:], b""
        return rest


def _copy_bounded(stream: IO[bytes], budget: _Budget, length: int | None = None) -> IO[bytes] | None:
    """*stream* (its next *length* bytes, else all of it) copied to a temporary file, or None (and
    nothing kept) once it passes the budget."""
    copy: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_MEMORY)
    left = length
    while left is None or left > 0:
        chunk = stream.read(min(_CHUNK, budget.size + 1, _CHUNK if left is None else left))
        if not chunk:
            break
        if left is not None:
            left -= len(chunk)
        budget.size -= len(chunk)
        if budget.size < 0:
            copy.close()
            return None
        copy.write(chunk)
    copy.seek(0)
    return copy


def _copy_exactly(stream: IO[bytes], length: int) -> IO[bytes]:
    """The next *length* bytes of *stream* (fewer where it ends) in a temporary file, already counted in a budget."""
    copy = _copy_bounded(stream, _Budget(length, 0), length)
    assert copy is not None  # a budget of the length asked for is never passed
    return copy


@dataclass
class _TnefFile:
    """One attachment of a TNEF stream: its names by where they come from, and its contents."""

    long_names: list[str] = field(default_factory=list)  # PR_ATTACH_LONG_FILENAME: what Outlook saves it as
    short_names: list[str] = field(default_factory=list)  # PR_ATTACH_FILENAME and attAttachTitle (8.3 names)
    display_names: list[str] = field(default_factory=list)  # PR_DISPLAY_NAME: an embedded message's subject
    streamed: list[tuple[int, int]] = field(default_factory=list)  # attAttachData: (offset, length) in the stream
    inline: list[bytes] = field(default_factory=list)  # PR_ATTACH_DATA_OBJ, already read (and counted)

    def names(self) -> list[str]:
        """Every name, the one Outlook saves it under first; a display name only for a file without another."""
        names = [*self.long_names, *self.short_names] or self.display_names
        return [name for name in dict.fromkeys(names) if name]


def _walk_tnef(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The attachments of the TNEF stream *data* as members, in the order of MS-OXTNEF 2.1.3: an attachment's
    attributes follow its attAttachRendData (each attribute is read here, never the stream as a whole)."""
    end = data.seek(0, os.SEEK_END)
    data.seek(0)
    if sniff(data.read(_TNEF_START)) != "tnef":
        raise ValueError("no TNEF signature")
    codepage = "cp1252"  # when the stream names none (tnefparse would decode 8-bit names with None and fail)
    files: list[_TnefFile] = []
    offset = _TNEF_START
    while offset < end:
        header = data.read(_TNEF_ATTRIBUTE.size)
        if len(header) < _TNEF_ATTRIBUTE.size:
            if header.strip(b"\0"):  # NULs padding the stream's end are nothing
                listing.errors.append(f"{path}: unreadable tnef archive (cut short in an attribute's header)")
            break
        budget.attributes -= 1
        if budget.attributes < 0:
            listing.limits.append(f"{path}: past its budget of TNEF attributes, the rest not looked at")
            break
        level, ident, _, length = _TNEF_ATTRIBUTE.unpack(header)
        start = offset + _TNEF_ATTRIBUTE.size
        size = min(length, end - start)
        offset = start + length + _TNEF_CHECKSUM
        if size < length:
            listing.errors.append(f"{path}: unreadable tnef archive (cut short: an attribute of {length} bytes has {size})")
        if ident == TNEF.ATTATTACHRENDDATA or (level == TNEF.LVL_ATTACHMENT and not files):
            if len(files) > max(budget.members, 0):
                break  # one more than the members left: listing them says the limit was reached
            files.append(_TnefFile())
        if level == TNEF.LVL_ATTACHMENT and ident == TNEF.ATTATTACHDATA:
            files[-1].streamed.append((start, size))
        elif level == TNEF.LVL_ATTACHMENT and ident in (TNEF.ATTATTACHTITLE, TNEF.ATTATTACHMENT):
            if size > budget.size:
                listing.limits.append(f"{path}: would decode past {limits.max_size} bytes, the rest not looked at")
                break
            value = data.read(size)
            budget.size -= size
            if ident == TNEF.ATTATTACHTITLE:
                files[-1].short_names.append(_tnef_text(value, codepage))
            else:
                _tnef_properties(path, value, codepage, files[-1], listing)
        elif ident == TNEF.ATTOEMCODEPAGE and size >= _U32.size:
            codepage = _codepage(_U32.unpack(data.read(_U32.size))[0])
        data.seek(offset)
    for number, file in enumerate(files, 1):
        names = file.names() or [f"(attachment {number} without a name)"]
        member = f"{path}/{names[0]}"
        if not _take_member(member, limits, budget, listing):
            return
        contents = [(data, start, size, False) for start, size in file.streamed]
        contents += [(io.BytesIO(value), 0, len(value), True) for value in file.inline]
        if not contents:
            listing.entries.append(Entry(member, False, b""))
        message = message_file(names)
        for source, start, size, counted in contents:
            _content_member(member, source, start, size, counted, message, depth, limits, budget, listing)
        # After the name Outlook saves it under, which a reply names first.
        listing.entries.extend(Entry(f"{path}/{alias}", False, b"") for alias in names[1:])


def _content_member(member: str, source: IO[bytes], start: int, size: int, counted: bool, message: bool, depth: int, limits: Limits,
                    budget: _Budget, listing: Listing, ole_object: bool = False) -> None:
    """The entry of one content of a TNEF or message file's attachment, *size* bytes at *start* of *source* (already in the
    budget when *counted*), kept when it is a *message* (Outlook opens a saved one with its attachments), and the archive it is, walked."""
    source.seek(start)
    head = source.read(min(HEAD_SIZE, size, max(budget.size, 0)))
    if not counted:
        budget.size -= len(head)
    listing.entries.append(Entry(member, False, head))
    if sniff(head) == "ole" or head.startswith(_IID_ISTORAGE):
        _embedded_object(member, source, start, size, counted, depth, limits, budget, listing, ole_object)
    if message:
        source.seek(start)
        copy = _copy_exactly(source, size) if counted else _copy_bounded(source, budget, size)
        if copy is None:
            listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
        else:
            listing.messages.append((member, copy))
    inner = archive_kind_of([member.rsplit("/", 1)[-1]], head)
    if inner is None or inner == "ole":  # a Compound File's objects: above
        return
    if depth >= limits.max_depth and inner not in _EMBEDDING_KINDS:
        listing.limits.append(f"{member}: archive nested deeper than {limits.max_depth}")
        return
    if counted:
        source.seek(start)
        _walk(member, source, inner, depth + 1, limits, budget, listing)
        return
    if size > budget.size:
        listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
        return
    source.seek(start)
    nested = _copy_bounded(source, budget, size)
    assert nested is not None  # size is within the budget (above)
    with nested:
        _walk(member, nested, inner, depth + 1, limits, budget, listing)


def _embedded_object(member: str, source: IO[bytes], start: int, size: int, counted: bool, depth: int, limits: Limits,
                     budget: _Budget, listing: Listing, ole_object: bool) -> None:
    """A Compound File a TNEF stream or a .msg file carries (an OLE attachment's storage serialized, after an IStorage
    interface id in TNEF, or a file by value): the files its Packager objects carry, judged as members under it
    (``winmail.dat/Package/evil.exe``) as a nested archive's.  Another Compound File (a Word 97 document) may hold none."""
    source.seek(start)
    offset = len(_IID_ISTORAGE) if source.read(len(_IID_ISTORAGE)) == _IID_ISTORAGE else 0
    if not counted:
        if size > budget.size:
            listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
            return
        budget.size -= size
    # A file by value named as an Office 97 document is opened by its program, never by Packager: olefile reads
    # it strictly (a legitimate one it finds a defect in is noted, not held).  An OLE object (its container says
    # so: TNEF's IStorage id, attach method 6), or a file named otherwise, may be a Packager object: held.
    exts = extensions(member.rsplit("/", 1)[-1])
    document = not ole_object and not offset and bool(exts) and exts[-1] in _OLE_DOCUMENTS
    source.seek(start + offset)
    _walk_compound(member, io.BytesIO(source.read(size - offset)), depth + 1, limits, budget, listing, listing.errors if document else listing.limits)


def _walk_compound(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing, unreadable: list[str]) -> None:
    """The files the Packager objects of the Compound File *data* carry, as members under the storages they are in
    (``invoice.doc/ObjectPool/_1234/evil.exe``; ``…/oleObject1.bin/evil.exe`` at its root), and the documents its
    objects hold (``…/_1234/Package/word/…``, a nested archive).  It is the archive at *depth*: past the bound, one
    that holds such an object is a limit.  What cannot be read goes to *unreadable*, but storages nested deeper
    than olefile reads (it recurses through them): a limit, as Word opens such a file."""
    found: list[tuple[str, list[str], bytes]] = []
    documents: list[tuple[str, bytes]] = []
    try:
        ole, root = open_compound(data)
        try:
            streams = list(packaged_streams(root))
            if streams and depth > limits.max_depth:
                listing.limits.append(f"{path}: embedded object nested deeper than {limits.max_depth}")
                return
            for storages, stream in streams:
                where = "/".join((path, *storages))
                if not _take_member(where, limits, budget, listing):
                    break
                if stream.size > budget.size:
                    listing.limits.append(f"{where}: would decompress past {limits.max_size} bytes")
                    break
                budget.size -= stream.size
                if document_stream(stream):
                    documents.append((f"{where}/{stream.entry.name}", read_stream(ole, stream)))
                    continue
                try:
                    names, value = package(read_stream(ole, stream))
                except ValueError as exc:  # a packaged file cut short: the other objects are still judged
                    unreadable.append(f"{where}: unreadable embedded object ({exc})")
                    continue
                found.append((where, names, value))
        finally:
            ole.close()
    except RecursionError:
        listing.limits.append(f"{path}: storages or entries nested deeper than olefile reads, not looked at")
    except Exception as exc:  # noqa: BLE001 - olefile's errors on a damaged or hostile file
        if local_failure(exc):
            raise
        unreadable.append(f"{path}: unreadable embedded object ({exc.__class__.__name__}: {str(exc)[:80]})")
    for where, names, value in found:  # those read before any error
        _packaged_file(where, names, value, depth, limits, budget, listing)
    for where, value in documents:
        _embedded_document(where, value, depth, limits, budget, listing, unreadable)


def _embedded_document(where: str, value: bytes, depth: int, limits: Limits, budget: _Budget, listing: Listing, unreadable: list[str]) -> None:
    """The document an OLE object holds (*value*, already counted): a zip its application opens, walked as a nested
    archive of the one at *depth* (an OOXML document may embed objects in turn)."""
    if sniff(value[:HEAD_SIZE]) != "zip":
        if value:
            unreadable.append(f"{where}: unreadable embedded document (no zip)")
        return
    if depth >= limits.max_depth:
        listing.limits.append(f"{where}: archive nested deeper than {limits.max_depth}")
        return
    _walk(where, io.BytesIO(value), "zip", depth + 1, limits, budget, listing, office=True)


def _walk_rtf(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The objects the RTF document *data* embeds: a Packager object's file as a member under its class
    (``invoice.rtf/Package/evil.exe``), an object whose data is a Compound File (a Word 97 document) walked as one
    nested archive.  Their hex data is decoded within ``Limits.max_size``; data Word may read as an object that
    is none here is a limit."""
    data.seek(0)
    embedded = embedded_objects(data.read(), max(budget.size, 0))
    budget.size -= embedded.decoded
    listing.limits.extend(f"{path}: {unread}" for unread in embedded.unread)
    if embedded.objects and depth > limits.max_depth:
        listing.limits.append(f"{path}: embedded object nested deeper than {limits.max_depth}")
        return
    for found in embedded.objects:
        member = f"{path}/{found.class_name or '(an object without a class)'}"
        if sniff(found.native[:HEAD_SIZE]) == "ole":
            _walk_compound(member, io.BytesIO(found.native), depth + 1, limits, budget, listing, listing.errors)
        elif found.class_name.casefold() == "package":
            try:  # its native data is an Ole10Native stream's but for its size
                names, value = package(_U32.pack(len(found.native)) + found.native)
            except ValueError as exc:
                listing.errors.append(f"{member}: unreadable embedded object ({exc})")
                continue
            if not _take_member(member, limits, budget, listing):
                return
            _packaged_file(member, names, value, depth, limits, budget, listing)
    if not embedded.whole:
        listing.limits.append(f"{path}: would decode past {limits.max_size} bytes, the rest not looked at")


def _packaged_file(where: str, names: list[str], value: bytes, depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The file a Packager object at *where* carries (*value*, already counted), judged under each of its *names* (Packager
    writes it out under the first and opens it) as a member of the archive at *depth*."""
    names = names or ["(an embedded file without a name)"]
    _content_member(f"{where}/{names[0]}", io.BytesIO(value), 0, len(value), True, message_file(names), depth, limits, budget, listing)
    listing.entries.extend(Entry(f"{where}/{alias}", False, b"") for alias in names[1:])


#: The bytes of ``Limits.max_size`` a line of a uuencoded file costs at least (a full line is 61 characters and its end),
#: decoding to nothing or not: each line is a step of Python, and a zip of a 48 MB file of 2-byte lines took 12 s of CPU.
_ENCODED_LINE = 64


def _walk_uue(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The files the uuencoded (xxencoded, yEnc) file *data* holds, decoded within ``Limits.max_size``, as its
    members (``invoice.uue/invoice.exe``): WinRAR and 7-Zip open it as an archive of them."""
    data.seek(0)
    text = _charged_lines(path, data, limits, budget, listing)
    for file in encoded_files(text, _MEMORY, max(budget.size, 0), max(budget.members, 0) + 1):
        member = f"{path}/{file.name}"
        if not _take_member(member, limits, budget, listing):
            return
        budget.size -= file.size
        if file.truncated:
            listing.entries.append(Entry(member, False, file.data.read(HEAD_SIZE)))
            listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
            return
        _content_member(member, file.data, 0, file.size, True, message_file([file.name]), depth, limits, budget, listing)


def _charged_lines(path: str, data: IO[bytes], limits: Limits, budget: _Budget, listing: Listing) -> Iterator[bytes]:
    """The text of *data* in chunks, its short lines charged to the budget as :data:`_ENCODED_LINE` bytes each (the
    bytes they decode to are charged as they are); past the budget, a limit and no more text."""
    for chunk in iter(lambda: data.read(_CHUNK), b""):
        ends = chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
        budget.size -= max(0, _ENCODED_LINE * ends - len(chunk))
        if budget.size < 0:
            listing.limits.append(f"{path}: would decompress past {limits.max_size} bytes, the rest not looked at")
            return
        yield chunk


def _walk_msg(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The attachments of the Outlook message file *data* as members, its attached messages' attachments included."""
    ole, root = open_compound(data)
    try:
        _walk_msg_storage(path, ole, root, depth, limits, budget, listing)
    finally:
        ole.close()


def _walk_msg_storage(path: str, ole: OleFileIO, message: Node, depth: int, limits: Limits, budget: _Budget, listing: Listing) -> None:
    """The attachments of the message stored at *message* in *ole*: a file by its names, an attached message as a
    nested archive (named by its subject), a Packager object's file by its own names (each content an attachment
    has is judged: the data, the message, the packaged file)."""
    for number, attachment in enumerate(msg_attachments(ole, message), 1):
        names = attachment.names or [f"(attachment {number} without a name)"]
        member = f"{path}/{names[0]}"
        if not _take_member(member, limits, budget, listing):
            return
        listing.limits.extend(f"{member}: unreadable name ({error})" for error in attachment.errors)
        every = dict.fromkeys(names)  # its names and its packaged file's: those not listed above are judged by name
        listed = set()
        if attachment.message is not None:
            listing.entries.append(Entry(member, False, b""))
            listed.add(names[0])
            if depth >= limits.max_depth:
                listing.limits.append(f"{member}: attached message nested deeper than {limits.max_depth}")
            else:
                _walk_msg_storage(member, ole, attachment.message, depth + 1, limits, budget, listing)
        contents = [content for content in (attachment.data, attachment.package) if content is not None]
        if attachment.message is None and not contents:  # attached by reference (a path), or an object without a file
            listing.entries.append(Entry(member, False, b""))
            listed.add(names[0])
        for content in contents:
            if content.size > budget.size:
                listing.entries.append(Entry(member, False, b""))
                listing.limits.append(f"{member}: would decode past {limits.max_size} bytes")
                return
            budget.size -= content.size
            value, these, here = read_stream(ole, content), names, member
            if content is attachment.package:
                try:
                    packaged, value = package(value)
                except ValueError as exc:
                    listing.entries.append(Entry(member, False, b""))
                    listing.limits.append(f"{member}: unreadable embedded file ({exc})")
                    continue
                # Packager writes the file out under its own name and opens it: that name first.
                these = list(dict.fromkeys((*packaged, *attachment.names))) or names
                here = f"{path}/{these[0]}"
                every.update(dict.fromkeys(these))
            _content_member(here, io.BytesIO(value), 0, len(value), True, message_file(these), depth, limits, budget, listing,
                            ole_object=attachment.method == OLE_OBJECT)
            listed.add(these[0])
        listing.entries.extend(Entry(f"{path}/{alias}", False, b"") for alias in every if alias not in listed)


def _tnef_properties(path: str, block: bytes, codepage: str, file: _TnefFile, listing: Listing) -> None:
    """The names and data object in the MAPI properties of an attachment's attAttachment attribute."""
    declared = _mapi_values(block)
    if declared is None:
        listing.errors.append(f"{path}: unreadable tnef archive (an attachment's MAPI properties count more values than they can hold)")
        return
    found = decode_mapi(block, codepage)
    if len(found) < declared:
        # tnefparse stops at the first value it cannot read (a name not in the codepage, a block cut short).
        listing.errors.append(f"{path}: unreadable tnef archive (an attachment's MAPI properties unreadable after {len(found)} of {declared} values)")
    for prop in found:
        if prop.name in (MAPI_ATTACH_LONG_FILENAME, MAPI_ATTACH_FILENAME, MAPI_DISPLAY_NAME):
            names = {MAPI_ATTACH_LONG_FILENAME: file.long_names, MAPI_ATTACH_FILENAME: file.short_names, MAPI_DISPLAY_NAME: file.display_names}
            items = [_tnef_text(item, codepage) for item in prop.raw_data if isinstance(item, (str, bytes))]
            # tnefparse (and so what reads names as it does) joins a value's items into one name: both are judged.
            names[prop.name].extend([*items, "".join(items)] if len(items) > 1 else items)
        elif prop.name == MAPI_ATTACH_DATA_OBJ and prop.attr_type in _MAPI_SIZED:
            for item in prop.raw_data:
                # An embedded message (attach method 5) is the IMessage interface's id and a TNEF stream: a nested archive.
                value = item.encode("utf-8") if isinstance(item, str) else bytes(item)
                file.inline.append(value[len(IMESSAGE_SIG):] if value.startswith(IMESSAGE_SIG) else value)


def _mapi_values(block: bytes) -> int | None:
    """How many values ``tnefparse.mapi.decode_mapi`` should read from the MAPI property *block* (one it cannot
    read, of a type it does not know or cut short, counted), or None when a count in it claims more than the block
    can hold, or more than _MAPI_VALUES: decode_mapi would loop that many times, past the block's end too.

    Its offsets are followed as decode_mapi moves them (a 4-byte count, then per property its type and id, a named
    one's GUID and name, a multi-valued one's count, then each value, a sized one's items padded to 4 bytes).
    """
    end, work = len(block), 0
    if end < _U32.size:
        return None
    count, offset, declared = _U32.unpack_from(block)[0], _U32.size, 0
    if count > min((end - offset) // 4, _MAPI_VALUES):
        return None
    try:
        for _ in range(count):
            declared += 1
            if offset >= end:  # decode_mapi skips it
                continue
            kind, ident = struct.unpack_from("<2H", block, offset)
            offset += 4
            if ident >= _MAPI_NAMED:
                offset += 16  # the property set's GUID
                named_by_string = _U32.unpack_from(block, offset)[0] != 0
                offset += 4
                offset += 4 + (-(-_U32.unpack_from(block, offset)[0] // 4) * 4 if named_by_string else 0)
            multiple = None
            if kind & _MAPI_MULTIPLE:
                kind ^= _MAPI_MULTIPLE
                multiple = _U32.unpack_from(block, offset)[0]
                offset += 4
                work += multiple
                if multiple > (end - offset) // 2 or work > _MAPI_VALUES:
                    return None
                declared += max(multiple, 1) - 1
            for _ in range(multiple or 1):
                if kind in _MAPI_FIXED:
                    offset += _MAPI_FIXED[kind]
                elif kind in _MAPI_SIZED:
                    items = 1
                    if not multiple:
                        items = _U32.unpack_from(block, offset)[0]
                        offset += 4
                    work += items
                    if items > (end - offset) // 4 or work > _MAPI_VALUES:
                        return None
                    for _ in range(items):
                        offset += 4 + -(-_U32.unpack_from(block, offset)[0] // 4) * 4
                else:
                    return declared  # decode_mapi stops at a type it does not know
            if (multiple or 1) % 2 and kind in (0x0002, 0x000B):
                offset += 2
    except struct.error:  # cut short: decode_mapi stops there too
        return declared
    return declared


def _tnef_text(value: str | bytes, codepage: str) -> str:
    """A name from a TNEF stream, as text without the NULs that end or pad it."""
    if isinstance(value, bytes):
        value = value.decode(codepage, "replace")
    return value.strip("\x00")


def _codepage(number: int) -> str:
    """The Python codec of a TNEF stream's attOemCodepage, cp1252 when Python knows no such codec."""
    name = Codepage(number).codepage()
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name


def _walk_libarchive(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing, kind: str = "",
                     aliases: tuple[str, ...] = ()) -> None:
    if kind not in COMPRESSED_KINDS:
        _walk_libarchive_form(path, data, depth, limits, budget, listing, "all")
        return
    # Its own filter only: with all of them libarchive also uudecodes the text gunzip gives (files.uue.gz), and the
    # begin line's name (invoice.js) was lost; a stream compressed twice is a nested one, walked as such.
    form = _compressed_format(data, kind)
    _walk_libarchive_form(path, data, depth, limits, budget, listing, form, file_aliases=aliases, filter_name=kind)
    # By each name a client may save it under (a part's filename and its Content-Type name), as gunzip names its file.
    if form == "tar" and _named_zip([*(_decompressed_name(name) for name in (path, *aliases)), _gzip_name(data)]):
        # invoice.zip.gz (or one whose gzip header says invoice.zip) holding a tar: gunzip gives invoice.zip, which
        # unzip opens as the zip after the tar.  Only that zip is walked: the tar is listed already.
        _walk_libarchive_form(path, data, depth, limits, budget, listing, "raw", zip_only=True, file_aliases=aliases, filter_name=kind)


def _gzip_name(data: IO[bytes]) -> str:
    """The file name a gzip header stores (RFC 1952's FNAME, which gunzip -N and 7-Zip give the file), or ``""``."""
    data.seek(0)
    header = data.read(10)
    if len(header) < 10 or header[:2] != b"\x1f\x8b" or not header[3] & 0x08:
        return ""
    if header[3] & 0x04:  # FEXTRA: its length, then the field
        data.seek(int.from_bytes(data.read(2), "little"), os.SEEK_CUR)
    name = data.read(65536).split(b"\0", 1)[0]  # 7-Zip takes names of some 4 KB
    return name.decode("latin-1").rsplit("/", 1)[-1]


def _walk_libarchive_form(path: str, data: IO[bytes], depth: int, limits: Limits, budget: _Budget, listing: Listing, form: str,
                          zip_only: bool = False, file_aliases: tuple[str, ...] = (), filter_name: str = "all") -> None:
    """List *data* with libarchive's *form* (``"all"``, or for a compressed stream a tar in it or the ``"raw"`` file)
    and *filter_name* (a compressed stream's kind, or ``"all"``); *zip_only*: the raw file is walked only as the zip it
    ends with, when it does (not listed, nor judged, again).  *file_aliases*: the compressed file's other paths, whose
    names gunzip would give the raw file too."""
    lib: Any = libarchive
    raw = form == "raw"
    data.seek(0)
    with lib.seekable_stream_reader(data, format_name=form, filter_name=filter_name) as archive:  # 7z needs to seek
        if raw and all(name in (b"none", "none") for name in archive.filter_names):
            return  # no filter read it: the file itself, which the caller judges (opened again, it looped to the depth bound)
        for entry in _counted_entries(archive, path, limits, budget, listing, raw):
            if entry.isdir:
                continue
            name = entry.pathname
            if isinstance(name, bytes):  # not in libarchive-c's header codec
                name = name.decode("utf-8", "replace")
            if not isinstance(name, str):  # libarchive could not convert it: the other members are still judged
                name = "(unreadable name)"  # unzip may still extract it as invoice.js: never judged, a limit
                listing.limits.append(f"{path}/{name}: a member's name libarchive cannot convert to text")
            aliases: list[str] = []
            if raw:
                # The one file of a compressed stream: named as gunzip names it (a.exe.gz holds a.exe), and by
                # the name stored in a gzip header (libarchive's raw format says "data" when there is none).
                stored = [f"{path}/{name}"] if name not in ("data", _decompressed_name(path)) else []
                # Only another compressed name (invoice.zip.gz) is one a tool decompresses to a new name: saved
                # as report.exe, the file is this compressed file itself, judged by that name already.
                others = [f"{path}/{_decompressed_name(alias)}" for alias in file_aliases
                          if _decompressed_name(alias) not in (alias.rsplit("/", 1)[-1], _decompressed_name(path))]
                aliases = list(dict.fromkeys(stored + others))
                name = _decompressed_name(path)
            member = f"{path}/{name}"
            if not _take_member(member, limits, budget, listing):
                return
            listing.entries.extend(Entry(alias, False, b"") for alias in aliases)
            if _entry_encrypted(entry):
                listing.entries.append(Entry(member, True, b""))
                listing.encrypted.append(member)
                if _sealed([name, *(alias.rsplit("/", 1)[-1] for alias in aliases)]):
                    listing.limits.append(f"{member}: an encrypted archive or message, never looked into")
                continue
            declared = entry.size or 0
            blocks = entry.get_blocks()
            head = b""
            for block in blocks:
                head += bytes(block)
                if len(head) >= HEAD_SIZE or len(head) >= budget.size:
                    break
            head = head[:max(0, budget.size)]
            budget.size -= len(head)
            names = [name, *(alias.rsplit("/", 1)[-1] for alias in aliases)]
            if zip_only:  # listed already: walked as the zip it ends with, when it does (seen once copied)
                inner: str | None = "zip"
                message = False
            else:
                listing.entries.append(Entry(member, False, head[:HEAD_SIZE]))
                # By every name a tool gives it: 7-Zip and gunzip -N name it as its gzip header does.
                inner = archive_kind_of(names, head)
                message = message_file(names)
            if inner is not None and depth >= limits.max_depth and inner not in _EMBEDDING_KINDS:
                listing.limits.append(f"{member}: archive nested deeper than {limits.max_depth}")
                inner = None
            if inner is None and not message:
                continue
            if message and (entry.islnk or entry.issym):
                # Extracted, a link named fwd.eml is the file it points to, which is no message by its own name.
                listing.limits.append(f"{member}: a link named as a message, to a file never opened as one")
                continue
            nested = None if declared > budget.size + len(head) else _copy_blocks(head, blocks, budget)
            if nested is None:
                listing.limits.append(f"{member}: would decompress past {limits.max_size} bytes")
                continue
            if zip_only and _zip_directory(nested)[0] is None:
                inner = None
            if inner is not None:
                _walk(member, nested, inner, depth + 1, limits, budget, listing, tuple(aliases))
            if message:
                nested.seek(0)
                listing.messages.append((member, nested))  # the caller closes it
            else:
                nested.close()


def _compressed_format(data: IO[bytes], kind: str) -> str:
    """libarchive's format for the stream *data* compressed as *kind* (its filter's name): ``"tar"`` for a tar in it,
    ``"empty"`` for nothing in it, else ``"raw"`` (one file compressed; a stream libarchive cannot read is left to the
    listing to report).

    Only a tar is looked for: with every format, a text of a few words per line would be an mtree archive.
    Only the first header is read.  A tar with no member is the one file it is: two blocks of zeros end a tar,
    and a zip may follow them (gunzip gives ``invoice.zip``, which unzip and 7-Zip open past its first bytes).
    """
    lib: Any = libarchive
    for form in ("tar", "empty"):
        data.seek(0)
        try:
            with lib.seekable_stream_reader(data, format_name=form, filter_name=kind) as archive:
                if next(iter(archive), None) is None and form == "tar":
                    continue
        except lib.ArchiveError:
            continue
        return form
    return "raw"


def _decompressed_name(path: str) -> str:
    """The name of the file the compressed file *path* (its last component) holds, as gunzip, bunzip2 and unxz name it."""
    base = path.rsplit("/", 1)[-1]
    stem, dot, extension = base.rpartition(".")
    suffix = _DECOMPRESSED_EXTENSIONS.get(extension.lower()) if dot and stem else None
    return base if suffix is None else stem + suffix


def _counted_entries(archive: Any, path: str, limits: Limits, budget: _Budget, listing: Listing, raw: bool) -> Iterator[Any]:
    """The entries of *archive*; in a compressed stream (gzip, bzip2, xz), what the caller left of each one's data
    is read here and counted in the budget before the next header, instead of libarchive's unbounded skip (which
    decompresses it too): a bomb stops at ``Limits.max_size``.  A raw stream (one file compressed) ends after its
    entry, the rest not decompressed at all."""
    compressed = any(name not in (b"none", "none") for name in archive.filter_names)
    for entry in archive:
        yield entry
        if raw:
            return
        if not compressed:
            continue
        try:
            rest = entry.get_blocks(_CHUNK)
        except TypeError:  # libarchive-c's word for content already read to its end (a nested archive copied)
            continue
        for block in rest:
            budget.size -= len(block)
            if budget.size < 0:
                listing.limits.append(f"{path}: would decompress past {limits.max_size} bytes, the rest not looked at")
                return


def _entry_encrypted(entry: Any) -> bool:
    """libarchive's archive_entry_is_encrypted(), which libarchive-c does not wrap."""
    function = getattr(lib_handle(), "archive_entry_is_encrypted", None)
    if function is None:
        return False
    return bool(function(entry._entry_p))


def lib_handle() -> Any:
    """libarchive's shared library as libarchive-c loaded it, with the signatures used here declared."""
    handle = libarchive.ffi.libarchive
    function = getattr(handle, "archive_entry_is_encrypted", None)
    if function is not None and function.argtypes is None:
        # Without them ctypes passes the entry pointer as a C int and libarchive crashes.
        function.argtypes, function.restype = [ctypes.c_void_p], ctypes.c_int
    return handle


def _copy_blocks(head: bytes, blocks: Any, budget: _Budget) -> IO[bytes] | None:
    copy: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_MEMORY)
    copy.write(head)
    for block in blocks:
        budget.size -= len(block)
        if budget.size < 0:
            copy.close()
            return None
        copy.write(bytes(block))
    copy.seek(0)
    return copy


# --- the child process ---------------------------------------------------------------
#: The child's address space beyond the worker's own, and its CPU time (a 7z may ask for a dictionary of 1.5 GB);
#: past them it dies, a limit of the listing.
CHILD_MEMORY = 1024 * 1024 * 1024
CHILD_CPU_SECONDS = 20
#: How long the worker waits for the child's answer before it kills it (a child that hangs costs this, never more).
CHILD_TIMEOUT = 30.0
#: The child's answer starts with its length in this many bytes (big-endian).
_LENGTH_BYTES = 8

#: A listing child costs at least this much of the message's ``Limits.max_child_seconds`` (the fork itself, its exit).
CHILD_MIN_SECONDS = 0.01

#: What the child does: list each job as :func:`_walk` would, the messages found written to the last argument,
#: and answer in JSON (a parameter for the tests' crashing children).
ChildWork = Callable[[list[_Job], Limits, _Budget, IO[bytes]], bytes]


def _child_work(jobs: list[_Job], limits: Limits, budget: _Budget, spool: IO[bytes]) -> bytes:
    listing = Listing()
    here = replace(limits, child=False)
    budget.deferred = []  # the worker's own, deferred before this child (a damaged zip's fallback): the worker lists them
    for job in jobs:
        _walk(job.path, job.data, job.kind, job.depth, here, budget, listing, job.aliases)
    _walk_deferred(here, budget, listing)
    messages = []
    for member, message in listing.messages:  # through a file the worker reads, not the answer: a saved message may be 50 MB
        start = spool.tell()
        message.seek(0)
        shutil.copyfileobj(message, spool, _CHUNK)
        messages.append([member, start, spool.tell() - start])
    spool.flush()
    answer = {"entries": [[e.path, e.encrypted, base64.b64encode(e.head).decode()] for e in listing.entries],
              "encrypted": listing.encrypted, "limits": listing.limits, "errors": listing.errors, "messages": messages,
              "budget": [budget.size, budget.members, budget.documents, budget.attributes, budget.directory, budget.late, budget.late_heads]}
    return json.dumps(answer).encode()


def _walk_in_child(jobs: list[_Job], limits: Limits, budget: _Budget, listing: Listing, work: ChildWork = _child_work) -> None:
    """:func:`_walk` of each of *jobs* (libarchive kinds) in one forked child; its findings and spent budget are merged here.

    A fork, not a new interpreter: the child is this worker as it is (its user, its loaded
    libraries, *data* as it stands) and costs a millisecond or two instead of an
    interpreter's start.  It runs nothing but *work* and leaves with ``os._exit``, so the
    libmilter threads it does not have and the locks they might hold are never touched;
    should it hang anyway, the timeout kills it.
    """
    with tempfile.TemporaryFile() as spool:
        _run_child(jobs, limits, budget, listing, work, spool)


def _run_child(jobs: list[_Job], limits: Limits, budget: _Budget, listing: Listing, work: ChildWork, spool: IO[bytes]) -> None:
    """:func:`_walk_in_child` with *spool*, the file the child writes the messages it finds to."""
    timeout = min(CHILD_TIMEOUT, max(budget.child_seconds, CHILD_MIN_SECONDS))
    read_end, write_end = os.pipe()
    started, own = time.monotonic(), _thread_cpu()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            faulthandler.disable()  # a crash here is the parent's listing limit, not a "Fatal Python error" in the log
            _limit_child(min(CHILD_CPU_SECONDS, math.ceil(timeout)))
            answer = work(jobs, limits, budget, spool)
            with os.fdopen(write_end, "wb") as out:
                out.write(len(answer).to_bytes(_LENGTH_BYTES, "big") + answer)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    answer, finished = b"", False  # what the finally below sees should reading fail: the child is killed and reaped
    try:
        answer, finished = _read_answer(read_end, started + timeout)
    finally:
        os.close(read_end)
        if not finished:
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        for job in jobs:
            job.data.seek(0)  # the child moved a real file's shared offset: the caller finds it at the start
        # Its CPU and this thread's for it (the fork copies the worker's page tables), or the time waited for one killed
        # (a hang too), of the message's: a thousand listings of 20 s each would be hours of a worker.
        spent = time.monotonic() - started if not finished else usage.ru_utime + usage.ru_stime + _thread_cpu() - own
        budget.child_seconds -= max(spent, CHILD_MIN_SECONDS)
    # A listing cut short by its time, memory or CPU bound, or by libarchive crashing, is a limit: an archive
    # built for it may open in the recipient's 7-Zip, a banned file and all.
    if not finished:
        listing.limits.extend(f"{job.path}: unreadable {job.kind} archive (not listed within {timeout:g} s)" for job in jobs)
        return
    if status != 0:
        how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status) else f"status {os.WEXITSTATUS(status)}"
        listing.limits.extend(f"{job.path}: unreadable {job.kind} archive (the listing process ended with {how})" for job in jobs)
        return
    try:
        found = json.loads(answer)
        entries = [Entry(p, bool(e), base64.b64decode(h)) for p, e, h in found["entries"]]
        messages = [(str(member), int(start), int(length)) for member, start, length in found["messages"]]
        # Every budget comes back: a child that started afresh on the Office parts' one (150 tars of a document each)
        # listed 2,000 parts a tar.
        budget.size, budget.members, budget.documents, budget.attributes, budget.directory, budget.late, budget.late_heads = (int(value) for value in found["budget"])
    except (ValueError, KeyError, TypeError) as exc:
        listing.errors.extend(f"{job.path}: unreadable {job.kind} archive (the listing process answered nonsense: {exc.__class__.__name__})" for job in jobs)
        return
    listing.entries.extend(entries)
    for member, start, length in messages:
        spool.seek(start)
        listing.messages.append((member, _copy_exactly(spool, length)))
    for name in ("encrypted", "limits", "errors"):
        getattr(listing, name).extend(str(item) for item in found[name])


def _thread_cpu() -> float:
    """The CPU seconds the calling thread has used."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _limit_child(seconds: int) -> None:
    """In the child: CHILD_MEMORY more address space than the worker already has, *seconds* of CPU."""
    with open("/proc/self/status", "rb") as status:
        size = next((int(line.split()[1]) * 1024 for line in status if line.startswith(b"VmSize:")), 0)
    resource.setrlimit(resource.RLIMIT_AS, (size + CHILD_MEMORY, size + CHILD_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))


def _read_answer(fd: int, deadline: float) -> tuple[bytes, bool]:
    """The child's answer on *fd* (its length, then that many bytes): (answer, True) once it is whole or the
    pipe has ended (a child that died first: its exit status says why), (b"", False) at *deadline*.

    The length, not the pipe's end, marks a whole answer: a child forked at the same moment by another of
    this worker's threads holds a copy of this pipe's write end until it exits.
    """
    received = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if len(received) >= _LENGTH_BYTES and len(received) - _LENGTH_BYTES >= int.from_bytes(received[:_LENGTH_BYTES], "big"):
                return bytes(received[_LENGTH_BYTES:]), True
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return b"", False
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return bytes(received[_LENGTH_BYTES:]), True
            received += chunk
