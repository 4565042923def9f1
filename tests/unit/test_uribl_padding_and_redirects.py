"""URI block lists: a redirector's target is looked up, and padding does not push a listed link out.

Padding: 20,000 copies of one link before a listed one, or 19,000 subdomains of one
(wildcard) domain beside it.  :func:`link_targets` counts what is looked up (a repeat or
a subdomain takes no further place), and so does the link reader's (a repeat does not count
towards ``mimetext.MAX_LINKS_SCANNED``; past ``MAX_HOSTS`` hosts are kept by registrable domain).
"""

from __future__ import annotations

import random

import pytest

from milterd.checks.uribl import MAX_EMBEDDED, UriblChecks, embedded_hosts, link_targets
from milterd.content import mimetext
from milterd.content.mimetext import extract

CAP = UriblChecks().max_domains  # 20
SKIP = frozenset(UriblChecks().skip_domains)  # google.com, youtube.com, linkedin.com, facebook.com among them
HEAD = b"From: a@example.org\r\nContent-Type: text/plain\r\n"

REDIRECTS = [
    "https://www.google.com/url?q=https://evil.test/login",
    "https://www.google.com/url?q=https://evil.test&sa=D&source=editors",
    "https://www.google.com/amp/s/evil.test/login",
    "https://www.youtube.com/redirect?event=video_description&q=https%3A%2F%2Fevil.test%2F",
    "https://www.linkedin.com/redir/redirect?url=https%3A%2F%2Fevil%2Etest%2Flogin&urlhash=x1y2",
    "https://l.facebook.com/l.php?u=https%3A%2F%2Fevil.test%2F&h=AT0abc",
    "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fevil.test%2Flogin&data=05%7C01%7Cx%7C&reserved=0",
    # SafeLinks wrapping Google's redirector: the target is encoded twice (%253A).
    "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.google.com%2Furl%3Fq%3Dhttps%253A%252F%252Fevil.test%252Flogin%26sa%3DD&data=05",
]


@pytest.mark.parametrize("uri", REDIRECTS)
def test_a_redirectors_target_is_looked_up(uri: str) -> None:
    domains, addresses = link_targets([uri], SKIP, CAP)
    assert domains == ["evil.test"] and addresses == []  # the redirector itself is skipped


@pytest.mark.parametrize("uri", REDIRECTS)
def test_a_redirectors_target_is_looked_up_from_a_message(uri: str) -> None:
    raw = b"From: a@example.org\r\nContent-Type: text/html\r\n\r\n" + f'<a href="{uri.replace("&", "&amp;")}">Open</a>\r\n'.encode()
    found = extract(raw)
    assert "evil.test" in link_targets(found.uris, SKIP, CAP, embedded=found.embedded)[0]


def test_an_embedded_links_host_is_read_as_any_links() -> None:
    assert link_targets(["https://www.google.com/url?q=https://FA%C3%9F.test/"], SKIP, CAP)[0] == ["xn--fa-hia.test"]  # IDNA2008
    assert link_targets(["https://www.google.com/url?q=https://www.youtube.com/watch"], SKIP, CAP) == ([], [])  # skipped
    assert link_targets(["https://www.google.com/url?q=http://0x01020304/x"], SKIP, CAP) == ([], ["1.2.3.4"])  # an address
    assert link_targets(["https://www.google.com/url?q=http://10.0.0.1/"], SKIP, CAP) == ([], [])  # private: never asked
    assert embedded_hosts("https://evil.test/login?next=/home#https://other.test/") == []  # a fragment is no redirect


def test_embedded_links_are_bounded_and_share_the_limits() -> None:
    many = "https://r.test/?" + "&".join(f"u{i}=https://d{i}.test/" for i in range(50))
    assert embedded_hosts(many) == [f"d{i}.test" for i in range(MAX_EMBEDDED)]
    # A repeated target is looked at once: it does not use up a link's places.
    repeated = "https://r.test/?" + "&".join("u=https://a.test/" for _ in range(50)) + "&q=https://evil.test/"
    assert embedded_hosts(repeated) == ["a.test", "evil.test"]
    redirects = [f"https://www.google.com/url?q=https://d{i}.test/" for i in range(3 * CAP)]
    for seed in range(5):
        domains, _ = link_targets(redirects, SKIP, CAP, rng=random.Random(seed))
        assert len(domains) == CAP  # counted in max_domains as any other


def test_many_long_links_leave_a_short_redirect_read() -> None:
    long = [f"https://pad{i}.test/?" + "x=https%3A%2F%2Fa.test%2F&" * 2000 for i in range(300)]  # 15 MB
    domains, _ = link_targets([*long, REDIRECTS[0]], SKIP, 1000)
    assert "evil.test" in domains


def test_twenty_thousand_copies_of_one_link_before_a_listed_one() -> None:
    # link_targets counts targets, not links (this held before the change too).
    uris = ["http://a.test/"] * 20_000 + ["https://evil.test/login"]
    assert link_targets(uris, SKIP, CAP, rng=random.Random(1))[0] == ["a.test", "evil.test"]


def test_nineteen_thousand_subdomains_of_one_domain_beside_a_listed_one() -> None:
    # Two registrable domains: within max_domains, so no drawing leaves one out (this held before the change too).
    uris = [f"http://h{i}.a.test/" for i in range(19_000)] + ["https://evil.test/login", "http://1.2.3.4/"]
    assert link_targets(uris, SKIP, CAP, rng=random.Random(1)) == (["a.test", "evil.test"], ["1.2.3.4"])


def test_twenty_thousand_copies_of_one_link_before_a_listed_one_in_a_message() -> None:
    found = extract(HEAD + b"\r\n" + b"http://a.test/\r\n" * 20_000 + b"https://evil.test/login\r\n")
    assert "evil.test" in link_targets(found.uris, SKIP, CAP, embedded=found.embedded)[0]


def test_nineteen_thousand_subdomains_beside_a_listed_one_in_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    body = "".join(f"http://h{i}.a.test/\r\n" for i in range(19_000)) + "https://evil.test/login\r\nhttp://1.2.3.4/\r\n"
    for salt in range(20):
        monkeypatch.setattr(mimetext, "_HOST_SALT", salt, raising=False)
        found = extract(HEAD + b"\r\n" + body.encode())
        assert link_targets(found.uris, SKIP, CAP, embedded=found.embedded) == (["a.test", "evil.test"], ["1.2.3.4"]), salt
