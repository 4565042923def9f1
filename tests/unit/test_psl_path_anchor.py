"""``[checks.dmarc] public_suffix_list`` is relative to milter.conf, as every other file milter.conf names.

It was read relative to the working directory: ``milterd serve -c /etc/milterd/milter.conf``
started from ``/`` refused a list lying beside milter.conf, or read another one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from milterd.checks.dmarc import Dmarc, org_domain
from milterd.config import ConfigError, load_config
from milterd.milter.supervisor import reload_files

PSL = "// a small list\nuk\nco.uk\nexample\n"


def _conf(directory: Path, psl: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "milter.conf"
    path.write_text(f'[checks.dmarc]\nenabled = true\npublic_suffix_list = "{psl}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    return path


def test_a_relative_list_is_the_one_beside_milter_conf_whatever_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    conf = _conf(etc, "psl.dat")
    (etc / "psl.dat").write_text(PSL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "psl.dat").write_text("// another list, with no co.uk\nuk\n")
    monkeypatch.chdir(elsewhere)
    config = load_config(conf)
    assert config.checks.dmarc.public_suffix_list == str(etc.resolve() / "psl.dat")
    Dmarc(SimpleNamespace(config=config))  # type: ignore[arg-type]
    assert org_domain("mail.bank.co.uk", config.checks.dmarc.public_suffix_list) == "bank.co.uk"


def test_a_relative_list_missing_beside_milter_conf_is_refused_naming_that_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _conf(tmp_path / "etc", "psl.dat")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "psl.dat").write_text(PSL)  # in the working directory only
    config = load_config(conf)
    with pytest.raises(ConfigError) as caught:
        Dmarc(SimpleNamespace(config=config))  # type: ignore[arg-type]
    assert str((tmp_path / "etc" / "psl.dat").resolve()) in str(caught.value)


def test_an_absolute_list_and_a_changed_copy_keep_their_path(tmp_path: Path) -> None:
    absolute = tmp_path / "lists" / "psl.dat"
    config = load_config(_conf(tmp_path / "etc", str(absolute)))
    assert config.checks.dmarc.public_suffix_list == str(absolute)
    relative = load_config(_conf(tmp_path / "etc2", "sub/psl.dat"))
    changed = relative.with_changes({"actions.reject": 20})
    assert changed.checks.dmarc.public_suffix_list == str((tmp_path / "etc2").resolve() / "sub" / "psl.dat")


def test_a_reload_checks_the_list_as_one_of_its_files(tmp_path: Path) -> None:
    config = load_config(_conf(tmp_path / "etc", "psl.dat"))
    assert ("[checks.dmarc] public_suffix_list", (tmp_path / "etc").resolve() / "psl.dat") in reload_files(config)

