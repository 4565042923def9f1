"""An administrator's regex that the regex package refuses with ValueError (an inline ``(?V1)``)
is refused at start naming the key, in every place such patterns are configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config
from milterd.services import build


def _load(tmp_path: Path, section: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n{section}')
    build(load_config(path))


def test_an_rdns_generic_pattern_with_v1_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "[checks.rdns]\nenabled = true\ngeneric_patterns = ['(?V1)x']\n")
    assert caught.value.key == "[checks.rdns] generic_patterns[0]"
    assert caught.value.reason.startswith("bad regular expression: VERSION0 and VERSION1")


def test_a_greylist_regex_entry_with_v1_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "[greylist]\nenabled = true\nwhitelist_clients = ['/(?V1)x/']\n")
    assert caught.value.key == "[greylist] whitelist_clients"
    assert "bad regular expression '/(?V1)x/'" in caught.value.reason
