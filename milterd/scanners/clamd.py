"""A small clamd client: PING, VERSION and INSTREAM, streamed chunk by chunk.

Why not python-clamd: see :mod:`milterd.scanners`.  The protocol (clamd(8)):
a command is sent as ``zCOMMAND\\0`` and answered with a NUL-terminated line.
INSTREAM is followed by chunks, each a 4-byte big-endian length and that many
bytes, and ends with a zero length; the answer is ``stream: OK``,
``stream: NAME FOUND`` or ``… ERROR``.  A chunk must not exceed clamd's
buffer (64 KiB is safe), and a stream longer than clamd's ``StreamMaxLength``
is answered ``INSTREAM size limit exceeded. ERROR`` while clamd closes the
socket under the writer: the client reads that reply instead of failing on
the broken pipe.

Use::

    client = ClamdClient("tcp:127.0.0.1:3310", timeout=30)
    scan = client.instream()          # at end of headers
    scan.send(header_bytes)
    scan.send(chunk)                  # for each body chunk, as it arrives
    result = scan.finish()            # at end of message: ClamdResult
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Literal

from . import Address, ScannerError, ScannerTimeout, connect, parse_address

#: The largest chunk sent at once: clamd's default buffers take 64 KiB.
MAX_CHUNK = 65536
_REPLY_LIMIT = 8192


@dataclass(frozen=True)
class ClamdResult:
    """clamd's verdict on one stream."""

    status: Literal["OK", "FOUND", "ERROR"]
    virus: str = ""
    reply: str = ""

    @property
    def infected(self) -> bool:
        """True when clamd found something."""
        return self.status == "FOUND"


def parse_reply(reply: bytes | str) -> ClamdResult:
    """Parse an INSTREAM answer (``stream: OK``, ``stream: NAME FOUND``, ``… ERROR``).

    Anything else is returned as an ERROR carrying the text, so a garbled
    answer is never taken for a clean message.
    """
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    text = text.strip("\x00\r\n\t ")
    # With IDSESSION clamd prefixes "N: "; a plain stream is "stream: …".  A verdict without
    # that prefix (a bare "OK") is no INSTREAM answer: an error, never a clean message.
    match = re.fullmatch(r"(?:\d+: )?stream: (.*)", text, re.DOTALL)
    if match is None:
        return ClamdResult("ERROR", reply=text or "empty reply")
    body = match.group(1)
    if body.endswith(" FOUND"):
        name = body[: -len(" FOUND")].strip()
        return ClamdResult("FOUND", virus=name or "unknown", reply=text)
    if text.endswith("ERROR"):
        return ClamdResult("ERROR", reply=text)
    if body == "OK":
        return ClamdResult("OK", reply=text)
    return ClamdResult("ERROR", reply=text or "empty reply")


def _read_reply(sock: socket.socket, address: Address, timeout: float, deadline: float | None = None) -> bytes:
    """Read one NUL- (or newline-) terminated reply, within *timeout* in total (or by *deadline*, ``time.monotonic()``)."""
    if deadline is None:
        deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith((b"\x00", b"\n")):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ScannerTimeout(f"clamd {address}: no answer within {timeout:g}s")
        sock.settimeout(remaining)
        try:
            piece = sock.recv(1024)
        except TimeoutError:
            raise ScannerTimeout(f"clamd {address}: no answer within {timeout:g}s") from None
        except OSError as exc:
            if data:
                break
            raise ScannerError(f"clamd {address}: connection lost: {exc.strerror or exc}") from None
        if not piece:
            break
        data += piece
        if len(data) > _REPLY_LIMIT:
            raise ScannerError(f"clamd {address}: answer too long")
    if not data:
        raise ScannerError(f"clamd {address}: closed the connection without answering")
    return data


