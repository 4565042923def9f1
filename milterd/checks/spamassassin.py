"""SpamAssassin: the spooled message goes to spamd at end of message.

spamd needs the length before the message (``Content-length``), so it is
sent whole at end of message, streamed from the spool, while clamd's verdict
is awaited in another thread.  As spamass-milter does, a ``Received:`` header
for the current hop (client name and address, HELO, our host, queue id) is
prepended: the message is judged as it will be delivered, so SpamAssassin's
network and relay rules see the client.

SpamAssassin's result becomes one symbol, ``SPAMASSASSIN``, whose score is
SpamAssassin's score and whose detail lists its rules: milterd's thresholds
decide, and ``milterd log`` shows the rules in ``details``.

A retried message is not scanned twice: each worker keeps spamd's results
(``[spamd] cache_size``, ``cache_ttl``) by :func:`scan_key`, a digest of what
spamd's answer depends on: the message as received, the client's address,
name and HELO, authentication, the envelope and the spamd user.  The
``Received:`` header's queue id and date are left out (a retry gets a new
queue id; Postfix's own ``Received:`` for the hop is not among the headers a
milter sees, so it cannot differ either).  A reused result adds
``SPAMD_CACHED``.  Errors are never kept.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import time
from typing import TYPE_CHECKING, ClassVar

from ..message.model import Envelope, Hit, Session, SpoolError, verdict_hits
from ..message.policy import score_hits
from ..message.reply import Reply
from ..scanners import ScannerError
from ..scanners.cache import ResultCache, content_key
from ..scanners.spamd import SpamdClient, SpamdResult
from . import Hits, Symbol
from .bayes import SKIPPED_CONFIDENT, confident, spoke, tiers_enabled
from .scanning import ScannerCheck, scan_error_hit

if TYPE_CHECKING:
    from ..config import SpamdSection
    from ..services import Services

log = logging.getLogger("milterd")

SPAMASSASSIN = "SPAMASSASSIN"
SKIPPED = "SPAMD_SKIPPED_SIZE"
ERROR = "SPAMD_ERROR"
CACHED = "SPAMD_CACHED"
SCANNER_DOWN_REPLY = Reply.tempfail("Spam scanner unavailable, please try again later")


def received_header(session: Session, envelope: Envelope, hostname: str, now: float | None = None) -> bytes:
    """The ``Received:`` header Postfix will add for this hop, in Postfix's own format."""
    helo = _clean(session.helo) or "unknown"
    name = _clean(session.client_name) or "unknown"
    addr = _clean(session.client_addr) or "unknown"
    if ":" in addr and not addr.startswith("IPv6:"):
        addr = "IPv6:" + addr
    protocol = "ESMTPA" if session.authenticated else "ESMTP"
    lines = [f"Received: from {helo} ({name} [{addr}])", f"\tby {_clean(hostname)} (Postfix) with {protocol} id {_clean(envelope.queue_id) or 'unknown'}"]
    if len(envelope.recipients) == 1:
        lines.append(f"\tfor <{_clean(envelope.recipients[0])}>; {email.utils.formatdate(now, localtime=False)}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{email.utils.formatdate(now, localtime=False)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def scan_key(session: Session, envelope: Envelope, user: str) -> bytes:
    """The cache key of a scan: everything spamd's answer depends on except the queue id and the time."""
    fields = [session.client_addr, session.client_name, session.helo, session.auth_user, user, envelope.sender, *envelope.recipients]
    return content_key(fields, envelope.message_chunks())


def spamd_user(setting: str, envelope: Envelope) -> str:
    """The ``User:`` to send: fixed, the first recipient for ``"@recipient"``, or none."""
    if setting == "@recipient":
        return envelope.recipients[0] if envelope.recipients else ""
    return setting


class SpamAssassinCheck(ScannerCheck):
    """Spam scoring with SpamAssassin's spamd (SPAMC/1.5 SYMBOLS)."""

    name: ClassVar[str] = "spamassassin"
    section: ClassVar[str] = "spamd"
    description: ClassVar[str] = "Spam scoring with SpamAssassin's spamd"
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol(SPAMASSASSIN, 0.0, "SpamAssassin's verdict: scored with SpamAssassin's own score, its rules in the detail"),
        Symbol(SKIPPED, 0.0, "Message larger than [spamd] max_size: not sent to spamd"),
        Symbol(ERROR, 0.0, "spamd unreachable, too slow or in error: not scored ([spamd] on_error = tempfail answers 451)"),
        Symbol(CACHED, 0.0, "The same message from the same client was scanned recently (a retry): spamd's result was reused (detail: its age)"),
        Symbol(SKIPPED_CONFIDENT, 0.0, "Tiers ([learner] skip_spamd_above/below): the cheap checks and the classifier were confident, spamd was not asked (detail: the score before spamd)"),
    )
    order: ClassVar[int] = 210

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.options: "SpamdSection" = services.config.spamd
        self.client = SpamdClient(self.options.address, timeout=self.options.timeout)
        self.hostname = services.config.hostname
        self.cache: ResultCache[SpamdResult] = ResultCache(self.options.cache_size, self.options.cache_ttl)

    def eom_tier(self) -> int:
        if tiers_enabled(self.services.config.learner):
            return 2  # after the classifier, whose verdict may make spamd unnecessary
        return 1 if self.options.after_clamav else 0

    def confident_score(self, session: Session, envelope: Envelope) -> float | None:
        """The score before spamd when the tiers let spamd be skipped, else None."""
        learner = self.services.config.learner
        if not tiers_enabled(learner):
            return None
        # Counted as the verdict counts it, each symbol once: a DNS list hit returned at CONNECT and again at
        # MAIL FROM ([checks.dnsbl] delay_reject = false) had counted twice, and skipped spamd below the bound.
        score = round(sum(score_hits(verdict_hits(session, envelope), self.services.weight)[0].values()), 2)
        bucket = spoke(h.symbol for h in envelope.hits)
        return score if confident(score, bucket, learner.skip_spamd_above, learner.skip_spamd_below) else None

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        before = self.confident_score(session, envelope)
        if before is not None:
            return [Hit(SKIPPED_CONFIDENT, detail=f"score {before:g} before spamd")]
        # max_size is of the message as received (as clamav's): the Received: header we prepend is not the sender's.
        if envelope.size > self.options.max_size:
            return [Hit(SKIPPED, detail=f"size {envelope.size} > {self.options.max_size}")]
        received = received_header(session, envelope, self.hostname)
        size = len(received) + envelope.size
        user = spamd_user(self.options.user, envelope)
        try:
            key = scan_key(session, envelope, user) if self.cache.enabled else b""
        except SpoolError:
            raise  # this machine's failure, not spamd's: the pipeline answers 451 (never on_error)
        except Exception as exc:  # noqa: BLE001 - the key reads the spool: unreadable, the message is unscanned and follows on_error
            log.exception("spamassassin: scan failed")
            return [scan_error_hit(ERROR, f"scan failed: {exc!r}", self.options.on_error, SCANNER_DOWN_REPLY)]
        cached = self.cache.get(key) if key else None
        if cached is not None:
            result, age = cached
            log.debug("%s: spamassassin result reused (scanned %.0f s ago)", envelope.queue_id or "NOQUEUE", age)
            return [Hit(SPAMASSASSIN, detail=",".join(result.rules), score=result.score), Hit(CACHED, detail=f"age {age:.0f}s")]
        started = time.monotonic()
        try:
            result = self.client.check(itertools.chain([received], envelope.message_chunks()), size, user=user)
        except ScannerError as exc:
            log.warning("spamassassin: %s", exc)
            return [scan_error_hit(ERROR, str(exc), self.options.on_error, SCANNER_DOWN_REPLY)]
        except SpoolError:
            raise  # the spool unreadable while streaming it: not spamd's failure
        except Exception as exc:  # noqa: BLE001 - an unscanned message follows on_error, not the pipeline's CHECK_ERROR
            log.exception("spamassassin: scan failed")
            return [scan_error_hit(ERROR, f"scan failed: {exc!r}", self.options.on_error, SCANNER_DOWN_REPLY)]
        finally:
            ended = time.monotonic()
            log.debug("%s: spamassassin eom scan start=%.6f end=%.6f ms=%.1f", envelope.queue_id or "NOQUEUE", started, ended, (ended - started) * 1000)
        if key:
            self.cache.put(key, result)
        return [Hit(SPAMASSASSIN, detail=",".join(result.rules), score=result.score)]


def _clean(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in "\r\n").strip()


CHECKS = (SpamAssassinCheck,)
