"""The attachment policy against names and structures an attacker picks to get a file past it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED, DOUBLE, LIMIT, MIME_LIMIT, AttachmentChecks, Finding, hits_for, judge_name
from milterd.content.mimeparts import FIELDS_LIMIT_NOTE, MAX_PART_HEADER, MAX_PARTS, MAX_SCANNED_PARTS, PARTS_LIMIT_NOTE, SCANNED_LIMIT_NOTE, attachments
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of

DEFAULT_BANNED = frozenset(AttachmentChecks().banned_extensions)
SCRIPT = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"evil.js\"\r\n\r\nWScript.Echo(1)\r\n"


def multipart(*parts: bytes, top: bytes = b"") -> bytes:
    body = b"".join(b"--zz\r\n" + part for part in parts)
    return top + b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n" + body + b"--zz--\r\n"


@pytest.fixture
def check(tmp_path: Path) -> object:
    return attachment_check(tmp_path)


def hits(check: object, raw: bytes) -> list[Hit]:
    found: list[Hit] = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))  # type: ignore[attr-defined]
    return found


def symbols(check: object, raw: bytes) -> dict[str, str]:
    return {h.symbol: h.detail for h in hits(check, raw)}


def test_a_long_last_extension_of_the_default_list_is_banned() -> None:
    # "application" (ClickOnce) is on the default list but longer than the 10 characters kept of an inner extension.
    assert [f.rule for f in judge_name("invoice.application", DEFAULT_BANNED)] == ["banned extension .application"]
    assert [f.symbol for f in judge_name("invoice.pdf.application", DEFAULT_BANNED)] == [BANNED, DOUBLE]
    assert judge_name("notes.Monday and Tuesday", DEFAULT_BANNED) == []
    assert judge_name("report.tar.gz", DEFAULT_BANNED) == [] and judge_name("v1.2.pdf", DEFAULT_BANNED) == []


def test_a_name_ends_at_a_nul_as_windows_and_c_code_end_it() -> None:
    assert [f.rule for f in judge_name("evil.exe\x00.pdf", DEFAULT_BANNED)] == ["banned extension .exe"]


def test_padding_the_header_sections_does_not_hide_the_mime_fields() -> None:
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 900) for i in range(80))  # 72 KB of other fields
    assert [a.filename for a in attachments([multipart(SCRIPT, top=pad)])] == ["evil.js"]
    assert [a.filename for a in attachments([multipart(pad + SCRIPT)])] == ["evil.js"]


def test_mime_fields_past_their_bound_are_said_to_be_cut() -> None:
    long_type = b"Content-Type: application/octet-stream; x=\"" + b"a" * 20000 + b"\"\r\n"
    skipped: list[str] = []
    list(attachments([multipart(long_type + SCRIPT)], skipped=skipped))
    assert skipped == [FIELDS_LIMIT_NOTE]


def test_parts_past_the_part_limit_quarantine_the_message(check: object) -> None:
    # 500 filler parts hide the file after them: it used to be a 1-point ATTACH_ARCHIVE_LIMIT, and delivered.
    filler = b"Content-Type: text/plain\r\n\r\nx\r\n"
    raw = multipart(*[filler] * (MAX_PARTS + 5), SCRIPT)
    skipped: list[str] = []
    assert [a.filename for a in attachments([raw], skipped=skipped)] == []
    assert skipped == [PARTS_LIMIT_NOTE]
    assert symbols(check, raw) == {MIME_LIMIT: f"message: {PARTS_LIMIT_NOTE}"}
    assert [h.action for h in hits(check, raw)] == [Action.QUARANTINE]


def test_a_part_past_the_field_bound_quarantines_the_message(check: object) -> None:
    # Its names are read past the bound, but a type or an encoding there is not: see the next test.
    long_type = b"Content-Type: application/octet-stream; x=\"" + b"a" * 20000 + b"\"\r\n"
    found = hits(check, multipart(long_type + b"\r\nabc\r\n"))
    assert [(h.symbol, h.detail, h.action) for h in found] == [(MIME_LIMIT, f"message: {FIELDS_LIMIT_NOTE}", Action.QUARANTINE)]


def test_a_type_pushed_past_the_fields_bound_does_not_hide_an_executable(check: object) -> None:
    # 64 KB of Content-Disposition fields push the part's type and encoding out of what is kept: the part was
    # read as unnamed text/plain, a 1-point ATTACH_ARCHIVE_LIMIT, while a mail client reads the executable.
    pad = b"Content-Disposition: inline; x=\"" + b"a" * 13000 + b"\"\r\n"
    pad = pad * 5 + b"Content-Disposition: inline; x=\"" + b"a" * (MAX_PART_HEADER - 5 * len(pad) - 40) + b"\"\r\n"
    executable = (b"Content-Type: application/x-msdownload\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                  + base64.encodebytes(b"MZ\x90\x00\x03" + bytes(55) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(500)))
    # Unnamed, it is judged as attachment.exe too, the name clients give its type (since the 32nd review).
    assert [h.symbol for h in hits(check, multipart(executable))] == ["ATTACH_BANNED", "ATTACH_TYPE_MISMATCH"]
    found = hits(check, multipart(pad + executable))
    assert [(h.symbol, h.detail, h.action) for h in found] == [(MIME_LIMIT, f"message: {FIELDS_LIMIT_NOTE}", Action.QUARANTINE)]


def digest(posts: int, attachment: bytes = b"") -> bytes:
    """A mailing list's MIME digest: *posts* messages (each text and HTML alternatives, four parts), then *attachment*."""
    post = (b"Content-Type: message/rfc822\r\n\r\nFrom: a@example.org\r\nSubject: post\r\n"
            b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--alt\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n--alt--\r\n")
    return (b"Content-Type: multipart/digest; boundary=dd\r\n\r\n" + b"".join(b"--dd\r\n" + post for _ in range(posts))
            + (b"--dd\r\n" + attachment if attachment else b"") + b"--dd--\r\n")


def test_a_digest_of_hundreds_of_posts_is_read_through(check: object) -> None:
    # 300 posts are 1,200 parts: past the parts decoded, but text only (found by review: quarantined).
    assert symbols(check, digest(300)) == {}
    skipped: list[str] = []
    assert list(attachments([digest(300)], skipped=skipped)) == [] and skipped == []


def test_a_file_after_a_digest_past_the_part_limit_quarantines_the_message(check: object) -> None:
    found = hits(check, digest(300, SCRIPT))
    assert [(h.symbol, h.detail, h.action) for h in found] == [(MIME_LIMIT, f"message: {PARTS_LIMIT_NOTE}", Action.QUARANTINE)]


def test_parts_are_followed_no_further_than_the_scanned_limit(check: object) -> None:
    # A chain of message/rfc822 parts begins no part with a delimiter line: it used to be read without a bound
    # (300,000 parts: 14 s of a worker; found by review).
    chain = b"Content-Type: message/rfc822\r\n\r\n" * (MAX_SCANNED_PARTS + 10) + b"Subject: end\r\n\r\ntext\r\n"
    skipped: list[str] = []
    assert list(attachments([chain], skipped=skipped)) == [] and skipped == [SCANNED_LIMIT_NOTE]
    assert [(h.symbol, h.action) for h in hits(check, chain)] == [(MIME_LIMIT, Action.QUARANTINE)]


def nested(depth: int, inner: bytes, boundary: bytes = b"b%d") -> bytes:
    """*inner* in *depth* multiparts, each inside the last (boundary b0, b1, ... unless *boundary* names them alike)."""
    raw = b"Content-Type: multipart/mixed; boundary=" + (boundary.replace(b"%d", b"0")) + b"\r\n\r\n"
    for level in range(1, depth):
        raw += b"--" + boundary.replace(b"%d", b"%d" % (level - 1)) + b"\r\n"
        raw += b"Content-Type: multipart/mixed; boundary=" + boundary.replace(b"%d", b"%d" % level) + b"\r\n\r\n"
    return raw + b"--" + boundary.replace(b"%d", b"%d" % (depth - 1)) + b"\r\n" + inner


@pytest.mark.parametrize("depth", [21, 24, 300, MAX_PARTS - 1])
def test_a_banned_file_nested_deep_is_judged(check: object, depth: int) -> None:
    # Multiparts nest as deep as the part limit lets them: a mail client shows a file 21 levels down
    # as it shows one at 2 (it used to be a 1-point ATTACH_ARCHIVE_LIMIT past 20 levels).
    found = symbols(check, nested(depth, SCRIPT))
    assert found.get(BANNED, "").endswith("evil.js: banned extension .js")
    assert LIMIT not in found


def test_multiparts_nested_past_the_part_limit_quarantine_the_message(check: object) -> None:
    assert symbols(check, nested(MAX_PARTS + 5, SCRIPT)) == {MIME_LIMIT: f"message: {PARTS_LIMIT_NOTE}"}
    assert [h.action for h in hits(check, nested(MAX_PARTS + 5, SCRIPT))] == [Action.QUARANTINE]


def test_an_outer_delimiter_closes_the_multiparts_inside_it() -> None:
    # Deep inside, the outermost boundary's delimiter starts the outermost multipart's next part:
    # the file after it is read, and the inner boundaries are no longer delimiters.
    raw = nested(40, b"Content-Type: text/plain\r\n\r\nx\r\n")
    raw += b"--b0\r\n" + SCRIPT.replace(b"WScript.Echo(1)", b"--b39\r\n--b5--")
    raw += b"--b0--\r\n"
    assert [(a.filename, a.data.read()) for a in attachments([raw])] == [("evil.js", b"--b39\r\n--b5--")]


def test_one_boundary_at_every_level_closes_the_innermost() -> None:
    # The same boundary at each level (clients match the innermost): a close delimiter ends one level only.
    raw = nested(30, SCRIPT, boundary=b"same") + b"--same--\r\n--same\r\n" + SCRIPT.replace(b"evil.js", b"second.js")
    assert [a.filename for a in attachments([raw])] == ["evil.js", "second.js"]


@pytest.mark.parametrize(
    "fields",
    [
        # The Content-Type name, where the Content-Disposition names something harmless.
        b"Content-Type: application/octet-stream; name=\"evil.js\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n",
        # A second filename parameter, a second Content-Disposition field.
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=notes.txt; filename=evil.js\r\n",
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=notes.txt\r\nContent-Disposition: attachment; filename=evil.js\r\n",
        # A text part naming its file only in a second Content-Type or Content-Disposition field, which a client may take.
        b"Content-Type: text/plain\r\nContent-Type: application/octet-stream; name=\"evil.js\"\r\n",
        b"Content-Type: text/plain\r\nContent-Disposition: inline\r\nContent-Disposition: attachment; filename=evil.js\r\n",
        # Quoted-pairs (RFC 5322 section 3.2.4): "ev\il.j\s" is evil.js.
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"ev\\il.j\\s\"\r\n",
    ],
)
def test_every_name_a_part_carries_is_judged(check: object, fields: bytes) -> None:
    raw = multipart(b"Content-Type: text/plain\r\n\r\nhi\r\n", fields + b"\r\nWScript.Echo(1)\r\n")
    assert symbols(check, raw).get(BANNED, "").endswith(": banned extension .js")


def test_a_plain_part_with_one_name_has_no_other_names() -> None:
    [attachment] = attachments([multipart(SCRIPT)])
    assert attachment.names == ()


def test_the_reply_naming_a_hostile_file_is_one_bounded_printable_line() -> None:
    name = "invoice\u202egpj\x00\r\n" + "a" * 5000 + ".exe"
    [hit] = hits_for([Finding(BANNED, name, "banned extension .exe")], {BANNED: "reject"})
    text = str(hit.reply)
    assert text.isascii() and text.isprintable() and len(text) <= 400
    assert "\\u202e" in text and "\\x00\\r\\n" in text


def test_an_encoded_attached_message_is_judged_as_a_file_and_opened(check: object) -> None:
    inner = b"Content-Type: application/octet-stream; name=evil.exe\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAA=\r\n"
    encoded = base64.encodebytes(inner).replace(b"\n", b"\r\n")
    part = b"Content-Type: message/rfc822; name=\"evil.js\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
    found = symbols(check, multipart(part))
    assert found[BANNED] == "evil.js: banned extension .js; evil.js/evil.exe: banned extension .exe"
    assert LIMIT not in found


@pytest.mark.parametrize(
    "encoded",
    [
        b"=?x-unknown?b?ZXZpbC5leGU=?=",  # a charset Python does not know: clients read it as UTF-8
        b"=?utf-8*en?q?evil.exe?=",  # a language tag (RFC 2231 section 5)
        b"=?utf-8?b?ZXZpbC5leGU?=",  # base64 without its padding
    ],
)
def test_an_encoded_name_clients_decode_is_judged_decoded(check: object, encoded: bytes) -> None:
    fields = b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="' + encoded + b'"\r\n'
    raw = multipart(b"Content-Type: text/plain\r\n\r\nhi\r\n", fields + b"\r\nMZ\r\n")
    assert symbols(check, raw).get(BANNED, "").endswith(": banned extension .exe")


PADDING = b"".join(b";\r\n x%d=\"%s\"" % (i, b"a" * 40) for i in range(600))  # 27 KB of parameters: past MAX_FIELD


@pytest.mark.parametrize(
    "naming",
    [
        b";\r\n filename=\"evil.js\"",
        b"; filename=\r\n \"evil.js\"",  # the value folded onto the next line
        b";\r\n filename*0=\"ev\";\r\n filename*1=\"il.j\";\r\n filename*2=\"s\"",  # RFC 2231 sections, the extension split
        b";\r\n filename*=utf-8''%65vil.js",
    ],
)
def test_a_name_behind_padding_past_the_field_bound_is_judged(check: object, naming: bytes) -> None:
    # A mail client reads the whole field; the first MAX_FIELD bytes of it used to be all that was read,
    # and the file was a 1-point ATTACH_ARCHIVE_LIMIT, delivered.
    part = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment" + PADDING + naming + b"\r\n\r\nWScript.Echo(1)\r\n"
    found = symbols(check, multipart(b"Content-Type: text/plain\r\n\r\nhi\r\n", part))
    assert found.get(BANNED, "").endswith("evil.js: banned extension .js"), found
    assert MIME_LIMIT in found  # the rest of the field is still not read: said, and the message held


def test_a_boundary_behind_padding_past_the_field_bound_is_followed(check: object) -> None:
    inner = b"Content-Type: multipart/mixed" + PADDING + b";\r\n boundary=\"inner\"\r\n\r\n--inner\r\n" + SCRIPT + b"--inner--\r\n"
    assert symbols(check, multipart(inner)).get(BANNED, "").endswith("evil.js: banned extension .js")


def test_what_is_read_past_the_bound_is_bounded() -> None:
    from milterd.content.mimeparts import MAX_OVERFLOW

    names = b"".join(b";\r\n filename=\"n%d.txt\"" % i for i in range(20_000))  # 500 KB of naming lines
    part = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment" + PADDING + names + b"\r\n\r\nx\r\n"
    [(name, others)] = [(a.filename, a.names) for a in attachments([multipart(part)])]
    assert 0 < sum(len(n) for n in (name, *others)) < MAX_OVERFLOW


def test_the_last_rfc2231_section_past_the_read_bound_still_ends_the_name(check: object) -> None:
    from milterd.content.mimeparts import MAX_OVERFLOW

    # 2,000 sections of naming padding, then the extension: a client joins them all (…a.js); the
    # first and the last naming lines are read, so the joined name still ends as the client's does.
    sections = b"".join(b";\r\n filename*%d=\"a\"" % i for i in range(2000)) + b";\r\n filename*2000=\".js\""
    part = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment" + PADDING + sections + b"\r\n\r\nx\r\n"
    assert BANNED in symbols(check, multipart(part))  # its detail (the 2,000-character name) is cut in the row
    [name] = [a.filename for a in attachments([multipart(part)])]
    assert name.endswith("aaa.js") and len(name) < MAX_OVERFLOW  # the first and the last sections, joined


def test_a_plain_name_after_naming_padding_past_the_read_bound_is_judged(check: object) -> None:
    padding = b"".join(b";\r\n name=\"n%d.txt\"" % i for i in range(3000))
    part = b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment" + PADDING + padding + b";\r\n filename=\"evil.js\"\r\n\r\nx\r\n"
    assert symbols(check, multipart(part)).get(BANNED, "").endswith("evil.js: banned extension .js")


LONG = "A" * 17000


@pytest.mark.parametrize(
    "fields",
    [
        f'Content-Disposition: attachment; x="{LONG}"; filename="evil.js"',  # padding and name on one line
        f'Content-Disposition: attachment;\r\n x="{LONG}";\r\n filename="evil.js"; y="{"A" * 9000}"',  # the name's line over 8 KB
        # A later naming parameter of 9 KB: it used to empty the kept tail, the name with it.
        f'Content-Disposition: attachment;\r\n x="{LONG}";\r\n' + "".join(f" x{i}name=1;\r\n" for i in range(1000))
        + f' filename="evil.js";\r\n yname="{"A" * 9000}"',
        # The same with every line under 1 KB (Postfix's line_length_limit): one quoted value over ten lines.
        "Content-Disposition: attachment;\r\n" + "".join(f' x{i}="{"A" * 900}";\r\n' for i in range(20))
        + "".join(f" a{i}name=1;\r\n" for i in range(800)) + ' filename="evil.js";\r\n yname="' + "".join(f"{'A' * 900}\r\n " for _ in range(10)) + 'A"',
        f'Content-Disposition: attachment;\r\n x="{LONG}";\r\n filename\r\n ="evil.js"',  # the name folded before its "="
        f'Content-Disposition: attachment;\r\n x="{LONG}";\r\n filename=evil.js notes.txt',  # Thunderbird: evil.js
    ],
)
def test_a_name_past_the_field_bound_is_judged_however_it_is_padded(check: object, fields: str) -> None:
    part = ("Content-Type: application/octet-stream\r\n" + fields + "\r\n\r\nWScript.Echo(1)\r\n").encode()
    found = symbols(check, multipart(b"Content-Type: text/plain\r\n\r\nhi\r\n", part))
    assert found.get(BANNED, "").endswith("evil.js: banned extension .js"), found


def test_more_uuencoded_files_than_are_judged_quarantine_the_message(check: object) -> None:
    raw = b"Subject: x\r\n\r\n" + b"".join(b"begin 644 f%d.txt\r\nM\r\nend\r\n" % i for i in range(1005)) + b"begin 644 run.js\r\n"
    found = hits(check, raw)
    assert [(h.symbol, h.action) for h in found] == [(MIME_LIMIT, Action.QUARANTINE)]
    assert found[0].detail == "message: more than 1000 uuencoded files: the rest not looked at"
