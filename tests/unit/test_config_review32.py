"""Configuration refusals (32nd review): banned extensions that match nothing, TOML Python cannot convert, what
``rules lint`` said OK to and ``serve`` refused, and a milter.conf that is there but no readable file."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd import config as config_module
from milterd.cli import main
from milterd.config import Config, ConfigError, load_config

DNS = '[dns]\nnameservers = ["127.0.0.1:9"]\n'


def lint(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    conf = tmp_path / "milter.conf"
    conf.write_text(DNS + text)
    status = main(["rules", "lint", "-c", str(conf)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("entry", ["*.exe", "tar.gz", "", " ", "e xe", "dir/exe", "ex?"])
def test_a_banned_extension_that_matches_no_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str) -> None:
    # "*.exe" was taken: an attached invoice.exe was accepted (score 1), as with no banned list at all.
    status, err = lint(tmp_path, f'[checks.attachments]\nbanned_extensions = ["exe", "{entry}"]\n', capsys)
    assert status == 2 and "[checks.attachments] banned_extensions" in err and "is not a file name extension" in err
    assert "Traceback" not in err


def test_a_banned_extension_is_taken_without_its_dot_and_blanks() -> None:
    config = Config.model_validate({"checks": {"attachments": {"banned_extensions": [".exe", "SCR ", "js"]}}})
    assert config.checks.attachments.banned_extensions == ["exe", "SCR", "js"]


@pytest.mark.parametrize(("text", "reason"), [
    ("[milter]\nworkers = " + "9" * 5000 + "\n", "not valid TOML: "),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deep"),
])
def test_toml_python_cannot_convert_is_refused_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, reason: str) -> None:
    status, err = lint(tmp_path, text, capsys)
    assert status == 2 and reason in err and "Traceback" not in err
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "local.toml").write_text(text)
    status, err = lint(tmp_path, f'[rules]\ndir = "{rules}"\n', capsys)
    assert status == 2 and f"{rules / 'local.toml'}" in err and reason in err


@pytest.mark.parametrize(("text", "key"), [
    ('[milter]\nuser = "no-such-user-32"\n', "[milter] user"),
    ('[milter]\ngroup = "no-such-group-32"\n', "[milter] group"),
    ('[milter]\nspool_dir = "/nonexistent-32/spool"\n', "[milter] spool_dir"),
])
def test_lint_refuses_what_serve_refuses_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    # Each was "OK" (exit 0), and the restart that followed exited 2: Postfix then tempfailed all mail.
    status, err = lint(tmp_path, text, capsys)
    assert status == 2 and key in err, err


def test_lint_still_passes_a_good_account_and_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = lint(tmp_path, '[milter]\nuser = "nobody"\n', capsys)  # the spool: the system's temporary directory
    assert status == 0, err


@pytest.mark.parametrize("kind", ["dangling link", "directory"])
def test_a_milter_conf_that_is_there_but_no_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    # Skipped silently: milterd ran on the embedded defaults (no local_domains, other thresholds).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "DEFAULT_PATHS", (Path("milter.conf"), tmp_path / "etc" / "milter.conf"))
    if kind == "directory":
        Path("milter.conf").mkdir()
    else:
        Path("milter.conf").symlink_to(tmp_path / "mounted" / "milter.conf")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "milter.conf" in str(info.value) and "cannot read" in str(info.value)


def test_a_milter_conf_in_a_directory_one_cannot_search_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Path.is_file() raised PermissionError: a traceback for a non-root administrator running `milterd log`.
    secret = tmp_path / "secret" / "milter.conf"
    monkeypatch.setattr(config_module, "DEFAULT_PATHS", (tmp_path / "none.conf", secret))
    lstat = Path.lstat

    def denied(self: Path) -> object:
        if self == secret:
            raise PermissionError(13, "Permission denied", str(self))
        return lstat(self)

    monkeypatch.setattr(Path, "lstat", denied)
    assert config_module.find_config(None) == secret
    monkeypatch.setattr(config_module, "DEFAULT_PATHS", (tmp_path / "none.conf", tmp_path / "a-file" / "milter.conf"))
    (tmp_path / "a-file").write_text("")
    assert config_module.find_config(None) is None  # ENOTDIR: nothing there, as before
