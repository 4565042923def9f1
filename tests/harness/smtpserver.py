"""A scripted SMTP server on 127.0.0.1 for tests of milterd's SMTP client (re-injection):
the listener, the accept loop and stopping; a subclass answers each session in :meth:`session`."""

from __future__ import annotations

import socket
import threading


class ScriptedServer:
    """Accepts connections on 127.0.0.1 in a thread, one at a time, and hands each to :meth:`session`."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "ScriptedServer":
        """Start accepting (in a thread)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the listener."""
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(10)
                try:
                    self.session(connection)
                except OSError:
                    pass

    def session(self, connection: socket.socket) -> None:
        """Answer one SMTP session on *connection* (the subclass's script)."""
        raise NotImplementedError
