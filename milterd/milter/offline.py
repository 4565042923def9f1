"""Running the pipeline on stored messages, without an MTA (``milterd check``).

:func:`sources` finds the messages of a path (a message file, an mbox, a
Maildir or a directory of those); :func:`check_message` plays Postfix's part for one
message (connect, HELO, MAIL, RCPT, DATA, headers, body, end of message) to the
worker's own adapter, :class:`~milterd.milter.adapter.MilterdMilter`, in process
through pymilter's ``TestCtx``, so that the stage sequence exists once (in the
adapter), and returns what was decided and why.  The pipeline must be built
with ``keep_log=False``.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import Milter
from Milter import testctx

from ..content.headertext import addresses
from ..message.model import Action, Decision, Hit
from ..message.pipeline import Pipeline
from ..message.policy import decide, spam_status
from .adapter import MilterdMilter

_HEADER_LINE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9_.-]*[ \t]*:")
#: A header field's line as Postfix reads one: a name of printable ASCII but ":" (RFC 5322's ftext), blanks before
#: the colon allowed (RFC 5322 4.5.3).  _HEADER_LINE, stricter, tells a file that is mail from one that is not.
_FIELD_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
#: "From :" is a From field in the obsolete syntax, not an mbox separator.
_FROM_FIELD = re.compile(rb"From[ \t]*:")
_CHUNK = 65536


@dataclass(frozen=True)
class MessageRef:
    """One message to check: a label for people and a way to read it (whole, or its start only)."""

    label: str
    load: Callable[[], bytes]
    #: Reads at most that many bytes of the message (None: ``load`` and cut).
    load_start: Callable[[int], bytes] | None = None

    def start(self, size: int) -> bytes:
        """The first *size* bytes of the message, without reading the rest where the source allows."""
        if self.load_start is not None:
            return self.load_start(size)
        return self.load()[:size]


@dataclass
class Client:
    """The SMTP side of an offline check: who sends, as what, to whom."""

    addr: str = ""
    name: str = ""
    helo: str = ""
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    auth_user: str = ""
    #: MAIL FROM said SMTPUTF8 (8-bit header fields are then valid).
    smtputf8: bool = False


@dataclass
class CheckedMessage:
    """What the pipeline decided on one message, and why."""

    label: str
    action: Action
    score: float
    symbols: dict[str, float]
    details: dict[str, str]
    reason: str = ""
    reply: str = ""
    stage: str = "eom"
    forced: str = ""
    #: The X-Spam-Status the milter adds ('' when it adds none: an unscored message, a refused one).
    spam_status: str = ""
    error: str = ""
    #: False when the policy did not score the message (trusted or authenticated client): its
    #: score is only the sum of its symbols, no threshold applied, no X-Spam-* header added.
    scored: bool = True


#: How much of a file :func:`looks_like_message` is given.
HEAD_SIZE = 512


def looks_like_message(head: bytes) -> bool:
    """Whether a file starting with *head* (its first :data:`HEAD_SIZE` bytes) is a message (header line)
    or an mbox (a From_ line, then a header line: a file of a From_ line alone, a truncated mbox,
    was learned as a message of no words)."""
    head = head.lstrip(b"\r\n")
    if not _from_line(head):
        return bool(_HEADER_LINE.match(head))
    line_end = head.find(b"\n")
    if line_end < 0:
        return len(head) >= HEAD_SIZE - 2  # a From_ line longer than the head: what follows is not seen
    return bool(_HEADER_LINE.match(head[line_end + 1:]))


#: The first bytes of the compressed and archive files a folder of mail is often saved as: gzip, compress (.Z), bzip2,
#: xz, lzip, zstd, lz4, zip, 7z.
_PACKED = (b"\x1f\x8b", b"\x1f\x9d", b"BZh", b"\xfd7zXZ\x00", b"LZIP", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"PK\x03\x04",
           b"7z\xbc\xaf\x27\x1c")


def no_mail(head: bytes) -> str:
    """Why a file starting with *head* is plainly no mail message ('' when it may be one): empty, or compressed
    (``milterd check`` judges a message of body lines only, or with a NUL byte, as Postfix would take it, but not these)."""
    if not head.strip():
        return "empty"
    if head.startswith(_PACKED):
        return "compressed"
    return ""


def _starts_mbox(head: bytes) -> bool:
    """Whether a file starting with *head* starts as an mbox: a From_ line, blank lines before it
    allowed (as :func:`looks_like_message` allows them)."""
    return _from_line(head.lstrip(b"\r\n"))


def _from_line(line: bytes) -> bool:
    """Whether *line* is an mbox From_ line (``From sender date``), not a From field written ``From : …``."""
    return line.startswith(b"From ") and not _FROM_FIELD.match(line)


#: What every mbox writer puts after a From_ line's sender: a date, from its weekday's name on, with a time and
#: then a year (``Mon Jan  1 00:00:00 2024``, ``Thu, 1 Jan 2024 00:00:00 +0000``, ``Mon Jan 01 00:00:00 +0000 2024``,
#: ``Fri Jul  8 12:08:34 93``), as mutt's is_from wants it.
#: Searched one after the other, each from where the last ended (the earliest of each leaves the most room for the
#: next): one pattern with ".*" between them backtracked, 5 s of CPU for a line of 16,000 "Mon".
_WEEKDAY = re.compile(rb"(?:^|\s)(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),?\s")
_TIME = re.compile(rb"\b\d{1,2}:\d{2}\b")
_YEAR = re.compile(rb"\b\d{2,4}\b")


def _separator(line: bytes) -> bool:
    """Whether *line*, after a blank line, starts the next message of an mbox: a From_ line with its date.
    A paragraph of a message saved with its From_ line ("From the desk of Dr. Bob …", unquoted) is not one:
    taken for one, it cut the message in two (the rest unlearned, the part learned counted apart)."""
    if not _from_line(line):
        return False
    sender_and_date = line[5:].split(None, 1)
    if len(sender_and_date) < 2:
        return False
    date = sender_and_date[1]
    weekday = _WEEKDAY.search(date)
    clock = _TIME.search(date, weekday.end()) if weekday else None
    return clock is not None and _YEAR.search(date, clock.end()) is not None


def sources(path: Path) -> Iterator[MessageRef]:
    """The messages of *path*: a message, an mbox, a Maildir, or a directory of those
    (recursively, in name order; files that are not mail are skipped).

    In a directory, a file or folder that cannot be read (a dangling symlink, a FIFO, a
    file gone since it was listed) is a message of its own whose ``load`` raises the
    OSError that says why, so that it is reported by its path and the rest is read.
    """
    if path.is_dir():
        if all((path / sub).is_dir() for sub in ("cur", "new")):
            yield from _maildir(path)
            return
        unlisted: list[OSError] = []
        start = os.path.realpath(path)
        walked: set[tuple[int, int]] = set()  # folders by (device, inode): a link back up is not walked again
        # Linked folders are followed, as linked files are: a training folder of links to users' Junk folders.
        for root, dirs, files in os.walk(path, onerror=unlisted.append, followlinks=True):
            yield from _unlisted(unlisted)
            try:
                status = os.stat(root)
            except OSError as exc:
                unlisted.append(exc)
                dirs.clear()
                continue
            if (status.st_dev, status.st_ino) in walked:
                dirs.clear()
                continue
            walked.add((status.st_dev, status.st_ino))
            dirs[:] = [name for name in sorted(dirs) if _followed(Path(root) / name, start, unlisted)]
            if all(d in dirs for d in ("cur", "new")):
                yield from _guarded(Path(root), _maildir)
                dirs.clear()
                continue
            for name in sorted(files):
                if not name.startswith("."):
                    yield from _guarded(Path(root) / name, functools.partial(_file, skip_unknown=True))
        yield from _unlisted(unlisted)
        return
    yield from _file(path, skip_unknown=False)


#: Folders a link found in a walk is not followed into: the kernel's and the devices' (/proc/PID/root is all of /).
_SYSTEM_FOLDERS = ("/proc", "/sys", "/dev", "/run")


def _followed(folder: Path, start: str, unlisted: list[OSError]) -> bool:
    """Whether the walk from *start* (a real path) goes into *folder*: not when it is a link to a folder above the
    start (``/`` walked the whole system) or to a system folder, which is said in *unlisted*."""
    if not os.path.islink(folder):
        return True
    real = os.path.realpath(folder)
    above = real == "/" or start == real or start.startswith(real + "/")
    if above or any(real == system or real.startswith(system + "/") for system in _SYSTEM_FOLDERS):
        unlisted.append(OSError(errno.ELOOP, "a link to a folder above the one named or to a system folder: not followed", str(folder)))
        return False
    return True


def _guarded(path: Path, read: Callable[[Path], Iterator[MessageRef]]) -> list[MessageRef]:
    """The messages *read* finds at *path*, or one that fails as reading it failed."""
    try:
        return list(read(path))
    except OSError as exc:  # a Maildir gone since it was listed too
        return [_failing(str(path), exc)]


def _unlisted(errors: list[OSError]) -> Iterator[MessageRef]:
    """The folders os.walk could not list (which it would skip silently), each a failing message."""
    while errors:
        exc = errors.pop(0)
        yield _failing(str(exc.filename or "?"), exc)


def _failing(label: str, exc: OSError) -> MessageRef:
    def load() -> bytes:
        raise exc

    return MessageRef(label, load)


def _open_regular(path: Path) -> BinaryIO:
    """*path* opened for reading; an OSError when it is no regular file (opening a FIFO
    would wait for a writer, a device may never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO opens at once; no effect on files
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read(path: Path, start: int = 0, size: int = -1) -> bytes:
    """*size* bytes (-1: all) of *path* from offset *start*."""
    with _open_regular(path) as handle:
        if start:
            handle.seek(start)
        return handle.read(size)


def _file(path: Path, skip_unknown: bool) -> Iterator[MessageRef]:
    with _open_regular(path) as handle:
        head = handle.read(HEAD_SIZE)
    if skip_unknown and not looks_like_message(head):
        return
    if _starts_mbox(head):
        messages = _mbox_messages(path)
        if len(messages) > 1:
            for number, (start, stop) in enumerate(messages, 1):
                yield MessageRef(f"{path}#{number}", functools.partial(_read, path, start, stop - start),
                                 functools.partial(_read_at_most, path, start, stop - start))
            return
    # A message file, or a single message saved with its From_ line (an mbox of one): read as it is.
    yield MessageRef(str(path), functools.partial(_read, path), functools.partial(_read, path, 0))


def _read_at_most(path: Path, start: int, length: int, size: int) -> bytes:
    return _read(path, start, min(length, max(size, 0)))


def _mbox_messages(path: Path) -> list[tuple[int, int]]:
    """Where the messages of the mbox *path* are: (offset after the From_ line, end) of each.

    Not mailbox.mbox: it starts a message at every line beginning "From ", and a message
    saved with its From_ line whose body has an unquoted "From " line (an mboxcl writer's,
    or one saved by hand) came apart.  A separator here is a From_ line at the start of the
    file (after blank lines) or, with its date, after a blank line, as mboxo and mboxrd writers put them.
    The bytes between are as mailbox.mbox gives them: the From_ line dropped, ``>From``
    left quoted, a message's LF blank line before the next From_ line left out.  The file
    is read a bounded piece at a time (a line of any length is never held whole).
    """
    messages: list[tuple[int, int]] = []
    after_blank = True  # the start of the file counts as after a blank line
    last_lf_blank = False  # the last line was "\n" (mailbox.mbox leaves such a line out of the message before)
    start: int | None = None  # of the message being read (after its From_ line)
    in_line = in_separator = False  # within a line longer than a piece (a From_ line)
    position = 0
    with _open_regular(path) as handle:
        while piece := handle.readline(_CHUNK):
            if not in_line:
                # The first From_ line as it comes (a saved message's may lack its date), the next ones with theirs.
                if after_blank and (_from_line(piece) if start is None and not in_separator else _separator(piece)):
                    if start is not None:
                        messages.append((start, position - 1 if last_lf_blank else position))
                    in_separator = True
                after_blank = piece in (b"\n", b"\r\n")
                last_lf_blank = piece == b"\n"
            position += len(piece)
            in_line = not piece.endswith(b"\n")
            if in_separator and not in_line:
                start, in_separator = position, False
    if in_separator:  # a From_ line at the end of the file, with no line end
        start = position
    if start is not None:
        messages.append((start, position - 1 if last_lf_blank else position))
    return messages


def _maildir(path: Path) -> Iterator[MessageRef]:
    """The messages of the Maildir *path*: the files of its ``new`` and ``cur`` folders, by key (the name up to
    its ``:``), as ``mailbox.Maildir`` lists them, each read as a message file is: a FIFO or a device among them
    is a message that fails (``mailbox.Maildir`` opened a FIFO and waited for a writer for ever)."""
    listing = _MaildirListing(path)
    for key in sorted(listing.files):
        yield MessageRef(f"{path}/{key}", functools.partial(listing.read, key), functools.partial(listing.read, key, 0))


def _maildir_files(path: Path) -> dict[str, Path]:
    """The files of the Maildir *path*'s ``new`` and ``cur`` folders by key (the name up to its ``:``)."""
    found: dict[str, Path] = {}
    for folder in ("new", "cur"):
        for entry in os.listdir(path / folder):
            file = path / folder / entry
            # os.path.isdir: False for a link it cannot follow (Path.is_dir raised EACCES: the whole Maildir unread).
            if not entry.startswith(".") and not os.path.isdir(file):
                found[entry.split(":")[0]] = file
    return found


class _MaildirListing:
    """A Maildir's files by key, listed again when one is gone (the server renames a message read, flagged or moved
    from new to cur) and the folder changed since it was last listed: a folder of 20,000 messages all moved was
    listed again for each, and messages expunged are not looked for again and again."""

    #: Seconds after which a miss lists the folder again even if its times say nothing changed (a change in the same
    #: tick of the file system's clock as the last listing does not show in them).
    RELIST_SECONDS = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp = self._stamp()
        self.files = _maildir_files(path)
        self.listed = time.monotonic()

    def read(self, key: str, start: int = 0, size: int = -1) -> bytes:
        """*size* bytes (-1: all) of the message *key* from *start*, under the name it has now."""
        try:
            return _read(self.files[key], start, size)
        except FileNotFoundError:
            stamp = self._stamp()
            if stamp == self.stamp and time.monotonic() - self.listed < self.RELIST_SECONDS:
                raise  # nothing renamed or removed since the folder was listed: it is gone
            self.stamp, self.files, self.listed = stamp, _maildir_files(self.path), time.monotonic()
            if key not in self.files:
                raise
            return _read(self.files[key], start, size)

    def _stamp(self) -> tuple[int, ...]:
        """When new/ and cur/ last changed (a rename, a delivery or an expunge changes a folder's time; taken before
        listing, so that a change during the listing shows at the next miss)."""
        return tuple(os.stat(self.path / folder).st_mtime_ns for folder in ("new", "cur"))


#: The header fields Postfix's cleanup removes before the milters see a message (``message_drop_headers``' default):
#: a saved copy's Return-Path, say, is judged by no check of the milter, so neither by ``check``.
POSTFIX_DROPPED = frozenset({"bcc", "content-length", "resent-bcc", "return-path"})


def split_message(raw: bytes, as_written: bool = False) -> tuple[list[tuple[str, bytes]], bytes]:
    """The headers (name, value unfolded with LF kept) and the body (CRLF).

    Each value without its leading blanks, or with *as_written* as Postfix passes it to a milter that
    negotiated SMFIP_HDR_LEADSPC (as the workers do): all after the colon.  Blank lines before the
    message and an mbox From_ line are dropped (a file :func:`looks_like_message` takes); a line that
    is neither a header nor a continuation ends the headers, as in Postfix.
    """
    text = raw.replace(b"\r\n", b"\n").lstrip(b"\n")
    if _from_line(text):
        text = text.split(b"\n", 1)[1] if b"\n" in text else b""
    fields: list[tuple[str, list[bytes]]] = []  # each field's lines, joined once all are in (linear time)
    start = 0  # of the line being read; the body's once the headers end
    # Line by line up to the headers' end only: splitting the whole text made a bytes object of each
    # body line too (10 MB of 1-character lines: 3.5 million, 440 MB for 'milterd check').
    while start < len(text):
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        if line == b"":
            start = end + 1
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
        elif b":" in line and _FIELD_LINE.match(line):
            raw_name, _, value = line.partition(b":")
            fields.append((raw_name.strip().decode("ascii", "replace"), [value if as_written else value.lstrip(b" \t")]))
        else:
            break
        start = end + 1
    body = text[start:]
    return [(name, b"\n".join(parts)) for name, parts in fields], body.replace(b"\n", b"\r\n")


def envelope_from_headers(headers: list[tuple[str, bytes]]) -> tuple[str, list[str]]:
    """A sender (Return-Path, else From) and recipients (To and Cc) when none were given."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value.decode("utf-8", "replace"))
    sender = ""
    if values.get("return-path") and values["return-path"][0].strip() == "<>":
        return "", _recipients(values)  # a bounce: MAIL FROM:<>, not its From (MAILER-DAEMON@…)
    for key in ("return-path", "from"):
        if values.get(key):
            found = [a for a in _addresses(values[key][:1]) if a]
            if found:
                sender = found[0]
                break
    return sender, _recipients(values)


def _recipients(values: dict[str, list[str]]) -> list[str]:
    """The recipients To and Cc name (the first 20), else postmaster@localhost."""
    recipients = [a for a in _addresses(values.get("to", []) + values.get("cc", [])) if "@" in a]
    return recipients[:20] or ["postmaster@localhost"]


def _addresses(fields: list[str]) -> list[str]:
    """The addresses of these field values, each value parsed apart, so that one the stdlib
    parser cannot take is left out alone (it recurses once per nested comment or group:
    5,000 "(" raise RecursionError)."""
    found: list[str] = []
    for value in fields:
        try:
            found += [a for _, a in addresses(value)]
        except RecursionError:
            pass
    return found


class _Context(testctx.TestCtx):
    """pymilter's test context standing in for libmilter: what the adapter asks of
    libmilter (macros, replies, header edits, quarantine) stays here."""

    def __init__(self) -> None:
        super().__init__(logfile="")
        self.edits: list[tuple[str, str, str, int]] = []
        self.quarantined = ""

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        self.edits.append(("add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.edits.append(("change", field, value, idx))

    def quarantine(self, reason: str) -> None:
        self.quarantined = reason


class _CheckMilter(MilterdMilter):
    """The milter of one offline check: the worker's adapter, with its pipeline, but an
    exception is the message's error (the adapter would answer it with a 451)."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def _guard(self, stage: str, func: Callable[..., int], *args: Any) -> int:
        return int(func(*args))


def check_message(pipeline: Pipeline, raw: bytes, client: Client, label: str = "") -> CheckedMessage:
    """Run *raw* through the worker's adapter as Postfix would feed it (connect,
    HELO, MAIL, RCPT, DATA, headers, body, end of message) and return the outcome."""
    try:
        headers, body = split_message(raw, as_written=True)
        default_sender, default_recipients = envelope_from_headers(headers)
        headers = [(name, value) for name, value in headers if name.rstrip(" \t").lower() not in POSTFIX_DROPPED]
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a result, not a crash
        return CheckedMessage(label, Action.ACCEPT, 0.0, {}, {}, error=f"cannot parse: {exc}")
    ctx = _Context()
    milter = _CheckMilter(pipeline)
    milter._setctx(ctx)
    ctx._setsymval("i", "CHECK")
    if client.auth_user:
        ctx._setsymval("{auth_authen}", client.auth_user)
    # With P_HDR_LEADSPC, as Postfix and the workers negotiate it: values as written, one space dropped by the adapter
    # (every blank stripped here made a header rule or a c=simple DKIM signature judge otherwise than the worker).
    ctx._stage = -1
    milter.negotiate([Milter.CURR_ACTS, _PROTOCOL, 0, 0])
    stage = "connect"
    try:
        hostname = client.name or (f"[{client.addr}]" if client.addr else "")
        family = socket.AF_INET6 if ":" in client.addr else socket.AF_INET
        answer = _call(ctx, Milter.M_CONNECT, milter.connect, hostname, family, (client.addr, 0))
        if answer == Milter.CONTINUE:
            stage = "helo"
            # HELO not simulated: look like a client that greeted with its own address
            # literal (RFC 5321's neutral choice), not like one that never said HELO.
            address = client.addr or "127.0.0.1"
            helo = client.helo or (f"[IPv6:{address}]" if ":" in address else f"[{address}]")
            answer = _call(ctx, Milter.M_HELO, milter.hello, helo)
        if answer == Milter.CONTINUE:
            stage = "mail"
            sender = default_sender if client.sender is None else client.sender
            answer = _call(ctx, Milter.M_ENVFROM, milter.envfrom, f"<{sender}>", *(["SMTPUTF8"] if client.smtputf8 else []))
        if answer == Milter.CONTINUE:
            stage = "rcpt"
            for recipient in client.recipients or default_recipients:
                _call(ctx, Milter.M_ENVRCPT, milter.envrcpt, f"<{recipient}>")
            envelope = milter.envelope
            if envelope is not None and not envelope.recipients and envelope.rejected_recipients:
                # Postfix ends a transaction whose every recipient was refused before DATA.
                worst = max((h for _, h in envelope.rejected_recipients), key=lambda h: h.action or Action.REJECT)
                envelope.forced_hit = worst
                return _refused(pipeline, milter, Decision(worst.action or Action.REJECT, worst.reply), stage, label)
        if answer == Milter.CONTINUE:
            stage = "data"
            answer = _call(ctx, Milter.M_DATA, milter.data)
        if answer == Milter.CONTINUE:
            stage = "header"
            for name, value in headers:
                answer = _call(ctx, -1, milter.header_bytes, name, value)
                if answer != Milter.CONTINUE:
                    break
        if answer == Milter.CONTINUE:
            answer = _call(ctx, Milter.M_EOH, milter.eoh)
        if answer == Milter.CONTINUE:
            stage = "eom"
            for start in range(0, len(body), _CHUNK):
                _call(ctx, -1, milter.body, body[start:start + _CHUNK])
            envelope = milter.envelope
            _call(ctx, Milter.M_EOM, milter.eom)
            outcome = milter.outcome
            if outcome is None or envelope is None:
                raise RuntimeError("end of message gave no outcome")
            verdict = outcome.verdict
            return CheckedMessage(
                label, verdict.action, verdict.score, dict(verdict.symbols), dict(verdict.details), verdict.reason, str(outcome.reply or ""),
                "eom", forced=_forced_symbol(envelope.hits + milter.session.hits, verdict.action),
                # As the milter adds it: none for a message not scored, refused, or with [actions] headers off.
                spam_status=spam_status(verdict) if any(e.op == "add" and e.name == "X-Spam-Status" for e in outcome.edits) else "",
                scored=verdict.scored,
            )
        decision = milter.refusal
        if decision is None:
            raise RuntimeError(f"refused at {stage} without a decision")
        return _refused(pipeline, milter, decision, stage, label)
    except Exception as exc:  # noqa: BLE001 - report, go on with the next message
        return CheckedMessage(label, Action.ACCEPT, 0.0, {}, {}, stage=stage, error=f"{exc.__class__.__name__}: {exc}")
    finally:
        try:
            ctx._stage = -1
            Milter.close_callback(ctx)
        except Exception:  # noqa: BLE001
            pass


#: The protocol options offered: every stage, header values with their leading space (as Postfix offers them).
_PROTOCOL = 0x1FFFFF


def _call(ctx: _Context, stage: int, callback: Callable[..., int], *args: Any) -> int:
    """One callback at *stage* (libmilter's number; -1 where pymilter has none)."""
    ctx._stage = stage
    try:
        return int(callback(*args))
    finally:
        ctx._stage = -1


def _refused(pipeline: Pipeline, milter: MilterdMilter, decision: Decision, stage: str, label: str) -> CheckedMessage:
    """The judgement of a transaction refused before end of message."""
    session, envelope = milter.session, milter.envelope
    forced: Hit | None = envelope.forced_hit if envelope is not None else None
    hits = list(session.hits) + (list(envelope.hits) if envelope is not None else []) + ([forced] if forced else [])
    hits += [h for _, h in envelope.rejected_recipients] if envelope is not None else []
    verdict = decide(hits, pipeline.services.weight, pipeline.config.actions, scored=False)
    reply = str(decision.reply or "")
    return CheckedMessage(
        label, decision.action, verdict.score, dict(verdict.symbols), dict(verdict.details),
        (str(forced.reply) if forced.reply else forced.symbol) if forced else reply, reply, stage, forced=forced.symbol if forced else "",
    )


def _forced_symbol(hits: list[Hit], action: Action) -> str:
    forced = [h for h in hits if h.action is not None and h.action == action]
    return forced[0].symbol if forced else ""
