"""pyproject.toml's package data names the files that are really there, and all of them."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def package_data() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs: list[str] = project["tool"]["setuptools"]["package-data"]["milterd"]
    return globs


def test_every_package_data_pattern_matches_a_file() -> None:
    empty = [pattern for pattern in package_data() if not list((ROOT / "milterd").glob(pattern))]
    assert not empty, f"package-data patterns that match no file: {empty}"


def test_every_file_outside_python_packages_is_packaged() -> None:
    """Files a plain package find leaves out (data, and modules in folders without __init__.py) are listed."""
    packaged = {path for pattern in package_data() for path in (ROOT / "milterd").glob(pattern)}
    needed = []
    for path in (ROOT / "milterd").rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        in_package = path.suffix == ".py" and (path.parent / "__init__.py").exists()
        if not in_package and path not in packaged:
            needed.append(str(path.relative_to(ROOT)))
    assert not needed, f"files missing from package-data: {needed}"
