"""The readable text and the links of a message, for body and URI rules.

A message is parsed leniently (the standard library's ``compat32`` policy,
which never raises on malformed MIME); its text parts (``text/plain``, ``text/html``, and the other
text/* types a mail client shows as text, a calendar file too: :func:`_reading_type`)
are decoded from base64 or quoted-printable and from their charset
(unknown charsets fall back to UTF-8 with replacement characters).  HTML is
rendered to plain text (tags, scripts and styles dropped) and its links collected
(``href``, ``src``, ``srcset``, CSS ``url()`` and ``@import``, a refresh, ``formaction``, ``xlink:href``, an
``<object>``'s ``data``, a ``poster``; relative ones resolved against ``<base href>`` too); plain text is searched
for ``http(s)://``, ``www.`` and ``ftp://`` links.  Links only ever embedded (an image's
``src``, a ``background``, a stylesheet's ``href``, CSS) are told from those a
reader follows (a link's ``href``, a form's ``action``, a refresh, a link in the
text).  Everything is bounded: at most *limit* characters of text are kept
(the text and HTML parts after those are still read for their links), the
first link of at most ``MAX_HOSTS`` hosts and ``MAX_URIS`` links in all
besides, at most ``MAX_LINKS_SCANNED`` distinct links and ``MAX_LINKS_LOOKED`` in all looked at, at most ``MAX_LINES``
lines of a message (fewer when they may nest deep: ``LINE_WORK``) and ``MAX_TAGS`` tags of a part are parsed.
An attached message (a message/rfc822 part in base64 or quoted-printable, a file named ``.eml``) is read as the message is, breadth
first, down to ``MAX_ATTACHED_DEPTH``, all of them within ``ATTACHED_SECONDS`` of CPU; of an Outlook message file
(``.msg``) its plain-text, HTML and RTF bodies are read (:mod:`milterd.content.rtf`), and its attached messages'.  A message of one text part with plain headers (most mail) is read
without the parse (:func:`single_part`), to the same result.
"""

from __future__ import annotations

import binascii
import email
import email.message
import email.policy
import email.utils
import heapq
import io
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from typing import Any, Callable, Container, Iterable, Iterator, cast

from olefile import OleFileIO

from ..domains import MAX_EMBEDDING, embedded_authorities, registrable
from ..text import capped_marks, without_invisible
from .filetypes import HEAD_SIZE, MESSAGE_TYPES, extensions, message_file, outlook_file, outlook_name, text_file_type
from .mimeparams import LenientMessage, Preference, client_container_type, first_token, reading, safely
from .mimeparams import decode_bytes as decode_bytes
from .mimeparts import SCRIPT_TEXT_TYPES, bare_cr, part_names, text_views
from .outlookmsg import Node, decoded_text, open_compound, read_stream
from .outlookmsg import attachments as msg_attachments
from .outlookmsg import bodies as msg_bodies
from .outlookmsg import package as msg_package
from .outlookmsg import rtf_body as msg_rtf
from .rtf import read as read_rtf

#: At most this many links are kept per message (and given by :func:`uris_in_text`, which stops reading
#: there), except that the first link of a host is always kept: links repeating a few hosts (a thousand
#: to a well-known one, which the URI lists skip) cannot crowd out another host.
MAX_URIS = 1000
#: At most the links of this many hosts are kept per message; of more, they are chosen by registrable
#: domain (``_Links._room``): every domain keeps a host before any keeps a second, IP addresses keep
#: their own share, and of a domain's hosts those that rank lowest by a hash salted per process are
#: kept, so neither the order of the links, nor their repetition, nor subdomains of a wildcard domain,
#: nor a sender trying variants offline decides which hosts are left out.
MAX_HOSTS = 1000
#: At most this many distinct links of a message are looked at (the scan of the text, the link attributes
#: of HTML), a few microseconds each: 100,000 made a message of 2.4 MB cost 0.4 s instead of 4 ms.
#: Links past them are not seen: padding to hide one takes 20,000 distinct links (300 KB and more).
#: A link met before is no new one: it counts towards ``MAX_LINKS_LOOKED`` only.
MAX_LINKS_SCANNED = 20_000
#: At most this many links of a message are looked at in all, repeats included: a repeat costs about
#: 1.5 µs (its scan; no host, rank or domain), so 4 MB of one short link repeated (600,000 of "www.ab")
#: stops here, in about the time 20,000 distinct hosts take.  Padding by repeats takes 50,000 links.
MAX_LINKS_LOOKED = 50_000
#: At most this many MIME parts are looked at (a message of 10,000 empty parts is an attack), as many as
#: the attachment check follows (mimeparts.MAX_SCANNED_PARTS, past which it answers ATTACH_MIME_LIMIT): a
#: link in a digest's 600th part is looked up.
MAX_PARTS = 2000
#: At most this many lines of a message go to the stdlib parser: it costs about 75 bytes of memory and
#: a microsecond or two a line (4 MB of empty lines took 150 MB and 0.8 s of a worker, for each such
#: message at once); links written in the rest are still found, as in plain text.
MAX_LINES = 200_000
#: At most this much work of the stdlib parser: lines handed to it times the multipart levels they may be
#: read in.  The parser checks every line against the boundary of each enclosing multipart (its EOF stack),
#: so 600 nested multiparts and 200,000 lines of "x" (634 KB) took 8-36 s of CPU.  A message whose first
#: MAX_LINES lines hold more than LINE_WORK // MAX_LINES (20) occurrences of "boundary" (any case: the
#: name of every boundary parameter, so an upper bound of the nesting) goes to the parser for
#: LINE_WORK // occurrences lines, never fewer than MIN_PARSED_LINES; the rest is read as past MAX_LINES
#: (its links found as in plain text).  Mail of a few multipart levels is parsed whole as before.
LINE_WORK = 4_000_000
#: Lines the parser is always given: a multipart level takes two lines at least (a boundary and a
#: Content-Type), so these many lines cost at most LINE_WORK // 2 checks whatever they nest.
MIN_PARSED_LINES = 2_000
#: Attached messages are read as a mail client opens them, text and links, down to this many levels: a
#: message/rfc822 (global, news) part in base64, which RFC 2046 forbids but Exchange Online sends (the parser
#: leaves it encoded), and a file named ``.eml``.
MAX_ATTACHED_DEPTH = 5
#: An attached message goes to the parser as the message does (:func:`_parser_input`), at most this many lines of it,
#: and all of them within this much CPU (measured before each parse, so the one that crosses it runs to its end;
#: past it, the rest are scanned for links as written and decoded): sixteen of 70 nested multiparts took 9 s, four
#: of 100,000 flat parts 11 s.
MAX_ATTACHED_LINES = MAX_LINES // 4
ATTACHED_SECONDS = 0.5
#: What base64 text is made of, line ends included (anything else: no base64).
_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
#: The transfer encodings of a message/* part that a mail client decodes before it reads the message.
_ENCODED_MESSAGE = frozenset({"base64", "quoted-printable"})
#: Most bytes of an Outlook message file's RTF body decompressed (each two compressed bytes may give seventeen).
MAX_RTF_BYTES = 1024 * 1024
#: The leaf parts' Content-Disposition and Content-Type fields of one message (its attached messages' too), up to
#: this many characters in all, are read for every name the attachment check reads
#: (:func:`~milterd.content.mimeparts.part_names`); the rest by the standard library.
MAX_NAME_FIELDS = 256 * 1024
#: At most this many tags of an HTML part are parsed: a tag costs the parser about 3 µs (4 MB of
#: "<b>" took 4 s of CPU); links written in the rest are still found, as in plain text.
MAX_TAGS = 50_000

#: A message larger than the link reader's window (:func:`extract_large`) may add this many times the text limit
#: of attached messages' bodies, encoded (12 MB at the default: an Outlook message file of about 9 MB, which a
#: photo makes of a one-line note), so that its links are read as a smaller one's; each parse of them is bounded
#: as any attached message's (MAX_ATTACHED_LINES, ATTACHED_SECONDS).
SAVED_ROOM = 12
#: A message larger than the link reader's window has its views read (:func:`extract_large`) while the thread has
#: spent less than this many CPU seconds on it: each view may cost what the window does (a view of each reading
#: of its boundaries: three, 10.7 s in all for a reviewer's message of one 4 MB tag in each; 5.7 s now).
LARGE_SECONDS = 2.0

# A scheme starts a link where no ASCII letter or digit stands before it.  Thunderbird
# (mozTXTToHTMLConv::FindURLStart, "freetext") scans back over ASCII letters, digits, "+", "-" and "."
# only, so "请点击https://a.b" and "Notice_https://a.b" are links to it (the \b here before refused
# them); "xhttp://a.b" is no http link to it, nor here.  After a "+", "-" or "." a link stays one as
# before (Thunderbird makes none there, other clients may): a link more is only a lookup more.
# A "www." starts one at a word boundary as before, as Thunderbird's "abbreviated" links start only
# at a "www." that begins the word ("_www.a.b", "请www.a.b" are none).
# A link goes on as Thunderbird's FindURLEnd reads one (:func:`_thunderbird_end`): up to a blank, one of <>"`{}, a
# bidi formatting character (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069: "https://evil.test<U+200E>/x"
# opens evil.test), a ")" or "]" that closes nothing opened, or a "[" anywhere but right after "//"; so
# "http://paypal.com(x)@evil.test/" is one link, to evil.test.  Links are also read as they were before, in a
# class without quotes, brackets and parentheses but with backticks and bidi marks (_URI_IN_TEXT): other clients
# may end them otherwise ("https://paypal.com<U+200E>@evil.test/" is evil.test to one that reads on).
_NOT_LINK = r"""\s<>"`{}\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"""
_OLDER_LINK = r"""[^\s<>"'()\[\]{}]"""  # the reading before (a backtick and a bidi mark in it, as some clients read them)
_URI_IN_TEXT = re.compile(rf"""(?i)(?:(?<!(?-i:[A-Za-z0-9]))(?:https?|ftp)://|\bwww\.){_OLDER_LINK}{{2,2000}}""")
_LINK_PREFIX = re.compile(r"(?i)(?:(?<!(?-i:[A-Za-z0-9]))(?:https?|ftp)://|\bwww\.)")
#: Thunderbird's link characters that end no link, by (a "(" seen, a "[" seen): a ")" goes on after a "(", a "]"
#: after a "[", a "[" only right after "//" (an IPv6 address's).
_THUNDERBIRD_RUN = {
    (paren, square): re.compile(rf"{run}*(?:(?<=//)\[{run}*)*")  # the loop unrolled: a run of the class is fast
    for paren in (False, True) for square in (False, True)
    for run in [rf"[^{_NOT_LINK}\[{'' if paren else ')'}{'' if square else chr(92) + ']'}]"]
}
_SCHEME_ENDS_S = frozenset("sS\u017f")  # what (?i) matches to s: the last letter of https
# Where a link can start: a prefix followed by two link characters, of Thunderbird's reading (two that end no
# link there: its link is at least two long; not "http://()", nor "http://[]", whose host no one takes) and of
# _URI_IN_TEXT's; "www." as written (only W lower-cases to w) and in lower-cased text (:func:`_www_start`).
# A "://" is searched for (a literal: fast), then what stands before it is checked in C: a scheme (the letters
# (?i) matches to it, ſ for s) with no ASCII letter or digit before it.
_TWO = rf"(?=(?:[^{_NOT_LINK}\[)\]]|(?<=//)\[){{2}})"
_AFTER_SCHEME = (
    r"(?:(?<=(?<![A-Za-z0-9])[hH][tT][tT][pP]://)|(?<=(?<![A-Za-z0-9])[hH][tT][tT][pP][sS\u017f]://)"
    r"|(?<=(?<![A-Za-z0-9])[fF][tT][pP]://))"
)


def _link_starts(two: str) -> tuple[re.Pattern[str], tuple[re.Pattern[str], re.Pattern[str]]]:
    """The patterns of where a link of one reading can start, *two* the lookahead of its two link characters: the
    "://" with its scheme before it, and "www." as written and in lower-cased text (:func:`_scan`)."""
    return re.compile(rf"://{two}{_AFTER_SCHEME}"), (re.compile(rf"[wW]{{3}}\.{two}"), re.compile(rf"www\.{two}"))


