"""The ``milterd`` command as a process, the way a shell starts it (``python -m milterd``):
its version, and a bad milter.conf refused with file, key and reason, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(text)
    return path


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "milterd", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("milterd ") and result.stdout.split()[1][0].isdigit()


def test_cli_refuses_bad_config_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[actions]\nrejct = 12\n")
    result = subprocess.run([sys.executable, "-m", "milterd", "serve", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"milterd: {path}: [actions] rejct: unknown key (misspelt?)"
    assert "Traceback" not in result.stderr
