"""Review of the connect/HELO/MAIL checks: defects found and fixed, each pinned by a test.

* HELO_CLAIMS_OURS must not punish a client on one of our own addresses that gives our
  name (a local submission, a second Postfix instance or a content filter re-injecting).
* SENDER_LOGIN_MISMATCH compares the SASL login with the map's logins without regard to
  case, as Postfix's reject_sender_login_mismatch does (``strcasecmp_utf8``).
"""

from __future__ import annotations

from typing import Any

from milterd.checks.helo import Helo
from milterd.checks.localdomains import SenderLogin
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services


def _services(sections: dict[str, Any]) -> Services:
    return Services(config=Config.model_validate(sections))


def _helo_hits(helo: str, client: str, daemon_addr: str = "", our_addresses: list[str] | None = None) -> set[str]:
    services = _services({"milter": {"hostname": "mx.test"}, "checks": {"helo": {"resolve": False, "our_addresses": our_addresses or []}}})
    check = Helo(services)
    session = Session(client_addr=client, helo=helo, macros={"{daemon_addr}": daemon_addr} if daemon_addr else {})
    check.on_helo(session)
    return {hit.symbol for hit in check.on_mail(session, Envelope(spool=Spool(1024)))}


def test_our_name_from_our_own_address_is_not_a_false_claim() -> None:
    assert "HELO_CLAIMS_OURS" not in _helo_hits("mx.test", "192.0.2.25", daemon_addr="192.0.2.25")
    assert "HELO_CLAIMS_OURS" not in _helo_hits("MX.test.", "198.51.100.1", our_addresses=["198.51.100.1"])
    assert "HELO_CLAIMS_OURS" not in _helo_hits("mx.test", "::1")


def test_our_name_from_elsewhere_still_claims_ours() -> None:
    assert "HELO_CLAIMS_OURS" in _helo_hits("mx.test", "203.0.113.9", daemon_addr="192.0.2.25")
    assert "HELO_CLAIMS_OURS" in _helo_hits("[192.0.2.25]", "203.0.113.9", daemon_addr="192.0.2.25")
    assert "HELO_CLAIMS_OURS" not in _helo_hits("[192.0.2.25]", "192.0.2.25", daemon_addr="192.0.2.25")


def _login_hits(login: str, sender: str) -> list[str]:
    services = _services({"checks": {"local_domains": {"sender_logins": {"alice@example.org": ["alice"], "@example.net": ["Admin"]}}}})
    check = SenderLogin(services)
    envelope = Envelope(spool=Spool(1024))
    envelope.sender = sender
    return [hit.symbol for hit in check.on_mail(Session(auth_user=login), envelope)]


def test_sasl_login_is_matched_without_regard_to_case() -> None:
    assert _login_hits("Alice", "alice@example.org") == []
    assert _login_hits("ALICE", "Alice@Example.org") == []
    assert _login_hits("admin", "bob@example.net") == []


def test_sasl_login_of_someone_else_is_still_refused() -> None:
    assert _login_hits("mallory", "alice@example.org") == ["SENDER_LOGIN_MISMATCH", "SENDER_LOGIN_MISMATCH"]
    assert _login_hits("alic", "alice@example.org") == ["SENDER_LOGIN_MISMATCH", "SENDER_LOGIN_MISMATCH"]
