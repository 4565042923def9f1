"""Review findings: the database password in log lines and error messages
(milterd/text.py redact, milterd/logs.py SafeFormatter), and the metrics port
the workers inherited from the supervisor (milterd/metrics.py after_fork_in_worker)."""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import prometheus_client
import pytest

from milterd import dns, metrics, metricsserver
from milterd import store as store_module
from milterd.cli import main
from milterd.config import DatabaseSection
from milterd.logs import SafeFormatter
from milterd.store import Store, StoreError
from milterd.text import redact

PASSWORD = "p\u00e4ss-w\u00f6rd"  # non-ASCII: the review's case
URL = f"postgresql+psycopg://milterd:{quote(PASSWORD, safe='')}@db.example.org:5432/milterd"
#: What a driver may say: the password as given to it (decoded) and URL-quoted.
DRIVER_ERROR = f'connection failed: password "{PASSWORD}" rejected (url milterd:{quote(PASSWORD)}@db.example.org)'


def _line(formatter: SafeFormatter, message: str, args: tuple[Any, ...] = (), exc_info: Any = None) -> str:
    return formatter.format(logging.LogRecord("milterd", logging.ERROR, __file__, 1, message, args, exc_info))


def _hidden(text: str, password: str = PASSWORD) -> bool:
    forms = {password, quote(password), quote(password, safe=""), password.encode("ascii", "backslashreplace").decode()}
    return not any(form in text for form in forms)


def test_a_non_ascii_password_is_hidden_in_a_log_line_though_the_line_is_escaped() -> None:
    formatter = SafeFormatter("milterd[%(process)d]: %(message)s", url=URL)
    line = _line(formatter, "store down: %s", (DRIVER_ERROR,))
    assert _hidden(line), line
    assert "milterd:***@db.example.org" in line and 'password "***" rejected' in line
    # what is not the password is still escaped
    assert "caf\\xe9" in _line(formatter, "caf\u00e9 %s", (DRIVER_ERROR,))


def test_a_non_ascii_password_is_hidden_in_a_logged_traceback() -> None:
    formatter = SafeFormatter("%(message)s", url=URL)
    try:
        raise RuntimeError(DRIVER_ERROR + "\nsecond line")
    except RuntimeError:
        line = _line(formatter, "cannot log", exc_info=sys.exc_info())
    assert _hidden(line), line
    assert 'RuntimeError: connection failed: password "***" rejected' in line and "\\nsecond line" in line


def test_a_non_ascii_password_is_hidden_in_the_store_error_the_cli_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str, *args: Any) -> Any:
        raise ValueError(DRIVER_ERROR)

    monkeypatch.setattr(store_module, "make_engine", refuse)
    with pytest.raises(StoreError) as raised:
        Store(DatabaseSection(url=URL))
    message = str(raised.value)  # what serve and db print to stderr, and what the log line carries
    assert _hidden(message), message
    assert "milterd:***@db.example.org:5432/milterd" in message
    assert _hidden(_line(SafeFormatter("%(message)s", url=URL), "reload refused: %s", (raised.value,)))


def test_a_short_password_is_hidden_only_where_a_url_holds_it() -> None:
    url = "postgresql+psycopg://milterd:1@127.0.0.1:5432/milterd"
    reply = "451 4.3.0 store unavailable: connection to 127.0.0.1:5432 refused"
    assert redact(reply, url) == reply
    assert redact("cannot use postgresql://milterd:1@127.0.0.1/x", url) == "cannot use postgresql://milterd:***@127.0.0.1/x"
    assert redact(f"cannot use {url}", url) == "cannot use postgresql+psycopg://milterd:***@127.0.0.1:5432/milterd"
    formatter = SafeFormatter("%(message)s", url=url)
    assert _line(formatter, reply) == reply
    assert _line(formatter, "engine milterd:1@127.0.0.1 \u00e9") == "engine milterd:***@127.0.0.1 \\xe9"


@pytest.mark.parametrize("password", ["S3cr@t", "s3cret pass", "a/b+c%d"])
def test_an_ordinary_password_is_still_hidden_everywhere(password: str) -> None:
    url = f"postgresql://milterd:{quote(password, safe='')}@db/milterd"
    for text in (f"password {password} rejected", f"in the URL {quote(password)} and {quote(password, safe='')}", f"bare {password}"):
        out = redact(text, url)
        assert _hidden(out, password) and "***" in out, out
        assert _hidden(_line(SafeFormatter("%(message)s", url=url), text + " \u00e9"), password)


def _bound_server(server_address: tuple[str, int]) -> socketserver.TCPServer:
    return socketserver.TCPServer(server_address, socketserver.BaseRequestHandler)  # bound and listening, not serving


def test_start_keeps_the_listening_socket_of_the_metrics_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    servers: list[socketserver.TCPServer] = []

    def serve(host: str, port: int, app: Any) -> socketserver.TCPServer:
        servers.append(_bound_server((host, 0)))  # any free port: the listen address says 9999
        return servers[-1]

    monkeypatch.setattr(metricsserver, "serve", serve)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("_directory", "_metrics", "_path", "_listen_socket"):  # what start sets: put back after the test
        monkeypatch.setattr(metrics, name, None)
    try:
        metrics.start("127.0.0.1:9999")
        assert metrics._listen_socket is servers[0].socket  # noqa: SLF001
    finally:
        for metric in (metrics._metrics or {}).values():  # noqa: SLF001
            prometheus_client.REGISTRY.unregister(metric)
        dns.observe_cache(None)
        for server in servers:
            server.server_close()


def test_after_fork_in_worker_closes_the_inherited_metrics_socket_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests cannot fork: the worker's inherited copy is a duplicate of the supervisor's descriptor, as fork makes it."""
    server = _bound_server(("127.0.0.1", 0))
    try:
        supervisor_fd = server.socket.fileno()
        inherited = socket.socket(fileno=os.dup(supervisor_fd))
        worker_fd = inherited.fileno()
        monkeypatch.setattr(metrics, "_listen_socket", inherited)
        metrics.after_fork_in_worker()
        with pytest.raises(OSError):
            os.fstat(worker_fd)
        assert inherited.fileno() == -1  # detached: collecting it cannot close a file that reuses the number
        assert metrics._listen_socket is None  # noqa: SLF001
        # The supervisor's socket is untouched and still listening.
        assert server.socket.fileno() == supervisor_fd
        os.fstat(supervisor_fd)
        with socket.create_connection(server.server_address[:2], timeout=3):
            pass
        # A second call (or a child of a supervisor without metrics) closes nothing, not even a file given the same number.
        with open(os.devnull) as reused:
            metrics.after_fork_in_worker()
            os.fstat(reused.fileno())
    finally:
        server.server_close()


def test_db_upgrade_never_prints_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `schema at … (URL)` printed the whole URL, password included, after a successful upgrade.
    conf = tmp_path / "milter.conf"
    conf.write_text('[database]\nurl = "postgresql+psycopg://milterd:S3cretPassw0rd@127.0.0.1:5432/milterd"\n')
    monkeypatch.setattr(Store, "upgrade", lambda self: "abc123")
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "schema at abc123" in out and "S3cretPassw0rd" not in out and "milterd:***@" in out
