"""Review 16: our Authentication-Results header folded (not one line past RFC 5322's 998), the copy an
ARC seal is computed over written with CRLF as Postfix delivers it, and mail whose Subject is tagged
(rewrite_subject, a quarantine over its threshold) sealed over the tagged Subject.

Each test names what it found on 5071120.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import authres
import dkim
import pytest

from milterd import authresults, dkimsign
from milterd.authresults import authserv_id_of, build, claims
from milterd.checks.arc import ArcResult, ArcSealer, message_for_seal, verify_chain
from milterd.checks.dkim import DnsRecorder, SignatureResult
from milterd.checks.dmarc import Evaluation
from milterd.checks.spf import Spf
from milterd.config import Config, load_config
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.message.model import header_safe as _header_safe
from milterd.message.policy import FOLD_WIDTH, plan_headers
from milterd.services import build as build_services

from .test_dkim import MESSAGE, FakeResolver
from .test_dkim_review import delivered

FIELD = "Authentication-Results: "
SEAL_KEY = "arc._domainkey.seal.test"
LIST_KEY = "arc._domainkey.list.test"


def long_domain(n: int) -> str:
    """A domain of 250 characters (labels of at most 63), the *n*-th of a kind."""
    domain = f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{chr(ord('d') + n) * 53}.test"
    assert len(domain) == 250
    return domain


LONG = [SignatureResult(long_domain(n), f"selector{n}-" + "s" * 50, "permerror", "the key record name is no DNS name") for n in range(5)]
SPF = {"result": "pass", "identity": "mailfrom", "sender": "alice@signed.test", "helo": "client.example.org"}


def physical_lines(value: str) -> list[str]:
    return (FIELD + value).split("\n")


def elements_of(line: str) -> list[str]:
    """The space-separated elements of one line of our header, a quoted string kept whole."""
    return re.findall(r'(?:"(?:[^"\\]|\\.)*"|[^\s"])+', line)


def parsed(value: str) -> list[tuple[str, str, dict[str, str]]]:
    """*value* unfolded (CRLF or LF removed, RFC 5322 §2.2.3) and read by authres."""
    header = authres.AuthenticationResultsHeader.parse(FIELD + value.replace("\r\n", "").replace("\n", ""))
    return [(r.method, r.result, {f"{p.type}.{p.name}": str(p.value) for p in r.properties}) for r in header.results]


def spf_check(authserv_id: str = "mx.test") -> Spf:
    config = Config.model_validate({"milter": {"authserv_id": authserv_id, "hostname": "host.test"}})
    return Spf(SimpleNamespace(config=config, resolver=None))  # type: ignore[arg-type]


def our_header(envelope: Envelope, session: Session | None = None) -> str:
    verdict = Verdict(Action.ACCEPT, 0.0, {}, {}, "")
    spf_check().on_verdict(session or Session(), envelope, verdict)
    [value] = [e.value for e in envelope.edits if e.name == "Authentication-Results" and e.op == "insert"]
    return value


# --- 1. the header milterd adds is folded -------------------------------------------------------


def test_five_long_signatures_give_a_header_folded_under_998_octets_a_line() -> None:
    """On 5071120: one line of 1,865 characters (Postfix's smtp client then breaks it inside a d=)."""
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.check_state("spf")["evaluation"] = SPF
    envelope.check_state("dkim")["result"] = LONG
    envelope.check_state("dmarc")["result"] = Evaluation("fail", "signed.test", "reject", "reject")
    envelope.check_state("arc")["result"] = ArcResult("none")
    value = our_header(envelope)
    one_line = build("mx.test", spf=SPF, dkim=LONG, dmarc=Evaluation("fail", "signed.test", "reject", "reject"), arc=ArcResult("none"))
    assert len(FIELD + one_line) > 998  # what would have been written
    lines = physical_lines(value)
    assert len(lines) > 1 and all(len(line.encode()) <= 998 for line in lines)
    # As short as the elements allow: a line past FOLD_WIDTH is one element alone (a 259-character header.d=).
    assert all(len(line) <= FOLD_WIDTH or len(elements_of(line)) == 1 for line in lines[1:]), lines
    assert all(line[0] == " " for line in lines[1:])  # each a continuation line
    # Unfolded, the very value it was: every reader of the one line reads it the same.
    assert value.replace("\n", "") == one_line
    assert [d["header.d"] for m, _, d in parsed(value) if m == "dkim"] == [s.domain for s in LONG]
    assert [d["header.s"] for m, _, d in parsed(value) if m == "dkim"] == [s.selector for s in LONG]
    assert authserv_id_of(value) == "mx.test" and claims(value, "mx.test")
    # What the ARC sealer reads is the header as written.
    assert envelope.check_state("spf")["authentication_results"] == value


def test_a_header_within_998_octets_stays_the_one_line_it_was() -> None:
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.check_state("spf")["evaluation"] = SPF
    envelope.check_state("dkim")["result"] = [SignatureResult("signed.test", "sel", "pass")]
    envelope.check_state("dmarc")["result"] = Evaluation("pass", "signed.test", "reject", "none")
    value = our_header(envelope, Session(auth_user="alice"))
    assert "\n" not in value and len(FIELD + value) > FOLD_WIDTH
    assert value == build("mx.test", auth_user="alice", spf=SPF, dkim=[SignatureResult("signed.test", "sel", "pass")],
                          dmarc=Evaluation("pass", "signed.test", "reject", "none"))


@pytest.mark.parametrize("ascii_only", [False, True])
def test_a_folded_header_reads_back_as_the_one_line_whatever_its_values(ascii_only: bool) -> None:
    """Quoted reasons with ';' and '@', quoted addresses, UTF-8: folds never go inside one of them."""
    dkim_results = [
        *LONG[:3],
        SignatureResult("d.test", "s", "permerror", reason="Unexpected characters in RFC822 header: b'X: a@b; dkim=pass'"),
        SignatureResult("e.test", "s", "fail", reason='body "hash" mismatch; dkim=pass ' + "x" * 150),
    ]
    spf = {"result": "fail", "identity": "mailfrom", "sender": "x; dkim=pass \"q\"@évil.example", "helo": "h"}
    kwargs: dict[str, Any] = {"auth_user": "jörg@x; dmarc=pass", "spf": spf, "dkim": dkim_results, "arc": ArcResult("pass", ("list.test",)),
                              "dmarc": Evaluation("fail", "a.test", "reject", "reject"), "ascii_only": ascii_only}
    one_line, value = build("mx.test", **kwargs), build("mx.test", folded=True, **kwargs)
    assert "\n" in value and value.replace("\n", "") == one_line
    if ascii_only:  # authres (so dkimpy) reads ASCII only: the copy an ARC seal attests
        assert parsed(value) == parsed(one_line) and len(parsed(value)) == 9
    assert authserv_id_of(value) == "mx.test"
    assert all(len(line.encode()) <= 998 for line in physical_lines(value))
    # The adapter sends the folds as they are (each continuation line starts with a space).
    assert _header_safe(value) == value


def test_a_value_longer_than_any_address_is_left_out_rather_than_passing_998() -> None:
    """On 5071120: a 900-character envelope sender was written whole, one line past 998 whatever the folding."""
    spf = {"result": "softfail", "identity": "mailfrom", "sender": "a" * 900 + "@example.org", "helo": "h"}
    value = build("mx.test", spf=spf, auth_user="u" * 600)
    assert len((FIELD + value).encode()) <= 998
    assert parsed(value) == [("auth", "pass", {}), ("spf", "softfail", {"smtp.mailfrom": "example.org"})]  # its domain alone
    # One SMTP allows is kept.
    address = "a" * 64 + "@" + long_domain(0)
    assert parsed(build("mx.test", spf={**spf, "sender": address}))[0][2] == {"smtp.mailfrom": address}


def test_the_memo_keeps_the_folded_and_the_one_line_value_apart() -> None:
    authresults._built.cache_clear()  # noqa: SLF001 - the memo's own counters
    kwargs: dict[str, Any] = {"spf": SPF, "dkim": LONG}
    folded, again = build("mx.test", folded=True, **kwargs), build("mx.test", folded=True, **kwargs)
    one_line = build("mx.test", **kwargs)
    info = authresults._built.cache_info()  # noqa: SLF001
    assert (info.hits, info.misses) == (1, 2)
    assert folded is again and "\n" in folded and "\n" not in one_line


# --- 2. the copy the seal is computed over ------------------------------------------------------


def envelope_from(message: bytes) -> Envelope:
    head, _, body = message.partition(b"\r\n\r\n")
    envelope = Envelope(spool=Spool(1 << 20))
    for line in re.split(rb"\r\n(?![ \t])", head):
        envelope.raw_headers.append(line)
        name, _, value = line.partition(b":")
        envelope.headers.append((name.decode(), value.lstrip()))
    envelope.spool.write(body)
    return envelope


def test_the_sealed_copy_has_our_folded_header_with_crlf_as_postfix_delivers_it() -> None:
    """On 5071120: the folds went into the sealed copy as bare LFs."""
    forged = b"Authentication-Results: mx.test;\r\n\tdkim=pass header.d=signed.test\r\n"
    other = b"Authentication-Results: other.example; spf=pass\r\n"
    envelope = envelope_from(forged + other + MESSAGE)
    # As build(..., folded=True) writes it (written out here: 5071120 had no folded=), and with a line
    # that starts without white space, which the adapter folds with a tab.
    value = "mx.test;\n spf=pass smtp.mailfrom=alice@signed.test;\n dkim=permerror\n header.d=signed.test\nheader.s=sel;\n\n arc=none"
    out = message_for_seal(envelope, "mx.test", value)
    head, _, body = out.partition(b"\r\n\r\n")
    assert re.search(rb"(?<!\r)\n", head + b"\r\n") is None and b"\r" not in head.replace(b"\r\n", b"")
    # Our header as the adapter hands it to Postfix, each line ended with CRLF; the forged one gone, the rest as
    # received but for other hosts' Authentication-Results, which no seal covers (left out since the 32nd review).
    ours = (FIELD + _header_safe(value)).replace("\n", "\r\n").encode() + b"\r\n"
    assert out == ours + MESSAGE
    assert other not in out
    assert body == MESSAGE.partition(b"\r\n\r\n")[2]
    # dkimpy reads it as one header with all five results.
    headers, _ = dkim.rfc822_parse(out)
    assert [n for n, _ in headers][:2] == [b"Authentication-Results", b"From"]
    assert headers[0][1] == ours[len(FIELD) - 1:]
    assert parsed(headers[0][1].decode()) == [("spf", "pass", {"smtp.mailfrom": "alice@signed.test"}),
                                              ("dkim", "permerror", {"header.d": "signed.test", "header.s": "sel"}), ("arc", "none", {})]


# --- 3. rewrite_subject and quarantined mail sealed over the tagged Subject --------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    return {"list": dkimsign.generate("rsa", 1024), "seal": dkimsign.generate("rsa", 1024)}


def lookup(keys: dict[str, bytes]) -> Any:
    table = {SEAL_KEY: dkimsign.public_record("rsa", keys["seal"]), LIST_KEY: dkimsign.public_record("rsa", keys["list"])}
    return lambda name, timeout=5: table.get(name.decode().rstrip("."), "").encode()


@pytest.fixture()
def services(tmp_path: Path, keys: dict[str, bytes]) -> Any:
    dkimsign.write_private(tmp_path / "seal.key", keys["seal"])
    conf = tmp_path / "milter.conf"
    conf.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "m.sqlite"}"\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\n'
        '[milter]\nauthserv_id = "mx.test"\n'
        '[checks.arc]\nseal = true\nseal_domain = "seal.test"\nseal_selector = "arc"\nseal_key_file = "seal.key"\n'
    )
    built = build_services(load_config(conf))
    yield built
    built.close()


