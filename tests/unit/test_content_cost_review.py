"""What decoding hostile but legal content costs a worker: bounded by counting work, never by timing it."""

from __future__ import annotations

import base64
import email.utils
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.config import load_config
from milterd.content import mimeparts, mimetext
from milterd.message.pipeline import Pipeline
from milterd.milter.offline import Client, check_message, envelope_from_headers, split_message
from milterd.services import build
from tests.conftest import message
from tests.harness.memory import peak_while


def _attachment(body: bytes, cte: bytes = b"base64") -> list[bytes]:
    raw = (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n"
           + body + b"\r\n--XX--\r\n")
    return [raw[i:i + 4096] for i in range(0, len(raw), 4096)]


def _decoded(chunks: list[bytes], **kwargs: Any) -> tuple[list[tuple[str, int, bool, bytes]], list[str]]:
    notes: list[str] = []
    found = [(a.filename, a.size, a.truncated, a.data.read()) for a in mimeparts.attachments(chunks, skipped=notes, **kwargs)]
    return found, notes


def test_base64_attachment_is_decoded_in_blocks_not_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = bytes(range(256)) * 8192  # 2 MB, 28,000 lines of base64
    calls: list[int] = []
    quartets = mimeparts._Decoder._quartets

    def counted(self: mimeparts._Decoder, data: bytes) -> bytes:
        calls.append(len(data))
        return quartets(self, data)

    monkeypatch.setattr(mimeparts._Decoder, "_quartets", counted)
    found, notes = _decoded(_attachment(base64.encodebytes(payload).replace(b"\n", b"\r\n")))
    assert found == [("a.bin", len(payload), False, payload)]
    assert notes == []
    assert len(calls) <= len(payload) * 4 // 3 // mimeparts.BLOCK + 2


def test_base64_after_its_padding_is_still_read_on_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mimeparts, "BLOCK", 64, raising=False)
    body = b"QQ==\r\n" + b"QUJD\r\n" * 100  # "A", then 100 quartets after the padding
    found, notes = _decoded(_attachment(body))
    assert found == [("a.bin", 301, False, b"A" + b"ABC" * 100)]
    assert any("after its padding" in note for note in notes)


def test_padding_past_max_padding_decodes_as_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mimeparts, "MAX_PADDING", 2)
    # Past MAX_PADDING each line's quartets lose their "=" and what is left of a quartet.
    body = b"QQ==\r\n" + b"QUJD=\r\nQUJD\r\n" * 50 + b"QQ=\r\n=QUJD\r\n" * 50
    blocks = _decoded(_attachment(body))
    monkeypatch.setattr(mimeparts, "BLOCK", 1, raising=False)  # each line decoded on its own, as before blocks
    assert _decoded(_attachment(body)) == blocks
    assert blocks[0][0][3].startswith(b"AABC\r\x05\t$4\x14P\x90\xd0ABC")
    assert any("after its padding" in note for note in blocks[1])


def test_a_part_cut_at_the_limit_keeps_its_bytes_and_notes() -> None:
    payload = bytes(range(256)) * 1024
    found, _ = _decoded(_attachment(base64.encodebytes(payload).replace(b"\n", b"\r\n")), limit=100_000)
    assert found == [("a.bin", 100_000, True, payload[:100_000])]
    text = b"line one\r\nline =3D two\r\n\r\n" * 5000
    found, _ = _decoded(_attachment(text, b"quoted-printable"))
    assert found[0][3] == b"line one\r\nline = two\r\n\r\n" * 5000
    found, _ = _decoded(_attachment(text, b"8bit"), limit=1000)
    assert found == [("a.bin", 1000, True, text[:1000])]


def test_html_of_lone_angle_brackets_is_read_in_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    handle = mimetext._HTMLText.handle_data

    def counted(self: mimetext._HTMLText, data: str) -> None:
        calls.append(data)
        handle(self, data)

    monkeypatch.setattr(mimetext._HTMLText, "handle_data", counted)
    for markup in ("<" * 100_000, "< " * 50_000, "<1" * 50_000, "<\n" * 50_000):
        calls.clear()
        text, links = mimetext.html_to_text(markup)
        assert text == mimetext._BLANKS.sub("\n\n", mimetext._SPACES.sub(" ", markup)).strip()
        assert links == []
        assert len(calls) <= 2


