"""A message as a bounded set of tokens, for the classifier.

Tokens come from the headers (the names of all of them; the words of the
Subject, From, Reply-To, Content-Type, mailer and list headers; the
Message-ID's domain; ``name:word`` tokens of every other header, Received
included: the path a message took tells a lot) and from the decoded text and
HTML parts (:func:`milterd.content.mimetext.extract`): lower-cased words of 3 to 20
characters, a ``skip:`` token for longer runs (SpamBayes' trick: the length
class of a long word tells, the word does not), the host names of links, and
``bi:`` pairs of adjacent words.
The verdict headers milterd or other filters add (``X-Spam-*``, ``X-Virus-*``,
``Authentication-Results``) are left out: learning a filter's own opinion
would only reinforce it.  (On the corpus's training folders, split in two,
the other headers' words raised spam caught at 1 % of ham flagged from 84.8 %
to 90.8 %, and the word pairs to 93.6 %: bench/RESULTS.md.)

Everything is bounded whatever the input: at most :data:`MAX_INPUT` bytes of
the message are parsed (a 30 MB base64 attachment is cut, never decoded
whole), at most :data:`MAX_TEXT` characters of text are read, and at most
:data:`MAX_TOKENS` distinct tokens are kept.  Each token is stored and looked
up as a signed 64-bit hash (:func:`token_hash`): fixed-size keys, and no mail
text in the model.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from email.header import decode_header, make_header
from urllib.parse import urlsplit

from ..content.mimetext import extract

#: Bytes of a message that are parsed at most (headers and body).
MAX_INPUT = 512 * 1024
#: Characters of decoded text that are tokenized at most.
MAX_TEXT = 200 * 1024
#: Distinct tokens kept per message at most (words first, then word pairs).
MAX_TOKENS = 10000
#: Bytes of the header section that are looked at.
MAX_HEADER_SECTION = 64 * 1024

_WORD = re.compile(r"[^\W_]+(?:['.\-][^\W_]+)*|[$€£%!]+")
_HEADER_WORD = re.compile(r"[^\s,;:<>\"()\[\]]+")
_OTHER_WORD = re.compile(r"[^\s,;:<>\"()\[\]=]+")
_SKIPPED_PREFIXES = ("x-spam-", "x-virus-")
_SKIPPED = frozenset({"authentication-results"})
#: Words kept per header for the ``name:word`` tokens of other headers.
MAX_HEADER_WORDS = 40
_WORD_HEADERS = ("subject", "from", "reply-to", "x-mailer", "user-agent", "content-type", "list-id", "precedence", "organization")


def token_hash(token: str) -> int:
    """The signed 64-bit hash under which *token* is counted."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """The header section and the body of *raw* (either line ending)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(separator)
        if at >= 0:
            return raw[:at], raw[at + len(separator):]
    return raw, b""


def parse_headers(section: bytes) -> list[tuple[str, str]]:
    """(lower-cased name, unfolded value) of each header field of *section*."""
    fields: list[tuple[str, str]] = []
    text = section[:MAX_HEADER_SECTION].decode("utf-8", "replace").replace("\r\n", "\n")
    for line in text.split("\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif ":" in line and not line.startswith("From "):
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - broken encoded-words are common in spam: use the raw text
        return value


def header_tokens(fields: list[tuple[str, str]]) -> list[str]:
    """Tokens of the header fields that tell spam from ham."""
    tokens: list[str] = []
    for name, value in fields:
        if name in _SKIPPED or name.startswith(_SKIPPED_PREFIXES):
            continue
        tokens.append("hn:" + name[:40])
        if name in _WORD_HEADERS:
            words = _WORD.findall(_decoded(value).lower()) if name == "subject" else _HEADER_WORD.findall(value.lower())
            tokens.extend(f"{name}:{w[:40]}" for w in words[:50])
        elif name == "message-id":
            domain = value.rpartition("@")[2].strip("<> ").lower()
            tokens.append("mid:" + (domain[:60] or "none"))
        else:
            if name in ("to", "cc"):
                tokens.append(f"{name}:count:{min(value.count('@'), 10)}")
            tokens.extend(f"{name[:20]}:{w[:40]}" for w in _OTHER_WORD.findall(value.lower())[:MAX_HEADER_WORDS])
    return tokens


def text_tokens(text: str) -> list[str]:
    """Tokens of decoded body text: words, and the length class of over-long ones."""
    tokens: list[str] = []
    for word in _WORD.findall(text[:MAX_TEXT].lower()):
        if len(word) < 3 and word[0] not in "$€£%!":
            continue
        if len(word) > 20:
            tokens.append(f"skip:{word[0]} {len(word) // 10 * 10}")
        else:
            tokens.append(word)
    return tokens


def pair_tokens(words: list[str]) -> list[str]:
    """``bi:`` tokens of adjacent body words: "click here" tells more than "click" and "here"."""
    return [f"bi:{first} {second}" for first, second in itertools.pairwise(words)]


def uri_tokens(uris: list[str]) -> list[str]:
    """``url:`` tokens: each link's host and its parent domains."""
    tokens: list[str] = []
    for uri in uris:
        try:
            host = (urlsplit(uri).hostname or "")[:200]
        except ValueError:
            continue
        labels = host.split(".")
        for start in range(max(0, len(labels) - 3), len(labels) - 1):
            tokens.append("url:" + ".".join(labels[start:]))
    return tokens


def tokenize(raw: bytes) -> list[str]:
    """The distinct tokens of *raw* (a whole message), in first-seen order, bounded."""
    raw = raw[:MAX_INPUT]
    section, _ = split_message(raw)
    found = extract(raw, MAX_TEXT)
    words = text_tokens(found.text)
    tokens = header_tokens(parse_headers(section)) + words + uri_tokens(found.uris) + pair_tokens(words)
    return list(dict.fromkeys(tokens))[:MAX_TOKENS]


def hashed_tokens(raw: bytes) -> list[int]:
    """The distinct token hashes of *raw* (what is learned and looked up)."""
    return list(dict.fromkeys(token_hash(t) for t in tokenize(raw)))


def message_digest(raw: bytes) -> str:
    """The digest under which a learned message is remembered: its Message-ID and
    body (line ends and trailing blanks normalised), so that the copy in a
    mailbox after delivery, with headers added on the way, is the same message."""
    section, body = split_message(raw[:MAX_INPUT * 64])
    message_id = next((v for n, v in parse_headers(section) if n == "message-id"), "")
    lines = body.replace(b"\r\n", b"\n").rstrip().split(b"\n")
    normalised = b"\n".join(line.rstrip() for line in lines)
    return hashlib.sha256(message_id.encode("utf-8", "replace") + b"\0" + normalised).hexdigest()