def through_milterd(services: Any, keys: dict[str, bytes], message: bytes, verdict: Verdict, dkim_results: Any = None) -> tuple[Verdict, bytes]:
    """*message* as milterd's ARC check, Authentication-Results and sealer leave it, the pipeline's edits made."""
    envelope = envelope_from(message)
    if envelope.header_count("ARC-Seal"):
        dnsfunc = DnsRecorder(FakeResolver({LIST_KEY: dkimsign.public_record("rsa", keys["list"])}), time.monotonic() + 5)
        envelope.check_state("arc")["result"] = verify_chain(envelope.message_bytes(), dnsfunc, 1024)
    else:
        envelope.check_state("arc")["result"] = ArcResult("none")
    if dkim_results is not None:
        envelope.check_state("dkim")["result"] = dkim_results
    session = Session()
    for check in (Spf(services), ArcSealer(services)):
        verdict = check.on_verdict(session, envelope, verdict)
    edits = envelope.edits + plan_headers(verdict, {}, envelope.header("Subject"), services.config.actions)
    return verdict, delivered(envelope, edits)


def subject_of(message: bytes) -> bytes:
    return next(v.strip() for n, v in dkim.rfc822_parse(message)[0] if n.lower() == b"subject")


@pytest.mark.parametrize("action, score", [(Action.REWRITE_SUBJECT, 9.0), (Action.QUARANTINE, 13.0)])
def test_mail_whose_subject_is_tagged_is_sealed_over_the_subject_as_delivered(services: Any, keys: dict[str, bytes], action: Action, score: float) -> None:
    """On 5071120: neither was sealed (ARC sealing stopped at add_header)."""
    verdict, out = through_milterd(services, keys, MESSAGE, Verdict(action, score, {}, {}, ""))
    assert "ARC_SEALED" in verdict.symbols, verdict.details
    assert subject_of(out) == b"[SPAM] signed"
    cv, results, reason = dkim.arc_verify(out, dnsfunc=lookup(keys))
    assert cv == dkim.CV_Pass, reason
    assert [r["as-domain"] for r in results] == [b"seal.test"]
    # The ARC-Message-Signature covers the tagged Subject: the untagged one would not verify.
    untagged = out.replace(b"Subject: [SPAM] signed", b"Subject: signed")
    assert dkim.arc_verify(untagged, dnsfunc=lookup(keys))[0] == dkim.CV_Fail


