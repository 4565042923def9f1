"""IPv6 addresses that stand for an IPv4 client.

An IPv4 client reaches milterd written as IPv6 in two ways: IPv4-mapped
(``::ffff:192.0.2.1``, a dual-stack socket behind another MTA) and, at an
IPv6-only MX behind NAT64/SIIT, in RFC 6052's well-known prefix
(``64:ff9b::192.0.2.1``).  Either is the IPv4 host: the DNS lists, reverse DNS,
SPF and greylisting judge that host; a trusted_networks or greylist whitelist
entry matches it in either form.  A site-specific NAT64 prefix is not known here.
"""

from __future__ import annotations

import ipaddress

#: RFC 6052's well-known prefix: an IPv6-only MX behind NAT64/SIIT sees every IPv4 client in it.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
#: The IPv4 networks RFC 6052 §3.1 forbids the well-known prefix to carry (non-global: loopback, private use,
#: shared, link-local, this network, multicast, reserved): such an address in it is no translated client, and is
#: never taken for one (64:ff9b::127.0.0.1 must not be the trusted loopback).  The documentation networks are
#: translated (examples and tests use them).
_NOT_TRANSLATED = tuple(
    ipaddress.IPv4Network(network)
    for network in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 *ip* stands for: IPv4-mapped (``::ffff:192.0.2.1``) or translated by NAT64
    (``64:ff9b::192.0.2.1``, a global IPv4 address only: :data:`_NOT_TRANSLATED`), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return None if any(inner in network for network in _NOT_TRANSLATED) else inner
    return None


def as_judged(ip: IPAddress) -> IPAddress:
    """*ip* as milterd judges a client: the IPv4 address an IPv6 one stands for (:func:`embedded_ipv4`), else itself."""
    return (embedded_ipv4(ip) or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def embedded_ipv4_network(network: Network, prefixes: tuple[ipaddress.IPv6Network, ...] = (_MAPPED, NAT64)) -> ipaddress.IPv4Network | None:
    """The IPv4 network an IPv6 *network* of /96 or narrower inside one of *prefixes* (the IPv4-mapped range,
    ``::ffff:198.51.100.0/120``, and the NAT64 one, ``64:ff9b::c633:6400/120``) is written for: ``198.51.100.0/24``;
    else None.  By the address arithmetic alone (``64:ff9b::/96`` is ``0.0.0.0/0``), as triplets and whitelists are matched."""
    if not isinstance(network, ipaddress.IPv6Network) or network.prefixlen < 96:
        return None
    if not any(network.subnet_of(prefix) for prefix in prefixes):
        return None
    return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))


def unmapped_network(network: Network) -> Network:
    """*network* in IPv4's form where it is IPv4-mapped (``::ffff:192.0.2.0/120`` → ``192.0.2.0/24``); else itself."""
    return embedded_ipv4_network(network, (_MAPPED,)) or network


def client_networks(written: list[str]) -> list[Network]:
    """The networks of trusted_networks as written, each IPv4-mapped one (``::ffff:198.51.100.0/120``) followed by the
    IPv4 network it is (a client Postfix passes as IPv4 matches it).  A NAT64 entry keeps its one form: it matches
    the clients Postfix passes in that form (:func:`client_forms`), not a direct IPv4 client of the same numbers."""
    networks: list[Network] = []
    for text in written:
        network = ipaddress.ip_network(text, strict=False)
        ipv4 = unmapped_network(network)
        networks += [network] if ipv4 is network else [network, ipv4]
    return networks


def client_forms(address: str, sent: str = "") -> list[IPAddress]:
    """The forms a client is matched in against networks written in milter.conf (trusted_networks): *address*,
    the one milterd judges, and *sent*, the IPv6 form Postfix passed when that was an IPv4 client written as IPv6
    (:func:`embedded_ipv4`), so that an entry of either form matches it and a NAT64 entry no direct IPv4 client."""
    forms: list[IPAddress] = []
    for text in (address, sent):
        try:
            forms.append(ipaddress.ip_address(text))
        except ValueError:
            continue
    return forms
