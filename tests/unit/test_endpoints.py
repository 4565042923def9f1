"""The one socket-address parser and the settings built on it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from milterd.dns import parse_nameserver
from milterd.endpoints import connect, parse_listen, parse_port, parse_socket, split_host_port, unix_path
from milterd.reinject import Target, parse_target
from milterd.scanners import Address, parse_address


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("127.0.0.1:25", None, ("127.0.0.1", 25)),
        ("mx.example.org:2525", None, ("mx.example.org", 2525)),
        ("[::1]:25", None, ("::1", 25)),
        ("::1:25", None, ("::1", 25)),  # no default port: the port is after the last colon
        (":9899", None, ("", 9899)),
        ("relay.example.org", 25, ("relay.example.org", 25)),
        ("relay.example.org:587", 25, ("relay.example.org", 587)),
        ("[2001:db8::1]", 53, ("2001:db8::1", 53)),
        ("[2001:db8::1]:5300", 53, ("2001:db8::1", 5300)),
        ("2001:db8::1", 53, ("2001:db8::1", 53)),  # bare IPv6 with a default port: all of it is the host
    ],
)
def test_split_host_port(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_host_port(text, default) == expected


@pytest.mark.parametrize(("text", "default"), [("127.0.0.1", None), ("host:0", None), ("host:65536", None), ("host:http", None), ("[::1", None), ("[::1]x", 25), ("[::1]", None), ("host:", None)])
def test_split_host_port_refuses(text: str, default: int | None) -> None:
    with pytest.raises(ValueError):
        split_host_port(text, default)


def test_port_and_unix_path() -> None:
    assert parse_port("1") == 1 and parse_port("65535") == 65535
    for bad in ("0", "65536", "-1", "", "8o"):
        with pytest.raises(ValueError):
            parse_port(bad)
    assert unix_path("unix:/run/milterd.sock") == "/run/milterd.sock"
    assert unix_path("local:/run/milterd.sock") == "/run/milterd.sock"
    for bad in ("unix:run/milterd.sock", "unix:", "inet:/x", "/run/milterd.sock"):
        with pytest.raises(ValueError):
            unix_path(bad)


@pytest.mark.parametrize(
    ("spec", "libmilter", "family", "host", "port"),
    [
        ("inet:127.0.0.1:8895", "inet:8895@127.0.0.1", "inet", "127.0.0.1", 8895),
        ("inet:8895@127.0.0.1", "inet:8895@127.0.0.1", "inet", "127.0.0.1", 8895),
        ("inet::8895", "inet:8895@0.0.0.0", "inet", "0.0.0.0", 8895),
        ("inet6:8895@::1", "inet6:8895@::1", "inet6", "::1", 8895),
        ("inet6::8895", "inet6:8895@::", "inet6", "::", 8895),
        ("inet:[::1]:8895", "inet6:8895@::1", "inet6", "::1", 8895),
        ("local:/run/m.sock", "unix:/run/m.sock", "unix", "", 0),
    ],
)
def test_parse_socket(spec: str, libmilter: str, family: str, host: str, port: int) -> None:
    parsed = parse_socket(spec)
    assert (parsed.libmilter, parsed.family, parsed.host, parsed.port) == (libmilter, family, host, port)


@pytest.mark.parametrize("spec", ["inet:127.0.0.1", "inet:x@127.0.0.1", "inet:0@127.0.0.1", "inet:[::1:8895", "inet:", "unix:", "tcp:1.2.3.4:25"])
def test_parse_socket_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="is not a milter socket"):
        parse_socket(spec)


def test_the_settings_share_the_parser() -> None:
    """Each setting keeps its spelling and its message; the host and port are read the same way."""
    assert parse_listen(":9899") == ("127.0.0.1", 9899)
    assert parse_listen("[::1]:9899") == ("::1", 9899)
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_listen("[::1")
    assert parse_address("tcp:[::1]:3310") == Address("tcp", host="::1", port=3310)
    with pytest.raises(ValueError, match="is not tcp:HOST:PORT"):
        parse_address("tcp:[::1:3310")  # read as host "[::1" before the one parser
    assert parse_target("inet:[::1]") == Target(host="::1", port=25)
    assert parse_target("2001:db8::25") == Target(host="2001:db8::25", port=25)
    with pytest.raises(ValueError, match="expected unix:/path or HOST:PORT"):
        parse_target("relay:99999")
    assert parse_nameserver(" [::1] ") == ("::1", 53)
    with pytest.raises(ValueError):
        parse_nameserver("127.0.0.1:0")


def test_connect_over_unix_and_tcp_and_refused(tmp_path: Path) -> None:
    """One way to connect, used by the scanner clients and the re-injection client."""
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as unix_server, socket.create_server(("127.0.0.1", 0)) as tcp_server:
        unix_server.bind(path)
        unix_server.listen(1)
        with connect(path=path, timeout=2) as sock:
            assert sock.family == socket.AF_UNIX and sock.gettimeout() == 2
        with connect("127.0.0.1", tcp_server.getsockname()[1], timeout=3, nodelay=True) as sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) and sock.gettimeout() == 3
        port = tcp_server.getsockname()[1]
    with pytest.raises(OSError):
        connect("127.0.0.1", port, timeout=2)
    with pytest.raises(OSError):
        connect(path=str(tmp_path / "none.sock"), timeout=2)
