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
first ``max_size`` bytes from there.  A stream clamd refuses for its size (its
``StreamMaxLength`` under ``max_size``) has the longest start clamd takes found
by bisection and scanned from the spool, and each worker remembers what clamd
took and refused (:data:`STREAM_LIMITS`): a message under clamd's
``StreamMaxLength`` is still streamed whole, a longer one cut where clamd took.  clamd
unreachable, slower than ``timeout`` or answering an error gives
``CLAMAV_ERROR``, with a 451 when ``on_error = "tempfail"``.  A virus gives
``CLAMAV_VIRUS`` (detail: its name) and forces ``[clamav] action``.
"""

from __future__ import annotations

import logging
import threading
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
    #: clamd refused the stream for its size (StreamMaxLength): the bytes offered it by then (more than it took).
    refused: int | None = None
    #: The longest message streamed whole: max_size, or one byte under the shortest stream clamd refused.
    limit: int = 0
    #: Where a message over :attr:`limit` is cut: max_size, or the longest stream clamd took after refusing one.
    cut: int = 0
    opened: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class StreamLimit:
    """What one clamd showed of its StreamMaxLength: it lies in [accepted, refused)."""

    #: The longest stream it took whole (0: none yet).
    accepted: int
    #: The shortest stream it refused for its size.
    refused: int


class StreamLimits:
    """clamd's StreamMaxLength (under ``[clamav] max_size``) as this process saw it, per clamd address.

    Only sizes clamd itself took or refused are kept (a refused stream's size is the bytes offered it, which it
    cannot have read more of): a message shorter than the shortest refused is streamed whole, so one under
    clamd's real StreamMaxLength is never cut; a longer one, certainly over it, is cut at the longest taken."""

    def __init__(self) -> None:
        self._limits: dict[str, StreamLimit] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> StreamLimit | None:
        """What is known of clamd at *address*, if it ever refused a stream for its size."""
        with self._lock:
            return self._limits.get(address)

    def learn(self, address: str, accepted: int, refused: int) -> bool:
        """Narrow what is known by a stream of *accepted* bytes clamd took (0: none) and one of *refused* it
        refused; whether it is the first refusal known for *address*."""
        with self._lock:
            old = self._limits.get(address)
            if old is not None and accepted < old.refused and old.accepted < refused:
                accepted, refused = max(accepted, old.accepted), min(refused, old.refused)
            # else clamd's StreamMaxLength changed (a reload): what this message showed replaces the old
            self._limits[address] = StreamLimit(accepted, refused)
            return old is None

    def clear(self) -> None:
        """Forget every size (tests)."""
        with self._lock:
            self._limits.clear()


STREAM_LIMITS = StreamLimits()

