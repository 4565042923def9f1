"""smtp.mailfrom for an envelope sender whose local part cannot be written: its domain alone (thirty-ninth review)."""

from __future__ import annotations

import pytest

from milterd.authresults import build

from .test_review16_authresults import parsed


@pytest.mark.parametrize(("sender", "shown"), [
    # The address was left out whole (an injection kept out): the header named no identity at all.
    ('"a;dkim=pass"@pass.spf.test', "pass.spf.test"),
    ('"john doe"@example.org', "example.org"),
    ("alice@example.org", "alice@example.org"),
    # A domain part that is no domain name is still left out, the injection with it.
    ('"x"@y;dkim=pass', None),
    ('"x"@-bad.example', None),
])
@pytest.mark.parametrize("ascii_only", [False, True])
def test_a_sender_s_domain_is_shown_where_its_local_part_cannot_be(sender: str, shown: str | None, ascii_only: bool) -> None:
    value = build("mx.test", spf={"result": "pass", "identity": "mailfrom", "sender": sender, "helo": "h"}, ascii_only=ascii_only)
    assert parsed(value) == [("spf", "pass", {"smtp.mailfrom": shown} if shown else {})]
    assert "dkim" not in value
