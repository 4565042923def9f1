"""URI block lists through the real Postfix, with the shipped lists answered by a local rbldnsd.

rbldnsd serves ``dbl.spamhaus.org`` as a domain list (``dnset``) and
``zen.spamhaus.org`` as an address list; unbound in front sends those zones
to it and answers NXDOMAIN for everything else, so the shipped SURBL and
URIBL zones are asked and find nothing.
"""

from __future__ import annotations

import base64
import smtplib
from typing import Callable, Iterator

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.dns import LocalDns
from tests.harness.outlookmsg import Tree, attachment, compound_file, compressed_rtf, msg_tree, unicode
from tests.harness.stack import Stack, row_for

pytestmark = pytest.mark.integration

LISTS = {
    "dbl.spamhaus.org": (
        "dnset",
        ":127.0.1.2:Spam domain\n"
        "listed-domain.test\n.listed-domain.test\n"
        "phish-domain.test :127.0.1.4:Phishing domain\n"
        "refused-domain.test :127.255.255.254:Query via public resolver\n"
        # Well known: never asked (skip_domains), so this listing must not count.
        "google.com\n",
    ),
    "zen.spamhaus.org": ("ip4set", ":127.0.0.2:SBL listed\n11.22.33.44\n11.22.33.55 :127.0.0.10:PBL listed\n"),
}
RULES = {
    "lists.toml": """
[[uribl]]
name = "DBL"
zone = "dbl.spamhaus.org"
score = 2.5
refused = ["127.255.255.*"]
codes = [
  { name = "SPAM", answers = ["127.0.1.2"], score = 3.0 },
  { name = "PHISH", answers = ["127.0.1.4"], score = 5.0, action = "reject" },
]
""",
}


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    server = LocalDns(tmp_path_factory.mktemp("dns"), [], LISTS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], local_dns: LocalDns) -> Stack:
    sections = with_sections(NO_CHECKS, {"dns": {"nameservers": [local_dns.nameserver], "timeout": 3.0}, "checks": {"uribl": {"enabled": True}}})
    return make_stack(sections, RULES)


def html(subject: str, markup: str) -> bytes:
    return message(subject, markup, headers={"Content-Type": "text/html; charset=utf-8"})


def test_link_to_a_dbl_listed_domain_is_scored_with_the_domain(stack: Stack) -> None:
    stack.send(html("dbl link", '<p>Cheap <a href="https://www.shop.listed-domain.test/buy?id=1">pills</a></p>'))
    [delivered] = stack.sink.wait(1, match=lambda m: "dbl link" in m.header("Subject"))
    row = row_for(stack, "dbl link")
    assert row["symbols"]["URIBL_DBL_SPAM"] == 3.0
    assert row["details"]["URIBL_DBL_SPAM"] == "listed-domain.test (127.0.1.2)"
    assert delivered.data


def test_bare_www_link_in_plain_text_is_looked_up_and_a_reject_code_names_the_domain(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("phish link", "Log in at www.login.phish-domain.test/account now.\r\n"))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    row = row_for(stack, "phish link")
    assert row["action"] == "reject" and "URIBL_DBL_PHISH" in row["symbols"]


@pytest.mark.parametrize(("subject", "raw"), [
    ("triple slash", html("triple slash", '<a href="https:///phish-domain.test/login">Log in</a>')),
    ("userinfo bracket", html("userinfo bracket", '<a href="https://bank.test]@phish-domain.test/login">Log in</a>')),
    ("cjk prefix", message("cjk prefix", "\u8bf7\u70b9\u51fbhttps://phish-domain.test/login\r\n")),
    # UTS #46 as browsers apply it (32nd review): a letter newer than IDNA2003's Unicode 3.2 (ₐ, U+2090) was left
    # unmapped, and an RTL label ending in a digit (RFC 5893) refused, so phish-domain.test was never looked up.
    ("subscript letter", html("subscript letter", '<a href="https://phish-dom\u2090in.test/login">Log in</a>')),
    ("rtl digit label", html("rtl digit label", '<a href="https://\u05e9\u05dc\u05d5\u05dd1.phish-domain.test/">x</a>')),
    ("html comment type", message("html comment type", '<a href="https://phish-domain.test/">x</a>\r\n',
                                  headers={"Content-Type": "text/html (HTML mail); charset=utf-8"})),
    # Thunderbird's reading (B) delimits the parts; a line of Python's reading in the epilogue steered the
    # parse to it, and the part with the link was never read (found by review).
    ("steered boundary", message("steered boundary", '--B\r\nContent-Type: text/html\r\n\r\n<a href="https://phish-domain.test/">x</a>\r\n'
                                 '--B--\r\n--"B" (comment)--\r\n', headers={"Content-Type": 'multipart/mixed; boundary="B" (comment)'})),
    # Thirty-eighth review: Thunderbird ends a written-out link at a bidi mark (the link was read with it, and its
    # host refused), and reads on over "(", "'" and "[" (the reader stopped there and read paypal.com only).
    ("bidi mark", message("bidi mark", "Sign in: https://phish-domain.test\u200e/login\r\n")),
    ("bidi mark html", html("bidi mark html", "<p>Sign in: https://phish-domain.test\u202e/login</p>")),
    ("paren userinfo", message("paren userinfo", "Sign in: http://paypal.com(secure)@phish-domain.test/login\r\n")),
    ("quote userinfo", message("quote userinfo", "Sign in: http://paypal.com'secure'@phish-domain.test/login\r\n")),
    ("bracket userinfo text", message("bracket userinfo text", "Sign in: http://[paypal.com]@phish-domain.test/login\r\n")),
    ("css escape", html("css escape", '<div style="background: url(&quot;https://\\70 hish-domain.test/bg.png&quot;)">x</div>')),
])
def test_a_link_a_client_opens_is_looked_up_however_it_is_written(stack: Stack, subject: str, raw: bytes) -> None:
    # Found by differential fuzzing against browsers' URL parser and Thunderbird's linking: each
    # of these links was never looked up, and the phishing domain's reject code never applied.
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    assert "URIBL_DBL_PHISH" in row_for(stack, subject)["symbols"]