_SCHEME_END, _WWW = _link_starts(_TWO)
_SCHEME_END_OLDER, _WWW_OLDER = _link_starts(rf"(?={_OLDER_LINK}{{2}})")
_TRAILING = ".,;:!?-'"  # what Thunderbird drops from a link's end (FindURLEnd): written after it
# A link's host as far as bounding the links kept goes (the URI lists read it exactly): after a scheme
# and any slashes, or after two slashes; userinfo and case dropped.  "" for a link without one.
_HOST_KEY = re.compile(r"(?:[a-zA-Z][a-zA-Z0-9+.-]*:[/\\]*|[/\\]{2,})(?:[^/\\?#@]*@)?([^/\\?#]*)")
_HOST_SALT = int.from_bytes(os.urandom(8), "big")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n+")
_COMMENT_END = re.compile(r"--!?>")
#: The attributes of a start tag read for links (by :meth:`_HTMLText.handle_starttag`); of a tag with more than
#: ``MAX_URIS`` attributes, the first of each of these names.
_LINK_ATTRS = frozenset({
    "href", "src", "action", "background",  # a link, or a source, as written
    "formaction", "xlink:href", "poster",  # a button's form target, an SVG link, a video's still image
    "data",  # an <object>'s source (of that tag only)
    "srcset", "imagesrcset",  # an image's candidate sources: "URL [descriptor], URL [descriptor]" (a <link>'s too)
    "style",  # CSS: url(...) and @import
    "http-equiv", "content",  # <meta http-equiv="refresh" content="0; url=...">
    "attributename", "to", "values", "from",  # SVG's <set>/<animate> giving an <a> its href
})
#: The SVG elements that give their parent an attribute's value (``<a><set attributeName="href" to="…"/>``).
_SVG_ANIMATION = frozenset({"set", "animate"})
#: A link whose scheme is not one a browser opens itself but a handler that opens the link written inside
#: it (``microsoft-edge:https://…``, ``ms-word:ofe|u|https://…``, ``view-source:https://…``).
_INNER_SCHEME = re.compile(r"(?i)(?:https?|ftp|wss?):")
_INNER_SLASHES = re.compile(r"[/\\\\]{2}")
_OPENED_ITSELF = re.compile(r"(?i)\s*(?:https?|ftp|wss?|file|mailto|tel|sms|cid|data|javascript):|\s*[/\\]{2}")
#: Those of _LINK_ATTRS whose value is itself a link (the others are read by :func:`_attribute_links`).
_URL_ATTRS = frozenset({"href", "src", "action", "background", "formaction", "xlink:href", "poster"})
#: A CSS escape in a url() or string: a backslash, then up to six hex digits and one blank, or any one character.
_CSS_ESCAPED = r"(?>\\(?:[0-9a-fA-F]{1,6}(?:\r\n|[ \t\r\n\f])?|[\s\S]))"  # atomic: "\4141" is read one way only
#: A link in CSS: url(...) unquoted or quoted, and @import "..." (its escapes undone by :func:`_css_unescaped`).
_CSS_URL = re.compile(
    rf"""(?i)\burl\(\s*(?:"([^"\\]*+(?:{_CSS_ESCAPED}[^"\\]*+)*+)"|'([^'\\]*+(?:{_CSS_ESCAPED}[^'\\]*+)*+)'"""
    rf"""|([^\s"')\\]*+(?:{_CSS_ESCAPED}[^\s"')\\]*+)*+))"""
    rf"""|@import\s*(?:"([^"\\]*+(?:{_CSS_ESCAPED}[^"\\]*+)*+)"|'([^'\\]*+(?:{_CSS_ESCAPED}[^'\\]*+)*+)')"""
)  # escapes read whole (an escaped quote or blank ends nothing), then decoded by _css_unescaped
#: One image candidate of a srcset: leading blanks and commas, then its URL (HTML standard 4.8.4.3.10).
_SRCSET_URL = re.compile(r"[\s,]*(\S+)")
#: A candidate's descriptors, up to and with the comma that ends them (one in parentheses does not).
_SRCSET_DESCRIPTORS = re.compile(r"(?:[^,(]+|\([^)]*\)?)*,?")
#: A refresh's content: the delay, a ";" or ",", then the URL, optionally after "url=" (HTML standard 4.2.5.3).
_REFRESH = re.compile(r"(?is)\s*[0-9.]*\s*[;,]?\s*(?:url\s*=\s*)?(.*)")
#: A link with a scheme, or one starting "//": not relative to a document's <base href>.
_ABSOLUTE = re.compile(r"\s*(?:[a-zA-Z][a-zA-Z0-9+.-]*:|[/\\]{2})")
# CPython 3.11.7's patterns of a start tag's name and of one attribute, which _HTMLText.parse_starttag reads
# with whatever Python runs milterd (Debian 12's 3.11.2 has newer ones since the 2025 security fixes).
_TAG_NAME = re.compile(r"([a-zA-Z][^\t\n\r\f />\x00]*)(?:\s|/(?!>))*")
_ATTRIBUTE = re.compile(r"""((?<=['"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|"[^"]*"|(?!['"])[^>\s]*))?(?:\s|/(?!>))*""")
#: Where the stdlib's start tag is unterminated when its attributes stop there (a "=" after a quote that never closes).
_UNTERMINATED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=/")
#: A "<" that starts no tag, end tag, comment, declaration or processing instruction: text to the parser
#: (the HTML standard's tokenizer and the stdlib's), but a step of its own there, a microsecond or two each.
_TEXT_LT = re.compile(r"<(?![a-zA-Z/!?])")
#: Characters that may stand for such a "<" while the parser reads the markup (one the markup does not hold).
_MARKS = tuple(chr(code) for code in range(0xE000, 0xE040))

#: A Content-Type that names no file: text/SUBTYPE with at most a charset (no comment, no RFC 2231 form).
_PLAIN_TEXT_TYPE = re.compile(
    r"\s*(text/[A-Za-z0-9.+-]+)\s*(?:;\s*charset\s*=\s*(?:\"([A-Za-z0-9_.:-]*)\"|([A-Za-z0-9_.:-]*))\s*)?;?\s*",
    re.ASCII | re.IGNORECASE,
)
# Line breaks a header section may not hold outside a CRLF: CR and LF (where the stdlib parser splits
# lines), and the others of str.splitlines, which some Python versions' parser split at too.
_LINE_BREAKS = b"\r\n\x0b\x0c\x1c\x1d\x1e"
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")  # the stdlib parser's headerRE, less "From " and empty names
_NOT_A_FIELD_LINE = re.compile(rb"\n(?![ \t]|[\x21-\x39\x3b-\x7e]+:)")
# A base64 Content-Transfer-Encoding field (folded too), the blank line ending its header, a Content-Type in that
# header of no text (nor message), and what quoted-printable text holds.
_BASE64_FIELD = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*(?:\r?\n[ \t]+)*base64\b")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_NOT_TEXT_TYPE = re.compile(rb"(?im)^content-type:[ \t]*(?:\r?\n[ \t]+)*(?!(?:text|message)/)[!-~]")
_QUOTED_PRINTABLE = re.compile(rb"=(?:[0-9A-Fa-f]{2}|\r?\n)")
# A field's value runs up to (not into) the CRLF before the next line that does not start with a blank.
_MIME_FIELD = re.compile(rb"\n(content-(?:type|transfer-encoding|disposition)):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")


@dataclass
class MessageText:
    """The decoded text of a message and the links found in it."""

    text: str = ""
    uris: list[str] = field(default_factory=list)
    #: Those of ``uris`` found only as an embedded source (``<img src>``, ``background``, ``<link href>``):
    #: loaded by the mail client, never followed by the reader as the others are.
    embedded: set[str] = field(default_factory=set)
    truncated: bool = False
    error: str = ""
    #: Why some of the message was not read for links (its bounds: :data:`UNREAD_REASONS`), or "" when all of it was:
    #: unlike ``truncated``, text past the text budget whose links were read is not counted.
    unread: str = ""


#: What :attr:`MessageText.unread` says, by bound.
UNREAD_REASONS = {
    "links": "more links or hosts than the reader takes",
    "text": "more text than the reader takes",
    "parts": "more MIME parts or nesting than the reader takes",
    "written": "text past the parser's bounds, read only for links written out",
    "time": "its attached messages took the reader's time",
    "outlook": "an Outlook message file it could not read whole",
    "large": "a large message's text past what the reader takes",
    "error": "the reader failed on it",
}


def extract(raw: bytes, limit: int = 1024 * 1024) -> MessageText:
    """The text parts of *raw* (a whole RFC 5322 message) and their links, those of its attached messages too.

    Never raises: a message that cannot be parsed gives what was found
    before the problem and ``error`` says what went wrong.
    """
    reader = _Reader(limit)
    try:
        single = single_part(raw) if limit > 0 else None
        if single is not None:
            ctype, body = single
            ctype = _reading_type(ctype, ())
            if ctype:
                reader.size = _add_text(reader.result, reader.found, reader.texts, ctype, body, limit)
        else:
            reader.read(raw)
    except Exception as exc:  # noqa: BLE001 - malformed input must give "no hit", never a crash
        reader.result.error = f"{exc.__class__.__name__}: {exc}"[:200]
        reader.result.unread = reader.result.unread or "error"
    result = reader.result
    result.text = "\n".join(reader.texts)
    result.uris, result.embedded = reader.found.uris(), reader.found.embedded()
    # found.cut is of links only (MAX_LINKS_*, an HTML part past MAX_TAGS, whose text is read): the text is whole.
    if reader.found.full:
        result.unread = result.unread or "links"
    elif reader.found.unparsed:  # "https&#58;//" or a base64 part two encodings deep is no link written out
        result.unread = result.unread or "written"
    return result


def extract_large(window: bytes, source: Callable[[], Iterable[bytes]], room: int, limit: int = 1024 * 1024) -> MessageText:
    """:func:`extract` of a message too large to give whole (*window*: its first *room* bytes; *source* gives its
    chunks, each time it is called): of *window*, and of its first *room* bytes once the bodies of its parts with no
    text (an image, a PDF, an archive) are left out, besides up to SAVED_ROOM × *limit* bytes of attached messages'
    bodies (:func:`~milterd.content.mimeparts.text_views`, a view of each reading of its boundaries), joined."""
    # The window is read too, so that no link it holds is lost where a view reads the structure otherwise than the
    # parser (each view keeps only what every reader takes for no text, but the ways to write MIME are many).
    started = _thread_seconds()
    results, read = [extract(window, limit)], {hash(window): 0}
    # The window is only the message's start: the message is read whole where every view is whole (none cut) and read.
    cut_views = False
    try:
        for view, cut in text_views(lambda: _reading(source), room, SAVED_ROOM * limit):
            cut_views = cut_views or cut
            key = hash(view)
            if key in read:  # a view two readings give, or the window itself (nothing left out)
                results[read[key]].truncated |= cut
                continue
            if _thread_seconds() - started > LARGE_SECONDS:  # each view may cost what the window did
                results.append(MessageText(truncated=True, unread="large"))
                break
            read[key] = len(results)
            found = extract(view, limit)
            found.truncated = found.truncated or cut
            results.append(found)
    except _SourceError as failed:
        raise failed.error from None
    except Exception as exc:  # noqa: BLE001 - as extract: what was found before the problem, and the error said
        results.append(MessageText(truncated=True, error=f"{exc.__class__.__name__}: {exc}"[:200], unread="error"))
    joined = _joined(results, limit)
    # Not the window's own reasons: it is cut anywhere (a .msg it holds a part of cannot be opened).
    reasons = ("large" if cut_views else "", *(found.unread for found in results[1:]))
    joined.unread = next((reason for reason in reasons if reason), "")
    return joined


