"""``[quarantine] release_smtp_tls`` end to end: a message quarantined through the real Postfix is
released with ``milterd quarantine release`` to a TCP re-injection smtpd that speaks STARTTLS.

The stack's Postfix offers STARTTLS (``smtpd_tls_security_level = may``) with a certificate for
localhost and 127.0.0.1 signed by a throwaway CA made here, and writes the TLS session into its
Received header (``smtpd_tls_received_header``): that header tells whether a release came over TLS.
Servers Postfix cannot be (no STARTTLS, a self-signed certificate) are aiosmtpd on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.milterd import write_config
from tests.harness.stack import Stack
from tests.integration.test_quarantine import NO_CHECKS, RULES, cli, listed, quarantine_one, strip_release
from tests.unit.test_review16_release_tls import make_ca, self_signed, server_context, smtp_server

__all__ = ["smtp_server"]  # the fixture, imported


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files: ``ca`` (the CA Postfix's certificate is signed by), ``other_ca``, and Postfix's ``key`` and ``cert``."""
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    (root / "ca.pem").write_bytes(ca.pem)
    (root / "other-ca.pem").write_bytes(make_ca("another CA").pem)
    key, cert = ca.issue(("localhost",), ("127.0.0.1",)).write(root, "postfix")
    return {"dir": root, "ca": root / "ca.pem", "other_ca": root / "other-ca.pem", "key": key, "cert": cert}


@pytest.fixture(scope="module")
def stack(make_stack: Any, pki: dict[str, Path]) -> Stack:
    stack: Stack = make_stack({**NO_CHECKS}, RULES)
    # smtpd's TLS needs tlsmgr (its entropy), which the harness's master.cf leaves out; postconf reloads
    # and waits until no smtpd of the configuration without TLS is left.
    with (stack.postfix.etc / "master.cf").open("a") as master_cf:
        master_cf.write("tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n")
    stack.postfix.postconf(
        "smtpd_tls_security_level=may", f"smtpd_tls_cert_file={pki['cert']}", f"smtpd_tls_key_file={pki['key']}",
        "smtpd_tls_received_header=yes", "smtpd_tls_loglevel=1",
    )
    return stack


def reinject(stack: Stack) -> str:
    """The stack's TCP re-injection smtpd (no milters), which offers STARTTLS."""
    return f"127.0.0.1:{stack.postfix.reinject_port}"


def released(stack: Stack, tag: str) -> list[Any]:
    return stack.sink.wait(1, match=lambda m: any(tag in s for s in m.header("Subject")))


def still_quarantined(stack: Stack, row_id: int) -> bool:
    return [r["released_at"] for r in listed(stack) if r["id"] == row_id] == [None]


def test_verify_with_the_right_ca_file_releases_over_tls(stack: Stack, pki: dict[str, Path]) -> None:
    original, row = quarantine_one(stack)
    tag = row["subject"].split()[-1]
    result = cli(stack, "release", str(row["id"]), release_smtp=reinject(stack), release_smtp_tls="verify", release_smtp_tls_ca_file=str(pki["ca"]))
    assert result.returncode == 0, result.stderr
    [delivered] = released(stack, tag)
    assert strip_release(delivered.data) == original
    received = delivered.header("Received")[0]
    assert "using TLS" in received, received  # Postfix's smtpd_tls_received_header: the release came over TLS


