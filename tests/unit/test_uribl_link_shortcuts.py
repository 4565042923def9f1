"""The link side's shortcuts (uribl.link_host, uribl.registrable, mimetext._links) against the code they replace."""

from __future__ import annotations

import ipaddress
import itertools
import random
import re
from urllib.parse import unquote, urlsplit

from milterd.checks import uribl
from milterd.checks.uribl import link_host, link_targets, public_suffixes, registrable
from milterd.content.mimetext import _URI_IN_TEXT, uris_in_text


def reference_link_host(uri: str) -> str | None:
    """link_host as it was: every host tried as an address, every name through the idna codec."""
    text = uri.strip()
    if text.lower().startswith("www."):
        text = "http://" + text
    # As since session 17: three or more slashes after a special scheme are two to a browser ("http:///path" is host path).
    text = re.sub(r"(?i)^((?:https?|ftp|wss?):)/{3,}", r"\1//", text)
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = unquote(host).strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return host if uribl._HOST.match(host) else None


HOSTS = [
    "example.com", "WWW.Example.COM.", "shop.unlisted-bench.test", "192.0.2.1", "192.0.2.1.", "010.0.0.1", "1.2.3", "1.2.3.4.5", "123",
    "4294967295", "0x7f.0.0.1", "127.1", "[2001:db8::1]", "[::ffff:192.0.2.1]", "[fe80::1%25eth0]", "[v1.x]", "[::1", "::1", "1.2.3.4:80",
    "\u0661\u0662.\u0661.\u0661.\u0661", "\u00b2.1.1.1", "b\u00fccher.example", "\u212a.example", "xn--bcher-kva.example", "exa%6dple.net",
    "a..b", ".a.b", "a.b..", "..", ".", "", "a" * 63 + ".example", "a" * 64 + ".example", "example." + "a" * 63, "example." + "a" * 64,
    "bad_host!", "under_score.example", "-dash.example", "dash-.example", "%00.example", "%20example.com%20", "a%2eb.example", "xn--.example",
    "\u00e9" * 70 + ".example", "\u0130stanbul.example", "ex\u200bample.com", "1.1.1.1%0a", "example.com%0a", "\u0663.example",
]
SHAPES = ["http://{}/path?q=1", "https://user:pw@{}:8080/", "{}", "www.{}", "ftp://{}", "http://{}", "HTTP://{}#frag", "mailto:a@{}", "//{}/x"]


def test_link_host_gives_what_it_gave_for_every_host() -> None:
    for host, shape in itertools.product(HOSTS, SHAPES):
        uri = shape.format(host)
        assert link_host(uri) == reference_link_host(uri), uri


def test_link_host_gives_what_it_gave_for_random_hosts() -> None:
    rng = random.Random(14)
    alphabet = "ab9.-_:[]%\u00fc\u0661\u212a0x12Z"
    for _ in range(20000):
        host = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.1:
            host = ".".join(str(rng.randint(0, 300)) for _ in range(rng.randint(1, 5)))
        uri = f"http://{host}/x"
        assert link_host(uri) == reference_link_host(uri), uri


def test_registrable_domains_are_the_public_suffix_lists_and_remembered() -> None:
    psl = public_suffixes()
    for host in ["www.a.example.co.uk", "example.co.uk", "co.uk", "uk", "shop.unlisted-bench.test", "a.b.github.io", "localhost", "xn--bcher-kva.example"]:
        assert registrable(host) == psl.privatesuffix(host), host
    registrable.cache_clear()
    registrable("www.example.org")
    registrable("www.example.org")
    assert registrable.cache_info().hits == 1


def test_link_targets_with_the_default_list_equal_those_with_an_explicit_one() -> None:
    uris = [shape.format(host) for host, shape in itertools.product(HOSTS, SHAPES[:3])]
    for limit in (1, 5, 20, 1000):
        assert link_targets(uris, frozenset({"example.com"}), limit) == link_targets(uris, frozenset({"example.com"}), limit, public_suffixes())


def test_links_with_and_without_a_capital_w() -> None:
    texts = [
        "see www.a.example and WWW.B.EXAMPLE or wWw.c.example", "no capital: www.a.example http://b.example wwww.c.example www.www.d",
        "Www. \u0130 www.after-a-longer-lowercase.example", "\u0130\u0130 WWW.x.example", "", "www.", "W", "ftp://x https://y://z",
        "\u212a www.kelvin.example", "wwW.wWw.Www.",
    ]
    for text in texts:
        assert uris_in_text(text) == [m.group(0).rstrip(".,;:!?") if not m.group(0).lower().startswith("www.") else "http://" + m.group(0).rstrip(".,;:!?")
                                      for m in _URI_IN_TEXT.finditer(text)], text
