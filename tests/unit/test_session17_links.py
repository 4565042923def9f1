"""Links a mail client makes clickable to a listed domain that the URI lists missed (fuzz session 17, findings 4-8)."""

from __future__ import annotations

import base64
import email
import email.policy

import pytest

from milterd.checks.uribl import link_host, link_targets
from milterd.content.mimetext import decode_part, extract, uris_in_text

EVIL = "https://evil.test/login"


def domains(raw: bytes) -> list[str]:
    """The registrable domains the URI lists look up for a message."""
    found = extract(raw)
    return link_targets(found.uris, frozenset(), 20)[0]


def message(headers: str, body: str, crlf: bool = True) -> bytes:
    text = f"From: a@example.net\nTo: u@local.test\nSubject: x\nMIME-Version: 1.0\n{headers}\n\n{body}\n"
    return text.replace("\n", "\r\n").encode() if crlf else text.encode()


def multipart(headers: str, body: str) -> bytes:
    """One part of a multipart/mixed message (read by the stdlib parse, not the single-part shortcut)."""
    inner = f"--b\r\n{headers}\r\n\r\n{body}\r\n--b--\r\n"
    return message('Content-Type: multipart/mixed; boundary="b"', inner.replace("\r\n", "\n"))


# --- 4: three or more slashes after a special scheme ----------------------------------------------

@pytest.mark.parametrize("uri", [
    "https:///evil.test/login", "https:////evil.test/login", "HTTP:///evil.test", "https:/\\/evil.test/",
    "ftp:///evil.test/x", "wss:////evil.test/", "///evil.test/login", "https:///user@evil.test:443/",
])
def test_any_number_of_slashes_after_a_special_scheme_leads_to_the_host(uri: str) -> None:
    assert link_host(uri) == "evil.test"


@pytest.mark.parametrize("crlf", [True, False])
def test_a_triple_slash_link_in_text_and_in_an_href_is_looked_up(crlf: bool) -> None:
    assert domains(message("Content-Type: text/plain", "Unlock: https:///evil.test/login", crlf)) == ["evil.test"]
    assert domains(message("Content-Type: text/html", '<a href="https:///evil.test/login">x</a>', crlf)) == ["evil.test"]


# --- 5: what urlsplit refuses, and UTS #46 ignored code points --------------------------------------

@pytest.mark.parametrize("uri", [
    "https://www.bank.test\uff0fsecure@evil.test/login",  # a full-width slash in the userinfo
    "https://bank.test\uff03x@evil.test/login",  # a full-width number sign
    "https://bank.test\uff1ax@evil.test:8443/login",  # a full-width colon
    "https://bank.test]@evil.test/login",  # an unbalanced bracket in the userinfo
    "https://[bank.test@evil.test/login",
    "https://[bank.test]@evil.test/login",  # brackets round no address, in the userinfo
    "https://a@b]@evil.test/",  # the last "@" counts
    "https://bank.test]@evil.test\\login",  # a backslash ends a special authority
])
def test_a_userinfo_urlsplit_refuses_leaves_the_host_after_the_last_at(uri: str) -> None:
    assert link_host(uri) == "evil.test"


@pytest.mark.parametrize("uri", [
    "https://evil]test/", "https://evil.test]/", "https://evil.test:8]0/", "https://[evil.test]/",
    "https://[::1/", "https://a]@evil.test:99999/", "https://a]@evil.test:8x/", "https://a]@[x]/",
    "https://\uff0f@evil.test:" + "9" * 5000 + "/",
])
def test_what_a_browser_refuses_has_no_host(uri: str) -> None:
    assert link_host(uri) is None


def test_a_bracketed_address_after_a_refused_userinfo_is_that_address() -> None:
    assert link_host("https://a]@[2001:db8::1]:8080/") == "2001:db8::1"


IGNORED = ["\u00ad", "\u034f", "\u180b", "\u180c", "\u180d", "\u200b", "\u2060", "\ufe00", "\ufe0f", "\ufeff"]


@pytest.mark.parametrize("mark", IGNORED)
def test_a_trailing_dot_before_an_ignored_code_point_is_dropped(mark: str) -> None:
    assert link_host(f"https://evil.test.{mark}/login") == "evil.test"
    assert link_host(f"https://evil.test{mark}./login") == "evil.test"
    assert link_host(f"https://ev{mark}il.test/login") == "evil.test"


def test_a_soft_hyphen_written_as_an_entity_or_percent_encoded() -> None:
    assert link_host("https://evil.test.%C2%AD/login") == "evil.test"
    assert domains(message("Content-Type: text/html", '<a href="https://evil.test.&shy;/login">x</a>')) == ["evil.test"]


