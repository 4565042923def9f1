"""Pure judgements of HELO, MAIL FROM, reverse DNS, Authentication-Results and login maps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from milterd.checks.helo import helo_shape, same_address
from milterd.checks.localdomains import load_login_map, owners
from milterd.checks.rdns import looks_generic
from milterd.checks.sender import address_problem
from milterd.checks.spf import authentication_results, authserv_id_of, forged_indexes
from milterd.config import Config, ConfigError


@pytest.mark.parametrize(
    ("helo", "kind"),
    [("", "missing"), ("192.0.2.1", "bare_ip"), ("[192.0.2.1]", "literal"), ("[IPv6:2001:db8::1]", "literal"), ("[nonsense]", "bad_literal"),
     ("localhost", "not_fqdn"), ("bad_name!.example", "not_fqdn"), ("host.123", "not_fqdn"), ("mail.example.org", "fqdn"), ("mail.example.org.", "fqdn")],
)
def test_helo_shapes(helo: str, kind: str) -> None:
    assert helo_shape(helo).kind == kind


def test_same_address_mapped() -> None:
    assert same_address("::ffff:192.0.2.1", "192.0.2.1") and not same_address("192.0.2.1", "192.0.2.2")
    # A NAT64 client's own literal ([IPv6:64:ff9b::…], what `check --client-ip 64:ff9b::…` greets with) is its address.
    assert same_address("64:ff9b::198.51.100.5", "198.51.100.5") and not same_address("64:ff9b::127.0.0.1", "127.0.0.1")


@pytest.mark.parametrize(
    ("address", "problem"),
    [("alice@example.org", ""), ("user@[1.2.3.4]", "ip_literal"), ("tom@example", "no_dot"), ("no-at-sign", "invalid"),
     ("a b@example.org", "invalid"), ('"a b"@example.org', ""), ("@example.org", "invalid"), ("alice@exa_mple..org", "invalid"),
     ("jörg@exämple.org", ""), ("x@-bad-.org", "invalid"),
     # An all-digit top label (thirtieth session's review): looked up in DNS as a domain, MAIL_FROM_NO_MX.
     ("a@192.0.2.1", "ip_literal"), ("a@192.0.2.1.", "ip_literal"), ("a@example.123", "invalid"), ("a@1.2.3.4.5", "invalid"),
     ("a@3com.com", ""), ("a@example.１２３", "invalid"), ("a@１９２.０.２.１", "ip_literal")],  # full-width: as IDNA maps them
)
def test_mail_from_problems(address: str, problem: str) -> None:
    assert address_problem(address) == problem


def test_generic_names() -> None:
    patterns = [re.compile(p) for p in Config().checks.rdns.generic_patterns]
    assert looks_generic("192-0-2-10.dyn.example.net", "192.0.2.10", patterns)
    assert looks_generic("host10-2.example.net", "192.0.2.10", patterns)  # octets in the name
    assert looks_generic("adsl-pool7.isp.example", "198.51.100.3", patterns)
    assert not looks_generic("mail.example.org", "192.0.2.10", patterns)
    assert not looks_generic("mx2.example.org", "192.0.2.10", patterns)


def test_authentication_results() -> None:
    assert authserv_id_of("mx.test; spf=pass smtp.mailfrom=a@b.c") == "mx.test"
    assert authserv_id_of(" (comment) MX.test 1; none") == "mx.test"
    headers = [("Authentication-Results", b"other.example; spf=pass"), ("Subject", b"x"), ("authentication-results", b"mx.test; spf=pass"), ("Authentication-Results", b"mx.test;\n\tdkim=pass")]
    assert forged_indexes(headers, "mx.test") == [3, 2]
    value = authentication_results("mx.test", {"result": "softfail", "identity": "mailfrom", "sender": "a@b.example", "helo": "h"}, "")
    assert value == "mx.test; spf=softfail smtp.mailfrom=a@b.example"
    assert authentication_results("mx.test", None, "alice") == "mx.test; auth=pass smtp.auth=alice"
    assert "smtp.helo=h.example" in authentication_results("mx.test", {"result": "pass", "identity": "helo", "sender": "postmaster@h.example", "helo": "h.example"}, "")


def test_login_map(tmp_path: Path) -> None:
    path = tmp_path / "logins"
    path.write_text("# owners\nalice@example.org alice, admin\n@example.org admin\n")
    table = load_login_map(path)
    assert owners(table, "Alice@Example.org") == {"alice", "admin"}
    assert owners(table, "bob@example.org") == {"admin"}
    assert owners(table, "bob@example.net") == set()
    path.write_text("alice@example.org\n")
    with pytest.raises(ConfigError) as info:
        load_login_map(path)
    assert info.value.key == "line 1"


def test_a_login_map_domain_matches_in_either_idna_form(tmp_path: Path) -> None:
    # Was: compared as written: the login owning @bücher.de was refused x@xn--bcher-kva.de (SENDER_LOGIN_MISMATCH, rejected).
    path = tmp_path / "logins"
    path.write_text("@B\u00fccher.de admin\nboss@xn--bcher-kva.de. boss\n", encoding="utf-8")
    table = load_login_map(path)
    assert owners(table, "x@xn--bcher-kva.de") == owners(table, "x@b\u00fccher.DE.") == {"admin"}
    assert owners(table, "Boss@b\u00fccher.de") == {"boss"}


def test_checks_section_refuses_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        Config.model_validate({"checks": {"spf": {"fail_action": "bounce"}}})
    with pytest.raises(ValidationError):
        Config.model_validate({"checks": {"helo": {"resolv": True}}})


def test_each_configured_check_declares_the_options_model_its_section_has() -> None:
    # ConfiguredCheck[Options] types self.options by a cast: the declared model must be the one
    # ChecksSection gives that section, or mypy would check the wrong attributes.
    import typing

    from milterd.checks import discover
    from milterd.checks.configured import ConfiguredCheck
    from milterd.config import ChecksSection

    configured = [c for c in discover() if issubclass(c, ConfiguredCheck)]
    assert len(configured) >= 11
    for check in configured:
        [base] = [b for b in getattr(check, "__orig_bases__", ()) if typing.get_origin(b) is ConfiguredCheck]
        [declared] = typing.get_args(base)
        section = check.options_name or check.name
        assert ChecksSection.model_fields[section].annotation is declared, (check.__name__, section, declared)
