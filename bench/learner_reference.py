"""A minimal reference classifier, and k-fold cross-validation on the training folders only.

Issue #13's corpus protocol allows choosing settings on the training folders
(``spam-1``, ``easy-ham-1``, first half of ``hard-ham-1``) and nothing else.
This module never opens the evaluation folders.  It compares, on the same
folds:

* ``reference``: plain whitespace words of the raw message (headers and body,
  undecoded), 3 to 12 characters, lower-cased, one count per message,
  Robinson/Fisher chi-squared with SpamBayes' defaults;
* ``milterd``: milterd's own tokenizer and :mod:`milterd.learner.classifier`
  (the shipped code), and variants of its settings.

Learning and classifying are in memory (a ``Counter`` per class), so that
many variants run in minutes; ``bench/learner_eval.py`` measures the shipped
code path through the store.

Two ways of cutting the training folders, both printed: ``5-fold`` (contiguous
blocks by file name, each classified by a model learned on the four others)
and ``half`` (learn the first half by file name, classify the second, like
``bench/learner_eval.py --tune``).

Usage: ``nice -n 10 .venv/bin/python -m bench.learner_reference [--folds 5] [--tokenizers NAME…] [--settings NAME…]``
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import learner_previous as previous
from bench.corpus import fetch, to_smtp
from bench.learner_eval import CACHE, split
from milterd.content.mimetext import extract
from milterd.learner import classifier
from milterd.learner import tokenizer as tk
from milterd.learner.tokenizer import tokenize

Tokenizer = Callable[[bytes], set[str]]


def reference_tokens(raw: bytes) -> set[str]:
    """The reference tokenizer: whitespace-separated words of the raw message, 3 to 12 characters."""
    return {w for w in raw.decode("latin-1").lower().split() if 3 <= len(w) <= 12}


def milterd_tokens(raw: bytes) -> set[str]:
    """milterd's shipped tokenizer."""
    return set(tokenize(raw))


@dataclass(frozen=True)
class Settings:
    """The statistics constants of a Robinson/Fisher classifier."""

    strength: float = 0.45
    unknown: float = 0.5
    min_distance: float = 0.1
    max_clues: int = 150


def probability(tokens: set[str], spam: Counter[str], ham: Counter[str], n_spam: int, n_ham: int, settings: Settings) -> float:
    """Robinson/Fisher chi-squared spam probability of one message (the textbook formulas)."""
    clues: list[float] = []
    for token in tokens:
        s, h = spam.get(token, 0), ham.get(token, 0)
        n = s + h
        if n == 0:
            f = settings.unknown
        else:
            sr, hr = s / n_spam, h / n_ham
            p = sr / (sr + hr)
            f = (settings.strength * settings.unknown + n * p) / (settings.strength + n)
        if abs(f - 0.5) >= settings.min_distance:
            clues.append(f)
    clues.sort(key=lambda p: -abs(p - 0.5))
    clues = clues[: settings.max_clues]
    if not clues:
        return 0.5
    clues = [min(max(p, 1e-6), 1 - 1e-6) for p in clues]
    hs = classifier.chi2q(-2.0 * sum(math.log(p) for p in clues), 2 * len(clues))
    ss = classifier.chi2q(-2.0 * sum(math.log(1.0 - p) for p in clues), 2 * len(clues))
    return (1.0 + (1.0 - ss) - (1.0 - hs)) / 2.0


