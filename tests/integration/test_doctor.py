"""``milterd doctor`` against real backends: a private Postfix's etc dir, clamd, spamd,
a resolver serving a DNSBL, the SQLite store — and the same with them absent."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, free_port


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.harness.dns import LocalDns
    from tests.harness.scanners import Clamd, Spamd

    root: Path = tmp_path_factory.mktemp("doctor")
    started: dict[str, Any] = {}
    try:
        started["clamd"] = Clamd(root / "clamd").start()
        started["spamd"] = Spamd(root / "spamd", children=1).start()
        # The shipped zones (milterd/defaults/rules/dnsbl.toml) always load: serve their test entry too.
        zones = ("bl.doctor.test", "zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")
        started["dns"] = LocalDns(root / "dns", [], {zone: ("ip4set", "127.0.0.2\n") for zone in zones}).start()
        yield started
    finally:
        for daemon in started.values():
            daemon.stop()


def _milterd(root: Path, sections: dict[str, dict[str, Any]], rules: dict[str, str] | None = None) -> Milterd:
    return Milterd(root, sections, rules)  # not started: doctor only reads its milter.conf


def _postfix(root: Path, milter: str, **extra: str) -> Postfix:
    postfix = Postfix(root / "postfix", relay_port=free_port(), milter=milter, extra=extra)
    postfix.write_config()
    return postfix


def _doctor(milterd: Milterd, *args: str) -> tuple[int, dict[str, Any]]:
    result = milterd.cli("doctor", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def test_everything_reachable(tmp_path: Path, backends: dict[str, Any]) -> None:
    milterd = _milterd(tmp_path / "m", {
        # max_size at this Postfix's message_size_limit (80000000): a larger one would be delivered scanned in part (a warning).
        "clamav": {"enabled": True, "address": backends["clamd"].address, "timeout": 30, "max_size": 80000000},
        "spamd": {"enabled": True, "address": backends["spamd"].address, "timeout": 60},
        "dns": {"nameservers": [backends["dns"].nameserver], "timeout": 2},
    }, {"dnsbl.toml": '[[dnsbl]]\nname = "DOCTOR"\nzone = "bl.doctor.test"\n'})
    assert milterd.cli("db", "upgrade").returncode == 0
    postfix = _postfix(tmp_path, milterd.postfix_spec, milter_content_timeout="300s")
    postfix.postfix("start")
    try:
        milterd.config.write_text(milterd.config.read_text() + f'\n[quarantine]\nrelease_smtp = "127.0.0.1:{postfix.reinject_port}"\n')
        from tests.harness.postfix import wait_for_port

        wait_for_port(postfix.reinject_port)
        code, report = _doctor(milterd, "--postfix-config", str(postfix.etc))
    finally:
        postfix.stop()
    statuses = {f["name"]: f["status"] for f in report["findings"]}
    assert code == 0, report
    assert statuses["quarantine release_smtp"] == "ok"
    # The only warnings: the classifier is on by default and abstains until it has learned (nothing is learned here),
    # and the harness's TCP socket, which every local user may open (one malformed macro packet crashes a worker).
    assert {name for name, status in statuses.items() if status not in ("ok", "skip")} == {"classifier", "[milter] socket"}, report
    socket = next(f for f in report["findings"] if f["name"] == "[milter] socket")
    assert socket["detail"].startswith("every local user may open inet:127.0.0.1:") and "unix socket" in socket["detail"], socket
    assert statuses["classifier"] == report["status"] == "warn", report
    classifier = next(f for f in report["findings"] if f["name"] == "classifier")
    assert "0 spam and 0 ham learned" in classifier["detail"] and "abstains" in classifier["detail"], classifier
    assert statuses["configuration"] == statuses["database"] == statuses["clamd"] == statuses["spamd"] == "ok"
    assert statuses["dns bl.doctor.test"] == "ok"
    assert statuses["postfix smtpd_milters"] == statuses["postfix message_size_limit"] == "ok"
    clamd = next(f for f in report["findings"] if f["name"] == "clamd")
    assert "ClamAV" in clamd["detail"]


def test_absent_backends_fail(tmp_path: Path) -> None:
    dead = free_port()
    milterd = _milterd(tmp_path / "m", {
        "clamav": {"enabled": True, "address": f"tcp:127.0.0.1:{dead}", "timeout": 2},
        "spamd": {"enabled": True, "address": f"tcp:127.0.0.1:{dead}", "timeout": 2},
        "dns": {"nameservers": [f"127.0.0.1:{dead}"], "timeout": 1},
        "database": {"url": f"sqlite:///{tmp_path / 'absent.sqlite'}", "auto_upgrade": False},
    }, {"dnsbl.toml": '[[dnsbl]]\nname = "DOCTOR"\nzone = "bl.doctor.test"\n'})
    code, report = _doctor(milterd, "--no-postfix")
    statuses = {f["name"]: f["status"] for f in report["findings"]}
    assert code == 1 and report["status"] == "fail"
    assert statuses["clamd"] == statuses["spamd"] == statuses["database"] == statuses["dns bl.doctor.test"] == "fail"
    assert statuses["quarantine release_smtp"] == "warn"
    assert not (tmp_path / "absent.sqlite").exists()


def test_risky_postfix_settings_warn(tmp_path: Path, backends: dict[str, Any]) -> None:
    milterd = _milterd(tmp_path / "m", {"clamav": {"enabled": True, "address": backends["clamd"].address, "timeout": 400, "on_error": "tempfail"},
                                        "dns": {"nameservers": [backends["dns"].nameserver], "timeout": 2}})
    assert milterd.cli("db", "upgrade").returncode == 0
    postfix = _postfix(tmp_path, "inet:127.0.0.1:1", milter_default_action="accept", milter_content_timeout="300s")
    code, report = _doctor(milterd, "--postfix-config", str(postfix.etc))
    warned = {f["name"] for f in report["findings"] if f["status"] == "warn"}
    assert code == 0 and report["status"] == "warn"
    assert {"postfix smtpd_milters", "postfix milter_default_action", "postfix milter_content_timeout"} <= warned
    strict = milterd.cli("doctor", "--strict", "--postfix-config", str(postfix.etc))
    assert strict.returncode == 1 and "WARN" in strict.stdout


def test_a_comment_after_a_main_cf_value_fails(tmp_path: Path, backends: dict[str, Any]) -> None:
    """The README's main.cf snippets had comments after values, which Postfix reads as part of them (found by review):
    doctor, reading postconf, says so for each such milter parameter."""
    milterd = _milterd(tmp_path / "m", {"dns": {"nameservers": [backends["dns"].nameserver], "timeout": 2}})
    assert milterd.cli("db", "upgrade").returncode == 0
    postfix = _postfix(tmp_path, milterd.postfix_spec, non_smtpd_milters="$smtpd_milters   # optional: also mail submitted with sendmail(1)",
                       milter_default_action="tempfail     # milterd unreachable: clients retry, nothing is lost")
    code, report = _doctor(milterd, "--postfix-config", str(postfix.etc))
    failed = {f["name"]: f["detail"] for f in report["findings"] if f["status"] == "fail"}
    assert code == 1 and report["status"] == "fail"
    assert {"postfix non_smtpd_milters comment", "postfix milter_default_action comment"} <= set(failed), failed
    assert "main.cf has no end-of-line comments" in failed["postfix milter_default_action comment"]


def test_bad_configuration_fails(tmp_path: Path) -> None:
    milterd = _milterd(tmp_path / "m", {"actions": {"rejct": 3}})
    code, report = _doctor(milterd, "--no-postfix")
    assert code == 1 and report["findings"][0]["name"] == "configuration" and "rejct" in report["findings"][0]["detail"]


def test_a_dead_nameserver_behind_a_live_one_is_reported(tmp_path: Path, backends: dict[str, Any]) -> None:
    """milterd asks the next nameserver when one is down, so the DNS lists' probe passes: only asking each alone shows the dead one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # open, never read: a host that drops
        port = silent.getsockname()[1]
        milterd = _milterd(tmp_path / "m", {"dns": {"nameservers": [f"127.0.0.1:{port}", backends["dns"].nameserver], "timeout": 1}},
                           {"dnsbl.toml": '[[dnsbl]]\nname = "DOCTOR"\nzone = "bl.doctor.test"\n'})
        assert milterd.cli("db", "upgrade").returncode == 0
        code, report = _doctor(milterd, "--no-postfix")
    findings = {f["name"]: f for f in report["findings"]}
    assert findings["dns bl.doctor.test"]["status"] == "ok"
    assert findings[f"dns nameserver [127.0.0.1]:{port}"]["status"] == "fail" and code == 1
    assert "did not answer in time" in findings[f"dns nameserver [127.0.0.1]:{port}"]["detail"]
    assert findings[f"dns nameserver {backends['dns'].nameserver.replace('127.0.0.1', '[127.0.0.1]')}"]["status"] == "ok"
