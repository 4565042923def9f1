"""Greylisting review: envelope addresses that are not UTF-8, and the CLI's filters."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import insert

from milterd import greylist as gl
from milterd.cli import main
from milterd.config import Config, GreylistSection, load_config
from milterd.store import Store, schema, utcnow


def _raw(data: bytes) -> str:
    """An envelope address as the adapter hands it over (libmilter's bytes, surrogateescape)."""
    return data.decode("utf-8", "surrogateescape")


@pytest.fixture
def check(tmp_path: Path) -> Iterator[Any]:
    from milterd.checks.greylist import Greylist
    from milterd.services import build

    services = build(Config().with_changes({
        "database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "greylist.enabled": True,
        "greylist.whitelist_providers": False, "greylist.auto_whitelist_after": 0,
    }))
    services.store.upgrade()
    [found] = [c for c in services.checks if isinstance(c, Greylist)]
    yield found
    services.close()


def test_triplet_of_undecodable_bytes_is_storable() -> None:
    triplet = gl.make_triplet("192.0.2.1", _raw(b"Sp\xe9m@Evil.example"), _raw(b"caf\xe9@example.com"), GreylistSection())
    assert triplet.sender == "sp\\udce9m@evil.example" and triplet.recipient == "caf\\udce9@example.com"
    for text in (triplet.network, triplet.sender, triplet.recipient):
        text.encode("utf-8")  # strict: what SQLite and PostgreSQL's drivers do
    assert gl.make_triplet("192.0.2.1", "a\x00b@x.example", "jos\u00e9@example.com", GreylistSection()) == gl.Triplet(
        "192.0.2.0/24", "a\\0b@x.example", "jos\u00e9@example.com"  # valid UTF-8 (SMTPUTF8) is kept as it is
    )


def test_8bit_sender_is_greylisted_not_waved_through(check: Any) -> None:
    # Postfix accepts MAIL FROM with 8-bit bytes without SMTPUTF8; before, the store's
    # driver raised UnicodeEncodeError (not a StoreError): the check crashed and the
    # pipeline accepted the recipient as CHECK_ERROR, i.e. greylisting was bypassed.
    from milterd.message.model import Action, Envelope, Session, Spool

    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender=_raw(b"sp\xe9m@evil.example"))
    [hit] = check.on_rcpt(session, envelope, "bob@example.com")
    assert hit.symbol == "GREYLIST" and hit.action == Action.GREYLIST
    assert list(check.on_data(session, envelope)) == []
    [row] = check.services.store.greylist.list_triplets()
    assert row["sender"] == "sp\\udce9m@evil.example"
    retry = Envelope(spool=Spool(1024), sender=_raw(b"sp\xe9m@evil.example"))
    [again] = check.on_rcpt(session, retry, "bob@example.com")
    assert again.symbol == "GREYLIST" and "early" in again.detail  # the same triplet at the retry


def test_8bit_recipient_does_not_lose_the_other_recipients_attempts(check: Any) -> None:
    # Before, the one bad recipient made the message's single write transaction raise:
    # bob's attempt was never stored, so bob was greylisted as new at every retry.
    from milterd.message.model import Envelope, Session, Spool

    session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="alice@example.org")
    [first] = check.on_rcpt(session, envelope, "bob@example.com")
    [second] = check.on_rcpt(session, envelope, _raw(b"caf\xe9@example.com"))
    assert first.symbol == second.symbol == "GREYLIST"
    check.on_abort(session, envelope)
    assert sorted(r["recipient"] for r in check.services.store.greylist.list_triplets()) == ["bob@example.com", "caf\\udce9@example.com"]


# --- the CLI ------------------------------------------------------------------------
def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def conf(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "milter.conf"
    path.write_text(f'[milter]\nhostname = "mx.test"\n[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n')
    store = Store(load_config(path).database)
    store.upgrade()
    now = utcnow()
    rows = [
        {"network": "192.0.2.0/24", "sender": "alice@example.org", "recipient": "bob@example.com", "first_seen": now, "last_seen": now,
         "expires_at": now + dt.timedelta(days=1)},
        {"network": "192.0.2.0/24", "sender": "alice@example.org", "recipient": "carol@example.com", "first_seen": now, "last_seen": now,
         "expires_at": now + dt.timedelta(days=1)},
        {"network": "2001:db8:1:2::/64", "sender": "", "recipient": "dave@example.com", "first_seen": now, "last_seen": now,
         "expires_at": now + dt.timedelta(days=1)},
    ]
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist), rows)
    store.close()
    yield path


def _remaining(path: Path) -> int:
    store = Store(load_config(path).database)
    try:
        return len(store.greylist.list_triplets(limit=None))
    finally:
        store.close()


def test_purge_triplet_with_an_empty_recipient_deletes_nothing(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "delete this one triplet": an empty recipient (an unset shell variable) used
    # to drop the recipient filter and delete every triplet of the sender.
    status, _out, err = run(capsys, "greylist", "purge", "--triplet", "192.0.2.0/24", "alice@example.org", "", "-c", str(conf))
    assert status == 2 and "recipient" in err
    assert _remaining(conf) == 3
    status, _out, _err = run(capsys, "greylist", "purge", "--triplet", "", "", "dave@example.com", "-c", str(conf))
    assert status == 2 and _remaining(conf) == 3


def test_cli_filters_take_an_address_and_a_raw_sender(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The log shows the client's address and the sender as sent; the triplets hold
    # the network and the normalised sender.  Before, these matched nothing.
    status, out, _err = run(capsys, "greylist", "list", "--client", "192.0.2.77", "--sender", "prvs=0123abcd=Alice+news@Example.ORG", "-c", str(conf))
    assert status == 0 and "bob@example.com" in out and "carol@example.com" in out
    status, out, _err = run(capsys, "greylist", "list", "--client", "2001:DB8:1:2:0::/64", "-c", str(conf))
    assert status == 0 and "dave@example.com" in out
    status, out, _err = run(capsys, "greylist", "purge", "--triplet", "192.0.2.9", "Alice@example.org", "<bob@example.com>", "-c", str(conf))
    assert status == 0 and "deleted 1 triplet" in out
    assert _remaining(conf) == 2


def test_list_refuses_a_negative_limit(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SQLite reads LIMIT -1 as "no limit", PostgreSQL refuses it: refused here on both.
    with pytest.raises(SystemExit) as info:
        main(["greylist", "list", "--limit", "-1", "-c", str(conf)])
    assert info.value.code == 2
    assert "negative" in capsys.readouterr().err