class _SourceError(Exception):
    """What reading the message raised (the spool unreadable), carried past the views' own failures."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _reading(source: Callable[[], Iterable[bytes]]) -> Iterator[bytes]:
    """The chunks *source* gives, what reading them raises carried as :class:`_SourceError`."""
    try:
        yield from source()
    except Exception as exc:  # noqa: BLE001 - re-raised as it was by extract_large
        raise _SourceError(exc) from exc


def _joined(results: list[MessageText], limit: int) -> MessageText:
    """One MessageText of a large message's window (the first of *results*) and views: the views' texts (the
    window's when they have none; *limit* characters in all), every link (embedded only where every reading finds
    it so), truncated when any is, the first error."""
    if len(results) == 1:
        return results[0]
    # The window's text (the first result's) only when no view gave any: it is most often the start of a view's,
    # cut anywhere (within "&amp;" too, where it is no longer a part of the view's).
    texts = [found.text for found in results[1:] if found.text] or [results[0].text]
    text = "\n".join(dict.fromkeys(texts))
    uris = list(dict.fromkeys(uri for found in results for uri in found.uris))
    followed = {uri for found in results for uri in found.uris if uri not in found.embedded}
    return MessageText(text[:limit], uris, {uri for uri in uris if uri not in followed},
                       len(text) > limit or any(found.truncated for found in results),
                       next((found.error for found in results if found.error), ""))


class _Reader:
    """One :func:`extract`: the text and links found so far, and the bounds its message and attached messages share."""

    def __init__(self, limit: int) -> None:
        self.result = MessageText()
        self.texts: list[str] = []
        self.found = _Links()
        self.limit = limit
        self.size = 0
        # Past the text budget the parts are still read for their links, up to this many characters more: the
        # envelope hands extract() at most 4 x limit bytes of body (Envelope.text), and a part decodes to no more
        # characters than its bytes, so this is the message the worker already holds (MAX_LINKS_SCANNED and MAX_LINKS_LOOKED bound the work).
        self.link_room = 4 * limit
        self.tag_room = MAX_TAGS  # tags of those parts parsed in all (one part's worth); the links of the others are scanned
        #: The attached messages to read, with their depth and whether each is an Outlook message file, shallowest
        #: first (a message found again deeper is not read twice).
        self.queue: deque[tuple[bytes, int, bool]] = deque()
        self.queued: set[int] = set()  # by their bytes: two readings, or two messages, give one again
        #: The CPU seconds the attached messages may still take to parse, all of them together.
        self.attached_seconds = ATTACHED_SECONDS
        #: Characters of MIME fields left to read for every name a part gives (:meth:`_names`).
        self.name_room = MAX_NAME_FIELDS

    def unread(self, reason: str) -> None:
        """Say why some of the message is not read for links (a key of UNREAD_REASONS; the first one given stays)."""
        self.result.truncated = True
        self.result.unread = self.result.unread or reason

    def read(self, raw: bytes) -> None:
        """Read the message *raw*, then its attached messages, breadth first, within ATTACHED_SECONDS."""
        self.message(raw, 0)
        while self.queue:
            inner, depth, outlook = self.queue.popleft()
            if self.attached_seconds <= 0:
                self.unread("time")
                if not outlook:  # a Compound File's text is UTF-16 in sectors: nothing to scan as written
                    _scan_unparsed(self.found, inner)
                continue
            started = _thread_seconds()
            try:
                if outlook:
                    self.outlook(inner, depth)
                else:
                    self.message(inner, depth)
            finally:
                self.attached_seconds -= _thread_seconds() - started

    def message(self, raw: bytes, depth: int) -> None:
        """Read the message *raw* (*depth* attached messages down): its text parts and what the parser was not given
        scanned for links; its attached messages are queued."""
        # An attached message is given to the parser as the message is, fewer lines at most: flat parts cost
        # about 10 µs each to build, and 4 MB of them in a few attached messages took 11 s.
        head, rest = _parser_input(raw, MAX_LINES if depth == 0 else MAX_ATTACHED_LINES)
        walks, cut = _parts(head)
        self.result.truncated = self.result.truncated or cut or bool(rest)
        if cut:  # the half past a nesting too deep to parse is not read
            self.unread("parts")
        elif rest:
            self.unread("written")
        # Parts both readings give are read once (each reading has its own MAX_PARTS).
        read: set[int] | None = set() if len(walks) > 1 else None
        lasts: list[email.message.Message] = []  # each walk's last part: the one the line bound cut, if any
        for part in _first_parts(walks, self.result, lasts):
            if self.link_room <= 0:
                self.unread("text")
                break
            names = self._names(part) if not part.is_multipart() else []
            inner = _attached_message(part, names)
            outlook = inner is None and (inner := _outlook_message(part, names)) is not None
            if inner is not None:
                if depth >= MAX_ATTACHED_DEPTH:
                    self.unread("parts")
                    if not outlook:
                        _scan_unparsed(self.found, inner)  # not opened: its links as written, and decoded
                else:
                    self._enqueue(inner, depth + 1, outlook)
                    written = _written_message(part)
                    if written is not None:  # labelled base64 but written out: read as written too
                        self._enqueue(written, depth + 1, False)
                if part.is_multipart():
                    continue
            if not part.is_multipart():
                self._part(part, read, names)  # a text part named .eml is read as text too: a client may show either
        if rest:
            # The part the line bound cut goes on in the rest: its base64 text there has no field before it.
            encodings = {_text_encoding(last) for last in lasts}
            cut_part = b""
            if "base64" in encodings:
                cut_part = head[head.rfind(b"\n--") + 1:]  # from its delimiter line: its body is decoded whole
            elif "quoted-printable" in encodings:
                cut_part = head[head.rfind(b"\n", 0, len(head) - 1) + 1:]  # its last line: a soft break joins it to the rest
            _scan_unparsed(self.found, rest, cut_part, cut_base64="base64" in encodings)

    def outlook(self, data: bytes, depth: int) -> None:
        """Read the Outlook message file *data* (*depth* attached messages down): its text bodies and its attached
        messages' (Outlook shows them), down to MAX_ATTACHED_DEPTH; its saved messages (``.eml``) are queued."""
        try:
            ole, root = open_compound(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - olefile's errors on a damaged or hostile file: its text is not read
            self.unread("outlook")
            return
        # Checked as it goes: one file may hold thousands of attachments, each with names to read.
        deadline = _thread_seconds() + self.attached_seconds
        try:
            storages = deque([(root, depth)])
            while storages:
                storage, level = storages.popleft()
                if _thread_seconds() > deadline:
                    self.unread("time")
                    return
                texts, skipped = msg_bodies(ole, storage, self.link_room)
                if skipped:
                    self.unread("text")
                for ctype, text in texts:
                    self._text(ctype, text, None)
                self._rtf(ole, storage, text=not texts)
                for attachment in msg_attachments(ole, storage):
                    if _thread_seconds() > deadline:
                        self.unread("time")
                        return
                    if attachment.message is not None:
                        if level >= MAX_ATTACHED_DEPTH:
                            self.unread("outlook")
                        else:
                            storages.append((attachment.message, level + 1))
                    for content in (attachment.data, attachment.package):
                        if content is not None:
                            self._saved_message(ole, content, content is attachment.package, attachment.names, level + 1)
                    ctype = _reading_type(attachment.mime_type, attachment.names)
                    if attachment.data is not None and ctype:  # an HTML page or a text file: a double click shows it
                        if attachment.data.size > self.link_room:
                            self.unread("text")
                        else:
                            self._text(ctype, decoded_text(read_stream(ole, attachment.data)), None)
        except Exception:  # noqa: BLE001 - a defect olefile meets part way: what was read stays
            self.unread("outlook")
        finally:
            ole.close()

    def _saved_message(self, ole: OleFileIO, content: Node, packaged: bool, names: list[str], depth: int) -> None:
        """Queue the attachment *content* of a .msg file (a data stream, or a Packager object's stream when *packaged*)
        when it is a saved message (``.eml``) or another .msg file, by its names or the packaged file's."""
        if not packaged and not (message_file(names) or outlook_name(names)):
            return  # most attachments: not read
        if depth > MAX_ATTACHED_DEPTH or content.size > self.link_room:
            self.unread("outlook" if depth > MAX_ATTACHED_DEPTH else "text")
            return
        data = read_stream(ole, content)
        if packaged:
            try:
                packaged_names, data = msg_package(data)
            except ValueError:
                return  # the attachment check holds it (a limit)
            names = [*packaged_names, *names]
        outlook = outlook_file(names, data[:HEAD_SIZE])
        if outlook or message_file(names):
            self._enqueue(data, depth, outlook)

    def _rtf(self, ole: OleFileIO, storage: Node, text: bool) -> None:
        """Read a .msg file's RTF body: the HTML it carries (``\\fromhtml1``, as Outlook keeps an HTML message) as
        an HTML body, else its text as plain text (*text*: for its text too, when the file has no other body; else
        only for its links), and the targets of its HYPERLINK fields."""
        try:
            rtf, whole = msg_rtf(ole, storage, self.link_room, min(self.link_room, MAX_RTF_BYTES))
        except ValueError:  # an unknown compression, a header cut short: what else the message holds is still read
            self.unread("outlook")
            return
        if not whole:  # read as far as it was decompressed
            self.unread("text")
        if not rtf:
            return
        shown = read_rtf(rtf)
        if not shown.whole:
            self.unread("text")
        ctype = "text/html" if shown.html else "text/plain"
        if text:
            self._text(ctype, shown.text, None)
        else:
            _add_links(self.found, ctype, shown.text[:self.link_room])
        for target in shown.targets:
            self.found.add(target if "://" in target or target.lower().startswith("mailto:") else f"http://{target}")

    def _names(self, part: email.message.Message) -> list[str]:
        """The file names a leaf part gives, every one the attachment check judges (encoded-words, duplicates, a
        field the standard library cannot read): a saved message under any of them is opened by some client.  The
        fields of one message's parts are read so up to MAX_NAME_FIELDS characters in all (1,000 parts of 250
        encoded-words each took 6 s), the rest by the standard library alone."""
        fields = [str(value) for field in ("content-disposition", "content-type") for value in part.get_all(field, [])]
        size = sum(len(value) for value in fields)
        if size <= self.name_room:
            self.name_room -= size
            return safely(lambda: part_names(part), list)
        self.unread("parts")  # a name the standard library leaves encoded may hide a saved message
        names = (safely(part.get_filename, lambda: None), safely(lambda: part.get_param("name"), lambda: None))
        # An RFC 2231 value comes as (charset, language, text): its text is enough to tell the extension.
        return [str(name[2]) if isinstance(name, tuple) else name for name in names if isinstance(name, str) or (isinstance(name, tuple) and len(name) == 3)]

    def _enqueue(self, inner: bytes, depth: int, outlook: bool) -> None:
        if hash(inner) not in self.queued:
            self.queued.add(hash(inner))
            self.queue.append((inner, depth, outlook))

    def _part(self, part: email.message.Message, read: set[int] | None, names: list[str]) -> None:
        """Read a leaf part called *names*: its text (up to the text budget) and links, when it is text a mail
        client shows (:func:`_reading_type`)."""
        ctype = _reading_type(content_type(part), names)
        if ctype:
            self._text(ctype, decode_part(part), read)

    def _text(self, ctype: str, text: str, read: set[int] | None) -> None:
        """Read a body of a type :func:`_reading_type` gives: its text (up to the text budget) and links (*read*: those read already)."""
        if read is not None:
            key = hash((ctype, text))  # what is read, not the payload: base64 and 7-bit copies differ
            if key in read:
                return
            read.add(key)
        if self.size < self.limit:
            self.size += _add_text(self.result, self.found, self.texts, ctype, text, self.limit - self.size)
            return
        # The text budget spent: the part's links only (a first part of 1 MiB must not hide them).
        self.result.truncated = True
        if len(text) > self.link_room:
            self.unread("text")
        body = text[:self.link_room]
        self.link_room -= len(body)
        tags = body.count("<") if ctype == "text/html" else 0
        if 0 < tags <= self.tag_room:
            self.tag_room -= tags
            _html_parts(body, self.found)
        else:
            self.found.unparsed = self.found.unparsed or tags > 0
            self.found.scan(_shown_text(ctype, body))  # unparsed: an href is the link written out (as past MAX_TAGS)


def _scan_unparsed(found: "_Links", raw: bytes, cut: bytes = b"", cut_base64: bool = False) -> None:
    """Add the links of message text the parser was not given, in the order of the text: its base64 text bodies
    decoded (not a PDF's or an image's), the text between them quoted-printable decoded and as written
    (:func:`_scan_written`).  *cut*: the end of the text part the line bound cut, which goes on in *raw*: from its
    delimiter line when *cut_base64* (its body is decoded whole), else its last line (a quoted-printable soft break
    there joins it to the rest).  Linear: each search starts past the last, and the decoders are C.

    A decoy attached message that spent the CPU budget hid the link of the next one's base64 HTML part: the
    text left unparsed is read as a mail client would show it, not only as written."""
    at = 0
    if cut:
        at = _body_end(raw, 0)
        if cut_base64:
            _scan_body(found, cut + raw[:at], 0)
        else:
            _scan_written(found, cut + raw[:at])
    while field := _BASE64_FIELD.search(raw, at):
        _scan_written(found, raw[at:field.start()])
        at = _scan_body(found, raw, field.start(), at)
    _scan_written(found, raw[at:])


def _scan_body(found: "_Links", raw: bytes, field: int, header: int = 0) -> int:
    """Add the links of the base64 body whose Content-Transfer-Encoding field is at *field* of *raw* (its header
    starting past *header*), decoded when its type is text; where the body ends."""
    blank = _BLANK_LINE.search(raw, field)
    if blank is None:
        _scan_written(found, raw[field:])
        return len(raw)
    end = _body_end(raw, blank.end())
    start = max(raw.rfind(b"\n\n", header, field), raw.rfind(b"\n\r\n", header, field), raw.rfind(b"\n--", header, field), header)
    _scan_written(found, raw[field:blank.end()])
    if not _NOT_TEXT_TYPE.search(raw, start, blank.end()):  # a PDF's or an image's links are no mail client's
        _scan_base64(found, raw[blank.end():end])
    return end


def _scan_written(found: "_Links", raw: bytes) -> None:
    """Add the links of *raw* quoted-printable decoded (when it may be), then as written (those read decoded not counted again)."""
    if not raw:
        return
    if not _QUOTED_PRINTABLE.search(raw):
        found.scan(raw.decode("latin-1"))
        return
    # Decoded first, in the order of the text (a link of a quoted-printable part is not left behind the next
    # part's links); then as written, what decoding changed (a link broken by a soft line break is none).
    decoded: set[str] = set()
    found.scan(binascii.a2b_qp(raw).decode("latin-1"), seen=decoded)
    found.scan(raw.decode("latin-1"), skip=_Unless(decoded))


class _Unless:
    """The links to pass over in a quoted-printable text read as written: those read decoded, and those a soft line break cut."""

    def __init__(self, decoded: set[str]) -> None:
        self.decoded = decoded

    def __contains__(self, uri: object) -> bool:
        return uri in self.decoded or (isinstance(uri, str) and uri.endswith("="))


def _text_encoding(part: email.message.Message) -> str:
    """The transfer encoding of *part* when it is a leaf of text (or a message), else ``""``."""
    if part.is_multipart() or not content_type(part).startswith(("text/", "message/")):
        return ""
    return _transfer_encoding(part)


def _transfer_encoding(part: email.message.Message) -> str:
    """The transfer encoding *part* declares (its first token, lower-cased), ``""`` for none."""
    return first_token(str(part.get("Content-Transfer-Encoding", ""))).lower()


def _body_end(raw: bytes, start: int) -> int:
    """Where a body of *raw* from *start* ends: at the next line starting ``--`` or base64 Content-Transfer-Encoding field."""
    field = _BASE64_FIELD.search(raw, start)
    end = field.start() if field else len(raw)
    delimiter = raw.find(b"\n--", start, end)  # no further than the field: each byte is searched a few times at most
    return end if delimiter < 0 else delimiter


def _scan_base64(found: "_Links", body: bytes) -> None:
    """Add the links of *body* base64-decoded (what is no base64 skipped, as mail clients skip it)."""
    try:
        found.scan(binascii.a2b_base64(body).decode("latin-1"))
    except binascii.Error:
        pass


def _thread_seconds() -> float:
    """The CPU seconds the calling thread has used (the attached messages' parses are measured, not estimated:
    padding with the word "boundary" made an estimate cut one to a few lines)."""
    return time.thread_time()


def _first_lines(raw: bytes, count: int) -> tuple[bytes, bytes]:
    """*raw* cut after its *count*-th line, and the rest (empty when it has no more lines).  A line ends
    where the stdlib parser ends one: at a CRLF, a CR or an LF (4 MB of bare CRs are two million lines to it)."""
    if _line_ends(raw, len(raw)) <= count:
        return raw, b""
    low, high = 0, len(raw)  # the shortest head holding count line ends: counted in C, not a step per line
    while low < high:
        middle = (low + high) // 2
        if _line_ends(raw, middle) < count:
            low = middle + 1
        else:
            high = middle
    if raw[low - 1:low + 1] == b"\r\n":
        low += 1  # the head ended inside a CRLF
    return raw[:low], raw[low:]


def _parser_input(raw: bytes, most: int = MAX_LINES) -> tuple[bytes, bytes]:
    """What of *raw* goes to the stdlib parser and the rest (empty when it all goes): its first
    *most* lines, or fewer where they may nest deep enough to cost more than LINE_WORK."""
    head, rest = _first_lines(raw, most)
    lines = _line_ends(head, len(head))
    if lines <= MIN_PARSED_LINES:
        return head, rest
    budget = max(LINE_WORK // max(1, head.lower().count(b"boundary")), MIN_PARSED_LINES)
    if lines <= budget:
        return head, rest
    head, _ = _first_lines(head, budget)
    return head, raw[len(head):]


def _line_ends(raw: bytes, end: int) -> int:
    """How many line ends (CRLF, CR, LF) ``raw[:end]`` holds."""
    return raw.count(b"\n", 0, end) + raw.count(b"\r", 0, end) - raw.count(b"\r\n", 0, end)


def _first_parts(walks: list[Iterator[email.message.Message]], result: MessageText,
                 lasts: list[email.message.Message] | None = None) -> Iterator[email.message.Message]:
    """The first MAX_PARTS parts of each walk, one walk after the other; ``result.truncated`` (and ``unread``) set where a walk has more;
    each walk's last part given added to *lasts*, when given."""
    for walk in walks:
        last = None
        for count, part in enumerate(walk):
            if count >= MAX_PARTS:
                result.truncated = True
                result.unread = result.unread or "parts"
                break
            last = part
            yield part
        if lasts is not None and last is not None:
            lasts.append(last)


def _parts(raw: bytes) -> tuple[list[Iterator[email.message.Message]], bool]:
    """The parts of *raw* as each reading gives them, depth first, and whether it had to be cut (:func:`_parsed`).

    Where a multipart's boundary reads otherwise to Thunderbird than to the stdlib, the parts of the
    parse in Thunderbird's reading and those in the stdlib's: a line of one reading put in the
    epilogue must not steer the parse away from the parts (and links) a client shows.  Ordinary mail
    is parsed once.
    """
    message, cut, differing = _parsed(raw, "delimiting")
    if not differing:
        return [_walk(message)], cut
    client, client_cut, _ = _parsed(raw, "client")
    library, library_cut, _ = _parsed(raw, "library")
    return [_walk(client), _walk(library)], client_cut or library_cut


def _parsed(raw: bytes, prefer: Preference) -> tuple[email.message.Message, bool, bool]:
    """*raw* parsed (a boundary read two ways as *prefer* says), whether it had to be cut, and whether a
    boundary read two ways: the parser recurses once a multipart level (a thousand levels raise
    RecursionError), so a message nested too deep is halved until it parses, and the parts before the
    nesting are read (the whole parse failing would hide them)."""
    # LenientMessage (reading): parts whose parameters never raise (the parser asks a multipart for its boundary:
    # x*0="a"; x*="b" beside it raised TypeError and hid every part).
    cut = False
    while True:
        factory = cast("type[LenientMessage]", type("TextSourceMessage", (_EncodedMessagesKept, reading(raw, prefer)), {}))
        try:
            return email.message_from_bytes(raw, factory, policy=email.policy.compat32), cut, factory.differing
        except RecursionError:
            if len(raw) < 2:
                raise
            raw, cut = raw[: len(raw) // 2], True


def _walk(message: email.message.Message) -> Iterator[email.message.Message]:
    """``message.walk()`` without its recursion (a generator a level deep): the parts, depth first (an encoded
    attached message is a leaf: :class:`_EncodedMessagesKept`)."""
    stack = [message]
    while stack:
        part = stack.pop()
        yield part
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            stack.extend(sub for sub in reversed(payload) if isinstance(sub, email.message.Message))


class _EncodedMessagesKept(email.message.Message):
    """A part of :func:`extract`'s parse: a message/* part in base64 or quoted-printable is no message to the parser,
    which would parse its encoded text as one (a soft line break in a long header put the rest of the header, its
    Content-Type too, in the body), but a leaf whose encoded text :func:`_attached_message` decodes."""

    def get_content_type(self) -> str:
        """The stdlib's, but a type Thunderbird reads as a multipart or an attached message
        (:func:`~milterd.content.mimeparams.client_content_type`: ``x?multipart/alternative``) is that: the parser
        splits it as one, so the HTML it shows is read (as the attachment walk follows it)."""
        declared = self.get("content-type")
        return (client_container_type(str(declared)) if declared is not None else "") or super().get_content_type()

    def get_content_maintype(self) -> str:
        maintype = super().get_content_maintype()
        if maintype == "message" and _encoded_message(self) is not None:
            return "application"
        return maintype


def _encoded_message(part: email.message.Message) -> str | None:
    """The encoded text of a message part (rfc822, global, news: :data:`MESSAGE_TYPES`; the other message/* types
    the parser reads as before) in base64 or quoted-printable, kept whole by :class:`_EncodedMessagesKept`; else None."""
    if content_type(part) not in MESSAGE_TYPES or _transfer_encoding(part) not in _ENCODED_MESSAGE:
        return None
    payload = part.get_payload()  # None while the parser reads the part's fields: the class asks then
    return payload if isinstance(payload, str) else ""


def _written_message(part: email.message.Message) -> bytes | None:
    """The text of a message part labelled base64 that is no base64 (a message written out), as written; else None."""
    text = _encoded_message(part)
    if not text or _transfer_encoding(part) != "base64":
        return None
    data = text.encode("utf-8", "surrogateescape")
    return data if data.translate(None, _BASE64_TEXT) else None


def _attached_message(part: email.message.Message, names: list[str]) -> bytes | None:
    """The message *part* carries encoded, decoded: a message/* part in base64 or quoted-printable (RFC 2046 forbids
    it; Exchange Online sends the one, mail clients decode both), or a file named ``.eml``; else None."""
    encoded: object = None
    text = _encoded_message(part)
    if text is not None:
        clone = email.message.Message()
        clone["Content-Transfer-Encoding"] = _transfer_encoding(part)
        clone.set_payload(text)
        encoded = clone.get_payload(decode=True)
    elif not part.is_multipart() and message_file(names):
        encoded = _payload_bytes(part)
    return encoded if isinstance(encoded, bytes) and encoded else None


def _outlook_message(part: email.message.Message, names: list[str]) -> bytes | None:
    """The Outlook message file a leaf part called *names* carries (named ``.msg`` or ``.oft``, a Compound File),
    decoded; else None."""
    if part.is_multipart() or not outlook_name(names):
        return None  # most parts: not decoded to find out
    data = _payload_bytes(part)
    return data if isinstance(data, bytes) and outlook_file(names, data[:HEAD_SIZE]) else None


def _add_text(result: MessageText, found: "_Links", texts: list[str], ctype: str, body: str, room: int) -> int:
    """Add a decoded text part's text (at most *room* characters) and links (*ctype*: :func:`_reading_type`); its length.
    The text is added without its invisible characters, and a part longer than *room* with each run of combining
    marks cut to MAX_MARKS: a million zero-width spaces or stacked accents must not spend the budget and hide the
    line a reader sees after them."""
    body = without_invisible(_add_links(found, ctype, body))
    if len(body) > room:
        body = capped_marks(body)
    if len(body) > room:
        body = body[:room]
        result.truncated = True
    if body:  # an empty part adds no line
        texts.append(body)
    return len(body)


def single_text_type(headers: Iterable[tuple[str, bytes]]) -> tuple[str, str | None] | None:
    """The content type and charset of a message with these top-level headers, when it is one text part naming no file.

    That is no Content-Disposition, and no Content-Type (``text/plain``, no
    charset) or one of text/SUBTYPE with at most a charset parameter: the
    type (lower-cased) and the charset (lower-cased, None when absent) are
    what the standard library's ``get_content_type`` and
    ``get_content_charset`` give for it.  None for any other message, and for one with a CR that no LF
    follows in a field: a line end to the standard library and to Thunderbird, so that ``Subject: t<CR>
    Content-Type: multipart/mixed…`` is one field to Postfix and a multipart with attachments to them.
    """
    found: tuple[str, str | None] = ("text/plain", None)
    types = 0
    for name, value in headers:
        if bare_cr(value):
            return None
        lowered = name.rstrip(" \t").lower()  # "Content-Type :" is that field to mail clients
        if lowered == "content-disposition":
            return None
        if lowered == "content-type":
            types += 1
            match = _PLAIN_TEXT_TYPE.fullmatch(value.decode("latin-1"))
            if types > 1 or match is None:
                return None
            charset = match.group(2) if match.group(2) is not None else match.group(3)
            found = (match.group(1).lower(), None if charset is None else charset.lower())
    return found


def single_part(raw: bytes) -> tuple[str, str] | None:
    """The content type and the decoded text of a simple one-part message, without the stdlib parse; None otherwise.

    Simple is: a header section of plain CRLF lines (:func:`_plain_fields`)
    ended by an empty line, :func:`single_text_type` headers, and a
    Content-Transfer-Encoding of ASCII that is not a uuencode one.  The text
    is what :func:`decode_part` gives for the stdlib's parse of *raw*; it
    costs a tenth of that parse.
    """
    end = raw.find(b"\r\n\r\n")
    if end <= 0 or not _plain_fields(raw[: end + 2]):
        return None
    # Lower-cased: every value looked at is lower-cased or matched ignoring case anyway.
    fields = [(m.group(1).decode("ascii"), m.group(2)) for m in _MIME_FIELD.finditer(b"\n" + raw[: end + 2].lower())]
    found = single_text_type(fields)
    if found is None:
        return None
    # The first Content-Transfer-Encoding (as compat32 finds it: its leading blanks and trailing
    # line ends stripped, lower-cased), read by its first token as decode_part reads it.
    cte = next((value for name, value in fields if name.lower() == "content-transfer-encoding"), b"")
    cte = cte.lstrip(b" \t").rstrip(b"\r\n")
    if not cte.isascii():
        return None
    encoding = first_token(cte.decode("ascii"))
    if encoding in ("x-uuencode", "uuencode", "uue", "x-uue"):
        return None
    body = raw[end + 4:]
    if encoding in ("quoted-printable", "base64"):
        # Decoded by Message.get_payload itself, so that broken encodings come out the same.
        part = email.message.Message()
        part["Content-Transfer-Encoding"] = encoding
        part.set_payload(body.decode("ascii", "surrogateescape"))
        decoded = part.get_payload(decode=True)
        assert isinstance(decoded, bytes)
        body = decoded
    return found[0], decode_bytes(body, found[1])


def _plain_fields(head: bytes) -> bool:
    """Whether the stdlib parser reads *head* (a header section without its empty line) line for line as we do.

    Every line ends in CRLF and holds no other line break, every field starts
    with a name of printable ASCII and a colon, and goes on in lines that
    start with a space or a tab.
    """
    rest = head.replace(b"\r\n", b"")
    if len(rest.translate(None, _LINE_BREAKS)) != len(rest):
        return False
    return _FIELD_NAME.match(head) is not None and _NOT_A_FIELD_LINE.search(head, 0, len(head) - 2) is None


def content_type(part: email.message.Message) -> str:
    """The content type of *part* (lower-cased) as mail clients read it: the first token of its Content-Type.

    The stdlib's ``get_content_type`` (compat32) takes all that comes before
    a ";": ``text/html (HTML mail)`` (a comment, RFC 2045) and ``text/plain x``
    were no text part to it, but are one to a mail client.  A token that is no
    type/subtype is text/plain, as the stdlib has it; no Content-Type is the
    part's default type.
    """
    value = part.get("Content-Type")
    if value is None:
        return part.get_content_type()
    client = client_container_type(str(value), MESSAGE_TYPES)
    if client:
        return client  # x?message/rfc822 in base64: the attached message Thunderbird decodes (as the parse splits it)
    token = first_token(str(value))
    return token if token.count("/") == 1 else "text/plain"


def _payload_bytes(part: email.message.Message) -> object:
    """``part.get_payload(decode=True)``, the Content-Transfer-Encoding read by its first token.

    The stdlib (compat32) decodes only a field that is exactly ``base64`` or
    ``quoted-printable`` (any case); a mail client reads ``base64 ``,
    ``base64; x``, ``quoted-printable;`` and ``base64 (comment)`` as those.
    """
    field = part.get("Content-Transfer-Encoding")
    if field is not None:
        whole = str(field).lower()
        encoding = first_token(whole)
        # The payload as parsed (get_payload() would turn the surrogate escapes of 8-bit bytes into U+FFFD).
        payload = getattr(part, "_payload", None)
        if encoding != whole and isinstance(payload, str) and not part.is_multipart():
            # Decoded by Message.get_payload itself, so that broken encodings come out as they do there.
            clone = email.message.Message()
            clone["Content-Transfer-Encoding"] = encoding
            clone.set_payload(payload)
            return clone.get_payload(decode=True)
    return part.get_payload(decode=True)


def decode_part(part: email.message.Message) -> str:
    """A leaf part's payload: transfer-decoded (:func:`_payload_bytes`), then charset-decoded leniently."""
    payload = _payload_bytes(part)
    if payload is None:
        value = part.get_payload()
        return value if isinstance(value, str) else ""
    if not isinstance(payload, bytes):
        return str(payload)
    # extract()'s parts never raise here (LenientMessage); another Message may: a malformed charset
    # parameter is read as none (UTF-8, else Latin-1).
    return decode_bytes(payload, safely(part.get_content_charset, lambda: None))


def _add_links(found: "_Links", ctype: str, body: str) -> str:
    """Add the links of a decoded text part (*ctype*: :func:`_reading_type`) to *found*; its text (HTML rendered,
    enriched text's commands dropped, a calendar's lines unfolded: :func:`_shown_text`)."""
    if ctype == "text/html":
        body, cut = _html_parts(body, found)
        found.cut = found.cut or cut
    else:
        body = _shown_text(ctype, body)
        found.scan(body)
    return body


def _reading_type(ctype: str, names: Iterable[str]) -> str:
    """The type a leaf part of type *ctype* called *names* is read as for its text and links: text/html, text/plain,
    text/enriched, text/richtext or text/calendar; "" for a part not read.

    Thunderbird shows a text/* part of a type it does not know (text/markdown, text/csv, text/xml, text/x-…) inline
    as plain text, its links clickable: those are read as text/plain.  A script's type (SCRIPT_TEXT_TYPES) is a file
    the attachment check judges, read only as a file of its name is.  A calendar file (``.ics``) of any type but
    HTML is read as text/calendar: Outlook, Gmail and Apple Mail show its description, location and URL, links
    clickable.  Other files are read as text/html or text/plain by their names
    (:func:`~milterd.content.filetypes.text_file_type`).
    """
    if ctype == "text/html":
        return ctype
    if any(extensions(name)[-1:] == ["ics"] for name in names):
        return "text/calendar"
    if ctype == "text/plain":
        return ctype
    by_name = text_file_type(names, ctype)
    if by_name == "text/html" or not ctype.startswith("text/") or ctype in SCRIPT_TEXT_TYPES:
        return by_name
    return ctype if ctype in _CONVERTED_TYPES else "text/plain"


#: The text types whose text is converted before it is read (:func:`_shown_text`).
_CONVERTED_TYPES = frozenset({"text/enriched", "text/richtext", "text/calendar"})
#: A text/enriched formatting command (RFC 1896 section 2: letters, digits and "-", at most 60), or "<<" (a "<"),
#: one step: "<<bold>" is "<" and the text "bold>".
_ENRICHED_COMMAND = re.compile(r"<(<)|</?[A-Za-z0-9-]{1,60}>")
#: A text/richtext command (RFC 1341 section 7.1.3) other than <lt> (a "<") and <nl> (a line break).
_RICHTEXT_COMMAND = re.compile(r"</?(?!(?:lt|nl)>)[A-Za-z0-9-]{1,60}>", re.IGNORECASE)
_RICHTEXT_NEWLINE = re.compile(r"<nl>", re.IGNORECASE)
_RICHTEXT_LT = re.compile(r"<lt>", re.IGNORECASE)
#: An iCalendar line break that folds a long line (RFC 5545 section 3.1: CRLF and one blank; LF alone too, as written by some).
_ICALENDAR_FOLD = re.compile(r"\r?\n[ \t]")
#: An iCalendar TEXT escape (RFC 5545 section 3.3.11).
_ICALENDAR_ESCAPE = re.compile(r"\\([nN,;\\])")


def _shown_text(ctype: str, text: str) -> str:
    """The text a mail client shows of a text part of type *ctype* (:func:`_reading_type`; not HTML): an enriched or
    rich text's with its formatting commands dropped, a calendar's unfolded and unescaped (a link after a "\\n" is
    one, a link folded at 75 octets is whole), *text* itself for the others.  Linear in *text*."""
    if ctype == "text/enriched":
        # By literal replacements (C) where a character stands free for "<<": a template costs a call per command.
        mark = _free_mark(text) if "<<" in text else ""
        if "<<" in text and not mark:
            return _ENRICHED_COMMAND.sub(r"\1", text)
        text = _ENRICHED_COMMAND.sub("", text.replace("<<", mark) if mark else text)
        return text.replace(mark, "<") if mark else text
    if ctype == "text/richtext":
        text = _RICHTEXT_COMMAND.sub("", _RICHTEXT_NEWLINE.sub("\n", text))
        return _RICHTEXT_LT.sub("<", text)
    if ctype == "text/calendar":
        text = _ICALENDAR_FOLD.sub("", text)
        if "\\" not in text:
            return text
        # By str.replace (C) where a character stands free for an escaped backslash: a call per escape costs more.
        mark = _free_mark(text)
        if not mark:
            return _ICALENDAR_ESCAPE.sub(lambda escape: "\n" if escape.group(1) in "nN" else escape.group(1), text)
        text = text.replace("\\\\", mark).replace("\\n", "\n").replace("\\N", "\n").replace("\\,", ",").replace("\\;", ";")
        return text.replace(mark, "\\")
    return text


def _free_mark(text: str) -> str:
    """A character of ``_MARKS`` *text* does not hold, "" when it holds them all."""
    return next((mark for mark in _MARKS if mark not in text), "")


def uris_in_text(text: str) -> list[str]:
    """Links written out in plain text (``http://…``, ``https://…``, ``ftp://…``, ``www.…``), the first ``MAX_URIS``."""
    found = []
    for uri in _written(text):
        found.append(uri)
        if len(found) >= MAX_URIS:
            break
    return found


def _written(text: str) -> Iterator[str]:
    """The links written out in *text*, as :func:`uris_in_text` gives them, all of them."""
    for link in _links(text):
        uri = link.rstrip(_TRAILING)
        if uri.lower().startswith("www."):
            uri = "http://" + uri
        yield uri


def _rank(key: str) -> int:
    """The rank of a host or a group of hosts (:class:`_Links`): a hash salted per process, so that a sender
    cannot tell, nor try out offline, which of its hosts are kept."""
    return hash((_HOST_SALT, key))


class _HostGroups:
    """Hosts of one kind (names, or IP addresses) kept of a message, each in its group (a name's registrable
    domain, an address itself), and the one that goes first when one must (:meth:`drop`)."""

    def __init__(self) -> None:
        self.size = 0  # hosts held
        self._held: dict[str, list[tuple[int, str]]] = {}  # group -> heap of (-rank, host): its highest-ranked host first
        # Heap of (-hosts, -rank, group): the group that holds the most hosts first, of those that hold as many the
        # highest-ranked.  A group's count changes by one at a time, so each change pushes an entry and the entries
        # whose count is no longer their group's are dropped when they come on top (a few per host, no search).
        self._largest: list[tuple[int, int, str]] = []

    def add(self, group: str, group_rank: int, host: str, rank: int) -> None:
        """Hold *host* (ranked *rank*) in *group* (ranked *group_rank*)."""
        held = self._held.setdefault(group, [])
        heapq.heappush(held, (-rank, host))
        heapq.heappush(self._largest, (-len(held), -group_rank, group))
        self.size += 1

    def take(self, group: str, group_rank: int, host: str, rank: int) -> str:
        """:meth:`add` *host* and :meth:`drop` one; give the one dropped.  When that is *host* itself (a padding's
        hosts mostly are: of the group holding the most, or of a group ranked out), found without a heap's step."""
        held = self._held.get(group)
        count = len(held) + 1 if held else 1
        largest = self._largest
        while largest:
            most, most_rank, most_group = largest[0]
            most_held = self._held.get(most_group)
            if most_held is not None and len(most_held) == -most:
                if (count, group_rank) > (-most, -most_rank) and (not held or rank > -held[0][0]):
                    return host
                break
            heapq.heappop(largest)  # stale
        self.add(group, group_rank, host, rank)
        return self.drop()

    def drop(self) -> str:
        """Let go of the highest-ranked host of the group that holds the most (of those that hold as many, the
        highest-ranked group: :func:`_rank`), and give it.  So every group keeps its lowest-ranked host as long
        as any group holds two, and the hosts held are those of the lowest keys (the host's place in its group,
        its group's rank) among all ever added, whatever their order."""
        largest = self._largest
        while True:
            count, group_rank, group = largest[0]
            held = self._held.get(group)
            if held is not None and len(held) == -count:
                break
            heapq.heappop(largest)  # stale: the group holds more or fewer hosts now
        host = heapq.heappop(held)[1]
        if held:
            heapq.heapreplace(largest, (count + 1, group_rank, group))
        else:
            heapq.heappop(largest)
            del self._held[group]
        self.size -= 1
        return host


#: What a link that names another in its path or query holds (:meth:`_Links._add_named`): a scheme, maybe encoded, or AMP's "/amp/s/".
_NAMES_A_LINK = re.compile(r"(?i)https?(?::|%3a|%253a)|/amp/s/")


class _Links:
    """The links kept of a message: each once, the first of each of at most ``MAX_HOSTS`` hosts (of more, chosen by
    registrable domain: :meth:`_room`), others while fewer than ``MAX_URIS`` are kept; and whether a reader follows each.

    Links are read while fewer than ``MAX_LINKS_SCANNED`` distinct ones and ``MAX_LINKS_LOOKED`` in all were: a
    link met before (kept or not) counts only towards the latter, so copies of one link cannot push a listed one
    past the first bound (20,000 copies of ``http://a.test/`` before it hid it).
    """

    def __init__(self) -> None:
        self._kept: dict[str, bool] = {}  # link -> followed somewhere (not only embedded), in order of appearance
        self._hosts: dict[str, list[str]] = {}  # host -> its links kept
        # The hashes of the links met (kept or not), not the links: 20,000 of 2,000 characters would be 40 MB.  A
        # collision only lets a new link go uncounted towards MAX_LINKS_SCANNED, which MAX_LINKS_LOOKED still bounds.
        self._met: set[int] = set()
        # Filled only once more than MAX_HOSTS hosts are found (most mail never is, and pays no registrable-domain
        # lookup): the hosts kept, names and addresses apart, and each host met's kind and group (looked up once).
        self._names = _HostGroups()
        self._addresses = _HostGroups()
        self._grouped: dict[str, tuple[_HostGroups, str, int, int]] = {}  # host -> kind, group, group's rank, host's rank
        self.scanned = 0  # distinct links read
        self.looked = 0  # links read, repeats included
        self.cut = False  # links were left unread (MAX_LINKS_SCANNED, MAX_LINKS_LOOKED, or MAX_TAGS of an HTML part)
        self.full = False  # links were left unread for MAX_LINKS_SCANNED or MAX_LINKS_LOOKED, or hosts for MAX_HOSTS
        self.unparsed = False  # HTML was scanned for links written out only (past MAX_TAGS)

    def reading(self) -> bool:
        """Whether a new link would still be read (neither ``MAX_LINKS_SCANNED`` nor ``MAX_LINKS_LOOKED`` reached)."""
        return self.scanned < MAX_LINKS_SCANNED and self.looked < MAX_LINKS_LOOKED

    def add(self, uri: str, followed: bool = True, named: bool = False) -> bool:
        """Keep *uri* (*followed*: a link a reader follows, not only an embedded source) if there is room for it,
        and the links its path and query name (a redirector's target, *named*: one of those); False when it was
        left unread for a bound on the links read (the links after it would be too)."""
        if self.looked >= MAX_LINKS_LOOKED:
            self.cut = self.full = True
            return False
        self.looked += 1
        kept = self._kept.get(uri)
        if kept is not None:
            if followed and not kept:
                self._kept[uri] = True
            return True
        key = hash(uri)
        new = key not in self._met
        if new:
            # A link another names counts only towards MAX_LINKS_LOOKED: 2,000 links naming 10 hosts each used up
            # the distinct links read, and hid a listed one after them that was read before they were.
            if not named:
                if self.scanned >= MAX_LINKS_SCANNED:
                    self.cut = self.full = True
                    return False
                self.scanned += 1
            self._met.add(key)
        match = _HOST_KEY.match(uri)
        host = match.group(1).lower() if match else ""
        if new and not named and not self._add_named(uri, match.end() if match else 0, followed):
            return False
        links = self._hosts.get(host)
        if links is None:
            if len(self._hosts) >= MAX_HOSTS:
                self.full = True  # one host's links are left out, this one's or a kept one's
                dropped = self._room(host)
                if dropped == host:
                    return True
                for link in self._hosts.pop(dropped):
                    del self._kept[link]
            links = self._hosts[host] = []
        elif len(self._kept) >= MAX_URIS:
            return True
        links.append(uri)
        self._kept[uri] = followed
        return True

    def _add_named(self, uri: str, start: int, followed: bool) -> bool:
        """Add the links *uri* names past *start* (its authority's end) as links of their own
        (:func:`~milterd.domains.embedded_authorities`): the target of a redirector competes for a place by its
        own host.  Kept only as a link of the redirector's host, it was left out once ``MAX_URIS`` links were
        kept: 1,000 links to google.com/url before one naming a listed domain hid it.  False as :meth:`add`."""
        if not _NAMES_A_LINK.search(uri, start):
            return True
        form = uri[start:start + MAX_EMBEDDING].partition("#")[0]
        return all(self.add(f"http://{authority}/", followed, named=True) for authority in embedded_authorities(form))

    def _room(self, host: str) -> str:
        """Take the new *host* among the ``MAX_HOSTS`` hosts kept, and give the one that goes for it (maybe *host*).

        Names and IP addresses each keep their share (the kind that holds more gives a host up, names on a tie): a
        sender's addresses cannot push a listed name out, nor its names a listed address.  Of a kind, every group
        (a name's registrable domain, an address by itself) keeps its lowest-ranked host before any keeps a second,
        and a group that holds the most gives up its highest-ranked one (:meth:`_HostGroups.drop`): 19,000
        subdomains of a wildcard domain keep 999 hosts of it and a listed domain's host, where ranking hosts alone
        left the listed one out 95% of the time.  Over ``MAX_HOSTS`` registrable domains, each domain keeps
        one host or none, by its rank.  Ranks are salted hashes (:func:`_rank`), so the order of the links, their
        repetition, and a sender's tries offline do not decide which are kept.
        """
        if not self._grouped:
            for kept in self._hosts:
                self._group(kept)
        kind, group, group_rank, rank = self._group(host, hold=False)
        other = self._addresses if kind is self._names else self._names
        if kind.size + 1 > other.size or (kind.size + 1 == other.size and kind is self._names):
            return kind.take(group, group_rank, host, rank)
        kind.add(group, group_rank, host, rank)
        return other.drop()

    def _group(self, host: str, hold: bool = True) -> tuple[_HostGroups, str, int, int]:
        """The kind, group, group's rank and rank of *host* (as ``_HOST_KEY`` reads it), remembered for it; held
        there when *hold*."""
        grouped = self._grouped.get(host)
        if grouped is None:
            kind, group = _host_group(host, self._names, self._addresses)
            grouped = self._grouped[host] = (kind, group, _rank(group), _rank(host))
        if hold:
            kind, group, group_rank, rank = grouped
            kind.add(group, group_rank, host, rank)
        return grouped

    def scan(self, text: str, skip: Container[str] = (), seen: set[str] | None = None) -> None:
        """Add the links written out in *text* (:func:`uris_in_text`) while :meth:`add` reads them; those in *skip*
        are passed over uncounted, and each is added to *seen*, when given."""
        for uri in _written(text):
            if not self.reading():
                self.cut = self.full = True
                break
            if uri in skip:
                continue
            if seen is not None:
                seen.add(uri)
            if not self.add(uri):
                break

    def uris(self) -> list[str]:
        """The links kept, in order of appearance."""
        return list(self._kept)

    def embedded(self) -> set[str]:
        """Those of :meth:`uris` never followed: only ever an embedded source."""
        return {uri for uri, followed in self._kept.items() if not followed}


#: How many of a name's last labels decide its registrable domain: a Public Suffix List rule has at most 7 (so
#: far), and the lookup's cost grows with the labels (a name of 100 labels took three times a short one's).
_SUFFIX_LABELS = 10


def _host_group(host: str, names: _HostGroups, addresses: _HostGroups) -> tuple[_HostGroups, str]:
    """The kind (*names* or *addresses*) and group of *host*, as ``_HOST_KEY`` reads it (lower-cased, a port kept):
    an address is its own group (as the WHATWG URL standard tells one: in brackets, or a last label that is a
    number, which starts with a digit), a name its registrable domain (:func:`milterd.domains.registrable`), or
    itself when it has none (``localhost``, a public suffix).  Written as browsers would not read them (``%61``,
    fullwidth letters) a name may fall in a group of its own: padding gains nothing by it that distinct
    registrable domains, which cost nothing to write either, would not give."""
    if host.startswith("["):
        return addresses, host.partition("]")[0]
    name = host.partition(":")[0].rstrip(".")
    if name.rpartition(".")[2][:1].isdigit():
        return addresses, name
    labels = name.rsplit(".", _SUFFIX_LABELS)
    tail = ".".join(labels[1:]) if len(labels) > _SUFFIX_LABELS else name
    return names, registrable(tail) or name


def _links(text: str) -> Iterator[str]:
    """The links written out in *text*, before their trailing punctuation is dropped: Thunderbird's readings
    (:func:`_thunderbird_end`) and, where they differ, the readings of ``_URI_IN_TEXT``, by where they start.

    ``'http://a.test','http://b.test'`` is one link to Thunderbird, three here (a link more is only a lookup
    more); where both start at one place, the older one is given only when its host differs, so that padding
    with such links spends the link budget (``MAX_LINKS_SCANNED``) no faster than before.  Each reading is a
    scan of its own (:func:`_scan`): a place of the text is read once by each.
    """
    # Only W lower-cases to w, and lower-casing keeps who is of the link class; a character
    # lower-cased to several would move the indexes: then the text itself is searched.
    lowered = text.lower() if "W" in text else text
    if len(lowered) != len(text):
        lowered = ""
    older = _scan(text, lowered, _older_end, _SCHEME_END_OLDER, _WWW_OLDER)
    pending = next(older, None)
    for start, link in _scan(text, lowered, _thunderbird_end, _SCHEME_END, _WWW):
        while pending is not None and pending[0] < start:
            yield pending[1]
            pending = next(older, None)
        yield link
        if pending is not None and pending[0] == start:
            host = _host_key(link)
            if not host or _host_key(pending[1]) != host:  # the same host twice would only spend the link budget
                yield pending[1]
            pending = next(older, None)
    while pending is not None:
        yield pending[1]
        pending = next(older, None)


def _host_key(link: str) -> str:
    """The host of a written-out link (after its "//" and any more slashes or backslashes, as browsers read
    ``http:///host``, or from its "www.") as far as :func:`_links` compares two readings: up to a "/", "\\",
    "?" or "#", without userinfo, lower-cased; "" where there is none (then the readings count as different).
    Not ``_HOST_KEY``, which bounds the links kept: it needs an ASCII scheme, where these may be ``httpſ://``
    or have none (``www.``)."""
    authority = _AUTHORITY_TEXT.match(link if link[3] == "." else link.partition("//")[2].lstrip("/\\"))
    return cast("re.Match[str]", authority).group(0).rpartition("@")[2].lower()


_AUTHORITY_TEXT = re.compile(r"[^/\\?#]*")


def _older_end(text: str, start: int) -> int:
    """The end of the link ``_URI_IN_TEXT`` matches at *start*, -1 for none."""
    match = _URI_IN_TEXT.match(text, start)
    return -1 if match is None else match.end()


def _thunderbird_end(text: str, start: int) -> int:
    """The end of the link Thunderbird's FindURLEnd reads at *start* (a scheme's "://" or "www.", two characters
    of its first run after it: :func:`_scan`), -1 for none.  At most 2,000 characters after the prefix, as
    _URI_IN_TEXT."""
    prefix = _LINK_PREFIX.match(text, start)
    if prefix is None:
        return -1
    body = prefix.end()
    limit = min(len(text), body + 2000)
    paren = square = False
    pos = body
    while True:  # three runs at most: each state changes once
        pos = cast("re.Match[str]", _THUNDERBIRD_RUN[paren, square].match(text, pos, limit)).end()
        if pos >= limit:
            break
        if text[pos] == ")" and not paren and text.find("(", body, pos) >= 0:
            paren = True
        elif text[pos] == "]" and not square and text.find("[", body, pos) >= 0:
            square = True
        else:
            break
    return pos if pos - body >= 2 else -1


def _scan(
    text: str, lowered: str, end_at: Callable[[str, int], int], scheme_end: re.Pattern[str], www: tuple[re.Pattern[str], re.Pattern[str]]
) -> Iterator[tuple[int, str]]:
    """(start, link) of each link of one reading of *text*, its end given by *end_at*, looking only where one can start.

    A link starts at a scheme right before a ``://`` or at a ``www.``, followed by
    two link characters (*scheme_end*, *www*): :func:`_scheme_start` and
    :func:`_www_start` find the next such place in C (a try of the pattern costs
    a microsecond: "http:// " repeated over 4 MB made a million), and only from
    the previous link's end, so that the places inside a link are never looked
    at and :func:`uris_in_text` stops reading at its ``MAX_URIS``-th link.  The
    leftmost link at or after the previous one's end is the next (the
    prefix's ``\\b`` sees the text before a ``match()`` position).
    """
    scheme, www_at = _scheme_start(text, 0, scheme_end), _www_start(text, lowered, 0, www)
    while scheme >= 0 or www_at >= 0:
        start = www_at if scheme < 0 or 0 <= www_at < scheme else scheme
        end = end_at(text, start)
        after = start + 1
        if end >= 0:
            yield start, text[start:end]
            after = end
        if 0 <= scheme < after:
            scheme = _scheme_start(text, after, scheme_end)
        if 0 <= www_at < after:
            www_at = _www_start(text, lowered, after, www)


def _scheme_start(text: str, pos: int, scheme_end: re.Pattern[str]) -> int:
    """The first index from *pos* on where ``http``, ``https`` or ``ftp`` (any case, after no ASCII letter or
    digit) stands before a ``://`` followed by two link characters (*scheme_end*); -1 for none."""
    found = scheme_end.search(text, pos + 3)
    while found is not None:
        index = found.start()
        start = index - 5 if text[index - 1] in _SCHEME_ENDS_S else index - 3 if text[index - 3] in "fF" else index - 4
        if start >= pos:
            return start
        found = scheme_end.search(text, index + 1)
    return -1


def _www_start(text: str, lowered: str, pos: int, www: tuple[re.Pattern[str], re.Pattern[str]]) -> int:
    """The first index from *pos* on of a ``www.`` (any case) followed by two link characters; -1 for none.

    *lowered* is *text* lower-cased with the same indexes, searched instead ("" when there is none); *www* holds
    the patterns of each (a literal prefix in lower-cased text, which the regex engine finds ten times faster).
    """
    found = www[1].search(lowered, pos) if lowered else www[0].search(text, pos)
    return -1 if found is None else found.start()


#: The elements whose content is text to a browser, not markup (outside <svg> and <math>): the tokenizer's RAWTEXT
#: (<script>, <style>, <xmp>, <iframe>, <noembed>, <noframes>), RCDATA (<title>, <textarea>: character references
#: decoded, _RCDATA) and PLAINTEXT (<plaintext>: the rest of the document) states, which the tree construction
#: switches it to (HTML standard 13.2.6.4.4 "in head", 13.2.6.4.7 "in body").  The stdlib (3.11) knows only the
#: first two: <title>x<script></title><a href=…> hid the link in a script that never ended, <title><!--</title>
#: <a href=…><!-- --> in a comment.  A mail client's parser has scripting off: <noscript> is markup to it.
_TEXT_CONTENT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "title", "textarea", "plaintext"})
_RCDATA = frozenset({"title", "textarea"})
#: Those whose content is also read as markup for links, by a parse of its own (its text stays as the element
#: shows it): a client without frames, embeds or iframes shows their fallback as markup, and where a browser does
#: not take the element as raw text at all (a <title> or <style> in a <select> is ignored, 13.2.6.4.16), what
#: follows it is markup: <select><title></select><a href=…> hid the link (and the rest of the part) here.  Not
#: <script>: raw text in a <select> too.
_READ_AS_MARKUP_TOO = _TEXT_CONTENT - {"script"}
#: What ends no element: the end of a <plaintext> is the document's (13.2.5.5).
_NO_END = re.compile(r"(?!)")
#: The elements of <svg> and of <math> whose content is HTML again (13.2.6.5: HTML integration points, MathML text
#: integration points): a <textarea> in an <svg>'s <foreignObject> is RCDATA.
_HTML_IN = {"svg": frozenset({"foreignobject", "desc", "title"}), "math": frozenset({"mi", "mo", "mn", "ms", "mtext"})}
#: The start tags that end foreign content (13.2.6.5): the browser closes the <svg>/<math> and reads them as HTML
#: (a <font> only with some attributes, which the parse does not keep: it stays in the <svg> here).
_BREAKOUT = frozenset({
    "b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt", "em", "embed", "h1", "h2", "h3",
    "h4", "h5", "h6", "head", "hr", "i", "img", "li", "listing", "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s",
    "small", "span", "strong", "strike", "sub", "sup", "table", "tt", "u", "ul", "var",
})


class _HTMLText(HTMLParser):
    """Collects the visible text and the links of an HTML part."""

    # Not "head": its end tag is optional (<head><title>x</title><body>… hid the whole body's text); what a head holds
    # unseen (title, style, script) is skipped on its own, and other text in it a browser shows in the body.  The
    # content of an <iframe>, <noembed> or <noframes> is text a client that supports them does not show; that of an
    # <xmp>, <textarea> or <plaintext> it shows (_TEXT_CONTENT), its links written out read as any text's.
    _SKIP = {"script", "style", "title", "iframe", "noembed", "noframes"}
    _BREAK = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote"}
    _FOLLOWED = {"a", "area"}  # whose href the reader clicks (a <link>'s or <base>'s is not); VML shapes' too (_followed)

    def __init__(self, mark: str = "", found: _Links | None = None, nested: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self._nested = nested  # the parse of a conditional comment's content or an <svg>'s script (one level, never deeper)
        #: Open <svg>/<math> elements.  A <script> or <style> in one holds markup to a browser (HTML standard
        #: 13.2.6.5), whose <a href> is a link: its text is read as before (hidden up to its end tag) and read for
        #: links too, by a parse of its own (:meth:`handle_data`).  Where the browser leaves the <svg> earlier
        #: (its </svg> ends the script there), the text after it stays hidden here, as before.
        self._foreign = 0
        #: The open <svg>/<math> elements and integration points, with the namespace of their content ("svg", "math",
        #: "html"): whether a <title> or <textarea> starts RCDATA (:meth:`_html_content`).  Kept apart from
        #: _foreign, which reads an <svg>'s <script> for links as before.
        self._namespaces: list[tuple[str, str]] = []
        self._open: dict[str, int] = {}  # how many entries of _namespaces each tag has
        self.mark = mark  # the character that stands for a "<" of text (_text_lt), "" for none
        self.parts: list[str] = []
        self.found = _Links() if found is None else found  # where the links go
        self._skipping = 0
        self._styles = 0  # inside this many <style> elements, whose CSS is read for links
        self._base: _Base | None = None  # the document's first absolute <base href>
        self._relative: list[tuple[str, bool]] = []  # relative links read before it: (link, followed)
        self._read = 0  # links read in CSS, srcsets and refreshes (bounded as the links looked at)
        self._closing = False
        # How far from the end a start tag found unterminated at feed() begins (goahead() drops what it read).
        self._unterminated = -1

    @property
    def links(self) -> list[str]:
        """The links kept (of the whole message when the parser was given its :class:`_Links`)."""
        return self.found.uris()

    @property
    def embedded(self) -> set[str]:
        """Those of :attr:`links` only ever seen as an embedded source."""
        return self.found.embedded()

    @property
    def followed(self) -> set[str]:
        """Those of :attr:`links` seen as one the reader follows."""
        return set(self.links) - self.embedded

    def close(self) -> None:
        """End the document: what is left unterminated (a tag, comment, declaration) runs to its end, as in a browser."""
        self._closing = True
        super().close()
        # CPython 3.11.7 drops the text of a <style> (<script>) left open at the end; a browser applies that CSS
        # (loads its url()s), as Debian's 3.11.2 with the 2025 fixes and newer CPython read it.
        if self.cdata_elem and self.rawdata:
            self.handle_data(self.rawdata)
            self.rawdata = ""

    # The stdlib (3.11) reads a construct left unterminated at the end as one character of text and parses
    # on from the next "<": each of 50,000 unclosed "<a href='" then scans to the end, 700 KB take an
    # hour.  A browser (HTML standard 13.2.5, "eof-in-tag") drops everything from such a construct on.
    def _to_end(self, end: int) -> int:
        return len(self.rawdata) if end < 0 and self._closing else end

    def parse_starttag(self, i: int) -> int:
        """A start tag, read attribute by attribute as the stdlib (3.11) reads them, keeping only
        those :meth:`handle_starttag` reads; its end, or -1 while unterminated (at the end of the
        document: the rest is hidden, as in a browser).

        The stdlib first locates the tag's end with a pattern that keeps a backtracking entry
        per attribute (one tag of 4 MB of "x=y " took 900 MB), then reads the attributes with
        this loop: the loop alone finds the same end (tests/unit/test_html_tag_limits.py
        compares the two).
        """
        rawdata = self.rawdata
        if self._closing and len(rawdata) - i == self._unterminated:
            return len(rawdata)  # read to its end once already, at feed()
        name = _TAG_NAME.match(rawdata, i + 1)
        assert name is not None  # goahead() calls this at "<" and a letter
        k = name.end()
        self.lasttag = tag = name.group(1).lower()
        attrs: list[tuple[str, str | None]] = []
        named: set[str] = set()  # a browser takes the first of each name: 1,000 src= before it must not hide the href
        while True:
            found = _ATTRIBUTE.match(rawdata, k)
            if found is None or found.end() == k:
                break
            attrname, rest, value = found.group(1, 2, 3)
            attrname = attrname.lower()
            if rest and attrname in _LINK_ATTRS and (len(attrs) < MAX_URIS or attrname not in named):
                named.add(attrname)
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                attrs.append((attrname, unescape(value)))
            k = found.end()
        following = rawdata[k:k + 1]
        # "/>" closes no HTML element (13.2.6.4.7): <title/> starts a title as <title> does; in <svg> it closes one.
        closed = rawdata.startswith("/>", k)
        # In <svg>/<math> only a <script> or <style> (read as markup for links by handle_data, as before): a foreign
        # element's content is markup (13.2.6.5), a <title> there too.  Asked before the tag opens a context of its own.
        text_content = tag in _TEXT_CONTENT and self._html_content()
        if following == ">" or (closed and text_content):
            self.handle_starttag(tag, attrs)
            if text_content or tag in self.CDATA_CONTENT_ELEMENTS:
                self.set_cdata_mode(tag)
            return k + (2 if closed else 1)
        if closed:
            self.handle_startendtag(tag, attrs)
            return k + 2
        if following == "" or following in _UNTERMINATED:
            # The stdlib's "end of input in or before attribute value": the tag does not end.
            self._unterminated = len(rawdata) - i
            return self._to_end(-1)
        # Not a tag after all (the stdlib's "junk characters"): its text is data.
        self.handle_data(rawdata[i:k])
        return k

    # CPython 3.11.7 ends a <style> or <script> only at "</style>" (blanks aside): "</style foo>" and "</style/>", which
    # end it in a browser (HTML standard 13.2.5.7-8), left the rest of the part unread, its links too.  Newer CPython
    # (and Debian's 3.11.2 since the 2025 security fixes) reads them as browsers do, as these two methods do here.
    def set_cdata_mode(self, elem: str, **options: Any) -> None:
        """The stdlib's, ending at ``</elem`` followed by a blank, "/" or ">"; a <plaintext> never ends (:meth:`close`
        gives its text)."""
        super().set_cdata_mode(elem, **options)  # never "escapable" (newer CPython): handle_data decodes an RCDATA's text
        name = self.cdata_elem or elem.lower()
        if name == "plaintext":
            self.interesting = _NO_END
            return
        self.interesting = re.compile(rf"</{re.escape(name)}(?=[\t\n\r\f />])", re.IGNORECASE | re.ASCII)

    def parse_endtag(self, i: int) -> int:
        """The stdlib's, but an unterminated end tag at the end of the document hides the rest, and ``</style foo>``
        ends a <style> (a <script>) as in a browser."""
        elem = self.cdata_elem
        if elem and self.rawdata[i + 2:i + 2 + len(elem)].lower() == elem and self.rawdata[i + 2 + len(elem):i + 3 + len(elem)] in _TAG_END:
            end = self.rawdata.find(">", i + 2)
            if end < 0:
                return self._to_end(-1)
            self.handle_endtag(elem)
            self.clear_cdata_mode()
            return end + 1
        return self._to_end(super().parse_endtag(i))

    def parse_pi(self, i: int) -> int:
        """The stdlib's, but an unterminated ``<?`` at the end of the document hides the rest."""
        return self._to_end(super().parse_pi(i))

    def parse_html_declaration(self, i: int) -> int:
        """The stdlib's, but an unterminated ``<!`` at the end of the document hides the rest."""
        return self._to_end(super().parse_html_declaration(i))

    def _html_content(self) -> bool:
        """Whether the content of the current element is HTML (outside <svg> and <math>, or in an integration point)."""
        return not self._namespaces or self._namespaces[-1][1] == "html"

    def _open_namespace(self, tag: str) -> None:
        """Follow the namespace of the content as a browser's tree construction does at start tag *tag* (13.2.6.5)."""
        if not self._html_content() and tag in _BREAKOUT:
            while not self._html_content():
                self._close_namespace(self._namespaces[-1][0])
        namespace = "html" if not self._namespaces else self._namespaces[-1][1]
        if tag in ("svg", "math"):
            entry = (tag, tag)
        elif namespace in _HTML_IN and tag in _HTML_IN[namespace]:
            entry = (tag, "html")
        else:
            return
        self._namespaces.append(entry)
        self._open[tag] = self._open.get(tag, 0) + 1

    def _close_namespace(self, tag: str) -> None:
        """Close the innermost open *tag* of _namespaces and those opened in it (none when it is not open)."""
        if not self._open.get(tag):
            return
        while self._namespaces:
            name, _ = self._namespaces.pop()
            self._open[name] -= 1
            if name == tag:
                return

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open_namespace(tag)
        if tag in ("svg", "math"):
            self._foreign += 1
        if tag in _SVG_ANIMATION and any(name == "attributename" and (value or "").strip().lower() in ("href", "xlink:href") for name, value in attrs):
            # <a><set attributeName="href" to="https://…"/></a>: the link the reader follows.
            for name, value in attrs:
                if name in ("to", "values", "from") and value:
                    self._add_all((link for link in value.split(";") if link.strip()), True)
        if tag in self._SKIP:
            self._skipping += 1
            if tag == "style":
                self._styles += 1
        if tag in self._BREAK:
            self.parts.append("\n")
        # Asked once a tag: a <meta> of 1,000 content= attributes asked it of each (a million steps a tag).
        refresh = tag == "meta" and any(name == "http-equiv" and (kind or "").strip().lower() == "refresh" for name, kind in attrs)
        if tag == "form" and not any(name == "action" and value for name, value in attrs):
            self._add("", True)  # a form without an action posts to the document's own URL
        for name, value in attrs:
            if not value:
                if name == "href" and self._followed(tag):
                    self._add("", True)  # href="": the document's own URL
                continue
            if self.mark:
                value = value.replace(self.mark, "<")
            if name in _URL_ATTRS:
                if tag == "base" and name == "href" and self._base is None:
                    base = _Base.of(value)
                    if base is not None:
                        self._set_base(base)
                followed = name in ("action", "formaction") or (name in ("href", "xlink:href") and self._followed(tag))
                self._add(value, followed)
            else:
                self._add_all(_attribute_links(tag, name, value, refresh), refresh)  # a refresh is followed

    def _followed(self, tag: str) -> bool:
        """Whether the reader clicks the href of a *tag*: a link, an image map's area, or a VML shape (an Outlook
        "bulletproof" button, ``<v:roundrect href=…>``, which Outlook for Windows shows and follows)."""
        return tag in self._FOLLOWED or tag.startswith("v:")

    def _add_all(self, links: Iterable[str], followed: bool) -> None:
        """:meth:`_add` each of *links* (of CSS or a srcset), while fewer than ``MAX_LINKS_LOOKED`` were read so
        (counted here as well: ``cid:`` and ``data:`` links cost their reading, but :meth:`_Links.add` never sees them)."""
        for link in links:
            if self._read >= MAX_LINKS_LOOKED or not self.found.reading():
                self.found.cut = self.found.full = True  # "links" left unread, as past the scan's own bound
                return
            self._read += 1
            self._add(link, followed)

    def _add(self, value: str, followed: bool) -> None:
        """Add the link *value* of an attribute as written and, when it is relative, resolved against the document's
        <base href> too (a client that ignores the base reads it as written: ``www.evil.example/login``)."""
        value = value.strip()
        if value[:1] in ("", "#"):
            # The document itself (href="#top", href="", a form without an action): with a <base href>, a click
            # goes to the base URL ("baseStriker"), so a followed one is resolved against the base.
            if followed:
                self._add_relative(value, followed)
            return
        if value.startswith(("cid:", "data:", "javascript:")):
            return
        self.found.add(value, followed)
        if _ABSOLUTE.match(value) and not _OPENED_ITSELF.match(value):
            # microsoft-edge:https://evil.example/, ms-word:ofe|u|https:evil.example/…: the handler opens the link inside.
            start = value.find(":") + 1
            # Both, where both are written: itms-services://?…url=https://evil…, ms-word:ofe|u|\\\\evil\\…#https:
            for inner in (_INNER_SCHEME.search(value, start), _INNER_SLASHES.search(value, start)):
                if inner is not None:
                    self.found.add(value[inner.start():], followed)
        if not _ABSOLUTE.match(value):
            self._add_relative(value, followed)

    def _add_relative(self, value: str, followed: bool) -> None:
        """Add the relative link *value* resolved against the <base href>, or keep it for a base that comes later."""
        if self.found.reading():  # past its bounds, add() keeps nothing new
            if self._base is not None:
                self.found.add(self._base.resolve(value), followed)
            elif len(self._relative) < MAX_URIS:
                self._relative.append((value, followed))

    def _set_base(self, base: _Base) -> None:
        """Take *base* as the document's base URL: the relative links read so far are added again, resolved against
        it (a browser resolves every link against the first <base href>, wherever in the document it stands)."""
        self._base = base
        for value, followed in self._relative:
            self.found.add(base.resolve(value), followed)
        self._relative = []

    # The stdlib (3.11) ends a comment only at "--" [blanks] ">" and a "<![" section only at "]]>":
    # a browser shows what follows "<!-->", "--!>" or "<![CDATA[ ... >", so links there were hidden.
    def parse_comment(self, i: int, report: bool = True) -> int:
        """Skip the comment at *i* as browsers do (HTML standard 13.2.5.43-52); its end, or -1 while unterminated.

        ``<!-->`` and ``<!--->`` are empty comments; any other ends at the first ``-->`` or ``--!>``.
        """
        rawdata = self.rawdata
        start = i + 4
        for empty in (">", "->"):
            if rawdata.startswith(empty, start):
                return start + len(empty)
        match = _COMMENT_END.search(rawdata, start)
        if match is None:
            return self._to_end(-1)
        if report:
            self.handle_comment(rawdata[start:match.start()])
        return match.end()

    def handle_comment(self, data: str) -> None:
        """A conditional comment's content (``<!--[if mso]> … <![endif]-->``), which Outlook for Windows shows and
        whose links (a "bulletproof" VML button's too) it follows, is read for links, one level deep."""
        if self._nested or data.lstrip()[:3].lower() != "[if":
            return
        content = data.partition("]>")[2].rpartition("<![endif]")
        inner = content[0] if content[1] else content[2]
        if inner.strip():
            self._links_of(inner)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """Skip ``<![CDATA[``/``<![if …]>`` at *i* to the first ``>``: a bogus comment in HTML (13.2.5.42); -1 while unterminated."""
        end = self.rawdata.find(">", i + 3)
        return self._to_end(-1) if end < 0 else end + 1

    def handle_endtag(self, tag: str) -> None:
        if not self.cdata_elem:  # a raw-text element's end tag closes only it (an <svg>'s <title> stays open)
            if tag in ("p", "br") and not self._html_content():  # these end foreign content too (13.2.6.5)
                while not self._html_content():
                    self._close_namespace(self._namespaces[-1][0])
            self._close_namespace(tag)
        if tag in ("svg", "math") and self._foreign:
            self._foreign -= 1
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
            if tag == "style" and self._styles:
                self._styles -= 1
        if tag in self._BREAK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.cdata_elem and "<" in data and not self._nested and (self.cdata_elem in _READ_AS_MARKUP_TOO or (self._foreign and self._skipping)):
            self._links_of(data)  # before an RCDATA's references are decoded: as markup, it is the text written
        if self.cdata_elem in _RCDATA:
            data = unescape(data)  # given whole: up to the end tag, or the rest of the document at close()
        if not self._skipping:
            self.parts.append(data)
            return
        if self._styles and ("(" in data or "@" in data):
            self._add_all(_css_links(data.replace(self.mark, "<") if self.mark else data), False)

    def _links_of(self, markup: str) -> None:
        """The links of *markup* (a conditional comment's content, an <svg>'s <script>) read by a parse of its own,
        into the part's links, one level deep; its text is not the part's."""
        nested = _HTMLText(self.mark, self.found, nested=True)
        nested._read = self._read  # one bound for the part's CSS, srcset and refresh links, nested parses included
        nested.feed(markup)
        nested.close()
        self._read = nested._read


def _attribute_links(tag: str, name: str, value: str, refresh: bool) -> Iterator[str]:
    """The links in attribute *name* (of _LINK_ATTRS, not of _URL_ATTRS) of a *tag* (*refresh*: a <meta> refresh)."""
    if name == "style":
        yield from _css_links(value)
    elif name in ("srcset", "imagesrcset"):
        yield from _srcset_links(value)
    elif name == "data":
        if tag == "object":
            yield value
    elif name == "content":
        if refresh:
            link = cast("re.Match[str]", _REFRESH.match(value)).group(1).strip()  # matches any text
            if link[:1] in ("'", '"'):
                end = link.find(link[0], 1)
                link = link[1:] if end < 0 else link[1:end]
            yield link


def _css_links(css: str) -> Iterator[str]:
    """The links of CSS *css*: its url(...) and @import "...", and those written out in it (an image-set's strings)."""
    lowered = css.lower()
    if "url" in lowered or "@import" in lowered:
        for match in _CSS_URL.finditer(css):
            yield _css_unescaped(next(group for group in match.groups() if group is not None))
    if "//" in css or "www." in lowered:
        yield from _written(css)


#: A CSS escape (CSS Syntax Level 3, 4.3.7): up to six hex digits and one blank after them, a line end (in a
#: string, a line continuation), or any other character for itself.
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})(?:\r\n|[ \t\r\n\f])?|(\r\n|[\r\n\f])|(.))", re.DOTALL)


