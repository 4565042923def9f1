"""ARC sealing (RFC 8617 §5.1) judged by dkimpy's arc_verify on the message as Postfix delivers it.

DNS is the in-memory table of tests/unit/test_dkim.py; keys are generated here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import dkim
import pytest

from milterd import dkimsign
from milterd.checks.arc import ArcResult, ArcSealer, verify_chain
from milterd.checks.dkim import DnsRecorder
from milterd.checks.spf import Spf
from milterd.config import load_config
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.message.policy import plan_headers
from milterd.services import build as build_services

from .test_dkim import MESSAGE, FakeResolver
from .test_dkim_review import delivered

LIST_KEY = "arc._domainkey.list.test"
SEAL_KEY = "arc._domainkey.seal.test"


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    return {"list": dkimsign.generate("rsa", 1024), "seal": dkimsign.generate("rsa", 1024)}


def records(keys: dict[str, bytes]) -> dict[str, str]:
    return {LIST_KEY: dkimsign.public_record("rsa", keys["list"]), SEAL_KEY: dkimsign.public_record("rsa", keys["seal"])}


def lookup(keys: dict[str, bytes]) -> Any:
    table = records(keys)
    return lambda name, timeout=5: table.get(name.decode().rstrip("."), "").encode()


def list_hop(message: bytes, key: bytes, arc: str, hop: int = 1) -> bytes:
    """*message* sealed by list.test's hop *hop*, its Authentication-Results saying ``arc=ARC``."""
    authserv_id = f"hop{hop}.list.test"  # each hop its own id: dkimpy's sealer reads every A-R of its id
    stamped = f"Authentication-Results: {authserv_id}; arc={arc}\r\n".encode() + message
    return b"".join(dkim.arc_sign(stamped, b"arc", b"list.test", key, authserv_id.encode())) + stamped


def sealer_services(tmp_path: Path, key: bytes, authserv_id: str = "mx.test") -> Any:
    dkimsign.write_private(tmp_path / "seal.key", key)
    conf = tmp_path / "milter.conf"
    conf.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "m.sqlite"}"\n'
        f'[milter]\nauthserv_id = "{authserv_id}"\n'
        '[checks.arc]\nseal = true\nseal_domain = "seal.test"\nseal_selector = "arc"\nseal_key_file = "seal.key"\n'
    )
    return build_services(load_config(conf))


def envelope_of(message: bytes) -> Envelope:
    head, _, body = message.partition(b"\r\n\r\n")
    envelope = Envelope(spool=Spool(1 << 20))
    for line in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = line.partition(b":")
        envelope.headers.append((name.decode(), value))  # its leading space kept, as delivered() writes it back
    envelope.spool.write(body)
    return envelope


def through_milterd(services: Any, keys: dict[str, bytes], message: bytes, action: Action = Action.ACCEPT, **resolver: Any) -> tuple[Verdict, bytes]:
    """*message* as milterd's ARC check, Authentication-Results and sealer leave it (the pipeline's verdict order)."""
    envelope = envelope_of(message)
    session = Session()
    if envelope.header_count("ARC-Seal"):
        dnsfunc = DnsRecorder(FakeResolver(records(keys), **resolver), time.monotonic() + 5)
        envelope.check_state("arc")["result"] = verify_chain(envelope.message_bytes(), dnsfunc, 1024)
    else:
        envelope.check_state("arc")["result"] = ArcResult("none")
    verdict = Verdict(action, 0.0, {}, {}, "")
    for check in (Spf(services), ArcSealer(services)):
        verdict = check.on_verdict(session, envelope, verdict)
    edits = envelope.edits + plan_headers(verdict, {}, envelope.header("Subject"), services.config.actions)
    return verdict, delivered(envelope, edits)


def seals(message: bytes) -> list[str]:
    return [" ".join(v.split()) for n, v in dkim.rfc822_parse(message)[0] if n.lower() == b"arc-seal" for v in [v.decode()]]


def test_a_message_without_a_chain_is_sealed_i1_cv_none(tmp_path: Path, keys: dict[str, bytes]) -> None:
    services = sealer_services(tmp_path, keys["seal"])
    verdict, out = through_milterd(services, keys, MESSAGE)
    assert "ARC_SEALED" in verdict.symbols
    cv, results, _ = dkim.arc_verify(out, dnsfunc=lookup(keys))
    assert cv == dkim.CV_Pass and len(results) == 1
    assert "i=1;" in seals(out)[0] and "cv=none" in seals(out)[0]
    services.close()


