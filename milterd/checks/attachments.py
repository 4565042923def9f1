"""The attachment policy: banned names, double extensions, content that lies about its type, archives.

At end of message each attachment is decoded from the spool, one at a time
(:mod:`milterd.content.mimeparts`), and judged with the members of the archives it
carries (:mod:`milterd.content.archives`, within the configured limits).  Every
finding names the file (``invoice.zip/inner.zip/evil.exe``) and the rule; a
category's action in ``[checks.attachments]`` either only scores its symbol
or forces quarantine or a reject whose reply names the file.  Files uuencoded
in a message's text, which Thunderbird and Outlook show as attachments, are
found by their names (:func:`~milterd.content.uuencode.encoded_names`), then decoded and judged as
attachments (:mod:`milterd.content.uuencode`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator, Literal

from pydantic import Field, field_validator

from ..content.archives import Limits, Listing, archive_kind_of, list_archive, local_failure
from ..content.filetypes import HEAD_SIZE, MESSAGE_TYPES, extensions, message_file, mismatch, ole_has_macros, sniff
from ..content.mimeparts import (
    FIELDS_LIMIT_NOTE,
    NO_BOUNDARY_NOTE,
    PARTS_LIMIT_NOTE,
    SCANNED_LIMIT_NOTE,
    SHARED_PARTS_NOTE,
    Attachment,
    PartsBudget,
    every_reading,
)
from ..content.mimetext import single_text_type
from ..content.uuencode import encoded_files, encoded_names
from ..message.model import Action, Envelope, Hit, Session, SpoolError
from ..message.reply import Reply
from ..options import CheckSwitches, Duration, Size
from ..text import escape
from . import Hits, Symbol
from .configured import ConfiguredCheck

if TYPE_CHECKING:
    from ..services import Services


_CategoryAction = Literal["off", "score", "quarantine", "reject"]


#: A file name extension as the banned list compares it: after the last dot, no blank, wildcard or path.
_EXTENSION = re.compile(r"[^\s.*?/\\]+")


class AttachmentChecks(CheckSwitches):
    """The attachment policy: banned and double extensions, content that contradicts its name, archives within limits; each category scores or forces an action."""

    # Off, as [clamav] scan_trusted is on: a stolen password or a local web application must not send executables out.
    skip_trusted: bool = Field(False, description="Skip it for clients in trusted_networks (off: their mail is judged too; what a category forces applies, its score does not, as that mail is not scored).")
    skip_authenticated: bool = Field(False, description="Skip it for clients that authenticated with SMTP AUTH (off: a stolen password must not send executables out; what a category forces applies, its score does not).")

    banned_extensions: list[str] = Field(
        ["exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta", "jar", "msi", "msp", "iso", "img", "vhd", "vhdx", "lnk", "cpl", "reg", "ps1", "scf", "chm", "dll", "appx", "msix", "application", "gadget", "inf", "sct", "url",
         "msc", "xll", "settingcontent-ms", "wsc", "appref-ms", "library-ms", "searchconnector-ms", "appinstaller", "hlp", "diagcab"],
        description="File name extensions (without the dot, any case) banned in attachments and in the archives they carry: symbol ATTACH_BANNED.",
    )

    @field_validator("banned_extensions")
    @classmethod
    def _extensions(cls, value: list[str]) -> list[str]:
        # "*.exe", "EXE " or "tar.gz" was taken and matched no file: an .exe went through the malware guard.
        extensions = []
        for entry in value:
            extension = entry.strip().removeprefix(".")
            if not extension or not _EXTENSION.fullmatch(extension):
                raise ValueError(f"{entry!r} is not a file name extension: write it without the dot or a wildcard "
                                 "(\"exe\"); only the last one of a name is compared (\"gz\", not \"tar.gz\")")
            extensions.append(extension)
        return extensions

    banned_action: _CategoryAction = Field("reject", description="A banned name: reject (550 5.7.1 naming the file), quarantine, only score ATTACH_BANNED, or off.")
    double_extension_action: _CategoryAction = Field("reject", description="A banned extension behind another one (invoice.pdf.exe): ATTACH_DOUBLE_EXT, with the same choices.")
    mismatch_action: _CategoryAction = Field("score", description="Content whose first bytes contradict the name or declared type (a \"PDF\" that is a Windows executable): ATTACH_TYPE_MISMATCH, with the same choices.")
    macro_action: _CategoryAction = Field("off", description="An Office document with VBA macros (docm/xlsm/pptm, vbaProject.bin, an OLE file with a VBA project): ATTACH_OFFICE_MACRO, with the same choices; off by default.")
    encrypted_action: _CategoryAction = Field("score", description="An encrypted (password-protected) archive or member, whose names or content cannot all be judged: ATTACH_ENCRYPTED, with the same choices. An encrypted member that is an archive, a split volume or a message is a limit too (limit_action: ATTACH_ARCHIVE_LIMIT, quarantined by default).")
    limit_action: _CategoryAction = Field("quarantine", description="Files never looked into, for a limit or damage a sender can bring about on purpose: an archive nested deeper than archive_max_depth, members past archive_max_members, a nested archive past archive_max_size or the message's archive_max_message_size, an archive larger than max_attachment_size, an archive whose listing stopped part way (damaged: unzip, tar and 7-Zip carry on past it; a listing child that crashed or ran out of time or memory), a member name that cannot be read, an ARJ or ACE archive (nothing here lists one), attached messages nested deeper than archive_max_depth or past 20,000 MIME parts or 32 MB in all, archives past archive_process_seconds of listing children or zip directories past 2,560 bytes per archive_max_members (5 MB) in one message (parsed whole, however few members are then listed), an encrypted archive, split volume (.001, .rNN, .zNN) or message (.eml, .msg) inside an archive, a saved message (.eml) in an archive that cannot be read or is a link, a uuencoded file (.uue, .uu, .xxe: opened as an archive) whose lines (each counted as 64 bytes at least) or decoded files pass archive_max_size, more than 200 objects opened past an Office document's parts' budget (or 20,000 of its parts read past it for one), RTF object data Word may read that is no object here, a Compound File nested deeper than olefile reads, attachments that could not be read for an error (ATTACH_ERROR, held with this action), a multipart without a boundary. A banned file may be inside (an .exe six zips deep): ATTACH_ARCHIVE_LIMIT, with the same choices.")
    unreadable_action: _CategoryAction = Field("score", description="What could not be read whole where no banned file can hide unseen: a 7z, rar, cab, tar, LZH, cpio or xar archive without libarchive-c (install it: these are then listed), an archive member whose first bytes cannot be read (its name is judged), members of an Office document past archive_max_members (a .docx, .xlsx, .pptx, .odt… by every name it goes by, with [Content_Types].xml or ODF's mimetype: Office opens it, nobody extracts its parts; the objects it embeds past them, by their folder, name or first bytes, are still opened), MIME fields that do not parse, base64 that goes on after its padding: ATTACH_UNREADABLE, with the same choices.")
    mime_limit_action: _CategoryAction = Field("quarantine", description="A message with a file (a named or non-text part) past its first 500 MIME parts, more than 2,000 parts, more than 1,000 uuencoded files, or a part whose MIME fields pass 16 KB in one field or 64 KB in all (a type or encoding past them is never read): files never judged (a banned one may follow the padding): ATTACH_MIME_LIMIT, with the same choices. Text parts past 500 are followed, so a digest of a few hundred posts is not caught.")
    archives: bool = Field(True, description="Look inside zip archives, TNEF containers (Outlook's winmail.dat), Outlook message files (.msg), uuencoded and xxencoded files (.uue, .uu, .xxe, or a begin line in the first bytes, compressed too: files.uue.gz), opened as archives of the files they hold, the objects Office and RTF documents embed (a Packager object's file, also past archive_max_members parts), and 7z, rar, cab, tar, LZH, cpio and xar ones, and gzip, bzip2 and xz files (a tar in one, or the file it holds), when libarchive-c is installed, for the same rules.")
    archive_max_depth: int = Field(5, ge=1, le=20, description="Archives nested deeper than this (an archive in an archive is 2; an Office document and the workbook embedded in it count too), and attached messages, are not opened.")
    archive_max_members: int = Field(2000, ge=1, description="Members past this many, over all nested archives of one attachment, are not looked at (an Office document's own parts are counted apart, against the same number).")
    archive_max_size: Size = Field(50 * 1024 * 1024, description="Most bytes decompressed per attachment (nested archives and each member's first bytes); an archive bomb stops here.")
    archive_max_message_size: Size = Field(200 * 1024 * 1024, description="Most bytes decompressed for all the attachments of one message: the archives past it are not looked into (ATTACH_ARCHIVE_LIMIT), so that many small archive bombs in one message cost no more than a few.")
    archive_process: bool = Field(True, description="List 7z, rar, cab, tar, gzip, bzip2 and xz archives (libarchive: C code reading hostile input) in a short-lived forked child with bounded memory and CPU, so that a crash there, or a listing past the child's time or memory, is ATTACH_ARCHIVE_LIMIT, never a dead worker; costs a few ms per such archive. Zip is read in the worker by Python's own zipfile, but for one zipfile cannot open (cut short, or with more than 64 KB after it), which libarchive lists as the others.")
    archive_process_seconds: Duration = Field(10.0, gt=0, description="Most seconds of CPU the listing children (archive_process) may take for one message's archives, with what forking each costs the worker (10 ms at least a child): the archives past them are not looked into (ATTACH_ARCHIVE_LIMIT), so that many archives each built to take a child's 20 s cost a worker no more (the archives a zip holds are listed together in one child).")
    max_attachment_size: Size = Field(64 * 1024 * 1024, ge=HEAD_SIZE, description="Attachments are decoded up to this size (to a temporary file past [milter] spool_memory); a larger one is judged by its name and first bytes only. At least 512 (the first bytes judged).")


log = logging.getLogger(__name__)

BANNED = "ATTACH_BANNED"
DOUBLE = "ATTACH_DOUBLE_EXT"
MISMATCH = "ATTACH_TYPE_MISMATCH"
MACRO = "ATTACH_OFFICE_MACRO"
ENCRYPTED = "ATTACH_ENCRYPTED"
LIMIT = "ATTACH_ARCHIVE_LIMIT"
UNREADABLE = "ATTACH_UNREADABLE"
MIME_LIMIT = "ATTACH_MIME_LIMIT"
ERROR = "ATTACH_ERROR"
#: The answer when this machine could not decode the attachments (disk, file descriptors, memory).
#: How the log detail of an ATTACH_ERROR of this machine (451 whatever limit_action says) begins: ``rules whatif`` reads it.
LOCAL_FAILURE = "local failure"
LOCAL_FAILURE_REPLY = Reply("451", "4.3.0", "Attachments could not be checked now, try again later")

#: Symbol → the option of [checks.attachments] holding its action.
ACTION_OPTIONS = {
    BANNED: "banned_action",
    DOUBLE: "double_extension_action",
    MISMATCH: "mismatch_action",
    MACRO: "macro_action",
    ENCRYPTED: "encrypted_action",
    LIMIT: "limit_action",
    UNREADABLE: "unreadable_action",
    MIME_LIMIT: "mime_limit_action",
}
#: The attached messages (a base64 message/rfc822 part, an .eml file, one in an archive) of one message have at
#: most this many MIME parts in all, counted in each reading: each may have mimeparts' 2,000, and at about 50 µs a
#: part, twenty of those took 2 s.  Forwarded mail has a few parts each: an export of a few thousand messages is opened.
ATTACHED_MESSAGE_PARTS = 20_000
#: And at most this many bytes in all, counted in each reading: a 48 MB .eml decompressed from a zip of a few
#: hundred KB, of lines a multipart's delimiter starts, took 7 s to read (a Python step a line).
ATTACHED_MESSAGE_BYTES = 32 * 1024 * 1024
#: The note of an attached message past ATTACHED_MESSAGE_BYTES: its attachments not looked at.
_BYTES_NOTE = f"attached messages past {ATTACHED_MESSAGE_BYTES // 2**20} MB read in all: its attachments not looked at"
#: The MIME reader's notes of files it never judged past its part and field bounds (ATTACH_MIME_LIMIT).
_MIME_LIMIT_NOTES = frozenset({PARTS_LIMIT_NOTE, SCANNED_LIMIT_NOTE, FIELDS_LIMIT_NOTE})
#: Its notes of parts it does not look into (ATTACH_ARCHIVE_LIMIT); its other notes are ATTACH_UNREADABLE.
_LIMIT_NOTES = frozenset({NO_BOUNDARY_NOTE, SHARED_PARTS_NOTE, _BYTES_NOTE})
#: Extensions of files that open as macro-enabled Office documents.
_MACRO_EXTENSIONS = frozenset({"docm", "dotm", "xlsm", "xltm", "xlam", "pptm", "potm", "ppam", "ppsm", "sldm"})
_OLE_MACRO_SCAN = 16 * 1024 * 1024
#: Extensions of single-file compression, judged by the name beneath them.
_COMPRESSION = frozenset({"gz", "bz2", "xz", "z", "lz", "lzma", "zst", "lz4"})
#: The chunks an attached message is read in.
_MESSAGE_CHUNK = 65536
#: The bytes of zip directories one message's archives may parse, per member allowed (``archive_max_members``, at least
#: 1,000): an entry takes 46 bytes and its name, so this is 20 zips of the most members named by 80-character paths.
DIRECTORY_BYTES_PER_MEMBER_LIMIT = 20 * 128
#: At most this many names of uuencoded or yEnc files are judged in one message.
MAX_ENCODED_FILES = 1000
#: The extension a mail client gives a part of this type that has none (Thunderbird names an unnamed part
#: "attachment." and its type's primary extension; Outlook ATT00001 and the one the registry has): those of the
#: types that run.  Its text types are :data:`~milterd.content.mimeparts.SCRIPT_TEXT_TYPES`, which the MIME reader
#: decodes unnamed (a text/plain or text/html one is a body).
TYPE_EXTENSIONS = {
    "application/x-msdownload": "exe", "application/x-msdos-program": "exe", "application/x-dosexec": "exe",
    "application/vnd.microsoft.portable-executable": "exe", "application/x-ms-dos-executable": "exe",
    "application/javascript": "js", "application/x-javascript": "js", "text/javascript": "js", "application/ecmascript": "js",
    "application/hta": "hta", "application/x-ms-shortcut": "lnk", "application/java-archive": "jar",
    "application/x-java-archive": "jar", "application/x-msi": "msi", "application/x-ms-installer": "msi",
    "application/vbscript": "vbs", "text/vbscript": "vbs", "application/x-bat": "bat", "application/x-msbatch": "bat",
    "application/x-ms-application": "application", "application/x-iso9660-image": "iso", "application/x-ms-wsh": "wsh",
}
#: What Gecko's SanitizeFileName (Thunderbird saving or opening an attachment) drops from a name, and the
#: blanks it makes spaces (then trimmed off the end, and out of the extension): ``evil.e\txe``, ``evil.exe\ufeff``
#: and ``evil.e x e`` open as evil.exe.
_DROPPED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BLANKS = re.compile(r"[\s\ufeff\u180e\u200b]")
#: An extension that names a COM class (a CLSID) instead of a file type.
_CLSID = re.compile(r"\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}")


@dataclass
class DecompressionBudget:
    """The bytes the archives of one message may still decompress (``archive_max_message_size``), the zip
    directory bytes they may still parse, the CPU their listing children may still take, and the MIME parts and bytes its attached messages may still have
    (:data:`ATTACHED_MESSAGE_PARTS`, :data:`ATTACHED_MESSAGE_BYTES`)."""

    left: int
    #: The bytes of zip central directories the message's archives may still parse (:attr:`Limits.max_directory`).
    directory: int = 0
    #: The seconds of CPU their listing children may still take (``archive_process_seconds``).
    child_seconds: float = 0.0
    #: The MIME parts the attached messages may still have (:data:`ATTACHED_MESSAGE_PARTS`).
    parts: PartsBudget = field(default_factory=lambda: PartsBudget(ATTACHED_MESSAGE_PARTS))
    #: The bytes of attached messages that may still be read (:data:`ATTACHED_MESSAGE_BYTES`).
    message_bytes: int = field(default_factory=lambda: ATTACHED_MESSAGE_BYTES)
    #: The attached messages opened, by the digest of their decoded bytes: each is judged once, however many
    #: readings of the message (and of the messages around it) give it again.
    messages: dict[bytes, list["Finding"]] = field(default_factory=dict)
    #: The findings of the archives listed, by digest and the names they were listed under: listed once, whatever the readings.
    listings: dict[tuple[bytes, str, tuple[str, ...], str], list["Finding"]] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One rule one file broke."""

    symbol: str
    file: str
    rule: str

    @property
    def text(self) -> str:
        """``file: rule``, with what the sender controls escaped."""
        return f"{escape(self.file, ascii_only=True)}: {self.rule}"