CALENDAR = (
    "--B\r\nContent-Type: text/plain\r\n\r\nYou are invited.\r\n"
    "--B\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n"
    "DESCRIPTION:Join the call:\\nhttps://phish-dom\r\n ain.test/join\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n--B--\r\n"
)


@pytest.mark.parametrize(("subject", "raw"), [
    # Thirty-fifth review: a <title> (<textarea>…) holding a tag-like string hid what followed from the reader.
    ("title script", html("title script", '<title>x<script></title><p>Log in: <a href="https://phish-domain.test/login">here</a></p>')),
    ("title comment", html("title comment", '<title><!--</title><a href="https://phish-domain.test/login">here</a><!-- -->')),
    ("select title", html("select title", '<p>Invoice:</p><select><title></select><a href="https://phish-domain.test/login">View</a>')),
    # Text parts Thunderbird shows as text, and calendar invitations (a folded line), were never read.
    ("text x notice", message("text x notice", "Log in at https://phish-domain.test/login\r\n", headers={"Content-Type": "text/x-notice"})),
    ("calendar", message("calendar", CALENDAR, headers={"Content-Type": 'multipart/alternative; boundary="B"'})),
    # A redirector in skip_domains naming the listed domain, after 1,000 links to its own host.
    ("google redirect", html("google redirect", "".join(f'<a href="https://www.google.com/search?q={i}">{i}</a>' for i in range(1000))
                             + '<a href="https://www.google.com/url?q=https%3A%2F%2Fphish-domain.test%2Flogin">Log in</a>')),
])
def test_a_link_hidden_by_the_reader_s_own_limits_is_looked_up(stack: Stack, subject: str, raw: bytes) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    assert "URIBL_DBL_PHISH" in row_for(stack, subject)["symbols"]


@pytest.mark.parametrize(("subject", "markup"), [
    ("srcset", '<img srcset="https://cdn.ok.test/a.png 1x, https://phish-domain.test/b.png 2x">'),
    ("css url", '<div style="background: url(\'https://phish-domain.test/bg.png\')">x</div>'),
    ("css import", '<style>@import "https://phish-domain.test/s.css";</style><p>x</p>'),
    ("refresh", '<meta http-equiv="refresh" content="0; url=https://phish-domain.test/login">'),
    ("formaction", '<form><button formaction="https://phish-domain.test/login">Log in</button></form>'),
    ("svg link", '<svg><a xlink:href="https://phish-domain.test/login"><text>Log in</text></a></svg>'),
    ("base href", '<base href="https://phish-domain.test/"><a href="login">Log in</a>'),
    ("open style", '<p>Your account</p><style>body { background: url(https://phish-domain.test/bg.png) }'),
])
def test_a_link_only_in_a_srcset_css_refresh_form_button_svg_or_base_is_looked_up(stack: Stack, subject: str, markup: str) -> None:
    # The link reader read href, src, action and background only: a domain named only in these places was
    # never looked up, and the mail was delivered with no URI symbol.
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(html(subject, markup))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    assert "URIBL_DBL_PHISH" in row_for(stack, subject)["symbols"]


