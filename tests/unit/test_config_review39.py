"""Sizes that left mail unjudged, refused at start (thirty-ninth session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config_fuzz import refused, start


@pytest.mark.parametrize(("conf", "key"), [
    # 0 (Postfix's "no limit" for message_size_limit) had no message's DKIM verified: DMARC never passed.
    ("[checks.dkim]\nenabled = true\nmax_size = 0\n", "[checks.dkim] max_size"),
    # 0 had the classifier read nothing: BAYES_* judged every message from no tokens.
    ("[learner]\nmax_size = 0\n", "[learner] max_size"),
])
def test_a_size_that_judges_nothing_is_refused(tmp_path: Path, conf: str, key: str) -> None:
    error = refused(tmp_path, conf)
    assert error.key == key and "1024" in error.reason


def test_those_sizes_from_one_kilobyte_are_taken(tmp_path: Path) -> None:
    assert start(tmp_path, '[checks.dkim]\nenabled = true\nmax_size = "1K"\n[learner]\nmax_size = 1024\n') == "accepted"
