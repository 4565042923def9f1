"""Rule files: the shipped ones in the package, then the site's ``[rules] dir``.

Rule files are read in two layers, as SpamAssassin and Rspamd do: the files
shipped in the package (``milterd/defaults/rules/*.toml``: the DNS lists and
their scores) always load, then every ``*.toml`` of the local directory, each
layer in name order.  The local layer adds to the shipped one or overrides it:

* ``[symbols]`` re-weights symbols (``NAME = 2.5`` or
  ``NAME = { score = 2.5, description = "…" }``); a later weight wins;
* a ``[[dnsbl]]``, ``[[dnswl]]`` or ``[[rule]]`` table with the ``name`` of
  an earlier one replaces it whole (none of the earlier table's keys are
  kept: a zone for another list must not inherit codes, actions or
  ``refused`` meant for the shipped one); with ``enabled = false`` it removes it.

Other top-level keys belong to the checks that declare them in
``rule_sections`` and are handed to them with the file they came from, so
that their errors can name it.  A key no check reads is refused.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .checks.dnslists import hide_access_key
from .config import ConfigError, read_toml
from .options import finite

#: The rule files shipped in the package; they always load, before the local ones.
SHIPPED_DIR = Path(__file__).resolve().parent / "defaults" / "rules"

#: Sections whose tables are matched by ``name`` across files (override, ``enabled = false``).
NAMED_SECTIONS = ("dnsbl", "dnswl", "uribl", "rule")


@dataclass(frozen=True)
class RuleSource:
    """One value of a rule section with the file it came from."""

    file: Path
    value: Any
    #: Its position among its file's ``[[key]]`` tables (a table merged by name is one source of its own).
    position: int = 0


@dataclass
class Ruleset:
    """What the rule files say: weights and check sections, with where each came from."""

    weights: dict[str, float] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    weight_files: dict[str, Path] = field(default_factory=dict)
    sections: dict[str, list[RuleSource]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    #: "section NAME" → the file that disabled it (``enabled = false``).
    disabled: dict[str, Path] = field(default_factory=dict)

    def section(self, key: str) -> list[RuleSource]:
        """Every value given for top-level key *key*, in file order."""
        return self.sections.get(key, [])

    def tables(self, key: str) -> Iterator[tuple[Path, int, Any]]:
        """Every table given for *key* (``[[key]]`` or a single ``[key]``), with
        its file and its position in that file's array, in file order."""
        for source in self.section(key):
            entries = source.value if isinstance(source.value, list) else [source.value]
            for offset, entry in enumerate(entries):
                yield source.file, source.position + offset, entry


def is_shipped(path: Path) -> bool:
    """Whether *path* is one of the rule files shipped in the package."""
    return path.resolve().is_relative_to(SHIPPED_DIR)


def load_ruleset(directory: Path | None, known_sections: set[str], shipped: Path | None = SHIPPED_DIR) -> Ruleset:
    """Read the shipped rule files, then those of *directory* (None: none), merged by name.

    A *directory* that does not exist is the caller's concern (see
    :func:`milterd.config.Config.rules_dir`); here it reads as empty.
    """
    ruleset = Ruleset()
    for layer in (shipped, directory):
        if layer is None or not layer.exists():
            continue
        if not layer.is_dir():
            raise ConfigError(layer, "", "the rules path is not a directory")
        for path in _rule_files(layer):
            _read_file(ruleset, path, read_toml(path), known_sections)
    return ruleset


def _rule_files(directory: Path) -> list[Path]:
    """The ``*.toml`` files of *directory* in name order; ConfigError when it cannot be listed
    (Path.glob would list an unreadable directory as empty: its rules silently not loaded)."""
    try:
        with os.scandir(directory) as entries:
            names = [entry.name for entry in entries]
    except OSError as exc:
        raise ConfigError(directory, "", f"cannot read the rules directory: {exc.strerror or exc}") from None
    return sorted(directory / name for name in names if fnmatch.fnmatchcase(name, "*.toml"))


def _read_file(ruleset: Ruleset, path: Path, data: dict[str, Any], known_sections: set[str]) -> None:
    ruleset.files.append(path)
    for key, value in data.items():
        if key == "symbols":
            _read_symbols(ruleset, path, value)
        elif key in NAMED_SECTIONS and key in known_sections and isinstance(value, (list, dict)):
            # A single [dnsbl] table is one [[dnsbl]]: it overrides and disables by name alike.
            for position, entry in enumerate(value if isinstance(value, list) else [value]):
                _merge_named(ruleset, path, key, position, entry)
        elif key in known_sections:
            ruleset.sections.setdefault(key, []).append(RuleSource(path, value))
        else:
            known = ", ".join(sorted(known_sections | {"symbols"}))
            raise ConfigError(path, key, f"unknown section; rule files know: {known}")


def _merge_named(ruleset: Ruleset, path: Path, key: str, position: int, entry: Any) -> None:
    """Add one ``[[key]]`` table: it replaces an earlier one of its name, or removes it."""
    entries = ruleset.sections.setdefault(key, [])
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        entries.append(RuleSource(path, entry, position))  # the check refuses it with a clear reason
        return
    where = f"{key} {name}.enabled"
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(path, where, "must be true or false")
    earlier = [i for i, source in enumerate(entries) if _name(source) == name and source.file.parent != path.parent]
    if not enabled:
        if not any(_name(s) == name for s in entries):
            raise ConfigError(path, where, f"no earlier [[{key}]] is named {name} (misspelt?)")
        entries[:] = [s for s in entries if _name(s) != name]
        ruleset.disabled[f"{key} {name}"] = path
        return
    value = {k: v for k, v in entry.items() if k != "enabled"}
    if earlier:
        # Another layer's table of that name: this one replaces it.  Two of one
        # name in the same layer stay side by side for the check to refuse.
        entries[earlier[0]] = RuleSource(path, value, position)
        for index in reversed(earlier[1:]):
            del entries[index]
    else:
        entries.append(RuleSource(path, value, position))
    ruleset.disabled.pop(f"{key} {name}", None)


def _name(source: RuleSource) -> str | None:
    value = source.value.get("name") if isinstance(source.value, dict) else None
    return value if isinstance(value, str) else None


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
        try:
            ruleset.weights[name] = finite(value)
        except ValueError as exc:
            raise ConfigError(path, key, f"score {exc}") from None
        ruleset.weight_files[name] = path


@dataclass(frozen=True)
class Origin:
    """Where one zone, rule or weight in effect came from (``config show``, ``doctor``)."""

    kind: str  # "dnsbl", "dnswl", "rule" or "weight"
    name: str
    detail: str  # the zone, the rule's kind, the score, or "disabled"
    file: Path

    @property
    def layer(self) -> str:
        """``shipped`` or ``local``."""
        return "shipped" if is_shipped(self.file) else "local"


def origins(ruleset: Ruleset) -> list[Origin]:
    """Every named table and weight of *ruleset* with its file, disabled zones included."""
    found: list[Origin] = []
    for kind in NAMED_SECTIONS:
        for source in ruleset.section(kind):
            name = _name(source)
            if name is None:
                continue
            value = source.value
            zone = str(value.get("zone", ""))
            detail = hide_access_key(zone, zone) if kind != "rule" else next((k for k in ("header", "body", "uri", "meta") if k in value), "")
            found.append(Origin(kind, name, detail, source.file))
    for key, path in ruleset.disabled.items():
        kind, _, name = key.partition(" ")
        found.append(Origin(kind, name, "disabled", path))
    for name, path in sorted(ruleset.weight_files.items()):
        found.append(Origin("weight", name, f"{ruleset.weights[name]:g}", path))
    return found
