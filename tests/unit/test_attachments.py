"""The attachment policy's pure parts: names, magic bytes, bounded archive listing, streamed MIME decoding."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import libarchive
import pytest

from milterd.checks.attachments import BANNED, DOUBLE, ENCRYPTED, LIMIT, MACRO, MISMATCH, Finding, hits_for, judge_content, judge_name
from milterd.cli import main
from milterd.content.archives import Limits, archive_kind, list_archive, supported
from milterd.content.filetypes import extensions, mismatch, ole_has_macros, sniff
from milterd.content.mimeparts import attachments
from milterd.message.model import Action
from tests.harness.messages import zipped

BANNED_EXTS = frozenset({"exe", "scr", "js", "bat"})
PE = b"MZ\x90\x00" + bytes(56) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(236)  # e_lfanew at 0x3C points at "PE\0\0"


def mail(*files: tuple[str, bytes, str]) -> bytes:
    message = EmailMessage()
    message["From"] = "a@example.org"
    message["Subject"] = "files"
    message.set_content("see attached")
    for name, data, ctype in files:
        maintype, subtype = ctype.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return bytes(message)


def test_extensions_see_through_padding_and_case() -> None:
    assert extensions("Invoice.PDF.exe") == ["pdf", "exe"]
    assert extensions("invoice.pdf      .exe") == ["pdf", "exe"]
    assert extensions("dir\\x.js.") == ["js"]
    assert extensions("README") == []


def test_banned_and_double_extension() -> None:
    assert judge_name("photo.jpg", BANNED_EXTS) == []
    assert [f.symbol for f in judge_name("setup.exe", BANNED_EXTS)] == [BANNED]
    found = judge_name("invoice.pdf.exe", BANNED_EXTS)
    assert [f.symbol for f in found] == [BANNED, DOUBLE]
    assert found[1].rule == "double extension .pdf.exe"
    assert [f.symbol for f in judge_name("a.zip/b.zip/run.js", BANNED_EXTS)] == [BANNED]
    assert [f.rule for f in judge_name("clam.exe.bz2", BANNED_EXTS)] == ["banned extension .exe"]
    assert judge_name("backup.tar.gz", BANNED_EXTS) == []


def test_magic_bytes() -> None:
    assert sniff(PE) == "pe" and sniff(b"%PDF-1.7") == "pdf" and sniff(b"PK\x03\x04") == "zip" and sniff(b"hello") is None
    assert mismatch("invoice.pdf", "application/pdf", PE, BANNED_EXTS) == "declared .pdf, content is a Windows executable (PE)"
    assert mismatch("invoice.pdf", "application/pdf", b"%PDF-1.4", BANNED_EXTS) == ""
    assert mismatch("setup.exe", "", PE, BANNED_EXTS) == ""  # the banned list judges it
    assert mismatch("photo.jpg", "image/jpeg", b"PK\x03\x04rest", BANNED_EXTS) == "declared .jpg, content is ZIP data"
    assert mismatch("notes.txt", "text/plain", b"plain words", BANNED_EXTS) == ""
    assert [f.symbol for f in judge_content("x.doc", "", PE, BANNED_EXTS, False)] == [MISMATCH]


def test_an_image_or_office_document_under_a_sibling_s_name_is_no_mismatch() -> None:
    # A PNG saved as photo.jpg, an XLSX exported as report.xls: every client opens them by their content; each
    # scored ATTACH_TYPE_MISMATCH's 3 points (review, thirty-sixth session).  A zip or an executable under an
    # image's name still is one.
    assert mismatch("photo.jpg", "image/jpeg", b"\x89PNG\r\n\x1a\n", BANNED_EXTS) == ""
    assert mismatch("banner.gif", "image/gif", b"\xff\xd8\xff\xe0", BANNED_EXTS) == ""
    assert mismatch("export.xls", "application/vnd.ms-excel", b"PK\x03\x04rest", BANNED_EXTS) == ""
    assert mismatch("photo.jpg", "image/jpeg", PE, BANNED_EXTS) == "declared .jpg, content is a Windows executable (PE)"
    assert mismatch("export.xls", "application/vnd.ms-excel", b"%PDF-1.4", BANNED_EXTS) == "declared .xls, content is PDF data"


def test_exe_in_a_zip_in_a_zip_is_found_with_its_path() -> None:
    inner = zipped({"evil.exe": PE})
    outer = zipped({"inner.zip": inner, "readme.txt": b"hello"})
    assert archive_kind("invoice.zip", outer[:512]) == "zip"
    listing = list_archive("invoice.zip", io.BytesIO(outer), "zip", Limits())
    paths = [e.path for e in listing.entries]
    assert "invoice.zip/inner.zip/evil.exe" in paths
    assert not listing.limits and not listing.errors
    names = [f for e in listing.entries for f in judge_name(e.path, BANNED_EXTS)]
    assert [f.file for f in names] == ["invoice.zip/inner.zip/evil.exe"]


def test_depth_limit_stops_before_the_innermost_archive() -> None:
    data = zipped({"evil.exe": PE})
    for level in range(4):
        data = zipped({f"level{level}.zip": data})
    listing = list_archive("a.zip", io.BytesIO(data), "zip", Limits(max_depth=3))
    assert not any(e.path.endswith("evil.exe") for e in listing.entries)
    assert any("nested deeper than 3" in text for text in listing.limits)


def test_a_bomb_costs_only_the_budget() -> None:
    # An 8 MB archive (stored) compresses to a few KB in its parent: opening it must stop at the 1 MB budget.
    stored = zipped({"zeros.bin": b"\x00" * (8 * 1024 * 1024), "late.exe": PE}, zipfile.ZIP_STORED)
    bomb = zipped({"bomb.zip": stored})
    assert len(bomb) < 64 * 1024
    listing = list_archive("a.zip", io.BytesIO(bomb), "zip", Limits(max_size=1024 * 1024))
    assert listing.limits == ["a.zip/bomb.zip: would decompress past 1048576 bytes"]
    assert [e.path for e in listing.entries] == ["a.zip/bomb.zip"]


def test_member_limit_and_encrypted_members() -> None:
    many = zipped({f"f{i}.txt": b"x" for i in range(50)})
    listing = list_archive("many.zip", io.BytesIO(many), "zip", Limits(max_members=10))
    assert len(listing.entries) == 10 and any("past 10 members" in t for t in listing.limits)
    plain = bytearray(zipped({"secret.exe": PE}, zipfile.ZIP_STORED))
    # Set the "encrypted" flag bit in the local and the central header (a real password tool sets it too).
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = plain.find(signature) + offset
        plain[at] |= 0x1
    listing = list_archive("locked.zip", io.BytesIO(bytes(plain)), "zip", Limits())
    assert listing.encrypted == ["locked.zip/secret.exe"]
    assert [f.symbol for f in judge_name(listing.entries[0].path, BANNED_EXTS)] == [BANNED]


def test_garbage_that_claims_to_be_a_zip_is_an_error_not_a_crash() -> None:
    listing = list_archive("broken.zip", io.BytesIO(b"PK\x03\x04" + b"\xff" * 100), "zip", Limits())
    assert listing.errors and listing.errors[0].startswith("broken.zip: unreadable zip archive")


def test_attachments_are_decoded_from_chunks_one_at_a_time() -> None:
    payload = bytes(range(256)) * 4000
    raw = mail(("data.bin", payload, "application/octet-stream"), ("report.pdf", b"%PDF-1.4 body", "application/pdf"))
    chunks = [raw[i:i + 333] for i in range(0, len(raw), 333)]
    found = []
    for attachment in attachments(chunks, memory=4096):
        found.append((attachment.filename, attachment.content_type, attachment.data.read(), attachment.truncated))
    assert found == [("data.bin", "application/octet-stream", payload, False), ("report.pdf", "application/pdf", b"%PDF-1.4 body", False)]


def test_attachment_over_the_limit_is_truncated_and_said_so() -> None:
    raw = mail(("big.bin", b"a" * 10000, "application/octet-stream"))
    [(size, truncated)] = [(a.size, a.truncated) for a in attachments([raw], limit=1000)]
    assert size == 1000 and truncated


def test_nested_message_and_malformed_mime_do_not_raise() -> None:
    inner = EmailMessage()
    inner["Subject"] = "original"
    inner.set_content("hi")
    inner.add_attachment(b"echo", maintype="application", subtype="octet-stream", filename="run.bat")
    outer = EmailMessage()
    outer["Subject"] = "fwd"
    outer.set_content("forwarded")
    outer.add_attachment(inner)
    names = [a.filename for a in attachments([bytes(outer)])]
    assert "run.bat" in names
    broken = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64\r\n"
    assert [a.filename for a in attachments([broken])] == ["a.zip"]


def test_hits_follow_each_categorys_action() -> None:
    findings = [
        Finding(BANNED, "a.zip/b.zip/evil.exe", "banned extension .exe"),
        Finding(MISMATCH, "x.pdf", "declared .pdf, content is a Windows executable (PE)"),
        Finding(ENCRYPTED, "locked.zip", "encrypted"),
        Finding(LIMIT, "deep.zip", "archive nested deeper than 3"),
    ]
    actions = {BANNED: "reject", MISMATCH: "quarantine", ENCRYPTED: "score", LIMIT: "off"}
    hits = {h.symbol: h for h in hits_for(findings, actions)}
    assert set(hits) == {BANNED, MISMATCH, ENCRYPTED}
    assert hits[BANNED].action == Action.REJECT
    assert str(hits[BANNED].reply) == "550 5.7.1 Attachment rejected: a.zip/b.zip/evil.exe: banned extension .exe"
    assert hits[MISMATCH].action == Action.QUARANTINE and hits[ENCRYPTED].action is None
    assert hits[ENCRYPTED].detail == "locked.zip: encrypted"


def test_a_file_name_with_control_characters_is_escaped_in_the_reply() -> None:
    [hit] = hits_for([Finding(BANNED, "evil\r\n250 ok.exe", "banned extension .exe")], {BANNED: "reject"})
    assert "\r" not in str(hit.reply) and "\n" not in str(hit.reply) and "evil\\r\\n250 ok.exe" in str(hit.reply)


def libarchive_made(tmp_path: Path, format_name: str, files: dict[str, bytes]) -> bytes:
    path = tmp_path / f"archive.{format_name}"
    with libarchive.file_writer(str(path), format_name) as archive:
        for name, data in files.items():
            archive.add_file_from_memory(name, len(data), data)
    return path.read_bytes()


def test_7z_and_tar_are_listed_through_libarchive_also_inside_a_zip(tmp_path: Path) -> None:
    assert supported("7z") and supported("tar")
    seven = libarchive_made(tmp_path, "7zip", {"docs/run.js": b"WScript.Echo(1)", "a.txt": b"hi"})
    assert sniff(seven) == "7z"
    listing = list_archive("files.7z", io.BytesIO(seven), "7z", Limits())
    assert {e.path for e in listing.entries} == {"files.7z/docs/run.js", "files.7z/a.txt"} and not listing.errors
    tar = libarchive_made(tmp_path, "ustar", {"x/setup.exe": PE})
    outer = zipped({"bundle.tar": tar, "inner.7z": seven})
    listing = list_archive("outer.zip", io.BytesIO(outer), "zip", Limits())
    banned = [f.file for e in listing.entries for f in judge_name(e.path, BANNED_EXTS)]
    assert sorted(banned) == ["outer.zip/bundle.tar/x/setup.exe", "outer.zip/inner.7z/docs/run.js"]


def test_a_7z_bomb_inside_stops_at_the_budget(tmp_path: Path) -> None:
    inner = libarchive_made(tmp_path, "ustar", {"zeros.bin": b"\x00" * (4 * 1024 * 1024)})
    seven = libarchive_made(tmp_path, "7zip", {"big.tar": inner})
    assert len(seven) < 256 * 1024
    listing = list_archive("a.7z", io.BytesIO(seven), "7z", Limits(max_size=512 * 1024))
    assert listing.limits == ["a.7z/big.tar: would decompress past 524288 bytes"]


def test_a_truncated_7z_is_a_limit_not_a_crash(tmp_path: Path) -> None:
    # A listing that stops part way is a limit: 7-Zip may still extract what comes after the damage.
    seven = libarchive_made(tmp_path, "7zip", {"a.txt": b"some text " * 1000})
    listing = list_archive("bad.7z", io.BytesIO(seven[: len(seven) // 2]), "7z", Limits())
    assert listing.limits and listing.limits[0].startswith("bad.7z: unreadable 7z archive") and not listing.errors


def test_a_large_attachment_is_decoded_in_bounded_memory() -> None:
    payload = bytes(range(256)) * (24 * 1024 * 1024 // 256)  # 24 MB, 32 MB as base64
    raw = mail(("big.bin", payload, "application/octet-stream"))
    del payload

    def spool() -> Iterator[bytes]:
        for offset in range(0, len(raw), 65536):
            yield raw[offset:offset + 65536]

    tracemalloc.start()
    try:
        sizes = []
        for attachment in attachments(spool(), memory=1024 * 1024):
            sizes.append(attachment.size)
            while attachment.data.read(65536):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sizes == [24 * 1024 * 1024]
    assert peak < 4 * 1024 * 1024, f"decoding a 24 MB attachment peaked at {peak} bytes"


def test_office_macros_when_configured() -> None:
    assert [f.symbol for f in judge_content("budget.xlsm", "", b"PK\x03\x04", BANNED_EXTS, True)] == [MACRO]
    assert judge_content("budget.xlsm", "", b"PK\x03\x04", BANNED_EXTS, False) == []
    assert ole_has_macros(b"\xd0\xcf\x11\xe0" + "_VBA_PROJECT".encode("utf-16-le"))
    assert not ole_has_macros(b"\xd0\xcf\x11\xe0 plain document")


def test_encoded_and_continued_file_names_are_decoded_before_they_are_judged() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment;\r\n"
        b" filename*0*=UTF-8''r%C3%A9sum%C3%A9.pdf;\r\n filename*1=.exe\r\n\r\nTVqQ\r\n"
        b"--zz\r\nContent-Type: application/octet-stream; name=\"=?UTF-8?B?aW52b2ljZS5qcw==?=\"\r\n\r\nalert(1)\r\n"
        b"--zz\r\nContent-Type: text/plain\r\n\r\nno name, text: not an attachment\r\n--zz--\r\n"
    )
    found = [(a.filename, a.data.read()) for a in attachments([raw])]
    assert found == [("r\u00e9sum\u00e9.pdf.exe", b"MZ\x90"), ("invoice.js", b"alert(1)")]
    assert [f.symbol for f in judge_name(found[0][0], BANNED_EXTS)] == [BANNED, DOUBLE]


def test_milterd_check_shows_the_file_and_the_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "milter.conf"
    checks = "".join(f"[checks.{name}]\nenabled = false\n" for name in ("dnsbl", "rdns", "helo", "sender", "spf", "headers", "uribl"))
    conf.write_text(f'[rules]\ndir = ""\n[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 0.2\n[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n{checks}')
    eml = tmp_path / "nested.eml"
    eml.write_bytes(mail(("invoice.zip", zipped({"inner.zip": zipped({"evil.exe": PE})}), "application/zip")))
    status = main(["check", "-c", str(conf), "--client-ip", "192.0.2.10", "--json", str(eml)])
    [result] = json.loads(capsys.readouterr().out)["messages"]
    assert status == 17 and result["forced_by"] == "ATTACH_BANNED"
    assert result["reply"] == "550 5.7.1 Attachment rejected: invoice.zip/inner.zip/evil.exe: banned extension .exe"
    [banned] = [s for s in result["symbols"] if s["symbol"] == "ATTACH_BANNED"]
    assert banned["detail"] == "invoice.zip/inner.zip/evil.exe: banned extension .exe"


def test_an_unreadable_member_leaves_the_other_names_to_judge() -> None:
    data = bytearray(zipped({"first.exe": PE, "second.js": b"x"}, zipfile.ZIP_STORED))
    # Mark the first member as deflate64 (method 9), which zipfile cannot decompress.
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(signature) + offset
        data[at] = 9
    listing = list_archive("odd.zip", io.BytesIO(bytes(data)), "zip", Limits())
    assert [e.path for e in listing.entries] == ["odd.zip/first.exe", "odd.zip/second.js"]
    assert listing.errors == ["odd.zip/first.exe: unreadable member (NotImplementedError: That compression method is not supported)"]
