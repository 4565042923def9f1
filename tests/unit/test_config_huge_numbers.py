"""A whole number past what SQL and arithmetic hold is refused at start, naming the file and key: 10**29 was
taken, and failed later as an OverflowError naming neither (found by review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config
from milterd.options import MAX_WHOLE


@pytest.mark.parametrize(("section", "key"), [
    ("greylist", "auto_whitelist_after"), ("learner", "max_tokens"), ("learner", "max_learned"),
    ("learner", "expiry_rare"), ("learner", "min_spam"), ("milter", "max_headers"),
])
def test_a_huge_whole_number_is_refused_naming_the_key(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f"[{section}]\n{key} = 100000000000000000000000000000\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == f"[{section}] {key}" and caught.value.file == str(path)
    assert "too large" in caught.value.reason
    path.write_text(f"[{section}]\n{key} = {MAX_WHOLE}\n")
    assert load_config(path) is not None
