"""Greylisting's pure parts: the triplet, the whitelists, the judgement."""

from __future__ import annotations

import datetime as dt

import pytest

from milterd import greylist as gl
from milterd.config import Config, ConfigError, GreylistSection

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("IPv6:2001:db8::1", "2001:db8::/64"),
        ("/var/run/x.sock", "/var/run/x.sock"),
        ("", "unknown"),
    ],
)
def test_client_network(address: str, expected: str) -> None:
    assert gl.client_network(address) == expected


def test_client_network_netmasks() -> None:
    assert gl.client_network("192.0.2.77", 32, 64) == "192.0.2.77/32"
    assert gl.client_network("198.51.100.200", 19, 64) == "198.51.96.0/19"
    assert gl.client_network("2001:db8:1:2::9", 24, 48) == "2001:db8:1::/48"


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ("<alice@example.org>", "alice@example.org"),
        ("prvs=0123abcd=alice@example.org", "alice@example.org"),
        ("PRVS=9f8e7d6c5b=Alice@example.org", "alice@example.org"),
        ("msprvs1=17abc=alice@example.org", "alice@example.org"),
        ("btv1==123abc==alice@example.org", "alice@example.org"),
        ("SRS0=HHH=TT=example.org=alice@forwarder.example", "alice@example.org"),
        ("srs0+hhh=tt=example.org=alice@forwarder.example", "alice@example.org"),
        ("SRS1=HHH=first.example==HHH=TT=example.org=alice@second.example", "alice@example.org"),
        ("alice+list-42@example.org", "alice@example.org"),
        ("prvs=1234=alice+tag@example.org", "alice@example.org"),
        ("+weird@example.org", "+weird@example.org"),
        ("", ""),
        ("MAILER-DAEMON", "mailer-daemon"),
    ],
)
def test_normalise_sender(sender: str, expected: str) -> None:
    assert gl.normalise_sender(sender) == expected


def test_triplet_keeps_recipient_as_given() -> None:
    triplet = gl.make_triplet("192.0.2.10", "prvs=ab12=Alice@Example.org", "Bob@Example.COM", GreylistSection())
    assert triplet == gl.Triplet("192.0.2.0/24", "alice@example.org", "Bob@Example.COM")
    assert "client=192.0.2.0/24" in str(triplet) and "to=<Bob@Example.COM>" in str(triplet)


def test_whitelist_clients() -> None:
    wl = gl.Whitelist.build([("client", "198.51.100.0/24"), ("client", ".mail.example.net"), ("client", "mx.example.org"), ("client", "/^out[0-9]+\\.example\\.com$/"), ("client", "2001:db8::/32")])
    assert wl.client("198.51.100.9", "unknown") == "198.51.100.0/24"
    assert wl.client("::ffff:198.51.100.9", "") == "198.51.100.0/24"
    assert wl.client("2001:db8::5", "") == "2001:db8::/32"
    assert wl.client("192.0.2.1", "a.mail.example.net") == ".mail.example.net"
    assert wl.client("192.0.2.1", "mail.example.net") == ".mail.example.net"
    assert wl.client("192.0.2.1", "evilmail.example.net") is None
    assert wl.client("192.0.2.1", "MX.example.org") == "mx.example.org"
    assert wl.client("192.0.2.1", "sub.mx.example.org") is None
    assert wl.client("192.0.2.1", "out17.example.com") == "/^out[0-9]+\\.example\\.com$/"
    assert wl.client("192.0.2.1", "unknown") is None


def test_whitelist_senders_and_recipients() -> None:
    wl = gl.Whitelist.build([("sender", "boss@example.org"), ("sender", "@lists.example.net"), ("sender", ".partner.example"), ("recipient", "abuse@example.com"), ("recipient", "example.info")])
    assert wl.sender("boss@example.org") == "boss@example.org"
    assert wl.sender("other@example.org") is None
    assert wl.sender("x@lists.example.net") == "@lists.example.net"
    assert wl.sender("x@sub.lists.example.net") is None
    assert wl.sender("x@partner.example") == ".partner.example"
    assert wl.sender("x@eu.partner.example") == ".partner.example"
    assert wl.sender("") is None
    assert wl.recipient("Abuse@Example.com") == "abuse@example.com"
    assert wl.recipient("anyone@example.info") == "example.info"
    assert wl.recipient("anyone@example.com") is None


@pytest.mark.parametrize(("kind", "text"), [("client", "/(/"), ("client", "a b"), ("sender", ""), ("colour", "x"), ("client", "x@y")])
def test_bad_whitelist_entries(kind: str, text: str) -> None:
    with pytest.raises(ValueError):
        gl.compile_pattern(kind, text)


