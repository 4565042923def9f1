"""Socket addresses as milter.conf spells them: one parser for every HOST:PORT and unix:/path,
and one way to connect to either.

Each setting keeps its own spelling (the milter socket is libmilter's, the
scanners' is ``tcp:``/``unix:``, the release target and the nameservers may
leave the port out), but the host and port are read here, the same way:
``HOST:PORT``, ``[IPv6]:PORT``, and where a default port applies, ``HOST``,
``[IPv6]`` or a bare IPv6 address.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

#: The longest path a unix socket can be bound at on Linux (sockaddr_un's sun_path, 108 bytes with its NUL).
UNIX_PATH_MAX = 107


def unix_path_too_long(path: str) -> str:
    """Why a unix socket cannot be bound at *path* for its length (libmilter says only "cannot opensocket"), or ''."""
    size = len(os.fsencode(path))
    return f"{path} is {size} bytes long: a unix socket's path holds at most {UNIX_PATH_MAX}" if size > UNIX_PATH_MAX else ""


def parse_port(text: str) -> int:
    """A TCP port, 1 to 65535; ValueError otherwise."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port (1-65535)")
    return int(text)


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port); ValueError otherwise.

    With *default_port*, the port may be left out: ``HOST``, ``[IPv6]`` or a
    bare IPv6 address (more than one colon, no brackets) get it.  Without
    it the port is the text after the last colon, so ``::1:25`` is host
    ``::1``, port 25.  The host may be empty (``:25``): callers decide what
    that means.
    """
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        port = rest[1:]
        if not rest and default_port is None:
            raise ValueError(f"{text!r} has no port")
    elif default_port is None:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not HOST:PORT")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not port and default_port is not None:
        return host, default_port
    return host, parse_port(port)


def parse_listen(listen: str) -> tuple[str, int]:
    """A TCP listening address: ``"127.0.0.1:9899"``, ``"[::1]:9899"`` or ``":9899"`` (loopback) → (host, port); ValueError otherwise."""
    try:
        host, port = split_host_port(listen)
    except ValueError:
        raise ValueError(f"{listen!r} is not HOST:PORT") from None
    return host or "127.0.0.1", port


def unix_path(text: str) -> str:
    """The path of ``unix:/path`` (Sendmail's ``local:/path`` too): it must be absolute; ValueError otherwise."""
    kind, _, path = text.partition(":")
    if kind not in ("unix", "local") or not path.startswith("/"):
        raise ValueError(f"{text!r}: expected unix:/absolute/path")
    return path


@dataclass(frozen=True)
class SocketSpec:
    """A milter socket address, in libmilter's spelling and as parsed."""

    libmilter: str
    family: str  # "inet", "inet6" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""


def parse_socket(spec: str) -> SocketSpec:
    """Parse Postfix's ``inet:HOST:PORT``/``unix:/path`` or Sendmail's ``inet:PORT@HOST``."""
    kind, _, rest = spec.partition(":")
    try:
        if kind in ("unix", "local"):
            path = unix_path(spec)
            return SocketSpec(f"unix:{path}", "unix", path=path)
        if kind in ("inet", "inet6") and rest:
            if "@" in rest:
                port_text, _, host = rest.partition("@")
                port = parse_port(port_text)
            else:
                host, port = split_host_port(rest)
            host = host or ("::" if kind == "inet6" else "0.0.0.0")
            family = "inet6" if kind == "inet6" or ":" in host else "inet"
            return SocketSpec(f"{family}:{port}@{host}", family, host=host, port=port)
    except ValueError:
        pass
    raise ValueError(f"{spec!r} is not a milter socket: use inet:HOST:PORT, inet:PORT@HOST or unix:/path")


def connect(host: str = "", port: int = 0, path: str = "", timeout: float = 30.0, nodelay: bool = False) -> socket.socket:
    """A stream socket connected to the unix socket *path*, or else to *host*:*port* over TCP,
    whose every operation times out after *timeout* seconds; OSError (TimeoutError) when it cannot.

    *nodelay* sets TCP_NODELAY, for protocols that write a request in small
    pieces and then wait (Nagle plus a delayed ACK would stall them 40 ms).
    """
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    return sock
