"""dkimpy's strip_trailing_lines replaced (milterd/dkimfast.py): the same bytes, without a Python step per empty line."""

from __future__ import annotations

import random

import dkim
import dkim.canonicalization
import pytest

from milterd import dkimfast


def test_the_same_bytes_as_dkimpy() -> None:
    rnd = random.Random(5321)
    pieces = [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"a", b" ", b"\t", b"\n\r"]
    for _ in range(50000):
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 14)))
        assert dkimfast.strip_trailing_lines(text) == dkimfast.PURE_STRIP_LINES(text), text
    assert dkimfast.strip_trailing_lines(b"") == b"\r\n"
    assert dkimfast.strip_trailing_lines(b"a") == b"a\r\n"
    assert dkimfast.strip_trailing_lines(b"a\r\n") == b"a\r\n"
    assert dkimfast.strip_trailing_lines(b"a\r\n\r\n\r\n") == b"a\r\n"
    assert dkimfast.strip_trailing_lines(b"\r\n\r\n") == b"\r\n"
    assert dkimfast.strip_trailing_lines(b"a\r\r\n\r\n") == b"a\r\r\n"
    assert dkimfast.strip_trailing_lines(b"a\n\n") == b"a\n\n\r\n"  # no CRLF at the end: one added, as dkimpy does


def test_a_long_run_of_empty_lines_gives_dkimpys_bytes() -> None:
    body = b"text\r\n" + b"\r\n" * 200_000
    assert dkimfast.strip_trailing_lines(body) == dkimfast.PURE_STRIP_LINES(body) == b"text\r\n"


def test_install_replaces_it_for_both_canonicalisations(monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: dkimpy's loop, one endswith() per CRLF: a 10 MB body of empty lines cost about a
    # second of CPU per signature verified or made, holding the worker's GIL.
    monkeypatch.setattr(dkim.canonicalization, "strip_trailing_lines", dkimfast.PURE_STRIP_LINES)
    assert not dkimfast.installed()
    dkimfast.install()
    assert dkimfast.installed() and dkim.canonicalization.strip_trailing_lines is dkimfast.strip_trailing_lines
    body = b"x \t\r\n" + b"\r\n" * 1000
    assert dkim.canonicalization.Simple.canonicalize_body(body) == b"x \t\r\n"
    assert dkim.canonicalization.Relaxed.canonicalize_body(body) == b"x\r\n"
