"""DNS-list zone rules: validation at load, answer matching, the reject reply; the shipped rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.checks.dnsbl import answer_matches, classify, parse_zone, reject_reply
from milterd.checks.dnslists import public_zone
from milterd.config import Config, ConfigError
from milterd.dns import Answer
from milterd.services import build

REPO = Path(__file__).resolve().parents[2]


def zone(**entry):  # type: ignore[no-untyped-def]
    return parse_zone("dnsbl", "rules/x.toml", 0, {"name": "TEST", "zone": "bl.test", **entry})


def test_answer_patterns() -> None:
    assert answer_matches("127.0.0.2", "127.0.0.2")
    assert answer_matches("127.0.0.4-127.0.0.7", "127.0.0.5") and not answer_matches("127.0.0.4-127.0.0.7", "127.0.0.8")
    assert answer_matches("127.0.0.0/30", "127.0.0.3")
    assert answer_matches("127.0.*.3", "127.0.15.3") and not answer_matches("127.0.*.3", "127.0.15.2")


def test_classify_codes_refused_and_foreign_answers() -> None:
    z = zone(score=2.0, refused=["127.255.255.*"], codes=[{"name": "HIGH", "answers": ["127.0.0.2"], "action": "reject"}, {"name": "LOW", "answers": "127.0.0.4", "score": 0.5}])
    assert [c.symbol for c in z.codes] == ["DNSBL_TEST_HIGH", "DNSBL_TEST_LOW"]
    listing = classify(z, Answer("x", "A", "ok", ("127.0.0.2", "127.0.0.4")))
    assert listing is not None and not isinstance(listing, str)
    assert dict(listing.symbols) == {"DNSBL_TEST_HIGH": True, "DNSBL_TEST_LOW": False}
    other = classify(z, Answer("x", "A", "ok", ("127.0.0.9",)))
    assert not isinstance(other, str) and other is not None and dict(other.symbols) == {"DNSBL_TEST": False}
    assert classify(z, Answer("x", "A", "ok", ("127.255.255.254",))) == "refused"
    assert classify(z, Answer("x", "A", "ok", ("198.51.100.1",))) is None  # wildcarded zone
    assert classify(z, Answer("x", "A", "error")) == "error"
    assert classify(z, Answer("x", "A", "nxdomain")) is None


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"name": "lower", "zone": "bl.test"}, "dnsbl lower.name"),
        ({"name": "X", "zone": "not a zone"}, "dnsbl X.zone"),
        ({"name": "X", "zone": "bl.test", "action": "drop"}, "dnsbl X.action"),
        ({"name": "X", "zone": "bl.test", "score": "high"}, "dnsbl X.score"),
        ({"name": "X", "zone": "bl.test", "codes": [{"name": "A", "answers": ["127.0.0.300"]}]}, "dnsbl X.codes[0].answers"),
        ({"name": "X", "zone": "bl.test", "zonee": "typo"}, "dnsbl X.zonee"),
    ],
)
def test_bad_zones_are_refused_with_file_and_key(entry: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_zone("dnsbl", "rules/x.toml", 0, entry)
    assert info.value.key == key and info.value.file == "rules/x.toml"


def test_dnswl_cannot_reject_and_uses_its_prefix() -> None:
    with pytest.raises(ConfigError):
        parse_zone("dnswl", "f", 0, {"name": "W", "zone": "wl.test", "action": "reject"})
    z = parse_zone("dnswl", "f", 0, {"name": "W", "zone": "wl.test"})
    assert z.symbol == "DNSWL_W" and z.score < 0


def test_reject_reply() -> None:
    assert str(reject_reply("192.0.2.66", "bl.test", "Listed:\n see x")) == "554 5.7.1 Service unavailable; client [192.0.2.66] blocked using bl.test; Listed: see x"


def test_shipped_rules_load(tmp_path: Path) -> None:
    config = Config.model_validate({"rules": {"dir": str(REPO / "rules")}})
    services = build(config)
    for name in ("DNSBL_SPAMHAUS_SBL", "DNSBL_SPAMHAUS_XBL", "DNSBL_SPAMHAUS_PBL", "DNSBL_SPAMHAUS_CSS", "DNSBL_SPAMCOP", "DNSBL_BARRACUDA", "DNSWL_ORG_HI"):
        assert name in services.symbols
    assert services.weight("DNSWL_ORG_MED") < 0


def test_bad_rule_file_fails_build(tmp_path: Path) -> None:
    (tmp_path / "bl.toml").write_text('[[dnsbl]]\nname = "X"\nzone = "bl.test"\ncodes = [{ name = "A" }]\n')
    with pytest.raises(ConfigError) as info:
        build(Config.model_validate({"rules": {"dir": str(tmp_path)}}))
    assert info.value.file.endswith("bl.toml") and "answers" in info.value.key


def test_a_reply_never_names_an_access_key() -> None:
    # Spamhaus DQS: the key is the zone's first label; a reply goes to the client (review, thirty-fourth session).
    assert public_zone("0123456789abcdefdqskey4567.zen.dq.spamhaus.net") == "zen.dq.spamhaus.net"
    assert public_zone("zen.spamhaus.org") == "zen.spamhaus.org"
    assert public_zone("b.barracudacentral.org") == "b.barracudacentral.org"
    assert public_zone("abcdefghijklmnopqrstuvwxyz.zen.dq.spamhaus.net") == "zen.dq.spamhaus.net"  # a key of letters alone too
    assert public_zone("0123456789abcdef-_x.combined.mail.abusix.zone") == "combined.mail.abusix.zone"
    assert public_zone("abcdefghijklmnopqrstuvwxyz.example") == "abcdefghijklmnopqrstuvwxyz.example"  # a name of two labels
    keyed = zone(zone="0123456789ABCDEFdqskey4567.zen.dq.spamhaus.net")
    assert keyed.shown_zone == "zen.dq.spamhaus.net" and keyed.zone.startswith("0123456789abcdef")
    assert zone(reply_zone="zen.spamhaus.org.").shown_zone == "zen.spamhaus.org"
    with pytest.raises(ConfigError) as info:
        zone(reply_zone="bl.test\r\n250 ok")
    assert info.value.key == "dnsbl TEST.reply_zone"
