"""The tokenizer milterd shipped before the issue #13 follow-up (kept for bench/learner_reference.py's comparison).

Regex words (3 to 20 characters, a ``skip:`` length class for longer ones) of
the decoded text only, ``hn:`` header names, ``name:word`` tokens of the
headers, ``url:`` link hosts and ``bi:`` pairs of adjacent words.
"""

from __future__ import annotations

import itertools
import re
from email.header import decode_header, make_header
from urllib.parse import urlsplit

from milterd.learner.tokenizer import MAX_TEXT

_SKIPPED_PREFIXES = ("x-spam-", "x-virus-")
_SKIPPED = frozenset({"authentication-results"})
_WORD = re.compile(r"[^\W_]+(?:['.\-][^\W_]+)*|[$€£%!]+")
_HEADER_WORD = re.compile(r"[^\s,;:<>\"()\[\]]+")
_OTHER_WORD = re.compile(r"[^\s,;:<>\"()\[\]=]+")
#: Words kept per header for the ``name:word`` tokens of other headers.
MAX_HEADER_WORDS = 40
_WORD_HEADERS = ("subject", "from", "reply-to", "x-mailer", "user-agent", "content-type", "list-id", "precedence", "organization")


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