def _css_unescaped(value: str) -> str:
    """A url() or @import value as the browser reads it, its CSS escapes decoded: ``url("http://\\65vil.test")``
    loads evil.test.  A code point of 0, a surrogate or past U+10FFFF is U+FFFD, as CSS makes it."""
    if "\\" not in value:
        return value

    def decoded(match: re.Match[str]) -> str:
        digits, line_end, other = match.groups()
        if digits:
            code = int(digits, 16)
            return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
        return "" if line_end else other

    return _CSS_ESCAPE.sub(decoded, value)


def _srcset_links(srcset: str) -> Iterator[str]:
    """The URLs of the image candidates of *srcset* (HTML standard 4.8.4.3.10)."""
    pos = 0
    while True:
        match = _SRCSET_URL.match(srcset, pos)
        if match is None:
            return
        url, pos = match.group(1), match.end()
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            pos = cast("re.Match[str]", _SRCSET_DESCRIPTORS.match(srcset, pos)).end()  # matches the empty text
        if url:
            yield url


#: The most characters of a <base href> relative links are resolved against: each resolved link holds a copy of it.
MAX_BASE = 2048
#: What a browser takes out of a URL before it parses it (the URL standard: ASCII tab and newline).
_URL_BLANKS = re.compile(r"[\t\n\r]")
#: What may follow an end tag's name ("" while the document goes on past it, as the stdlib waits then too).
_TAG_END = frozenset({"\t", "\n", "\r", "\f", " ", "/", ">"})
#: An absolute http(s) or ftp URL with a host (relative links are resolved against no other): its scheme, its authority (after any slashes), its path (before a query or fragment).
_BASE_URL = re.compile(r"(?i)(https?|ftp):[/\\]*([^/\\?#]+)([^?#]*)")