def judge_name(path: str, banned: frozenset[str]) -> list[Finding]:
    """The findings of a file's name: a banned extension, a banned one hidden behind another.

    A name with a NUL is judged as C code and Windows end it there, and as a browser saves
    it, the NUL made a ``_`` (``readme.pdf\\0.exe`` is ``readme.pdf_.exe``).
    """
    found = _judge_name(path, path, banned)
    if "\x00" in path:
        found += [f for f in _judge_name(path, path.replace("\x00", "_"), banned) if f not in found]
    saved = client_saved(path)
    if saved != path:
        found += [f for f in _judge_name(path, saved, banned) if f not in found]
    return found


def client_saved(path: str) -> str:
    """*path* with its last name as Gecko's SanitizeFileName leaves it: control characters and line separators
    dropped, blanks made spaces and trimmed with dots off the end, and the blanks of the extension gone."""
    head, _, name = path.rpartition("/")
    name = _BLANKS.sub(" ", _DROPPED.sub("", name)).rstrip(" .")
    stem, dot, extension = name.rpartition(".")
    if dot:
        name = f"{stem}.{_BLANKS.sub('', extension)}"
    return f"{head}/{name}" if head else name


def typed_name(filename: str, names: Iterable[str], content_type: str) -> str | None:
    """The name a mail client gives a file of *content_type* that no name of gives an extension
    (:data:`TYPE_EXTENSIONS`): ``attachment.exe`` for an unnamed application/x-msdownload part; else None."""
    extension = TYPE_EXTENSIONS.get(content_type.lower())
    if extension is None or any(extensions(n) for n in (filename, *names) if n):
        return None
    return f"{filename or 'attachment'}.{extension}"


