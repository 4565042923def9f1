"""doctor's rules about Postfix's settings: pure functions, no Postfix needed."""

from __future__ import annotations

from milterd.config import Config
from milterd.diagnostics import Finding, judge_postfix, milter_entries, parse_postconf, same_socket, worst


def _by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings}


def test_parse_postconf_and_entries() -> None:
    settings = parse_postconf("smtpd_milters = inet:127.0.0.1:8895, { unix:milterd/milterd.sock, default_action=accept }\nmilter_protocol = 6\n")
    assert settings["milter_protocol"] == "6"
    assert milter_entries(settings["smtpd_milters"]) == ["inet:127.0.0.1:8895", "unix:milterd/milterd.sock"]


def test_same_socket() -> None:
    assert same_socket("inet:127.0.0.1:8895", "inet:127.0.0.1:8895")
    assert same_socket("inet:8895@127.0.0.1", "inet:localhost:8895")
    assert same_socket("inet:0.0.0.0:8895", "inet:10.0.0.1:8895")
    assert not same_socket("inet:127.0.0.1:8895", "inet:127.0.0.1:8896")
    assert same_socket("unix:/var/spool/postfix/milterd/milterd.sock", "unix:milterd/milterd.sock", "/var/spool/postfix")
    assert not same_socket("unix:/run/milterd.sock", "inet:127.0.0.1:8895")


def test_good_settings_are_ok() -> None:
    config = Config()
    settings = {"smtpd_milters": "inet:127.0.0.1:8895", "milter_default_action": "tempfail", "milter_content_timeout": "300s", "milter_command_timeout": "30s", "milter_protocol": "6"}
    findings = judge_postfix(config, settings)
    assert worst(findings) == "ok", findings


def test_risky_settings_warn() -> None:
    config = Config().with_changes({"clamav.enabled": True, "clamav.timeout": 120, "spamd.enabled": True, "spamd.timeout": 400})
    settings = {"smtpd_milters": "inet:127.0.0.1:9999", "milter_default_action": "accept", "milter_content_timeout": "300s", "milter_command_timeout": "1s", "milter_protocol": "2"}
    found = _by_name(judge_postfix(config, settings))
    assert found["postfix smtpd_milters"].status == "warn"
    assert found["postfix milter_default_action"].status == "warn" and "clamav" in found["postfix milter_default_action"].detail
    assert found["postfix milter_content_timeout"].status == "warn"
    assert found["postfix milter_command_timeout"].status == "warn"
    assert found["postfix milter_protocol"].status == "warn"


def test_worst() -> None:
    assert worst([Finding("a", "ok", ""), Finding("b", "skip", "")]) == "ok"
    assert worst([Finding("a", "ok", ""), Finding("b", "warn", "")]) == "warn"
    assert worst([Finding("a", "fail", ""), Finding("b", "warn", "")]) == "fail"
