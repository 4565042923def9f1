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
:data:`MAX_TOKENS` distinct tokens are kept, of them at most :data:`MAX_HEADER_TOKENS` of the header
section (a sender's header field of words must not crowd the body out).  Each token is stored and looked
up as a signed 64-bit hash (:func:`token_hash`): fixed-size keys, and no mail
text in the model.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator

from ..content.mimetext import extract
from ..message.policy import spam_verdict_field

#: Bytes of a message that are read at most (headers and body).
MAX_INPUT = 512 * 1024
#: Characters of decoded text that are tokenized at most.
MAX_TEXT = 200 * 1024
#: Distinct tokens kept per message at most (headers first, then body, then decoded text).
MAX_TOKENS = 10000
#: Of those, the header section's at most: 60 KB of words in one header field the sender wrote left no room for
#: the body (a spam scoring BAYES_999 fell to BAYES_80).  The largest of the training mail has 2,600.
MAX_HEADER_TOKENS = MAX_TOKENS // 2
#: Bytes of a message's normalised body that :func:`message_digest` hashes at most: a cut of the
#: normalised body falls at the same text in every copy (a cut of the bytes read fell elsewhere in a
#: mailbox's LF copy than in the milter's CRLF one, or behind the trace fields delivery adds).
MAX_DIGEST_INPUT = MAX_INPUT * 64
#: Bytes of a message that :func:`message_digest` reads at most: room for a CRLF copy of a body
#: :data:`MAX_DIGEST_INPUT` long and its headers.
MAX_DIGEST_READ = MAX_DIGEST_INPUT * 2 + 1024 * 1024
#: Bytes of the header section that are looked at.
MAX_HEADER_SECTION = 64 * 1024
#: Bytes of each of the fields a learned message is known by (Message-ID, Date, From) that are kept;
#: the digest looks for them in the whole header section.
MAX_KEY_FIELD = 16 * 1024
#: Bytes of a header line held while the digest reads it: the longest name of a field it keeps, and that much of its value.
_KEY_LINE = MAX_KEY_FIELD + 64
#: Shortest and longest word that is a token.
MIN_WORD, MAX_WORD = 3, 12

#: Characters of text split into words at a time (at a whitespace): a bound on the lists made.
_PIECE = 16 * 1024
_SPACE = re.compile(r"\s")
_SKIPPED_PREFIXES = ("x-virus-",)
_SKIPPED = frozenset({"authentication-results"})


def token_hash(token: str) -> int:
    """The signed 64-bit hash under which *token* is counted."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


def _hashes(tokens: list[str]) -> list[int]:
    """:func:`token_hash` of each of *tokens*, in one loop (a call per token less)."""
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True) for token in tokens]


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """The header section and the body of *raw*, split at its first blank line whatever the line ends
    (:data:`_BLANK_LINE`, as :func:`message_digest` splits): a CRLF blank line in the body of a file of LF
    lines was taken for the end of the header section, and the body's lines before it were lost."""
    found = _BLANK_LINE.search(raw)
    if found is None:
        return raw, b""
    return raw[:found.start()], raw[found.end():]


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
    return "\n".join(f"{name}: {value}" for name, value in fields
                     if name not in _SKIPPED and not name.startswith(_SKIPPED_PREFIXES) and not spam_verdict_field(name))


def tokenize(raw: bytes) -> list[str]:
    """The distinct tokens of *raw* (a whole message), in first-seen order, bounded."""
    raw = raw[:MAX_INPUT]
    section, body = split_message(raw)
    found = extract(raw, MAX_TEXT)
    headers = itertools.chain.from_iterable(_word_lists(header_text(parse_headers(section))))
    distinct = dict.fromkeys(itertools.islice(dict.fromkeys(headers), MAX_HEADER_TOKENS))
    for text in (body.decode("latin-1"), found.text[:MAX_TEXT]):
        for words in _word_lists(text):
            distinct.update(dict.fromkeys(words))
            if len(distinct) >= MAX_TOKENS:
                return list(itertools.islice(distinct, MAX_TOKENS))
    return list(distinct)


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
    with headers added on the way, is the same message.  The body starts after the
    first blank line, whatever the line ends: a mailbox's copy has LF headers and may
    have CRLF in its body (lines sent with a stray CR), where the first CRLF CRLF is
    not the end of the headers."""
    # Hashed in pieces (MessageDigest): normalising the body whole made a list of its lines,
    # 30 times the message's size for short lines (1 GB and 5 s for 30 MB of them).
    digest = MessageDigest()
    for start in range(0, min(len(raw), MAX_DIGEST_READ), _DIGEST_PIECE):
        digest.update(raw[start:start + _DIGEST_PIECE])
    return digest.hexdigest()


#: The blank line that ends the header section for :func:`message_digest`: LF, CRLF or mixed.
_BLANK_LINE = re.compile(rb"\n\r?\n")
#: Bytes of a message in memory hashed at a time by :func:`message_digest`.
_DIGEST_PIECE = 64 * 1024
#: Bytes of one body line held whole at most by :class:`MessageDigest`; a longer line is hashed as it comes.
_LINE_CAP = 64 * 1024
_NEWLINES = b"\n" * 65536
_FROM = b"From "


class _BodyHash:
    """The hash of a body normalised as :func:`message_digest` does, from its pieces: each line
    without its ``>From`` quoting and trailing whitespace (CR included), lines joined by ``\\n``,
    the empty lines at the end left out.  A line end is owed (``_owed``) until text follows it.
    A line longer than :data:`_LINE_CAP` is not held: its text is hashed as it comes, its
    trailing whitespace on a copy of the hash (``_space``) kept only if text follows on the line."""

    def __init__(self, prefix: bytes) -> None:
        self._hash = _CappedHash(prefix)
        self._owed = 0
        self._line = b""  # the current line, while it is short
        self._long = False
        self._undecided = False  # a long line's start ('>' * _quotes + _after) may yet be a quoted "From "
        self._quotes = 0
        self._after = b""
        self._space: _CappedHash | None = None  # the hash with the owed line ends and a long line's pending whitespace

    def update(self, data: bytes) -> None:
        """Hash the next piece of the body."""
        first = data.find(b"\n")
        if first < 0:
            self._add(data)
            return
        self._add(data[:first])
        self._end_line()
        last = data.rfind(b"\n")
        if last > first:
            self._whole_lines(data[first + 1:last])
        self._add(data[last + 1:])

    def hexdigest(self) -> str:
        """The digest of the body, which this ends (what is left unterminated is its last line)."""
        self._end_line()
        return self._hash.hexdigest()

    def _whole_lines(self, block: bytes) -> None:
        lines = [line.rstrip() for line in _QUOTED_FROM.sub(b"", block).split(b"\n")]
        last = next((at for at in range(len(lines) - 1, -1, -1) if lines[at]), -1)
        if last < 0:
            self._owed += len(lines)
            return
        self._feed_owed(self._hash, self._owed)
        self._hash.update(b"\n".join(lines[:last + 1]))
        self._owed = len(lines) - last

    def _add(self, piece: bytes) -> None:
        if not self._long:
            self._line += piece
            if len(self._line) <= _LINE_CAP:
                return
            piece, self._line = self._line, b""
            self._long, self._undecided = True, True
        if self._undecided:
            if not self._after:
                rest = piece.lstrip(b">")
                self._quotes += len(piece) - len(rest)
                piece = rest
                if not piece:
                    return
            start = self._after + piece
            if self._quotes and len(start) < len(_FROM) and _FROM.startswith(start):
                self._after = start
                return
            self._decide(quoted=bool(self._quotes) and start.startswith(_FROM))
            piece = start
        self._text(piece)

    def _decide(self, quoted: bool) -> None:
        """Settle a long line's leading '>': dropped when they quote a "From ", else text."""
        quotes, self._quotes, self._after, self._undecided = self._quotes, 0, b"", False
        while quotes and not quoted:
            self._text(b">" * min(quotes, _LINE_CAP))
            quotes -= min(quotes, _LINE_CAP)

    def _text(self, piece: bytes) -> None:
        """A piece of a long line, its start settled."""
        text = piece.rstrip()
        if text:
            if self._space is not None:
                self._hash, self._space = self._space, None
            else:
                self._feed_owed(self._hash, self._owed)
            self._owed = 0
            self._hash.update(text)
        if len(text) < len(piece):
            if self._space is None:
                self._space = self._hash.copy()
                self._feed_owed(self._space, self._owed)
            self._space.update(piece[len(text):])

    def _finish_long(self) -> None:
        if self._undecided:
            after = self._after
            self._decide(quoted=False)
            self._text(after)
        self._space = None

    def _end_line(self) -> None:
        if self._long:
            self._finish_long()
            self._long = False
        elif text := _QUOTED_FROM.sub(b"", self._line).rstrip():
            self._feed_owed(self._hash, self._owed)
            self._owed = 0
            self._hash.update(text)
        self._line = b""
        self._owed += 1

    @staticmethod
    def _feed_owed(target: _CappedHash, count: int) -> None:
        while count > 0:
            target.update(_NEWLINES[:count])
            count -= len(_NEWLINES)


class _CappedHash:
    """SHA-256 of the first :data:`MAX_DIGEST_INPUT` bytes fed after its prefix (a normalised body)."""

    def __init__(self, prefix: bytes = b"", hashed: "hashlib._Hash | None" = None, room: int | None = None) -> None:
        self._hash = hashed if hashed is not None else hashlib.sha256(prefix)
        self._room = MAX_DIGEST_INPUT if room is None else room

    def update(self, data: bytes) -> None:
        if self._room > 0 and data:
            self._hash.update(data[:self._room])
            self._room -= min(len(data), self._room)

    def copy(self) -> "_CappedHash":
        return _CappedHash(hashed=self._hash.copy(), room=self._room)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _KeyFields:
    """The fields :func:`message_id_key` reads (Message-ID, Date, From), gathered from a header
    section given piece by piece, however long: each kept to :data:`MAX_KEY_FIELD` bytes, the rest
    of the section never held.  Cutting the section at a byte count instead named the same message
    two ways: a Message-ID near the cut fell inside it in a mailbox's LF copy and outside it in the
    milter's CRLF copy, or behind the headers delivery adds."""

    _WANTED = frozenset({"message-id", "date", "from"})

    def __init__(self) -> None:
        self._line = bytearray()  # the current line's first bytes (a name and MAX_KEY_FIELD of value)
        self._current: str | None = None  # the wanted field the lines go on
        self._started = False  # a field began
        self._kept: dict[str, bytearray] = {}

    def feed(self, data: bytes) -> None:
        """Take the next piece of the header section."""
        lines = data.split(b"\n")
        for piece in lines[:-1]:
            self._keep(piece)
            self._end_line()
        self._keep(lines[-1])

    def fields(self) -> list[tuple[str, str]]:
        """The fields gathered, as :func:`parse_headers` gives them (the first of each name only)."""
        if self._line:
            self._end_line()
        return [(name, value.decode("utf-8", "replace").strip()) for name, value in self._kept.items()]

    def _keep(self, piece: bytes) -> None:
        room = _KEY_LINE - len(self._line)
        if room > 0:
            self._line += piece[:room]

    def _end_line(self) -> None:
        line = bytes(self._line).rstrip(b"\r")
        self._line.clear()
        if line[:1] in (b" ", b"\t") and self._started:
            if self._current is not None:
                kept = self._kept[self._current]
                kept += (b" " + line.strip())[:MAX_KEY_FIELD - len(kept)]
        elif b":" in line and not line.startswith(b"From "):
            self._started = True  # a blank-led line before any field is a field of its own, as parse_headers reads it
            name, _, value = line.partition(b":")
            key = name.decode("utf-8", "replace").strip().lower()  # str's strip, as parse_headers reads a name (NBSP, U+2028 too)
            self._current = key if key in self._WANTED and key not in self._kept else None
            if self._current is not None:
                self._kept[key] = bytearray(value.strip()[:MAX_KEY_FIELD])


class MessageDigest:
    """:func:`message_digest` of a message given piece by piece (``update``), in bounded memory:
    of the header section only the fields it reads are kept (:class:`_KeyFields`), the body is
    hashed as it comes.  The header section ends at the first blank line of the first
    :data:`MAX_DIGEST_READ` bytes (:data:`_BLANK_LINE`, whatever the line ends)."""

    def __init__(self) -> None:
        self._fields = _KeyFields()
        self._seen = 0
        self._tail = b""  # the last bytes seen: a blank line split between two pieces
        self._body: _BodyHash | None = None

    def update(self, chunk: bytes) -> None:
        """Take the next piece of the message."""
        chunk = chunk[:MAX_DIGEST_READ - self._seen]
        if not chunk:
            return
        if self._body is not None:
            self._seen += len(chunk)
            self._body.update(chunk)
            return
        window = self._tail + chunk
        self._seen += len(chunk)
        found = _BLANK_LINE.search(window)
        if found is None:
            self._fields.feed(chunk)
            self._tail = window[-2:]
            return
        # The header section ends with the line end before the blank line (fed already if in the tail).
        self._fields.feed(chunk[:max(found.start() + 1 - len(self._tail), 0)])
        self._start_body(window[found.end():])

    def hexdigest(self) -> str:
        """The digest of the message, which this ends."""
        if self._body is None:
            return hashlib.sha256(self._prefix()).hexdigest()
        return self._body.hexdigest()

    def _start_body(self, start: bytes) -> None:
        self._body = _BodyHash(self._prefix())
        self._body.update(start)

    def _prefix(self) -> bytes:
        return message_id_key(self._fields.fields()).encode("utf-8", "replace") + b"\0"


def message_digest_stream(chunks: Iterable[bytes]) -> str:
    """:func:`message_digest` of the message made of *chunks*, never holding it whole (see :class:`MessageDigest`)."""
    digest = MessageDigest()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