@pytest.mark.parametrize("marks", [True, False])
def test_angle_brackets_of_text_give_the_same_text_and_links(monkeypatch: pytest.MonkeyPatch, marks: bool) -> None:
    if not marks:  # a markup holding every stand-in character: "&lt;" stands in, to the same result
        monkeypatch.setattr(mimetext, "_MARKS", (), raising=False)
    markup = ('<p>a < b, 3 <4 &amp<5 &not<1in; <\u00e9</p><a href="http://x.example/?q=1<2">go</a>'
              '<img src=http://y.example/<z><script>if (a <b) {}</script><!-- < --><b>1 < 2</b> <')
    text, links = mimetext.html_to_text(markup)
    assert text == "a < b, 3 <4 &<5 \u00ac<1in; <\u00e9\ngo1 < 2 <"
    assert links == ["http://x.example/?q=1<2", "http://y.example/<z"]


def test_split_message_joins_a_folded_header_in_linear_work() -> None:
    copied: list[int] = []

    class Counted(bytes):
        """Bytes that count what concatenation copies (the work of joining a field line by line)."""

        def __add__(self, other: bytes) -> Counted:  # type: ignore[override]
            copied.append(len(self) + len(other))
            return Counted(bytes(self) + other)

        def replace(self, old: bytes, new: bytes, count: int = -1) -> Counted:  # type: ignore[override]
            return Counted(bytes(self).replace(old, new, count))

        def split(self, sep: bytes | None = None, maxsplit: int = -1) -> list[Counted]:  # type: ignore[override]
            return [Counted(part) for part in bytes(self).split(sep, maxsplit)]

        def partition(self, sep: bytes) -> tuple[Counted, Counted, Counted]:  # type: ignore[override]
            head, found, tail = bytes(self).partition(sep)
            return Counted(head), Counted(found), Counted(tail)

        def lstrip(self, chars: bytes | None = None) -> Counted:  # type: ignore[override]
            return Counted(bytes(self).lstrip(chars))

    folds = 20_000
    raw = b"Subject: x\r\n" + b" y\r\n" * folds + b"From: a@example.org\r\n\r\nbody\r\n"
    headers, body = split_message(Counted(raw))
    assert headers == [("Subject", b"x" + b"\n y" * folds), ("From", b"a@example.org")]
    assert body == b"body\r\n"
    assert sum(copied) <= 4 * len(raw)


@pytest.mark.parametrize("hostile", [b"(" * 50_000, b"g:" * 20_000])
def test_envelope_from_addresses_the_parser_cannot_take(hostile: bytes) -> None:
    assert envelope_from_headers([("From", hostile), ("To", b"bob@example.com")]) == ("", ["bob@example.com"])
    assert envelope_from_headers([("Return-Path", hostile), ("From", b"Alice <alice@example.org>"), ("To", hostile),
                                  ("Cc", b"carol@example.net")]) == ("alice@example.org", ["carol@example.net"])
    assert envelope_from_headers([("To", hostile)]) == ("", ["postmaster@localhost"])
    ordinary = [("From", b"Alice <alice@example.org>"), ("To", b"bob@example.com, \"x, y\" <c@example.net>")]
    assert envelope_from_headers(ordinary) == (
        "alice@example.org", [a for _, a in email.utils.getaddresses(["bob@example.com, \"x, y\" <c@example.net>"])])


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    pipe = Pipeline(build(load_config(conf)), keep_log=False)
    yield pipe
    pipe.shutdown()


@pytest.mark.parametrize("field", ["From", "To"])
def test_a_message_with_an_address_field_the_parser_cannot_take_is_judged(pipeline: Pipeline, field: str) -> None:
    # 5,000 "(" are past the parser's recursion and within max_header_size.
    raw = message().replace(f"{field}: ".encode(), f"{field}: {'(' * 5_000}\r\nX-{field}: ".encode(), 1)
    result = check_message(pipeline, raw, Client(addr="192.0.2.10"))
    assert result.error == ""
    assert result.stage == "eom"
    assert result.spam_status  # judged at end of message


def test_split_message_does_not_split_the_body_into_lines() -> None:
    """10 MB of 1-character lines took 440 MB in 'milterd check': a bytes object for each body line."""
    raw = b"Subject: x\r\n\r\n" + b"a\r\n" * 300_000
    (headers, body), peak = peak_while(lambda: split_message(raw))
    assert headers == [("Subject", b"x")] and body == b"a\r\n" * 300_000
    assert peak < 4 * len(raw)  # the text and the body, copied; split into lines: about 15 times


@pytest.mark.parametrize("raw", [b"", b"A: b", b"A: b\n", b"A: b\n\n", b"A: b\n\nbody", b"\nbody", b"A: b\n c\nnot a header\nx", b"A: b\r\n\r\n\r\n"])
def test_split_message_ends_the_headers_where_it_did(raw: bytes) -> None:
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    index = next((i for i, line in enumerate(lines) if not line or not (line[:1] in b" \t" or b":" in line)), len(lines))
    expected = b"\n".join(lines[index + (index < len(lines) and lines[index] == b""):]).replace(b"\n", b"\r\n")
    assert split_message(raw)[1] == expected