def _judge_name(path: str, name: str, banned: frozenset[str]) -> list[Finding]:
    exts = extensions(name.rsplit("/", 1)[-1])
    while len(exts) > 1 and exts[-1] in _COMPRESSION and exts[-1] not in banned:
        exts.pop()  # setup.exe.gz is setup.exe once decompressed
    if exts and _CLSID.fullmatch(exts[-1]):
        # Explorer opens invoice.{3050f4d8-98b5-11cf-bb82-00aa00bdce0b} with that class: an HTML application.
        return [Finding(BANNED, path, f"CLSID extension .{exts[-1]}")]
    if not exts or exts[-1] not in banned:
        return []
    found = [Finding(BANNED, path, f"banned extension .{exts[-1]}")]
    if len(exts) >= 2 and exts[-2] not in banned:
        found.append(Finding(DOUBLE, path, f"double extension .{exts[-2]}.{exts[-1]}"))
    return found


def judge_content(path: str, content_type: str, head: bytes, banned: frozenset[str], macros: bool) -> list[Finding]:
    """The findings of a file's first bytes: a type that contradicts its name, an Office macro container."""
    found = []
    why = mismatch(path.rsplit("/", 1)[-1], content_type, head, banned)
    if why:
        found.append(Finding(MISMATCH, path, why))
    exts = extensions(path.rsplit("/", 1)[-1])
    if macros and exts and exts[-1] in _MACRO_EXTENSIONS:
        found.append(Finding(MACRO, path, f"macro-enabled Office type .{exts[-1]}"))
    return found


