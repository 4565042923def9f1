"""Review 16 through the real Postfix: our Authentication-Results folded on the delivered copy, the ARC
seal over it verifying there (dkimpy's arc_verify), and rewrite_subject mail sealed over its tagged Subject.

DNS is unbound on loopback (tests/harness/dns.py) with the sealing key; the long DKIM signatures
name keys that no DNS name can hold, so they are judged without a lookup.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

import authres
import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from milterd import dkimsign
from milterd.message.policy import FOLD_WIDTH
from tests.conftest import message
from tests.harness.dns import LocalDns
from tests.harness.stack import Stack

POSTFIX = {"local_header_rewrite_clients": ""}
CLIENT = {"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}
RULES = {
    "review16.toml": """
[[rule]]
name = "TEST_REWRITE_SUBJECT"
header = "Subject"
regex = "REWRITEME"
score = 9
""",
}


def long_domain(n: int) -> str:
    """A domain of 250 characters, the *n*-th of a kind."""
    return f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{chr(ord('d') + n) * 53}.test"


LONG_DOMAINS = [long_domain(n) for n in range(5)]


def txt(name: str, record: str) -> str:
    strings = " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200))
    return f"{name}. TXT {strings}"


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    return {"seal": dkimsign.generate("rsa", 2048)}


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, bytes]) -> Iterator[LocalDns]:
    data = ["client.example.org. A 192.0.2.10", txt("arc._domainkey.seal.test", dkimsign.public_record("rsa", keys["seal"]))]
    server = LocalDns(tmp_path_factory.mktemp("dns"), data, {}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns, keys: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Stack:
    key_dir = tmp_path_factory.mktemp("sealkey")
    dkimsign.write_private(key_dir / "seal.key", keys["seal"])
    sections: dict[str, dict[str, Any]] = {
        "dns": {"nameservers": [local_dns.nameserver], "timeout": 3.0},  # loopback unbound only
        "milter": {"authserv_id": "mx.test"},
        "checks": {"arc": {"seal": True, "seal_domain": "seal.test", "seal_selector": "arc", "seal_key_file": str(key_dir / "seal.key")}},
        # Whatever else a test client scores (no rDNS, no MX), REWRITEME lands in rewrite_subject.
        "actions": {"rewrite_subject": 8, "quarantine": False, "reject": False},
    }
    return make_stack(sections, rules=RULES, postfix_extra=POSTFIX)


def lookup(local_dns: LocalDns) -> Callable[..., bytes | None]:
    def answer(name: bytes, timeout: float = 5) -> bytes | None:
        reply = dns.query.udp(dns.message.make_query(name.decode().rstrip("."), "TXT"), "127.0.0.1", port=local_dns.port, timeout=timeout)
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return None

    return answer


def delivered(stack: Stack, subject: str) -> Any:
    [found] = stack.sink.wait(1, match=lambda m: any(subject in s for s in m.header("Subject")))
    return found


def raw_fields(data: bytes, name: str) -> list[bytes]:
    """The header fields *name* of the delivered *data* as they arrived: folds (CRLF) and all."""
    head = data.split(b"\r\n\r\n", 1)[0]
    return [f for f in re.split(rb"\r\n(?![ \t])", head) if f.partition(b":")[0].strip().lower() == name.lower().encode()]


def ours(data: bytes) -> bytes:
    [field] = [f for f in raw_fields(data, "Authentication-Results") if f.partition(b":")[2].split(b";")[0].strip() == b"mx.test"]
    return field


def elements_of(line: str) -> list[str]:
    return re.findall(r'(?:"(?:[^"\\]|\\.)*"|[^\s"])+', line)


def test_five_long_signatures_arrive_with_a_folded_header_under_998_a_line_and_the_seal_verifies(stack: Stack, local_dns: LocalDns) -> None:
    """On 5071120 the header was one line of 1,700-odd characters."""
    raw = message("review16 long signatures", sender="alice@loose.test")
    for n, domain in reversed(list(enumerate(LONG_DOMAINS))):  # prepended: the first ends up topmost
        # Written out, d= on a line of its own (dkimpy would fold it inside the name); never verifiable:
        # its key record name (s._domainkey.d) passes DNS's 253 characters, so it is judged without a lookup.
        raw = (f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n d={domain};\r\n s=sel{n}; h=from:subject;\r\n"
               f" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n").encode() + raw
    stack.send(raw, sender="alice@loose.test", xclient=CLIENT)
    found = delivered(stack, "review16 long signatures")
    field = ours(found.data).decode()
    lines = field.split("\r\n")
    # (a) every physical line within RFC 5322's 998, and as short as its elements allow
    assert len(lines) > 1 and all(len(line.encode()) <= 998 for line in lines), [len(line) for line in lines]
    assert all(len(line) <= FOLD_WIDTH or len(elements_of(line)) == 1 for line in lines[1:]), lines
    unfolded = authres.AuthenticationResultsHeader.parse(field.replace("\r\n", ""))
    assert unfolded.authserv_id == "mx.test"
    dkim_results = [r for r in unfolded.results if r.method == "dkim"]
    assert [str(r.header_d) for r in dkim_results] == LONG_DOMAINS and [str(r.header_s) for r in dkim_results] == [f"sel{n}" for n in range(5)]
    # (b) the seal computed over the folded header verifies on the delivered copy, and attests its results
    cv, results, reason = dkim.arc_verify(found.data, dnsfunc=lookup(local_dns))
    assert cv == dkim.CV_Pass, reason
    assert [r["as-domain"] for r in results] == [b"seal.test"]
    [aar] = [b"".join(f.split(b"\r\n")).decode() for f in raw_fields(found.data, "ARC-Authentication-Results")]
    assert all(f"header.d={d}" in aar for d in LONG_DOMAINS)
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "review16 long signatures")
    assert row["details"]["ARC_SEALED"] == "d=seal.test s=arc"


def test_rewrite_subject_mail_is_sealed_over_the_tagged_subject_and_verifies(stack: Stack, local_dns: LocalDns) -> None:
    """On 5071120 it arrived unsealed: the sealer stopped at add_header."""
    stack.send(message("REWRITEME review16", sender="alice@loose.test"), sender="alice@loose.test", xclient=CLIENT)
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "REWRITEME review16")
    assert row["action"] == "rewrite_subject" and row["details"].get("ARC_SEALED") == "d=seal.test s=arc", (row["symbols"], row["score"])
    found = delivered(stack, "REWRITEME review16")
    assert found.header("Subject") == ["[SPAM] REWRITEME review16"]
    cv, results, reason = dkim.arc_verify(found.data, dnsfunc=lookup(local_dns))
    assert cv == dkim.CV_Pass, reason
    assert [r["as-domain"] for r in results] == [b"seal.test"]
    # Sealed over the Subject as delivered: put back as it was received, the ARC-Message-Signature breaks.
    untagged = found.data.replace(b"Subject: [SPAM] REWRITEME review16", b"Subject: REWRITEME review16", 1)
    assert untagged != found.data and dkim.arc_verify(untagged, dnsfunc=lookup(local_dns))[0] == dkim.CV_Fail


def test_fix_a_subject_the_tag_makes_too_long_is_folded_after_the_tag_and_the_seal_verifies(stack: Stack, local_dns: LocalDns) -> None:
    subject = "REWRITEME review28 " + "y" * 966  # "Subject: " and this: 994 octets; tagged, 1,001
    stack.send(message(subject, sender="alice@loose.test"), sender="alice@loose.test", xclient=CLIENT)
    found = delivered(stack, "REWRITEME review28")
    # One line of 1,001 octets: Postfix broke it where it was long (smtp_line_length_limit), a space inside the word.
    assert f"\r\nSubject: [SPAM]\r\n {subject}\r\n".encode() in found.data
    assert all(len(line) <= 998 for line in found.data.split(b"\r\n"))
    row = next(r for r in stack.milterd.log_json() if r["subject"] == subject)
    assert row["details"].get("ARC_SEALED") == "d=seal.test s=arc"
    assert dkim.arc_verify(found.data, dnsfunc=lookup(local_dns))[0] == dkim.CV_Pass
