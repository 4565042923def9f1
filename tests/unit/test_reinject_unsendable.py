"""An address a release cannot send (non-ASCII to a server without SMTPUTF8, undecodable bytes) is refused alone:
smtplib raised UnicodeEncodeError at its RCPT, and the release of every recipient failed with a codec error.
The server is aiosmtpd in a thread."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from milterd import reinject
from tests.harness.postfix import free_port

RAW = b"From: a@example.org\r\nSubject: lunch\r\n\r\nSee you at noon.\r\n"
NO_SMTPUTF8 = "not sent: the address is not ASCII, and the server does not offer SMTPUTF8"
NOT_UTF8 = "not sent: the address holds bytes that are not UTF-8"


class Recorder:
    def __init__(self) -> None:
        self.queued: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.queued.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 Ok: queued"


@pytest.fixture(params=[False, True], ids=["plain", "smtputf8"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, Recorder, bool]]:
    from aiosmtpd.controller import Controller  # a test dependency, imported where a server is started (as Sink does)

    handler, port = Recorder(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=request.param)
    controller.start()
    yield port, handler, request.param
    controller.stop()


def test_fix_each_unsendable_recipient_is_refused_alone(server: tuple[int, Recorder, bool]) -> None:
    port, handler, utf8 = server
    recipients = ["bob@example.com", "j\u00f6rg@example.de", "b\udcffd@example.com"]
    delivered, refused = reinject.send(reinject.parse_target(f"127.0.0.1:{port}"), "a@example.org", recipients, [RAW], "mx.test")
    sent = ["bob@example.com", "j\u00f6rg@example.de"] if utf8 else ["bob@example.com"]
    assert sorted(delivered) == sorted(sent)
    assert refused == {"b\udcffd@example.com": NOT_UTF8, **({} if utf8 else {"j\u00f6rg@example.de": NO_SMTPUTF8})}
    assert handler.queued == [("a@example.org", sent)]


def test_fix_an_unsendable_sender_refuses_every_recipient(server: tuple[int, Recorder, bool]) -> None:
    port, handler, utf8 = server
    sender = "j\u00f6rg@example.de" if not utf8 else "b\udcffd@example.com"
    delivered, refused = reinject.send(reinject.parse_target(f"127.0.0.1:{port}"), sender, ["bob@example.com"], [RAW], "mx.test")
    why = (NOT_UTF8 if utf8 else NO_SMTPUTF8).replace("the address", "the sender's address")  # not bob's: his is ASCII
    assert delivered == {} and refused == {"bob@example.com": why}
    assert handler.queued == []


def test_fix_release_gives_no_retry_advice_for_what_only_fails_again(server: tuple[int, Recorder, bool], capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from milterd.commands import quarantine as command
    from milterd.quarantine import ReleaseReport

    port, _, utf8 = server
    if utf8:
        pytest.skip("the non-ASCII recipient is sent")

    class Releasing:  # stands in for Quarantine: its release() is the real send's outcome
        config = argparse.Namespace(hostname="mx.test", path="/etc/milterd/milter.conf")

        def release(self, row_id: int, **kwargs: Any) -> ReleaseReport:
            recipients = ["bob@example.com", "j\u00f6rg@example.de"]
            delivered, refused = reinject.send(reinject.parse_target(f"127.0.0.1:{port}"), "a@example.org", recipients, [RAW], "mx.test")
            return ReleaseReport(row_id, delivered=delivered, refused=refused)

    args = argparse.Namespace(ids=[7], to=None, force=False, by="admin", ham=False, smtp=False)
    assert command.run_release(args, Releasing()) == 1  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert f"7: <j\u00f6rg@example.de>: NOT released: {NO_SMTPUTF8}" in err
    # The advice was "release 7 --force --to j\u00f6rg@example.de", which can only be refused the same way again.
    assert "--force" not in err and "7: partly released; the other recipients cannot be sent it through this server (above)" in err
