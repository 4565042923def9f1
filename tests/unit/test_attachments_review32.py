"""Attachment policy (32nd review): work bounded on crowded parameters, and config values that turn checks off."""

from __future__ import annotations

import email.message
from pathlib import Path
from typing import Any

import pytest

from milterd.config import Config, ConfigError
from milterd.content import mimeparams
from milterd.message.model import Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of


def mixed(*parts: bytes) -> bytes:
    out = (b'From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\nMIME-Version: 1.0\r\n'
           b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\npre\r\n')
    return out + b"".join(b"--zz\r\n" + part + b"\r\n" for part in parts) + b"--zz--\r\n"


def test_a_name_crowded_with_semicolons_is_never_split_by_the_stdlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stdlib's split counts the quotes from the value's start again at each ";": 500 parts of one 16,000-";"
    # name cost 100 s of CPU, read by mimeparts' own parameter reading past the guard LenientMessage keeps.
    splits: list[int] = []
    split = email.message._parseparam  # type: ignore[attr-defined]

    def counted(text: str) -> Any:
        splits.append(text.count(";"))
        return split(text)

    monkeypatch.setattr(email.message, "_parseparam", counted)
    crowded = b'Content-Type: application/octet-stream; name="' + b";" * 16000 + b'"\r\n\r\nx'
    banned = b'Content-Type: application/octet-stream; name="evil.exe"; x="' + b";" * 100 + b'"\r\n\r\nMZ'
    check = attachment_check(tmp_path)
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(mixed(crowded, crowded, banned)))
    assert [h.symbol for h in hits if h.symbol == "ATTACH_BANNED"] == ["ATTACH_BANNED"]  # still read, and judged
    assert max(splits, default=0) <= mimeparams.MAX_STDLIB_SEPARATORS + 1


@pytest.mark.parametrize("size", [0, 100, "511"])
def test_a_max_attachment_size_below_the_first_bytes_judged_is_refused(size: object) -> None:
    # 0 turned the content checks off (a PE named invoice.pdf passed); 100 quarantined every .docx.
    with pytest.raises(ConfigError) as info:
        Config().with_changes({"checks.attachments.max_attachment_size": size})
    assert "max_attachment_size" in str(info.value)