def test_verify_refuses_a_certificate_no_ca_file_vouches_for(stack: Stack, pki: dict[str, Path], smtp_server: Any) -> None:
    _original, row = quarantine_one(stack)
    tag = row["subject"].split()[-1]
    port, seen = smtp_server(server_context(self_signed(), pki["dir"], "self-signed"))
    refusals = [
        cli(stack, "release", str(row["id"]), release_smtp=f"127.0.0.1:{port}", release_smtp_tls="verify", release_smtp_tls_ca_file=str(pki["ca"])),
        # Postfix's own certificate, with the wrong CA file, and with the system's CAs.
        cli(stack, "release", str(row["id"]), release_smtp=reinject(stack), release_smtp_tls="verify", release_smtp_tls_ca_file=str(pki["other_ca"])),
        cli(stack, "release", str(row["id"]), release_smtp=reinject(stack), release_smtp_tls="verify"),
    ]
    for result in refusals:
        assert result.returncode != 0, result.stdout
        assert "TLS certificate not verified" in result.stderr and "nothing was sent" in result.stderr, result.stderr
        assert "nothing was released" in result.stderr, result.stderr
    assert seen.mails == [] and seen.messages == []
    assert still_quarantined(stack, row["id"])
    # Still releasable, once the server is one the CA file vouches for.
    result = cli(stack, "release", str(row["id"]), release_smtp=reinject(stack), release_smtp_tls="verify", release_smtp_tls_ca_file=str(pki["ca"]))
    assert result.returncode == 0, result.stderr
    assert len(released(stack, tag)) == 1


def test_encrypt_against_a_server_without_starttls_fails(stack: Stack, smtp_server: Any) -> None:
    _original, row = quarantine_one(stack)
    port, seen = smtp_server()  # no tls_context: no STARTTLS in its EHLO reply
    result = cli(stack, "release", str(row["id"]), release_smtp=f"127.0.0.1:{port}", release_smtp_tls="encrypt")
    assert result.returncode != 0, result.stdout
    assert 'offers no STARTTLS, and release_smtp_tls = "encrypt" requires TLS: nothing was sent' in result.stderr, result.stderr
    assert seen.mails == [] and seen.messages == []
    assert still_quarantined(stack, row["id"])
    # The digest goes the same way, and fails the same way.
    digest = cli(stack, "digest", "--to", "postmaster@example.org", release_smtp=f"127.0.0.1:{port}", release_smtp_tls="encrypt")
    assert digest.returncode != 0 and "offers no STARTTLS" in digest.stderr, (digest.stdout, digest.stderr)
    assert seen.mails == []


def test_encrypt_releases_over_tls_without_verifying(stack: Stack) -> None:
    original, row = quarantine_one(stack)
    tag = row["subject"].split()[-1]
    result = cli(stack, "release", str(row["id"]), release_smtp=reinject(stack), release_smtp_tls="encrypt")
    assert result.returncode == 0, result.stderr
    [delivered] = released(stack, tag)
    assert strip_release(delivered.data) == original and "using TLS" in delivered.header("Received")[0]


def test_may_behaves_as_before(stack: Stack) -> None:
    """The default: no AUTH, so no STARTTLS, though Postfix offers it: the release goes as it always went."""
    original, row = quarantine_one(stack)
    tag = row["subject"].split()[-1]
    result = cli(stack, "release", str(row["id"]), release_smtp=reinject(stack))
    assert result.returncode == 0, result.stderr
    [delivered] = released(stack, tag)
    assert strip_release(delivered.data) == original
    assert "using TLS" not in delivered.header("Received")[0]


def test_doctor_checks_the_tls_a_release_would_get(stack: Stack, pki: dict[str, Path]) -> None:
    def doctor(**quarantine: Any) -> dict[str, Any]:
        sections = {k: dict(v) for k, v in stack.milterd.sections.items()}
        sections["quarantine"] = {"release_smtp": reinject(stack), **quarantine}
        path = write_config(stack.milterd.root / f"doctor-{uuid.uuid4().hex[:8]}.conf", sections)
        result = subprocess.run([sys.executable, "-m", "milterd", "-c", str(path), "doctor", "--json", "--no-postfix"], capture_output=True, text=True, timeout=120)
        [finding] = [f for f in json.loads(result.stdout)["findings"] if f["name"] == "quarantine release_smtp"]
        return finding

    good = doctor(release_smtp_tls="verify", release_smtp_tls_ca_file=str(pki["ca"]))
    assert good["status"] == "ok" and "certificate verified" in good["detail"], good
    bad = doctor(release_smtp_tls="verify", release_smtp_tls_ca_file=str(pki["other_ca"]))
    assert bad["status"] == "warn" and "TLS certificate not verified" in bad["detail"], bad
