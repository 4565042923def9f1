"""A number standing alone in the sender's local part is one triplet, as postgrey holds it.

VERP and bounce-tracking senders put a message id there (``bounce-4711-bob=example.org@list.example``):
each new message of a mailing list was a new triplet, greylisted again, until the client
network was auto-whitelisted.  Whitelists still match the address as the administrator wrote it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest

from milterd import greylist as gl
from milterd.checks.greylist import Greylist
from milterd.config import Config, GreylistSection
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services, build
from milterd.store.greylist import GreylistStore

DELAY = 300


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("bounce-4711-bob=example.org@list.example", "bounce-#-bob=example.org@list.example"),
        ("Bounce-4711-Bob=Example.org@List.Example", "bounce-#-bob=example.org@list.example"),
        ("prvs=0123abcd=news.2026.12@example.org", "news.#.#@example.org"),
        ("owner-list+M4711@example.org", "owner-list@example.org"),
        ("user123@example.org", "user123@example.org"),  # not standing alone
        ("a_42@example.org", "a_42@example.org"),
        ("42@example.org", "#@example.org"),
        ("", ""),
        ("MAILER-DAEMON", "mailer-daemon"),
        ("bounce-٤٢@example.org", "bounce-٤٢@example.org"),  # ASCII digits only
    ],
)
def test_triplet_sender(sender: str, expected: str) -> None:
    assert gl.triplet_sender(sender) == expected


def test_two_messages_of_one_verp_list_are_one_triplet() -> None:
    config = GreylistSection()
    first = gl.make_triplet("192.0.2.10", "bounce-4711-bob=example.org@list.example", "bob@example.org", config)
    second = gl.make_triplet("192.0.2.10", "bounce-4712-bob=example.org@list.example", "bob@example.org", config)
    assert first == second


@pytest.fixture
def check(tmp_path: Path) -> Iterator[Greylist]:
    changes = {
        "database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "greylist.enabled": True, "greylist.delay": DELAY,
        "greylist.whitelist_providers": False, "greylist.auto_whitelist_after": 0,
        "greylist.whitelist_senders": ["alerts-42@monitor.example"],
    }
    services: Services = build(Config().with_changes(changes))
    services.store.upgrade()
    [found] = [c for c in services.checks if isinstance(c, Greylist)]
    yield found
    services.close()


def _attempt(check: Greylist, sender: str, recipient: str = "bob@example.org") -> bool:
    """Whether the attempt was greylisted; its writes stored as at DATA."""
    session, envelope = Session(client_addr="192.0.2.10"), Envelope(spool=Spool(1024), sender=sender)
    hits = check.on_rcpt(session, envelope, recipient)
    envelope.recipients.append(recipient)
    check.on_data(session, envelope)
    return any(h.action == Action.GREYLIST for h in hits)


def test_the_next_message_of_a_verp_list_is_not_greylisted_again(check: Greylist, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _attempt(check, "bounce-4711-bob=example.org@list.example")
    real = GreylistStore.now
    monkeypatch.setattr(GreylistStore, "now", lambda self: real(self) + dt.timedelta(seconds=DELAY + 1))
    assert not _attempt(check, "bounce-4711-bob=example.org@list.example")  # the retry passes
    assert not _attempt(check, "bounce-4712-bob=example.org@list.example")  # and the list's next message


def test_a_whitelisted_address_with_a_number_is_still_whitelisted(check: Greylist) -> None:
    assert not _attempt(check, "alerts-42@monitor.example")
    assert _attempt(check, "alerts-43@monitor.example")


def test_the_cli_finds_a_triplet_by_the_sender_the_log_shows(check: Greylist) -> None:
    _attempt(check, "bounce-4711-bob=example.org@list.example")
    rows = check.services.store.greylist.list_triplets(sender=gl.triplet_sender("bounce-9-bob=example.org@list.example"), limit=None)
    assert [r["recipient"] for r in rows] == ["bob@example.org"]
