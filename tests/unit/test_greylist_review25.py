"""Greylisting, a review of the twenty-fifth session: BATV inside SRS, IPv4-mapped whitelist networks, triplets
bounded in bytes, recipients refused at RCPT never recorded, and GREYLIST_EXEMPT, not GREYLIST_PASSED, where nothing was
greylisted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator

import pytest
from sqlalchemy import func, select

from milterd import greylist as gl
from milterd.checks import Check, Hits, Symbol
from milterd.checks.greylist import Greylist
from milterd.config import Config, GreylistSection, load_config
from milterd.message.model import Action, Envelope, Hit, Reply, Session, Spool
from milterd.message.pipeline import Pipeline
from milterd.message.policy import decide
from milterd.services import Services, build
from milterd.store import schema
from milterd.tuning import logged_greylist
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config


@pytest.mark.parametrize("sender", [
    "SRS0=HHH=TT=example.org=prvs=0123abcd=alice@fwd.example",  # BATV-tagged, then forwarded with SRS
    "prvs=0123abcd=SRS0=HHH=TT=example.org=alice@fwd.example",  # forwarded, then tagged by the forwarder
    "SRS1=Xy=fwd1.example==HHH=TT=example.org=prvs=4567ef01=alice@fwd2.example",
])
def test_a_batv_tag_inside_or_around_srs_is_removed(sender: str) -> None:
    # The tag inside the SRS stayed ("prvs=0123abcd=alice@example.org"): each message of the sender was a new
    # triplet, and a whitelisted alice@example.org was greylisted.
    assert gl.normalise_sender(sender) == "alice@example.org"
    assert gl.Whitelist.build([("sender", "alice@example.org")]).sender(gl.normalise_sender(sender)) == "alice@example.org"


@pytest.mark.parametrize("entry", ["::ffff:192.0.2.0/120", "::FFFF:192.0.2.10"])
@pytest.mark.parametrize("client", ["192.0.2.10", "::ffff:192.0.2.10", "IPv6:::ffff:192.0.2.10"])
def test_an_ipv4_mapped_whitelist_network_matches_its_clients(entry: str, client: str) -> None:
    # Clients are matched in their IPv4 form; the entry stayed IPv6 and matched none of them.
    assert gl.Whitelist.build([("client", entry)]).client(client, "") == entry
    assert gl.Whitelist.build([("client", entry)]).client("192.0.3.10", "") is None


def test_a_triplet_s_addresses_are_bounded_in_utf8_bytes() -> None:
    # 512 characters of CJK text are 1,536 bytes: with both addresses so written the row passed PostgreSQL's
    # 2,704-byte limit of the triplet's unique index, every write of the message failed and the worker held
    # greylisting off for everyone.
    config = GreylistSection()
    triplet = gl.make_triplet("203.0.113.9", "\u5f32" * 600 + "@example.org", "\u8617" * 600 + "@example.com", config)
    assert len(triplet.sender.encode()) <= gl.MAX_ADDRESS_BYTES and len(triplet.recipient.encode()) <= gl.MAX_ADDRESS_BYTES
    assert triplet.sender == "\u5f32" * (gl.MAX_ADDRESS_BYTES // 3)
    assert len(triplet.network.encode()) + 2 * gl.MAX_ADDRESS_BYTES < 2704
    ascii_sender = "a" * 600 + "@example.org"
    assert gl.make_triplet("203.0.113.9", ascii_sender, "bob@example.com", config).sender == ascii_sender[:512]


class RefuseAtRcpt(Check):
    """Refuses one recipient at RCPT, as SPF does with ``fail_action = "reject"`` (before greylisting)."""

    name: ClassVar[str] = "test_refuse_rcpt"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_REFUSED", 0.0, "test"),)
    order: ClassVar[int] = 50

    def on_rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Hits:
        if recipient.startswith("refused"):
            return [Hit("TEST_REFUSED", action=Action.REJECT, reply=Reply.reject("refused"))]
        return ()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    sections = with_sections(NO_CHECKS, {
        "database": {"url": f"sqlite:///{tmp_path / 'store.sqlite'}"}, "dns": {"nameservers": ["127.0.0.1:9"]},
        "greylist": {"enabled": True, "auto_whitelist_after": 1, "whitelist_providers": False},
    })
    built = build(load_config(write_config(tmp_path / "milter.conf", sections)))
    built.store.ensure_schema(True)
    built.checks.insert(0, RefuseAtRcpt(built))
    yield built
    built.close()


def test_a_recipient_refused_at_rcpt_is_not_recorded_nor_counted_by_greylisting(services: Services) -> None:
    # Greylisting ran after the refusal: the triplet was stored, passed at the retry and counted towards the
    # network's auto-whitelisting, so a bot's refused attempts whitelisted its /24.
    pipeline = Pipeline(services)
    try:
        session = Session(client_addr="192.0.2.10", client_name="unknown", family="inet")
        pipeline.connect(session)
        envelope = pipeline.new_envelope(session)
        envelope.sender = "ceo@forged.example"
        pipeline.mail(session, envelope)
        refused = pipeline.rcpt(session, envelope, "refused@example.com")
        greylisted = pipeline.rcpt(session, envelope, "bob@example.com")
        pipeline.finish(session, envelope)
    finally:
        pipeline.shutdown()
    assert refused is not None and refused.action == Action.REJECT
    assert greylisted is not None and greylisted.action == Action.GREYLIST
    with services.store.engine.connect() as connection:
        recipients = connection.execute(select(schema.greylist.c.recipient)).scalars().all()
        assert connection.execute(select(func.count()).select_from(schema.greylist_clients)).scalar() == 0
    assert recipients == ["bob@example.com"]


def test_score_mode_logs_no_pass_where_every_recipient_is_exempt(tmp_path: Path) -> None:
    # "GREYLIST_PASSED: retried after the greylisting delay" was logged at the first attempt of mail to a
    # whitelisted recipient: whitelisted mail and passed mail could not be told apart.
    changes: dict[str, Any] = {
        "database.url": f"sqlite:///{tmp_path / 'store.sqlite'}", "greylist.enabled": True, "greylist.mode": "score",
        "greylist.whitelist_recipients": ["boss@example.com"], "greylist.whitelist_providers": False, "actions.greylist": 4.0,
    }
    services = build(Config().with_changes(changes))
    try:
        services.store.ensure_schema(True)
        check = next(c for c in services.checks if isinstance(c, Greylist))
        session = Session(client_addr="192.0.2.1", client_name="unknown", family="inet")
        envelope = Envelope(spool=Spool(1024), sender="alice@example.org", recipients=["boss@example.com"])
        status = check.on_score_greylist(session, envelope)
        assert status is not None and status.exempt and not status.needed
        verdict = decide([Hit("X", score=7.0)], services.weight, services.config.actions, greylist=status)
        assert "GREYLIST_PASSED" not in verdict.symbols and "GREYLIST" not in verdict.symbols
        assert verdict.details["GREYLIST_EXEMPT"] == "score 7, every recipient exempt from greylisting"
        # rules whatif re-derives the row as the milter decided it (it read a greylisted message without a pass).
        assert logged_greylist({"symbols": verdict.symbols, "details": verdict.details}) == status
        envelope = Envelope(spool=Spool(1024), sender="alice@example.org", recipients=["carol@example.com"])
        first = check.on_score_greylist(session, envelope)
        assert first is not None and first.needed and not first.exempt
    finally:
        services.close()
