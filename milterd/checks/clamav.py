"""ClamAV: the message is streamed to clamd while it arrives.

At end of headers an INSTREAM session is opened and the headers are sent;
each body chunk follows as Postfix passes it; at end of message only the
zero-length terminator is left, so the wait is for clamd's verdict alone,
and it overlaps SpamAssassin's scan (end-of-message hooks run concurrently).

A message larger than ``[clamav] max_size`` is not scanned whole:
``CLAMAV_SKIPPED_SIZE``, but its first ``max_size`` bytes are (the stream is
ended there and clamd's verdict taken at end of message), so that a virus
followed by padding is still found.  MAIL FROM's ``SIZE=`` over ``max_size`` only spares
the stream: it is the client's estimate (RFC 1870), so a message that proves
smaller is scanned whole from the spool at end of message, and a larger one's
first ``max_size`` bytes from there.  clamd
unreachable, slower than ``timeout`` or answering an error gives
``CLAMAV_ERROR``, with a 451 when ``on_error = "tempfail"``.  A virus gives
``CLAMAV_VIRUS`` (detail: its name) and forces ``[clamav] action``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator

from ..message.model import Action, Envelope, HeaderEdit, Hit, Session, SpoolError
from ..message.reply import Reply
from ..scanners import ScannerError, ScannerTimeout
from ..scanners.clamd import ClamdClient, ClamdResult, InstreamScan
from . import Hits, Symbol
from .scanning import ScannerCheck, scan_error_hit

if TYPE_CHECKING:
    from ..config import ClamavSection
    from ..services import Services

log = logging.getLogger("milterd")

VIRUS = "CLAMAV_VIRUS"
SKIPPED = "CLAMAV_SKIPPED_SIZE"
ERROR = "CLAMAV_ERROR"
SCANNER_DOWN_REPLY = Reply.tempfail("Virus scanner unavailable, please try again later")
VIRUS_HEADERS = ("X-Virus-Scanned", "X-Virus-Status")


@dataclass
class ScanState:
    """One message's scan: the open stream, or why there is none."""

    stream: InstreamScan | None = None
    skipped: str = ""
    error: str = ""
    #: MAIL FROM's SIZE= was over max_size: no stream; the size received decides at end of message.
    deferred: bool = False
    #: The message went past max_size: its first max_size bytes were sent, the stream is left for end of message.
    partial: bool = False
    #: The stream failed because clamd was silent (ScannerTimeout): it is not asked again for this message.
    timed_out: bool = False
    opened: float = field(default_factory=time.monotonic)


def virus_hit(name: str, action: str) -> Hit:
    """The hit for a virus called *name* under ``[clamav] action``."""
    if action == "quarantine":
        return Hit(VIRUS, detail=name, action=Action.QUARANTINE)
    if action == "discard":
        return Hit(VIRUS, detail=name, action=Action.DISCARD)
    return Hit(VIRUS, detail=name, action=Action.REJECT, reply=Reply.reject(f"Virus found: {_printable(name)}"))


def error_hit(reason: str, on_error: str) -> Hit:
    """The hit for a scan that failed, under ``[clamav] on_error``."""
    return scan_error_hit(ERROR, reason, on_error, SCANNER_DOWN_REPLY)


def removal_edits(envelope: Envelope) -> list[HeaderEdit]:
    """Remove incoming X-Virus-* headers: a sender must not claim a verdict, whether we add ours or not."""
    edits: list[HeaderEdit] = []
    for name in VIRUS_HEADERS:
        for index in range(envelope.header_count(name), 0, -1):
            edits.append(HeaderEdit("change", name, "", index))
    return edits


def status_edits(envelope: Envelope, scanned_by: str, status: str) -> list[HeaderEdit]:
    """Remove incoming X-Virus-* headers (a sender must not claim a verdict), then add ours."""
    edits = removal_edits(envelope)
    edits.append(HeaderEdit("add", "X-Virus-Scanned", scanned_by))
    edits.append(HeaderEdit("add", "X-Virus-Status", status))
    return edits


def declared_size(envelope: Envelope) -> int | None:
    """The size the client declared in MAIL FROM (``SIZE=``), if any."""
    value = envelope.mail_args.get("SIZE") or envelope.mail_args.get("size")
    try:
        return int(value) if value else None
    except ValueError:
        return None


