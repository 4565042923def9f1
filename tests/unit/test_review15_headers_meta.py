"""A meta naming a symbol that is only known after the verdict is refused at load (review 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.checks.custom import CustomRules
from milterd.config import ConfigError, load_config
from milterd.services import build

DNS = '[dns]\nnameservers = ["127.0.0.1:9"]\n'
SCORE_GREYLIST = '[greylist]\nenabled = true\nmode = "score"\n[actions]\ngreylist = 4\n'
TRIPLET_GREYLIST = '[greylist]\nenabled = true\nmode = "triplet"\n'


def _config(tmp_path: Path, rules: str, conf: str = ""):  # type: ignore[no-untyped-def]
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "local.toml").write_text(rules)
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n' + DNS + conf)
    return load_config(path)


def _meta(expression: str) -> str:
    return f"[[rule]]\nname = \"META_LATE\"\nmeta = '{expression}'\nscore = 1\n"


@pytest.mark.parametrize("symbol", ["DKIM_SIGNED", "DKIM_SIGN_ERROR", "ARC_SEALED", "ARC_SEAL_ERROR"])
def test_meta_on_signing_or_sealing_symbol_is_refused(tmp_path: Path, symbol: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(_config(tmp_path, _meta(f"DKIM_VALID and not {symbol}")))
    assert caught.value.file.endswith("local.toml")
    assert "rule META_LATE" in caught.value.key
    assert f"{symbol} is only known after the verdict: a meta cannot use it" in caught.value.reason


@pytest.mark.parametrize("symbol", ["GREYLIST", "GREYLIST_PASSED", "GREYLIST_ERROR"])
def test_meta_on_score_greylist_symbol_is_refused(tmp_path: Path, symbol: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(_config(tmp_path, _meta(f"DKIM_VALID and {symbol}"), SCORE_GREYLIST))
    assert caught.value.file.endswith("local.toml")
    assert "rule META_LATE" in caught.value.key
    assert f"{symbol} is only known after the verdict" in caught.value.reason


@pytest.mark.parametrize("symbol", ["GREYLIST", "GREYLIST_PASSED", "GREYLIST_ERROR"])
def test_meta_on_triplet_greylist_symbol_still_loads(tmp_path: Path, symbol: str) -> None:
    """In triplet mode the greylist check emits them at RCPT/DATA: the metas see them."""
    services = build(_config(tmp_path, _meta(f"DKIM_VALID and not {symbol}"), TRIPLET_GREYLIST))
    check = next(c for c in services.checks if isinstance(c, CustomRules))
    assert [r.name for r in check.metas] == ["META_LATE"]


def test_meta_on_reachable_symbol_still_loads(tmp_path: Path) -> None:
    services = build(_config(tmp_path, _meta("DKIM_VALID and not SPF_PASS")))
    check = next(c for c in services.checks if isinstance(c, CustomRules))
    assert [r.name for r in check.metas] == ["META_LATE"]
