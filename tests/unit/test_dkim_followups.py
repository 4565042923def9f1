"""DKIM follow-ups: signed mail over max_size and DMARC, revoked keys, From oversigning, keygen's hint.

DNS is the in-memory table of tests/unit/test_dkim.py; keys are generated here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dkim
import pytest

from milterd import dkimsign
from milterd.authresults import build
from milterd.checks.dkim import Dkim, DnsRecorder, verify_all
from milterd.checks.dmarc import Dmarc
from milterd.commands.dkim import run_keygen
from milterd.config import Config
from milterd.message.model import Action, Envelope, Session, Spool

from .test_dkim import MESSAGE, FakeResolver, sections, signed, verify

KEY_NAME = "sel._domainkey.signed.test"
POLICY = {"_dmarc.signed.test": "v=DMARC1; p=reject"}
#: SPF passed for an ESP's bounce domain: not aligned with From.
ESP_SPF = {"result": "pass", "sender": "bounce@esp.example"}
#: A message over [checks.dkim] max_size at its least (1K).
LONG = MESSAGE + b"Some text.\r\n" * 100
OVER = 1024


@pytest.fixture(scope="module")
def rsa_key() -> bytes:
    return dkimsign.generate("rsa", 1024)


class Resolver(FakeResolver):
    """The test table with the two calls the checks make besides txt()."""

    def stage_deadline(self, deadlines: dict[str, float], stage: str) -> float:
        return time.monotonic() + 5

    def cached(self, name: str, rtype: str) -> bool:
        return False


def envelope_of(message: bytes) -> Envelope:
    envelope = Envelope(spool=Spool(1 << 20))
    head, _, body = message.partition(b"\r\n\r\n")
    for line in head.replace(b"\r\n ", b"\n ").replace(b"\r\n\t", b"\n\t").split(b"\r\n"):
        name, _, value = line.partition(b":")
        envelope.headers.append((name.decode(), value.lstrip(b" ").replace(b"\n", b"\r\n")))
    envelope.spool.write(body)
    return envelope


def run_checks(message: bytes, txt: dict[str, str], max_size: int) -> tuple[list[Any], list[Any], Envelope]:
    """Dkim then Dmarc on *message*, with [checks.dkim] max_size and an SPF pass for an unaligned domain."""
    config = Config.model_validate({"checks": {"dkim": {"max_size": max_size}}})
    services: Any = SimpleNamespace(config=config, resolver=Resolver(txt))
    envelope = envelope_of(message)
    envelope.check_state("spf")["evaluation"] = ESP_SPF
    dkim_hits = list(Dkim(services).on_eom(Session(), envelope))
    dmarc_hits = list(Dmarc(services).on_eom(Session(), envelope))
    return dkim_hits, dmarc_hits, envelope


def test_a_signed_message_over_max_size_is_quarantined_not_rejected_nor_passed(rsa_key: bytes) -> None:
    txt = {KEY_NAME: dkimsign.public_record("rsa", rsa_key), **POLICY}
    message = signed(rsa_key, message=LONG)
    dkim_hits, [dmarc_hit], _ = run_checks(message, txt, 1 << 20)
    assert ([h.symbol for h in dkim_hits], dmarc_hit.symbol) == (["DKIM_VALID", "DKIM_VALID_AUTHOR"], "DMARC_PASS")  # verified: it passes
    [dkim_hit], [dmarc_hit], envelope = run_checks(message, txt, OVER)
    # Not verified for its size: it may be genuine or a forger's junk signature, so p=reject holds it, never rejects it.
    assert dkim_hit.symbol == "DKIM_NONE" and dkim_hit.detail.startswith("not verified: size ")
    assert (dmarc_hit.symbol, dmarc_hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)
    assert dmarc_hit.detail == "signed.test p=reject applied=quarantine (an aligned DKIM signature not verified: message over [checks.dkim] max_size)"
    assert envelope.check_state("dkim")["unverified"] == ["signed.test"]
    # Authentication-Results claims no dkim result it did not find (no dkim=none for a signed message).
    state = envelope.check_state("dkim")
    value = build("mx.test", dkim=state.get("result"), dmarc=envelope.check_state("dmarc")["result"])
    assert "dkim=" not in value and "dmarc=fail" in value


def test_an_unaligned_or_from_less_signature_over_max_size_still_fails_dmarc(rsa_key: bytes) -> None:
    # A signature that could not have aligned, or could never pass (h= without From), holds nothing back.
    other = signed(rsa_key, domain="esp.example", message=LONG)
    [_], [dmarc_hit], _ = run_checks(other, POLICY, OVER)
    assert (dmarc_hit.symbol, dmarc_hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    header = dkim.sign(LONG, b"sel", b"signed.test", rsa_key, include_headers=[b"from", b"subject"])
    no_from = header.replace(b"h=from : subject", b"h=subject").replace(b"h=from:subject", b"h=subject") + LONG
    assert b"h=subject" in no_from
    [_], [dmarc_hit], _ = run_checks(no_from, POLICY, OVER)
    assert dmarc_hit.symbol == "DMARC_FAIL_REJECT"


def test_only_the_signatures_that_would_be_verified_count(rsa_key: bytes) -> None:
    # [checks.dkim] max_signatures: the aligned signature beyond it would not have been verified either.
    message = signed(rsa_key, domain="esp.example", message=signed(rsa_key, domain="signed.test", message=LONG))
    config = Config.model_validate({"checks": {"dkim": {"max_size": OVER, "max_signatures": 1}}})
    services: Any = SimpleNamespace(config=config, resolver=Resolver(POLICY))
    envelope = envelope_of(message)
    Dkim(services).on_eom(Session(), envelope)
    assert envelope.check_state("dkim")["unverified"] == ["esp.example"]


@pytest.mark.parametrize("record", ["v=DKIM1; k=rsa; p=", "v=DKIM1; p= ", "p=", "v=DKIM1; k=rsa; t=y; p=\t"])
def test_an_empty_p_tag_is_a_revoked_key_a_permerror(rsa_key: bytes, record: str) -> None:
    # RFC 6376 §3.6.1 and §6.1.2 step 5: an empty p= means the key was revoked: PERMFAIL (key revoked).
    [result] = verify(signed(rsa_key), {KEY_NAME: record})
    assert (result.result, result.reason) == ("permerror", "key revoked")


def test_an_unusable_key_record_is_a_permerror(rsa_key: bytes) -> None:
    # RFC 6376 §6.1.2 steps 4 and 6: a key record with syntax errors or unusable key data is a PERMFAIL.
    for record in ("v=DKIM1; k=rsa; p=notbase64!", "v=DKIM1; k=rsa", "v=DKIM1; k=dsa; p=AAAA"):
        [result] = verify(signed(rsa_key), {KEY_NAME: record})
        assert result.result == "permerror", record


def test_a_good_key_after_a_revoked_one_still_passes(rsa_key: bytes) -> None:
    two = signed(rsa_key, selector="old", message=signed(rsa_key))
    txt = {"old._domainkey.signed.test": "v=DKIM1; p=", KEY_NAME: dkimsign.public_record("rsa", rsa_key)}
    results = verify_all(two, DnsRecorder(FakeResolver(txt), time.monotonic() + 5), 5, 1024)
    assert [(r.selector, r.result) for r in results] == [("old", "permerror"), ("sel", "pass")]
    # A wrong key is still a plain failure.
    [wrong] = verify(signed(dkimsign.generate("rsa", 1024)), {KEY_NAME: dkimsign.public_record("rsa", rsa_key)})
    assert wrong.result == "fail"


def h_tag(value: str) -> list[str]:
    tags = dict(part.strip().partition("=")[::2] for part in "".join(value.split()).split(";") if "=" in part)
    return tags["h"].lower().split(":")


@pytest.mark.parametrize("headers", [["From", "To", "Subject"], ["subject", "from"], ["From", "From", "Subject"]])
def test_custom_headers_still_oversign_from(rsa_key: bytes, headers: list[str]) -> None:
    key = dkimsign.SigningKey("signed.test", "sel", "rsa", rsa_key)
    [value] = dkimsign.sign(*sections(MESSAGE), [key], headers)
    assert h_tag(value).count("from") >= 2
    # Another From added on top breaks the signature for every verifier, not only dkimpy (which adds one itself).
    added = b"DKIM-Signature: " + value.replace("\n", "\r\n").encode() + b"\r\nFrom: ceo@signed.test\r\n" + MESSAGE
    signer = dkim.DKIM(added)
    sig, include, sigheaders = signer.verify_headerprep(0)
    assert include.count(b"from") >= 2


def test_a_message_with_two_from_fields_gets_from_signed_three_times(rsa_key: bytes) -> None:
    key = dkimsign.SigningKey("signed.test", "sel", "rsa", rsa_key)
    two = b"From: other@signed.test\r\n" + MESSAGE
    [value] = dkimsign.sign(*sections(two), [key], ["From", "Subject"])
    assert h_tag(value).count("from") == 3
    [default] = dkimsign.sign(*sections(two), [key], [])
    assert h_tag(default).count("from") >= 3


def test_keygen_hint_names_the_key_file_by_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # key_file is read relative to milter.conf's directory, not to where keygen ran.
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(domain="example.org", selector="s1", type="ed25519", bits=2048, output=None)
    assert run_keygen(args) == 0
    out = capsys.readouterr().out
    assert f'key_file = "{tmp_path / "example.org.s1.key"}"' in out


def test_keygen_hint_is_valid_toml_for_any_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    target = tmp_path / 'odd "name" \\ x.key'
    args = argparse.Namespace(domain="example.org", selector="s1", type="ed25519", bits=2048, output=str(target))
    assert run_keygen(args) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if "key_file" in line)
    parsed = tomllib.loads(hint.removeprefix(";").strip().removeprefix("[dkim_signing]").strip())
    assert Path(parsed["keys"][0]["key_file"]) == target


def test_keygen_takes_a_u_label_domain_as_the_config_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # [dkim_signing] keys takes domain = "Bücher.example" (signed as its A-label); keygen refused it as "not a valid domain".
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(domain="Bücher.Example.", selector="s1", type="ed25519", bits=2048, output=None)
    assert run_keygen(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "xn--bcher-kva.example.s1.key").exists()
    assert 's1._domainkey.xn--bcher-kva.example.' in out and 'domain = "xn--bcher-kva.example"' in out
    assert run_keygen(argparse.Namespace(domain="bad domain.example", selector="s1", type="ed25519", bits=2048, output=None)) == 2
    assert "is not a valid domain" in capsys.readouterr().err
