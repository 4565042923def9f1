"""Greylisting: defer the first attempt of an unknown triplet, accept the retry.

Two modes (``[greylist] mode``):

* ``triplet`` (classic, as postgrey and milter-greylist): at RCPT, every
  recipient whose (client network, sender, recipient) triplet has not passed
  yet is answered ``451 4.7.1 Greylisted, please try again in N seconds``; the
  other recipients of the same message go on.  With ``defer_at = "data"``
  (milter-greylist's delayed greylisting) every recipient is accepted and
  its triplet judged and recorded as usual, and the whole message is
  answered 451 once, at DATA, after the writes are committed: Postfix counts
  each 4xx at RCPT as an error and drops the client at
  ``smtpd_hard_error_limit`` (20; 1 under stress), before the later
  recipients' triplets are even seen.
* ``score`` (as Rspamd): nothing happens at RCPT; when the policy picks
  ``greylist`` from the ``[actions] greylist`` threshold, :meth:`on_score_greylist`
  reads and records the message's triplets and tells the policy whether they
  must wait (451 at end of data) or waited long enough (the threshold action
  below greylist applies instead).

Both skip trusted and authenticated clients (the pipeline does not call this
check for them), DNSWL-listed clients, the configured and stored whitelists,
auto-whitelisted client networks and the null sender to postmaster.  A store
that does not answer (cannot be read, or cannot record a message's attempts)
follows ``[greylist] on_error``: ``accept`` lets the recipients through (with
GREYLIST_ERROR; the message log's own ``[database] on_error`` decides whether
the message waits), ``tempfail`` answers them :data:`STORE_DOWN_REPLY` (451
4.3.0) where greylisting would have deferred them: at RCPT, at DATA with
``defer_at = "data"`` (or when the attempts of recipients accepted at RCPT
cannot be recorded), at end of data in score mode (:meth:`on_score_greylist`
gives the policy that reply instead of a deferral).
Every "now" it judges by is the store's (:meth:`GreylistStore.now`): on a
PostgreSQL store that several MX hosts share, the database server's clock.

Bounded: each RCPT is decided from a read (one indexed SELECT for the first
recipient, then one SELECT of every triplet of the client network and sender,
kept for the transaction); the writes this plans (new triplets, attempts,
passes, renewals) wait in the envelope and go to the store in ONE transaction
per message, at DATA, or when the transaction ends without DATA (all its
recipients deferred: Postfix then sends ABORT or QUIT).  A message to 1,000
new recipients thus takes the store's writer once, not a thousand times,
and the other workers' log commits do not queue behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

from .. import greylist as gl
from ..config import ConfigError
from ..dns import fold_case
from ..message.model import Action, Envelope, Hit, Session, Verdict
from ..message.policy import GreylistStatus, greylist_reply
from ..message.reply import Reply
from ..store import StoreError
from . import Check, Hits, Symbol

if TYPE_CHECKING:
    from ..services import Services

log = logging.getLogger("milterd")

#: The weight at or below which a DNSWL listing exempts a client from greylisting: a trust level (DNSWL.org's LOW,
#: MED, HI; a list without codes, -2).  DNSWL.org's NONE (-0.1) lists hosts that also send spam (big ISPs' relays).
DNSWL_TRUST = -1.0

#: How long the stored whitelist (``milterd greylist whitelist add``) is cached by a worker.
WHITELIST_TTL = 10.0

#: After the store refused a message's writes, this worker greylists nobody for
#: so long (seconds): a store that reads but cannot write must not defer every
#: new triplet for ever, since none of them would be remembered.
WRITE_FAILURE_HOLD = 60.0

#: The answer, with ``[greylist] on_error = "tempfail"``, to a recipient (or message)
#: greylisting would judge while its store does not answer: a local failure (4.3.0),
#: as a spool or the attachment check that cannot be read.
STORE_DOWN_REPLY = Reply("451", "4.3.0", "Greylisting unavailable, please try again later")

#: Triplets of one client network and sender read at once for a transaction;
#: a sender with more is read recipient by recipient (bounded memory).
PREFETCH_ROWS = 2000


@dataclass
class Pending:
    """One transaction's greylisting: what was read, decided and is still to write."""

    #: The stored states of the client network and sender's triplets, by
    #: recipient, once read together (None: not read, or too many to keep).
    states: dict[str, gl.State] | None = None
    reads: int = 0
    decided: dict[gl.Triplet, gl.Judgement] = field(default_factory=dict)
    writes: dict[gl.Triplet, gl.Write] = field(default_factory=dict)
    #: The recipients deferred at RCPT (or, with ``defer_at = "data"``, to be
    #: deferred at DATA), for GREYLIST_DEFERRED.
    deferred: list[str] = field(default_factory=list)
    #: The longest wait of those recipients (seconds): the reply at DATA.
    wait: float = 0.0
    #: Why the store stopped answering in this transaction ('' while it answers).
    failed: str = ""
    #: The recipients answered STORE_DOWN_REPLY at RCPT (``on_error = "tempfail"``).
    tempfailed: list[str] = field(default_factory=list)
    #: The successful retries of this transaction (``count_client`` writes), held until its
    #: message is answered accepted as ham (:meth:`Greylist.on_abort`): a client that passes RCPT
    #: and quits, or whose message is refused, counts nothing toward the auto whitelist.
    counting: list[gl.Write] = field(default_factory=list)
    #: Why the store could not be read for the skip decisions (the stored whitelist, the client's
    #: auto-whitelisting; '' when it could): the recipients those might have exempted are judged as
    #: on_error says, a triplet that passed goes on.
    unread: str = ""
    #: The stored whitelist, or the client's auto-whitelisting, could not be read in this transaction
    #: (asked again in the next one, not for each recipient).
    whitelist_unread: bool = False
    client_unread: bool = False