def test_a_passing_chain_is_extended_with_the_next_instance_cv_pass(tmp_path: Path, keys: dict[str, bytes]) -> None:
    services = sealer_services(tmp_path, keys["seal"])
    chain = list_hop(list_hop(MESSAGE, keys["list"], "none"), keys["list"], "pass", 2)
    verdict, out = through_milterd(services, keys, chain)
    assert "ARC_SEALED" in verdict.symbols
    cv, results, _ = dkim.arc_verify(out, dnsfunc=lookup(keys))
    assert cv == dkim.CV_Pass and [r["instance"] for r in results] == [3, 2, 1]
    [ours] = [s for s in seals(out) if "d=seal.test" in s]
    assert "i=3;" in ours and "cv=pass" in ours
    [aar] = [" ".join(v.decode().split()) for n, v in dkim.rfc822_parse(out)[0] if n == b"ARC-Authentication-Results" and b"i=3;" in v]
    assert aar.startswith("i=3; mx.test;") and "arc=pass" in aar
    services.close()


def broken_then_failed(keys: dict[str, bytes]) -> bytes:
    """A chain whose i=1 broke on the way (its body changed) and whose i=2 sealer said so: cv=fail."""
    first = list_hop(MESSAGE, keys["list"], "none").replace(b"see you tomorrow.", b"see you today.")
    return list_hop(first, keys["list"], "fail", 2)


def test_a_chain_whose_newest_seal_says_fail_is_not_extended(tmp_path: Path, keys: dict[str, bytes]) -> None:
    chain = broken_then_failed(keys)
    assert "cv=fail" in seals(chain)[0] and "i=2;" in seals(chain)[0]
    services = sealer_services(tmp_path, keys["seal"])
    verdict, out = through_milterd(services, keys, chain)
    # RFC 8617 §5.1: the chain has already failed; no new ARC Set is added to it.
    assert "ARC_SEALED" not in verdict.symbols and "ARC_SEAL_ERROR" in verdict.symbols
    assert not [s for s in seals(out) if "d=seal.test" in s]
    services.close()


def test_a_chain_that_breaks_here_is_sealed_once_with_cv_fail(tmp_path: Path, keys: dict[str, bytes]) -> None:
    chain = list_hop(MESSAGE, keys["list"], "none").replace(b"see you tomorrow.", b"see you today.")
    services = sealer_services(tmp_path, keys["seal"])
    verdict, out = through_milterd(services, keys, chain)
    assert "ARC_SEALED" in verdict.symbols
    [ours] = [s for s in seals(out) if "d=seal.test" in s]
    assert "i=2;" in ours and "cv=fail" in ours  # §5.1.2: the first to see the failure marks it
    _, results, _ = dkim.arc_verify(out, dnsfunc=lookup(keys))
    # dkimpy's validator stops at a cv=fail seal (§5.2 step 2); our set's AMS holds over the message as delivered.
    assert (results[0]["instance"], results[0]["cv"], results[0]["ams-valid"]) == (2, b"fail", True)
    services.close()


def test_a_chain_not_validated_for_a_dns_error_is_not_sealed_as_failed(tmp_path: Path, keys: dict[str, bytes]) -> None:
    chain = list_hop(list_hop(MESSAGE, keys["list"], "none"), keys["list"], "pass", 2)
    services = sealer_services(tmp_path, keys["seal"])
    verdict, out = through_milterd(services, keys, chain, failing=(LIST_KEY,))
    # A cv=fail seal would end a valid chain for every later hop because of our resolver's timeout.
    assert "ARC_SEALED" not in verdict.symbols and "ARC_SEAL_ERROR" in verdict.symbols
    assert not [s for s in seals(out) if "d=seal.test" in s]
    services.close()


def test_an_authserv_id_in_capitals_is_sealed(tmp_path: Path, keys: dict[str, bytes]) -> None:
    services = sealer_services(tmp_path, keys["seal"], authserv_id="MX.Example.TEST")
    verdict, out = through_milterd(services, keys, MESSAGE)
    assert "ARC_SEALED" in verdict.symbols, verdict.details
    cv, _, _ = dkim.arc_verify(out, dnsfunc=lookup(keys))
    [aar] = [v.decode() for n, v in dkim.rfc822_parse(out)[0] if n == b"ARC-Authentication-Results"]
    assert cv == dkim.CV_Pass and aar.lower().startswith(" i=1; mx.example.test;")  # RFC 8601 §2.5: case-insensitive
    services.close()