# --- 6: a written-out link right after a non-ASCII letter or "_" -------------------------------------

@pytest.mark.parametrize("text", [
    "请点击https://evil.test/login", "Notice_https://evil.test/login", "éhttps://evil.test/login", "\u017fhttps://evil.test/login",
    "«https://evil.test/login", "x_https://evil.test/login",
])
def test_a_scheme_after_a_character_thunderbird_does_not_scan_back_over_starts_a_link(text: str) -> None:
    assert uris_in_text(text) == [EVIL]
    assert domains(message("Content-Type: text/plain; charset=utf-8", text)) == ["evil.test"]


@pytest.mark.parametrize("text", ["xhttps://evil.test/", "1https://evil.test/", "Xhttp://evil.test/", "wwww.evil.test/"])
def test_a_scheme_inside_a_word_is_no_link_as_before(text: str) -> None:
    assert uris_in_text(text) == []


@pytest.mark.parametrize("text", ["a.https://evil.test/", "-https://evil.test/", "+ftp://evil.test/", "(https://evil.test/"])
def test_a_scheme_after_punctuation_is_a_link_as_before(text: str) -> None:
    assert link_host(uris_in_text(text)[0]) == "evil.test"


@pytest.mark.parametrize(("text", "found"), [
    ("see www.evil.test/x", ["http://www.evil.test/x"]), ("_www.evil.test", []), ("wwww.evil.test", []), ("请www.evil.test", []),
])
def test_www_links_start_as_before(text: str, found: list[str]) -> None:
    assert uris_in_text(text) == found


def test_a_cjk_text_of_links_gives_them_all() -> None:
    text = "请点击https://a.evil.test/ 请点击https://b.evil.test/"
    assert uris_in_text(text) == ["https://a.evil.test/", "https://b.evil.test/"]


# --- 7: a Content-Transfer-Encoding with trailing text ----------------------------------------------

HTML = '<p>Your account is locked. <a href="https://evil.test/login">Unlock</a></p>'
QP = '<p><a href=3D"https://=65vil.test/login">Unlock</a></p>'
B64 = base64.b64encode(HTML.encode()).decode()


@pytest.mark.parametrize(("cte", "body"), [
    ("base64 ", B64), ("base64; x", B64), ("BASE64 (comment)", B64), (" base64\t", B64),
    ("quoted-printable;", QP), ("quoted-printable x", QP), ("Quoted-Printable (c)", QP),
])
@pytest.mark.parametrize("shape", ["single", "lf", "multipart"])
def test_a_transfer_encoding_is_read_by_its_first_token(cte: str, body: str, shape: str) -> None:
    headers = f"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: {cte}"
    if shape == "multipart":
        raw = multipart(headers.replace("\n", "\r\n"), body)
    else:
        raw = message(headers, body, crlf=shape == "single")
    assert domains(raw) == ["evil.test"]
    assert "Your account" in extract(raw).text or "Unlock" in extract(raw).text


def test_decode_part_reads_the_first_token_and_keeps_8bit_bytes() -> None:
    raw = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable;\n\ncaf\u00e9 =3D x=\n y\n".encode()
    part = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert decode_part(part) == "caf\u00e9 = x y\n"
    part = email.message_from_bytes(b"Content-Transfer-Encoding: base64 \n\n" + base64.b64encode(b"hello") + b"\n", policy=email.policy.compat32)
    assert decode_part(part) == "hello"


# --- 8: a Content-Type with a comment or a further token --------------------------------------------

@pytest.mark.parametrize(("ctype", "body"), [
    ("text/html (HTML mail)", HTML), ("text/html (HTML mail); charset=utf-8", HTML), ("TEXT/HTML(x)", HTML), ("text/html x", HTML),
    ("text/plain x", "Unlock: https://evil.test/login"), ("text/plain (plain); charset=us-ascii", "Unlock: https://evil.test/login"),
])
@pytest.mark.parametrize("shape", ["single", "lf", "multipart"])
def test_a_content_type_is_read_by_its_first_token(ctype: str, body: str, shape: str) -> None:
    headers = f"Content-Type: {ctype}"
    raw = multipart(headers, body) if shape == "multipart" else message(headers, body, crlf=shape == "single")
    found = extract(raw)
    assert domains(raw) == ["evil.test"]
    assert "<a" not in found.text and "Unlock" in found.text  # HTML rendered, plain text kept


def test_a_comment_content_type_with_an_odd_encoding_too() -> None:
    raw = message("Content-Type: text/html (HTML mail)\nContent-Transfer-Encoding: base64 ", B64, crlf=False)
    assert domains(raw) == ["evil.test"]