@dataclass(frozen=True)
class _Base:
    """A document's base URL, split once: relative links are resolved against it by joining strings (urljoin splits
    the base again for each link, quadratic in its "/" segments: 20,000 links under a base of 20,000 took 3 s).
    Dot segments are left as written: the host, which the URI lists read, is the base's either way."""

    origin: str  # scheme://authority
    directory: str  # origin and the path up to its last "/"
    document: str  # origin and path (no query, no fragment)

    @classmethod
    def of(cls, href: str) -> "_Base | None":
        """The base of ``<base href="*href*">``: None unless an absolute URL with a host, of at most MAX_BASE characters."""
        href = _URL_BLANKS.sub("", href).strip()
        found = _BASE_URL.match(href) if len(href) <= MAX_BASE else None
        if found is None:
            return None
        scheme, authority, path = found.groups()
        origin = f"{scheme.lower()}://{authority}"
        path = "/" + path.replace("\\", "/").lstrip("/")  # http and https: a backslash is a slash to a browser
        return cls(origin, origin + path[:path.rfind("/") + 1], origin + path)

    def resolve(self, link: str) -> str:
        """*link* (relative: no scheme, no "//") as a browser resolves it against this base, dot segments aside."""
        link = _URL_BLANKS.sub("", link)
        if link[:1] in ("/", "\\"):
            return self.origin + "/" + link[1:]
        if link[:1] in ("?", "#", ""):
            return self.document + link
        return self.directory + link