def folds(items: Sequence[tuple[str, set[str]]], k: int, forward: bool = False) -> list[tuple[list[int], list[int]]]:
    """(learn, test) index lists of k folds, each a contiguous block (by file name, roughly by time) of
    every label, so that near-duplicates sent together mostly fall in one fold.  *forward*: learn only
    the blocks before the tested one (as mail arrives; k - 1 rounds)."""
    size = Counter(label for label, _ in items)
    position: Counter[str] = Counter()
    fold_of: list[int] = []
    for label, _ in items:
        fold_of.append(min(position[label] * k // size[label], k - 1))
        position[label] += 1
    rounds = range(1, k) if forward else range(k)
    return [([i for i, f in enumerate(fold_of) if (f < j if forward else f != j)], [i for i, f in enumerate(fold_of) if f == j]) for j in rounds]


def cross_validate(items: Sequence[tuple[str, set[str]]], k: int, settings: Settings, forward: bool = False) -> list[tuple[str, float]]:
    """(label, probability) of every message, each classified by a model learned on the other folds."""
    scored: list[tuple[str, float]] = []
    for learn, test in folds(items, k, forward):
        spam: Counter[str] = Counter()
        ham: Counter[str] = Counter()
        n_spam = n_ham = 0
        for i in learn:
            label, tokens = items[i]
            if label == "spam":
                spam.update(tokens)
                n_spam += 1
            else:
                ham.update(tokens)
                n_ham += 1
        for i in test:
            label, tokens = items[i]
            scored.append((label, probability(tokens, spam, ham, n_spam, n_ham, settings)))
    return scored


def summary(scored: Sequence[tuple[str, float]]) -> str:
    """Spam caught / ham flagged at P >= 0.5, 0.9, 0.99, and spam caught at the best threshold with <= 1 % ham flagged."""
    spams = [p for label, p in scored if label == "spam"]
    hams = sorted((p for label, p in scored if label != "spam"), reverse=True)
    hard = [p for label, p in scored if label == "hard"]
    parts = []
    for t in (0.5, 0.9, 0.99):
        parts.append(f"P>={t}: {100 * sum(p >= t for p in spams) / len(spams):.1f}% / {100 * sum(p >= t for p in hams) / len(hams):.2f}%")
    allowed = hams[int(0.01 * len(hams))]  # the threshold just above the 1 % most spammy ham
    caught = 100 * sum(p > allowed for p in spams) / len(spams)
    unsure = 100 * sum(0.4 <= p < 0.6 for p in spams) / len(spams)
    parts.append(f"at 1% ham: {caught:.1f}%")
    parts.append(f"spam unsure: {unsure:.1f}%")
    parts.append(f"hard ham >=0.5: {100 * sum(p >= 0.5 for p in hard) / max(len(hard), 1):.1f}%")
    return "; ".join(parts)


def training_items(tokenizer: Tokenizer) -> list[tuple[str, set[str]]]:
    """(label, tokens) of every training message (never the evaluation folders)."""
    train, _ = split(fetch(CACHE))
    return [(label, tokenizer(to_smtp(path.read_bytes()))) for label, paths in train.items() for path in paths]


def variant(headers: str, pairs: bool, uris: bool = True, raw_body: bool = False) -> Tokenizer:
    """The tokenizer milterd shipped before (regex words of decoded text, prefixed header words, link
    hosts, word pairs), with parts switched: *headers* "none", "few" (names, the word headers,
    Message-ID domain), "all" (shipped); word *pairs*; link *uris*; *raw_body* adds the reference's
    whitespace words of the undecoded body."""

    def tokens(raw: bytes) -> set[str]:
        raw = raw[: tk.MAX_INPUT]
        section, body = tk.split_message(raw)
        found = extract(raw, tk.MAX_TEXT)
        words = previous.text_tokens(found.text)
        out: list[str] = []
        if headers != "none":
            fields = tk.parse_headers(section)
            if headers == "few":
                fields = [(n, v) for n, v in fields if n in previous._WORD_HEADERS or n == "message-id"]
            out += previous.header_tokens(fields)
            if headers == "few":
                out += ["hn:" + n[:40] for n, _ in tk.parse_headers(section)]
        out += words
        if uris:
            out += previous.uri_tokens(found.uris)
        if pairs:
            out += previous.pair_tokens(words)
        if raw_body:
            out += ["raw:" + w for w in body.decode("latin-1").lower().split() if 3 <= len(w) <= 12]
        return set(list(dict.fromkeys(out))[: tk.MAX_TOKENS])

    return tokens


def plain(shortest: int, longest: int, skip: bool = False) -> Tokenizer:
    """milterd's shipped tokenizer with other word lengths; *skip*: a length-class token for longer words."""
    pattern = re.compile(r"(?<!\S)\S+")

    def tokens(raw: bytes) -> set[str]:
        raw = raw[: tk.MAX_INPUT]
        section, body = tk.split_message(raw)
        sources = (tk.header_text(tk.parse_headers(section)), body.decode("latin-1"), extract(raw, tk.MAX_TEXT).text)
        out: set[str] = set()
        for text in sources:
            for match in pattern.finditer(text):
                word = match.group().lower()
                if shortest <= len(word) <= longest:
                    out.add(word)
                elif skip and len(word) > longest:
                    out.add(f"skip:{word[0]} {len(word) // 10 * 10}")
        return out

    return tokens


TOKENIZERS: dict[str, Tokenizer] = {
    "reference": reference_tokens,
    "milterd": milterd_tokens,
    "previous": variant("all", True),
    "words": variant("none", False),
    "words+pairs": variant("none", True),
    "few": variant("few", False),
    "few+pairs": variant("few", True),
    "all": variant("all", False),
    "all+pairs": variant("all", True),
    "ref-body": lambda raw: {w for w in tk.split_message(raw)[1].decode("latin-1").lower().split() if 3 <= len(w) <= 12},
    "ref-headers": lambda raw: {w for w in tk.split_message(raw)[0].decode("latin-1").lower().split() if 3 <= len(w) <= 12},
    "ref+decoded": lambda raw: reference_tokens(raw) | {w for w in extract(raw, tk.MAX_TEXT).text.lower().split() if 3 <= len(w) <= 12},
    "ref+decoded+urls": lambda raw: reference_tokens(raw) | {w for w in extract(raw, tk.MAX_TEXT).text.lower().split() if 3 <= len(w) <= 12} | set(previous.uri_tokens(extract(raw, tk.MAX_TEXT).uris)),
    "ref20": lambda raw: {w for w in raw.decode("latin-1").lower().split() if 3 <= len(w) <= 20},
    "ref-nolower": lambda raw: {w for w in raw.decode("latin-1").split() if 3 <= len(w) <= 12},
    "w3-10": plain(3, 10),
    "w3-15": plain(3, 15),
    "w2-12": plain(2, 12),
    "w3-12+skip": plain(3, 12, skip=True),
    "few+raw": variant("few", False, raw_body=True),
    "all+raw": variant("all", False, raw_body=True),
    "words+raw": variant("none", False, raw_body=True),
}


#: The statistics variants compared (SpamBayes' defaults are milterd's shipped ones; "sa" is SpamAssassin's Bayes).
SETTINGS: dict[str, Settings] = {
    "spambayes": Settings(),
    "sa": Settings(0.16, 0.538, 0.346, 150),
    "clues50": Settings(max_clues=50),
    "clues30": Settings(max_clues=30),
    "s0.1": Settings(strength=0.1),
    "s1": Settings(strength=1.0),
    "x0.55": Settings(unknown=0.55),
    "dist0.3": Settings(min_distance=0.3),
}


def main() -> None:
    """Cross-validate the reference and milterd's tokenizers under each settings variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tokenizers", nargs="*", default=["reference", "milterd"], choices=list(TOKENIZERS))
    parser.add_argument("--settings", nargs="*", default=["spambayes"], choices=list(SETTINGS))
    args = parser.parse_args()
    variants = {name: SETTINGS[name] for name in args.settings}
    for name in args.tokenizers:
        started = time.process_time()
        items = training_items(TOKENIZERS[name])
        cost = time.process_time() - started
        for vname, settings in variants.items():
            print(f"{name:>12} {vname:>10} ({len(items)} msgs, tokenize {1000 * cost / len(items):.2f} ms/msg)", flush=True)
            print(f"    {args.folds}-fold:         {summary(cross_validate(items, args.folds, settings))}", flush=True)
            print(f"    half:          {summary(cross_validate(items, 2, settings, forward=True))}", flush=True)


if __name__ == "__main__":
    main()
