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
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import time
from typing import TYPE_CHECKING, ClassVar

from ..model import Action, Envelope, Hit, Session
from ..scanners import ScannerError
from ..scanners.spamd import SpamdClient
from . import Check, Hits, Symbol

if TYPE_CHECKING:
    from ..config import SpamdSection
    from ..services import Services

log = logging.getLogger("milterd")

SPAMASSASSIN = "SPAMASSASSIN"
SKIPPED = "SPAMD_SKIPPED_SIZE"
ERROR = "SPAMD_ERROR"
TEMPFAIL_REPLY = "451 4.7.1 Spam scanner unavailable, please try again later"


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


def spamd_user(setting: str, envelope: Envelope) -> str:
    """The ``User:`` to send: fixed, the first recipient for ``"@recipient"``, or none."""
    if setting == "@recipient":
        return envelope.recipients[0] if envelope.recipients else ""
    return setting


class SpamAssassinCheck(Check):
    """Spam scoring with SpamAssassin's spamd (SPAMC/1.5 SYMBOLS)."""

    name: ClassVar[str] = "spamassassin"
    description: ClassVar[str] = "Spam scoring with SpamAssassin's spamd"
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol(SPAMASSASSIN, 0.0, "SpamAssassin's verdict: scored with SpamAssassin's own score, its rules in the detail"),
        Symbol(SKIPPED, 0.0, "Message larger than [spamd] max_size: not sent to spamd"),
        Symbol(ERROR, 0.0, "spamd unreachable, too slow or in error: not scored ([spamd] on_error = tempfail answers 451)"),
    )
    order: ClassVar[int] = 210

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.options: "SpamdSection" = services.config.spamd
        self.client = SpamdClient(self.options.address, timeout=self.options.timeout)
        self.hostname = services.config.hostname
        # Instance attributes shadow the class defaults the pipeline reads.
        self.applies_to_trusted = self.applies_to_authenticated = self.options.scan_trusted  # type: ignore[misc]

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return services.config.spamd.enabled

    def eom_tier(self) -> int:
        return 1 if self.options.after_clamav else 0

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        received = received_header(session, envelope, self.hostname)
        size = len(received) + envelope.size
        if size > self.options.max_size:
            return [Hit(SKIPPED, detail=f"size {size} > {self.options.max_size}")]
        user = spamd_user(self.options.user, envelope)
        started = time.monotonic()
        try:
            result = self.client.check(itertools.chain([received], envelope.message_chunks()), size, user=user)
        except ScannerError as exc:
            log.warning("spamassassin: %s", exc)
            if self.options.on_error == "tempfail":
                return [Hit(ERROR, detail=str(exc)[:200], action=Action.TEMPFAIL, reply=TEMPFAIL_REPLY)]
            return [Hit(ERROR, detail=str(exc)[:200])]
        finally:
            ended = time.monotonic()
            log.debug("%s: spamassassin eom scan start=%.6f end=%.6f ms=%.1f", envelope.queue_id or "NOQUEUE", started, ended, (ended - started) * 1000)
        return [Hit(SPAMASSASSIN, detail=",".join(result.rules), score=result.score)]


def _clean(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in "\r\n").strip()


CHECKS = (SpamAssassinCheck,)
