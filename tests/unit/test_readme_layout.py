"""The README's Layout section names every folder and module of the package."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "milterd"


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Layout\n"):]


def test_every_module_and_folder_is_in_the_layout_table() -> None:
    layout = _layout()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if "migrations" in rel.parts or path.name == "__init__.py" and len(rel.parts) > 1:
            continue
        if f"`{path.name}`" not in layout and f"{path.name}`" not in layout and f"{path.name}," not in layout and f"{path.name} " not in layout:
            missing.append(str(rel))
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if f"milterd/{folder.name}/" not in layout:
            missing.append(f"{folder.name}/")
    assert not missing, f"README's Layout section does not name: {', '.join(missing)}"
