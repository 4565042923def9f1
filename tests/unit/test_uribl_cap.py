"""URI block lists: links put before a listed one cannot push it out of the max_domains looked up."""

from __future__ import annotations

import random

from milterd.checks.uribl import UriblChecks, link_targets
from milterd.content.mimetext import extract

CAP = UriblChecks().max_domains  # 20
SKIP = frozenset(UriblChecks().skip_domains)


def padded(tag: str, count: int = 30) -> list[str]:
    """*count* links to distinct unlisted registrable domains, then one to listed.test (as a message's links)."""
    return [f"https://www.pad{i}-{tag}.example/p" for i in range(count)] + ["https://click.listed.test/offer"]


def html(uris: list[str]) -> bytes:
    """A one-part HTML message with each URI as a clickable link."""
    body = "".join(f'<a href="{uri}">link {i}</a><br>' for i, uri in enumerate(uris))
    return f"From: a@example.org\r\nContent-Type: text/html\r\n\r\n{body}\r\n".encode()


def test_thirty_unlisted_domains_before_a_listed_one_do_not_always_hide_it() -> None:
    # The first 20 in order were looked up: these 50 messages never had listed.test asked about.
    looked_up = 0
    for tag in range(50):
        domains, _ = link_targets(extract(html(padded(str(tag)))).uris, SKIP, CAP)
        assert len(domains) == CAP
        looked_up += "listed.test" in domains
    assert 20 <= looked_up <= 45  # 20 of 31 each time: 32 expected


def test_each_of_31_domains_is_looked_up_with_probability_20_in_31() -> None:
    uris = padded("x")
    counts = {domain: 0 for domain in link_targets(uris, SKIP, 1000)[0]}
    assert len(counts) == 31
    for seed in range(1000):
        domains, addresses = link_targets(uris, SKIP, CAP, rng=random.Random(seed))
        assert len(domains) == CAP == len(set(domains)) and addresses == []
        assert domains == [d for d in counts if d in domains]  # in order of appearance
        for domain in domains:
            counts[domain] += 1
    # 1000 × 20/31 ≈ 645 each (binomial σ ≈ 15): the last link, the listed one, as likely as the first.
    assert all(570 <= count <= 720 for count in counts.values()), counts
    assert 570 <= counts["listed.test"] <= 720


def test_repeating_or_reordering_the_padding_changes_nothing() -> None:
    uris = padded("y")
    repeated = [uri for uri in uris[:-1] for _ in range(5)] + uris[-1:]
    shuffled = list(reversed(uris))
    for seed in range(20):
        chosen = set(link_targets(uris, SKIP, CAP, rng=random.Random(seed))[0])
        assert set(link_targets(repeated, SKIP, CAP, rng=random.Random(seed))[0]) == chosen
        assert set(link_targets(shuffled, SKIP, CAP, rng=random.Random(seed))[0]) == chosen


def test_public_addresses_do_not_take_the_domains_places() -> None:
    addresses = [f"http://198.51.{i // 200}.{i % 200 + 1}/" for i in range(300)]  # free to anyone
    domains, found = link_targets([*addresses, "https://click.listed.test/", "http://203.0.113.9/"], SKIP, CAP, rng=random.Random(1))
    assert domains == ["listed.test"]
    assert len(found) == CAP


def test_within_the_cap_all_are_kept_in_order_and_the_default_choice_is_reproducible() -> None:
    uris = padded("z", 19)
    assert link_targets(uris, SKIP, CAP) == ([f"pad{i}-z.example" for i in range(19)] + ["listed.test"], [])
    many = padded("w", 100)
    assert link_targets(many, SKIP, CAP) == link_targets(many, SKIP, CAP)
    assert len(link_targets(many, SKIP, CAP)[0]) == CAP
    assert link_targets(many, SKIP, 0) == ([], [])
