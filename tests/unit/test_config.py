"""milter.conf loading: defaults, durations and sizes, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.confdoc import render_defaults
from milterd.config import Config, ConfigError, load_config
from milterd.services import build
from milterd.units import format_duration, parse_duration, parse_size

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(text)
    return path


def test_durations_and_sizes() -> None:
    assert parse_duration(30) == 30
    assert parse_duration("5m") == 300
    assert parse_duration("35d") == 35 * 86400
    assert parse_duration("1.5h") == 5400
    assert parse_size("512K") == 512 * 1024
    assert parse_size("25M") == 25 * 1024 * 1024
    assert parse_size(1000) == 1000
    assert format_duration(300) == "5m"
    for bad in ("5 minutes", "-3", True, "12x", None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_config_values_parsed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[greylist]\ndelay = "2m"\n[clamav]\nmax_size = "10M"\n[actions]\nreject = 20\nquarantine = false\n'))
    assert config.greylist.delay == 120
    assert config.clamav.max_size == 10 * 1024 * 1024
    assert config.actions.reject == 20
    assert config.actions.quarantine is False
    assert config.path == (tmp_path / "milter.conf").resolve()


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[actions]\nrejct = 12\n", "[actions] rejct", "unknown key"),
        ("[actions]\nreject = \"lots\"\n", "[actions] reject", "number"),
        ("[greylist]\ndelay = \"soon\"\n", "[greylist] delay", "duration"),
        ("[milter]\ntrusted_networks = [\"10.0.0.0/33\"]\n", "[milter] trusted_networks", "not a network"),
        ("[millter]\nworkers = 2\n", "millter", "unknown key"),
        ("[milter]\nworkers = -1\n", "[milter] workers", "greater than or equal"),
    ],
)
def test_bad_config_names_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.key == key
    assert reason in info.value.reason


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[milter\n"))


def test_bad_rule_file_refused_with_file_and_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "local.toml").write_text('[[rule]]\nname = "BROKEN"\nheader = "Subject"\nregex = "(unclosed"\n')
    config = load_config(write(tmp_path, '[rules]\ndir = "rules"\n'))
    with pytest.raises(ConfigError) as info:
        build(config)
    assert info.value.file == str(rules / "local.toml")
    assert "BROKEN" in info.value.key
    assert "regular expression" in info.value.reason


def test_unknown_symbol_weight_refused(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "symbols.toml").write_text("[symbols]\nNO_SUCH_SYMBOL_EVER = 3\n")
    with pytest.raises(ConfigError, match="no check emits this symbol"):
        build(load_config(write(tmp_path, '[rules]\ndir = "rules"\n')))


def test_with_changes_validates() -> None:
    config = Config().with_changes({"actions.reject": 12})
    assert config.actions.reject == 12
    with pytest.raises(ConfigError):
        Config().with_changes({"actions.nope": 1})


def test_shipped_milter_conf_is_the_documented_defaults() -> None:
    """The repository's milter.conf is generated from the schema; regenerate with
    `milterd config defaults > milter.conf` after changing config.py."""
    shipped = (REPO / "milter.conf").read_text()
    assert shipped == render_defaults()
    config = load_config(REPO / "milter.conf")
    assert config.model_dump(exclude={"path"}) == Config().model_dump(exclude={"path"})


def test_shipped_rules_load() -> None:
    services = build(load_config(REPO / "milter.conf"))
    assert services.checks


def test_each_checks_section_is_defined_beside_its_check() -> None:
    # A new check is one module: its [checks.NAME] options model lives with its code.
    import importlib

    from milterd.checks import Check
    from milterd.config import ChecksSection

    for name, field in ChecksSection.model_fields.items():
        model = field.annotation
        assert model is not None
        module = importlib.import_module(model.__module__)
        assert model.__module__.startswith("milterd.checks."), f"[checks.{name}]'s model {model.__name__} is in {model.__module__}"
        assert any(issubclass(check, Check) for check in getattr(module, "CHECKS", ())), f"{model.__module__} defines no check"
        assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring (milter.conf's introduction of [checks.{name}])"


def test_options_module_is_a_leaf() -> None:
    # config imports the checks, so what the checks need of it must not import back.
    import ast

    tree = ast.parse((REPO / "milterd" / "options.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert imported <= {"units"}, imported


def test_a_huge_value_is_not_quoted_whole_in_the_error(tmp_path: Path) -> None:
    # Review, thirty-fourth session: a socket of 100,000 characters made an error line as long.
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[milter]\nsocket = "{"a" * 100_000}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    message = str(info.value)
    assert len(message) < 800 and "[milter] socket" in message and message.endswith("inet:HOST:PORT, inet:PORT@HOST or unix:/path")
    assert "characters)…" in message


@pytest.mark.parametrize(("key", "value"), [
    ("seal_domain", "ex ample.org"), ("seal_domain", "a;b=c"), ("seal_domain", "-x.org"), ("seal_domain", "*.example.org"),
    ("seal_selector", "a b"), ("seal_selector", "s;x=y"), ("seal_selector", "s\\ns"),
])
def test_an_arc_seal_domain_or_selector_that_is_no_name_is_refused(tmp_path: Path, key: str, value: str) -> None:
    # Review, thirty-fourth session: written as they were into ARC-Seal, no verifier took the seals.
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[checks.arc]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert info.value.key == f"[checks.arc] {key}"


def test_an_arc_seal_domain_is_kept_as_its_a_labels_and_paths_with_a_nul_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text('[checks.arc]\nseal_domain = "Bücher.Example"\nseal_selector = "arc2026"\n')
    assert load_config(conf).checks.arc.seal_domain == "xn--bcher-kva.example"
    for key in ("release_password_file", "postfix_config"):
        conf.write_text(f'[quarantine]\n{key} = "a\\u0000b"\n')
        with pytest.raises(ConfigError) as info:
            load_config(conf)
        assert info.value.key == f"[quarantine] {key}"  # doctor ended in a traceback
