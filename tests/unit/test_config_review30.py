"""Config review (thirtieth session): settings that loaded and then silently did nothing, or worse.

- ``[milter] authserv_id = "My Company MX"`` was written into Authentication-Results, read back as ``my``, and a
  sender's header claiming "My Company MX" was never removed (RFC 8601 §5); ``hostname`` is its default;
- ``[checks.arc] trusted_sealers`` and ``[checks.uribl] skip_domains`` entries that are no domain (``*.google.com``,
  ``https://lists.example.org``) never matched;
- ``[checks.rdns] generic_patterns = [""]`` matched every PTR name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.authresults import build, forged_indexes
from milterd.cli import main
from milterd.config import Config

CASES = [
    ('[milter]\nauthserv_id = "My Company MX"\n', "[milter] authserv_id: 'My Company MX' is not a host name"),
    ('[milter]\nauthserv_id = "mx;evil"\n', "[milter] authserv_id: 'mx;evil' is not a host name"),
    ('[milter]\nhostname = "mx(c)"\n', "[milter] hostname: 'mx(c)' is not a host name"),
    ('[checks.arc]\ntrusted_sealers = ["*.google.com"]\n', "[checks.arc] trusted_sealers: '*.google.com' is not a domain name"),
    ('[checks.arc]\ntrusted_sealers = ["https://lists.example.org"]\n', "is not a domain name"),
    ('[checks.uribl]\nskip_domains = ["*.example.org"]\n', "[checks.uribl] skip_domains: '*.example.org' is not a domain name"),
    ('[checks.rdns]\ngeneric_patterns = [""]\n', "[checks.rdns] generic_patterns[0]: an empty pattern matches every name"),
    # Found only when the store was opened, exit status 1, neither file nor key named.
    ('[database]\nurl = "foo://x"\n', "[database] url: SQLAlchemy has no dialect 'foo'"),
    ('[database]\nurl = "not a url"\n', "[database] url: 'not a url' is not an SQLAlchemy URL"),
    ('[database]\nurl = "x://u:S3cret@h:99999999999999999999/d"\n', "[database] url: SQLAlchemy has no dialect 'x'"),
    ('[database]\nurl = "postgresql://u:S3cret@[::1/db"\n', "[database] url: is not an SQLAlchemy URL"),
    # A second look: a password given as a parameter was quoted.
    ('[database]\nurl = "postgresql+psycopg:/milterd?host=/run/postgresql&user=milterd&password=S3cret"\n', "[database] url: is not an SQLAlchemy URL"),
]


@pytest.mark.parametrize(("text", "error"), CASES)
def test_a_setting_that_could_never_work_is_refused_with_file_key_and_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text('[dns]\nnameservers = ["127.0.0.1:9"]\n' + text)
    assert main(["rules", "lint", "-c", str(conf)]) == 2
    err = capsys.readouterr().err
    assert f"{conf}: " in err and error in err and "Traceback" not in err and "S3cret" not in err


def test_a_host_name_authserv_id_still_removes_what_claims_it() -> None:
    config = Config.model_validate({"milter": {"authserv_id": "mx-1.example_org"}})
    assert config.milter.authserv_id == "mx-1.example_org"
    assert forged_indexes([("Authentication-Results", b"MX-1.example_org; dkim=pass header.d=paypal.com")], "mx-1.example_org") == [1]
    assert build("mx-1.example_org").startswith("mx-1.example_org")


def test_a_system_name_that_is_no_host_name_token_is_made_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second look: with [milter] hostname empty, the system's name ("My Box") became the authserv-id as it was."""
    from milterd import config as config_module

    config_module._fqdn.cache_clear()  # noqa: SLF001
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: "My Box")
    try:
        hostname = Config().hostname
    finally:
        config_module._fqdn.cache_clear()  # noqa: SLF001
    assert hostname == "My-Box"
    assert forged_indexes([("Authentication-Results", b"My-Box; dmarc=pass header.from=paypal.com")], hostname) == [1]
