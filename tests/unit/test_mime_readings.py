"""Each reading of a multipart's boundary judged on its own (``mimeparts.every_reading``).

Thunderbird and the standard library read some boundary parameters otherwise (``boundary=B C`` is
``B`` to Thunderbird, ``B C`` to the stdlib; ``boundary="B" (comment)`` is ``B`` and ``"B" (comment)``).
The attachments used to be read with a delimiter line of either reading cutting a part: a line
``--B C`` inside the base64 of a zip that Thunderbird delimits with ``--B`` cut the zip in two for
milterd (a 1-point unreadable archive), while Thunderbird, whose base64 decoder skips what is not
base64, showed it whole with its evil.exe.  Now each reading is parsed on its own and the findings joined.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from milterd.checks.attachments import BANNED, UNREADABLE
from milterd.content import mimeparts, mimetext
from milterd.content.mimeparts import attachments
from milterd.message.model import Action, Hit, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of, smuggled, wrapped, zipped

PE = b"MZ\x90\x00" + b"\x00" * 300
#: (the Content-Type's boundary parameter, Thunderbird's reading, the stdlib's reading).
SHAPES = [
    ("boundary=B C", b"B", b"B C"),  # an unquoted token ends at a blank for Thunderbird
    ('boundary="B" (comment)', b"B", b'"B" (comment)'),  # the value ends at its closing quote for Thunderbird
    ("boundary=\"X\"; boundary*=''B", b"B", b"X"),  # Thunderbird prefers boundary*=
    ("boundary=B; boundary*=''BC", b"BC", b"B"),  # the stdlib's is a prefix of Thunderbird's
]
IDS = ["token-blank", "quoted-comment", "rfc2231-preferred", "prefix"]


@pytest.fixture
def check(tmp_path: Path) -> Any:
    return attachment_check(tmp_path)


def hits(check: Any, raw: bytes) -> dict[str, Hit]:
    found: list[Hit] = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))
    return {h.symbol: h for h in found}


def message(parameter: str, delimiter: bytes, attachment_body: bytes, name: bytes = b"invoice.zip") -> bytes:
    """A multipart/mixed with *parameter*, whose parts *delimiter* delimits: a text, then a base64 attachment."""
    return (b"From: a@example.net\r\nTo: b@example.com\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; " + parameter.encode() + b"\r\n\r\n"
            b"--" + delimiter + b"\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
            b"--" + delimiter + b"\r\nContent-Type: application/zip; name=\"" + name + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment_body
            + b"--" + delimiter + b"--\r\n")


@pytest.mark.parametrize(("parameter", "client", "library"), SHAPES, ids=IDS)
@pytest.mark.parametrize("delimiting", ["client", "library"])
def test_the_other_readings_delimiter_in_the_base64_does_not_hide_the_exe(
        check: Any, parameter: str, client: bytes, library: bytes, delimiting: mimeparts.Reading) -> None:
    # One reading (Thunderbird's, or the stdlib's) delimits the parts; the other's line hides in the zip's base64.
    delimiter, hidden = (client, library) if delimiting == "client" else (library, client)
    data, body = smuggled(b"--" + hidden)
    raw = message(parameter, delimiter, body)
    found = hits(check, raw)
    assert BANNED in found, found
    assert "invoice.zip/evil.exe: banned extension .exe" in found[BANNED].detail
    assert found[BANNED].action == Action.REJECT
    # The delimiting reading alone gives the zip whole, as a client of that reading decodes it.
    assert [(a.filename, a.data.read()) for a in attachments([raw], reading=delimiting)] == [("invoice.zip", data)]


@pytest.mark.parametrize(("parameter", "client", "library"), SHAPES, ids=IDS)
@pytest.mark.parametrize("reading", ["client", "library"])
def test_an_ordinary_message_with_differing_readings_gives_the_same_attachments(
        check: Any, parameter: str, client: bytes, library: bytes, reading: str) -> None:
    delimiter = client if reading == "client" else library
    archive = zipped({"readme.txt": b"hello", "report.pdf": b"%PDF-1.4\n"})
    raw = message(parameter, delimiter, wrapped(base64.b64encode(archive)))
    old = [(a.filename, a.content_type, a.data.read()) for a in attachments([raw])]  # both readings at once, as before
    new = [(a.filename, a.content_type, a.data.read()) for a in mimeparts.every_reading(lambda: [raw], 1 << 20, 1 << 26, [])]
    assert old == [("invoice.zip", "application/zip", archive)]
    assert set(new) == set(old)
    assert hits(check, raw) == {}


def test_a_message_of_an_ordinary_boundary_is_parsed_once(check: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    readings = count_parses(monkeypatch)
    nested = (b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n"
              b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
              b"--inner--\r\n--outer\r\nContent-Type: application/octet-stream; name=\"evil.exe\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n" + wrapped(base64.b64encode(PE)) + b"--outer--\r\n")
    assert hits(check, nested)[BANNED].detail == "evil.exe: banned extension .exe"
    assert readings == ["client"]


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        ("boundary=B C", ["client", "library"]),  # variants B and "B C": each a reading's
        ('boundary="B" (comment)', ["client", "library", "both"]),  # '"B"' too: no reading's, followed by "both"
        ('boundary="a b"', ["client", "both"]),  # both read "a b"; "a" is a variant of neither
    ],
)
def test_a_message_with_differing_readings_is_parsed_once_a_reading(check: Any, monkeypatch: pytest.MonkeyPatch, parameter: str, expected: list[str]) -> None:
    readings = count_parses(monkeypatch)
    hits(check, message(parameter, b"B", wrapped(base64.b64encode(zipped({"a.txt": b"x"})))))
    assert readings == expected


def test_a_nested_multipart_read_otherwise_is_found_in_the_reading_it_splits() -> None:
    # The outer boundary is the same in both readings, the inner is not: one more parse, not more.
    inner = b"Content-Type: multipart/mixed; boundary=C D\r\n\r\n--C D\r\nContent-Type: application/octet-stream; name=\"evil.exe\"\r\n\r\nMZ\r\n--C D--\r\n"
    raw = b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n" + inner + b"--outer--\r\n"
    differing: set[mimeparts.Reading] = set()
    assert [a.filename for a in attachments([raw], reading="client", differing=differing)] == []
    assert differing == {"library"}
    assert [a.filename for a in mimeparts.every_reading(lambda: [raw], 1 << 20, 1 << 26, [])] == ["evil.exe"]


def test_a_structure_delimited_by_a_variant_of_no_reading_is_still_followed(check: Any) -> None:
    # boundary="B" (comment) up to its first blank is '"B"': followed before, as it still is (the "both" parse).
    raw = message('boundary="B" (comment)', b'"B"', wrapped(base64.b64encode(zipped({"evil.exe": PE}))))
    assert hits(check, raw)[BANNED].detail == "invoice.zip/evil.exe: banned extension .exe"


def test_the_zip_cut_by_the_other_reading_is_still_said_where_both_readings_are_parsed(check: Any) -> None:
    # The "both" parse (run for the '"B"' variant) still cuts the zip: its finding is joined, never the only one.
    _, body = smuggled(b'--"B" (comment)')
    found = hits(check, message('boundary="B" (comment)', b"B", body))
    assert found[BANNED].detail == "invoice.zip/evil.exe: banned extension .exe"
    assert UNREADABLE in found


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reading of each parse of a message from here on."""
    readings: list[str] = []
    real = mimeparts.attachments

    def counted(chunks: Iterable[bytes], *args: Any, **kwargs: Any) -> Iterator[mimeparts.Attachment]:
        readings.append(args[3] if len(args) > 3 else kwargs.get("reading", "both"))
        return real(chunks, *args, **kwargs)

    monkeypatch.setattr(mimeparts, "attachments", counted)  # the name every_reading calls
    return readings


