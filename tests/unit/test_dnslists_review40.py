"""Fortieth review, DNS lists of the client.

1. A ``[[dnsbl]]`` or ``[[dnswl]]`` table without ``refused`` counted Spamhaus's error answers
   (127.255.255.252/254/255: a typing error, a public resolver, too many queries) as listings:
   a list set to reject, asked through a public resolver, rejected every client (and a DNSWL
   allow-listed every one). Without the key, 127.255.255.* is refused now; ``refused = []`` keeps
   the old meaning for a list that answers in that range.
2. A listing that only scores had its TXT record (the zone's reason) asked at MAIL FROM, inside the
   stage's DNS deadline the sender's MX lookup shares: a list slow to answer TXT turned that lookup
   into MAIL_FROM_TEMPFAIL. Only a listing that rejects (whose reply quotes it) asks for TXT now.
3. Answer patterns that can never match (outside 127.0.0.0/8, where answers are not looked at;
   an octet written "02" or with a full-width digit, which the answer never is) were accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from milterd.checks.dnsbl import DnsLists, classify, parse_zone
from milterd.checks.dnslists import valid_pattern
from milterd.checks.uribl import UriBlockLists
from milterd.config import Config, ConfigError
from milterd.dns import Answer
from milterd.message.model import Action, Envelope, Session, Spool
from milterd.services import Services, build
from tests.unit.test_review16_dnsbl_private import RecordingResolver

SHIPPED_OFF = "".join(
    f'[[{kind}]]\nname = "{name}"\nenabled = false\n\n' for kind, name in (("dnsbl", "SPAMHAUS"), ("dnsbl", "SPAMCOP"), ("dnsbl", "BARRACUDA"), ("dnswl", "ORG"))
)


def zone(kind: str = "dnsbl", **entry: Any) -> Any:
    return parse_zone(kind, "rules/x.toml", 0, {"name": "MY", "zone": f"{kind[2:]}.test", **entry})


@pytest.mark.parametrize("error", ["127.255.255.252", "127.255.255.254", "127.255.255.255"])
def test_a_list_without_refused_does_not_count_the_error_answers(error: str) -> None:
    blocking = zone(action="reject")
    assert blocking.refused == ("127.255.255.*",)
    assert classify(blocking, Answer("x", "A", "ok", (error,))) == "refused"
    assert classify(zone("dnswl"), Answer("x", "A", "ok", (error,))) == "refused"
    listing = classify(blocking, Answer("x", "A", "ok", ("127.0.0.2", error)))
    assert not isinstance(listing, str) and listing is not None and listing.answers == ("127.0.0.2",)
    # A list that answers in that range says so.
    own = classify(zone(action="reject", refused=[]), Answer("x", "A", "ok", (error,)))
    assert not isinstance(own, str) and own is not None and dict(own.symbols) == {"DNSBL_MY": True}


def test_a_uri_list_without_refused_does_not_count_them_either(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "lists.toml").write_text('[[uribl]]\nname = "MINE"\nzone = "uri.test"\n')
    services = build(Config.model_validate({"rules": {"dir": str(rules)}, "dns": {"nameservers": ["127.0.0.1:9"]}}))
    [mine] = [z for z in UriBlockLists(services).zones if z.symbol == "URIBL_MINE"]
    assert mine.refused == ("127.255.255.*",)


class SlowTxtResolver(RecordingResolver):
    """Lists every client in bl.test with the answer *code*; records the names asked."""

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code

    def answer(self, name: str, rdtype: str) -> Answer:
        self.asked.append((name, rdtype))
        if rdtype == "TXT":
            return Answer(name, rdtype, "ok", ("Listed: see https://bl.test/",))
        return Answer(name, rdtype, "ok", (self.code,))


def services_for(tmp_path: Path, resolver: RecordingResolver) -> Services:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "lists.toml").write_text(
        '[[dnsbl]]\nname = "TEST"\nzone = "bl.test"\nscore = 1.0\n'
        'codes = [{ name = "SPAM", answers = ["127.0.0.2"], score = 5.0, action = "reject" }, { name = "PBL", answers = ["127.0.0.10"], score = 2.0 }]\n'
    )
    (rules / "off.toml").write_text(SHIPPED_OFF)
    services = build(Config.model_validate({"rules": {"dir": str(rules)}, "dns": {"nameservers": ["127.0.0.1:9"]}}))
    services._resolver = resolver  # type: ignore[assignment]
    return services


def checked(services: Services) -> list[Any]:
    check = DnsLists(services)
    session = Session(client_addr="192.0.2.66", family="inet")
    return [*check.on_connect(session), *check.on_mail(session, Envelope(spool=Spool(1024)))]


def test_a_listing_that_only_scores_asks_no_txt_record(tmp_path: Path) -> None:
    resolver = SlowTxtResolver("127.0.0.10")
    hits = checked(services_for(tmp_path, resolver))
    assert [rdtype for _name, rdtype in resolver.asked] == ["A"]
    assert [(h.symbol, h.action) for h in hits] == [("DNSBL_TEST_PBL", None)]
    assert hits[0].detail == "bl.test 127.0.0.10"


def test_a_listing_that_rejects_still_quotes_the_txt_record(tmp_path: Path) -> None:
    resolver = SlowTxtResolver("127.0.0.2")
    hits = checked(services_for(tmp_path, resolver))
    assert [rdtype for _name, rdtype in resolver.asked] == ["A", "TXT"]
    [forced] = [h for h in hits if h.action == Action.REJECT]
    assert forced.symbol == "DNSBL_TEST_SPAM"
    assert "blocked using bl.test; Listed: see https://bl.test/" in str(forced.reply)


@pytest.mark.parametrize("pattern", ["127.0.0.2", "127.0.0.4-127.0.0.7", "127.0.0.0/30", "127.0.*.3", "127.255.255.*", "127.0.0.0/8"])
def test_patterns_of_loopback_answers_are_valid(pattern: str) -> None:
    assert valid_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", ["10.0.0.1", "10.0.0.0/8", "0.0.0.0/0", "126.255.255.255-127.0.0.5", "*.0.0.2", "10.0.*.2", "127.0.*.02", "127.0.*.２", "127.0.0.２"]
)
def test_patterns_that_can_never_match_are_refused(pattern: str) -> None:
    assert not valid_pattern(pattern)
    with pytest.raises(ConfigError) as info:
        zone(codes=[{"name": "A", "answers": [pattern]}])
    assert info.value.key == "dnsbl MY.codes[0].answers" and "127.0.0.0/8" in info.value.reason
    with pytest.raises(ConfigError) as info:
        zone(refused=[pattern])
    assert info.value.key == "dnsbl MY.refused" and "127.0.0.0/8" in info.value.reason
