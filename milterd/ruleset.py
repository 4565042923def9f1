"""The rule files in ``rules/``: symbol weights and the sections checks read.

Every ``*.toml`` file of the rules directory is read in name order.  The
``[symbols]`` table re-weights symbols (``NAME = 2.5`` or
``NAME = { score = 2.5, description = "…" }``); other top-level keys belong
to the checks that declare them in ``rule_sections`` (``[[dnsbl]]``,
``[[rule]]``, …) and are handed to them with the file they came from, so that
their errors can name it.  A key no check reads is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, read_toml


@dataclass(frozen=True)
class RuleSource:
    """One value of a rule section with the file it came from."""

    file: Path
    value: Any


@dataclass
class Ruleset:
    """What the rules directory says: weights and check sections."""

    weights: dict[str, float] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    weight_files: dict[str, Path] = field(default_factory=dict)
    sections: dict[str, list[RuleSource]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def section(self, key: str) -> list[RuleSource]:
        """Every value given for top-level key *key*, in file order."""
        return self.sections.get(key, [])


def load_ruleset(directory: Path, known_sections: set[str]) -> Ruleset:
    """Read every rule file of *directory*; a missing directory gives an empty ruleset."""
    ruleset = Ruleset()
    if not directory.exists():
        return ruleset
    if not directory.is_dir():
        raise ConfigError(directory, "", "the rules path is not a directory")
    for path in sorted(directory.glob("*.toml")):
        data = read_toml(path)
        ruleset.files.append(path)
        for key, value in data.items():
            if key == "symbols":
                _read_symbols(ruleset, path, value)
            elif key in known_sections:
                ruleset.sections.setdefault(key, []).append(RuleSource(path, value))
            else:
                known = ", ".join(sorted(known_sections | {"symbols"}))
                raise ConfigError(path, key, f"unknown section; rule files know: {known}")
    return ruleset


def _read_symbols(ruleset: Ruleset, path: Path, table: Any) -> None:
    if not isinstance(table, dict):
        raise ConfigError(path, "symbols", "must be a table of NAME = score")
    for name, value in table.items():
        key = f"symbols.{name}"
        if isinstance(value, dict):
            unknown = set(value) - {"score", "description"}
            if unknown:
                raise ConfigError(path, key, f"unknown key {sorted(unknown)[0]!r}; a symbol has score and description")
            if "description" in value:
                if not isinstance(value["description"], str):
                    raise ConfigError(path, f"{key}.description", "must be a string")
                ruleset.descriptions[name] = value["description"]
            value = value.get("score")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, key, f"score must be a number, got {value!r}")
        ruleset.weights[name] = float(value)
        ruleset.weight_files[name] = path