@dataclass
class ClientState:
    """A session's client network as the auto whitelist sees it."""

    network: str
    whitelisted: bool = False
    #: Its last use is to be written back with the transaction's writes.
    touch: bool = False


class Greylist(Check):
    """Greylisting with the state in the shared SQL store."""

    name: ClassVar[str] = "greylist"
    description: ClassVar[str] = "Greylisting of (client network, sender, recipient) triplets"
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("GREYLIST", 0.0, "The triplet is new or retried too early: deferred with 451 4.7.1 (at RCPT, or the whole message at DATA with defer_at = data)"),
        Symbol("GREYLIST_PASSED", 0.0, "The triplet was retried after the greylisting delay and passed"),
        Symbol("GREYLIST_EXEMPT", 0.0, "Score mode: the score greylists, but every recipient is exempt (a whitelist, an auto-whitelisted or DNSWL-listed client)"),
        Symbol("GREYLIST_DEFERRED", 0.0, "Some recipients of this message were greylisted (the others were accepted; with defer_at = data the whole message waited)"),
        Symbol("GREYLIST_ERROR", 0.0, "The greylist store did not answer; the recipient was not greylisted ([greylist] on_error = tempfail answers 451 4.3.0)"),
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
        if self.config.retry_window <= self.config.delay:
            # A waiting triplet expires retry_window after its first attempt: no retry could
            # ever come after the delay and before that, so every new sender would wait for ever.
            raise ConfigError(config.path or "milter.conf", "[greylist] retry_window",
                              f"must be longer than delay ({self.config.retry_window:g}s <= {self.config.delay:g}s): no retry could ever pass")
        if self.config.expire < gl.MIN_EXPIRE:
            # Renewals are written at most every RENEW_INTERVAL: a shorter expire lapses while the
            # triplet is in use (0 forgets a pass at once), and no client could count up to the auto whitelist.
            raise ConfigError(config.path or "milter.conf", "[greylist] expire",
                              f"must be at least {gl.MIN_EXPIRE:g}s ({self.config.expire:g}s): a passed triplet is renewed "
                              f"at most every {gl.RENEW_INTERVAL:g}s, so one in use would expire and be greylisted again")
        try:
            self.whitelist = gl.Whitelist.build(gl.config_entries(self.config))
        except ValueError as exc:  # the config validator already refuses these
            raise ConfigError(config.path or "milter.conf", "[greylist] whitelist", str(exc)) from None
        #: When the stored whitelist was last read (or a read failed with a copy at hand), and the copy.
        self._stored: tuple[float, gl.Whitelist] | None = None
        self._lock = threading.Lock()
        #: When (monotonic) and why the store last refused a message's writes.
        self._write_failure: tuple[float, str] | None = None

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return services.config.greylist.enabled

    # --- hooks ------------------------------------------------------------------
    def on_rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Hits:
        if self.config.mode != "triplet":
            return ()
        if self._skip(session, envelope, recipient):
            return ()
        pending = self._pending(envelope)
        triplet = gl.make_triplet(session.client_addr, envelope.sender, recipient, self.config)
        judgement = pending.decided.get(triplet)  # the same recipient twice: the same answer
        if judgement is None:
            if not pending.decided and not pending.failed:
                pending.failed = self._recent_write_failure()
            if pending.failed:
                return (self._store_down(pending, recipient),)
            try:
                state = self._state(pending, triplet)
            except StoreError as exc:
                log.warning("%s: greylist store unavailable, %s %s: %s", envelope.queue_id or "NOQUEUE",
                            "tempfailing" if self.config.on_error == "tempfail" else "not greylisting", triplet, exc)
                pending.failed = str(exc)[:200]
                return (self._store_down(pending, recipient),)
            now = self.services.store.greylist.now()
            step = gl.plan(triplet, state, now, self.config)
            judgement = pending.decided[triplet] = step.judgement
            if step.write is not None:
                pending.writes[triplet] = step.write
        unread = pending.unread
        if unread and judgement.greylisted and self.config.on_error != "tempfail":
            # A whitelist could not be read, which might exempt this recipient: a store failure greylists nobody
            # (on_error = accept), and its attempt is not recorded.  With tempfail it is greylisted, as the
            # store's failure would defer it anyway; a triplet that passed goes on either way.
            pending.writes.pop(triplet, None)
            return (Hit("GREYLIST_ERROR", detail=unread),)
        if judgement.greylisted:
            detail = f"{triplet} {judgement.kind}, retry in {int(judgement.wait)}s"
            pending.deferred.append(f"<{recipient}> {detail}")
            if self.config.defer_at == "data":
                # Accepted here: on_data answers 451 for the whole message, once its writes are stored.
                pending.wait = max(pending.wait, judgement.wait)
                return (Hit("GREYLIST", detail=detail),)
            return (Hit("GREYLIST", detail=detail, action=Action.GREYLIST, reply=greylist_reply(judgement.wait)),)
        if judgement.kind == "pass":
            waited = int((self.services.store.greylist.now() - judgement.first_seen).total_seconds()) if judgement.first_seen else 0
            return (Hit("GREYLIST_PASSED", detail=f"{triplet} after {waited}s"),)
        return ()

    def on_data(self, session: Session, envelope: Envelope) -> Hits:
        # Every recipient is known: the transaction's writes, in one transaction.
        pending = envelope.check_state(self.name).get("pending")
        unrecorded = self._judged_writes(pending)
        error = self._flush(session, envelope)
        if isinstance(pending, Pending) and self.config.on_error == "tempfail":
            tempfail = self._tempfail_at_data(envelope, pending, error if unrecorded else "")
            if tempfail is not None:
                return (tempfail,)
        if self.config.mode != "triplet" or self.config.defer_at != "data" or not isinstance(pending, Pending) or not pending.deferred:
            return (Hit("GREYLIST_ERROR", detail=error),) if error else ()
        deferred = pending.deferred
        if error:
            # Nothing was stored: a 451 now would find the same triplets new at
            # every retry.  The message goes on, as when the store does not
            # answer at RCPT (and WRITE_FAILURE_HOLD greylists nobody for a while);
            # at end of data GREYLIST_DEFERRED must not name them.
            pending.deferred = []
            return (Hit("GREYLIST_ERROR", detail=f"{len(deferred)} greylisted recipient(s) not recorded, not deferred: {error}"[:200]),)
        greylisted = [(t, j) for t, j in pending.decided.items() if j.greylisted]
        detail = f"{len(greylisted)} of {len(set(envelope.recipients))} recipient(s) greylisted, the message deferred at DATA"
        return (
            Hit("GREYLIST_DEFERRED", detail=_deferred_detail(greylisted)),
            Hit("GREYLIST", detail=detail, action=Action.GREYLIST, reply=greylist_reply(pending.wait)),
        )

    def on_abort(self, session: Session, envelope: Envelope) -> None:
        # The transaction ended: after end of message (nothing left), or
        # without DATA because every recipient was deferred.
        self._flush(session, envelope)
        self._count_retry(envelope)

    def symbols_on_symbols(self) -> frozenset[str]:
        return frozenset({"GREYLIST_DEFERRED", "GREYLIST_ERROR"})

    def on_symbols(self, session: Session, envelope: Envelope, symbols: frozenset[str]) -> Hits:
        # Recipients refused at RCPT are not in the end-of-data log row: name them.
        pending = envelope.check_state(self.name).get("pending")
        hits: list[Hit] = []
        if isinstance(pending, Pending) and pending.deferred:
            hits.append(Hit("GREYLIST_DEFERRED", detail="; ".join(pending.deferred)[:1000]))
        if isinstance(pending, Pending) and pending.tempfailed:
            detail = f"{STORE_DOWN_REPLY.code} {STORE_DOWN_REPLY.xcode} at RCPT to {', '.join(pending.tempfailed)}: {pending.failed}"
            hits.append(Hit("GREYLIST_ERROR", detail=detail[:1000]))
        return tuple(hits)

    def on_score_greylist(self, session: Session, envelope: Envelope) -> GreylistStatus:
        triplets = [
            gl.make_triplet(session.client_addr, envelope.sender, recipient, self.config)
            for recipient in dict.fromkeys(envelope.recipients)
            if not self._skip(session, envelope, recipient)
        ]
        pending: list[tuple[gl.Triplet, gl.Judgement]] = []
        if triplets:
            unread = self._pending(envelope).unread
            try:
                store = self.services.store.greylist
                now = store.now()
                states = store.states(triplets[0].network, triplets[0].sender, [t.recipient for t in triplets]) or {}
                steps = [(t, gl.plan(t, states.get(t.recipient), now, self.config)) for t in triplets]
                if unread and self.config.on_error != "tempfail" and any(step.judgement.greylisted for _, step in steps):
                    # A whitelist could not be read, which might exempt them: not greylisted for a store failure
                    # (on_error = accept), their attempts not recorded (as at RCPT).
                    steps = [(t, step) for t, step in steps if not step.judgement.greylisted]
                    store.record([step.write for _, step in steps if step.write is not None], self._touch(session), now)
                    log.warning("greylist store unavailable, not greylisting %s: %s", triplets[0], unread)
                    return GreylistStatus(needed=False, error=unread)
                store.record([step.write for _, step in steps if step.write is not None], self._touch(session), now)
            except StoreError as exc:
                error = str(exc)[:200]
                if self.config.on_error == "tempfail":
                    log.warning("%s: greylist store unavailable, tempfailing %s: %s", envelope.queue_id or "NOQUEUE", triplets[0], exc)
                    return GreylistStatus(needed=False, error=error, reply=STORE_DOWN_REPLY)
                log.warning("greylist store unavailable, not greylisting %s: %s", triplets[0], exc)
                return GreylistStatus(needed=False, error=error)
            pending = [(t, step.judgement) for t, step in steps if step.judgement.greylisted]
        if pending:
            detail = "; ".join(f"{t} {j.kind}" for t, j in pending)[:1000]
            return GreylistStatus(needed=True, wait=max(j.wait for _, j in pending), detail=detail)
        return GreylistStatus(needed=False, exempt=not triplets)

    # --- helpers ----------------------------------------------------------------

    def _store_down(self, pending: Pending, recipient: str) -> Hit:
        """GREYLIST_ERROR for *recipient*, whom greylisting could not judge (``pending.failed`` says why).

        With ``on_error = "tempfail"`` it is answered STORE_DOWN_REPLY at RCPT, or, with
        ``defer_at = "data"``, accepted here and the message answered at DATA (:meth:`on_data`).
        """
        if self.config.on_error != "tempfail":
            return Hit("GREYLIST_ERROR", detail=pending.failed)
        if self.config.defer_at == "data":
            return Hit("GREYLIST_ERROR", detail=f"{pending.failed}; the message waits at DATA"[:200])
        pending.tempfailed.append(f"<{recipient}>")
        return Hit("GREYLIST_ERROR", detail=pending.failed, action=Action.TEMPFAIL, reply=STORE_DOWN_REPLY)

    def _count_retry(self, envelope: Envelope) -> None:
        """Count the transaction's successful retry toward the client's auto whitelist when its message was
        answered accepted, scored as ham (:func:`counts_retry`), once its log row was committed."""
        pending = envelope.check_state(self.name).get("pending")
        if not isinstance(pending, Pending) or not pending.counting:
            return
        counting, pending.counting = pending.counting, []
        if not counts_retry(envelope.answered):
            return
        latest = max(counting, key=lambda write: write.at)
        try:
            self.services.store.greylist.count_retry(latest)
        except StoreError as exc:
            log.warning("%s: cannot count a successful retry of client %s: %s", envelope.queue_id or "NOQUEUE", latest.triplet.network, exc)

    def _judged_writes(self, pending: object) -> bool:
        """Whether *pending* has attempts to record of recipients still in the message: every
        judged one with ``defer_at = "data"``, those not deferred at RCPT otherwise."""
        if not isinstance(pending, Pending):
            return False
        if self.config.defer_at == "data":
            return bool(pending.writes)
        return any(not judgement.greylisted for triplet in pending.writes if (judgement := pending.decided.get(triplet)) is not None)

    def _tempfail_at_data(self, envelope: Envelope, pending: Pending, unrecorded: str) -> Hit | None:
        """With ``on_error = "tempfail"``, the message's answer at DATA when the store failed it:
        recipients left unjudged for DATA (``defer_at = "data"``), or the attempts of
        recipients going on that could not be recorded (*unrecorded*: the error)."""
        if pending.failed and self.config.defer_at == "data" and self.config.mode == "triplet":
            why = f"greylist store unavailable, the message not judged: {pending.failed}"
        elif unrecorded:
            why = f"greylist store unavailable, the recipients' attempts not recorded: {unrecorded}"
        else:
            return None
        log.warning("%s: %s; tempfailing the message", envelope.queue_id or "NOQUEUE", why)
        if self.config.defer_at == "data":
            pending.deferred = []  # nobody was greylisted: GREYLIST_DEFERRED must not name them
        return Hit("GREYLIST_ERROR", detail=why[:200], action=Action.TEMPFAIL, reply=STORE_DOWN_REPLY)

    def _pending(self, envelope: Envelope) -> Pending:
        pending = envelope.check_state(self.name).get("pending")
        if not isinstance(pending, Pending):
            pending = envelope.check_state(self.name)["pending"] = Pending()
        return pending

    def _state(self, pending: Pending, triplet: gl.Triplet) -> gl.State | None:
        """The stored state of *triplet*: the first recipient is read alone (most
        messages have one); from the second on, every triplet of the client
        network and sender is read once and kept for the transaction."""
        if pending.states is not None:
            return pending.states.get(triplet.recipient)
        store = self.services.store.greylist
        pending.reads += 1
        if pending.reads == 2:
            pending.states = store.states(triplet.network, triplet.sender, limit=PREFETCH_ROWS)
            if pending.states is not None:
                return pending.states.get(triplet.recipient)
        return store.state(triplet)

    def _touch(self, session: Session) -> list[str]:
        """The client network whose last use is due to be written (taken: written once)."""
        client = session.check_state(self.name).get("client")
        if isinstance(client, ClientState) and client.touch:
            client.touch = False
            return [client.network]
        return []

    def _flush(self, session: Session, envelope: Envelope) -> str:
        """Write the transaction's planned writes in one transaction; the error, or ''."""
        pending = envelope.check_state(self.name).get("pending")
        writes = list(pending.writes.values()) if isinstance(pending, Pending) else []
        touch = self._touch(session)
        if not writes and not touch:
            return ""
        if isinstance(pending, Pending):
            pending.writes.clear()
            # Judged at RCPT: a successful retry counts once its message is answered accepted (on_abort).
            pending.counting.extend(write for write in writes if write.count_client)
            writes = [replace(write, count_client=False) if write.count_client else write for write in writes]
        try:
            self.services.store.greylist.record(writes, touch)
        except StoreError as exc:
            log.warning("%s: cannot record %d greylist attempt(s) of client %s (greylisting off for %gs): %s",
                        envelope.queue_id or "NOQUEUE", len(writes), session.client_addr, WRITE_FAILURE_HOLD, exc)
            self._write_failure = (time.monotonic(), str(exc)[:200])
            return str(exc)[:200]
        return ""

    def _recent_write_failure(self) -> str:
        """Why greylisting is held off after a failed write ('' when it is not)."""
        failure = self._write_failure
        if failure is None or time.monotonic() - failure[0] >= WRITE_FAILURE_HOLD:
            return ""
        return f"greylist writes failed {time.monotonic() - failure[0]:.0f}s ago: {failure[1]}"[:200]

    def _skip(self, session: Session, envelope: Envelope, recipient: str) -> str | None:
        """Why this recipient is not greylisted, or None when it is."""
        if session.trusted:
            return "trusted network"
        if session.authenticated:
            return "authenticated"
        sender = gl.normalise_sender(envelope.sender)
        if gl.is_postmaster_bounce(sender, recipient):
            return "null sender to postmaster"
        # At connect (delay_reject off) the DNSWL answer is a session hit, at MAIL (the default) an envelope one.
        trusted = [h.symbol for h in (*session.hits, *envelope.hits)
                   if h.symbol.startswith("DNSWL_") and (self.services.weight(h.symbol) if h.score is None else h.score) <= DNSWL_TRUST]
        if trusted:
            return f"DNSWL ({trusted[0]})"
        stored = self._stored_whitelist(envelope)
        whitelist = self.whitelist if stored is None else self.whitelist.extend(stored)
        # The sender as written too: "@fwd.example" whitelists an SRS forwarder's rewrites, "/^prvs=/" BATV senders.
        # Not the address an SRS rewrite names: anyone may write SRS0=…=partner.example=x@own.example.
        written = fold_case(envelope.sender.strip().strip("<>"))
        entry = (whitelist.client(session.client_addr_sent or session.client_addr, session.client_name) or whitelist.sender(gl.normalise_sender(envelope.sender, srs=False))
                 or whitelist.sender(written) or whitelist.recipient(recipient))
        if entry:
            return f"whitelisted by {entry}"
        if self.config.auto_whitelist_after > 0:
            client = self._client_state(session, envelope)
            if client is not None and client.whitelisted:
                return "auto-whitelisted client"
        return None

    def _client_state(self, session: Session, envelope: Envelope) -> ClientState | None:
        """Whether the session's client network is auto-whitelisted (read once a session): an entry unused
        for ``expire`` is not, purged or not.  None when the store could not say: the transaction's
        recipients are then judged as the store's failure says (``on_error``; the transaction's
        ``Pending.unread`` says why), and the next transaction asks again (one failure made every transaction of the session
        greylist an auto-whitelisted client)."""
        client = session.check_state(self.name).get("client")
        if isinstance(client, ClientState):
            return client
        pending = self._pending(envelope)
        if pending.client_unread:
            return None  # failed in this transaction: not asked again for each recipient
        client = ClientState(gl.client_network(session.client_addr, self.config.netmask_v4, self.config.netmask_v6))
        try:
            passes, last_seen = self.services.store.greylist.client_state(client.network)
        except StoreError as exc:
            log.warning("greylist store unavailable for client %s: %s", client.network, exc)
            pending.client_unread = True
            pending.unread = pending.unread or f"cannot read the auto-whitelisted clients: {exc}"[:200]
            return None
        session.check_state(self.name)["client"] = client
        now = self.services.store.greylist.now()
        if last_seen is not None and gl.auto_whitelisted(passes, last_seen, now, self.config):
            client.whitelisted = True
            # Renewed with the transaction's writes, at most every RENEW_INTERVAL.
            client.touch = (now - last_seen).total_seconds() >= gl.RENEW_INTERVAL
        return client

    def _stored_whitelist(self, envelope: Envelope) -> gl.Whitelist | None:
        """The ``greylist_whitelist`` table, re-read at most every WHITELIST_TTL seconds; while the store fails,
        the last copy read, kept for WHITELIST_TTL more.  None when no copy was ever read: the transaction's
        ``Pending.unread`` says why, its recipients that milter.conf does not whitelist are judged as on_error says
        (they were greylisted, the table taken as empty), and the next transaction asks again (a failure kept
        for WHITELIST_TTL changed greylisting for every transaction meanwhile)."""
        now = time.monotonic()
        with self._lock:
            if self._stored is not None and now - self._stored[0] < WHITELIST_TTL:
                return self._stored[1]
            previous = self._stored[1] if self._stored is not None else None
        pending = self._pending(envelope)
        if pending.whitelist_unread:
            return previous  # failed in this transaction: not asked again for each recipient
        try:
            stored = self.services.store.greylist.whitelist()
        except StoreError as exc:
            log.warning("cannot read the greylist whitelist: %s", exc)
            pending.whitelist_unread = True
            if previous is None:
                pending.unread = pending.unread or f"cannot read the greylist whitelist: {exc}"[:200]
                return None
            stored = previous
        with self._lock:
            self._stored = (now, stored)
        return stored


