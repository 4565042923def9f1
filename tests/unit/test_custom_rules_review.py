"""Custom rules against evasions: what text header and body rules are matched against.

A header rule is promised the header *decoded* (README, custom rules): the
RFC 2047 encoded-words decoded and the field unfolded (RFC 5322 2.2.3),
whatever else the field holds.  Body and header rules do not see the
invisible (Unicode Default_Ignorable) characters that spammers put inside
words: a soft hyphen or a zero-width space shows nothing to the reader.
"""

from __future__ import annotations

import base64
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from milterd import text as text_module
from milterd.checks import custom
from milterd.config import load_config
from milterd.message.pipeline import Pipeline
from milterd.milter.offline import Client, check_message
from milterd.services import build
from tests.conftest import message

RULES = r"""
[[rule]]
name = "SUBJ_VIAGRA"
header = "Subject"
regex = '(?i)viagra'

[[rule]]
name = "SUBJ_PHRASE"
header = "subject"
regex = 'cheap pills now'

[[rule]]
name = "BODY_VIAGRA"
body = '(?i)viagra'
"""


def rules_pipeline(tmp_path: Path, rules: str) -> Iterator[Pipeline]:
    """A pipeline with *rules* as rules/local.toml and a SQLite log in *tmp_path* (for a fixture to yield from)."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(rules)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    pipe = Pipeline(build(load_config(conf)), keep_log=False)
    yield pipe
    pipe.shutdown()


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    yield from rules_pipeline(tmp_path, RULES)


def symbols_of(pipeline: Pipeline, raw: bytes) -> set[str]:
    """The symbols *pipeline* gives *raw* from a client at 192.0.2.10 (the check must not fail)."""
    result = check_message(pipeline, raw, Client(addr="192.0.2.10"))
    assert not result.error, result.error
    return set(result.symbols)


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?b?dmlhZ3Jh?=",  # the baseline: worked before
        "=?x-unknown?b?dmlhZ3Jh?=",  # a charset Python does not know
        "=?utf-8*en?b?dmlhZ3Jh?=",  # RFC 2231 section 5: charset*language
        "caf\u00e9 =?utf-8?b?dmlhZ3Jh?=",  # raw UTF-8 (RFC 6532) beside an encoded-word
        "=?utf-8?q?vi?=agra",  # an encoded-word glued to plain text
        "=?utf-8?q?vi?= =?x-unknown?q?agra?=",  # several words, one charset unknown
        "=?utf-8?q?vi=C2=AD?= =?iso-8859-1?q?agra?=",  # a soft hyphen inside, mixed charsets
        "=?utf-8?q?vi=E2=80=8Bagra?=",  # a zero-width space inside
    ],
)
def test_header_rule_sees_decoded_subject(pipeline: Pipeline, subject: str) -> None:
    assert "SUBJ_VIAGRA" in symbols_of(pipeline, message(subject=subject))


def test_header_rule_sees_unfolded_subject(pipeline: Pipeline) -> None:
    """RFC 5322 2.2.3: unfolding removes the CRLF, the blank after it stays."""
    assert "SUBJ_PHRASE" in symbols_of(pipeline, message(subject="cheap pills\r\n now"))
    assert "SUBJ_PHRASE" in symbols_of(pipeline, message(subject="=?utf-8?q?cheap_pills?=\r\n now"))
    assert "SUBJ_PHRASE" not in symbols_of(pipeline, message(subject="cheap pills later"))


def test_every_subject_and_any_name_case_is_searched(pipeline: Pipeline) -> None:
    raw = message(subject="hello", headers={"SUBJECT": "=?utf-8?b?dmlhZ3Jh?="})
    assert raw.count(b"Subject:") == 1 and b"SUBJECT:" in raw
    assert "SUBJ_VIAGRA" in symbols_of(pipeline, raw)


def html(markup: str) -> bytes:
    """A message whose body is *markup*, sent as base64 text/html."""
    encoded = base64.encodebytes(markup.encode("utf-8")).decode("ascii")
    return message(body=encoded, headers={"Content-Type": "text/html; charset=utf-8", "Content-Transfer-Encoding": "base64"})


@pytest.mark.parametrize(
    "raw",
    [
        html("<p>v&shy;iagra</p>"),
        html("<p>v&#8203;ia&#x200d;gra</p>"),
        html("<p>vi\ufeffag\u2060ra</p>"),
        message(body="vi=E2=80=8Bagra\r\n", headers={"Content-Transfer-Encoding": "quoted-printable"}),
        message(body="vi\u00adagra\r\n"),
    ],
)
def test_body_rule_ignores_invisible_characters(pipeline: Pipeline, raw: bytes) -> None:
    assert "BODY_VIAGRA" in symbols_of(pipeline, raw)


def test_visible_keeps_visible_text() -> None:
    assert custom._visible("Gr\u00fc\u00dfe, \u4e2d\u6587 \u2014 viagra") == "Gr\u00fc\u00dfe, \u4e2d\u6587 \u2014 viagra"
    assert custom._visible("a\u200bb\u00adc\ufeffd\u2060\u200de") == "abcde"


def test_decoded_header_forms() -> None:
    assert custom._decoded(b'"=?utf-8?q?Viagra_Shop?=" <a@example.org>') == '"Viagra Shop" <a@example.org>'
    assert custom._decoded(b"=?utf-8?q?a?=  \t =?utf-8?q?b?= c") == "ab c"  # RFC 2047 6.2
    assert custom._decoded(b"plain\n\tfolded") == "plain\tfolded"
    assert custom._decoded(b"=?utf-8?b?dmlhZ3J?=") == "viagr"  # missing padding, as the stdlib decodes it
    assert custom._decoded(b"=?utf-8?b?d?=") == "=?utf-8?b?d?="  # not base64 at all: left as sent
    assert custom._decoded(b"=?idna?q?x?= =?rot13?q?y?=") == "xy"  # codecs that are not text charsets
    assert custom._decoded(b"no words \xff") == "no words \ufffd"


def test_decoding_takes_the_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs on every header of every message: plain ASCII fields, and text already in NFKC, are never scanned for
    invisible characters or mapped (work checked, not timed)."""
    field = b"Re: the meeting tomorrow at ten, with the agenda attached"
    text = "Hello Bob,\r\nsee you tomorrow.\r\n" * 160  # about 5 KB
    umlauts = "Gr\u00fc\u00dfe aus K\u00f6ln, bis morgen.\r\n" * 160  # 5 KB not ASCII, already NFKC

    class Unused:
        def sub(self, *_args: object) -> str:
            raise AssertionError("scanned for invisible characters")

    def unmapped(*_args: object) -> str:
        raise AssertionError("normalised")

    monkeypatch.setattr(custom, "unicodedata", SimpleNamespace(is_normalized=unicodedata.is_normalized, normalize=unmapped))
    assert custom._visible(umlauts) == umlauts  # one scan for invisible characters, no mapping
    monkeypatch.setattr(text_module, "INVISIBLE", Unused())
    assert custom._decoded(field) == field.decode()
    assert custom._visible(text) is text