# --- the text and links (mimetext) ------------------------------------------------------------
def text_message(parameter: str, delimiter: bytes, epilogue: bytes = b"") -> bytes:
    return (b"From: a@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; " + parameter.encode()
            + b"\r\n\r\n--" + delimiter + b"\r\nContent-Type: text/html\r\n\r\n<a href=\"http://evil.example.test/\">x</a> see\r\n--"
            + delimiter + b"--\r\n" + epilogue)


@pytest.mark.parametrize(("parameter", "client", "library"), SHAPES, ids=IDS)
@pytest.mark.parametrize("delimiting", ["client", "library"])
def test_a_line_of_the_other_reading_in_the_epilogue_does_not_hide_the_links(parameter: str, client: bytes, library: bytes, delimiting: str) -> None:
    # The parse took the stdlib's reading wherever its delimiter stood: one line of it in the epilogue hid
    # Thunderbird's parts, their text and links (found by review).
    delimiter, other = (client, library) if delimiting == "client" else (library, client)
    found = mimetext.extract(text_message(parameter, delimiter, b"--" + other + b"--\r\n"))
    assert found.uris == ["http://evil.example.test/"]
    assert found.text.count("see") == 1  # the other reading finds no part: nothing read twice


def test_an_ordinary_message_is_parsed_once_for_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    preferences: list[str] = []
    parsed = mimetext._parsed

    def counting(raw: bytes, prefer: Any) -> Any:
        preferences.append(prefer)
        return parsed(raw, prefer)

    monkeypatch.setattr(mimetext, "_parsed", counting)
    assert mimetext.extract(text_message('boundary="B"', b"B")).uris == ["http://evil.example.test/"]
    assert preferences == ["delimiting"]
    preferences.clear()
    assert mimetext.extract(text_message("boundary=B C", b"B")).uris == ["http://evil.example.test/"]
    assert preferences == ["delimiting", "client", "library"]


def test_each_reading_has_its_own_part_limit_for_links() -> None:
    # 300 parts in Thunderbird's reading used up one count shared with the stdlib's, whose link
    # at its 250th part was never read (found by review).
    client = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\nfiller\r\n" for _ in range(300)) + b"--B--\r\n"
    library = b"".join(b'--"B" (c)\r\nContent-Type: text/plain\r\n\r\n' + (b"https://listed.example/pay\r\n" if i == 250 else b"x\r\n")
                       for i in range(260)) + b'--"B" (c)--\r\n'
    raw = b'From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary="B" (c)\r\n\r\n' + client + library
    assert mimetext.extract(raw).uris == ["https://listed.example/pay"]


def test_a_part_both_readings_give_is_read_once() -> None:
    raw = (b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=OUT\r\n\r\n"
           b"--OUT\r\nContent-Type: text/plain\r\n\r\nshared paragraph\r\n"
           b'--OUT\r\nContent-Type: multipart/alternative; boundary="I" (c)\r\n\r\n--I\r\nContent-Type: text/plain\r\n\r\ninner\r\n--I--\r\n'
           b"--OUT--\r\n")
    assert mimetext.extract(raw).text == "shared paragraph\ninner"
