"""The data a message carries through milterd.

:class:`Session` is one SMTP connection (client, HELO, authentication); an
:class:`Envelope` is one transaction in it (MAIL FROM to end of message), as in
aiosmtpd.  A check reports what it found as :class:`Hit` objects; the policy
turns the hits into a :class:`Verdict`.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Literal

from ..content.mimetext import MessageText, extract, extract_large
from .reply import Reply

#: A parsed client address.
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(enum.IntEnum):
    """What happens to a message, ordered by severity: the most severe one wins."""

    ACCEPT = 0
    ADD_HEADER = 1
    REWRITE_SUBJECT = 2
    QUARANTINE = 3
    GREYLIST = 4
    TEMPFAIL = 5
    DISCARD = 6
    REJECT = 7

    @property
    def label(self) -> str:
        """The name used in milter.conf, the log and the CLI (``add_header``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> "Action":
        """The action named *label* (``"reject"``); ValueError otherwise."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown action {label!r}; one of {', '.join(a.label for a in cls)}") from None


@dataclass(frozen=True)
class Hit:
    """One symbol a check emitted.

    ``score`` overrides the weight from the rules (a scanner's own score);
    ``action`` forces at least that action (a virus, an SPF fail set to
    reject, a greylisted triplet); ``reply`` is the SMTP answer for it.
    """

    symbol: str
    detail: str = ""
    score: float | None = None
    action: Action | None = None
    reply: Reply | None = None


@dataclass(frozen=True)
class Decision:
    """What the adapter must answer at a stage (its default reply when *reply* is None)."""

    action: Action
    reply: Reply | None = None


@dataclass(frozen=True)
class HeaderEdit:
    """A header change to make at end of message.

    ``add`` appends; ``insert`` puts the header at ``index`` (0 is the top);
    ``change`` replaces the ``index``-th (1-based) header of that name, and an
    empty ``value`` deletes it.
    """

    op: Literal["add", "insert", "change"]
    name: str
    value: str = ""
    index: int = 0


def header_safe(value: str) -> str:
    """*value* as milterd hands a header value to Postfix (the adapter) and as it is then delivered.

    A bare newline or NUL would corrupt the queue file.  A line break is kept as
    folding: a tab is added only where the next line does not already start with
    white space (a folded Subject keeps its spacing), and lines of white space
    alone are dropped.  DKIM signing and ARC sealing compute over the same text.
    """
    lines = value.replace("\x00", "").replace("\r", "").split("\n")
    folded = lines[0] + "".join("\n" + (line if line[0] in " \t" else "\t" + line) for line in lines[1:] if line.strip())
    return folded.encode("utf-8", "replace").decode("utf-8")


@dataclass
class CheckStates:
    """What a session (per connection) and an envelope (per transaction) keep for
    the checks: each stage's DNS deadline and every check's own state."""

    #: Each stage's DNS deadline, shared by every check at that stage (``Resolver.stage_deadline``).
    dns_deadlines: dict[str, float] = field(default_factory=dict, kw_only=True)
    _check_states: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False, kw_only=True)

    def check_state(self, name: str) -> dict[str, Any]:
        """The private state of the check called *name* (empty at first).

        Each check keeps its own dict under its name, apart from the
        pipeline's fields, so no two can collide; another check may read a
        check's published results here (DMARC reads SPF's and DKIM's).
        """
        return self._check_states.setdefault(name, {})


@dataclass
class Session(CheckStates):
    """One SMTP connection from a client to Postfix."""

    client_addr: str = ""
    #: The address as Postfix passed it when milterd judges the client as another: an IPv4 client written as IPv6
    #: (``64:ff9b::192.0.2.1``, ``::ffff:192.0.2.1``; :func:`~milterd.addresses.embedded_ipv4`); else "".
    client_addr_sent: str = ""
    client_name: str = ""
    client_port: int = 0
    family: str = ""
    helo: str = ""
    macros: dict[str, str] = field(default_factory=dict)
    auth_user: str = ""
    trusted: bool = False
    hits: list[Hit] = field(default_factory=list)
    #: The hits of the last HELO/EHLO (also in ``hits``), replaced by the next one.
    helo_hits: list[Hit] = field(default_factory=list)
    transactions: int = 0
    #: ``ip``'s last answer and the client_addr it parsed (several checks ask per message).
    _ip: tuple[str, IPAddress | None] | None = field(default=None, repr=False, compare=False, kw_only=True)

    @property
    def authenticated(self) -> bool:
        """True when the client authenticated with SMTP AUTH."""
        return bool(self.auth_user)

    @property
    def ip(self) -> IPAddress | None:
        """The client address, or None for a unix-socket or unparsable client."""
        cached = self._ip
        if cached is not None and cached[0] == self.client_addr:
            return cached[1]
        try:
            address: IPAddress | None = ipaddress.ip_address(self.client_addr)
        except ValueError:
            address = None
        self._ip = (self.client_addr, address)
        return address


class SpoolError(Exception):
    """The spooled body could not be read back (an I/O error, or fewer bytes than were written).

    Not an OSError on purpose: the scanner clients turn their sockets' OSErrors into
    the scanner's failure (its ``on_error``, which may let the message through), and
    this is no scanner's failure but this machine's.  The pipeline answers it 451
    whichever check met it: a message that cannot be read cannot be judged.
    """


class Spool:
    """The message body as it arrives: in memory up to a size, then on disk.

    Several threads read it at end of message (spamd streams it while the
    custom rules read its text), so no reader relies on the file's position:
    each keeps its own offset and every seek-and-read, like every write,
    happens under one lock.  The lock also covers SpooledTemporaryFile's
    rollover from memory to disk, which swaps the file under a write.
    """

    def __init__(self, memory_limit: int, directory: str | None = None) -> None:
        spooled = tempfile.SpooledTemporaryFile(max_size=memory_limit, dir=directory or None)
        if memory_limit <= 0:
            spooled.rollover()  # SpooledTemporaryFile reads a max_size of 0 as "no limit": never to disk
        self._file: IO[bytes] = spooled
        self._lock = threading.Lock()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append a body chunk; an OSError (a full disk) is raised here, never by a later read."""
        with self._lock:
            self._file.seek(0, os.SEEK_END)
            self._file.write(chunk)
            # A chunk shorter than the file's buffer would otherwise wait there, and
            # ENOSPC surface in whichever check reads the spool at end of message.
            self._file.flush()
            self.size += len(chunk)

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to *size* bytes from *offset*; the position other readers use is not theirs to lose."""
        if size <= 0:
            return b""
        return self._read(offset, size)

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body from the start, in chunks, up to its size when the iteration began.

        Stopping there keeps the total equal to a length announced beforehand
        (spamd's ``Content-length``).
        """
        offset, end = 0, self.size
        while offset < end:
            chunk = self.read_at(offset, min(size, end - offset))
            if not chunk:
                raise SpoolError(f"the spooled body read back short: {offset} of {end} bytes")
            offset += len(chunk)
            yield chunk

    def read(self, limit: int = -1) -> bytes:
        """The body's first *limit* bytes (all of it with -1)."""
        return self._read(0, limit)

    def _read(self, offset: int, size: int) -> bytes:
        """Up to *size* bytes (all the rest with -1) from *offset*, under the lock; SpoolError when the file fails."""
        with self._lock:
            try:
                self._file.seek(offset)
                return self._file.read(size)
            except OSError as exc:
                raise SpoolError(f"cannot read the spooled body: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Release memory and the temporary file."""
        with self._lock:
            try:
                self._file.close()
            except OSError:
                pass  # the buffered tail of a failed write (a full disk): the file is closed all the same


@dataclass
class Envelope(CheckStates):
    """One transaction: the envelope, the headers in order and the spooled body.

    At end of message the checks of one tier run in several threads at once.
    They may read everything here (nothing else writes it then; the spool
    gives each reader its own offset), append to or extend ``edits`` (each
    call is atomic, and the checks edit headers of different names, so how
    their calls interleave does not matter) and keep their own state in
    :meth:`check_state`; ``hits`` are added by the pipeline once they have
    all returned.  ``decision``, ``forced_hit``, ``logged`` and
    ``store_error`` are the pipeline's own and no check's business.
    """

    spool: Spool
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    mail_args: dict[str, str | None] = field(default_factory=dict)
    queue_id: str = ""
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    rejected_recipients: list[tuple[str, Hit]] = field(default_factory=list)
    edits: list[HeaderEdit] = field(default_factory=list)
    #: Each header as it arrived (name, colon, value with its own leading
    #: whitespace and folding), when the adapter got it verbatim; used to
    #: store a quarantined message byte for byte.
    raw_headers: list[bytes] = field(default_factory=list)
    #: Header fields (each "Name: value" with its folds, no final CRLF) a quarantined copy is stored with before its
    #: own: what the milter adds that must go out with a release too (the DKIM signature of an authenticated
    #: sender's mail, made over the copy as stored).
    stored_fields: list[bytes] = field(default_factory=list)
    #: The refusal or tempfail given before end of message (logged by ``Pipeline.finish``).
    decision: Decision | None = None
    #: The hit that forced ``decision`` (``milterd check`` names it).
    forced_hit: Hit | None = None
    #: Whether the transaction's log row was written (or deliberately not).
    logged: bool = False
    #: Whether writing the log row failed.
    store_error: bool = False
    #: Headers counted so far and their total size, for [milter]'s header limits.
    header_tally: tuple[int, int] = (0, 0)
    #: The verdict the message was answered with at end of message, once its log row was committed (a failed
    #: commit's tempfail included); None before that, or when end of message failed.  What ``on_abort`` may read
    #: of what became of the message.
    answered: Verdict | None = None
    #: :meth:`text`'s extractions by limit, and the lock that makes checks running at once share one.
    _texts: dict[int, MessageText] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    _texts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False, kw_only=True)
    #: :attr:`header_bytes` and the header counts it was built from (headers are only ever appended).
    _header_bytes: tuple[int, int, bytes] | None = field(default=None, repr=False, compare=False, kw_only=True)

    @property
    def smtputf8(self) -> bool:
        """Whether MAIL FROM said SMTPUTF8 (RFC 6531): UTF-8 in header fields is then allowed (RFC 6532)."""
        return any(key.upper() == "SMTPUTF8" for key in self.mail_args)

    def header(self, name: str) -> str | None:
        """The first header called *name* (case-insensitive), decoded leniently, or None."""
        wanted = name.lower()
        for hname, value in self.headers:
            if hname.lower() == wanted:
                return value.decode("utf-8", "replace")
        return None

    def header_count(self, name: str) -> int:
        """How many headers are called *name*."""
        wanted = name.lower()
        return sum(1 for hname, _ in self.headers if hname.lower() == wanted)

    @property
    def header_bytes(self) -> bytes:
        """The header section as Postfix passed it, CRLF line ends, blank line included."""
        cached = self._cached_header_bytes()
        if cached is not None:
            return cached
        value = self._build_header_bytes()
        self._header_bytes = (len(self.headers), len(self.raw_headers), value)
        return value

    def _cached_header_bytes(self) -> bytes | None:
        """The header section built earlier, while no header has arrived since."""
        cached = self._header_bytes
        if cached is not None and cached[0] == len(self.headers) and cached[1] == len(self.raw_headers):
            return cached[2]
        return None

    def _build_header_bytes(self) -> bytes:
        if self.raw_headers and len(self.raw_headers) == len(self.headers):
            return b"".join(_crlf(line) + b"\r\n" for line in self.raw_headers) + b"\r\n"
        lines = [hname.encode("ascii", "replace") + b": " + _crlf(value) + b"\r\n" for hname, value in self.headers]
        return b"".join(lines) + b"\r\n"

    @property
    def size(self) -> int:
        """The message size: headers and body (``len(header_bytes)``, counted without building them)."""
        cached = self._cached_header_bytes()
        if cached is not None:
            return len(cached) + self.spool.size
        if self.raw_headers and len(self.raw_headers) == len(self.headers):
            header_size = sum(_crlf_size(line) for line in self.raw_headers)
        else:
            header_size = sum(len(hname) + 2 + _crlf_size(value) for hname, value in self.headers)
        return header_size + 2 + self.spool.size

    def message_chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The whole message as received (headers, blank line, body), in chunks."""
        yield self.header_bytes
        yield from self.spool.chunks(size)

    def stored_chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The message as a quarantine stores it: :attr:`stored_fields`, then :meth:`message_chunks`."""
        if self.stored_fields:
            yield b"".join(field_ + b"\r\n" for field_ in self.stored_fields)
        yield from self.message_chunks(size)

    def message_bytes(self) -> bytes:
        """The whole message in memory; for bounded uses such as quarantine and rule checks."""
        return self.header_bytes + self.spool.read()

    def text(self, limit: int) -> MessageText:
        """The decoded text and the links of the message (:func:`milterd.content.mimetext.extract`
        of the headers and the body's first 4 × *limit* bytes, at most *limit* characters of text; of a larger
        body, its first 4 × *limit* bytes once its images, documents and archives are left out).

        Parsed once per limit and shared: the URI lists and the custom rules
        read the same result, which the caller must not change.  Raises what
        reading the spool raises.
        """
        with self._texts_lock:
            found = self._texts.get(limit)
            if found is None:
                window = self.header_bytes + self.spool.read(4 * limit)
                if self.spool.size <= 4 * limit:
                    found = extract(window, limit)
                else:  # an image or a PDF before the HTML part must not hide its links
                    found = extract_large(window, self.message_chunks, len(window), limit)
                self._texts[limit] = found
            return found

    def close(self) -> None:
        """Release the spool and the extracted text."""
        self._texts.clear()
        self.spool.close()


def verdict_hits(session: Session, envelope: Envelope) -> list[Hit]:
    """The hits the end-of-message verdict counts: the message's, and the connection's that force nothing (a
    connection's forcing hit is applied at MAIL FROM; one still here refused nothing, the client having
    authenticated)."""
    return [hit for hit in session.hits if hit.action is None] + envelope.hits


def _crlf_size(line: bytes) -> int:
    """``len(_crlf(line) + b"\\r\\n")``: each CRLF stays two bytes, a bare LF becomes two."""
    if b"\n" not in line:
        return len(line) + 2
    return len(line) - line.count(b"\r\n") + line.count(b"\n") + 2


def _crlf(text: bytes) -> bytes:
    # Postfix passes folded header lines joined by a bare LF.
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Verdict:
    """The policy's decision on a message."""

    action: Action
    score: float
    symbols: dict[str, float]
    details: dict[str, str]
    reason: str
    reply: Reply | None = None
    required: float | None = None
    #: False for a trusted or authenticated client's message: only forced actions applied, no X-Spam-* headers.
    scored: bool = True

    @property
    def is_spam(self) -> bool:
        """Whether the message was scored and its score reached the add_header threshold (X-Spam-Flag)."""
        return self.scored and self.required is not None and self.score >= self.required
