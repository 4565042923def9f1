"""Small, blocking clients for the content scanners milterd talks to: clamd and spamd.

Both are our own rather than PyPI's:

* python-clamd (``clamd`` on PyPI) had its last release in 2014, imports
  ``pkg_resources`` (deprecated, slow to import, gone from recent setuptools),
  wants the whole message in one buffer for INSTREAM, sets no socket timeout by
  default and breaks on clamd's ``INSTREAM size limit exceeded`` reply (clamd
  closes the socket while the client is still writing).  milterd needs the
  opposite: a stream opened at end of headers, fed one body chunk at a time as
  Postfix passes them, and a bounded wait on every socket operation.
* aiospamc is maintained, but asyncio-only: milterd's workers serve each SMTP
  connection in a libmilter thread, so every call would need an event loop of
  its own (or a loop thread and cross-thread futures), it takes the message as
  one ``bytes`` and pulls in dependencies (typer, loguru, certifi) for a
  protocol of a dozen lines.  A synchronous client streams the spooled
  message from disk and bounds the whole exchange by the timeout.

An address is ``tcp:HOST:PORT`` (``tcp:[::1]:PORT`` for IPv6) or ``unix:/path``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .. import endpoints
from ..endpoints import split_host_port, unix_path


class ScannerError(Exception):
    """The scanner cannot be reached, timed out, or answered something unusable."""


class ScannerTimeout(ScannerError):
    """The scanner did not take or answer in time: asking it again at once would wait as long."""


@dataclass(frozen=True)
class Address:
    """Where a scanner listens: a TCP host and port, or a unix socket path."""

    family: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.family == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``"tcp:127.0.0.1:3310"`` or ``"unix:/run/clamav/clamd.ctl"`` → :class:`Address`; ValueError otherwise."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ValueError(f"{text!r} is not tcp:HOST:PORT or unix:/path")
    if kind == "unix":
        try:
            return Address("unix", path=unix_path(text))
        except ValueError:
            raise ValueError(f"{text!r}: a unix socket needs an absolute path") from None
    if kind != "tcp":
        raise ValueError(f"{text!r}: the address must start with tcp: or unix:")
    try:
        host, port = split_host_port(rest)
    except ValueError:
        host = ""
    if not host:
        raise ValueError(f"{text!r} is not tcp:HOST:PORT")
    try:
        host.encode("idna")  # what getaddrinfo does to a name: refused here, not at every message
    except UnicodeError as exc:
        reason = exc.__cause__ or exc  # "label empty or too long", wrapped by the codec machinery
        raise ValueError(f"{text!r}: {host!r} is not a valid host name: {reason}") from None
    return Address("tcp", host=host, port=port)


def connect(address: Address, timeout: float) -> socket.socket:
    """A connected socket to *address* whose every operation times out after *timeout* seconds.

    TCP_NODELAY is set: the scanners' protocols write a request in several
    small pieces and then wait, the pattern Nagle plus a delayed ACK stalls
    for 40 ms.
    """
    try:
        return endpoints.connect(address.host, address.port, address.path if address.family == "unix" else "", timeout, nodelay=True)
    except TimeoutError:
        raise ScannerTimeout(f"{address}: connect timed out after {timeout:g}s") from None
    except UnicodeError:  # a host name the idna codec refuses (one parse_address did not check)
        raise ScannerError(f"{address}: cannot connect: not a valid host name") from None
    except OSError as exc:
        raise ScannerError(f"{address}: cannot connect: {exc.strerror or exc}") from None
