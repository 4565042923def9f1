"""The link reader's bounds (mimetext._Links) against padding: repeats read free, hosts kept by registrable domain."""

from __future__ import annotations

import pytest

from milterd.content import mimetext
from milterd.content.mimetext import MAX_HOSTS, MAX_LINKS_SCANNED, MAX_URIS, extract

HEAD = b"From: a@example.org\r\nContent-Type: text/plain\r\n\r\n"
EVIL = "https://evil.test/login"


def _message(links: list[str]) -> bytes:
    return HEAD + "\r\n".join(links).encode() + b"\r\n"


def _hosts(uris: list[str]) -> set[str]:
    return {uri.split("/")[2] for uri in uris}


def test_repeats_of_a_link_met_before_do_not_use_up_the_distinct_links_read() -> None:
    # Copies of kept links, and of a link left out (past MAX_URIS of its host), MAX_LINKS_SCANNED of each.
    kept = [f"http://a.test/{i}" for i in range(MAX_URIS)]
    left_out = "http://a.test/left-out"
    links = kept + ["http://a.test/0", "http://b.test/"] * (MAX_LINKS_SCANNED // 2) + [left_out] * MAX_LINKS_SCANNED + [EVIL]
    found = extract(_message(links))
    assert EVIL in found.uris and left_out not in found.uris
    assert found.unread == ""  # nothing was left unread: fewer than MAX_LINKS_LOOKED links in all


def test_the_bound_on_all_links_read_still_ends_the_scan() -> None:
    looked = mimetext.MAX_LINKS_LOOKED
    assert looked > MAX_LINKS_SCANNED
    within = extract(_message(["http://a.test/"] * (looked - 1) + [EVIL]))
    assert EVIL in within.uris and within.unread == ""
    past = extract(_message(["http://a.test/"] * looked + [EVIL]))  # a hostile message: one short link repeated
    assert past.uris == ["http://a.test/"] and past.unread == "links" and not past.truncated  # the text is whole


@pytest.mark.parametrize("salt", range(8))
def test_an_address_survives_nineteen_thousand_subdomains(monkeypatch: pytest.MonkeyPatch, salt: int) -> None:
    monkeypatch.setattr(mimetext, "_HOST_SALT", salt)
    links = [f"http://h{i}.a.test/" for i in range(19_000)] + ["http://1.2.3.4/x", "http://16909061:8080/"]
    found = extract(_message(links))
    assert {"1.2.3.4", "16909061:8080"} <= _hosts(found.uris)
    assert len(_hosts(found.uris)) == MAX_HOSTS and found.unread == "links"


@pytest.mark.parametrize("salt", range(8))
def test_two_listed_domains_each_survive(monkeypatch: pytest.MonkeyPatch, salt: int) -> None:
    monkeypatch.setattr(mimetext, "_HOST_SALT", salt)
    half = [f"http://h{i}.pad.test/" for i in range(9_000)]
    links = half + ["https://login.evil-one.test/a"] + [f"http://x{i}.pad.co.uk/" for i in range(9_000)] + ["https://evil-two.test/b"]
    hosts = _hosts(extract(_message(links)).uris)
    assert {"login.evil-one.test", "evil-two.test"} <= hosts
    assert len(hosts) == MAX_HOSTS
    # The two padding domains share what is left evenly, their lowest-ranked hosts.
    assert sum(host.endswith(".pad.test") for host in hosts) == sum(host.endswith(".pad.co.uk") for host in hosts) == (MAX_HOSTS - 2) // 2


@pytest.mark.parametrize("salt", range(4))
def test_addresses_cannot_crowd_out_a_name(monkeypatch: pytest.MonkeyPatch, salt: int) -> None:
    monkeypatch.setattr(mimetext, "_HOST_SALT", salt)
    links = [f"http://10.{i // 256}.{i % 256}.1/" for i in range(3_000)] + [EVIL]
    hosts = _hosts(extract(_message(links)).uris)
    assert "evil.test" in hosts and len(hosts) == MAX_HOSTS


@pytest.mark.parametrize("salt", range(4))
def test_many_registrable_domains_are_still_capped_one_host_each(monkeypatch: pytest.MonkeyPatch, salt: int) -> None:
    monkeypatch.setattr(mimetext, "_HOST_SALT", salt)
    # 1,500 domains of one host each, and 20 hosts of one of them: past MAX_HOSTS domains each keeps one host or none.
    links = [f"https://d{i}.example/" for i in range(1_500)] + [f"https://w{i}.d0.example/" for i in range(20)]
    found = extract(_message(links))
    hosts = _hosts(found.uris)
    assert len(hosts) == len(found.uris) == MAX_HOSTS and found.unread == "links"
    assert sum(host == "d0.example" or host.endswith(".d0.example") for host in hosts) <= 1
    # Whatever the order of the links.
    assert _hosts(extract(_message(links[::-1])).uris) == hosts


@pytest.mark.parametrize("padding", [
    "https://www.google.com/url?q=https://www.google.com/{i}",  # the review's: 1,000 redirects within google.com
    "https://www.google.com/search?q={i}",  # links to the redirector's host naming nothing
])
def test_a_redirector_s_target_is_read_after_a_thousand_links_to_its_host(padding: str) -> None:
    """Second look: past MAX_URIS links kept, only a host's first link was kept, and a redirect through google.com
    (in skip_domains) to a listed domain was left out unflagged.  The target named competes by its own host."""
    links = [padding.format(i=i) for i in range(MAX_URIS)] + ["https://www.google.com/url?q=https%3A%2F%2Fevil.test%2Flogin"]
    found = extract(_message(links))
    assert "evil.test" in _hosts(found.uris)
    assert found.unread == ""


def test_the_targets_a_link_names_are_bounded_and_counted() -> None:
    many = "https://r.test/go?" + "&".join(f"u{i}=https://d{i}.test/" for i in range(50))
    found = extract(_message([many]))
    assert _hosts(found.uris) == {"r.test"} | {f"d{i}.test" for i in range(10)}  # MAX_EMBEDDED of them


def test_links_a_redirector_names_do_not_use_up_the_distinct_links_read() -> None:
    """Third look: 2,000 links naming 10 hosts each counted 22,000 distinct links, and the listed one after
    them (read before links were named) was left unread."""
    links = ["http://r.test/?" + "&".join(f"u{j}=https://s{i}x{j}.wild.test/" for j in range(10)) for i in range(2000)]
    found = extract(_message(links + ["http://evil.test/"]))
    assert "evil.test" in _hosts(found.uris)  # (unread says "links": 20,000 subdomains are more than MAX_HOSTS)
