"""ISO-2022-JP as Outlook writes it and clients read it (Windows' NEC row 13 and IBM characters, half-width
katakana): Python's iso2022_jp refused them, so a Japanese subject with a circled digit was
HDR_ENCODED_WORD_INVALID and U+FFFD to the rules, the classifier and the log."""

from __future__ import annotations

import base64
import codecs

import pytest

from milterd.checks.headers import bad_encoded_words
from milterd.content import iso2022jp
from milterd.content.headertext import decoded
from milterd.content.mimeparams import decode_bytes, windows_codec
from milterd.content.mimetext import extract

JIS = b"\x1b$B"
ASCII = b"\x1b(B"

CASES = [
    (JIS + b"-!-\"" + ASCII + b" meeting", "①② meeting"),  # NEC row 13, as Outlook sends
    (JIS + b"-j" + ASCII, "㈱"),
    (JIS + b"y!" + ASCII, "纊"),  # NEC-selected IBM extension (row 89)
    (b"\x1b(I12" + ASCII, "ｱｲ"),  # half-width katakana, as WHATWG reads it
    (JIS + b"F|K\\8l" + ASCII + b" " + JIS + b"-!" + ASCII, "日本語 ①"),
]


@pytest.mark.parametrize(("data", "text"), CASES)
def test_outlooks_characters_are_read(data: bytes, text: str) -> None:
    word = f"=?ISO-2022-JP?B?{base64.b64encode(data).decode()}?="
    assert bad_encoded_words(word) == ""
    assert decoded("Subject: " + word) == "Subject: " + text
    assert decode_bytes(data, "iso-2022-jp") == text


def test_what_python_reads_is_read_as_before() -> None:
    data = JIS + b"F|K\\8l!A" + ASCII + b"\n" + JIS + b"$3$s" + ASCII
    assert decode_bytes(data, "ISO-2022-JP") == data.decode("iso2022_jp")


def test_a_text_part_and_an_outlook_code_page_are_read_as_clients_read_them() -> None:
    body = JIS + b"-!" + ASCII + b" see http://example.test/\n"
    raw = b"Content-Type: text/plain; charset=iso-2022-jp\nContent-Transfer-Encoding: 7bit\n\n" + body
    assert "①" in extract(raw).text
    assert windows_codec(50220) == windows_codec(50221) == iso2022jp.CODEC


def test_what_no_client_reads_stays_an_error() -> None:
    bad = JIS + b")!" + ASCII  # row 9: neither JIS X 0208 nor Windows defines it
    with pytest.raises(UnicodeDecodeError):
        bad.decode(iso2022jp.CODEC)
    assert bad_encoded_words(f"=?iso-2022-jp?B?{base64.b64encode(bad).decode()}?=") != ""
    assert decode_bytes(JIS + b"-!\x80" + ASCII, "iso-2022-jp") == "①\ufffd"
    assert decode_bytes(b"\x1b$Z-!", "iso-2022-jp") == "\ufffd$Z-!"  # an unknown escape is no designation


def test_the_codec_decodes_in_pieces_and_encodes_as_python() -> None:
    decoder = codecs.getincrementaldecoder(iso2022jp.CODEC)()
    data = JIS + b"-!" + ASCII
    assert decoder.decode(data[:2]) + decoder.decode(data[2:], final=True) == "①"
    assert "日本".encode(iso2022jp.CODEC) == "日本".encode("iso2022_jp")


def test_hostile_text_is_read_run_by_run() -> None:
    """A second look: byte by byte in Python, a megabyte of such text took up to a second and hundreds of MB;
    each run between designations is translated whole now (what is asserted is the reading, not the time)."""
    assert decode_bytes(b"\x80" * 1000, "iso-2022-jp") == "\ufffd" * 1000
    assert decode_bytes(b"\x1b$(D" + b"0!" * 500 + b"\x80", "iso-2022-jp") == (b"\x1b$(D" + b"0!" * 500).decode("iso2022_jp_1") + "\ufffd"
    assert decode_bytes(b"\x1b$B \x00\x1b!\x1b(Bok", "iso-2022-jp") == " \x00\ufffd\ufffdok"  # ESC and a lone lead; (B still read
    assert decode_bytes(b"\x1b(I1\x1b(B1" * 3, "iso-2022-jp") == "ｱ1" * 3
    with pytest.raises(UnicodeDecodeError) as error:
        (JIS + b"-!)!").decode(iso2022jp.CODEC)
    assert (error.value.start, error.value.end) == (5, 7)
    assert (JIS + b"-!)!").decode(iso2022jp.CODEC, "backslashreplace") == "①\\x29\\x21"
