"""The HTTP server of ``[metrics] listen``: prometheus_client's, bounded.

prometheus_client's ``start_http_server`` starts a thread per connection and
never times one out: idle connections to the port (any local user can open
them) were held for ever, a thread and a descriptor each, until the
supervisor had no descriptor left to start a worker with.  Here a client has
:data:`TIMEOUT` seconds for each read and write and :data:`DEADLINE` for its
whole connection (one byte every few seconds held a slot for ever), at most
:data:`MAX_CONNECTIONS` are served at once (the next ones are closed at once),
and a client that times out or goes away is not a traceback in the log.
"""

from __future__ import annotations

import socket
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

#: Seconds a metrics client may take for each read and write (a scrape takes milliseconds).
TIMEOUT = 5.0
#: Seconds a metrics connection may last in all: past it, it is shut down whatever it is doing.
DEADLINE = 10.0
#: Connections served at once; more are closed unanswered.
MAX_CONNECTIONS = 16


class _QuietServerHandler(ServerHandler):
    """wsgiref's response writer, but a client that stopped reading (a write past TIMEOUT), went away or was cut at
    DEADLINE is not a traceback in the log (wsgiref spares only resets and broken pipes)."""

    def log_exception(self, exc_info: Any) -> None:
        """Print the traceback of an error, as wsgiref does, unless it is the connection's."""
        if not isinstance(exc_info[1], OSError):
            super().log_exception(exc_info)


class _Handler(WSGIRequestHandler):
    """A request with a socket timeout and a deadline, logged nowhere (a scrape every 15 s would fill the log)."""

    timeout = TIMEOUT

    def setup(self) -> None:
        """Start the connection's deadline: it is shut down then, which ends any read or write it waits in."""
        super().setup()
        self._deadline = threading.Timer(DEADLINE, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def finish(self) -> None:
        """Stop the deadline's timer with the connection."""
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:  # the client went away, or the deadline shut the connection
            pass

    def handle(self) -> None:
        """The stdlib's (Python 3.11), with :class:`_QuietServerHandler` writing the response."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error reply was sent
            return
        handler = _QuietServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=False)  # type: ignore[arg-type]
        handler.request_handler = self  # type: ignore[attr-defined] # wsgiref's back-pointer for its log line
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Log nothing."""


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS of them."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, or close it when MAX_CONNECTIONS are served."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out, went away or was cut at its deadline is no error of milterd's (the stdlib printed
        a traceback to stderr, the log, for each); anything else is printed as the stdlib does."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread: its slot is given back when it ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(host: str, port: int, app: Callable[..., Any]) -> WSGIServer:
    """Serve the WSGI *app* on *host*:*port* (IPv4 or IPv6, as the address is) in a daemon thread; the server."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class: type[_Server] = type("_FamilyServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(str(address[0]), port, app, server_class, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
