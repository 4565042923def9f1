"""The text and links of an attached Outlook message file (.msg): Outlook shows its body and its attached messages'
bodies, so their links go to the URI lists and their text to the rules and the classifier, as an attached .eml's do."""

from __future__ import annotations

import base64
import struct

import pytest

from milterd.content import mimetext
from milterd.content.mimetext import extract
from milterd.content.rtf import decompress as decompress_rtf
from tests.harness.outlookmsg import attachment, compound_file, compressed_rtf, msg_tree, ole10native, unicode

PHISH = '<p>Your mailbox is full: <a href="https://phish-domain.test/login">Log in</a></p>'


def with_body(tree: dict, plain: str | None = None, html: bytes | str | None = None) -> dict:
    tree = {k: v for k, v in tree.items() if k != "__substg1.0_1000001F"}
    if plain is not None:
        tree["__substg1.0_1000001F"] = unicode(plain)
    if isinstance(html, bytes):
        tree["__substg1.0_10130102"] = html
    elif html is not None:
        tree["__substg1.0_1013001F"] = unicode(html)
    return tree


def mail(data: bytes, filename: str = "report.msg") -> bytes:
    return (b"From: a@example.org\r\nSubject: report\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
            b"Content-Type: text/plain\r\n\r\nSee the attached report.\r\n--B\r\nContent-Type: application/vnd.ms-outlook\r\n"
            b"Content-Disposition: attachment; filename=\"" + filename.encode() + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n") + b"--B--\r\n")


def test_the_links_and_text_of_a_msg_file_and_its_attached_message_are_read() -> None:
    inner = with_body(msg_tree("Re: your mailbox"), html=PHISH)
    outer = with_body(msg_tree("Fwd", attachment(None, message=inner, display_name="Re: your mailbox")), plain="Fwd: see http://outer.test/a")
    found = extract(mail(compound_file(outer)))
    assert found.uris == ["http://outer.test/a", "https://phish-domain.test/login"]
    assert "Your mailbox is full: Log in" in found.text and not found.truncated and not found.error


def test_an_html_body_in_bytes_is_read_as_utf8_else_windows_1252() -> None:
    utf8 = with_body(msg_tree("a"), html='<a href="https://caf\u00e9.test/">caf\u00e9</a>'.encode())
    assert extract(mail(compound_file(utf8))).uris == ["https://caf\u00e9.test/"]
    western = with_body(msg_tree("a"), html='<p>caf\u00e9</p><a href="https://phish-domain.test/">x</a>'.encode("cp1252"))
    found = extract(mail(compound_file(western)))
    assert found.uris == ["https://phish-domain.test/"] and "caf\u00e9" in found.text


def test_a_saved_message_inside_a_msg_file_is_read() -> None:
    eml = b"From: x@example.org\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n" + PHISH.encode() + b"\r\n"
    found = extract(mail(compound_file(msg_tree("Fwd", attachment("account.eml", eml)))))
    assert "https://phish-domain.test/login" in found.uris


def test_a_damaged_msg_file_or_one_that_is_no_compound_file_reads_what_else_there_is() -> None:
    data = compound_file(with_body(msg_tree("a"), html=PHISH))
    cut = extract(mail(data[:700]))
    assert cut.truncated and not cut.error and "See the attached report." in cut.text
    plain = extract(mail(b"From: x\r\n\r\nhttp://text.test/ in a file named .msg\r\n"))
    assert not plain.error and "https://phish-domain.test/login" not in plain.uris


def test_attached_messages_past_the_depth_bound_and_bodies_past_the_link_room_are_noted_not_read() -> None:
    nested = with_body(msg_tree("deepest"), html=PHISH)
    for level in range(mimetext.MAX_ATTACHED_DEPTH + 1):
        nested = with_body(msg_tree(f"level {level}", attachment(None, message=nested, display_name=f"level {level}")), plain="x")
    deep = extract(mail(compound_file(nested)))
    assert deep.truncated and "https://phish-domain.test/login" not in deep.uris
    long = with_body(msg_tree("a"), plain="x" * 3000 + " http://late.test/")
    small = extract(mail(compound_file(long)), limit=100)  # a link room of 400 characters
    assert small.truncated and "http://late.test/" not in small.uris


def test_a_msg_file_of_many_attachments_stops_at_the_attached_messages_cpu(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Each attachment's names are read to find its saved messages: thousands of them were read past the CPU bound.
    clock = [0.0]

    def tick() -> float:
        clock[0] += 0.01  # every look at the clock costs 10 ms: the bound (0.5 s) falls inside the attachments
        return clock[0]

    monkeypatch.setattr(mimetext, "_thread_seconds", tick)
    eml = b"From: x@example.org\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nhttp://late-link.test/\r\n"
    tree = msg_tree("Many", *[attachment(f"f{i}.txt", b"x") for i in range(100)], attachment("late.eml", eml))
    found = extract(mail(compound_file(tree)))
    assert found.truncated and "http://late-link.test/" not in found.uris
    monkeypatch.setattr(mimetext, "_thread_seconds", lambda: 0.0)
    assert "http://late-link.test/" in extract(mail(compound_file(tree))).uris


# --- found by review: the RTF body, a .msg in a .msg, the names the attachment check reads -------------------
RTF = (b'{\\rtf1\\ansi\\fbidis\\ansicpg1252\\deff0\\fromhtml1 {\\*\\htmltag19 <html>}{\\*\\htmltag84 <a href="https://phish-\r\n'
       b'domain.test/login">}\\htmlrtf {\\field{\\*\\fldinst{HYPERLINK "https://second.test/x"}}}\\htmlrtf0 Log in}')


def test_the_links_of_an_rtf_body_are_read_compressed_or_stored() -> None:
    # Outlook-saved files often keep the HTML only in the compressed RTF body: its link was never looked up.
    for stored in (compressed_rtf(RTF), struct.pack("<LL4sL", len(RTF) + 12, len(RTF), b"MELA", 0) + RTF):
        tree = with_body(msg_tree("a"), plain="Log in")
        tree["__substg1.0_10090102"] = stored
        found = extract(mail(compound_file(tree)))
        # RTF ignores line ends: the one a writer put inside the link is not a break
        assert found.uris == ["https://phish-domain.test/login", "https://second.test/x"], found.uris


def test_rtf_back_references_copy_from_the_dictionary_and_the_output_is_bounded() -> None:
    # A reference to offset 0, length 5 copies "{\rtf" from the initial dictionary; then the end marker.
    token = struct.pack(">H", 0 << 4 | 3) + struct.pack(">H", (207 + 5) << 4)
    data = struct.pack("<LL4sL", 12 + 1 + len(token), 5, b"LZFu", 0) + bytes([0b11]) + token
    assert decompress_rtf(data, 100) == (b"{\\rtf", True)
    # Each reference gives 17 bytes: 60,000 of them are a megabyte; only what is asked is kept.
    bomb = bytes([0xFF]) + struct.pack(">H", 0xF) * 8
    data = struct.pack("<LL4sL", 0, 0, b"LZFu", 0) + bomb * 7500
    out, whole = decompress_rtf(data, 1000)
    assert len(out) == 1000 and not whole


def test_a_msg_file_attached_to_a_msg_file_is_read() -> None:
    inner = compound_file(with_body(msg_tree("inner"), html=PHISH))
    for names in ({"long_name": "inner.msg"}, {"long_name": None, "short_name": "INNER~1.MSG"}):
        found = extract(mail(compound_file(msg_tree("outer", attachment(data=inner, **names)))))
        assert "https://phish-domain.test/login" in found.uris, names


def test_a_msg_file_is_found_under_every_name_the_attachment_check_reads() -> None:
    data = base64.encodebytes(compound_file(with_body(msg_tree("a"), html=PHISH))).replace(b"\n", b"\r\n")
    for disposition in (b'attachment; filename="=?UTF-8?B?cmVwb3J0Lm1zZw==?="', b'attachment; filename="a.txt"; filename="r.msg"',
                        b"attachment; filename*=UTF-8''r%2Emsg"):
        raw = (b"From: a@example.org\r\nSubject: r\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: "
               b"application/octet-stream\r\nContent-Disposition: " + disposition + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data + b"--B--\r\n")
        assert "https://phish-domain.test/login" in extract(raw).uris, disposition


def test_attached_messages_inside_a_msg_file_stop_at_the_cpu_bound(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Each attached message's bodies were read past the bound (6,000 of them took 6 s; found by review).
    clock = [0.0]

    def tick() -> float:
        clock[0] += 0.005  # 100 looks at the clock: past the 60 attachments, within their messages
        return clock[0]

    monkeypatch.setattr(mimetext, "_thread_seconds", tick)
    inner = [attachment(None, message=with_body(msg_tree(f"m{i}"), plain=f"http://h{i}.test/"), display_name=f"m{i}") for i in range(60)]
    found = extract(mail(compound_file(msg_tree("Many", *inner))))
    assert found.truncated and 0 < len(found.uris) < 60


# --- third review: the RTF body read as Outlook shows it, a broken one harmless, names read once ------------------
def rtf_message(rtf: bytes, **bodies: str) -> bytes:
    tree = with_body(msg_tree("a"), **bodies)
    tree["__substg1.0_10090102"] = compressed_rtf(rtf)
    return mail(compound_file(tree))


@pytest.mark.parametrize("rtf", [
    b"{\\rtf1\\fromhtml1 {\\*\\htmltag84 <a href=\"https://phish-domain\\'2etest/login\">}x}",  # a hex escape
    b"{\\rtf1\\fromhtml1 {\\*\\htmltag84 <a href=\"https://phish-domain\\u46?test/login\">}x}",  # a Unicode escape
    b"{\\rtf1\\fromhtml1 {\\*\\htmltag84 <a href=\"https://phish-}{\\*\\htmltag84 domain.test/login\">}x}",  # two groups
    b"{\\rtf1\\fromhtml1 {\\*\\htmltag84 <a href=\"https://phish-domain&#46;test/login\">}x}",  # an HTML entity
    b"{\\rtf1\\fromhtml1 {\\*\\htmltag84 <a href=\"//phish-domain.test/login\">}x}",  # protocol-relative
    b"{\\rtf1 {\\field{\\*\\fldinst{HYPERLINK \"https://phish-}{domain.test/login\"}}{\\fldrslt here}}}",  # a field split in groups
    b"{\\rtf1 {\\field{\\*\\fldinst HYPERLINK \"phish-domain.test/login\"}{\\fldrslt here}}}",  # a field without a scheme
    b"{\\rtf1 Log in at www\\'2ephish-domain.test/login now}",  # written out in the text
])
def test_a_link_in_an_rtf_body_is_read_as_outlook_shows_it(rtf: bytes) -> None:
    found = extract(rtf_message(rtf))
    assert any(uri.rstrip("/").endswith("phish-domain.test/login") for uri in found.uris), found.uris


def test_an_rtf_body_that_cannot_be_decoded_leaves_the_rest_read() -> None:
    # It raised inside the .msg's reading: the HTML body and the attached messages after it were never read.
    inner = with_body(msg_tree("inner"), plain="http://inner-link.test/")
    tree = with_body(msg_tree("a", attachment(None, message=inner, display_name="inner")), html=PHISH)
    tree["__substg1.0_10090102"] = b"\0\0\0\0\0\0\0\0ZZZZ\0\0\0\0junk"
    found = extract(mail(compound_file(tree)))
    assert found.uris == ["https://phish-domain.test/login", "http://inner-link.test/"] and found.truncated


def test_a_long_rtf_body_is_read_up_to_its_bound_not_skipped() -> None:
    rtf = b"{\\rtf1 see https://phish-domain.test/login " + b"x" * (mimetext.MAX_RTF_BYTES + 100_000) + b"}"
    found = extract(rtf_message(rtf))
    assert "https://phish-domain.test/login" in found.uris and found.truncated


def test_a_saved_message_a_packager_object_carries_in_a_msg_file_is_read() -> None:
    eml = b"From: x@example.org\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n" + PHISH.encode() + b"\r\n"
    obj = {"\x01Ole10Native": ole10native("account.eml", "C:\\account.eml", eml)}
    found = extract(mail(compound_file(msg_tree("Fwd", attachment(None, obj=obj, display_name="Package")))))
    assert "https://phish-domain.test/login" in found.uris


def test_a_text_part_that_also_names_a_saved_message_is_still_read_as_text() -> None:
    # Read only as a message, a text/html part with a second filename b.eml lost its link (found by review).
    raw = (b"From: a@example.org\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/html\r\n"
           b'Content-Disposition: inline; filename="a.html"; filename="b.eml"\r\n\r\n<a href="https&#58;//evil.test/">x</a>\r\n--B--\r\n')
    assert "https://evil.test/" in extract(raw).uris


def test_a_part_s_names_are_read_once_and_past_the_message_s_bound_by_the_standard_library(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = mimetext.part_names
    monkeypatch.setattr(mimetext, "part_names", lambda part: calls.append(part) or real(part))
    monkeypatch.setattr(mimetext, "MAX_NAME_FIELDS", 100)  # each part's field is 39 characters: two fit
    parts = "".join(f'--B\r\nContent-Type: application/octet-stream; name="f{i}.bin"\r\n\r\nx\r\n' for i in range(5))
    raw = ("From: a@example.org\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n" + parts + "--B--\r\n").encode()
    assert extract(raw).truncated and len(calls) == 2


def test_an_encoded_name_behind_padding_is_still_read() -> None:
    # A field padded past 2,048 characters was read by the standard library alone: the encoded .eml name was missed.
    eml = b"From: x@example.org\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n" + PHISH.encode() + b"\r\n"
    raw = (b"From: a@example.org\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: application/octet-stream; "
           b'x-pad="' + b"p" * 2100 + b'"; name="=?utf-8?q?invoice=2Eeml?="\r\nContent-Transfer-Encoding: base64\r\n\r\n'
           + base64.encodebytes(eml).replace(b"\n", b"\r\n") + b"--B--\r\n")
    assert "https://phish-domain.test/login" in extract(raw).uris


def test_the_rtf_text_is_not_read_again_when_the_file_has_another_body() -> None:
    # The plain body, the HTML body and the RTF's text each went to the classifier: a message's text three times.
    rtf = b'{\\rtf1\\fromhtml1 {\\*\\htmltag84 <a href="https://phish-domain.test/login">}Cheap pills here{\\*\\htmltag92 </a>}}'
    found = extract(rtf_message(rtf, plain="Cheap pills here"))
    assert found.text.count("Cheap pills here") == 1 and "https://phish-domain.test/login" in found.uris


# --- fifth review: the message's codepages, HTML and text files attached to it ---------------------------------------
def properties(**values: int) -> bytes:
    """A message's fixed-size properties (a 32-byte header, then 16 bytes a property) with these PT_LONG values."""
    ids = {"internet": 0x3FDE, "message": 0x3FFD}
    return b"\0" * 32 + b"".join(struct.pack("<2HLLL", 0x0003, ids[name], 0, value, 0) for name, value in values.items())


def test_bodies_are_read_in_the_codepages_the_message_names() -> None:
    tree = msg_tree("a")
    tree["__properties_version1.0"] = properties(internet=50220, message=1251)
    tree["__substg1.0_10130102"] = b'<a href="https://phish\x1b(B-domain.test/">\x1b$BF|K\\8l\x1b(B</a>'  # ISO-2022-JP
    tree["__substg1.0_1000001E"] = "\u041f\u0440\u0438\u0432\u0435\u0442".encode("cp1251")
    found = extract(mail(compound_file(tree)))
    assert found.uris == ["https://phish-domain.test/"]
    assert "\u65e5\u672c\u8a9e" in found.text and "\u041f\u0440\u0438\u0432\u0435\u0442" in found.text


def test_an_html_page_or_a_text_file_attached_to_a_msg_file_is_read() -> None:
    page = attachment("page.html", b'<a href="https://phish-domain.test/login">Log in</a>')
    note = attachment("note", b"see http://second.test/x")
    note["__substg1.0_370E001F"] = unicode("text/plain")
    found = extract(mail(compound_file(msg_tree("x", page, note))))
    assert found.uris == ["https://phish-domain.test/login", "http://second.test/x"]


def test_an_attached_page_in_utf16_is_read_by_its_byte_order_mark() -> None:
    page = attachment("page.html", b"\xff\xfe" + '<a href="https://phish-domain.test/login">x</a>'.encode("utf-16-le"))
    assert extract(mail(compound_file(msg_tree("x", page)))).uris == ["https://phish-domain.test/login"]
