"""The pipeline: runs the checks at each SMTP stage and decides at end of message.

It knows nothing of the milter protocol: the adapter (``adapter.py``) feeds it
from pymilter's callbacks and ``milterd check`` feeds it from a file, so both
decide the same way.  Every stage method returns either None (go on) or a
:class:`Decision` for the adapter to carry out.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from typing import Callable

from .. import metrics
from ..addresses import client_forms, client_networks
from ..checks import Check, Hits, Stage
from ..checks.headers import HeaderLimits
from ..config import Config
from ..content.headertext import decoded
from ..logs import Repeats, summary_line
from ..services import Services
from ..store import MessageRecord, StoreError
from ..store.quarantine import QuarantineWrite
from ..text import cut
from .model import Action, Decision, Envelope, HeaderEdit, Hit, Session, Spool, SpoolError, Verdict, verdict_hits
from .policy import EOM_TIMEOUT, GreylistStatus, decide, greylists_at_score, plan_headers, taggable, tags_subject, unscored_verdict, wants_spam
from .reply import REJECT, TEMPFAIL, Reply

#: The answer to a message some check could not judge: its spool unread, or ``[milter] on_check_error = "tempfail"``.
UNCHECKED_REPLY = Reply("451", "4.3.0", "Message could not be checked now, try again later")

log = logging.getLogger("milterd")
#: A check that raises logs its traceback once per check and exception type every five minutes, a line otherwise.
CHECK_TRACEBACKS = Repeats()

#: Stages the pipeline itself always needs: the log records client, HELO,
#: envelope, Subject, Message-ID and size.  DATA is negotiated too: when it is
#: skipped Postfix writes DATA's macros and the next command back to back, and
#: over TCP Nagle holds the second write for a delayed ACK (40 ms a message).
CORE_STAGES = frozenset({Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.HEADER, Stage.EOH, Stage.EOM})

#: While end of message waits for the pool, how often Postfix is told it is still running
#: (SMFIR_PROGRESS restarts its milter_content_timeout, 300 s by default).
PROGRESS_EVERY = 10.0
#: Added to the sum of the timeouts end of message may spend (see ``eom_budget``).
EOM_MARGIN = 30.0
#: Threads of a worker's end-of-message pool (checks that wait on the network run there side by side).
EOM_THREADS = 8
#: The answer when end of message outlasts its budget.
EOM_TIMEOUT_REPLY = Reply("451", "4.4.5", "Message checks took too long, please try again later")


@dataclass
class Outcome:
    """The result of end of message: the verdict, the edits, the log row."""

    verdict: Verdict
    edits: list[HeaderEdit] = field(default_factory=list)
    record: MessageRecord | None = None
    reply: Reply | None = None
    quarantine_reason: str = ""


#: The recipients a refused transaction's log row names in its reason (all are in its recipients), and the
#: characters it takes at most: a client sending 5,000 RCPT TO wrote a reason of 380 KB into the log.
REASON_RECIPIENTS = 5
REASON_WIDTH = 1000


def refused_reason(refused: list[tuple[str, str]]) -> str:
    """The reason of a transaction whose recipients were all refused: each recipient's reply, the first
    REASON_RECIPIENTS of them, then how many more, in REASON_WIDTH characters."""
    shown = "; ".join(f"<{recipient}>: {reply}" for recipient, reply in refused[:REASON_RECIPIENTS])
    more = len(refused) - REASON_RECIPIENTS
    return cut(f"{shown}; and {more} more" if more > 0 else shown, REASON_WIDTH)


class EditsRefused(Exception):
    """The MTA did not take the end-of-message edits (libmilter refused them): Postfix may have stopped waiting
    (``milter_content_timeout``) and applied its ``milter_default_action`` to the message already."""


class Pipeline:
    """The checks of one configuration, run stage by stage."""

    def __init__(self, services: Services, *, keep_log: bool = True) -> None:
        # keep_log=False (milterd check): decide as usual, but write no log or
        # quarantine row and no summary line.
        self.keep_log = keep_log
        self.services = services
        self.config = services.config
        self.checks = services.checks
        self._by_stage: dict[Stage, list[Check]] = {stage: [c for c in self.checks if stage in c.stages()] for stage in Stage}
        self._executor = ThreadPoolExecutor(max_workers=EOM_THREADS, thread_name_prefix="eom")
        self._running: dict[int, float] = {}  # a pooled check call → when it started (monotonic): :meth:`wedged`
        self._running_here: dict[int, float] = {}  # the same of a check run in a milter thread
        self._running_lock = threading.Lock()
        self._tokens = itertools.count()
        self._trusted = client_networks(self.config.milter.trusted_networks)
        milter = self.config.milter
        #: [milter]'s header limits, which the adapter counts every header against.
        self.header_limits = HeaderLimits(milter.max_headers, milter.max_header_size, milter.max_header_section)
        # What each message would otherwise recompute: the end-of-message checks by tier, the checks overriding a hook.
        # Each stage's checks, looked up once (a Stage key hashes in Python, a dozen times a message).
        by_stage = self._by_stage
        self._at_connect, self._at_helo, self._at_mail = by_stage[Stage.CONNECT], by_stage[Stage.HELO], by_stage[Stage.MAIL]
        self._at_rcpt, self._at_data, self._at_header = by_stage[Stage.RCPT], by_stage[Stage.DATA], by_stage[Stage.HEADER]
        self._at_eoh, self._at_body = by_stage[Stage.EOH], by_stage[Stage.BODY]
        eom = self._by_stage[Stage.EOM]
        self._eom_tiers = [[c for c in eom if c.eom_tier() == tier] for tier in sorted({c.eom_tier() for c in eom})]
        self._hooked: dict[str, list[Check]] = {}
        #: Seconds end of message may wait for the pool before the message is tempfailed.
        self.eom_budget = eom_budget(self.config)
        # The stages to negotiate (asked at every connection): the core's and those some check hooks.
        needed = set(CORE_STAGES).union(*(check.stages() for check in self.checks))
        if self._body_needed():
            needed.add(Stage.BODY)
        self._stages = frozenset(needed)

    # --- negotiation ------------------------------------------------------
    def stages(self) -> frozenset[Stage]:
        """The stages to negotiate with Postfix: the core's and those some check hooks."""
        return self._stages

    def hooked(self, stage: Stage) -> bool:
        """Whether some check runs at *stage*."""
        return bool(self._by_stage[stage])

    def _body_needed(self) -> bool:
        # The body is needed to scan it, to quarantine it whole and to log its size.
        return True

    # --- per-stage entry points -------------------------------------------
    def new_envelope(self, session: Session) -> Envelope:
        """Start a transaction of *session*."""
        session.transactions += 1
        return Envelope(spool=Spool(self.config.milter.spool_memory, self.config.milter.spool_dir or None))

    def connect(self, session: Session) -> Decision | None:
        """The client connected."""
        session.trusted = self._is_trusted(session)
        hits = self._run(self._at_connect, session, lambda c: c.on_connect(session))
        session.hits.extend(hits)
        if not self.config.milter.delay_reject:
            return self._refuse_early(session, session.hits)
        return None

    def helo(self, session: Session) -> Decision | None:
        """The client said HELO/EHLO; a second one (after STARTTLS, say) replaces the first."""
        # What the previous HELO found no longer applies (Postfix also forgets it), and
        # its DNS deadline may be long past: this HELO's lookups get their own.
        session.dns_deadlines.pop("helo", None)
        if session.helo_hits:
            stale = {id(hit) for hit in session.helo_hits}
            session.hits[:] = [hit for hit in session.hits if id(hit) not in stale]
        hits = session.helo_hits = self._run(self._at_helo, session, lambda c: c.on_helo(session))
        session.hits.extend(hits)
        if not self.config.milter.delay_reject:
            return self._refuse_early(session, hits)
        return None

    def _refuse_early(self, session: Session, hits: list[Hit]) -> Decision | None:
        # A refusal at connect or HELO (delay_reject off) is logged like any other.
        decision = self._forced(session, None, hits)
        if decision is not None:
            envelope = self.new_envelope(session)
            envelope.decision = decision
            self.finish(session, envelope)
        return decision

    def mail(self, session: Session, envelope: Envelope) -> Decision | None:
        """MAIL FROM; rejects delayed from connect and HELO apply here, once SMTP AUTH is known."""
        decision = self._forced(session, envelope, session.hits)
        if decision is None:
            self._run(self._hooked_by("before_mail"), session, lambda c: _started(c.before_mail, session, envelope))
            hits = self._run(self._at_mail, session, lambda c: c.on_mail(session, envelope))
            envelope.hits.extend(h for h in hits if h.action is None)
            decision = self._forced(session, envelope, hits)
        if decision is not None:
            envelope.decision = decision
        return decision

    def rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Decision | None:
        """One RCPT TO: refused recipients are noted, accepted ones added to the envelope.

        The checks after one that refuses the recipient are not asked: greylisting (the last) must not record,
        pass and count towards a network's auto-whitelisting a recipient who is refused anyway."""
        hits: list[Hit] = []
        for check in self._at_rcpt:
            if self._applies(check, session):
                hits.extend(self._call(check, session, lambda c: c.on_rcpt(session, envelope, recipient)))
                if any(h.action is not None for h in hits):
                    break
        forced = [h for h in hits if h.action is not None]
        if forced:
            worst = max(forced, key=lambda h: h.action or Action.ACCEPT)
            envelope.rejected_recipients.append((recipient, worst))
            return Decision(worst.action or Action.REJECT, worst.reply)
        envelope.hits.extend(hits)
        envelope.recipients.append(recipient)
        return None

    def data(self, session: Session, envelope: Envelope) -> Decision | None:
        """DATA."""
        hits = self._run(self._at_data, session, lambda c: c.on_data(session, envelope))
        envelope.hits.extend(h for h in hits if h.action is None)
        return self._forced(session, envelope, hits)

    def header(self, session: Session, envelope: Envelope, name: str, value: bytes) -> None:
        """One header."""
        envelope.headers.append((name, value))
        if self._at_header:
            envelope.hits.extend(self._run(self._at_header, session, lambda c: c.on_header(session, envelope, name, value)))

    def eoh(self, session: Session, envelope: Envelope) -> Decision | None:
        """End of headers."""
        hits = self._run(self._at_eoh, session, lambda c: c.on_eoh(session, envelope))
        envelope.hits.extend(h for h in hits if h.action is None)
        return self._forced(session, envelope, hits)

    def body(self, session: Session, envelope: Envelope, chunk: bytes) -> None:
        """A body chunk."""
        envelope.spool.write(chunk)
        if self._at_body:
            envelope.hits.extend(self._run(self._at_body, session, lambda c: c.on_body(session, envelope, chunk)))

    def eom(
        self,
        session: Session,
        envelope: Envelope,
        before_commit: Callable[[Outcome], None] | None = None,
        progress: Callable[[], None] | None = None,
    ) -> Outcome:
        """End of message: the checks' last word (concurrently), the verdict, the log row.

        The log row (and the quarantined message) is committed before this
        returns: nothing is acknowledged to Postfix before it is stored.
        *before_commit* gets the outcome just before that commit (the adapter
        sends its header edits and hold there): what it raises propagates
        with no row written, so no row says accepted a message that failed;
        but :class:`EditsRefused` (Postfix did not take them) writes a row
        saying tempfail and why, since Postfix may have delivered the message.

        The checks get :attr:`eom_budget` seconds in all, time queued in the
        shared pool included; a message still waiting for one then is
        tempfailed (``EOM_TIMEOUT``, 451 4.4.5) and logged as such.  While it
        waits, *progress* (the adapter's SMFIR_PROGRESS) is called every
        :data:`PROGRESS_EVERY` seconds so that Postfix keeps waiting.

        An internal error (an exception from here or *before_commit*) still
        leaves the summary line, with action tempfail and the error as reason,
        and, unless it came from *before_commit*, a log row saying so: every
        message reaching end of data is logged.  The exception propagates
        (the adapter answers 451 4.3.0).
        """
        eom_started = time.monotonic()
        try:
            outcome, quarantine = self._judge(session, envelope, eom_started, progress)
        except Exception as exc:
            self._log_failure(session, envelope, exc, eom_started, row=True)
            raise
        if before_commit is not None:
            try:
                before_commit(outcome)
            except EditsRefused as exc:
                # Postfix gone, or stopped waiting: it may have delivered the message (milter_default_action),
                # so a row says what happened here and why, with the verdict that was being sent.
                verdict = outcome.verdict
                reason = (f"Postfix did not take the edits of its {verdict.action.label} verdict ({exc}): it may have stopped "
                          "waiting (milter_content_timeout) and applied milter_default_action")
                self._log_failure(session, envelope, exc, eom_started, row=True,
                                  verdict=replace(verdict, action=Action.TEMPFAIL, reason=reason))
                raise
            except Exception as exc:
                # The edits went (in part) to Postfix: no row (the retry has its own).
                self._log_failure(session, envelope, exc, eom_started, row=False)
                raise
        try:
            return self._commit(envelope, outcome, quarantine, eom_started)
        except Exception as exc:
            self._log_failure(session, envelope, exc, eom_started, row=True)
            raise

    def _judge(self, session: Session, envelope: Envelope, eom_started: float, progress: Callable[[], None] | None) -> tuple[Outcome, QuarantineWrite | None]:
        """The checks, the verdict, the edits and the rows to write at end of message."""
        deadline = eom_started + self.eom_budget
        for check in self._skipped_at_eom(session):
            check.on_skipped(session, envelope)
        for tier in self._eom_tiers:
            checks = [c for c in tier if self._applies(c, session)]
            if not checks:
                continue
            if any(h.action in _REFUSED for h in envelope.hits):
                break  # already refused: later tiers (spamd) would spend their time for nothing
            if any(h.symbol == EOM_TIMEOUT for h in envelope.hits):
                break  # tempfailed: no time left for them
            envelope.hits.extend(self._eom_tier(session, envelope, checks, deadline, progress))
        on_symbols = self._overriding("on_symbols", session)
        if on_symbols:
            seen = frozenset(h.symbol for h in session.hits + envelope.hits)
            for check in on_symbols:
                envelope.hits.extend(self._call(check, session, lambda c: c.on_symbols(session, envelope, seen)))
        hits = verdict_hits(session, envelope)
        unscored_why = self._unscored_why(session, envelope)
        scored = not unscored_why
        verdict = decide(hits, self.services.weight, self.config.actions, scored=scored)
        if greylists_at_score(verdict):
            status = self._greylist_status(session, envelope)
            if status is not None:
                hits = verdict_hits(session, envelope)  # with its CHECK_ERROR, if it failed
                verdict = decide(hits, self.services.weight, self.config.actions, scored=scored, greylist=status)
        if not scored:
            verdict = unscored_verdict(verdict, unscored_why)
        for check in self._overriding("on_verdict", session):
            try:
                verdict = check.on_verdict(session, envelope, verdict)
            except SpoolError as exc:
                # Signing what cannot be read would deliver it unsigned (a DMARC failure at the
                # receiver); as at any stage, the message waits for the client's retry.
                verdict = _tempfailed(verdict, _spool_hit(check, session, exc))
                break
            except Exception:  # noqa: BLE001
                log.exception("check %s failed at verdict", check.name)
                if self.config.milter.on_check_error == "tempfail" and verdict.action in _DELIVERED:
                    # What the check would have done to the message as it leaves (remove forged headers,
                    # sign, seal) was not done: it is not delivered so.
                    verdict = _tempfailed(verdict, _unchecked_hit(check))
                    break
        outcome = Outcome(verdict=verdict)
        if verdict.action in (Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT, Action.QUARANTINE):
            counts: dict[str, int] = {}
            for name, _ in envelope.headers:
                counts[name.lower()] = counts.get(name.lower(), 0) + 1
            subject = envelope.header("Subject")
            outcome.edits = list(envelope.edits) + plan_headers(verdict, counts, subject, self.config.actions)
            if subject is not None and not taggable(subject) and tags_subject(verdict, self.config.actions):
                log.info("%s: Subject not tagged: it is not UTF-8, and a header milterd changes can only be UTF-8", envelope.queue_id or "NOQUEUE")
        outcome.record = self.record(session, envelope, verdict.action.label, verdict)
        quarantine = None
        if verdict.action == Action.QUARANTINE:
            outcome.quarantine_reason = verdict.reason
            quarantine = self._quarantine_row(outcome.record, envelope, verdict)
        return outcome, quarantine

    def _commit(self, envelope: Envelope, outcome: Outcome, quarantine: QuarantineWrite | None, eom_started: float) -> Outcome:
        """Write *outcome*'s log row (and *quarantine*), its summary line and metrics."""
        verdict, record = outcome.verdict, outcome.record
        assert record is not None
        try:
            if self.keep_log:
                self.services.store.log_message(record, quarantine)
        except StoreError as exc:
            log.error("%s: cannot store the log row: %s", envelope.queue_id or "NOQUEUE", exc)
            envelope.store_error = True
            if quarantine is not None or self.config.database.on_error == "tempfail":
                outcome.verdict = _replace_action(verdict, Action.TEMPFAIL, "store unavailable")
                outcome.reply = TEMPFAIL
                outcome.edits = []
                # The summary line (the only trace left) and the metrics tell what the client got.
                record.action = Action.TEMPFAIL.label
                record.reason = f"store unavailable (verdict {verdict.action.label}{': ' + verdict.reason if verdict.reason else ''})"
        envelope.logged = True
        if self.keep_log:
            log.info(summary_line(record))
        if not outcome.reply:
            outcome.reply = verdict.reply or self._default_reply(verdict.action)
        envelope.answered = outcome.verdict
        metrics.observe(record, eom_started, stored=not envelope.store_error)
        return outcome

    def fail(self, session: Session, envelope: Envelope, error: Exception) -> None:
        """An internal error (*error*) tempfailed the message before end of message: log it as end of message's are.

        For the adapter, when a stage of the message itself (DATA, a header, end of headers,
        the body: a full disk while the body is spooled) raised: its summary line and a row
        with action tempfail and the error as reason, so that ``milterd log`` and rule tuning
        see the attempt.  The transaction is then logged (``finish`` writes nothing more).
        Never raises; the adapter answers 451 4.3.0 whatever happens here.
        """
        self._log_failure(session, envelope, error, None, row=True)

    def _log_failure(self, session: Session, envelope: Envelope, error: Exception, eom_started: float | None, row: bool,
                     verdict: Verdict | None = None) -> None:
        """Log a message end of message (or an earlier stage, *eom_started* None) failed on (*error*) as tempfailed:
        its summary line, and its row when *row*; *verdict* is the tempfail to log (else one of no score, its
        reason "internal error: …").

        Never raises: what fails here is logged at debug level.
        """
        if envelope.logged:
            return  # its row and summary line are written: the error came after them
        envelope.logged = True
        if not self.keep_log:
            return
        stored = True
        try:
            reason = (verdict.reason if verdict is not None else f"internal error: {type(error).__name__}: {error}")[:200]
            if verdict is None:
                verdict = Verdict(Action.TEMPFAIL, 0.0, {}, {}, reason)
            try:
                record = self.record(session, envelope, Action.TEMPFAIL.label, replace(verdict, reason=reason))
            except Exception:  # noqa: BLE001 - what record() needs may be what failed: the fields that cannot fail
                log.debug("cannot build the log row of a failed message", exc_info=True)
                record = MessageRecord(action=Action.TEMPFAIL.label, reason=reason, mta_host=self.config.hostname, queue_id=envelope.queue_id)
                record.client_addr, record.sender, record.recipients = session.client_addr, envelope.sender, list(envelope.recipients)
            if row:
                stored = self._store_quietly(record, envelope)
            log.info(summary_line(record))
            metrics.observe(record, eom_started, stored=stored)
        except Exception:  # noqa: BLE001 - the original error is what the adapter reports
            log.debug("cannot log a failed message", exc_info=True)

    def _store_quietly(self, record: MessageRecord, envelope: Envelope) -> bool:
        """Write *record* (a refused or failed transaction's row); whether it was, what failed logged once."""
        try:
            self.services.store.log_message(record)
            return True
        except StoreError as exc:
            log.error("%s: cannot store the log row: %s", envelope.queue_id or "NOQUEUE", exc)
        except Exception as exc:  # noqa: BLE001 - not the store's usual failure: a bug, told once, traceback at debug
            log.error("%s: cannot store the log row: %s: %s", envelope.queue_id or "NOQUEUE", type(exc).__name__, exc)
            log.debug("the log row's failure", exc_info=True)
        envelope.store_error = True
        return False

    def _greylist_status(self, session: Session, envelope: Envelope) -> GreylistStatus | None:
        """The greylist store's answer for a message the score greylists (None: no greylist check, as in
        ``milterd check``, which reports the greylisting).

        A check that fails is judged by ``on_check_error``: with ``accept``, the next such check answers, or
        else the action below greylist applies, with CHECK_ERROR and GREYLIST_ERROR logged (a verdict left
        greylisting had been answered a generic 451 at every retry).
        """
        failed = None
        for check in self._overriding("on_score_greylist", session):
            try:
                status = check.on_score_greylist(session, envelope)
            except Exception as exc:  # noqa: BLE001
                log.exception("check %s failed at verdict", check.name)
                error = f"{check.name}: {exc.__class__.__name__}: {exc}"[:200]
                if self.config.milter.on_check_error == "tempfail":
                    return GreylistStatus(needed=False, error=error, reply=UNCHECKED_REPLY)
                envelope.hits.append(Hit("CHECK_ERROR", detail=check.name))
                failed = failed or GreylistStatus(needed=False, error=error)
                continue
            if status is not None:
                return status
        return failed

    def _eom_tier(
        self, session: Session, envelope: Envelope, checks: list[Check], deadline: float = float("inf"), progress: Callable[[], None] | None = None
    ) -> list[Hit]:
        """Run the end-of-message hooks of *checks* concurrently.

        Only checks that may wait (DNS, a scanner, the database) overlap: all but
        the last of them go to the pool.  The checks with nothing to wait for
        (``eom_waits(envelope)`` False: attachments and custom rules always, DKIM
        and ARC without a signature or chain) and the last waiting one run in this
        thread, since a hand-off costs a future, a lock and a thread wake-up,
        and a GIL switch (up to sys.getswitchinterval(), 5 ms) even for a check
        with nothing to wait for (bench/RESULTS.md).  The hits come in the same
        order whichever thread ran a check.

        The pool is waited for until *deadline* (``time.monotonic()``), calling
        *progress* every :data:`PROGRESS_EVERY` seconds; the checks still queued
        then are cancelled, those still running are left to finish unheard, and
        an ``EOM_TIMEOUT`` hit tempfails the message.  A check running in this
        thread is bounded by its own timeouts only, and by :meth:`wedged`.
        """
        if len(checks) == 1:  # one check runs in this thread whether it may wait or not (below): no pool
            return self._here(checks[0], session, lambda c: c.on_eom(session, envelope))
        waits = [self._waits(check, envelope) for check in checks]
        waiting = [i for i, wait in enumerate(waits) if wait]
        pooled = waiting[:-1] if len(waiting) < len(checks) else list(range(len(checks) - 1))
        futures = {i: self._executor.submit(self._pooled, checks[i], session, lambda c: c.on_eom(session, envelope)) for i in pooled}
        here = [i for i in range(len(checks)) if i not in futures]
        results = {i: self._here(checks[i], session, lambda c: c.on_eom(session, envelope)) for i in sorted(here, key=lambda i: waits[i])}
        late = _await(list(futures.values()), deadline, progress)
        for i, future in futures.items():
            results[i] = [] if future in late else future.result()
        # The last check's hits last, the others' in reverse order (as when only the last ran here).
        hits = results[len(checks) - 1]
        for i in range(len(checks) - 1):
            hits = results[i] + hits
        if late:
            for future in late:
                future.cancel()  # those still queued: the pool's other messages need it
            names = ", ".join(checks[i].name for i, future in futures.items() if future in late)
            log.warning("%s: end of message took longer than %gs (waiting for %s); answering tempfail", envelope.queue_id or "NOQUEUE", self.eom_budget, names)
            hits.append(Hit(EOM_TIMEOUT, detail=f"{names} not done after {self.eom_budget:g}s"[:200], action=Action.TEMPFAIL, reply=EOM_TIMEOUT_REPLY))
        return hits

    def finish(self, session: Session, envelope: Envelope | None) -> None:
        """The transaction ended before end of message: log it if something was refused.

        Never raises: a failure to log this transaction is logged (traceback
        at debug level) and counted as a store error, and leaves the next
        transaction of the session alone.
        """
        if envelope is None:
            return
        try:
            self._log_refused(session, envelope)
        except Exception as exc:  # noqa: BLE001 - the next MAIL FROM must not pay for it
            envelope.logged = True
            log.error("%s: cannot log the transaction refused before end of message: %s: %s", envelope.queue_id or "NOQUEUE", type(exc).__name__, exc)
            log.debug("the refused transaction's failure", exc_info=True)
            action = envelope.decision.action if envelope.decision is not None else Action.REJECT
            metrics.observe(MessageRecord(action=action.label, queue_id=envelope.queue_id), stored=False)
        finally:
            for check in self.checks:
                try:
                    check.on_abort(session, envelope)
                except Exception:  # noqa: BLE001 - a check's cleanup must not break the session
                    log.exception("check %s failed to clean up", check.name)
            envelope.close()

    def _log_refused(self, session: Session, envelope: Envelope) -> None:
        """Log a transaction refused before end of message (at MAIL, a recipient, DATA, end of headers)."""
        if envelope.logged:
            return
        decision = envelope.decision
        if decision is None and not envelope.rejected_recipients:
            return
        if decision is None:
            action = max(h.action or Action.REJECT for _, h in envelope.rejected_recipients)
            reason = refused_reason([(r, str(h.reply or h.symbol)) for r, h in envelope.rejected_recipients])
        else:
            action, reason = decision.action, str(decision.reply or "")
        hits = [h for h in session.hits] + envelope.hits + [h for _, h in envelope.rejected_recipients]
        verdict = decide(hits, self.services.weight, self.config.actions, scored=False)
        record = self.record(session, envelope, action.label, verdict)
        record.reason = reason
        record.recipients = envelope.recipients + [r for r, _ in envelope.rejected_recipients]
        envelope.logged = True
        stored = True
        if self.keep_log:
            stored = self._store_quietly(record, envelope)
            log.info(summary_line(record))
        metrics.observe(record, stored=stored)

    def close(self, session: Session) -> None:
        """The connection closed."""
        for check in self.checks:
            try:
                check.on_close(session)
            except Exception:  # noqa: BLE001
                log.exception("check %s failed at close", check.name)

    # --- helpers ------------------------------------------------------------
    def record(self, session: Session, envelope: Envelope | None, action: str, verdict: Verdict) -> MessageRecord:
        """The log row for a transaction (or a connection refused before any)."""
        record = MessageRecord(
            action=action,
            mta_host=self.config.hostname,
            client_addr=session.client_addr,
            client_name=session.client_name,
            helo=session.helo,
            auth_user=session.auth_user,
            score=verdict.score,
            reason=verdict.reason,
            symbols=verdict.symbols,
            details=verdict.details,
        )
        if envelope is not None:
            record.queue_id = envelope.queue_id
            record.sender = envelope.sender
            record.recipients = list(envelope.recipients)
            record.subject = decode_subject(envelope.header("Subject"))
            record.message_id = (envelope.header("Message-ID") or "").strip()
            record.size = envelope.size if envelope.headers or envelope.spool.size else 0
            record.elapsed_ms = round((time.monotonic() - envelope.started) * 1000, 1)
        return record

    def _quarantine_row(self, record: MessageRecord, envelope: Envelope, verdict: Verdict) -> QuarantineWrite:
        """The quarantine row of a message whose log row is *record*.

        The message itself is not read here: the store streams it from the
        spool (``envelope.message_chunks``) inside the log row's transaction,
        so a large message is never held whole in memory.
        """
        row = record.as_row()
        return QuarantineWrite(
            row={
                "time": row["time"],
                "mta_host": row["mta_host"],
                "queue_id": row["queue_id"],
                "client_addr": row["client_addr"],
                "client_name": row["client_name"],
                "helo": row["helo"],
                "sender": row["sender"],
                "recipients": row["recipients"],
                "subject": row["subject"],
                "score": verdict.score,
                "reason": row["reason"],
                "symbols": verdict.symbols,
                "size": envelope.size,
                "mode": self.config.quarantine.mode,
                "release_count": 0,
                "learned_ham": False,
            },
            chunks=envelope.stored_chunks,
        )

    def _is_trusted(self, session: Session) -> bool:
        if not self._trusted and session.family != "unix":
            return False  # what the lines below answer for any address: no parsing per connection
        if session.ip is None:
            return session.family == "unix"
        return any(form in net for form in client_forms(session.client_addr, session.client_addr_sent) for net in self._trusted)

    def _unscored_why(self, session: Session, envelope: Envelope) -> str:
        """Why *envelope* is not scored (the UNSCORED detail), or "" when it is."""
        if session.trusted and self.config.milter.skip_trusted:
            return f"trusted client {session.client_addr}" if session.client_addr else "trusted client (a local submission)"
        if session.authenticated and self.config.milter.skip_authenticated:
            return f"authenticated as {session.auth_user}"
        if wants_spam(envelope.recipients, self.config.milter.spam_lovers, self.config.checks.local_domains.recipient_delimiter):
            return "every recipient is one of [milter] spam_lovers"
        return ""

    def _skipped_at_eom(self, session: Session) -> list[Check]:
        """The checks that have something to do for a client they do not apply to (:meth:`Check.on_skipped`)."""
        if not (session.trusted or session.authenticated):
            return []
        return [c for c in self._hooked_by("on_skipped") if not self._applies(c, session)]

    def _applies(self, check: Check, session: Session) -> bool:
        if session.trusted and not check.applies_to_trusted:
            return False
        if session.authenticated and not check.applies_to_authenticated:
            return False
        return True

    def _overriding(self, hook: str, session: Session) -> list[Check]:
        """The checks that override *hook* and apply to *session*'s client."""
        return [c for c in self._hooked_by(hook) if self._applies(c, session)]

    def _hooked_by(self, hook: str) -> list[Check]:
        """The checks whose class overrides *hook* (found once)."""
        hooked = self._hooked.get(hook)
        if hooked is None:
            hooked = self._hooked[hook] = [c for c in self.checks if getattr(type(c), hook) is not getattr(Check, hook)]
        return hooked

    def _run(self, checks: list[Check], session: Session, call: Callable[[Check], Hits]) -> list[Hit]:
        hits: list[Hit] = []
        for check in checks:
            if self._applies(check, session):
                hits.extend(self._call(check, session, call))
        return hits

    def _waits(self, check: Check, envelope: Envelope) -> bool:
        """Whether *check*'s end-of-message hook may wait for something (its ``eom_waits``)."""
        try:
            return check.eom_waits(envelope)
        except Exception:  # noqa: BLE001 - when in doubt, the pool
            return True

    def _call(self, check: Check, session: Session, call: Callable[[Check], Hits]) -> list[Hit]:
        try:
            return list(call(check))
        except SpoolError as exc:
            # This machine could not read the message back: no check may judge it unread (a scanner's
            # on_error would pass it unscanned), so it waits for the client's retry.
            return [_spool_hit(check, session, exc)]
        except Exception as exc:  # noqa: BLE001 - one broken check must not take the message down
            if CHECK_TRACEBACKS.first((check.name, type(exc))):
                log.exception("check %s failed for client %s", check.name, session.client_addr)
            else:
                log.error("check %s failed for client %s: %s: %s (the traceback of this failure is logged at most every %.0fs)",
                          check.name, session.client_addr, type(exc).__name__, exc, CHECK_TRACEBACKS.interval)
            if self.config.milter.on_check_error == "tempfail":
                return [_unchecked_hit(check)]
            return [Hit("CHECK_ERROR", detail=check.name)]

    def _forced(self, session: Session, envelope: Envelope | None, hits: list[Hit]) -> Decision | None:
        forced = [h for h in hits if h.action is not None and h.action >= Action.GREYLIST]
        if not forced:
            return None
        worst = max(forced, key=lambda h: h.action or Action.ACCEPT)
        action = worst.action or Action.REJECT
        decision = Decision(action, worst.reply or self._default_reply(action))
        if envelope is not None:
            # Kept on the envelope so that finish() logs a refusal at any stage (MAIL,
            # DATA, end of headers), and milterd check can name the hit behind it.
            envelope.forced_hit = worst
            envelope.decision = decision
        return decision

    @staticmethod
    def _default_reply(action: Action) -> Reply | None:
        if action == Action.REJECT:
            return REJECT
        if action in (Action.TEMPFAIL, Action.GREYLIST):
            return TEMPFAIL
        return None

    def _pooled(self, check: Check, session: Session, call: Callable[[Check], Hits]) -> list[Hit]:
        """:meth:`_call` in a thread of the end-of-message pool, its start kept for :meth:`wedged`."""
        return self._tracked(self._running, check, session, call)

    def _here(self, check: Check, session: Session, call: Callable[[Check], Hits]) -> list[Hit]:
        """:meth:`_call` at end of message in the milter's thread, its start kept for :meth:`wedged`."""
        return self._tracked(self._running_here, check, session, call)

    def _tracked(self, running: dict[int, float], check: Check, session: Session, call: Callable[[Check], Hits]) -> list[Hit]:
        token = next(self._tokens)
        with self._running_lock:
            running[token] = time.monotonic()
        try:
            return self._call(check, session, call)
        finally:
            with self._running_lock:
                del running[token]

    def wedged(self) -> bool:
        """Whether checks are stuck in calls that never return: every end-of-message thread held for more than
        twice :attr:`eom_budget` (each later message that needs one would wait its whole budget for a 451), or one
        check that long in a milter thread (Postfix gave up on it long before; a loop there burns the worker's CPU,
        and its interpreter, for good: only a new worker ends it)."""
        started_before = time.monotonic() - 2 * self.eom_budget
        with self._running_lock:
            if any(started < started_before for started in self._running_here.values()):
                return True
            return sum(1 for started in self._running.values() if started < started_before) >= EOM_THREADS

    def shutdown(self) -> None:
        """Stop the end-of-message thread pool."""
        self._executor.shutdown(wait=False)


