"""A message as a bounded set of tokens, for the classifier.

A token is a whitespace-separated word of 3 to 12 characters, lower-cased,
counted once per message, taken from three places: the header fields (as
they are, ``name:`` included: ``received:``, ``from:``), the undecoded
body (markup, ``href=`` attributes, entities and encodings as they were
sent tell a lot) and the decoded text of the text and HTML parts
(:func:`milterd.content.mimetext.extract`: words hidden in base64 or
quoted-printable).  Longer runs are dropped: base64 lines, long URLs and
hashes are noise that a classifier learns by heart.

Why so plain: on the corpus's training folders (5-fold cross-validation in
contiguous blocks, ``bench/learner_reference.py``), the earlier tokenizer
(regex words of the decoded text only, ``name:word`` header tokens, link
hosts and adjacent word pairs) flagged 1.64 % of ham at P ≥ 0.5 and caught
90.6 % of spam at 1 % of ham flagged; these plain words flag 0.42 % and catch
97.4 %.  Word pairs and prefixed header tokens add many correlated tokens,
which chi-squared combining counts as independent evidence.

The verdict headers milterd or other filters add (``X-Spam-*``,
``X-Virus-*``, ``Authentication-Results``) are left out: learning a filter's
own opinion would only reinforce it.

Everything is bounded whatever the input: at most :data:`MAX_INPUT` bytes of
the message are read (a 30 MB base64 attachment is cut, never decoded
whole), at most :data:`MAX_TEXT` characters of decoded text, and at most
:data:`MAX_TOKENS` distinct tokens are kept.  Each token is stored and looked
up as a signed 64-bit hash (:func:`token_hash`): fixed-size keys, and no mail
text in the model.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator

from ..content.mimetext import extract

#: Bytes of a message that are read at most (headers and body).
MAX_INPUT = 512 * 1024
#: Characters of decoded text that are tokenized at most.
MAX_TEXT = 200 * 1024
#: Distinct tokens kept per message at most (headers first, then body, then decoded text).
MAX_TOKENS = 10000
#: Bytes of the header section that are looked at.
MAX_HEADER_SECTION = 64 * 1024
#: Shortest and longest word that is a token.
MIN_WORD, MAX_WORD = 3, 12

#: Characters of text split into words at a time (at a whitespace): a bound on the lists made.
_PIECE = 16 * 1024
_SPACE = re.compile(r"\s")
_SKIPPED_PREFIXES = ("x-spam-", "x-virus-")
_SKIPPED = frozenset({"authentication-results"})


def token_hash(token: str) -> int:
    """The signed 64-bit hash under which *token* is counted."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


def _hashes(tokens: list[str]) -> list[int]:
    """:func:`token_hash` of each of *tokens*, in one loop (a call per token less)."""
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True) for token in tokens]


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


def words(text: str) -> Iterator[str]:
    """The lower-cased whitespace-separated words of *text* that are 3 to 12 characters long."""
    return itertools.chain.from_iterable(_word_lists(text))


def _word_lists(text: str) -> Iterator[list[str]]:
    """The words of *text*, a list for each piece of about :data:`_PIECE` characters cut at a whitespace:
    the words are those of the whole, and a piece's list is all that is made at a time."""
    start, size = 0, len(text)
    while start < size:
        end = start + _PIECE
        if end < size:
            space = _SPACE.search(text, end)
            end = space.start() if space else size
        yield _word_list(text[start:end])  # the whole text itself when it is one piece
        start = end


def _word_list(text: str) -> list[str]:
    # str.split's whitespace is the regex \s (str.isspace, every code point: tested), and ASCII
    # text lower-cased whole has the same words as word by word; elsewhere lower() may change a
    # word's length ("İ" becomes two characters), so the length is taken before it, word by word.
    if text.isascii():
        return [word for word in text.lower().split() if MIN_WORD <= len(word) <= MAX_WORD]
    return [word.lower() for word in text.split() if MIN_WORD <= len(word) <= MAX_WORD]


def header_text(fields: list[tuple[str, str]]) -> str:
    """The header fields as ``name: value`` lines, without the verdict headers of filters."""
    return "\n".join(f"{name}: {value}" for name, value in fields if name not in _SKIPPED and not name.startswith(_SKIPPED_PREFIXES))


def tokenize(raw: bytes) -> list[str]:
    """The distinct tokens of *raw* (a whole message), in first-seen order, bounded."""
    raw = raw[:MAX_INPUT]
    section, body = split_message(raw)
    found = extract(raw, MAX_TEXT)
    sources = (header_text(parse_headers(section)), body.decode("latin-1"), found.text[:MAX_TEXT])
    distinct = dict.fromkeys(itertools.chain.from_iterable(found for text in sources for found in _word_lists(text)))
    return list(itertools.islice(distinct, MAX_TOKENS))


def hashed_tokens(raw: bytes) -> list[int]:
    """The distinct token hashes of *raw* (what is learned and looked up)."""
    return list(dict.fromkeys(_hashes(tokenize(raw))))


#: A body line an mbox quoted (``>From `` in mboxo and mboxrd, ``>>From `` for ``>From `` in mboxrd).
_QUOTED_FROM = re.compile(rb"^>+(?=From )", re.MULTILINE)


def message_id_key(fields: list[tuple[str, str]]) -> str:
    """What names a message in :func:`message_digest`: its Message-ID, unfolded; without
    one, its Date and From (fields delivery leaves as they are, unlike Received or a
    tagged Subject), so that messages with no Message-ID and the same body are not one."""
    values = {name: " ".join(value.split()) for name, value in reversed(fields) if name in ("message-id", "date", "from")}
    if values.get("message-id"):
        return values["message-id"]
    return f"\0date:{values.get('date', '')}\0from:{values.get('from', '')}"


def message_digest(raw: bytes) -> str:
    """The digest under which a learned message is remembered: its Message-ID
    (:func:`message_id_key`) and body (line ends, trailing blanks and an mbox's
    ``>From`` quoting normalised), so that the copy in a mailbox after delivery,
    with headers added on the way, is the same message."""
    section, body = split_message(raw[:MAX_INPUT * 64])
    message_id = message_id_key(parse_headers(section))
    lines = _QUOTED_FROM.sub(b"", body.replace(b"\r\n", b"\n")).rstrip().split(b"\n")
    normalised = b"\n".join(line.rstrip() for line in lines)
    return hashlib.sha256(message_id.encode("utf-8", "replace") + b"\0" + normalised).hexdigest()
