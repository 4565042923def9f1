"""A small spamd client: SYMBOLS / REPORT / CHECK, PING and TELL over SPAMC/1.5.

Why not aiospamc: see :mod:`milterd.scanners`.  The protocol (SpamAssassin's
``spamd/PROTOCOL``) is HTTP-like::

    SYMBOLS SPAMC/1.5\\r\\n
    Content-length: 1234\\r\\n
    User: bob\\r\\n                       (optional: per-user preferences)
    \\r\\n
    <the message>

    SPAMD/1.1 0 EX_OK\\r\\n
    Content-length: 27\\r\\n
    Spam: True ; 1000.0 / 5.0\\r\\n
    \\r\\n
    GTUBE,NO_RECEIVED,NO_RELAYS

A non-zero code after ``SPAMD/1.x`` is an error (sysexits.h) and ends the
answer.  The message is sent from an iterable of chunks, so a spooled message
is never read into memory whole.

Learning (``milterd quarantine release --ham`` calls it)::

    SpamdClient("tcp:127.0.0.1:783").tell(raw_message, "ham")   # True if learned

needs spamd started with ``--allow-tell``.
"""

from __future__ import annotations

import math
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Iterable, Literal

from . import Address, ScannerError, connect, parse_address

_RESPONSE_LIMIT = 1024 * 1024
# Numbers as spamd writes them ("%.1f"): anything else is garbled, never a score.
_SPAM_HEADER = re.compile(r"^\s*(True|False|Yes|No)\s*;\s*(-?[0-9]+(?:\.[0-9]+)?)\s*/\s*(-?[0-9]+(?:\.[0-9]+)?)\s*$", re.IGNORECASE)
_CODE = re.compile(r"^-?[0-9]+$")
_RULE = re.compile(r"^[A-Za-z0-9_]+$")
_REPORT_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s")


@dataclass(frozen=True)
class SpamdResult:
    """spamd's verdict: the score, its own threshold and the rules that hit."""

    spam: bool
    score: float
    required: float
    rules: tuple[str, ...] = ()
    report: str = ""


@dataclass(frozen=True)
class SpamdResponse:
    """One parsed spamd answer."""

    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def parse_response(data: bytes) -> SpamdResponse:
    """Split a raw spamd answer into status, headers (lower-case names) and body; ScannerError if garbled."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/") or not _CODE.match(status[1]):
        raise ScannerError(f"spamd: unexpected answer {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    code = int(status[1])
    if code == 0:
        # libspamc's sanity check: an answer cut short (its rules list, the end of its Spam: line) is no verdict.
        length = headers.get("content-length")
        if not sep:
            raise ScannerError("spamd: answer cut short before the end of its headers")
        if length is not None:
            # A line end past the length is let be (the SYMBOLS answer of protocols before 1.3 ends with one).
            claimed = int(length) if length.isdigit() else -1
            if claimed < 0 or len(body) < claimed or body[claimed:] not in (b"", b"\r\n", b"\n"):
                raise ScannerError(f"spamd: answer cut short or garbled: {length[:20]!r} bytes claimed, {len(body)} seen")
            body = body[:claimed]
    return SpamdResponse(code, status[2].strip() if len(status) > 2 else "", headers, body)


def parse_result(response: SpamdResponse, command: str = "SYMBOLS") -> SpamdResult:
    """The verdict of a CHECK/SYMBOLS/REPORT answer; ScannerError without a usable ``Spam:`` header."""
    match = _SPAM_HEADER.match(response.headers.get("spam", ""))
    if not match:
        raise ScannerError(f"spamd: no usable Spam: header in the answer ({response.headers.get('spam', 'none')!r})")
    spam = match.group(1).lower() in ("true", "yes")
    score, required = float(match.group(2)), float(match.group(3))
    if not (math.isfinite(score) and math.isfinite(required)):
        # Hundreds of digits overflow to ±inf: -inf would whitelist anything, and inf - inf is nan.
        raise ScannerError(f"spamd: score out of range in the Spam: header ({response.headers.get('spam', '')[:80]!r})")
    text = response.body.decode("utf-8", "replace")
    if command == "SYMBOLS":
        rules = tuple(r for r in (p.strip() for p in text.replace("\r", "").replace("\n", "").split(",")) if _RULE.match(r))
        return SpamdResult(spam, score, required, rules)
    if command.startswith("REPORT"):
        return SpamdResult(spam, score, required, report_rules(text), text)
    return SpamdResult(spam, score, required)


def report_rules(report: str) -> tuple[str, ...]:
    """The rule names of a REPORT's table (`` pts rule name  description`` lines)."""
    rules: list[str] = []
    in_table = False
    for line in report.splitlines():
        if line.startswith("----"):
            in_table = True
            continue
        if in_table:
            match = _REPORT_LINE.match(line)
            if match and match.group(2) not in rules:
                rules.append(match.group(2))
    return tuple(rules)