def html_to_text(markup: str) -> tuple[str, list[str]]:
    """The visible text of an HTML document and its links (href, src), plus links written in its text (each once)."""
    found = _Links()
    text, _ = _html_parts(markup, found)
    return text, found.uris()


def _html_parts(markup: str, found: _Links) -> tuple[str, bool]:
    """:func:`html_to_text`, its links added to *found*, and whether it was cut.

    Only the first ``MAX_TAGS`` tags are parsed; the links written in the rest are
    found as in plain text (their ``href`` is the same text), and its text is
    added with its tags dropped (:func:`_unparsed_text`), so that padding a part
    with tags hides what follows from neither the URI lists nor the body rules.
    """
    markup, mark = _text_lt(markup)
    markup, rest = _first_tags(markup)
    parser = _HTMLText(mark, found)
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # noqa: BLE001 - HTMLParser is lenient, but be sure
        pass
    text = "".join(parser.parts)
    if mark:
        text = text.replace(mark, "<")
    text = _BLANKS.sub("\n\n", _SPACES.sub(" ", text)).strip()
    found.scan(text)
    if rest:
        found.unparsed = True
        found.scan(rest.replace(mark, "<") if mark else rest)
        text = f"{text}\n\n{_unparsed_text(rest, mark)}".strip()
    return text, bool(rest)