def test_bad_whitelist_entry_in_config_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from milterd.config import load_config

    path = tmp_path / "milter.conf"
    path.write_text('[greylist]\nwhitelist_clients = ["/(/"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "[greylist] whitelist_clients" in str(info.value)


def test_score_mode_needs_threshold(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from milterd.services import build

    config = Config().with_changes({"greylist.enabled": True, "greylist.mode": "score"})
    with pytest.raises(ConfigError) as info:
        build(config)
    assert "[actions] greylist" in str(info.value)
    build(config.with_changes({"actions.greylist": 6}))


def test_shipped_providers_on_by_default() -> None:
    entries = gl.config_entries(GreylistSection())
    assert ("client", ".google.com") in entries
    wl = gl.Whitelist.build(entries)
    assert wl.client("209.85.220.41", "mail-sor-f41.google.com") == ".google.com"
    assert wl.client("209.85.220.41", "unknown") is None  # only verified names count
    assert gl.config_entries(GreylistSection(whitelist_providers=False)) == []


def test_postmaster_bounce() -> None:
    assert gl.is_postmaster_bounce("", "postmaster@example.com")
    assert gl.is_postmaster_bounce("", "Postmaster")
    assert not gl.is_postmaster_bounce("", "bob@example.com")
    assert not gl.is_postmaster_bounce("alice@example.org", "postmaster@example.com")


def state(first: float, passed: float | None = None, expires: float = 3600, attempts: int = 1) -> gl.State:
    ago = lambda s: NOW - dt.timedelta(seconds=s)  # noqa: E731
    return gl.State(ago(first), ago(first), ago(passed) if passed is not None else None, NOW + dt.timedelta(seconds=expires), attempts)


def test_judge() -> None:
    assert gl.judge(None, NOW, 300, 7200).kind == "new"
    early = gl.judge(state(100), NOW, 300, 7200)
    assert early.kind == "early" and early.greylisted and early.wait == 200
    assert gl.judge(state(300), NOW, 300, 7200).kind == "pass"
    assert not gl.judge(state(300), NOW, 300, 7200).greylisted
    assert gl.judge(state(9000, passed=8000), NOW, 300, 7200).kind == "known"
    assert gl.judge(state(9000, expires=-1), NOW, 300, 7200).kind == "expired"
    assert gl.judge(state(9000, passed=8000, expires=-1), NOW, 300, 7200).greylisted


def test_reply_text() -> None:
    from milterd.checks.greylist import greylist_reply

    assert str(greylist_reply(299.6)) == "451 4.7.1 Greylisted, please try again in 300 seconds"
    assert str(greylist_reply(0)) == "451 4.7.1 Greylisted, please try again in 1 seconds"


PLAN_CONFIG = GreylistSection(delay=300, retry_window=7200, expire=86400, auto_whitelist_after=5)
T = gl.Triplet("192.0.2.0/24", "alice@example.org", "bob@example.com")


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def test_plan_new_and_early_record_an_attempt() -> None:
    step = gl.plan(T, None, NOW, PLAN_CONFIG)
    assert step.judgement.kind == "new" and step.judgement.greylisted
    assert step.write == gl.Write(T, "new", NOW, later(7200), count_client=False)
    early = gl.plan(T, state(100), NOW, PLAN_CONFIG)
    assert early.judgement.kind == "early" and early.write is not None and early.write.kind == "early"
    assert not early.write.count_client


def test_plan_pass_counts_the_client_renewal_does_not() -> None:
    passed = gl.plan(T, state(300), NOW, PLAN_CONFIG)
    assert passed.judgement.kind == "pass" and not passed.judgement.greylisted
    assert passed.write == gl.Write(T, "pass", NOW, later(86400), count_client=True, client_expire=86400)
    renewed = gl.plan(T, state(9000, passed=8000), NOW, PLAN_CONFIG)  # last seen 9000 s ago: over RENEW_INTERVAL
    assert renewed.judgement.kind == "known" and renewed.write == gl.Write(T, "known", NOW, later(86400), count_client=False)
    no_auto = gl.plan(T, state(300), NOW, GreylistSection(delay=300, auto_whitelist_after=0))
    assert no_auto.write is not None and not no_auto.write.count_client


def test_plan_known_recently_renewed_writes_nothing() -> None:
    recent = gl.State(NOW - dt.timedelta(seconds=9000), NOW - dt.timedelta(seconds=60), NOW - dt.timedelta(seconds=8000), later(3600), 3, 2)
    step = gl.plan(T, recent, NOW, PLAN_CONFIG)
    assert step.judgement.kind == "known" and step.write is None


def test_plan_expired_starts_again() -> None:
    step = gl.plan(T, state(9000, passed=8000, expires=-1), NOW, PLAN_CONFIG)
    assert step.judgement.kind == "expired" and step.judgement.greylisted
    assert step.write == gl.Write(T, "expired", NOW, later(7200), count_client=False)
