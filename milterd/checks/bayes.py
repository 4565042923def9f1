"""milterd's own classifier: ``BAYES_00`` … ``BAYES_999`` from token counts learned at this site.

At end of message the first ``[learner] max_size`` bytes of the message are
tokenized (:mod:`milterd.learner.tokenizer`), the tokens' learned counts are
read from the shared store in one batched query (most of them from the
worker's cache, :class:`~milterd.learner.cache.TokenCache`) and combined
(:mod:`milterd.learner.classifier`) into a spam probability, emitted as
SpamAssassin's bucket symbols.  The classifier abstains (no symbol) until
``[learner] min_spam`` spam and ``min_ham`` ham messages are learned, and on a
message with no clue (no token learned, or none far enough from 0.5), as
SpamAssassin's Bayes does: BAYES_50, which scores, would be an opinion it has
not got.  A store that does not answer gives ``BAYES_ERROR`` (score 0): the message is judged
without the classifier, never deferred for it.

Auto-learning (``[learner] autolearn_spam`` / ``autolearn_ham``, off by
default) happens after the verdict, from the score without the classifier's
own symbol (learning from one's own opinion would only reinforce it) and without
the points of what the message carries (:data:`CARRIED`: a virus, a banned file
say nothing of its words).  For the same reason nothing is auto-learned when the
tiers skipped spamd (``SPAMD_SKIPPED_CONFIDENT``): the classifier's own bucket
decided that spamd's evidence, which might have contradicted it, was not
gathered; nor when spamd was not heard (down, in error, the message over its
size), a check failed or time ran out (:data:`UNJUDGED`), nor, with spamd on,
when it was never asked (a hit refused the message first); nor when spamd's
verdict holds a rule SpamAssassin keeps out of its own auto-learning because the sender sets it off (GTUBE, a welcomelisted From: :func:`steered_by_sender`).
A message is auto-learned as ham only when the policy
accepted it: a low score does not make ham of a virus from a whitelisted sender,
nor of a message tempfailed or accepted unscanned (:data:`UNSCANNED`).  A message
learned before, with either label, is never moved: a copy of one an administrator
released as ham stays ham, whatever it scores.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Iterable

from ..clock import utcnow
from ..learner.cache import TokenCache
from ..learner.classifier import BUCKETS, Counts, Score, classify, trained
from ..learner.tokenizer import MAX_DIGEST_READ, MessageDigest, hashed_tokens
from ..message.model import Action, Envelope, Hit, Session, Verdict
from ..store.errors import StoreError
from ..store.learner import LearnerStore
from . import Check, Hits, Symbol

if TYPE_CHECKING:
    from ..config import LearnerSection
    from ..services import Services

log = logging.getLogger("milterd")

ERROR = "BAYES_ERROR"
SKIPPED_CONFIDENT = "SPAMD_SKIPPED_CONFIDENT"
#: The symbol of spamd's verdict (checks.spamassassin's, which imports this module): a message without it was not
#: judged by spamd (spamd switched off), so no check the sender does not control said it is ham.
SPAMD_VERDICT = "SPAMASSASSIN"
AUTOLEARN = "BAYES_AUTOLEARN"

#: Default scores of the buckets, chosen on the training folders only by bench/learner_refit.py's second
#: rule (fixed before its run): a forward-chaining cut (each later block judged by a model of the earlier
#: ones, as later mail is) of milterd, all of it, with spamd; modest scores in SpamAssassin's sense
#: (BAYES_60 <= 1.5, steps between neighbouring buckets <= 1.0, the ham side <= 0, at most 4.0); the most
#: spam at add_header (5) with ham flagged <= 0.5 %.  The classifier alone never reaches [actions]
#: add_header; it decides together with the other checks and spamd (bench/RESULTS.md).
SCORES: dict[str, float] = {
    "BAYES_00": -2.0,
    "BAYES_05": -0.5,
    "BAYES_20": 0.0,
    "BAYES_40": 0.0,
    "BAYES_50": 1.0,
    "BAYES_60": 1.5,
    "BAYES_80": 2.5,
    "BAYES_95": 3.5,
    "BAYES_99": 3.5,
    "BAYES_999": 4.0,
}

_RANGES = {symbol: (lowest, BUCKETS[i - 1][0] if i else 1.0) for i, (lowest, symbol) in enumerate(BUCKETS)}


def bayes_symbols() -> tuple[Symbol, ...]:
    """The bucket symbols with their default scores."""
    return tuple(
        Symbol(name, SCORES[name], f"milterd's classifier: spam probability {_RANGES[name][0]:g} to {_RANGES[name][1]:g}")
        for name in sorted(SCORES)
    )


def tiers_enabled(options: "LearnerSection") -> bool:
    """Whether spamd may be skipped for confident messages (then it runs after the classifier)."""
    return options.enabled and (options.skip_spamd_above is not False or options.skip_spamd_below is not False)


def spoke(symbols: Iterable[str]) -> bool:
    """Whether the classifier gave one of these *symbols*: a BAYES_* bucket, not BAYES_ERROR (what :func:`confident` asks)."""
    return any(name.startswith("BAYES_") and name != ERROR for name in symbols)


def confident(score: float, spoke: bool, above: float | bool, below: float | bool) -> bool:
    """Whether a message scoring *score* before spamd is confident enough to skip spamd:
    only when the classifier spoke (a BAYES_* bucket), and beyond one of the bounds."""
    if not spoke:
        return False
    return (above is not False and score >= float(above)) or (below is not False and score <= float(below))


def autolearn_label(score: float, own: float, spam_at: float | bool, ham_at: float | bool) -> str | None:
    """Whether a message scoring *score* (*own* of it from the classifier and :data:`CARRIED` symbols, left out)
    is auto-learned, and as what."""
    other = score - own
    if spam_at is not False and other >= float(spam_at):
        return "spam"
    if ham_at is not False and other <= float(ham_at):
        return "ham"
    return None


#: Symbols of a message that a check which might have contradicted either label did not judge:
#: spamd not asked (the tiers, its size) or not heard (down, in error), a check that failed or ran
#: out of time.  Its score lacks that evidence, so it is learned neither way.
UNJUDGED = frozenset({SKIPPED_CONFIDENT, "SPAMD_ERROR", "SPAMD_SKIPPED_SIZE", "CHECK_ERROR", "EOM_TIMEOUT"})
#: The start of the names of symbols for what a message carries, not what its words say: a virus, a banned or
#: disguised file.  Anyone can attach the EICAR test file to the site's own words (ClamAV names it a virus):
#: their points are left out of the score auto-learning compares.
CARRIED = ("CLAMAV_", "ATTACH_")
#: Symbols of a message not scanned for viruses (clamd down with on_error = "accept", or its
#: size): a virus scan only ever adds, so its absence contradicts ham only.
UNSCANNED = frozenset({"CLAMAV_ERROR", "CLAMAV_SKIPPED_SIZE"})


#: spamd's rules SpamAssassin's own auto-learning ignores (``tflags … noautolearn`` in SpamAssassin 4.0's
#: rules, and ALL_TRUSTED) because the sender can set them off: GTUBE (a test string anyone can paste, 1,000
#: points), the welcomelists and blocklists (a forged From, a link to a listed host, a listed Subject: ±100),
#: the AWL/TxRep reputations, the DNS lists' "blocked" answers, SHORTCIRCUIT.
NOAUTOLEARN_RULES = frozenset({
    "GTUBE", "AWL", "TXREP", "ALL_TRUSTED", "SHORTCIRCUIT", "ENV_AND_HDR_SPF_MATCH", "DCC_REPUT_00_12",
    "RCVD_IN_DNSWL_BLOCKED", "SURBL_BLOCKED", "URIBL_BLOCKED",
})
#: The welcomelist and blocklist rules by their names' start (USER_IN_WELCOMELIST, URI_HOST_IN_BLOCKLIST, …).
_NOAUTOLEARN_PREFIXES = ("USER_IN_", "URI_HOST_IN_", "SUBJECT_IN_")


def steered_by_sender(verdict: Verdict) -> str:
    """The first of spamd's rules on *verdict* that SpamAssassin keeps out of auto-learning
    (:data:`NOAUTOLEARN_RULES`, ``USER_IN_*``, ``URI_HOST_IN_*``, ``SUBJECT_IN_*``), or ""."""
    rules = verdict.details.get(SPAMD_VERDICT, "")
    return next((rule for rule in rules.split(",") if rule in NOAUTOLEARN_RULES or rule.startswith(_NOAUTOLEARN_PREFIXES)), "") if rules else ""


def autolearn_allowed(label: str, verdict: Verdict, spamd: bool = True) -> bool:
    """Whether a message whose score says *label* may be auto-learned from *verdict*: not when a
    check that might have contradicted the label did not judge it (:data:`UNJUDGED`; for ham,
    :data:`UNSCANNED` too: spamd down with its default on_error = "accept" left spam with only its
    SPF, DKIM and DMARC passes, below autolearn_ham), nor when spamd's score rests on a rule the
    sender can set off (:func:`steered_by_sender`: GTUBE learned the site's ham words as spam, a forged
    welcomelisted From learned spam as ham), and as ham only when accepted and judged by spamd (spamd switched off,
    a spammer's own domain passing SPF, DKIM and DMARC was learned as ham), and as spam, with *spamd* on, only when
    spamd judged it (a hit that refused the message first left spamd unasked and unrecorded: the site's words with
    EICAR and an .exe attached were learned as spam).  Never from a message that was not scored (its recipients
    are spam_lovers: an abuse mailbox's reports quote the spam they report)."""
    if not verdict.scored or not UNJUDGED.isdisjoint(verdict.symbols) or steered_by_sender(verdict):
        return False
    judged = SPAMD_VERDICT in verdict.symbols
    if label == "spam":
        return judged or not spamd
    return judged and verdict.action == Action.ACCEPT and UNSCANNED.isdisjoint(verdict.symbols)


class BayesCheck(Check):
    """Token classifier learned from the site's mail, shared through the SQL store."""

    name: ClassVar[str] = "bayes"
    description: ClassVar[str] = "milterd's own token classifier, learned with milterd learn and shared through the store"
    symbols: ClassVar[tuple[Symbol, ...]] = bayes_symbols() + (
        Symbol(ERROR, 0.0, "The classifier's store did not answer: the message was judged without it"),
    )
    order: ClassVar[int] = 205

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.options: "LearnerSection" = services.config.learner
        self.cache = TokenCache(self.options.cache_size, self.options.cache_ttl)
        self._totals: tuple[float, Counts] | None = None
        self._refreshing = False  # a connection is reading the totals
        self._lock = threading.Lock()
        self._repository: LearnerStore | None = None

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return services.config.learner.enabled

    @property
    def repository(self) -> LearnerStore:
        """The classifier's tables in this process's store (a worker opens its own after the fork)."""
        engine = self.services.store.engine
        if self._repository is None or self._repository.engine is not engine:
            self._repository = LearnerStore(engine)
        return self._repository

    def totals(self, now: float) -> Counts:
        """How many spam and ham messages are learned (cached for ``cache_ttl``).

        Asked without the lock, as the tokens are (:meth:`score`): with the store slow to answer, each of a worker's
        messages queued behind the others' query, the fifth waiting five busy_timeouts, past end of message's time.
        While one connection refreshes expired totals the others classify with the old ones.
        """
        with self._lock:
            cached = self._totals
            if cached is not None and (now - cached[0] < self.options.cache_ttl or self._refreshing):
                return cached[1]
            self._refreshing = True
        try:
            fresh = self.repository.totals()
        finally:
            with self._lock:
                self._refreshing = False
        with self._lock:
            if self._totals is None or self._totals[0] <= now:
                self._totals = (now, fresh)
        return fresh

    def speaks(self, now: float) -> bool:
        """Whether enough is learned for the classifier to score anything."""
        return trained(self.totals(now), self.options.min_spam, self.options.min_ham)

    def score(self, raw: bytes, now: float) -> Score | None:
        """The classification of *raw*, or None while too little is learned."""
        totals = self.totals(now)
        if not trained(totals, self.options.min_spam, self.options.min_ham):
            return None
        tokens = hashed_tokens(raw)
        with self._lock:
            counts, missing = self.cache.cached(tokens, now)
            mark = self.cache.mark()
        if missing:
            # Asked without the lock: the worker's other connections classify from the cache meanwhile
            # (after each ttl every message misses; with the lock held they queued behind one query).
            fetched = self.repository.counts(missing)
            with self._lock:
                counts.update(self.cache.store(missing, fetched, mark))
        return classify(tokens, counts, totals)

    def _start(self, envelope: Envelope) -> bytes:
        """The first ``max_size`` bytes of the message: what is classified, and learned (here and by milterd learn)."""
        return (envelope.header_bytes + envelope.spool.read(self.options.max_size))[: self.options.max_size]

    @staticmethod
    def _digest(envelope: Envelope) -> str:
        """:func:`~milterd.learner.tokenizer.message_digest` of the message, read from its spool
        piece by piece: the message (tens of MB, perhaps on disk) is never held whole."""
        digest, seen = MessageDigest(), 0
        for chunk in envelope.message_chunks():
            digest.update(chunk)
            seen += len(chunk)
            if seen >= MAX_DIGEST_READ:  # what the digest reads at most
                break
        return digest.hexdigest()

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        now = time.monotonic()
        try:
            if not self.speaks(now):  # untrained (the default): the message is not read
                return []
            result = self.score(self._start(envelope), now)
        except StoreError as exc:
            log.warning("bayes: %s", exc)
            return [Hit(ERROR, detail=str(exc)[:200])]
        if result is None or not result.clues:
            return []
        return [Hit(result.symbol, detail=f"p={result.probability:.4f} clues={result.clues}")]

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        if self.options.autolearn_spam is False and self.options.autolearn_ham is False:
            return verdict
        own = sum(score for name, score in verdict.symbols.items() if name in SCORES or name.startswith(CARRIED))
        label = autolearn_label(verdict.score, own, self.options.autolearn_spam, self.options.autolearn_ham)
        if label is None or not autolearn_allowed(label, verdict, self.services.config.spamd.enabled):
            return verdict
        try:
            tokens = hashed_tokens(self._start(envelope))
            # move=False: a message learned before (perhaps released as ham by an administrator) keeps its label.
            outcome = self.repository.learn(self._digest(envelope), tokens, "spam" if label == "spam" else "ham", move=False)
        except StoreError as exc:
            log.warning("bayes: auto-learn failed: %s", exc)
            return verdict
        with self._lock:
            self.cache.forget(tokens)
            self._totals = None
        details = dict(verdict.details)
        details[AUTOLEARN] = f"{label}: {outcome}"
        log.info("%s: bayes auto-learned as %s (%s)", envelope.queue_id or "NOQUEUE", label, outcome)
        return replace(verdict, details=details)


def expiry_job(services: "Services") -> str:
    """The maintenance job: rare old tokens, emptied tokens and the model's excess go, then the
    learned-message digests beyond ``max_learned`` (their counts stay)."""
    options = services.config.learner
    older_than = utcnow() - dt.timedelta(seconds=options.token_expiry)
    repository = LearnerStore(services.store.engine)
    deleted = repository.expire(older_than, options.expiry_rare, options.max_tokens)
    dropped = repository.drop_learned(options.max_learned)
    done = [f"{deleted} tokens expired"] if deleted else []
    if dropped:
        done.append(f"{dropped} learned-message digests dropped")
    return ", ".join(done)


CHECKS = (BayesCheck,)
