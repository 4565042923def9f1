"""Greylist whitelist entries in the forms administrators write them, from a review (thirty-first session):
an internationalised domain in U-labels matched no client name or sender Postfix passes in A-labels (nor the
other way round), and a recipient written as in SMTP (``<vip@example.org>``) was accepted and never matched,
nor could it be removed as ``vip@example.org``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.config import DatabaseSection
from milterd.greylist import compile_pattern
from milterd.store import Store
from tests.unit.test_greylist_review28 import greylisted, networks_left

IP = ipaddress.ip_address("192.0.2.10")


@pytest.mark.parametrize(("kind", "entry", "value"), [
    ("sender", "@bücher.example", "a@xn--bcher-kva.example"),
    ("sender", "@xn--bcher-kva.example", "a@Bücher.example"),  # an SMTPUTF8 sender
    ("sender", ".bücher.example", "a@mail.xn--bcher-kva.example"),
    ("client", ".bücher.example", "mx1.xn--bcher-kva.example"),
    ("client", "mx1.BÜCHER.example", "mx1.xn--bcher-kva.example"),
    ("recipient", "<vip@dest.example>", "vip@dest.example"),
    ("sender", "<Boss@dest.example>", "boss@dest.example"),
    ("recipient", "vip@bücher.example", "vip@xn--bcher-kva.example"),
    ("sender", "@mail.ΤΕΣΤΣ", "a@mail.τεστσ"),  # case folded letter by letter: a final Σ is σ, not ς (a second look)
    ("sender", "@mail.ΤΕΣΤΣ", "a@mail.xn--qxa2aabc"),
])
def test_an_entry_matches_what_postfix_passes(kind: str, entry: str, value: str) -> None:
    assert compile_pattern(kind, entry).matches(value, IP)


@pytest.mark.parametrize(("kind", "entry", "value"), [
    ("sender", "@bücher.example", "a@xn--bcher-kva.example.evil"),
    ("client", ".bücher.example", "xn--bcher-kva.example.evil"),
    ("recipient", "<vip@dest.example>", "vip@dest.example.evil"),
    ("sender", "@mail.ΤΕΣΤΣ", "a@mail.xn--qxa0accc"),  # mail.τεστς: another domain
])
def test_an_entry_still_matches_only_its_domain(kind: str, entry: str, value: str) -> None:
    assert not compile_pattern(kind, entry).matches(value, IP)


def test_an_entry_is_stored_in_one_form_and_removed_in_any(tmp_path: Path) -> None:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'g.sqlite'}"))
    store.upgrade()
    try:
        assert store.greylist.whitelist_add("recipient", "<VIP@dest.example>")
        assert not store.greylist.whitelist_add("recipient", "vip@dest.example")  # the same entry
        assert store.greylist.whitelist().recipients[0].matches("vip@dest.example", IP)
        assert store.greylist.whitelist_remove("recipient", "vip@dest.example")
        assert store.greylist.whitelist_add("sender", "@bücher.example")
        assert store.greylist.whitelist_remove("sender", "@xn--bcher-kva.example")
        assert store.greylist.whitelist_rows() == []
    finally:
        store.close()


def test_a_client_network_names_the_stored_networks_it_holds_or_is_inside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--client 203.0.112.0/22 found none of the /24s inside it, and 203.0.114.9/32 deleted nothing with status 0."""
    conf = greylisted(tmp_path, ["203.0.113.7", "203.0.114.7", "203.0.115.7", "198.51.100.7"])
    capsys.readouterr()
    assert main(["greylist", "list", "-c", str(conf), "--client", "203.0.112.0/22"]) == 0
    listed = capsys.readouterr().out
    assert all(net in listed for net in ("203.0.113.0/24", "203.0.114.0/24", "203.0.115.0/24")) and "198.51.100" not in listed
    assert main(["greylist", "purge", "-c", str(conf), "--client", "203.0.114.9/32"]) == 0
    assert "deleted 1 triplet" in capsys.readouterr().out
    assert main(["greylist", "purge", "-c", str(conf), "--client", "203.0.112.0/22"]) == 0
    assert networks_left(conf) == ["198.51.100.0/24"]
    assert main(["greylist", "purge", "-c", str(conf), "--client", "10.0.0.0/8"]) == 2  # 65,536 networks: refused
    assert "narrower" in capsys.readouterr().err


def test_an_empty_client_is_refused_not_a_purge_of_everything_expired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = greylisted(tmp_path, ["198.51.100.7"])
    for command in ("purge", "list"):
        assert main(["greylist", command, "-c", str(conf), "--client", ""]) == 2
    assert networks_left(conf) == ["198.51.100.0/24"]


def test_triplets_stored_under_an_earlier_netmask_are_still_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second look: a network was always rewritten to the current netmask, so the triplets stored under
    an earlier one (kept until they expire) could no longer be listed or purged by their own network."""
    conf = greylisted(tmp_path, ["203.0.114.7"])
    conf.write_text(conf.read_text() + "netmask_v4 = 26\n")
    assert main(["greylist", "purge", "-c", str(conf), "--client", "203.0.114.0/24"]) == 0  # stored at /24, now /26
    assert "deleted 1 triplet" in capsys.readouterr().out


def test_a_sender_is_case_folded_as_its_entry_is() -> None:
    """A second look: the sender the check compares was lowered by str.lower (a final Σ made ς) while the
    entry was folded letter by letter, so @ΚΑΦΕΣ-shop.example no longer whitelisted its own domain's mail."""
    from milterd import greylist as gl

    whitelist = gl.Whitelist.build([("sender", "@ΚΑΦΕΣ-shop.example")])
    assert gl.normalise_sender("<alice@ΚΑΦΕΣ-shop.example>") == "alice@καφεσ-shop.example"
    assert whitelist.sender(gl.normalise_sender("<alice@ΚΑΦΕΣ-shop.example>"))


def test_a_local_part_ending_in_sigma_matches_its_entry() -> None:
    """A third look: entries were lowered by str.lower (a final Σ before the @ made ς) while the sender was
    folded letter by letter (σ), so ΑΛΙΚΗΣ@example.org no longer whitelisted its own mail."""
    from milterd import greylist as gl

    for entry in ("ΑΛΙΚΗΣ@example.org", "ΓΙΩΡΓΟΣ@example.org"):
        whitelist = gl.Whitelist.build([("sender", entry)])
        assert whitelist.sender(gl.normalise_sender(f"<{entry}>")), entry
    assert gl.Whitelist.build([("sender", "ΓΙΩΡΓΟΣ@example.org")]).sender(gl.normalise_sender("<ΓΙΩΡΓΟΣ+news@example.org>"))
