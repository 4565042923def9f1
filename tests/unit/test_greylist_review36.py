"""Greylisting, a review of the thirty-sixth session: a recipient whitelist entry does not exempt a recipient whose
local part routes the mail elsewhere, entries that could never match are refused with the form meant, and
``purge --client`` removes the network's auto whitelisting, which ``greylist clients`` shows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import insert

from milterd import greylist as gl
from milterd.cli import main
from milterd.commands.greylist import stored_networks
from milterd.config import Config, ConfigError, GreylistSection, load_config
from milterd.message.policy import wants_spam
from milterd.store import Store, schema, utcnow
from tests.unit.test_greylist_review28 import greylisted, networks_left


# --- recipients that route elsewhere -------------------------------------------------------------
@pytest.mark.parametrize("entry", ["@support.example", ".support.example", "support.example", "/@support\\.example$/"])
@pytest.mark.parametrize("recipient", ["ceo%mx.example@support.example", "mx.example!ceo@support.example", '"ceo@mx.example"@support.example'])
def test_a_recipient_whose_local_part_routes_elsewhere_is_not_whitelisted(entry: str, recipient: str) -> None:
    # Postfix delivers each to ceo@mx.example when support.example is local (allow_percent_hack, swap_bangpath,
    # resolve_dequoted_address): "@support.example" exempted every local mailbox from greylisting.
    whitelist = gl.Whitelist.build([("recipient", entry)])
    assert whitelist.recipient(recipient) is None
    assert whitelist.recipient("helpdesk@support.example") == entry


# --- entries that never matched ----------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "entry", "reason"), [
    ("client", "198.51.100.", "'198.51.100.' is a partial address, which matches no client: write the network 198.51.100.0/24"),
    ("client", "198.51", "'198.51' is a partial address, which matches no client: write the network 198.51.0.0/16"),
    ("client", "999.1.1.1", "'999.1.1.1' is neither a network nor a host name"),
    ("client", "2001:db8:", "'2001:db8:' is neither a network nor a host name"),
    ("client", "*.partner.example", "'*.partner.example': '*' is no wildcard here; write a name suffix (.example.org) or a /regex/"),
    ("sender", "*@partner.example", "'*@partner.example': '*' is no wildcard here; write a domain (@example.org)"),
])
def test_an_entry_that_matches_nothing_is_refused_with_the_form_meant(kind: str, entry: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        gl.compile_pattern(kind, entry)
    assert str(info.value).startswith(reason)
    with pytest.raises(ConfigError) as refused:
        Config().with_changes({f"greylist.whitelist_{kind}s": [entry]})
    assert f"whitelist_{kind}s" in str(refused.value) and reason in str(refused.value)


@pytest.mark.parametrize(("kind", "entry", "value", "name"), [
    ("client", "mx.partner.example.", "mx.partner.example", "mx.partner.example"),
    ("client", ".partner.example.", "mx.partner.example", "mx.partner.example"),
    ("sender", "@partner.example.", "alice@partner.example", ""),
    ("recipient", "<help@support.example.>", "help@support.example", ""),
])
def test_a_name_written_with_its_trailing_dot_matches(kind: str, entry: str, value: str, name: str) -> None:
    whitelist = gl.Whitelist.build([(kind, entry)])
    found = {"client": lambda: whitelist.client("192.0.2.1", name), "sender": lambda: whitelist.sender(value),
             "recipient": lambda: whitelist.recipient(value)}[kind]()
    assert found == entry.strip("<>").rstrip(".")


# --- purge --client and the auto whitelist ------------------------------------------------------------
def seed_client(conf: Path, network: str, passes: int) -> None:
    store = Store(load_config(conf).database)
    try:
        with store.engine.begin() as connection:
            connection.execute(insert(schema.greylist_clients).values(network=network, passes=passes, last_seen=utcnow() - dt.timedelta(minutes=5)))
    finally:
        store.close()


def test_purge_client_removes_the_network_s_auto_whitelisting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Only the network's triplets were deleted: its greylist_clients row stayed, and it stayed auto-whitelisted.
    conf = greylisted(tmp_path, ["198.51.100.7"])
    seed_client(conf, "198.51.100.0/24", GreylistSection().auto_whitelist_after)
    seed_client(conf, "203.0.113.0/24", 1)
    capsys.readouterr()
    assert main(["greylist", "clients", "-c", str(conf), "--whitelisted", "--json"]) == 0
    assert [row["network"] for row in json.loads(capsys.readouterr().out)] == ["198.51.100.0/24"]
    assert main(["greylist", "purge", "-c", str(conf), "--client", "198.51.100.0/24", "--dry-run"]) == 0
    assert "would delete 1 triplet(s) and 1 client network(s)" in capsys.readouterr().out
    assert main(["greylist", "purge", "-c", str(conf), "--client", "198.51.100.0/24"]) == 0
    assert capsys.readouterr().out == "deleted 1 triplet(s) and the successful retries of 1 client network(s)\n"
    assert networks_left(conf) == []
    assert main(["greylist", "clients", "-c", str(conf), "--json"]) == 0
    assert [(row["network"], row["passes"], row["whitelisted"]) for row in json.loads(capsys.readouterr().out)] == [("203.0.113.0/24", 1, False)]


def test_purge_triplet_leaves_the_network_s_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = greylisted(tmp_path, ["198.51.100.7"])
    seed_client(conf, "198.51.100.0/24", 2)
    assert main(["greylist", "purge", "-c", str(conf), "--triplet", "198.51.100.0/24", "alice@example.org", "bob@example.com"]) == 0
    assert "deleted 1 triplet(s)\n" == capsys.readouterr().out[-len("deleted 1 triplet(s)\n"):]
    assert main(["greylist", "clients", "-c", str(conf)]) == 0
    assert "198.51.100.0/24" in capsys.readouterr().out


@pytest.mark.parametrize("recipient", ['"john.doe"@support.example', "john\\ doe@support.example", '"helpdesk"@support.example'])
def test_a_quoted_local_part_that_names_a_mailbox_is_whitelisted(recipient: str) -> None:
    # A second look: any quote or backslash counted as routing, so "john.doe"@support.example (delivered to
    # john.doe@support.example) was greylisted despite "@support.example".
    assert gl.Whitelist.build([("recipient", "@support.example")]).recipient(recipient) == "@support.example"


def test_a_quoted_address_still_routes_past_spam_lovers() -> None:
    # The routing rule spam_lovers shares, its quoting now undone, still refuses a quoted "@".
    assert not wants_spam(['"abuse@x.example"@example.org'], ["abuse@", '"abuse@x.example"@'])
    assert wants_spam(["abuse@example.org"], ["abuse@"])


def test_a_stored_entry_an_older_version_took_is_listed_as_unused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A second look: the check skips such a row silently; whitelist list showed it as a working entry.
    conf = greylisted(tmp_path, [])
    store = Store(load_config(conf).database)
    try:
        with store.engine.begin() as connection:
            connection.execute(insert(schema.greylist_whitelist).values(kind="client", value="192.0.2.", comment="", created_at=utcnow()))
    finally:
        store.close()
    capsys.readouterr()
    assert main(["greylist", "whitelist", "list", "-c", str(conf)]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if "192.0.2." in line]
    assert line.endswith("store  (unused: '192.0.2.' is a partial address, which matches no client: write the network 192.0.2.0/24)")
    assert main(["greylist", "whitelist", "list", "-c", str(conf), "--json"]) == 0
    [entry] = [e for e in json.loads(capsys.readouterr().out) if e["value"] == "192.0.2."]
    assert entry["unusable"].startswith("'192.0.2.' is a partial address")


def test_a_star_within_a_local_part_is_an_address() -> None:
    assert gl.Whitelist.build([("sender", "vip*@example.org")]).sender("vip*@example.org") == "vip*@example.org"
    for entry in ("*@example.org", "vip@*.example.org", "@*.example.org"):
        with pytest.raises(ValueError, match="'\\*' is no wildcard here"):
            gl.compile_pattern("sender", entry)


def test_a_nat64_network_names_the_ipv4_network_behind_it() -> None:
    # A second look: an address in 64:ff9b::/96 stood for its IPv4 /24, a network there for nothing stored.
    assert stored_networks("64:ff9b::c633:6400/120", Config()) == ["198.51.100.0/24"]
    assert stored_networks("64:ff9b::198.51.100.7", Config()) == ["198.51.100.0/24"]