def hits_for(findings: Iterable[Finding], actions: dict[str, str]) -> list[Hit]:
    """One hit per symbol (every file named in its detail) with the action its category is set to.

    *actions* maps each symbol to ``"score"``, ``"quarantine"``, ``"reject"`` or ``"off"``.
    """
    by_symbol: dict[str, list[Finding]] = {}
    for finding in findings:
        if actions.get(finding.symbol, "score") != "off":
            by_symbol.setdefault(finding.symbol, []).append(finding)
    hits = []
    for symbol, found in by_symbol.items():
        detail = "; ".join(dict.fromkeys(f.text for f in found))[:300]
        action = actions.get(symbol, "score")
        if action == "reject":
            first = found[0]
            reply = Reply.reject(f"Attachment rejected: {first.text}"[:390])
            hits.append(Hit(symbol, detail=detail, action=Action.REJECT, reply=reply))
        elif action == "quarantine":
            hits.append(Hit(symbol, detail=detail, action=Action.QUARANTINE))
        else:
            hits.append(Hit(symbol, detail=detail))
    return hits


def _refused(hit: Hit) -> Hit:
    """*hit*, a category's quarantine, as a refusal naming what it found."""
    return Hit(hit.symbol, detail=hit.detail, action=Action.REJECT, reply=Reply.reject(f"Attachment rejected: {hit.detail}"[:390]))


