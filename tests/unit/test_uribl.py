"""URI block lists, pure parts: link domains, answers, rule files, hits."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.checks.dnsbl import parse_zone
from milterd.checks.uribl import REFUSED, TEMPFAIL, address_lists, classify, link_host, link_targets, listing_hits, parse_uri_zone, query_name
from milterd.config import ConfigError
from milterd.content.mimetext import extract
from milterd.dns import Answer
from milterd.message.model import Action
from milterd.ruleset import SHIPPED_DIR, load_ruleset

FILE = Path("rules/lists.toml")
DBL = parse_uri_zone(FILE, 0, {
    "name": "DBL", "zone": "dbl.spamhaus.org", "score": 2.5, "refused": ["127.255.255.*"],
    "codes": [{"name": "SPAM", "answers": ["127.0.1.2"], "score": 3.0}, {"name": "PHISH", "answers": ["127.0.1.4"], "action": "reject"}],
})
SURBL = parse_uri_zone(FILE, 1, {
    "name": "SURBL", "zone": "multi.surbl.org", "refused": ["127.0.0.1"],
    "codes": [{"name": "PH", "mask": 8, "score": 5.0}, {"name": "MW", "mask": 16, "score": 5.0}],
})


def answer(*records: str, status: str = "ok") -> Answer:
    return Answer("q", "A", status, records)  # type: ignore[arg-type]


def test_link_hosts() -> None:
    assert link_host("https://WWW.Example.COM./path") == "www.example.com"
    assert link_host("www.example.org/x") == "www.example.org"
    assert link_host("http://user:pw@[2001:db8::1]:8080/") == "2001:db8::1"
    assert link_host("http://b\u00fccher.example/") == "xn--bcher-kva.example"
    assert link_host("http://exa%6dple.net/") == "example.net"
    assert link_host("mailto:a@b.c") is None
    assert link_host("http://bad_host!/") is None


def test_a_label_starting_with_a_hyphen_still_gives_the_registrable_domain() -> None:
    # Browsers open http://-x.evil.test/; dropping the host let the link's listed domain go unasked.
    assert link_host("http://-x.evil.test/") == "-x.evil.test"
    domains, _ = link_targets(["http://-x.evil.test/p", "https://--a.-b.listed.test/"], frozenset(), 20)
    assert domains == ["evil.test", "listed.test"]


def test_links_reduce_to_registrable_domains_skipping_well_known_ones_within_the_cap() -> None:
    uris = [
        "https://www.shop.listed.test/a", "http://img.listed.test/b.png", "https://maps.google.com/x",
        "http://news.example.co.uk/", "http://co.uk/", "http://11.22.33.44/p", "http://192.168.1.1/", "http://a.third.test/",
    ]
    domains, addresses = link_targets(uris, frozenset({"google.com"}), 20)
    assert domains == ["listed.test", "example.co.uk", "third.test"]
    assert addresses == ["11.22.33.44"]  # private addresses are never asked
    # Over the cap: 2 of the 4 domains, drawn at random (tests/unit/test_uribl_cap.py), in order; the address apart.
    domains, addresses = link_targets(uris, frozenset(), 2)
    assert len(domains) == 2 and set(domains) < {"listed.test", "google.com", "example.co.uk", "third.test"}
    assert sorted(domains, key=["listed.test", "google.com", "example.co.uk", "third.test"].index) == domains
    assert addresses == ["11.22.33.44"]


def test_mimetext_finds_href_src_and_bare_www_links() -> None:
    raw = (
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee www.plain-www.test/x\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<a href=\"http://href.test/\">x</a><img src=\"https://cdn.src.test/i.png\">\r\n--b--\r\n"
    )
    domains, _ = link_targets(extract(raw).uris, frozenset(), 20)
    assert set(domains) == {"plain-www.test", "href.test", "src.test"}


def test_answers_codes_masks_and_refused() -> None:
    listed = classify(DBL, "listed.test", answer("127.0.1.2"))
    assert listed is not None and not isinstance(listed, str) and listed.symbols == (("URIBL_DBL_SPAM", False),)
    phish = classify(DBL, "p.test", answer("127.0.1.4"))
    assert phish is not None and not isinstance(phish, str) and phish.symbols == (("URIBL_DBL_PHISH", True),)
    other = classify(DBL, "o.test", answer("127.0.1.99"))
    assert other is not None and not isinstance(other, str) and other.symbols == (("URIBL_DBL", False),)
    assert classify(DBL, "r.test", answer("127.255.255.254")) == "refused"
    assert classify(DBL, "n.test", answer(status="nxdomain")) is None
    assert classify(DBL, "e.test", answer(status="error")) == "error"
    assert classify(DBL, "w.test", answer("203.0.113.5")) is None  # a wildcarded zone is not a listing
    both = classify(SURBL, "b.test", answer("127.0.0.24"))
    assert both is not None and not isinstance(both, str) and dict(both.symbols) == {"URIBL_SURBL_PH": False, "URIBL_SURBL_MW": False}
    assert classify(SURBL, "blocked.test", answer("127.0.0.1")) == "refused"
    assert query_name("listed.test", DBL) == "listed.test.dbl.spamhaus.org"


def test_hits_name_the_domains_and_a_reject_names_the_first() -> None:
    listings = [
        classify(DBL, "a.test", answer("127.0.1.2")),
        classify(DBL, "b.test", answer("127.0.1.2")),
        classify(DBL, "evil\r\n.test", answer("127.0.1.4")),
    ]
    hits = {h.symbol: h for h in listing_hits([x for x in listings if x is not None and not isinstance(x, str)], ["multi.surbl.org"], ["dbl.spamhaus.org"])}
    assert hits["URIBL_DBL_SPAM"].detail == "a.test (127.0.1.2), b.test (127.0.1.2)" and hits["URIBL_DBL_SPAM"].action is None
    assert hits["URIBL_DBL_PHISH"].action == Action.REJECT
    assert str(hits["URIBL_DBL_PHISH"].reply) == "550 5.7.1 Message rejected: it links to evil\\r\\n.test, listed in dbl.spamhaus.org"
    assert hits[TEMPFAIL].detail == "multi.surbl.org" and hits[REFUSED].detail == "dbl.spamhaus.org"


@pytest.mark.parametrize(
    ("entry", "key", "reason"),
    [
        ({"name": "dbl", "zone": "dbl.spamhaus.org"}, "uribl dbl.name", "upper-case"),
        ({"name": "DBL", "zone": "not a zone"}, "uribl DBL.zone", "DNS zone"),
        ({"name": "DBL", "zone": "z.test", "ipv4": True}, "uribl DBL.ipv4", "unknown key"),
        ({"name": "DBL", "zone": "z.test", "codes": [{"name": "X"}]}, "uribl DBL.codes[0]", "needs answers or a mask"),
        ({"name": "DBL", "zone": "z.test", "codes": [{"name": "X", "mask": 300}]}, "uribl DBL.codes[0].mask", "1 to 255"),
        ({"name": "DBL", "zone": "z.test", "refused": ["127.0.0.300"]}, "uribl DBL.refused", "list of answers"),
        ({"name": "DBL", "zone": "z.test", "action": "drop"}, "uribl DBL.action", "\"score\" or \"reject\""),
        # A range written high to low matches nothing: refused, as for [[dnsbl]] (the lists share their patterns).
        ({"name": "DBL", "zone": "z.test", "codes": [{"name": "X", "answers": ["127.0.1.9-127.0.1.2"]}]}, "uribl DBL.codes[0].answers", "must list answers"),
    ],
)
def test_bad_lists_are_refused_with_file_key_and_reason(entry: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_uri_zone(FILE, 0, entry)
    assert info.value.file == str(FILE) and info.value.key == key and reason in info.value.reason


def test_address_links_use_the_dnsbl_codes_named_and_only_score() -> None:
    zen = parse_zone("dnsbl", FILE, 0, {
        "name": "SPAMHAUS", "zone": "zen.spamhaus.org", "refused": ["127.255.255.*"],
        "codes": [{"name": "SBL", "answers": ["127.0.0.2"], "score": 5.0, "action": "reject"}, {"name": "PBL", "answers": ["127.0.0.10"], "score": 2.0}],
    })
    [zone] = address_lists(["SPAMHAUS_SBL"], [zen], [], FILE)
    assert query_name("11.22.33.44", zone) == "44.33.22.11.zen.spamhaus.org"
    sbl = classify(zone, "11.22.33.44", answer("127.0.0.2"))
    assert sbl is not None and not isinstance(sbl, str) and sbl.symbols == (("URIBL_IP_SPAMHAUS_SBL", False),)
    assert classify(zone, "11.22.33.55", answer("127.0.0.10")) is None  # the PBL is not asked about links
    assert address_lists(["SPAMHAUS_SBL"], [], ["dnsbl SPAMHAUS"], FILE) == []  # switched off in rules/: left out
    with pytest.raises(ConfigError) as info:
        address_lists(["NOSUCH"], [zen], [], FILE)
    assert info.value.key == "[checks.uribl] ip_lists"


def test_shipped_lists_parse_and_a_local_file_overrides_or_disables_them(tmp_path: Path) -> None:
    (tmp_path / "local.toml").write_text('[[uribl]]\nname = "URIBL"\nenabled = false\n\n[[uribl]]\nname = "DBL"\nzone = "dbl.example.test"\n')
    ruleset = load_ruleset(tmp_path, {"uribl", "dnsbl", "dnswl", "rule"}, SHIPPED_DIR)
    zones = [parse_uri_zone(s.file, 0, s.value) for s in ruleset.section("uribl")]
    assert {z.symbol: z.zone for z in zones} == {"URIBL_DBL": "dbl.example.test", "URIBL_SURBL": "multi.surbl.org"}
    shipped = [parse_uri_zone(s.file, 0, s.value) for s in load_ruleset(None, {"uribl", "dnsbl", "dnswl", "rule"}, SHIPPED_DIR).section("uribl")]
    assert {z.zone for z in shipped} == {"dbl.spamhaus.org", "multi.surbl.org", "multi.uribl.com"}
    dbl = next(z for z in shipped if z.zone == "dbl.spamhaus.org")
    assert "URIBL_DBL_PHISH" in {c.symbol for c in dbl.codes} and dbl.refused == ("127.255.255.*", "127.0.1.255")
