"""doctor review (twenty-ninth session): findings that said OK of what does not work.

Pure judgements on answers and settings built here; ``postconf`` is not run (``subprocess.run`` replaced).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from milterd import diagnostics, dkimsign
from milterd.config import Config
from milterd.diagnostics import Finding, judge_dkim_key, judge_dnsbl, judge_postfix, read_postconf
from milterd.dns import Answer

NAME = "s1._domainkey.a.test"


@pytest.fixture(scope="module")
def ed25519_key() -> bytes:
    return dkimsign.generate("ed25519")


@pytest.fixture(scope="module")
def rsa_key() -> bytes:
    return dkimsign.generate("rsa", 1024)


def _published(record: str) -> Answer:
    return Answer(NAME, "TXT", "ok", (record,))


def test_a_record_verifiers_will_not_use_is_not_ok(ed25519_key: bytes, rsa_key: bytes) -> None:
    """Only p= was compared: an ed25519 key published without k= (read as rsa), v=DKIM2, s=other or h=sha1 was
    "OK, the published key matches", and every signature failed at the receivers."""
    ed = dkimsign.SigningKey("a.test", "s1", "ed25519", ed25519_key)
    p = dkimsign.published_key(dkimsign.public_record("ed25519", ed25519_key))
    assert judge_dkim_key(ed, _published(f"v=DKIM1; k=ed25519; p={p}")).status == "ok"
    assert judge_dkim_key(ed, _published(f"v=DKIM1; p={p}")).status == "fail"
    assert "no k= (rsa by default)" in judge_dkim_key(ed, _published(f"v=DKIM1; p={p}")).detail
    rsa = dkimsign.SigningKey("a.test", "s1", "rsa", rsa_key)
    p = dkimsign.published_key(dkimsign.public_record("rsa", rsa_key))
    assert judge_dkim_key(rsa, _published(f"p={p}")).status == "ok"  # v= and k= may be left out
    assert judge_dkim_key(rsa, _published(f"v=DKIM1; h=sha1:sha256; s=email:tlsrpt; p={p}")).status == "ok"
    for bad in (f"v=DKIM2; k=rsa; p={p}", f"v=DKIM1; k=rsa; h=sha1; p={p}", f"v=DKIM1; k=rsa; s=other; p={p}", f"v=DKIM1; k=ed25519; p={p}"):
        found = judge_dkim_key(rsa, _published(bad))
        assert found.status == "fail" and "verifiers will not use the record" in found.detail, bad


def test_several_records_at_a_selector_fail_even_when_one_matches(rsa_key: bytes) -> None:
    """RFC 6376 §3.6.2.2: TXT records at a selector must be unique, the result with several is undefined (dkimpy reads
    the first DNS returns, OpenDKIM refuses the key): doctor said OK when any one of them matched."""
    rsa = dkimsign.SigningKey("a.test", "s1", "rsa", rsa_key)
    record = dkimsign.public_record("rsa", rsa_key)
    p = dkimsign.published_key(record)
    for records in ((f"v=DKIM2; p={p}", f"v=DKIM1; p={p}"), (record, record), ("v=spf1 -all", record)):
        found = judge_dkim_key(rsa, Answer(NAME, "TXT", "ok", records))
        assert found.status == "fail" and "2 TXT records" in found.detail and record in found.detail, records
    assert judge_dkim_key(rsa, Answer(NAME, "TXT", "ok", (record,))).status == "ok"


def test_a_list_that_lists_127_0_0_1_fails() -> None:
    """RFC 5782 §5: 127.0.0.1 is never listed; a list answering for it lists the world (a dead list), and doctor said OK."""
    test = Answer("2.0.0.127.world.test", "A", "ok", ("127.0.0.2",))
    world = Answer("1.0.0.127.world.test", "A", "ok", ("127.0.0.2",))
    clean = Answer("1.0.0.127.world.test", "A", "nxdomain")
    found = judge_dnsbl("world.test", test.name, test, (), world)
    assert found.status == "fail" and "every client would count as listed" in found.detail
    assert judge_dnsbl("world.test", test.name, test, (), clean).status == "ok"
    # An answer outside 127.0.0.0/8 for it (a resolver rewriting NXDOMAIN) is not a listing.
    assert judge_dnsbl("world.test", test.name, test, (), Answer(world.name, "A", "ok", ("192.0.2.1",))).status == "ok"


def test_milterd_s_own_smtpd_milters_entry_overrides_the_milter_parameters() -> None:
    """{ inet:…, default_action=accept, content_timeout=20s } was ignored: doctor judged the global parameters."""
    from milterd.diagnostics import milter_settings

    assert milter_settings("{ inet:127.0.0.1:8895, default_action=accept, command_timeout = 5s }, unix:x") == [
        ("inet:127.0.0.1:8895", {"default_action": "accept", "command_timeout": "5s"}), ("unix:x", {})]
    config = Config().with_changes({"clamav.enabled": True, "clamav.on_error": "tempfail"})
    settings = {"smtpd_milters": "{ inet:127.0.0.1:8895, default_action=accept, content_timeout=20s }, { inet:127.0.0.1:9999, default_action=tempfail }",
                "milter_default_action": "tempfail", "milter_content_timeout": "300s"}
    found = {f.name: f for f in judge_postfix(config, settings)}
    assert found["postfix milter_default_action"].status == "warn" and "smtpd_milters entry" in found["postfix milter_default_action"].detail
    assert found["postfix milter_content_timeout"].status == "warn"
    # Another milter's entry does not count for milterd.
    other = {**settings, "smtpd_milters": "inet:127.0.0.1:8895, { inet:127.0.0.1:9999, default_action=accept }"}
    assert {f.name: f for f in judge_postfix(config, other)}["postfix milter_default_action"].status == "ok"


def test_postconf_is_asked_for_expanded_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """``smtpd_milters = $milterd_milter`` read as the text "$milterd_milter": "Postfix does not call milterd"."""
    commands: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "smtpd_milters = inet:127.0.0.1:8895\n", "")

    monkeypatch.setattr(diagnostics.shutil, "which", lambda name: "/usr/sbin/postconf")
    monkeypatch.setattr(diagnostics.subprocess, "run", run)
    settings, why = read_postconf(None)
    assert why == "" and settings == {"smtpd_milters": "inet:127.0.0.1:8895"}
    assert commands[0][:2] == ["/usr/sbin/postconf", "-x"]


def test_a_broken_probe_is_one_line() -> None:
    def probe() -> Finding:
        raise RuntimeError("connection timeout expired\n(Background on this error at: https://sqlalche.me/e/21/e3q8)")

    assert diagnostics._guarded("classifier", probe).detail == "RuntimeError: connection timeout expired"  # noqa: SLF001