#: A tag, or a "<" that no ">" closes before the next "<" (one pass: no "<" starts a second scan of the text).
_TAG_OR_LT = re.compile(r"<[^<>]*>?")


def _unparsed_text(markup: str, mark: str) -> str:
    """The text of markup past ``MAX_TAGS`` as a reader sees most of it, in linear time: its tags dropped, its
    character references decoded, *mark* (:func:`_text_lt`) "<" again.  A script's or a style's content is kept
    (the parser's job, which this markup is too large for): more text for the body rules, never less."""
    text = _TAG_OR_LT.sub(" ", markup)
    if mark:
        text = text.replace(mark, "<")
    return _BLANKS.sub("\n\n", _SPACES.sub(" ", unescape(text))).strip()


def _first_tags(markup: str) -> tuple[str, str]:
    """*markup* up to its ``MAX_TAGS``-th "<" (after :func:`_text_lt`, each starts a tag), and the rest."""
    if markup.count("<") <= MAX_TAGS:
        return markup, ""
    cut = -1
    for _ in range(MAX_TAGS + 1):
        cut = markup.find("<", cut + 1)
    return markup[:cut], markup[cut:]


def _text_lt(markup: str) -> tuple[str, str]:
    """*markup* with each "<" that is text (``_TEXT_LT``) made a character the parser reads in one go
    with the text around it, and that character ("" when it is ``&lt;``).

    The parser gives the same text and links: that character is text, attribute
    value, name or tag name wherever a "<" of text is, it is mapped back to "<",
    and it ends no character reference a "<" would not (no named one holds it).
    The parser takes each "<" of text as a step of its own: 4 MB of "<" cost
    seven times what 4 MB of ordinary HTML does.
    """
    if "<" not in markup:
        return markup, ""
    for mark in _MARKS:
        if mark not in markup:
            return _TEXT_LT.sub(mark, markup), mark
    return _TEXT_LT.sub("&lt;", markup), ""  # the charrefs cost more (a call each), but the text is the same