def test_a_quarantine_under_the_rewrite_threshold_is_sealed_with_its_subject_untouched(services: Any, keys: dict[str, bytes]) -> None:
    """A virus forces quarantine at any score: nothing tags the Subject, and the seal covers it as received."""
    verdict, out = through_milterd(services, keys, MESSAGE, Verdict(Action.QUARANTINE, 1.0, {}, {}, ""))
    assert "ARC_SEALED" in verdict.symbols and subject_of(out) == b"signed"
    assert dkim.arc_verify(out, dnsfunc=lookup(keys))[0] == dkim.CV_Pass


@pytest.mark.parametrize("action", [Action.REJECT, Action.TEMPFAIL, Action.DISCARD, Action.GREYLIST])
def test_refused_mail_is_still_not_sealed(services: Any, keys: dict[str, bytes], action: Action) -> None:
    verdict, out = through_milterd(services, keys, MESSAGE, Verdict(action, 20.0, {}, {}, ""))
    assert not {"ARC_SEALED", "ARC_SEAL_ERROR"} & set(verdict.symbols) and b"ARC-Seal" not in out


def test_a_folded_header_is_what_the_seal_attests_and_the_chain_verifies(services: Any, keys: dict[str, bytes]) -> None:
    """The ARC-Authentication-Results carries the five long results read from our folded header."""
    verdict, out = through_milterd(services, keys, MESSAGE, Verdict(Action.ACCEPT, 0.0, {}, {}, ""), dkim_results=LONG)
    assert "ARC_SEALED" in verdict.symbols
    [ours] = [v.decode() for n, v in dkim.rfc822_parse(out)[0] if n == b"Authentication-Results"]
    assert ours.count("\r\n") > 2 and all(len(line) <= 998 for line in ours.split("\r\n"))
    cv, _, reason = dkim.arc_verify(out, dnsfunc=lookup(keys))
    assert cv == dkim.CV_Pass, reason
    [aar] = [v.decode() for n, v in dkim.rfc822_parse(out)[0] if n == b"ARC-Authentication-Results"]
    assert all(f"header.d={s.domain}" in aar for s in LONG)


def test_a_subject_edit_with_a_bare_line_break_is_signed_and_sealed_as_the_adapter_sends_it() -> None:
    """On 1349334: DKIM signing and ARC sealing computed over ``Subject: a\\r\\nb`` (a line that starts a
    new header), while the adapter sends ``a\\n\\tb``: neither signature could verify on the delivered copy."""
    from milterd.checks.dkim import header_section_as_delivered
    from milterd.message.model import HeaderEdit

    envelope = envelope_from(b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n")
    section = header_section_as_delivered(envelope, [HeaderEdit("change", "Subject", "[SPAM] a\nb", 1)])
    assert section == b"From: a@example.org\r\nSubject: [SPAM] a\r\n\tb\r\n\r\n"
    assert _header_safe("[SPAM] a\nb") == "[SPAM] a\n\tb"