@pytest.mark.parametrize(("subject", "ctype", "name"), [
    ("html file", "application/octet-stream", "invoice.html"),
    ("svg file", "image/svg+xml", "scan.svg"),
    ("hta file", "application/hta", "update.hta"),
])
def test_a_link_in_an_html_or_svg_file_sent_as_another_type_is_looked_up(stack: Stack, subject: str, ctype: str, name: str) -> None:
    # A phishing page attached as application/octet-stream (or an SVG image) opens in the browser at a double
    # click; the link reader read text/html parts only, and its form's target was never looked up.
    page = base64.encodebytes(b'<svg xmlns="http://www.w3.org/2000/svg"><a href="https://phish-domain.test/login"><text>Open</text></a>'
                              b'<form action="https://phish-domain.test/post"></form></svg>').decode()
    body = (f"--B\r\nContent-Type: text/plain\r\n\r\nYour invoice is attached.\r\n"
            f"--B\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{page}--B--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message(subject, body, headers={"Content-Type": 'multipart/mixed; boundary="B"'}))
    assert info.value.smtp_code == 550
    assert "URIBL_DBL_PHISH" in row_for(stack, subject)["symbols"]


def test_a_link_after_five_hundred_text_parts_is_looked_up(stack: Stack) -> None:
    # The link reader stopped at 500 parts while the attachment check follows text parts to 2,000: 505
    # one-line parts hid the phishing link, delivered with no symbol (found by review).
    parts = "".join("--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(505))
    raw = message("link past parts", parts + '--B\r\nContent-Type: text/html\r\n\r\n<a href="https://phish-domain.test/">x</a>\r\n--B--\r\n',
                  headers={"Content-Type": "multipart/mixed; boundary=B"})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    assert "URIBL_DBL_PHISH" in row_for(stack, "link past parts")["symbols"]


def test_a_link_after_an_attachment_larger_than_the_link_reader_s_window_is_looked_up(stack: Stack) -> None:
    # The link reader was given the first 4 MB of the body: a 5 MB PDF before the HTML part hid its link,
    # and the message was delivered with no symbol (found in review).
    pdf = base64.encodebytes(b"%PDF-1.4\n" + bytes(range(256)) * 20_000).decode().replace("\n", "\r\n")
    body = ('--B\r\nContent-Type: application/pdf; name="statement.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + pdf
            + '--B\r\nContent-Type: text/html\r\n\r\n<a href="https://phish-domain.test/">Log in</a>\r\n--B--\r\n')
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("link past a large file", body, headers={"Content-Type": "multipart/mixed; boundary=B"}))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    symbols = row_for(stack, "link past a large file")["symbols"]
    assert "URIBL_DBL_PHISH" in symbols and "URIBL_UNREAD" not in symbols  # the PDF left out, the message read whole


def test_a_message_whose_links_were_not_all_read_says_so(stack: Stack) -> None:
    # 4.6 MB of plain text before the HTML alternative: past what the link reader takes (4 MiB of a message's text),
    # so the HTML part's link is not looked up; URIBL_UNREAD (score 0 unless scored) tells the administrator.
    text = "Nothing to see here, just a long newsletter line.\r\n" * 92_000
    body = ("--B\r\nContent-Type: text/plain\r\n\r\n" + text
            + '--B\r\nContent-Type: text/html\r\n\r\n<a href="https://listed-domain.test/">Read</a>\r\n--B--\r\n')
    stack.send(message("links not all read", body, headers={"Content-Type": "multipart/alternative; boundary=B"}))
    stack.sink.wait(1, match=lambda m: "links not all read" in " ".join(m.header("Subject")))  # delivered
    row = row_for(stack, "links not all read")
    assert row["action"] == "accept" and row["symbols"]["URIBL_UNREAD"] == 0.0, row["symbols"]
    assert row["details"]["URIBL_UNREAD"] == "not read: a large message's text past what the reader takes"


FORWARDED = b"From: x@example.org\r\nSubject: your account\r\nContent-Type: text/html\r\n\r\n<a href=\"https://phish-domain.test/\">Log in</a>\r\n"


@pytest.mark.parametrize(("subject", "part"), [
    # Exchange Online forwards as attachment in base64 (RFC 2046 forbids it): the parser leaves it encoded.
    ("forwarded base64", "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64"),
    ("forwarded eml file", 'Content-Type: application/octet-stream; name="Your account.eml"\r\nContent-Transfer-Encoding: base64'),
    ("saved web page", 'Content-Type: application/octet-stream; name="Your account.mht"\r\nContent-Transfer-Encoding: base64'),
])
def test_a_link_in_an_attached_message_is_looked_up(stack: Stack, subject: str, part: str) -> None:
    # The mail client opens the attached message and shows the link: it was never looked up (found in review).
    body = ("--B\r\nContent-Type: text/plain\r\n\r\nSee the attached.\r\n--B\r\n" + part + "\r\n\r\n"
            + base64.encodebytes(FORWARDED).decode().replace("\n", "\r\n") + "--B--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message(subject, body, headers={"Content-Type": "multipart/mixed; boundary=B"}))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    assert "URIBL_DBL_PHISH" in row_for(stack, subject)["symbols"]


def test_a_link_in_a_quoted_printable_attached_message_is_looked_up(stack: Stack) -> None:
    # Read as written, the soft line break inside the host hid the link (the parser does not decode such a part).
    forwarded = FORWARDED.replace(b'href="https://phish-', b'href=3D"https://phish-=\r\n')
    body = ("--B\r\nContent-Type: text/plain\r\n\r\nSee the attached.\r\n--B\r\nContent-Type: message/rfc822\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + forwarded.decode() + "--B--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("forwarded qp", body, headers={"Content-Type": "multipart/mixed; boundary=B"}))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"


def with_msg_file(subject: str, saved: Tree) -> bytes:
    """A message carrying the Outlook message file of *saved* (a tree for the test writer) as "Your account.msg"."""
    body = ("--B\r\nContent-Type: text/plain\r\n\r\nSee the attached.\r\n--B\r\nContent-Type: application/vnd.ms-outlook\r\n"
            'Content-Disposition: attachment; filename="Your account.msg"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + base64.encodebytes(compound_file(saved)).decode().replace("\n", "\r\n") + "--B--\r\n")
    return message(subject, body, headers={"Content-Type": "multipart/mixed; boundary=B"})


def test_a_link_in_an_attached_outlook_message_file_is_looked_up(stack: Stack) -> None:
    # Outlook shows a .msg attachment's body with its links: they were never looked up.
    saved = msg_tree("Your account")
    saved["__substg1.0_1013001F"] = unicode('<a href="https://phish-domain.test/">Log in</a>')
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(with_msg_file("forwarded msg file", saved))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"
    assert "URIBL_DBL_PHISH" in row_for(stack, "forwarded msg file")["symbols"]


def test_a_link_in_an_outlook_message_file_larger_than_the_link_reader_s_window_is_looked_up(stack: Stack) -> None:
    # A 5 MB photo in the .msg put its base64 past the link reader's window of 4 MB: its link was never looked up.
    saved = msg_tree("Your account", attachment("photo.jpg", bytes(range(256)) * 20_000))
    saved["__substg1.0_1013001F"] = unicode('<a href="https://phish-domain.test/">Log in</a>')
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(with_msg_file("large msg file", saved))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"


def test_a_link_only_in_a_msg_file_s_rtf_body_is_looked_up(stack: Stack) -> None:
    # Outlook keeps an HTML message's HTML only in its compressed RTF body: its link was never looked up.
    saved = msg_tree("Your account")
    saved["__substg1.0_1000001F"] = unicode("Your mailbox is full. Log in")
    saved["__substg1.0_10090102"] = compressed_rtf(b'{\\rtf1\\ansi\\fromhtml1 {\\*\\htmltag84 <a href="https://phish-domain\\\'2etest/">}'
                                                  b"\\htmlrtf {\\field{\\*\\fldinst{HYPERLINK x}}}\\htmlrtf0 Log in{\\*\\htmltag92 </a>}}")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(with_msg_file("msg rtf body", saved))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Message rejected: it links to phish-domain.test, listed in dbl.spamhaus.org"


def test_refused_answers_are_counted_apart_and_address_links_use_the_sbl(stack: Stack) -> None:
    body = "See http://refused-domain.test/ and http://11.22.33.44/x and http://11.22.33.55/y\r\n"
    stack.send(message("refused and ip", body))
    row = row_for(stack, "refused and ip")
    assert row["details"]["URIBL_REFUSED"] == "dbl.spamhaus.org"
    assert not [s for s in row["symbols"] if s.startswith("URIBL_DBL")]
    # 11.22.33.44 is in the SBL (a code ip_lists names); .55 only in the PBL, which is not asked for links.
    assert row["details"]["URIBL_IP_SPAMHAUS_SBL"] == "11.22.33.44 (127.0.0.2)"


def test_clean_and_well_known_links_pass_without_uribl_symbols(stack: Stack, local_dns: LocalDns) -> None:
    stack.send(html("clean links", '<a href="https://www.google.com/maps">map</a> <img src="https://cdn.clean-domain.test/logo.png">'))
    stack.sink.wait(1, match=lambda m: "clean links" in m.header("Subject"))
    row = row_for(stack, "clean links")
    assert row["action"] == "accept" and not [s for s in row["symbols"] if s.startswith("URIBL_")]
    log = local_dns.log()
    assert "clean-domain.test.dbl.spamhaus.org" in log  # asked, and not listed
    assert "google.com.dbl.spamhaus.org" not in log  # never asked