class ClamavCheck(ScannerCheck):
    """Virus scanning with clamd (INSTREAM, streamed as the message arrives)."""

    name: ClassVar[str] = "clamav"
    section: ClassVar[str] = "clamav"
    description: ClassVar[str] = "Virus scanning with ClamAV's clamd"
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol(VIRUS, 5.0, "clamd found a virus (detail: its name); [clamav] action is forced whatever the score"),
        Symbol(SKIPPED, 0.0, "Message larger than [clamav] max_size: not scanned whole for viruses (its first max_size bytes were, and a virus there is CLAMAV_VIRUS)"),
        Symbol(ERROR, 0.0, "clamd unreachable, too slow or in error: not scanned ([clamav] on_error = tempfail answers 451)"),
    )
    order: ClassVar[int] = 200

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.options: "ClamavSection" = services.config.clamav
        self.client = ClamdClient(self.options.address, timeout=self.options.timeout)
        self.scanned_by = f"ClamAV using milterd at {services.config.hostname}"

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        state = envelope.check_state(self.name)["scan"] = ScanState()
        declared = declared_size(envelope)
        if declared is not None and declared > self.options.max_size:
            state.deferred = True
            return ()
        try:
            state.stream = self.client.instream()
            state.stream.send(envelope.header_bytes)
        except ScannerError as exc:
            self._fail(state, str(exc))
        return ()

    def on_body(self, session: Session, envelope: Envelope, chunk: bytes) -> Hits:
        state: ScanState | None = envelope.check_state(self.name).get("scan")
        if state is None or state.stream is None or state.partial:
            return ()
        if state.stream.sent + len(chunk) > self.options.max_size:
            # Not scanned whole, but its first max_size bytes are: a virus padded past the limit is still found.
            state.skipped, state.partial = f"size over {self.options.max_size}", True
            chunk = chunk[: max(self.options.max_size - state.stream.sent, 0)]
            if not chunk:
                return ()
        try:
            state.stream.send(chunk)
        except ScannerError as exc:
            if _size_limit(str(exc)):
                # max_size above clamd's StreamMaxLength: a retry would fail the same way.
                log.warning("clamav: %s; lower [clamav] max_size to clamd's StreamMaxLength", exc)
                state.skipped, state.stream = "over clamd's StreamMaxLength", None
            else:
                self._fail(state, str(exc))
                state.timed_out = isinstance(exc, ScannerTimeout)
        return ()

    def on_skipped(self, session: Session, envelope: Envelope) -> None:
        if self.options.headers:
            # Not scanned for this client (scan_trusted off): a forged "X-Virus-Status: Clean" must not claim otherwise.
            envelope.edits.extend(removal_edits(envelope))

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        try:
            hits = self._verdict(envelope)
        except Exception:
            if self.options.headers:  # our own failure (on_check_error may accept the message): no forged "Clean" stays
                envelope.edits.extend(removal_edits(envelope))
            raise
        if self.options.headers and any(h.symbol in (SKIPPED, ERROR) for h in hits):
            envelope.edits.extend(removal_edits(envelope))  # not scanned: no header of ours replaces a forged one
        return hits

    def _verdict(self, envelope: Envelope) -> list[Hit]:
        state: ScanState | None = envelope.check_state(self.name).get("scan")
        if state is None:  # end of headers was not seen (should not happen)
            return [error_hit("no scan was started", self.options.on_error)]
        if state.deferred:
            return self._scan_spooled(envelope)
        if state.partial:
            # Past max_size: the stream's verdict on the first max_size bytes, or, the stream lost on its last
            # chunk, those bytes sent again from the spool.
            stream, state.stream = state.stream, None
            if stream is not None:
                return self._start_hits(envelope, state.skipped, stream.finish, streamed=True)
            if not state.error:
                return [Hit(SKIPPED, detail=state.skipped)]  # clamd's StreamMaxLength reached (logged as it was)
            if state.timed_out:
                return self._start_failed(envelope, state.skipped, state.error)  # silent: not asked again
            return self._start_hits(envelope, state.skipped, self._first_from_spool(envelope))
        if state.skipped:
            return [Hit(SKIPPED, detail=state.skipped)]
        if state.error or state.stream is None:
            return [error_hit(state.error or "no scan was started", self.options.on_error)]
        started = time.monotonic()
        try:
            result = state.stream.finish()
        except ScannerError as exc:
            return self._failed(exc)
        finally:
            state.stream = None
            ended = time.monotonic()
            log.debug("%s: clamav eom wait start=%.6f end=%.6f ms=%.1f", envelope.queue_id or "NOQUEUE", started, ended, (ended - started) * 1000)
        return self._result_hits(envelope, result)

    def _scan_spooled(self, envelope: Envelope) -> list[Hit]:
        """The whole message from the spool, for a client whose SIZE= overstated it (RFC 1870: an estimate)."""
        size = envelope.size
        if size > self.options.max_size:
            return self._start_hits(envelope, f"size {size} > {self.options.max_size}", self._first_from_spool(envelope))
        try:
            result = self.client.scan(envelope.message_chunks())
        except ScannerError as exc:
            return self._failed(exc)
        except SpoolError:
            raise  # the spool unreadable: this machine's failure, answered 451 by the pipeline (never on_error)
        except Exception as exc:  # noqa: BLE001 - clamd's client failing otherwise: unscanned follows on_error
            log.exception("clamav: scan failed")
            return [error_hit(f"scan failed: {exc!r}", self.options.on_error)]
        return self._result_hits(envelope, result)

    def _start_hits(self, envelope: Envelope, skipped: str, scan: Callable[[], ClamdResult], streamed: bool = False) -> list[Hit]:
        """The hits of a message over max_size whose first max_size bytes *scan* has clamd judge: a virus found
        there as any other; clean, CLAMAV_SKIPPED_SIZE (*skipped* says why).  When clamd could not judge them
        (it is down, it answered an error), ``on_error`` decides, as for a message under max_size; with
        *streamed* (the stream left idle since max_size, which clamd may have closed) they are first sent again
        from the spool, unless clamd was silent (asked again, it would be as long)."""
        try:
            result = scan()
        except SpoolError:
            raise
        except Exception as exc:  # noqa: BLE001 - ScannerError, clamd's client failing otherwise: unscanned follows on_error
            if streamed and not isinstance(exc, ScannerTimeout) and not _size_limit(str(exc)):
                return self._start_hits(envelope, skipped, self._first_from_spool(envelope))
            reason = str(exc) if isinstance(exc, ScannerError) else f"scan failed: {exc!r}"
            return self._start_failed(envelope, skipped, reason)
        if result.infected:
            return self._result_hits(envelope, result)
        if result.status != "OK":
            if streamed and not _size_limit(result.reply):  # over StreamMaxLength again from the spool: not resent
                return self._start_hits(envelope, skipped, self._first_from_spool(envelope))
            return self._start_failed(envelope, skipped, f"clamd: {_printable(result.reply)}")
        return [Hit(SKIPPED, detail=f"{skipped}; its first {self.options.max_size} bytes scanned: clean")]

    def _first_from_spool(self, envelope: Envelope) -> Callable[[], ClamdResult]:
        return lambda: self.client.scan(_first(envelope.message_chunks(), self.options.max_size))

    def _start_failed(self, envelope: Envelope, skipped: str, reason: str) -> list[Hit]:
        """The first max_size bytes of a message over max_size not judged for *reason*."""
        log.info("%s: clamav: the first %d bytes of a message over max_size not scanned: %s", envelope.queue_id or "NOQUEUE", self.options.max_size, reason)
        if _size_limit(reason):  # max_size above clamd's StreamMaxLength: logged at the stream's start too
            return [Hit(SKIPPED, detail=f"{skipped}; over clamd's StreamMaxLength")]
        return [error_hit(f"{skipped}; its first {self.options.max_size} bytes not scanned: {reason}"[:200], self.options.on_error)]

    def _failed(self, exc: ScannerError) -> list[Hit]:
        if _size_limit(str(exc)):
            return [Hit(SKIPPED, detail="over clamd's StreamMaxLength")]
        return [error_hit(str(exc), self.options.on_error)]

    def on_abort(self, session: Session, envelope: Envelope) -> None:
        state: ScanState | None = envelope.check_state(self.name).pop("scan", None)
        if state is not None and state.stream is not None:
            state.stream.close()
            state.stream = None

    def _result_hits(self, envelope: Envelope, result: ClamdResult) -> list[Hit]:
        if result.infected:
            if self.options.headers and self.options.action == "quarantine":
                envelope.edits.extend(status_edits(envelope, self.scanned_by, f"Infected ({_printable(result.virus)})"))
            return [virus_hit(result.virus, self.options.action)]
        if result.status == "ERROR":
            if _size_limit(result.reply):
                return [Hit(SKIPPED, detail="over clamd's StreamMaxLength")]
            return [error_hit(f"clamd: {result.reply}", self.options.on_error)]
        if self.options.headers:
            envelope.edits.extend(status_edits(envelope, self.scanned_by, "Clean"))
        return []

    def _fail(self, state: ScanState, reason: str) -> None:
        log.warning("clamav: %s", reason)
        state.error = reason
        if state.stream is not None:
            state.stream.close()
            state.stream = None


def _size_limit(reply: str) -> bool:
    """Whether clamd's *reply* (or the error quoting it) says the stream went past its StreamMaxLength."""
    return "size limit exceeded" in reply


def _first(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The first *size* bytes of *chunks*."""
    for chunk in chunks:
        if size <= 0:
            return
        yield chunk[:size]
        size -= len(chunk)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


CHECKS = (ClamavCheck,)
