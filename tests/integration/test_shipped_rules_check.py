"""The shipped rule files always load; the local [rules] dir adds to them or overrides them
(`milterd check` and the checks against a private unbound and rbldnsd serving the shipped zones)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from milterd.cli import main
from milterd.config import ConfigError, load_config
from milterd.ruleset import SHIPPED_DIR, origins
from milterd.services import build
from tests.conftest import message
from tests.harness.dns import LocalDns

LISTED_PBL = "192.0.2.77"  # Spamhaus ZEN answers 127.0.0.10: DNSBL_SPAMHAUS_PBL
LISTED_SBL = "192.0.2.78"  # 127.0.0.2: DNSBL_SPAMHAUS_SBL, a reject


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    server = LocalDns(
        tmp_path_factory.mktemp("dns"), [],
        {
            "zen.spamhaus.org": ("ip4set", f"{LISTED_PBL} :127.0.0.10:PBL listed\n{LISTED_SBL} :127.0.0.2:SBL listed\n"),
            "bl.local.test": ("ip4set", f"{LISTED_PBL} :127.0.0.2:locally listed\n"),
        },
    ).start()
    yield server
    server.stop()


def conf_alone(root: Path, dns: LocalDns, extra: str = "") -> Path:
    """A milter.conf in a directory of its own, without rules/ beside it (as /etc/milterd/milter.conf)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "milter.conf"
    path.write_text(f'[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = 3\n[database]\nurl = "sqlite:///{root}/log.sqlite"\n{extra}')
    return path


def check_symbols(capsys: pytest.CaptureFixture[str], conf: Path, eml: Path, ip: str) -> tuple[int, dict[str, float]]:
    status = main(["check", "-c", str(conf), str(eml), "--client-ip", ip, "--helo", "mail.example.org", "--json"])
    out = json.loads(capsys.readouterr().out)
    return status, {s["symbol"]: s["score"] for s in out["messages"][0]["symbols"]}


def test_config_without_rules_dir_still_gets_the_shipped_dnsbl_symbols(tmp_path: Path, dns: LocalDns, capsys: pytest.CaptureFixture[str]) -> None:
    conf = conf_alone(tmp_path / "etc", dns)
    assert not (tmp_path / "etc" / "rules").exists()
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    status, symbols = check_symbols(capsys, conf, eml, LISTED_PBL)
    assert symbols.get("DNSBL_SPAMHAUS_PBL") == 2.0, symbols
    status, symbols = check_symbols(capsys, conf, eml, LISTED_SBL)
    assert "DNSBL_SPAMHAUS_SBL" in symbols and status == 17  # the shipped zone's reject


def test_local_dir_overrides_adds_and_disables(tmp_path: Path, dns: LocalDns, capsys: pytest.CaptureFixture[str]) -> None:
    conf = conf_alone(tmp_path / "etc", dns, '[rules]\ndir = "rules.d"\n')
    local = tmp_path / "etc" / "rules.d"
    local.mkdir()
    (local / "zones.toml").write_text(
        '[symbols]\nDNSBL_SPAMHAUS_PBL = 4.5\n\n'
        '[[dnsbl]]\nname = "SPAMCOP"\nenabled = false\n\n'
        '[[dnsbl]]\nname = "BARRACUDA"\nzone = "bl.local.test"\nscore = 1.25\n\n'
        '[[dnsbl]]\nname = "EXTRA"\nzone = "extra.local.test"\n'
    )
    services = build(load_config(conf))
    [dnsbl] = [c for c in services.checks if c.name == "dnsbl"]
    zones = {z.symbol: z.zone for z in dnsbl.zones}  # type: ignore[attr-defined]
    assert zones == {"DNSBL_SPAMHAUS": "zen.spamhaus.org", "DNSBL_BARRACUDA": "bl.local.test", "DNSBL_EXTRA": "extra.local.test", "DNSWL_ORG": "list.dnswl.org"}
    found = {(o.kind, o.name): o for o in origins(services.ruleset)}
    assert found["dnsbl", "SPAMHAUS"].file == SHIPPED_DIR / "dnsbl.toml" and found["dnsbl", "SPAMHAUS"].layer == "shipped"
    assert found["dnsbl", "BARRACUDA"].file == local / "zones.toml" and found["dnsbl", "BARRACUDA"].layer == "local"
    assert found["dnsbl", "SPAMCOP"].detail == "disabled"
    assert found["weight", "DNSBL_SPAMHAUS_PBL"].file == local / "zones.toml"
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    _status, symbols = check_symbols(capsys, conf, eml, LISTED_PBL)
    assert symbols["DNSBL_SPAMHAUS_PBL"] == 4.5 and symbols["DNSBL_BARRACUDA"] == 1.25
    # config show and doctor name the file of each zone and weight
    assert main(["config", "show", "-c", str(conf)]) == 0
    shown = capsys.readouterr().out
    tomllib.loads(shown)
    line = next(line for line in shown.splitlines() if " SPAMHAUS " in line)
    assert str(SHIPPED_DIR / "dnsbl.toml") in line and "(shipped)" in line
    line = next(line for line in shown.splitlines() if " BARRACUDA " in line)
    assert str(local / "zones.toml") in line and "(local)" in line
    assert main(["doctor", "-c", str(conf), "--no-postfix", "--json"]) in (0, 1)
    findings = {f["name"]: f["detail"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert "shipped" in findings["rules dnsbl SPAMHAUS"] and str(local / "zones.toml") in findings["rules dnsbl BARRACUDA"]
    assert "DNSBL_SPAMHAUS_PBL=4.5" in findings["rules weights zones.toml"]


def test_missing_local_dir_is_refused_with_file_key_and_reason(tmp_path: Path, dns: LocalDns, capsys: pytest.CaptureFixture[str]) -> None:
    conf = conf_alone(tmp_path / "etc", dns, '[rules]\ndir = "/nonexistent/rules"\n')
    with pytest.raises(ConfigError) as info:
        build(load_config(conf))
    assert info.value.file == str(conf) and info.value.key == "[rules] dir" and "does not exist" in info.value.reason
    assert main(["rules", "lint", "-c", str(conf)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the default "rules" may be absent: the shipped rules alone
    assert build(load_config(conf_alone(tmp_path / "other", dns))).ruleset.section("dnsbl")


def test_disabling_an_unknown_zone_is_refused(tmp_path: Path, dns: LocalDns) -> None:
    conf = conf_alone(tmp_path / "etc", dns)
    (tmp_path / "etc" / "rules").mkdir()
    (tmp_path / "etc" / "rules" / "x.toml").write_text('[[dnsbl]]\nname = "SPAMKOP"\nenabled = false\n')
    with pytest.raises(ConfigError) as info:
        build(load_config(conf))
    assert info.value.key == "dnsbl SPAMKOP.enabled" and "misspelt" in info.value.reason


def test_two_local_zones_of_one_name_are_still_refused(tmp_path: Path, dns: LocalDns) -> None:
    conf = conf_alone(tmp_path / "etc", dns)
    (tmp_path / "etc" / "rules").mkdir()
    (tmp_path / "etc" / "rules" / "x.toml").write_text('[[dnsbl]]\nname = "TWICE"\nzone = "a.test"\n\n[[dnsbl]]\nname = "TWICE"\nzone = "b.test"\n')
    with pytest.raises(ConfigError, match="already defined"):
        build(load_config(conf))