class InstreamScan:
    """One INSTREAM session: :meth:`send` data as it arrives, then :meth:`finish`.

    With a *deadline* (``time.monotonic()``) the whole session must end by
    then; without, all the :meth:`send` calls together get the timeout from
    the session's start (Postfix passes the body once it has all of it, so
    the chunks come back to back), and the :meth:`finish` the timeout again.
    Each send's own timeout held a message for chunks × timeout against a
    clamd that read slowly (400 × 30 s for 25 MB), its late verdict still
    taken as a scan.
    """

    def __init__(self, sock: socket.socket, address: Address, timeout: float, chunk_size: int, deadline: float | None = None) -> None:
        self._sock: socket.socket | None = sock
        # close() may come from two threads at once (the end-of-message timeout's cleanup and the check in the pool).
        self._lock = threading.Lock()
        self._address = address
        self._timeout = timeout
        self._chunk = chunk_size
        self._deadline = deadline
        self._send_deadline = deadline if deadline is not None else time.monotonic() + timeout
        #: Bytes sent so far.
        self.sent = 0
        #: Bytes sent so far and the chunk being sent: more than clamd read when it refused the stream for its
        #: StreamMaxLength (it refuses a chunk as it reads its length, but the socket has taken more by then, so the
        #: refusal shows on a later send, or at :meth:`finish`), so a stream this long is refused.
        self.offered = 0

    def send(self, data: bytes) -> None:
        """Send *data* as one or more chunks; ScannerError if clamd refuses or times out."""
        sock = self._require()
        view = memoryview(data)
        try:
            for start in range(0, len(view), self._chunk):
                piece = view[start : start + self._chunk]
                _arm(sock, self._send_deadline)
                self.offered = self.sent + len(piece)
                sock.sendall(struct.pack(">I", len(piece)) + piece)
                self.sent = self.offered
        except TimeoutError:
            self.close()
            raise ScannerTimeout(f"clamd {self._address}: sending timed out after {self._timeout:g}s") from None
        except OSError as exc:
            # clamd closes the socket on "INSTREAM size limit exceeded": report its words.
            reason = self._salvage_reply() or (exc.strerror or str(exc))
            self.close()
            raise ScannerError(f"clamd {self._address}: {reason}") from None

    def finish(self) -> ClamdResult:
        """End the stream and wait (at most the timeout, sending the end included) for clamd's verdict."""
        sock = self._require()
        deadline = time.monotonic() + self._timeout if self._deadline is None else self._deadline
        try:
            try:
                # The end may wait for room in a full buffer: that wait and the verdict's share one timeout.
                _arm(sock, deadline)
                sock.sendall(b"\x00\x00\x00\x00")
            except TimeoutError:
                raise ScannerTimeout(f"clamd {self._address}: sending timed out after {self._timeout:g}s") from None
            except OSError as exc:
                reason = self._salvage_reply() or (exc.strerror or str(exc))
                raise ScannerError(f"clamd {self._address}: {reason}") from None
            reply = _read_reply(sock, self._address, self._timeout, deadline)
            result = parse_reply(reply)
            if result.status == "OK" and not reply.endswith((b"\x00", b"\n")):
                # The connection closed before the terminator: "stream: OK" may be the start of more.
                raise ScannerError(f"clamd {self._address}: answer cut off by a closed connection ({result.reply!r})")
            return result
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection (clamd abandons the stream); idempotent, and safe from several threads at once."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        """Whether the session is over."""
        return self._sock is None

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ScannerError(f"clamd {self._address}: the stream is closed")
        return self._sock

    def _salvage_reply(self) -> str:
        if self._sock is None:
            return ""
        try:
            return parse_reply(_read_reply(self._sock, self._address, min(self._timeout, 1.0))).reply
        except ScannerError:
            return ""

    def __enter__(self) -> "InstreamScan":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _arm(sock: socket.socket, deadline: float) -> None:
    """Give *sock*'s next operation what is left until *deadline*; TimeoutError when nothing is."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)


class ClamdClient:
    """clamd at one address; each call opens its own connection (thread-safe)."""

    def __init__(self, address: str | Address, timeout: float = 30.0, chunk_size: int = MAX_CHUNK) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.timeout = timeout
        self.chunk_size = max(1, min(chunk_size, MAX_CHUNK))

    def ping(self) -> bool:
        """True when clamd answers PONG."""
        return self._command("PING") == "PONG"

    def version(self) -> str:
        """clamd's version line (``ClamAV 1.4.6/…``)."""
        return self._command("VERSION")

    def instream(self, deadline: float | None = None) -> InstreamScan:
        """Open an INSTREAM session (to end by *deadline*, ``time.monotonic()``, if given)."""
        sock = connect(self.address, self.timeout)
        try:
            sock.sendall(b"zINSTREAM\x00")
        except OSError as exc:
            sock.close()
            raise ScannerError(f"clamd {self.address}: {exc.strerror or exc}") from None
        return InstreamScan(sock, self.address, self.timeout, self.chunk_size, deadline)

    def scan(self, data: bytes | Iterable[bytes]) -> ClamdResult:
        """Scan a whole buffer, or an iterable of chunks, in one call: all of it within the timeout."""
        with self.instream(time.monotonic() + self.timeout) as stream:
            for piece in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                stream.send(bytes(piece))
            return stream.finish()

    def _command(self, command: str) -> str:
        with connect(self.address, self.timeout) as sock:
            try:
                sock.sendall(b"z" + command.encode("ascii") + b"\x00")
            except OSError as exc:
                raise ScannerError(f"clamd {self.address}: {exc.strerror or exc}") from None
            return _read_reply(sock, self.address, self.timeout).decode("utf-8", "replace").strip("\x00\r\n ")
