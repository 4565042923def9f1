"""Charset labels mail clients decode as a superset (WHATWG Encoding Standard; thirtieth session's review):
HDR_ENCODED_WORD_INVALID fired on ordinary Chinese, Korean and Japanese mail, and the logged Subject and the
text rules saw U+FFFD where clients show the characters."""

from __future__ import annotations

import base64

import pytest

from milterd.checks.headers import bad_encoded_words
from milterd.content.headertext import decoded
from milterd.content.mimeparams import decode_bytes

CASES = [
    ("gb2312", "朱镕基", "gbk"),  # GBK characters under the GB2312 label
    ("ks_c_5601-1987", "똠얌꿍 주문", "cp949"),  # Outlook's Korean label, cp949 syllables
    ("euc-kr", "똠", "cp949"),
    ("shift_jis", "①会議のご案内", "cp932"),  # Windows' NEC specials
    ("x-gbk", "中文", "gbk"),
    ("big5", "香港", "big5hkscs"),
    ("x-mac-roman", "caf\u00e9", "mac_roman"),
]


@pytest.mark.parametrize(("label", "text", "codec"), CASES)
def test_a_label_is_decoded_as_clients_decode_it(label: str, text: str, codec: str) -> None:
    data = text.encode(codec)
    word = f"=?{label}?B?{base64.b64encode(data).decode()}?="
    assert bad_encoded_words(word) == ""
    assert decoded(word) == text
    assert decode_bytes(data, label) == text  # a text part's charset too


def test_a_wrong_charset_is_still_flagged() -> None:
    assert bad_encoded_words("=?utf-8?B?" + base64.b64encode(b"\xff\xfe").decode() + "?=") != ""
    assert bad_encoded_words("=?x-unknown-charset?B?YQ==?=") != ""


def test_an_rfc2231_name_in_a_superset_is_the_one_thunderbird_chooses() -> None:
    """A second look: Thunderbird's "does it decode" test of an RFC 2231 value used the strict codec, so the
    plain filename was taken instead of the GBK one a client shows."""
    import urllib.parse

    from milterd.content.mimeparams import client_param

    quoted = urllib.parse.quote_from_bytes("朱镕基报告.exe".encode("gbk"))
    assert client_param(f"attachment; filename*=gb2312''{quoted}; filename=\"other.txt\"", "filename") == "朱镕基报告.exe"