def counts_retry(answered: Verdict | None) -> bool:
    """Whether a message answered with *answered* counts its successful retry toward the auto whitelist: accepted
    and scored as ham.  Counted at RCPT, five RCPT-only probes an hour apart (nothing scanned) whitelisted a
    spammer's network; so did retried messages refused or tagged for their content, tempfailed when their log
    row could not be stored, and sent to spam_lovers (accepted unscored, whatever their content)."""
    return answered is not None and answered.action == Action.ACCEPT and answered.scored


def _deferred_detail(greylisted: list[tuple[gl.Triplet, gl.Judgement]], limit: int = 1000) -> str:
    """The recipients a message was deferred for at DATA, in at most *limit* characters:
    ``client=… from=<…>: <a@x> new, <b@x> early, … (+N more)``.  The client network
    and sender are the same for every triplet of a transaction, so they are named once."""
    if not greylisted:
        return ""
    first = greylisted[0][0]
    text = f"client={first.network} from=<{first.sender}>:"
    for shown, (triplet, judgement) in enumerate(greylisted):
        item = f" <{triplet.recipient}> {judgement.kind},"
        more = f" (+{len(greylisted) - shown} more)"
        if len(text) + len(item) + len(f" (+{len(greylisted)} more)") > limit:
            return (text.rstrip(",") + more)[:limit]
        text += item
    return text.rstrip(",")


CHECKS = (Greylist,)
