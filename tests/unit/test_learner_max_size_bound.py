"""``[learner] max_size`` past what the tokenizer reads (512K) is refused at start: 2M was accepted and did nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, LearnerSection, load_config
from milterd.learner.tokenizer import MAX_INPUT


def test_the_bound_is_what_the_tokenizer_reads() -> None:
    assert LearnerSection(max_size=MAX_INPUT).max_size == MAX_INPUT


def test_fix_a_larger_max_size_is_refused_with_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text('[learner]\nmax_size = "2M"\n')
    with pytest.raises(ConfigError, match=r"\[learner\] max_size: Input should be less than or equal to 524288"):
        load_config(conf)
