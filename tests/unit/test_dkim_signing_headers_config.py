"""``[dkim_signing] headers`` naming something that is no header field name is refused at start with
the key and the reason; it was accepted and failed every signature of every message (DKIM_SIGN_ERROR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["Subject:", "X Mailer", "", "Sübject"])
def test_a_name_that_is_no_field_name_is_refused_at_start(tmp_path: Path, name: str) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(f'[dkim_signing]\nheaders = ["From", "{name}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "[dkim_signing] headers"
    assert "is not a header field name" in caught.value.reason


def test_names_with_spaces_around_them_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "milter.conf"
    path.write_text('[dkim_signing]\nheaders = [" From", "Subject "]\n')
    assert load_config(path).dkim_signing.headers == [" From", "Subject "]