def single_plain_text(headers: Iterable[tuple[str, bytes]]) -> bool:
    """Whether a message with these top-level headers is one text part naming no file.

    No Content-Disposition, and no Content-Type or one of text/SUBTYPE with at
    most a charset (:func:`~milterd.content.mimetext.single_text_type`):
    :func:`~milterd.content.mimeparts.attachments` finds no attachment in such
    a message (it stops after its headers), so it need not be parsed.
    """
    return single_text_type(headers) is not None


class AttachmentPolicy(ConfiguredCheck[AttachmentChecks]):
    """Banned, disguised and archived files among a message's attachments."""

    name: ClassVar[str] = "attachments"
    description: ClassVar[str] = "Attachment policy: banned extensions, double extensions, type mismatches, archives ([checks.attachments])"
    order: ClassVar[int] = 150
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol(BANNED, 5.0, "An attachment, or a file in an archive it carries, has a banned extension (detail: file and rule)"),
        Symbol(DOUBLE, 5.0, "A banned extension hidden behind another one, such as invoice.pdf.exe"),
        Symbol(MISMATCH, 3.0, "An attachment's content contradicts its name or declared type (a \"PDF\" that is an executable)"),
        Symbol(MACRO, 2.0, "An Office document with VBA macros ([checks.attachments] macro_action)"),
        Symbol(ENCRYPTED, 2.0, "An encrypted archive or member: its names or content cannot all be judged"),
        Symbol(LIMIT, 1.0, "Files never looked into, where a banned one may hide: an archive nested too deep, with too many members, decompressing past the limit, or whose listing stopped part way (damaged, a crash); a multipart without a boundary ([checks.attachments] limit_action)"),
        Symbol(UNREADABLE, 1.0, "Something not read whole where no file hides unseen: a 7z or rar without libarchive-c, a member's first bytes, an Office document's own parts past a limit, MIME fields that do not parse, base64 after its padding ([checks.attachments] unreadable_action)"),
        Symbol(MIME_LIMIT, 3.0, "A message with a file past its first 500 MIME parts, more than 2,000 parts, more than 1,000 uuencoded files or MIME fields past 16 KB (64 KB a part): the files past them never judged ([checks.attachments] mime_limit_action)"),
        Symbol(ERROR, 0.0, "The message's attachments, or one of them, could not be read (detail: why); held as limit_action says (quarantine by default), or answered 451 when this machine ran short (disk, quota, file descriptors, memory)"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        options = self.options
        self.banned = frozenset(e.lower().lstrip(".") for e in options.banned_extensions)
        self.actions = {symbol: str(getattr(options, option)) for symbol, option in ACTION_OPTIONS.items()}
        # The directory bytes parsed in one message follow the members allowed (5 MB: at most 110,000 entries, 0.5 s of CPU, by default).
        self.limits = Limits(options.archive_max_depth, options.archive_max_members, options.archive_max_size,
                             max_directory=DIRECTORY_BYTES_PER_MEMBER_LIMIT * max(options.archive_max_members, 1000),
                             max_child_seconds=options.archive_process_seconds, child=options.archive_process)
        self.memory = services.config.milter.spool_memory

    def eom_waits(self, envelope: Envelope) -> bool:
        """Never: it only parses the message (the pipeline runs it in its own thread)."""
        return False

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        hits = self._judged(envelope)
        if session.authenticated:
            # A user's own mail, not scored: a quarantine would hold it unsaid (250 to the sender, only the digest
            # telling the postmaster), where a refusal tells the sender at once which file it was.  Not a trusted
            # network's (a relay there would bounce it, perhaps to a forged sender), nor ATTACH_ERROR (milterd's
            # own failure to read it: held, to be released, never bounced).
            return [_refused(hit) if hit.action == Action.QUARANTINE and hit.symbol != ERROR else hit for hit in hits]
        return hits

    def _judged(self, envelope: Envelope) -> list[Hit]:
        findings: list[Finding] = []
        skipped: list[str] = []
        errors: list[str] = []  # why an attachment could not be judged: the others still are
        try:
            budget = DecompressionBudget(self.options.archive_max_message_size, self.limits.max_directory, self.limits.max_child_seconds)
            findings += self._uuencoded(envelope.message_chunks, budget, 1)
            if single_plain_text(envelope.headers):
                return hits_for(findings, self.actions)  # what parsing it would find: no MIME attachment
            for attachment in every_reading(envelope.message_chunks, self.memory, self.options.max_attachment_size, skipped):
                try:
                    findings.extend(self.judge(attachment, budget))
                except Exception as exc:  # noqa: BLE001 - one attachment that cannot be judged must not hide the next ones
                    if isinstance(exc, SpoolError) or local_failure(exc):
                        raise
                    log.warning("attachments: cannot judge %s", attachment.filename or attachment.content_type, exc_info=True)
                    errors.append(f"{attachment.filename or attachment.content_type}: {exc.__class__.__name__}: {exc}"[:200])
        except SpoolError:
            raise  # the message unreadable here: the pipeline answers 451, as for a full disk below
        except Exception as exc:  # noqa: BLE001 - a hostile message gives a symbol, never a crashed worker
            detail = f"{exc.__class__.__name__}: {exc}"[:200]
            if local_failure(exc):
                # The disk full (or no file descriptor, no memory) while decoding: the banned file may
                # be the one not looked at, so the message waits rather than passing unjudged.
                log.error("attachments: cannot check the message's attachments, answering 451: %s", detail)
                return [Hit(ERROR, detail=f"{LOCAL_FAILURE}: {detail}"[:200], action=Action.TEMPFAIL, reply=LOCAL_FAILURE_REPLY)]
            log.warning("attachments: cannot read the message's attachments", exc_info=True)
            findings += _skipped(skipped)
            return [self._error(detail), *hits_for(findings, self.actions)]
        findings += _skipped(skipped)
        if errors:
            return [self._error(errors[0]), *hits_for(findings, self.actions)]
        return hits_for(findings, self.actions)

    def _error(self, detail: str) -> Hit:
        """ATTACH_ERROR: attachments that could not be judged for an error (a defect a sender's content set off), held
        as what a limit kept from being looked at (``limit_action``): a banned file may be the one not judged."""
        action = self.actions[LIMIT]
        if action == "reject":
            return Hit(ERROR, detail=detail, action=Action.REJECT, reply=Reply.reject("Attachments could not be checked"))
        return Hit(ERROR, detail=detail, action=Action.QUARANTINE if action == "quarantine" else None)

    def judge(self, attachment: Attachment, budget: DecompressionBudget, depth: int = 1) -> list[Finding]:
        """Every finding of one decoded attachment, the members of its archives and the attachments of an
        attached message included; their decompression is taken from *budget* (the message's,
        ``archive_max_message_size``).  *depth*: 1 for the message's own attachments, one more per attached message."""
        name = attachment.filename or f"unnamed {attachment.content_type} part"
        head = attachment.data.read(HEAD_SIZE)
        attachment.data.seek(0)
        found = judge_name(name, self.banned) if attachment.filename else []
        for other in attachment.names:  # a client may take any of them: judge each
            found += [f for f in judge_name(other, self.banned) if f not in found]
        typed = typed_name(attachment.filename, attachment.names, attachment.content_type)
        if typed is not None:
            found += [f for f in _judge_name(name, typed, self.banned) if f not in found]
        found += judge_content(name, attachment.content_type, head, self.banned, self.actions[MACRO] != "off")
        if self.actions[MACRO] != "off" and sniff(head) == "ole" and _ole_macros(attachment.data):
            found.append(Finding(MACRO, name, "OLE document with a VBA project"))
        if attachment.content_type in MESSAGE_TYPES or message_file((name, *attachment.names)):
            found += self._judge_message(name, attachment, budget, depth)
        kind = archive_kind_of((name, *attachment.names), head)
        if kind is None or not self.options.archives:
            return found
        if attachment.truncated:
            return [*found, Finding(LIMIT, name, f"larger than max_attachment_size {self.options.max_attachment_size}: members not looked at")]
        if budget.left <= 0:
            return [*found, Finding(LIMIT, name, f"the message's archives decompressed past archive_max_message_size {self.options.archive_max_message_size}: not looked into")]
        key = (_digest(attachment.data), name, attachment.names, kind)
        listed = budget.listings.get(key)
        if listed is None:
            limits = replace(self.limits, max_size=min(self.limits.max_size, budget.left), max_directory=max(budget.directory, 0),
                             max_child_seconds=max(budget.child_seconds, 0.0))
            listing = list_archive(name, attachment.data, kind, limits, attachment.names)
            budget.left -= listing.decompressed
            budget.directory -= listing.directory
            budget.child_seconds -= listing.child_seconds
            listed = budget.listings[key] = self._listed(listing, budget, depth)
        return found + listed

    def _listed(self, listing: Listing, budget: DecompressionBudget, depth: int) -> list[Finding]:
        """The findings of an archive's listing: its members' names and first bytes, the attachments of
        the messages among them (``.eml`` files), and what was not looked at."""
        found: list[Finding] = []
        try:
            for path, data in listing.messages:
                saved = Attachment(path.rsplit("/", 1)[-1], "message/rfc822", data, data.seek(0, io.SEEK_END), truncated=False)
                data.seek(0)
                found += self._judge_message(path, saved, budget, depth + 1)
        finally:
            for _, data in listing.messages:
                data.close()
        macros = self.actions[MACRO] != "off"
        for entry in listing.entries:
            found += judge_name(entry.path, self.banned)
            if entry.head:
                found += judge_content(entry.path, "", entry.head, self.banned, macros)
            if macros and entry.path.rsplit("/", 1)[-1].lower() == "vbaproject.bin":
                found.append(Finding(MACRO, entry.path, "Office document with VBA macros"))
        found += [Finding(ENCRYPTED, path, "encrypted") for path in listing.encrypted]
        found += [Finding(LIMIT, text.split(": ", 1)[0], text.split(": ", 1)[-1]) for text in listing.limits]
        found += [Finding(UNREADABLE, text.split(": ", 1)[0], text.split(": ", 1)[-1]) for text in listing.errors]
        return found

    def _judge_message(self, name: str, attachment: Attachment, budget: DecompressionBudget, depth: int) -> list[Finding]:
        """The findings of the attachments of an attached message (a base64 message/rfc822 part, which RFC 2046
        forbids but Exchange Online and others send, or an .eml file): a mail client opens it with them."""
        if attachment.truncated:
            return [Finding(LIMIT, name, f"larger than max_attachment_size {self.options.max_attachment_size}: its attachments not looked at")]
        data = attachment.data
        key = _digest(data)
        if key in budget.messages:  # the same message in another reading: judged once
            return [replace(f, file=f"{name}/{f.file}") for f in budget.messages[key]]
        if depth > self.options.archive_max_depth:
            return [Finding(LIMIT, name, f"attached message nested deeper than {self.options.archive_max_depth}: its attachments not looked at")]
        if budget.parts.left <= 0:
            return [Finding(LIMIT, name, f"attached messages past {ATTACHED_MESSAGE_PARTS} MIME parts in all: its attachments not looked at")]
        size = data.seek(0, io.SEEK_END)
        if budget.message_bytes < size:
            return [Finding(LIMIT, name, _BYTES_NOTE)]
        budget.messages[key] = []
        found = self._uuencoded(lambda: _chunks(data), budget, depth + 1)  # named within the attached message; the caller's name goes in front
        skipped: list[str] = []

        def reading() -> Iterator[bytes]:
            """The message for one reading, its bytes counted (each reading parses it all), or nothing past the bound."""
            if budget.message_bytes < size:
                skipped.append(_BYTES_NOTE)
                return
            budget.message_bytes -= size
            yield from _chunks(data)

        for inner in every_reading(reading, self.memory, self.options.max_attachment_size, skipped, budget.parts):
            found += self.judge(inner, budget, depth + 1)
        found = list(dict.fromkeys(found + _skipped(skipped)))  # a file two readings give is one finding
        budget.messages[key] = found
        return [replace(f, file=f"{name}/{f.file}") for f in found]

    def _uuencoded(self, chunks: Callable[[], Iterable[bytes]], budget: DecompressionBudget, depth: int) -> list[Finding]:
        """The findings of the files uuencoded or yEnc-encoded in the text of a message (*chunks* gives it from its
        start): their names, and, decoded, what they hold, as a MIME attachment's (*depth*: as :meth:`judge`'s)."""
        encoded = encoded_names(chunks(), MAX_ENCODED_FILES)
        found = [finding for name in encoded[:MAX_ENCODED_FILES] for finding in judge_name(name, self.banned)]
        if len(encoded) > MAX_ENCODED_FILES:
            found.append(Finding(MIME_LIMIT, "message", f"more than {MAX_ENCODED_FILES} uuencoded files: the rest not looked at"))
        if encoded:  # decoded only where a name was found: the text is read again
            findings = dict.fromkeys(found)  # the names' findings first, each once (a set: thousands of members)
            skipped: list[str] = []
            for file in encoded_files(chunks(), self.memory, self.options.max_attachment_size, MAX_ENCODED_FILES, skipped):
                decoded = Attachment(file.name, "application/octet-stream", file.data, file.size, file.truncated)
                findings.update(dict.fromkeys(self.judge(decoded, budget, depth)))
            if skipped and len(encoded) <= MAX_ENCODED_FILES:  # more files than names: names repeated
                findings[Finding(MIME_LIMIT, "message", f"more than {MAX_ENCODED_FILES} uuencoded files: the rest not looked at")] = None
            found = list(findings)
        return found


def _chunks(data: IO[bytes]) -> Iterator[bytes]:
    """The file *data* from its start, :data:`_MESSAGE_CHUNK` bytes at a time."""
    data.seek(0)
    while chunk := data.read(_MESSAGE_CHUNK):
        yield chunk


def _digest(data: IO[bytes]) -> bytes:
    """The SHA-256 of the file *data*, read from its start (and left there)."""
    digest = hashlib.sha256()
    for chunk in _chunks(data):
        digest.update(chunk)
    data.seek(0)
    return digest.digest()


def _skipped(notes: Iterable[str]) -> list[Finding]:
    """The findings of what the MIME reader did not look at: past the part limit, the rest of the message."""
    return [Finding(MIME_LIMIT if text in _MIME_LIMIT_NOTES else LIMIT if text in _LIMIT_NOTES else UNREADABLE, "message", text) for text in dict.fromkeys(notes)]


def _ole_macros(data: IO[bytes]) -> bool:
    """Whether an OLE file names a VBA project stream, read in chunks (overlapping by the name's length)."""
    tail = b""
    try:
        for _ in range(_OLE_MACRO_SCAN // 65536):
            chunk = data.read(65536)
            if not chunk:
                return False
            if ole_has_macros(tail + chunk):
                return True
            tail = chunk[-32:]
        return False
    finally:
        data.seek(0)


CHECKS = (AttachmentPolicy,)