#: Actions whose message is delivered (or quarantined): what on_verdict does to it must have been done.
_DELIVERED = frozenset({Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT, Action.QUARANTINE})
#: Actions after which later end-of-message tiers are not run.
_REFUSED = frozenset({Action.REJECT, Action.DISCARD})


def eom_budget(config: Config) -> float:
    """How long end of message may take: what its checks may each spend, one after another, and a margin.

    The DNS deadline (``[dns] timeout``) three times (the stage's, and apart from it the
    From domain's DKIM keys' and DMARC records', which a sender's slow DNS cannot spend), the scanners' ``timeout`` (clamd's
    and spamd's, when enabled: each bounds the wait for the scanner's answer,
    and they may run in turn), ``[database] busy_timeout`` (the classifier
    and the greylist store) and :data:`EOM_MARGIN` for streaming the message.
    With the defaults and both scanners, 136 s: under Postfix's default
    milter_content_timeout (300 s), which SMFIR_PROGRESS restarts anyway.
    """
    # The DNS deadline three times: the stage's, and the From domain's DKIM keys' and DMARC records' apart from it
    # (each From domain has its own: a message with several whose DNS never answers may run out the budget: 451).
    budget = 3 * config.dns.timeout + config.database.busy_timeout + EOM_MARGIN
    if config.clamav.enabled:
        budget += config.clamav.timeout
    if config.spamd.enabled:
        budget += config.spamd.timeout
    return budget


