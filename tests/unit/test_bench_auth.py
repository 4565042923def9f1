"""The auth rows' pure parts: the signed message, the published records, the outcome and log checks."""

from __future__ import annotations

import email
import ipaddress
import re
from typing import Any

import dkim
import pytest

from bench import auth
from bench.corpus import SENDER, client_for
from milterd import dkimsign
from milterd.checks.uribl import UriblChecks, link_targets
from milterd.content.mimetext import extract


@pytest.fixture(scope="module")
def key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def published(records: list[str], name: str) -> str:
    """The TXT content of *name* in unbound local-data lines (strings joined)."""
    [line] = [r for r in records if r.startswith(f"{name}. TXT ")]
    return "".join(re.findall(r'"([^"]*)"', line))


def test_message_is_about_the_size_with_one_link_looked_up_and_unlisted() -> None:
    raw = auth.message(7, 5120)
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert 5000 <= len(body) <= 5120
    assert b"\n" not in raw.replace(b"\r\n", b"")
    uris = extract(raw).uris
    assert uris == ["http://shop.unlisted-bench.test/offer?id=7"]
    domains, addresses = link_targets(uris, frozenset(UriblChecks().skip_domains), 20)
    assert domains == ["unlisted-bench.test"] and addresses == []  # looked up, not skipped
    listed = [line for dataset, text in auth.LISTS.values() if dataset == "dnset" for line in text.splitlines()]
    assert not any("unlisted-bench.test" in line for line in listed)


def test_messages_of_the_pool_are_distinct(key: bytes) -> None:
    pool = auth.signed_pool(key, 1024, count=3)
    ids = {email.message_from_bytes(m.data)["Message-ID"] for m in pool}
    assert len(ids) == 3 and all(m.label == "ham" for m in pool)


def test_signed_message_verifies_with_the_published_key_and_aligns(key: bytes) -> None:
    records = auth.local_data(dkimsign.public_record("rsa", key))
    raw = auth.sign(auth.message(1, 5120), key)
    assert raw.startswith(b"DKIM-Signature: ") and b"\r\n\r\n" in raw
    record = published(records, f"{auth.SELECTOR}._domainkey.{auth.DOMAIN}").encode()
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: record if name == f"{auth.SELECTOR}._domainkey.{auth.DOMAIN}.".encode() else b"")
    parsed = email.message_from_bytes(raw)
    assert email.utils.parseaddr(parsed["From"])[1].endswith("@" + auth.DOMAIN)  # DMARC: d= aligned with From
    assert published(records, f"_dmarc.{auth.DOMAIN}").startswith("v=DMARC1; p=reject")


def test_spf_of_the_sender_domain_covers_the_replay_clients() -> None:
    assert SENDER.endswith("@" + auth.DOMAIN)
    spf = published(auth.local_data("v=DKIM1; p=x"), auth.DOMAIN)
    networks = [ipaddress.ip_network(t[4:]) for t in spf.split() if t.startswith("ip4:")]
    for index in range(200):
        address = ipaddress.ip_address(client_for("ham", index)["ADDR"])
        assert any(address in n for n in networks)


def test_authenticated_counts_rows_with_both_symbols_and_no_failed_lookup() -> None:
    rows: list[dict[str, Any]] = [
        {"symbols": {"DKIM_VALID": -0.1, "DMARC_PASS": -0.5, "SPF_PASS": -0.5}},
        {"symbols": {"DKIM_VALID": -0.1}},
        {"symbols": {"DMARC_PASS": -0.5}},
        {"symbols": {"DKIM_VALID": -0.1, "DMARC_PASS": -0.5, "URIBL_TEMPFAIL": 0}},
        {"symbols": {}},
        {},
    ]
    assert auth.authenticated(rows) == 1
    assert auth.authenticated([]) == 0


def test_refusals_accepts_only_every_message_accepted() -> None:
    assert auth.refusals("ham accepted 1000", 1000) == ""
    assert "ham accepted 990, ham refused 10" in auth.refusals("ham accepted 990, ham refused 10", 1000)
    assert auth.refusals("ham accepted 999", 1000) != ""
    assert auth.refusals("", 5) != ""


def test_smtp_source_row_sends_the_signed_message_file_from_a_covered_sender(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, key: bytes) -> None:
    import subprocess

    from bench import scenarios

    sent: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: sent.append(command) or subprocess.CompletedProcess(command, 0, "", ""))
    message = tmp_path / "signed.eml"
    message.write_bytes(auth.sign(auth.message(0, 5120), key).replace(b"\r\n", b"\n"))
    assert scenarios.smtp_source(2525, 10, 2, 5120, message).ok
    assert scenarios.smtp_source(2525, 10, 2, 5120).ok
    with_file, generated = sent
    assert with_file[with_file.index("-F") + 1] == str(message) and "-l" not in with_file
    assert generated[generated.index("-l") + 1] == "5120" and "-F" not in generated
    # smtp-source appends CRLF to each line: the file has LF ends only, and the copy Postfix gets still verifies.
    assert b"\r" not in message.read_bytes()
    relayed = message.read_bytes().replace(b"\n", b"\r\n")
    record = auth.local_data(dkimsign.public_record("rsa", key))
    txt = published(record, f"{auth.SELECTOR}._domainkey.{auth.DOMAIN}").encode()
    assert dkim.verify(relayed, dnsfunc=lambda name, timeout=5: txt)
    # SPF: smtp-source's sender is in the signing domain, whose record covers 127.0.0.1.
    assert scenarios.SENDER.endswith("@" + auth.DOMAIN)
    spf = published(auth.local_data("v=DKIM1; p=x"), auth.DOMAIN)
    assert any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(t[4:]) for t in spf.split() if t.startswith("ip4:"))


def test_bench_rows_have_unique_names_and_the_auth_rows_their_references() -> None:
    from bench.scenarios import MILTERD_ROWS, SCENARIOS

    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    by_name = {s.name: s for s in SCENARIOS}
    assert {t.reference for t in by_name["auth-source"].targets} == {"inet", "auth-source-core"}
    assert {t.reference for t in by_name["checks"].targets} == {"inet"}
    assert {"auth", "auth-core", "auth-source", "auth-source-core"} <= set(MILTERD_ROWS)
