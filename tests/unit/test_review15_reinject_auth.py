"""SMTP AUTH of the re-injection client (release, digests, notices): the password goes in clear only
where nothing can strip STARTTLS on the way, over loopback or a unix socket."""

from __future__ import annotations

import smtplib
import socket
import threading
from typing import Any

import pytest

from milterd import reinject
from milterd.reinject import Target


class AuthServer:
    """A bare ESMTP server on 127.0.0.1 offering AUTH and no STARTTLS, recording what it is sent."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.lines: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as reader:
            connection.sendall(b"220 mx.example.net ESMTP\r\n")
            while line := reader.readline():
                self.lines.append(line)
                command = line.upper()
                if command.startswith(b"EHLO"):
                    connection.sendall(b"250-mx.example.net\r\n250 AUTH PLAIN LOGIN\r\n")
                elif command.startswith(b"AUTH"):
                    connection.sendall(b"235 2.7.0 ok\r\n")
                elif command.startswith(b"DATA"):
                    connection.sendall(b"354 go\r\n")
                elif line == b".\r\n" or command.startswith((b"MAIL", b"RCPT", b"RSET")):
                    connection.sendall(b"250 ok\r\n")
                elif command.startswith(b"QUIT"):
                    connection.sendall(b"221 bye\r\n")
                    break

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(("target", "local"), [
    (Target(host="127.0.0.1", port=25), True), (Target(host="::1", port=25), True), (Target(host="localhost", port=25), True),
    (Target(path="/var/spool/postfix/public/milterd-reinject"), True),
    (Target(host="192.0.2.25", port=25), False), (Target(host="mx.example.net", port=25), False),
    (Target(host="localhost.", port=25), False),  # asked of DNS, not /etc/hosts (found by review)
])
def test_what_counts_as_local(target: Target, local: bool) -> None:
    assert target.local is local


def test_no_password_in_clear_to_a_host_that_is_not_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    server = AuthServer()
    # The target names a remote host; the connection goes to the local server standing in for it.
    monkeypatch.setattr(reinject, "open_client", lambda target, helo, timeout: smtplib.SMTP("127.0.0.1", server.port, local_hostname=helo, timeout=timeout))
    try:
        with pytest.raises(smtplib.SMTPException, match="the SMTP AUTH password goes to a host off loopback only with"):
            reinject.send(Target(host="mx.example.net", port=587), "", ["bob@example.com"], [b"Subject: x\r\n\r\nhi\r\n"], "mx.test", auth=("relay", "s3cret"))
        assert not [line for line in server.lines if line.upper().startswith(b"AUTH")]
    finally:
        server.close()


def test_over_loopback_the_password_goes_as_before() -> None:
    server = AuthServer()
    try:
        delivered: Any
        delivered, refused = reinject.send(Target(host="127.0.0.1", port=server.port), "", ["bob@example.com"], [b"Subject: x\r\n\r\nhi\r\n"], "mx.test", auth=("relay", "s3cret"))
        assert list(delivered) == ["bob@example.com"] and not refused
        assert [line for line in server.lines if line.upper().startswith(b"AUTH")]
    finally:
        server.close()