def _await(futures: list[Future[list[Hit]]], deadline: float, progress: Callable[[], None] | None) -> set[Future[list[Hit]]]:
    """Wait for *futures* until *deadline*, calling *progress* every :data:`PROGRESS_EVERY` seconds; those not done."""
    pending = {future for future in futures if not future.done()}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = wait_for(pending, timeout=min(left, PROGRESS_EVERY))
        if pending and progress is not None:
            progress()
    return pending


def _replace_action(verdict: Verdict, action: Action, reason: str) -> Verdict:
    return replace(verdict, action=action, reason=reason)


def _unchecked_hit(check: Check) -> Hit:
    """The hit (451 4.3.0) of a message *check* raised on, under ``[milter] on_check_error = "tempfail"``."""
    return Hit("CHECK_ERROR", detail=check.name, action=Action.TEMPFAIL, reply=UNCHECKED_REPLY)


def _spool_hit(check: Check, session: Session, error: SpoolError) -> Hit:
    """The hit (451 4.3.0, logged) of a message whose spool *check* could not read back."""
    log.error("check %s for client %s: %s; answering 451", check.name, session.client_addr, error)
    return Hit("CHECK_ERROR", detail=f"{check.name}: {error}"[:200], action=Action.TEMPFAIL, reply=UNCHECKED_REPLY)


def _tempfailed(verdict: Verdict, hit: Hit) -> Verdict:
    """*verdict* turned into *hit*'s 451, met after the verdict (by signing, sealing or auto-learn: a spool
    unread, or a check that raised with ``[milter] on_check_error = "tempfail"``)."""
    return replace(
        verdict, action=Action.TEMPFAIL, reason=hit.detail, reply=hit.reply,
        symbols={**verdict.symbols, hit.symbol: 0.0}, details={**verdict.details, hit.symbol: hit.detail},
    )


def decode_subject(value: str | None) -> str:
    """A Subject with its encoded-words decoded; the raw text where they are broken."""
    if not value:
        return ""
    return decoded(value)


def _started(hook: Callable[[Session, Envelope], None], session: Session, envelope: Envelope) -> Hits:
    """Run a ``before_…`` *hook* (it starts lookups, and has no hits of its own) as the stage runner runs checks."""
    hook(session, envelope)
    return ()
