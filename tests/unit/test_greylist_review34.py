"""Greylisting review, thirty-fourth session.

* A sender whitelist entry was matched by the address an SRS rewrite names: any client could write
  ``SRS0=x=y=partner.example=spam@attacker.example`` (its own domain, passing its own SPF) and skip greylisting
  as partner.example.
* DNSWL.org's NONE listing (127.0.x.0: hosts that also send spam) exempted a client as its trust levels do.
* Behind NAT64 (``64:ff9b::a.b.c.d``) every IPv4 client was one /64: one triplet network, one auto-whitelist.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.greylist import client_network, normalise_sender
from milterd.message.model import Hit, Session

from .test_greylist_review28 import greylist_services, rcpt


@pytest.mark.parametrize("sender", ["SRS0=AAAA=ZZ=partner.example=spam@attacker.example",
                                    "SRS1=x=fwd.example==AAAA=ZZ=partner.example=spam@attacker.example"])
def test_an_srs_address_does_not_match_the_partner_it_names(tmp_path: Path, sender: str) -> None:
    services, check = greylist_services(tmp_path, **{"greylist.whitelist_senders": ["@partner.example", "ceo@partner.example"]})
    assert rcpt(check, Session(client_addr="192.0.2.10"), sender)[0][0] == "GREYLIST"
    assert rcpt(check, Session(client_addr="192.0.2.10"), "ceo@partner.example") == []  # the partner itself
    assert rcpt(check, Session(client_addr="192.0.2.10"), "prvs=1234abcd=ceo@partner.example") == []  # its BATV
    services.store.close()


def test_the_triplet_still_takes_the_address_srs_names() -> None:
    assert normalise_sender("SRS0=HHH=TT=example.org=alice@fwd.example") == "alice@example.org"
    assert normalise_sender("SRS0=HHH=TT=example.org=alice@fwd.example", srs=False) == "srs0=hhh=tt=example.org=alice@fwd.example"


def test_only_a_dnswl_trust_level_exempts(tmp_path: Path) -> None:
    services, check = greylist_services(tmp_path)
    assert rcpt(check, Session(client_addr="192.0.2.10", hits=[Hit("DNSWL_ORG_NONE")]), "alice@example.org")[0][0] == "GREYLIST"
    assert rcpt(check, Session(client_addr="192.0.2.11", hits=[Hit("DNSWL_ORG_LOW")]), "alice@example.org") == []
    services.store.close()


def test_nat64_clients_count_by_their_ipv4_network() -> None:
    assert client_network("64:ff9b::192.0.2.10") == "192.0.2.0/24"
    assert client_network("64:ff9b::198.51.100.7") == "198.51.100.0/24"
    assert client_network("2001:db8::1") == "2001:db8::/64"


@pytest.mark.parametrize("entry", ["64:ff9b::/96", "64:ff9b::c000:20a", "192.0.2.0/24"])
def test_a_nat64_client_matches_a_whitelist_entry_of_either_form(tmp_path: Path, entry: str) -> None:
    # Second look: an IPv6 entry copied from an IPv6-only MX's logs no longer matched once the client counted as IPv4.
    services, check = greylist_services(tmp_path, **{"greylist.whitelist_clients": [entry]})
    assert rcpt(check, Session(client_addr="64:ff9b::192.0.2.10"), "alice@example.org") == []
    other = rcpt(check, Session(client_addr="64:ff9b::198.51.100.7"), "alice@example.org")
    assert other == [] if entry == "64:ff9b::/96" else other[0][0] == "GREYLIST"  # the /96 holds every IPv4 client
    services.store.close()