class SpamdClient:
    """spamd at one address; each call opens its own connection (thread-safe)."""

    def __init__(self, address: str | Address, timeout: float = 60.0, user: str = "") -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.timeout = timeout
        self.user = user

    def ping(self) -> bool:
        """True when spamd answers PONG."""
        data = self._exchange([b"PING SPAMC/1.5\r\n\r\n"])
        return data.startswith(b"SPAMD/") and b"PONG" in data.split(b"\n", 1)[0]

    def check(self, message: bytes | Iterable[bytes], length: int | None = None, user: str | None = None, command: Literal["SYMBOLS", "REPORT", "CHECK"] = "SYMBOLS") -> SpamdResult:
        """Score *message* (bytes, or chunks whose total is *length*); ScannerError on any failure."""
        chunks, length = _chunks(message, length)
        head = self._head(command, length, user)
        response = parse_response(self._exchange([head, *chunks] if isinstance(chunks, list) else _prepend(head, chunks)))
        if response.code != 0:
            raise ScannerError(f"spamd {self.address}: error {response.code} {response.message}")
        return parse_result(response, command)

    def tell(self, message: bytes, message_class: Literal["ham", "spam"] = "ham", user: str | None = None) -> bool:
        """Teach spamd's Bayes that *message* is ``ham`` or ``spam`` (TELL, ``Set: local``).

        Returns True when spamd learned it (``DidSet: local``), False when it
        already knew the message as such.  Raises :class:`ScannerError` when
        spamd is unreachable or refuses (it must run with ``--allow-tell``).
        """
        if message_class not in ("ham", "spam"):
            raise ValueError(f"message_class must be 'ham' or 'spam', not {message_class!r}")
        head = self._head("TELL", len(message), user, extra=f"Message-class: {message_class}\r\nSet: local\r\n")
        response = parse_response(self._exchange([head, message]))
        if response.code != 0:
            raise ScannerError(f"spamd {self.address}: TELL refused: {response.code} {response.message}")
        return "local" in response.headers.get("didset", "")

    def _head(self, command: str, length: int, user: str | None, extra: str = "") -> bytes:
        user = self.user if user is None else user
        lines = f"{command} SPAMC/1.5\r\nContent-length: {length}\r\n{extra}"
        if user:
            lines += f"User: {_header_safe(user)}\r\n"
        # A recipient Postfix passed in bytes that are not UTF-8 was decoded with surrogateescape: send those bytes.
        return (lines + "\r\n").encode("utf-8", "surrogateescape")

    def _exchange(self, pieces: Iterable[bytes]) -> bytes:
        """Send the request, half-close, read the answer to EOF: all within the timeout."""
        deadline = time.monotonic() + self.timeout
        with connect(self.address, self.timeout) as sock:
            try:
                for piece in pieces:
                    if piece:
                        # One timeout per sendall would let a spamd that reads slowly hold the worker that many times over.
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError
                        sock.settimeout(remaining)
                        sock.sendall(piece)
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            except TimeoutError:
                raise ScannerError(f"spamd {self.address}: sending timed out after {self.timeout:g}s") from None
            except OSError as exc:
                # spamd may refuse early and close: its answer may still be readable.
                data = self._drain(sock, deadline, quiet=True)
                if data:
                    return data
                raise ScannerError(f"spamd {self.address}: {exc.strerror or exc}") from None
            return self._drain(sock, deadline)

    def _drain(self, sock: socket.socket, deadline: float, quiet: bool = False) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if quiet:
                    return b""
                raise ScannerError(f"spamd {self.address}: no answer within {self.timeout:g}s")
            sock.settimeout(remaining)
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                if quiet:
                    return b""
                raise ScannerError(f"spamd {self.address}: no answer within {self.timeout:g}s") from None
            except OSError as exc:
                if quiet:
                    return b""
                raise ScannerError(f"spamd {self.address}: connection lost: {exc.strerror or exc}") from None
            if not piece:
                break
            parts.append(piece)
            total += len(piece)
            if total > _RESPONSE_LIMIT:
                raise ScannerError(f"spamd {self.address}: answer too long")
        data = b"".join(parts)
        if not data and not quiet:
            raise ScannerError(f"spamd {self.address}: closed the connection without answering")
        return data


def _chunks(message: bytes | Iterable[bytes], length: int | None) -> tuple[list[bytes] | Iterable[bytes], int]:
    if isinstance(message, (bytes, bytearray, memoryview)):
        return [bytes(message)], len(message)
    if length is None:
        parts = [bytes(p) for p in message]
        return parts, sum(len(p) for p in parts)
    return message, length


def _prepend(head: bytes, chunks: Iterable[bytes]) -> Iterable[bytes]:
    yield head
    yield from chunks


def _header_safe(value: str) -> str:
    return value.replace("\r", "").replace("\n", "").strip()
