"""Greylisting: defer the first attempt of an unknown triplet, accept the retry.

Two modes (``[greylist] mode``):

* ``triplet`` (classic, as postgrey and milter-greylist): at RCPT, every
  recipient whose (client network, sender, recipient) triplet has not passed
  yet is answered ``451 4.7.1 Greylisted, please try again in N seconds``; the
  other recipients of the same message go on.
* ``score`` (as Rspamd): nothing happens at RCPT; when the policy picks
  ``greylist`` from the ``[actions] greylist`` threshold, :meth:`on_verdict`
  defers the message at end of data unless its triplets waited long enough,
  in which case the threshold action below greylist applies instead.

Both skip trusted and authenticated clients (the pipeline does not call this
check for them), DNSWL-listed clients, the configured and stored whitelists,
auto-whitelisted client networks and the null sender to postmaster.  A store
that does not answer lets the recipient through (with GREYLIST_ERROR): the
message log's own ``[database] on_error`` decides whether the message waits.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy.exc import SQLAlchemyError

from .. import greylist as gl
from ..config import ConfigError
from ..model import Action, Envelope, Hit, Session, Verdict
from ..policy import decide
from ..store import StoreError, utcnow
from . import Check, Hits, Symbol

if TYPE_CHECKING:
    from ..services import Services

log = logging.getLogger("milterd")

#: How long the stored whitelist (``milterd greylist whitelist add``) is cached by a worker.
WHITELIST_TTL = 10.0


def greylist_reply(wait: float) -> str:
    """The SMTP reply of a greylisted recipient or message."""
    return f"451 4.7.1 Greylisted, please try again in {max(1, int(round(wait)))} seconds"


class Greylist(Check):
    """Greylisting with the state in the shared SQL store."""

    name: ClassVar[str] = "greylist"
    description: ClassVar[str] = "Greylisting of (client network, sender, recipient) triplets"
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("GREYLIST", 0.0, "The triplet is new or retried too early: deferred with 451 4.7.1"),
        Symbol("GREYLIST_PASSED", 0.0, "The triplet was retried after the greylisting delay and passed"),
        Symbol("GREYLIST_DEFERRED", 0.0, "Some recipients of this message were greylisted (the others were accepted)"),
        Symbol("GREYLIST_ERROR", 0.0, "The greylist store did not answer; the recipient was not greylisted"),
    )
    # Called for trusted and authenticated clients too, only to skip them: a
    # score-based greylist verdict must never stay on a message nobody retries.
    applies_to_trusted: ClassVar[bool] = True
    applies_to_authenticated: ClassVar[bool] = True
    order: ClassVar[int] = 900  # after the checks that may whitelist (DNSWL) at RCPT

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        config = services.config
        self.config = config.greylist
        if self.config.mode == "score" and config.actions.greylist is False:
            raise ConfigError(config.path or "milter.conf", "[greylist] mode", 'score mode needs a score in [actions] greylist')
        try:
            self.whitelist = gl.Whitelist.build(gl.config_entries(self.config))
        except ValueError as exc:  # the config validator already refuses these
            raise ConfigError(config.path or "milter.conf", "[greylist] whitelist", str(exc)) from None
        self._stored: tuple[float, gl.Whitelist] | None = None
        self._lock = threading.Lock()

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return services.config.greylist.enabled

    # --- hooks ------------------------------------------------------------------
    def on_rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Hits:
        if self.config.mode != "triplet":
            return ()
        if self._skip(session, envelope, recipient):
            return ()
        triplet = gl.make_triplet(session.client_addr, envelope.sender, recipient, self.config)
        try:
            judgement = gl.check_triplet(self.services.store.engine, triplet, self.config)
        except (SQLAlchemyError, StoreError, NotImplementedError) as exc:
            log.warning("greylist store unavailable, not greylisting %s: %s", triplet, exc)
            return (Hit("GREYLIST_ERROR", detail=str(exc)[:200]),)
        if judgement.greylisted:
            detail = f"{triplet} {judgement.kind}, retry in {int(judgement.wait)}s"
            envelope.state.setdefault(self.name, []).append(f"<{recipient}> {detail}")
            return (Hit("GREYLIST", detail=detail, action=Action.GREYLIST, reply=greylist_reply(judgement.wait)),)
        if judgement.kind == "pass":
            waited = int((utcnow() - judgement.first_seen).total_seconds()) if judgement.first_seen else 0
            return (Hit("GREYLIST_PASSED", detail=f"{triplet} after {waited}s"),)
        return ()

    def on_symbols(self, session: Session, envelope: Envelope, symbols: frozenset[str]) -> Hits:
        # Recipients refused at RCPT are not in the end-of-data log row: name them.
        deferred = envelope.state.get(self.name)
        if deferred:
            return (Hit("GREYLIST_DEFERRED", detail="; ".join(deferred)[:1000]),)
        return ()

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        if verdict.action != Action.GREYLIST or verdict.reply:
            return verdict  # not greylisting, or forced by some check with its own reply
        pending: list[tuple[gl.Triplet, gl.Judgement]] = []
        engine = None
        for recipient in envelope.recipients:
            if self._skip(session, envelope, recipient):
                continue
            triplet = gl.make_triplet(session.client_addr, envelope.sender, recipient, self.config)
            try:
                engine = engine or self.services.store.engine
                judgement = gl.check_triplet(engine, triplet, self.config)
            except (SQLAlchemyError, StoreError, NotImplementedError) as exc:
                log.warning("greylist store unavailable, not greylisting %s: %s", triplet, exc)
                continue
            if judgement.greylisted:
                pending.append((triplet, judgement))
        if pending:
            wait = max(j.wait for _, j in pending)
            detail = "; ".join(f"{t} {j.kind}" for t, j in pending)[:1000]
            return replace(
                verdict,
                reply=greylist_reply(wait),
                reason=f"{verdict.reason}; greylisted {detail}".lstrip("; "),
                symbols={**verdict.symbols, "GREYLIST": 0.0},
                details={**verdict.details, "GREYLIST": detail},
            )
        return self._below_greylist(session, envelope, verdict)

    # --- helpers ----------------------------------------------------------------
    def _below_greylist(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        """The verdict the policy gives without the greylist threshold (the retry passed)."""
        actions = self.services.config.actions.model_copy(update={"greylist": False})
        hits = [h for h in session.hits if h.action is None] + envelope.hits
        again = decide(hits, self.services.weight, actions, scored=True)
        return replace(
            again,
            symbols={**again.symbols, "GREYLIST_PASSED": 0.0},
            details={**again.details, "GREYLIST_PASSED": f"score {verdict.score:g}, retried after the greylisting delay"},
        )

    def _skip(self, session: Session, envelope: Envelope, recipient: str) -> str | None:
        """Why this recipient is not greylisted, or None when it is."""
        if session.trusted:
            return "trusted network"
        if session.authenticated:
            return "authenticated"
        sender = gl.normalise_sender(envelope.sender)
        if gl.is_postmaster_bounce(sender, recipient):
            return "null sender to postmaster"
        if any(h.symbol.startswith("DNSWL_") for h in session.hits):
            return "DNSWL"
        whitelist = self.whitelist.extend(self._stored_whitelist())
        entry = whitelist.client(session.client_addr, session.client_name) or whitelist.sender(sender) or whitelist.recipient(recipient)
        if entry:
            return f"whitelisted by {entry}"
        if self.config.auto_whitelist_after > 0:
            cached = session.state.get(self.name)
            if cached is None:
                cached = session.state[self.name] = self._auto_whitelisted(session)
            if cached:
                return "auto-whitelisted client"
        return None

    def _auto_whitelisted(self, session: Session) -> bool:
        network = gl.client_network(session.client_addr, self.config.netmask_v4, self.config.netmask_v6)
        try:
            engine = self.services.store.engine
            passes, last_seen = gl.client_state(engine, network)
            if passes >= self.config.auto_whitelist_after:
                if last_seen is None or (utcnow() - last_seen).total_seconds() >= gl.RENEW_INTERVAL:
                    gl.touch_client(engine, network)
                return True
        except (SQLAlchemyError, StoreError) as exc:
            log.warning("greylist store unavailable for client %s: %s", network, exc)
        return False

    def _stored_whitelist(self) -> gl.Whitelist:
        """The ``greylist_whitelist`` table, re-read at most every WHITELIST_TTL seconds."""
        now = time.monotonic()
        with self._lock:
            if self._stored is not None and now - self._stored[0] < WHITELIST_TTL:
                return self._stored[1]
        try:
            stored = gl.stored_whitelist(self.services.store.engine)
        except (SQLAlchemyError, StoreError) as exc:
            log.warning("cannot read the greylist whitelist: %s", exc)
            stored = self._stored[1] if self._stored else gl.Whitelist()
        with self._lock:
            self._stored = (now, stored)
        return stored


CHECKS = (Greylist,)
