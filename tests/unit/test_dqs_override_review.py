"""The Spamhaus DQS override documented in rules/local.toml, followed as an administrator would.

The example is read from the shipped rules/local.toml (a commented-out
``[[dnsbl]]`` named SPAMHAUS), written to a temporary rules directory and
checked with ``milterd -c CONF rules lint``, resolver on a loopback port that
does not answer.  A table with a shipped zone's name replaces it whole, so the
example must restate the shipped zone's codes, actions and refused answers.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.dnsbl import Zone, parse_zone
from milterd.checks.dnslists import DEFAULT_REFUSED
from milterd.cli import main
from milterd.ruleset import SHIPPED_DIR, load_ruleset

ROOT = Path(__file__).resolve().parents[2]
DNS = '[dns]\nnameservers = ["127.0.0.1:9"]\n'
SECTIONS = {"dnsbl", "dnswl", "uribl", "rule"}


def documented_example() -> str:
    """The commented-out SPAMHAUS ``[[dnsbl]]`` of rules/local.toml, uncommented."""
    lines = (ROOT / "rules" / "local.toml").read_text().splitlines()
    # The table header may carry prose to its right (as the BARRACUDA example does): not TOML.
    start = next(i for i in range(len(lines) - 1) if lines[i].startswith("#   [[dnsbl]]") and lines[i + 1] == '#   name = "SPAMHAUS"')
    block = ["[[dnsbl]]"]
    for line in lines[start + 1:]:
        if line.strip() == "#":
            break
        assert line.startswith("#   "), line
        block.append(line.removeprefix("#   "))
    return "\n".join(block) + "\n"


def write(directory: Path, rules: str, conf: str = DNS) -> Path:
    """milter.conf and rules/local.toml in *directory*; the milter.conf's path."""
    (directory / "rules").mkdir()
    (directory / "rules" / "local.toml").write_text(rules)
    path = directory / "milter.conf"
    path.write_text(conf)
    return path


def lint(conf: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``milterd -c CONF rules lint``."""
    status = main(["-c", str(conf), "rules", "lint"])
    return status, capsys.readouterr().err


def spamhaus(rules_dir: Path | None) -> tuple[Zone, Path]:
    """The SPAMHAUS [[dnsbl]] in effect with the rules of *rules_dir*, and its file."""
    ruleset = load_ruleset(rules_dir, SECTIONS, SHIPPED_DIR)
    found = [(parse_zone("dnsbl", f, p, e), f) for f, p, e in ruleset.tables("dnsbl") if e.get("name") == "SPAMHAUS"]
    assert len(found) == 1
    return found[0]


def shipped_table() -> dict[str, Any]:
    """The shipped SPAMHAUS table as TOML gives it."""
    tables = tomllib.loads((SHIPPED_DIR / "dnsbl.toml").read_text())["dnsbl"]
    table: dict[str, Any] = next(t for t in tables if t["name"] == "SPAMHAUS")
    return table


def test_the_documented_dqs_example_lints_and_keeps_the_shipped_codes_and_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: the example gave name, zone and score only; the replacement dropped the codes, so
    # start was refused ("milter.conf: [checks.uribl] ip_lists: no [[dnsbl]] zone or zone code
    # is named SPAMHAUS_SBL") and, with ip_lists changed, SBL and XBL no longer rejected.
    example = documented_example()
    conf = write(tmp_path, example)
    assert lint(conf, capsys) == (0, "")

    table = tomllib.loads(example)["dnsbl"][0]
    assert table["zone"] == "KEY.zen.dq.spamhaus.net"
    assert {k: v for k, v in table.items() if k != "zone"} == {k: v for k, v in shipped_table().items() if k != "zone"}

    zone, file = spamhaus(tmp_path / "rules")
    shipped, _ = spamhaus(None)
    assert file == tmp_path / "rules" / "local.toml"
    assert zone.zone == "key.zen.dq.spamhaus.net"
    assert (zone.symbol, zone.score, zone.reject, zone.refused) == ("DNSBL_SPAMHAUS", 3.0, False, ("127.255.255.*",))
    assert zone.codes == shipped.codes
    rejects = {c.symbol: c.reject for c in zone.codes}
    assert rejects == {"DNSBL_SPAMHAUS_SBL": True, "DNSBL_SPAMHAUS_CSS": False, "DNSBL_SPAMHAUS_XBL": True, "DNSBL_SPAMHAUS_PBL": False}
    assert {c.symbol: c.answers for c in zone.codes}["DNSBL_SPAMHAUS_XBL"] == ("127.0.0.4-127.0.0.7",)


def test_a_replacement_without_the_codes_ip_lists_needs_names_the_rule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: "milterd: …/milter.conf: [checks.uribl] ip_lists: no [[dnsbl]] zone or zone code is
    # named SPAMHAUS_SBL": the file named was not the one that dropped the code.
    conf = write(tmp_path, '[[dnsbl]]\nname = "SPAMHAUS"\nzone = "KEY.zen.dq.spamhaus.net"\nscore = 3.0\n')
    status, err = lint(conf, capsys)
    assert status == 2
    assert err.startswith(f"milterd: {tmp_path / 'rules' / 'local.toml'}: dnsbl SPAMHAUS.codes: has no code SBL, which [checks.uribl] ip_lists ({conf};")
    assert "codes here: none" in err and "keeps none of its keys" in err
    assert err.count("\n") == 1


def test_an_unknown_ip_lists_name_lists_the_names_the_rule_files_give(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: only "(names drop the DNSBL_ prefix: SPAMHAUS_SBL)": not which names there are.
    conf = write(tmp_path, "", DNS + '[checks.uribl]\nip_lists = ["SPAMHAUS_SBX"]\n')
    status, err = lint(conf, capsys)
    assert status == 2
    assert err.startswith(f"milterd: {conf}: [checks.uribl] ip_lists: no [[dnsbl]] zone or zone code is named SPAMHAUS_SBX; ")
    assert "name: SPAMHAUS, SPAMHAUS_SBL, SPAMHAUS_CSS, SPAMHAUS_XBL, SPAMHAUS_PBL, SPAMCOP, BARRACUDA " in err


def test_a_replacement_keeps_none_of_the_shipped_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The chosen semantics: another list under a shipped name must not inherit answer codes,
    # reject actions or refused answers meant for the shipped one.
    conf = write(tmp_path, '[[dnsbl]]\nname = "SPAMHAUS"\nzone = "bl.example.test"\n', DNS + "[checks.uribl]\nip_lists = []\n")
    assert lint(conf, capsys) == (0, "")
    zone, _ = spamhaus(tmp_path / "rules")
    # refused: every table's default when it has none (the 127.255.255.* error range), not the shipped table's.
    assert (zone.zone, zone.codes, zone.refused, zone.reject) == ("bl.example.test", (), DEFAULT_REFUSED, False)
