"""An authenticated client is DKIM-signed only for the From addresses its login owns, where a sender login
map says whose they are (review, thirty-third session): alice, who owns alice@signed.test, sent
``From: CEO <ceo@signed.test>`` (and a customer's domain) and got a valid signature, a DMARC pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd import dkimsign
from milterd.checks.dkim import DkimSigner
from milterd.config import load_config
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.services import build as build_services

from .test_dkim_review import rsa_key

__all__ = ["rsa_key"]  # the fixture

LOGINS = '[checks.local_domains]\nsender_logins = { "alice@signed.test" = ["alice"], "@customer.test" = ["cust"] }\n'


def signer(tmp_path: Path, key: bytes, logins: str) -> Iterator[Any]:
    tmp_path.mkdir()
    dkimsign.write_private(tmp_path / "out.key", key)
    conf = tmp_path / "milter.conf"
    conf.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "m.sqlite"}"\n'
        '[dkim_signing]\nenabled = true\nkeys = [{ domain = "signed.test", selector = "sel", key_file = "out.key" },'
        ' { domain = "customer.test", selector = "sel", key_file = "out.key" }]\n' + logins
    )
    services = build_services(load_config(conf))
    yield DkimSigner(services)
    services.close()


@pytest.fixture()
def with_map(tmp_path: Path, rsa_key: bytes) -> Iterator[Any]:
    yield from signer(tmp_path / "with", rsa_key, LOGINS)


@pytest.fixture()
def without_map(tmp_path: Path, rsa_key: bytes) -> Iterator[Any]:
    yield from signer(tmp_path / "without", rsa_key, "")


def sign(check: Any, from_: str, session: Session) -> Verdict:
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers += [("From", f" {from_}".encode()), ("To", b" bob@example.com"), ("Subject", b" hi")]
    envelope.spool.write(b"hello\r\n")
    result: Verdict = check.on_verdict(session, envelope, Verdict(Action.ACCEPT, 0.0, {}, {}, ""))
    return result


@pytest.mark.parametrize("from_", ["CEO <ceo@signed.test>", "Boss <boss@customer.test>", "Alice <alice@signed.test>, ceo@signed.test"])
def test_a_login_is_not_signed_for_a_from_it_does_not_own(with_map: Any, from_: str) -> None:
    verdict = sign(with_map, from_, Session(auth_user="alice"))
    assert "DKIM_SIGNED" not in verdict.symbols
    assert verdict.details["DKIM_SIGN_ERROR"].startswith("not signed: From <") and "not owned by login alice" in verdict.details["DKIM_SIGN_ERROR"]


def test_a_login_is_signed_for_its_own_from(with_map: Any) -> None:
    assert "DKIM_SIGNED" in sign(with_map, "Alice <ALICE@signed.test>", Session(auth_user="Alice")).symbols
    assert "DKIM_SIGNED" in sign(with_map, "Boss <boss@customer.test>", Session(auth_user="cust")).symbols


def test_without_a_map_or_for_a_trusted_network_it_is_signed_as_before(with_map: Any, without_map: Any) -> None:
    assert "DKIM_SIGNED" in sign(without_map, "CEO <ceo@signed.test>", Session(auth_user="alice")).symbols
    assert "DKIM_SIGNED" in sign(with_map, "CEO <ceo@signed.test>", Session(client_addr="127.0.0.1", trusted=True)).symbols


def test_a_quoted_local_part_is_the_address_it_quotes(with_map: Any) -> None:
    """A second look: "alice"@signed.test is alice@signed.test (Postfix looks up the unquoted form)."""
    assert "DKIM_SIGNED" in sign(with_map, 'Alice <"alice"@signed.test>', Session(auth_user="alice")).symbols
