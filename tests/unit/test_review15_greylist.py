"""Fifteenth session's review of greylisting and the URI lists: a DNSWL-listed client found at MAIL
(the default delay_reject) skips greylisting, a sender whitelist entry with a plus tag matches, and
DBL's 127.0.1.255 ("IP queries prohibited") is a refusal, not a listing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import milterd
from milterd import greylist as gl
from milterd.checks.uribl import classify, parse_uri_zone
from milterd.config import Config
from milterd.dns import Answer, Resolver
from milterd.message.model import Action, Session
from milterd.message.pipeline import Pipeline
from milterd.services import build


@pytest.fixture()
def pipeline_with_dnswl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A pipeline factory whose resolver lists 192.0.2.10 in list.dnswl.org (127.0.10.3: DNSWL_ORG_HI) and nothing else."""
    listed = {("10.2.0.192.list.dnswl.org", "A"): ("127.0.10.3",)}

    def resolve_many(self: Resolver, keys: list[tuple[str, str]], deadline: float) -> list[Answer]:
        return [Answer(n, t, "ok", listed[(n, t)], ttl=60) if (n, t) in listed else Answer(n, t, "nxdomain", ttl=60) for n, t in keys]

    monkeypatch.setattr(Resolver, "_resolve_many", resolve_many)
    made: list[tuple[Pipeline, Any]] = []

    def make(delay_reject: bool) -> Pipeline:
        settings = {
            "milter.hostname": "mx.test", "milter.delay_reject": delay_reject, "database.url": f"sqlite:///{tmp_path / 'log.sqlite'}",
            "rules.dir": "", "dns.nameservers": ["127.0.0.1:9"], "greylist.enabled": True, "greylist.whitelist_providers": False,
        }
        services = build(Config().with_changes(settings))
        services.store.ensure_schema(True)
        made.append((Pipeline(services), services))
        return made[-1][0]

    yield make
    for pipeline, services in made:
        pipeline.shutdown()
        services.close()


@pytest.mark.parametrize("delay_reject", [True, False])
def test_a_dnswl_listed_client_is_not_greylisted(pipeline_with_dnswl: Any, delay_reject: bool) -> None:
    pipeline = pipeline_with_dnswl(delay_reject)
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
    pipeline.connect(session)
    pipeline.helo(session)
    envelope = pipeline.new_envelope(session)
    envelope.sender = "alice@example.org"
    assert pipeline.mail(session, envelope) is None
    decision = pipeline.rcpt(session, envelope, "bob@example.com")
    assert "DNSWL_ORG_HI" in [h.symbol for h in session.hits + envelope.hits]
    assert decision is None or decision.action != Action.GREYLIST, decision


def test_a_listed_client_elsewhere_is_still_greylisted(pipeline_with_dnswl: Any) -> None:
    pipeline = pipeline_with_dnswl(True)
    session = Session(client_addr="192.0.2.11", client_name="mail.example.org", helo="mail.example.org", family="inet")
    pipeline.connect(session)
    pipeline.helo(session)
    envelope = pipeline.new_envelope(session)
    envelope.sender = "alice@example.org"
    pipeline.mail(session, envelope)
    decision = pipeline.rcpt(session, envelope, "bob@example.com")
    assert decision is not None and decision.action == Action.GREYLIST


def test_a_sender_whitelist_entry_with_a_tag_matches_the_normalised_sender() -> None:
    whitelist = gl.Whitelist.build([("sender", "Bounces+List@example.org"), ("sender", "prvs=1234abcd=alerts@bank.example")])
    assert whitelist.sender(gl.normalise_sender("bounces+list-42@example.org")) == "bounces+list@example.org"
    assert whitelist.sender(gl.normalise_sender("prvs=99999999=alerts@bank.example")) == "prvs=1234abcd=alerts@bank.example"
    assert whitelist.sender(gl.normalise_sender("other@example.org")) is None


def test_dbl_ip_queries_prohibited_is_a_refusal_not_a_listing() -> None:
    rules = Path(milterd.__file__).parent / "defaults" / "rules" / "uribl.toml"
    entries = tomllib.loads(rules.read_text())["uribl"]
    dbl = next(parse_uri_zone(rules, i, e) for i, e in enumerate(entries) if e["name"] == "DBL")
    assert classify(dbl, "evil.example", Answer("x", "A", "ok", ("127.0.1.255",))) == "refused"
    listed = classify(dbl, "evil.example", Answer("x", "A", "ok", ("127.0.1.2",)))
    assert listed is not None and not isinstance(listed, str) and "URIBL_DBL_SPAM" in dict(listed.symbols)
