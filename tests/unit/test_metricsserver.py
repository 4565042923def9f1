"""The metrics HTTP server (milterd/metricsserver.py): idle and slow clients are cut, quietly, and bounded."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterator

import pytest

from milterd import metricsserver


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(metricsserver._Handler, "timeout", 0.3)
    monkeypatch.setattr(metricsserver, "DEADLINE", 1.0, raising=False)
    server = metricsserver.serve("127.0.0.1", 0, _app)
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(100) == b""
    except ConnectionResetError:
        return True


def test_an_idle_client_is_cut_without_a_traceback(port: int, capfd: pytest.CaptureFixture[str]) -> None:
    # Was: the stdlib printed "Exception occurred during processing of request" and a traceback for each, to the log.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
        assert _closed(idle)
    time.sleep(0.2)  # the server's thread ends after the client saw the close
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_sending_a_byte_at_a_time_is_cut_at_the_deadline(port: int) -> None:
    # Was: each byte came within the read timeout, and 16 such clients kept every scrape out for as long as they liked.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        request = b"GET /metrics HTTP/1.0\r\nX-Padding: " + b"a" * 1000
        for position in range(len(request)):
            try:
                slow.sendall(request[position:position + 1])
            except OSError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the connection was never cut")
        assert _closed(slow)


def test_a_scrape_is_answered(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.0 200 OK")


def test_a_client_that_stops_reading_is_cut_without_a_traceback(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    # wsgiref spares only resets and broken pipes: a write past the timeout printed its traceback to the log.
    monkeypatch.setattr(metricsserver._Handler, "timeout", 0.3)
    monkeypatch.setattr(metricsserver, "DEADLINE", 5.0)
    written: list[bool] = []

    def big(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        written.append(True)
        return [b"x" * 16_000_000]

    server = metricsserver.serve("127.0.0.1", 0, big)
    try:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            client.connect(("127.0.0.1", int(server.server_address[1])))
            client.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            deadline = time.monotonic() + 30
            while not written and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)  # past the write timeout (0.3 s), the client still not reading
        time.sleep(0.5)
    finally:
        server.shutdown()
        server.server_close()
    assert written and "Traceback" not in capfd.readouterr().err