#: The most streams a refused message is scanned again with: a bisection from 64 MiB down to a 64 KiB chunk,
#: and the start known taken asked again once.
MAX_RESCANS = 12
#: The shortest start of a message clamd must take for it to count as scanned (CLAMAV_SKIPPED_SIZE; a quarter of
#: max_size where that is less): a clamd whose StreamMaxLength is under it (one byte, a misconfiguration) judges
#: nothing, and that is clamd failing (on_error).
MIN_SCANNED_START = 64 * 1024


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
        Symbol(SKIPPED, 0.0, "Message larger than [clamav] max_size or clamd's StreamMaxLength: not scanned whole for viruses (its first bytes up to that size were, and a virus there is CLAMAV_VIRUS)"),
        Symbol(ERROR, 0.0, "clamd unreachable, too slow or in error: not scanned ([clamav] on_error = tempfail answers 451)"),
    )
    order: ClassVar[int] = 200

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.options: "ClamavSection" = services.config.clamav
        self.client = ClamdClient(self.options.address, timeout=self.options.timeout)
        self.scanned_by = f"ClamAV using milterd at {services.config.hostname}"

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        limit, cut = self._stream_limits()
        state = envelope.check_state(self.name)["scan"] = ScanState(limit=limit, cut=cut)
        declared = declared_size(envelope)
        if declared is not None and declared > state.limit:
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
        stream = state.stream
        if stream.sent + len(chunk) > state.limit:
            # Not scanned whole, but its first max_size bytes are (or, over clamd's StreamMaxLength, those it takes,
            # more if already sent): a virus padded past the limit is still found.
            state.skipped, state.partial = self._over(max(state.cut, stream.sent)), True
            chunk = chunk[: max(state.cut - stream.sent, 0)]
            if not chunk:
                return ()
        try:
            stream.send(chunk)
        except ScannerError as exc:
            if _size_limit(str(exc)):
                # max_size above clamd's StreamMaxLength: the start it takes is found at end of message.
                state.refused, state.stream = stream.offered, None
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
        if state.refused is not None:
            return self._refused_hits(envelope, state.refused)
        if state.deferred:
            return self._scan_spooled(envelope, state)
        if state.partial:
            # Past max_size: the stream's verdict on the first max_size bytes, or, the stream lost on its last
            # chunk, those bytes sent again from the spool.
            stream, state.stream = state.stream, None
            if stream is not None:
                return self._start_hits(envelope, state.skipped, stream.sent, stream.finish, streamed=True, refused=stream.offered)
            if state.timed_out:
                return self._start_failed(envelope, state.skipped, state.cut, state.error)  # silent: not asked again
            return self._start_hits(envelope, state.skipped, state.cut, self._first_from_spool(envelope, state.cut))
        if state.error or state.stream is None:
            return [error_hit(state.error or "no scan was started", self.options.on_error)]
        stream, state.stream = state.stream, None
        started = time.monotonic()
        try:
            result = stream.finish()
        except ScannerError as exc:
            if _size_limit(str(exc)):
                return self._refused_hits(envelope, stream.offered)
            return self._failed(exc)
        finally:
            ended = time.monotonic()
            log.debug("%s: clamav eom wait start=%.6f end=%.6f ms=%.1f", envelope.queue_id or "NOQUEUE", started, ended, (ended - started) * 1000)
        if _size_limit(result.reply):
            return self._refused_hits(envelope, stream.offered)
        return self._result_hits(envelope, result)

    def _scan_spooled(self, envelope: Envelope, state: ScanState) -> list[Hit]:
        """The whole message from the spool, for a client whose SIZE= overstated it (RFC 1870: an estimate)."""
        size = envelope.size
        if size > state.limit:
            skipped = f"size {size} > {state.limit}" if state.limit >= self.options.max_size else self._over(state.cut)
            return self._start_hits(envelope, skipped, state.cut, self._first_from_spool(envelope, state.cut))
        try:
            result = self.client.scan(envelope.message_chunks())
        except ScannerError as exc:
            if _size_limit(str(exc)):
                return self._refused_hits(envelope, size)
            return self._failed(exc)
        except SpoolError:
            raise  # the spool unreadable: this machine's failure, answered 451 by the pipeline (never on_error)
        except Exception as exc:  # noqa: BLE001 - clamd's client failing otherwise: unscanned follows on_error
            log.exception("clamav: scan failed")
            return [error_hit(f"scan failed: {exc!r}", self.options.on_error)]
        if _size_limit(result.reply):
            return self._refused_hits(envelope, size)
        return self._result_hits(envelope, result)

    def _start_hits(self, envelope: Envelope, skipped: str, size: int, scan: Callable[[], ClamdResult],
                    streamed: bool = False, refused: int | None = None) -> list[Hit]:
        """The hits of a message over *size* (max_size, or a lower StreamMaxLength learned) whose first *size*
        bytes *scan* has clamd judge: a virus found there as any other; clean, CLAMAV_SKIPPED_SIZE (*skipped*
        says why).  When clamd could not judge them (it is down, it answered an error), ``on_error`` decides, as
        for a message under max_size; with
        *streamed* (the stream left idle since max_size, which clamd may have closed) they are first sent again
        from the spool, unless clamd was silent (asked again, it would be as long).  Refused for clamd's
        StreamMaxLength (the stream's when *refused* says how many bytes it was offered), the longest start it
        takes is judged instead (:meth:`_refused_hits`)."""
        try:
            result = scan()
        except SpoolError:
            raise
        except Exception as exc:  # noqa: BLE001 - ScannerError, clamd's client failing otherwise: unscanned follows on_error
            if _size_limit(str(exc)):
                return self._refused_hits(envelope, size if refused is None else refused)
            if streamed and not isinstance(exc, ScannerTimeout):
                return self._start_hits(envelope, skipped, size, self._first_from_spool(envelope, size))
            return self._start_failed(envelope, skipped, size, _reason(exc))
        if _size_limit(result.reply):
            return self._refused_hits(envelope, size if refused is None else refused)
        if streamed and result.status == "ERROR":
            return self._start_hits(envelope, skipped, size, self._first_from_spool(envelope, size))
        return self._start_result(envelope, skipped, size, result)

    def _refused_hits(self, envelope: Envelope, refused: int) -> list[Hit]:
        """The hits of a message whose stream of *refused* bytes clamd refused for its size (its StreamMaxLength
        under max_size): the longest start it takes, to within one chunk, is judged from the spool.

        Where clamd stopped reading cannot be told from here: it refuses the chunk that would go past its limit
        as it reads the length, but the socket buffers have taken more by then (megabytes on loopback), so the
        refusal shows late.  Guessing (the bytes before the last chunk, then halving when refused again) cut
        the message, and every later one, anywhere down to half the limit, so a virus under clamd's own limit
        was missed.  Only what clamd answered is trusted: a bisection between the longest start known taken
        (this worker's, or 0) and the shortest refused, one fresh stream per step (each with the scanner's
        timeout, at most :data:`MAX_RESCANS`), ending on a virus, a failure or one chunk apart.  Both ends are
        kept (:data:`STREAM_LIMITS`): a later message under the shortest refused is streamed whole, and in the
        usual case (the learned sizes one chunk apart) a longer one costs one stream, or, refused, one more
        scan.  Without that memory every oversize message would pay the whole bisection."""
        address = str(self.client.address)
        known = STREAM_LIMITS.get(address)
        low = known.accepted if known is not None and known.accepted < refused else 0  # taken (0: nothing known)
        high = refused  # refused
        step = self.client.chunk_size
        judged: tuple[int, ClamdResult] | None = None  # the longest start taken in this message, its verdict
        # One deadline for the whole bisection: each stream has the scanner's timeout, and twelve of a slow clamd
        # held end of message for minutes, past Postfix's milter_content_timeout.
        deadline = time.monotonic() + self.options.timeout
        least = self._min_start()
        for _ in range(MAX_RESCANS):
            # Within a chunk is close enough, unless what was taken is too little to count while clamd may take enough.
            if judged is not None and (judged[1].infected or (high - low <= step and not low < least < high)):
                break
            if time.monotonic() >= deadline:
                break
            # The start known taken is asked again only when the bisection is done without a verdict of its own.
            size = low if judged is None and low > 0 and high - low <= step else (low + high) // 2
            if size <= 0:
                break
            try:
                result = self._first_from_spool(envelope, size)()
            except SpoolError:
                raise
            except Exception as exc:  # noqa: BLE001 - as in _start_hits
                if not _size_limit(str(exc)):
                    return self._start_failed(envelope, self._over(size), size, _reason(exc))
            else:
                if not _size_limit(result.reply):
                    if result.status == "ERROR":
                        return self._start_failed(envelope, self._over(size), size, f"clamd: {_printable(result.reply)}")
                    judged, low = (size, result), size
                    continue
            high = size
            if size == low:
                low = 0  # the start this worker knew taken is refused: clamd's StreamMaxLength went down
        self._learn(0 if judged is None else judged[0], high)
        if judged is None:
            return [error_hit(f"over clamd's StreamMaxLength (it refused {high} bytes); no start of it taken", self.options.on_error)]
        if judged[0] < least and not judged[1].infected:
            return self._start_failed(envelope, self._over(judged[0]), judged[0],
                                      f"clamd took only {judged[0]} bytes of a stream (its StreamMaxLength): too few to judge by")
        return self._start_result(envelope, self._over(judged[0]), judged[0], judged[1])

    def _start_result(self, envelope: Envelope, skipped: str, size: int, result: ClamdResult) -> list[Hit]:
        """clamd's *result* on the first *size* bytes of a message over *size* (see :meth:`_start_hits`)."""
        if result.infected:
            return self._result_hits(envelope, result)
        if result.status != "OK":
            return self._start_failed(envelope, skipped, size, f"clamd: {_printable(result.reply)}")
        return [Hit(SKIPPED, detail=f"{skipped}; its first {size} bytes scanned: clean")]

    def _first_from_spool(self, envelope: Envelope, size: int) -> Callable[[], ClamdResult]:
        return lambda: self.client.scan(_first(envelope.message_chunks(), size))

    def _start_failed(self, envelope: Envelope, skipped: str, size: int, reason: str) -> list[Hit]:
        """The first *size* bytes of a message over *size* not judged for *reason*."""
        log.info("%s: clamav: the first %d bytes of a message over max_size not scanned: %s", envelope.queue_id or "NOQUEUE", size, reason)
        return [error_hit(f"{skipped}; its first {size} bytes not scanned: {reason}"[:200], self.options.on_error)]

    def _failed(self, exc: ScannerError) -> list[Hit]:
        return [error_hit(str(exc), self.options.on_error)]

    def _stream_limits(self) -> tuple[int, int]:
        """The longest message streamed whole and where a longer one is cut: max_size, unless clamd refused a
        stream under it (StreamMaxLength): then any shorter message is still sent whole (it may be taken), and a
        message as long, which clamd cannot take whole, is cut at the longest stream it took if that is within a
        chunk of it (a bisection ended early, on a virus, took less: it is cut there, refused, and bisected on)."""
        known = STREAM_LIMITS.get(str(self.client.address))
        if known is None or known.refused > self.options.max_size or known.accepted < self._min_start():
            # Nothing learned, or too little taken to count as scanned: streamed, refused, bisected, on_error.
            return self.options.max_size, self.options.max_size
        whole = known.refused - 1
        return whole, known.accepted if known.refused - known.accepted <= self.client.chunk_size else whole

    def _min_start(self) -> int:
        """:data:`MIN_SCANNED_START`, or a quarter of max_size where that is less."""
        return min(MIN_SCANNED_START, self.options.max_size // 4)

    def _over(self, size: int) -> str:
        """Why a message over *size* was not scanned whole."""
        return f"size over {size}" if size >= self.options.max_size else f"size over {size} (clamd's StreamMaxLength)"

    def _learn(self, accepted: int, refused: int) -> None:
        """Keep a stream of *accepted* bytes clamd took (0: none) and one of *refused* it refused for its size."""
        if STREAM_LIMITS.learn(str(self.client.address), accepted, refused):
            log.warning("clamav: clamd %s refused a stream of %d bytes for its size (StreamMaxLength) and took %d: longer messages are "
                        "cut there instead of at [clamav] max_size %d; lower max_size to clamd's StreamMaxLength",
                        self.client.address, refused, accepted, self.options.max_size)

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


def _reason(exc: Exception) -> str:
    """Why a scan failed, for the log and CLAMAV_ERROR's detail."""
    return str(exc) if isinstance(exc, ScannerError) else f"scan failed: {exc!r}"


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
