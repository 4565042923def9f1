"""Every example in README.md runs as written: its rule files pass ``milterd rules lint``,
its milter.conf snippets load and build, and the command lines that can run
offline run against a scratch SQLite store without a usage error or a traceback."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.config import ConfigError, load_config
from milterd.services import build

REPO = Path(__file__).resolve().parents[2]
RULE_TABLES = {"rule", "dnsbl", "dnswl", "symbols", "custom"}
#: Commands that need a daemon, the network or files of one's own; each is covered elsewhere.
NOT_OFFLINE = {
    ("serve",): "starts the milter (tests/integration)",
    ("reload",): "needs a running milterd",
    ("doctor",): "probes the network and Postfix (tests/integration/test_doctor.py)",
    ("quarantine", "digest"): "sends mail (tests/unit/test_quarantine_store.py)",
}
#: Commands whose README example is fine with status 1 (nothing to act on in an empty store).
MAY_FIND_NOTHING = {("greylist", "whitelist", "remove")}


def code_blocks(text: str) -> list[str]:
    """The indented code blocks of a Markdown text (4 or more spaces after a blank line), dedented."""
    blocks: list[str] = []
    current: list[str] = []
    previous_blank = True
    for line in text.splitlines():
        if line.startswith("    ") and (current or previous_blank):
            current.append(line)
        elif current and not line.strip():
            current.append("")
        else:
            if current:
                blocks.append(textwrap.dedent("\n".join(current)).strip("\n"))
                current = []
        previous_blank = not line.strip()
    if current:
        blocks.append(textwrap.dedent("\n".join(current)).strip("\n"))
    return blocks


def toml_blocks(kind: str) -> list[str]:
    found = []
    for block in code_blocks((REPO / "README.md").read_text()):
        tables = re.findall(r"^\[\[?([a-z_.]+)\]\]?\s*$", block, re.M)
        if not tables or not re.match(r"^\[", block):
            continue
        is_rules = any(t.split(".")[0] in RULE_TABLES for t in tables)
        if is_rules == (kind == "rules"):
            found.append(block)
    return found


def command_lines() -> list[str]:
    lines = []
    for block in code_blocks((REPO / "README.md").read_text()):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("milterd "):
                lines.append(line)
    return lines


def _placeholder(text: str) -> bool:
    return "|" in text or "…" in text or any(re.fullmatch(r"[A-Z][A-Z0-9_]*", t) for t in shlex.split(text))


def runnable(line: str, optional: bool = False) -> list[str] | None:
    """The argv of a README command line, None for a synopsis with placeholders (FILE, ID…).

    Its optional ``[...]`` parts are left out, or with *optional* kept where
    they name no placeholder (``[--since 1h]``, ``[--json]``).
    """
    if not re.search(r"\[[^\]]*\|", line):
        line = line.split(" | ")[0]  # a pipe into jq
    line = re.sub(r"\s*\[([^\[\]]*)\]…?", lambda m: " " + m.group(1) if optional and not _placeholder(m.group(1)) else "", line)
    if _placeholder(line):
        return None
    return shlex.split(line)[1:]


def test_readme_has_examples_of_each_kind() -> None:
    assert len(toml_blocks("rules")) >= 2 and len(toml_blocks("conf")) >= 4
    assert len([line for line in command_lines() if runnable(line)]) >= 10


@pytest.mark.parametrize("block", toml_blocks("rules"), ids=lambda b: b.splitlines()[1][:40])
def test_rule_file_examples_pass_lint(tmp_path: Path, block: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "example.toml").write_text(block + "\n")
    (tmp_path / "milter.conf").write_text("")
    status = main(["rules", "lint", "-c", str(tmp_path / "milter.conf")])
    assert status == 0, capsys.readouterr().err


@pytest.mark.parametrize("block", toml_blocks("conf"), ids=lambda b: b.splitlines()[0] + b.splitlines()[1][:30])
def test_milter_conf_examples_load_and_build(tmp_path: Path, block: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(block + "\n")
    try:
        build(load_config(path))
    except ConfigError as exc:
        pytest.fail(f"README snippet refused: {exc}\n{block}")


def test_command_lines_run_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # embedded defaults: ./milterd.sqlite
    assert main(["db", "upgrade"]) == 0
    ran = 0
    for line in command_lines():
        for argv in {tuple(a) for a in (runnable(line), runnable(line, optional=True)) if a is not None}:
            if any(argv[: len(key)] == key for key in NOT_OFFLINE):
                continue
            status = main(list(argv))
            _out, err = capsys.readouterr()
            allowed = {0, 1} if any(argv[: len(k)] == k for k in MAY_FIND_NOTHING) else {0}
            assert status in allowed, f"{line!r} as {' '.join(argv)}: exit {status}\n{err}"
            assert "Traceback" not in err and "usage:" not in err, line
            ran += 1
    assert ran >= 10


def test_the_bad_conf_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    block = next(b for b in code_blocks((REPO / "README.md").read_text()) if "milterd serve -c bad.conf" in b)
    command, expected = block.splitlines()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.conf").write_text("[actions]\nrejct = 12\n")
    assert main(shlex.split(command.removeprefix("$ "))[1:]) == 2
    err = capsys.readouterr().err.strip()
    assert err.split(": ", 2)[2] == expected.split(": ", 2)[2] and err.split(": ")[1].endswith("bad.conf")
