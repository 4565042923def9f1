"""A bare CR ends a line to Thunderbird and the standard library (review, thirty-sixth session).

Thunderbird's libmime splits lines at CRLF, CR or LF, and so does the standard library's parser: a delimiter
line and a part's fields written with bare CRs inside a text part make an attachment to them.  milterd's parse
split lines at LF only and saw text: an evil.exe so hidden was delivered with no symbol, through a Postfix that
passes bare CRs on (before 3.8.5 and the like, or with ``cleanup_replace_stray_cr_lf = no``).
"""

from __future__ import annotations

import base64
import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from milterd.checks.attachments import BANNED
from milterd.content import mimeparts
from milterd.message.model import Action, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of

PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)
HEAD = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
PART = (b"--b1\rContent-Type: application/octet-stream; name=\"evil.exe\"\rContent-Disposition: attachment; filename=\"evil.exe\"\r"
        b"Content-Transfer-Encoding: base64\r\r" + base64.b64encode(PE) + b"\r")
#: The hidden part inside a text part's body; and every line of the message ended by a bare CR after the top fields.
HIDDEN = HEAD + b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r" + PART + b"\r\n--b1--\r\n"
ALL_CR = HEAD + b"--b1\rContent-Type: text/plain\r\rhi\r" + PART + b"--b1--\r\n"


@pytest.fixture
def check(tmp_path: Path) -> Any:
    return attachment_check(tmp_path)


@pytest.mark.parametrize("raw", [HIDDEN, ALL_CR], ids=["hidden-in-text", "all-bare-cr"])
def test_a_part_behind_bare_cr_line_ends_is_judged(check: Any, raw: bytes) -> None:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert "evil.exe" in [part.get_filename() for part in parsed.walk()]  # what a reader sees
    found = {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}
    assert found[BANNED].action == Action.REJECT and "evil.exe" in str(found[BANNED].detail)


@pytest.mark.parametrize("cut", [1, 2, 7, 40, 41, 42, 200])
def test_a_cr_at_a_chunk_edge_is_read_with_the_next_chunk(cut: int) -> None:
    chunks = [HIDDEN[i:i + cut] for i in range(0, len(HIDDEN), cut)]
    names = [a.filename for a in mimeparts.every_reading(lambda: chunks, 1 << 20, 1 << 26, [])]
    assert names == ["evil.exe"]
    assert b"".join(mimeparts.lone_crs_as_line_ends(chunks)) == HIDDEN.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def test_crlf_mail_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parses: list[object] = []
    real = mimeparts.attachments
    monkeypatch.setattr(mimeparts, "attachments", lambda chunks, *args: parses.append(args) or real(chunks, *args))
    crlf = HIDDEN.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    edge = crlf.index(b"\r\n", 100) + 1  # a CRLF split between two chunks is no bare CR
    assert [a.filename for a in mimeparts.every_reading(lambda: [crlf[:edge], crlf[edge:]], 1 << 20, 1 << 26, [])] == ["evil.exe"]
    assert len(parses) == 1


def test_a_multipart_behind_a_bare_cr_in_the_top_header_section_is_judged(check: Any) -> None:
    # "Subject: t<CR>MIME-Version: 1.0<CR>Content-Type: multipart/mixed" is one Subject field to Postfix, and so
    # a single text part to the attachment check's shortcut; the standard library (and Thunderbird) read the
    # multipart and its evil.exe (a second look at the fix above).
    raw = (b"From: a@example.org\r\nTo: b@example.net\r\nSubject: t\rMIME-Version: 1.0\rContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n" + PART.replace(b"\r", b"\r\n") + b"--b1--\r\n")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert "evil.exe" in [part.get_filename() for part in parsed.walk()]
    found = {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}
    assert found[BANNED].action == Action.REJECT and "evil.exe" in str(found[BANNED].detail)
