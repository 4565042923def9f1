"""A release sends the stored copy without the Authentication-Results forged in milterd's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from milterd.authresults import claiming_field, without_fields
from milterd.config import load_config
from milterd.quarantine import Quarantine
from milterd.store import Store
from tests.harness.milterd import write_config


def without_claims(chunks: Iterable[bytes], authserv_id: str) -> Iterator[bytes]:
    return without_fields(chunks, lambda field: claiming_field(field, authserv_id))

MESSAGE = (b"Received: from x\r\n by y\r\nAuthentication-Results: mx.test; dkim=pass\r\n header.d=bank.example\r\n"
           b"Authentication-Results: other.example; spf=pass\r\nAuthentication-Results : MX.Test. (c); dmarc=pass\r\n"
           b"Subject: hi\r\n\r\nAuthentication-Results: mx.test; in the body, kept\r\n")
EXPECTED = (b"Received: from x\r\n by y\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: hi\r\n\r\n"
            b"Authentication-Results: mx.test; in the body, kept\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_claims_of_our_id_are_left_out_however_the_message_is_cut(size: int) -> None:
    pieces = [MESSAGE[at:at + size] for at in range(0, len(MESSAGE), size)]
    assert b"".join(without_claims(pieces, "mx.test")) == EXPECTED
    lf = MESSAGE.replace(b"\r\n", b"\n")
    assert b"".join(without_claims([lf[at:at + size] for at in range(0, len(lf), size)], "mx.test")) == EXPECTED.replace(b"\r\n", b"\n")


def test_a_message_without_claims_or_without_headers_is_unchanged() -> None:
    assert b"".join(without_claims([MESSAGE], "elsewhere.test")) == MESSAGE
    bodyless = b"\r\nAuthentication-Results: mx.test; dkim=pass\r\n\r\nx\r\n"
    assert b"".join(without_claims([bodyless[:1], bodyless[1:]], "mx.test")) == bodyless
    headers_only = b"Authentication-Results: mx.test; dkim=pass\r\nSubject: x\r\n"
    assert b"".join(without_claims([headers_only], "mx.test")) == b"Subject: x\r\n"


FORGED = (b"X-Spam-Flag: NO\r\nX-Virus-Status: Clean\r\nX-Spam-Status : No, score=-9.0\r\n\tfolded\r\nX-Virus-Scanned: x\r\n"
          b"X-Spammy: kept\r\nSubject: s\r\n\r\nX-Spam-Flag: NO (the body, kept)\r\n")


@pytest.mark.parametrize(("sections", "left"), [
    ({}, b"X-Virus-Status: Clean\r\nX-Virus-Scanned: x\r\nX-Spammy: kept\r\nSubject: s\r\n\r\nX-Spam-Flag: NO (the body, kept)\r\n"),
    ({"clamav": {"enabled": True}}, b"X-Spammy: kept\r\nSubject: s\r\n\r\nX-Spam-Flag: NO (the body, kept)\r\n"),
    # [actions] headers = false adds none of ours, but still takes out the sender's X-Spam-* fields (as the milter does).
    ({"clamav": {"enabled": True, "headers": False}, "actions": {"headers": False}},
     b"X-Virus-Status: Clean\r\nX-Virus-Scanned: x\r\nX-Spammy: kept\r\nSubject: s\r\n\r\nX-Spam-Flag: NO (the body, kept)\r\n"),
    # Every X-Spam-* field states a verdict: SpamAssassin's Level and Report, Rspamd's X-Spam.
    ({}, None),
])
def test_a_release_leaves_out_the_verdict_fields_the_milter_takes_out(tmp_path: Path, sections: dict[str, Any], left: bytes | None) -> None:
    # A sender's X-Spam-* (and, clamd scanning, X-Virus-*) fields went out with a release (found by review).
    conf = write_config(tmp_path / "milter.conf", {"database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"}, **sections})
    config = load_config(conf)
    released = Quarantine(Store(config.database), config)
    if left is None:
        others = b"X-Spam-Level: \r\nX-Spam-Report: * -5.0 ALL_TRUSTED\r\nX-Spam: No\r\nx-spam-checker-version: SpamAssassin\r\n"
        released.message_chunks = lambda row: iter([others + FORGED])  # type: ignore[method-assign]
        left = b"X-Virus-Status: Clean\r\nX-Virus-Scanned: x\r\nX-Spammy: kept\r\nSubject: s\r\n\r\nX-Spam-Flag: NO (the body, kept)\r\n"
    else:
        released.message_chunks = lambda row: iter([FORGED[:20], FORGED[20:]])  # type: ignore[method-assign]
    assert b"".join(released._delivered_chunks({"mta_host": "mx.test"})) == left
