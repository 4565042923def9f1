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


def banned(tmp_path: Path, part: bytes) -> list[str]:
    check = attachment_check(tmp_path)
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(mixed(b"Content-Type: text/plain\r\n\r\nsee attached", part)))
    return [h.detail for h in hits if h.symbol == "ATTACH_BANNED"]


@pytest.mark.parametrize(("ctype", "body"), [
    ("application/x-msdownload", b"MZ\x90\x00"),
    ("application/javascript", b"WScript.Shell"),
    ("application/x-javascript", b"var x = 1;"),
    ("application/hta", b"<script>"),
])
def test_an_unnamed_part_is_judged_by_the_name_clients_give_its_type(tmp_path: Path, ctype: str, body: bytes) -> None:
    # Thunderbird opens it as attachment.exe / attachment.js (Outlook as ATT00001.exe): no ATTACH_BANNED before.
    [detail] = banned(tmp_path, f"Content-Type: {ctype}\r\nContent-Disposition: attachment\r\n\r\n".encode() + body)
    assert "banned extension" in detail and ctype in detail
    named = banned(tmp_path, f'Content-Type: {ctype}\r\nContent-Disposition: attachment; filename="invoice"\r\n\r\n'.encode() + body)
    assert named and "invoice" in named[0]  # a name without an extension gets the type's too


def test_a_named_or_harmless_part_keeps_its_own_name(tmp_path: Path) -> None:
    assert banned(tmp_path, b'Content-Type: application/x-msdownload; name="report.pdf"\r\n\r\n%PDF-1.4') == []
    assert banned(tmp_path, b"Content-Type: application/pdf\r\nContent-Disposition: attachment\r\n\r\n%PDF-1.4") == []


@pytest.mark.parametrize("encoded", ["evil.e%20x%20e", "evil.e%09xe", "evil.e%C2%A0xe", "evil.ex%01e", "evil.ex%7Fe",
                                     "evil.exe%EF%BB%BF", "evil.exe%E1%A0%8E", "evil.e%E2%80%A8xe", "evil.j%20s"])
def test_a_name_gecko_cleans_into_a_banned_one_is_banned(tmp_path: Path, encoded: str) -> None:
    # Thunderbird saves and opens these as evil.exe / evil.js (Gecko's SanitizeFileName): only a mismatch before.
    part = f"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''{encoded}\r\n\r\n".encode() + b"MZ\x90"
    [detail] = banned(tmp_path, part)
    assert "banned extension" in detail
