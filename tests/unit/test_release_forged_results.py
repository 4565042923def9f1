"""A release sends the stored copy without the Authentication-Results forged in milterd's name."""

from __future__ import annotations

import pytest

from milterd.authresults import without_claims

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
