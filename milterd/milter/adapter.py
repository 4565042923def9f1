"""The protocol adapter: pymilter's callbacks in, pipeline calls out.

One :class:`MilterdMilter` instance serves one SMTP connection (libmilter
runs it in a thread of its own).  It keeps the :class:`~milterd.message.model.Session`
and the current :class:`~milterd.message.model.Envelope`, translates what Postfix
sends, and carries out the pipeline's decisions with milter primitives.  Any
exception is answered with a tempfail: a bug costs a retry, never a message.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from typing import Any, Callable

import Milter

from ..addresses import embedded_ipv4
from ..checks import Stage
from ..checks.headers import field_size, header_limit_hit
from ..message.model import Action, Decision, Envelope, Hit, Session, header_safe
from ..message.pipeline import EditsRefused, Outcome, Pipeline
from ..message.reply import INTERNAL_ERROR, REJECT, TEMPFAIL, Reply, setreply_args
from ..text import escape

log = logging.getLogger("milterd")

_NO_STAGE = {
    Stage.CONNECT: Milter.P_NOCONNECT,
    Stage.HELO: Milter.P_NOHELO,
    Stage.MAIL: Milter.P_NOMAIL,
    Stage.RCPT: Milter.P_NORCPT,
    Stage.DATA: Milter.P_NODATA,
    Stage.HEADER: Milter.P_NOHDRS,
    Stage.EOH: Milter.P_NOEOH,
    Stage.BODY: Milter.P_NOBODY,
}
_ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE

#: The macros milterd reads, by stage, asked for at negotiation (SMFIF_SETSYMLIST), so that Postfix's
#: milter_*_macros do not decide them: a site whose milter_mail_macros lacked {auth_authen} scored its
#: logged-in users as strangers, and one without ``i`` logged every message without its queue id.  Postfix
#: empties every stage's list once a milter sends any, hence one for each stage read (five names at most).
_CONNECT_MACROS = ("j", "{daemon_name}", "{daemon_addr}", "{client_name}", "{client_addr}")
_MACROS = {
    Milter.M_CONNECT: _CONNECT_MACROS,
    Milter.M_ENVFROM: ("i", "{auth_authen}"),
    Milter.M_ENVRCPT: ("i",),
    Milter.M_DATA: ("i",),
    Milter.M_EOH: ("i",),  # Postfix sends these with each header too
    Milter.M_EOM: ("i",),  # and with each body chunk
}

#: Connections being served by this process (the supervisor's drain waits on it).
active = 0
_active_lock = threading.Lock()


def _count(delta: int) -> None:
    global active
    with _active_lock:
        active += delta


# A callback pymilter could not call: the raw bytes of the argument it failed to decode
# (see supervisor.milter_excepthook), for the next callback of the same connection.
# threading.local follows the Python thread state, and pymilter gives each connection one.
_undecodable = threading.local()


def record_undecodable(raw: bytes) -> None:
    """Keep *raw*, an argument pymilter could not decode, for this connection's next callback."""
    _undecodable.raw = raw


def take_undecodable() -> bytes | None:
    """The argument kept by :func:`record_undecodable` on this thread, once."""
    raw: bytes | None = getattr(_undecodable, "raw", None)
    _undecodable.raw = None
    return raw


def dropped_helo(stage: str, connected: bool, in_transaction: bool) -> bool:
    """Whether a callback pymilter dropped (found at *stage*) was HELO: else it was connect or a header.

    Only those three get text that pymilter decodes; MAIL, RCPT and header
    values arrive as bytes.  A header is dropped inside a transaction, connect
    before connect ran; HELO comes with no transaction open (Postfix aborts the
    transaction first) and is followed by MAIL, another HELO, RSET or QUIT.
    """
    return connected and not in_transaction and stage in ("helo", "mail", "abort", "close")


#: The stages of the message itself (from DATA on), by callback name: an internal error there
#: tempfails the whole message, which is then logged (``MilterdMilter._log_failed_message``).
_MESSAGE_STAGES = frozenset({"data", "header", "eoh", "body", "eom"})

#: The stages that may be negotiated without a reply (over a unix socket), by callback name.
_NO_REPLY = {"connect": Milter.P_NR_CONN, "helo": Milter.P_NR_HELO, "header": Milter.P_NR_HDR, "body": Milter.P_NR_BODY}


def protocol_bits(stages: frozenset[Stage], unix: bool = False, early_refusals: bool = True) -> int:
    """The protocol bits to ask for: skip the stages no one needs; no-reply stages only over a unix socket.

    Over TCP milterd replies at every stage, DATA included: with a no-reply or
    skipped stage Postfix writes two packets back to back and Nagle plus a
    delayed ACK stall each message for 40 ms (see bench/RESULTS.md).  Over a
    unix socket (*unix*) there is no Nagle: HELO, the headers and the body get
    no reply (CONNECT and HELO only when nothing is refused there,
    *early_refusals* False: ``delay_reject``), and DATA is skipped when *stages*
    lacks it.  What such a stage decides (a header over the limits, an internal
    error) is answered at the next stage that replies (``MilterdMilter._guard``).
    """
    bits = Milter.P_NOUNKNOWN
    for stage, bit in _NO_STAGE.items():
        if stage not in stages:
            bits |= bit
    if unix:
        bits |= Milter.P_NR_HDR | Milter.P_NR_BODY
        if not early_refusals:
            bits |= Milter.P_NR_CONN | Milter.P_NR_HELO
    return bits


def unmapped(address: str) -> str:
    """*address* with an IPv6 address that stands for an IPv4 client written as that IPv4 address: IPv4-mapped
    (``::ffff:192.0.2.10``, from a dual-stack socket behind another MTA, as Postfix writes it) or translated by
    NAT64/SIIT into RFC 6052's well-known prefix (``64:ff9b::192.0.2.10``, an IPv6-only MX's view of IPv4
    clients). The DNS lists, reverse DNS, SPF and greylisting judge the IPv4 client; trusted_networks and the
    greylist whitelist match it in either form (``Session.client_addr_sent``)."""
    if ":" not in address:
        return address
    try:
        inner = embedded_ipv4(ipaddress.IPv6Address(address))
    except ValueError:
        return address
    return str(inner) if inner is not None else address


class MilterdMilter(Milter.Base):
    """One SMTP connection seen through the milter protocol."""

    pipeline: Pipeline  # set by the worker before serving
    #: Whether the worker serves a unix socket: no-reply stages and no DATA (see protocol_bits).
    unix_socket = False
    #: Whether header values arrive with their leading whitespace (P_HDR_LEADSPC negotiated).
    _leadspc = False
    #: The negotiated no-reply stages, by callback name.
    _no_reply: frozenset[str] = frozenset()
    #: What this worker last agreed with an MTA (actions, protocol), for a connection whose callbacks start with no
    #: negotiation: libmilter keeps a milter connection's negotiation over SMFIC_QUIT_NC (an MTA reusing it for its
    #: next SMTP connection), where pymilter's connect_callback makes a new object.  Per worker, not per milter
    #: connection: Debian's libmilter runs a connection's commands on any thread of its pool, and pymilter's
    #: context object carries nothing of ours; right where one kind of MTA connects.  Postfix never sends QUIT_NC.
    _agreed: tuple[int, int] | None = None

    def __init__(self) -> None:
        self.session = Session()
        self.envelope: Envelope | None = None
        self._counted = False  # in the worker's count of connections (from negotiate on)
        self._connected = False  # its CONNECT callback ran
        # What this connection last answered, for ``milterd check`` (offline.py),
        # which drives this class in process: the last end of message, the last
        # refusal before it.
        self.outcome: Outcome | None = None
        self.refusal: Decision | None = None
        # What a no-reply stage decided (a refusal, an internal error's tempfail), for the
        # next stage that replies; sticky for the session when it came before MAIL FROM.
        self._carried: Decision | None = None
        self._carried_sticky = False

    # --- negotiation ------------------------------------------------------
    def negotiate(self, opts: list[int]) -> int:
        """Ask for the actions we use and the stages the configuration needs."""
        # Counted from here, the connection's first callback (libmilter calls close at its end whatever came
        # between): counted only at CONNECT, one a stopping worker had negotiated was cut by its drain.
        if not self._counted:
            self._counted = True
            _count(+1)
        offered_actions, offered_protocol = opts[0], opts[1]
        opts[0] = offered_actions & (_ACTIONS | Milter.SETSYMLIST)
        if opts[0] & Milter.SETSYMLIST:
            for stage, names in _MACROS.items():
                # Not Base.setsymlist: it hands the C module bytes, which takes only str (a TypeError
                # that fails the negotiation, and Postfix then every command of the session).
                self._ctx.setsymlist(stage, " ".join(names))
        # HDR_LEADSPC: header values arrive with their own leading whitespace, so
        # that a quarantined message is stored byte for byte (see _header).
        stages = self.pipeline.stages()
        if self.unix_socket and not self.pipeline.hooked(Stage.DATA):
            stages = stages - {Stage.DATA}
        early_refusals = not self.pipeline.config.milter.delay_reject
        bits = protocol_bits(stages, unix=self.unix_socket, early_refusals=early_refusals)
        opts[1] = offered_protocol & (bits | Milter.P_HDR_LEADSPC)
        self._agree(opts[0], opts[1])
        MilterdMilter._agreed = (opts[0], opts[1])
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def _agree(self, actions: int, protocol: int) -> None:
        """Take *actions* and *protocol* as this connection's negotiated ones."""
        self._actions, self._protocol = actions, protocol
        self._leadspc = bool(protocol & Milter.P_HDR_LEADSPC)
        self._no_reply = frozenset(name for name, bit in _NO_REPLY.items() if protocol & bit)

    # --- callbacks ----------------------------------------------------------
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self._connected = True
        if not self._counted:  # no negotiation on this object: a milter connection reused after SMFIC_QUIT_NC
            self._counted = True
            _count(+1)
            if MilterdMilter._agreed is not None:
                self._agree(*MilterdMilter._agreed)
        return self._guard("connect", self._connect, hostname, family, hostaddr)

    def _connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        session = self.session
        session.macros.update(self._macros(*_CONNECT_MACROS))
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, tuple):
            sent, session.client_port = str(hostaddr[0]), int(hostaddr[1])
        else:
            sent = session.macros.get("{client_addr}", "")
        session.client_addr = unmapped(sent)
        session.client_addr_sent = sent if session.client_addr != sent else ""
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, tuple):
            session.family = "inet6" if family == socket.AF_INET6 and ":" in session.client_addr else "inet"
        elif family == socket.AF_UNIX:
            session.family = "unix"
        else:
            # SMFIA_UNKNOWN: Postfix's smtpd on a socket that is not inet, or a client XCLIENT made
            # ADDR=[UNAVAILABLE]. Not a local client by its family: trusted only by an address.
            session.family = "unknown"
        # Postfix passes "[1.2.3.4]" (or "unknown") when the client has no verified name.
        session.client_name = "unknown" if hostname.startswith("[") else hostname
        return self._answer(self.pipeline.connect(session))

    def hello(self, hostname: str) -> int:
        return self._guard("helo", self._hello, hostname)

    def _hello(self, hostname: str) -> int:
        self.session.helo = hostname
        return self._answer(self.pipeline.helo(self.session))

    def envfrom_bytes(self, *args: bytes) -> int:
        """libmilter's MAIL FROM (bytes): decoded as pymilter's ``Base.envfrom_bytes`` does, without its per-call lookups."""
        return self._guard("mail", self._envfrom, *[arg.decode("utf-8", "surrogateescape") for arg in args])

    def envfrom(self, sender: str, *params: str) -> int:
        return self._guard("mail", self._envfrom, sender, *params)

    def _envfrom(self, sender: str, *params: str) -> int:
        self._finish()
        self.session.auth_user = self._symval("{auth_authen}") or ""
        envelope = self.envelope = self.pipeline.new_envelope(self.session)
        envelope.sender = _strip_brackets(sender)
        envelope.mail_args = Milter.param2dict(list(params)) if params else {}
        return self._answer(self.pipeline.mail(self.session, envelope))

    def envrcpt_bytes(self, *args: bytes) -> int:
        """libmilter's RCPT TO (bytes): the recipient decoded as pymilter's ``Base.envrcpt_bytes`` does; its parameters are not used."""
        return self._guard("rcpt", self._envrcpt, args[0].decode("utf-8", "surrogateescape"))

    def envrcpt(self, recipient: str, *params: str) -> int:
        return self._guard("rcpt", self._envrcpt, recipient)

    def _envrcpt(self, recipient: str) -> int:
        envelope = self._require_envelope()
        envelope.queue_id = self._symval("i") or envelope.queue_id
        return self._answer(self.pipeline.rcpt(self.session, envelope, _strip_brackets(recipient)))

    def data(self) -> int:
        return self._guard("data", self._data)

    def _data(self) -> int:
        envelope = self._require_envelope()
        envelope.queue_id = self._symval("i") or envelope.queue_id
        return self._answer(self.pipeline.data(self.session, envelope))

    def header_bytes(self, name: str | bytes, value: bytes) -> int:
        """libmilter's header callback: the value stays bytes (``Base.header_bytes`` with ``@decode("bytes")``, one call less)."""
        return self._guard("header", self._header, name, value)

    @Milter.decode("bytes")
    def header(self, name: str | bytes, value: bytes) -> int:
        return self._guard("header", self._header, name, value)

    def _header(self, name: str | bytes, value: bytes) -> int:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        envelope = self._require_envelope()
        if envelope.decision is not None:
            return Milter.CONTINUE  # refused at an earlier header (a no-reply stage): nothing more is kept
        refusal = self._header_limit(envelope, name, value)
        if refusal is not None:  # refused before it is kept: nothing is buffered past the limit
            envelope.hits.append(refusal)
            envelope.forced_hit = refusal
            decision = envelope.decision = Decision(Action.REJECT, refusal.reply)
            return self._reply(decision)
        if self._leadspc:
            # Checks see what they would without HDR_LEADSPC (one space eaten, as Sendmail does).
            raw, value = value, value[1:] if value.startswith(b" ") else value
            envelope.raw_headers.append(name.encode("ascii", "replace") + b":" + raw)
        self.pipeline.header(self.session, envelope, name, value)
        return Milter.CONTINUE

    def _header_limit(self, envelope: Envelope, name: str, value: bytes) -> Hit | None:
        """Count this header against [milter]'s header limits; the refusal when it crosses one."""
        count, section = envelope.header_tally
        size = field_size(name, value)
        count, section = count + 1, section + size
        envelope.header_tally = (count, section)
        return header_limit_hit(self.pipeline.header_limits, count, section, name, size)

    def eoh(self) -> int:
        return self._guard("eoh", self._eoh)

    def _eoh(self) -> int:
        return self._answer(self.pipeline.eoh(self.session, self._require_envelope()))

    def body(self, chunk: bytes) -> int:
        return self._guard("body", self._body, chunk)

    def _body(self, chunk: bytes) -> int:
        self.pipeline.body(self.session, self._require_envelope(), chunk)
        return Milter.CONTINUE

    def eom(self) -> int:
        return self._guard("eom", self._eom)

    def _eom(self) -> int:
        envelope = self._require_envelope()
        envelope.queue_id = self._symval("i") or envelope.queue_id
        outcome = self.outcome = self.pipeline.eom(self.session, envelope, before_commit=self._send_edits, progress=self._progress)
        action = outcome.verdict.action
        if action == Action.QUARANTINE:
            # Postfix waits for a final reply after SMFIR_QUARANTINE (hold mode).
            result = Milter.CONTINUE if self.pipeline.config.quarantine.mode == "hold" else Milter.DISCARD
        elif action == Action.DISCARD:
            result = Milter.DISCARD
        elif action in (Action.REJECT, Action.TEMPFAIL, Action.GREYLIST):
            result = self._reply(Decision(action, outcome.reply))
        else:
            result = Milter.CONTINUE
        self._end_transaction()
        return result

    def _send_edits(self, outcome: Outcome) -> None:
        """Send *outcome*'s header edits (and the hold) to Postfix, before its log row is committed.

        An edit libmilter refuses (Postfix gone, an action not negotiated) then
        fails the message with a tempfail (:class:`EditsRefused`: a row saying
        so, with the verdict that was being sent), instead of a row saying
        accepted for a message answered 451.  Should the commit fail after
        them, the tempfail answered drops them with the message.
        """
        action = outcome.verdict.action
        try:
            if action in (Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT, Action.QUARANTINE):
                for edit in outcome.edits:
                    self._edit(edit.op, edit.name, edit.value, edit.index)
            if action == Action.QUARANTINE and self.pipeline.config.quarantine.mode == "hold":
                self.quarantine(escape(outcome.quarantine_reason, ascii_only=True)[:100] or "milterd quarantine")
        except (Milter.error, Milter.DisabledAction) as exc:  # libmilter refused (Postfix gone, or stopped waiting), or the
            raise EditsRefused(str(exc) or type(exc).__name__) from exc  # MTA did not negotiate the action (DisabledAction)

    def _progress(self) -> None:
        """Tell Postfix end of message is still running: SMFIR_PROGRESS starts its milter_content_timeout again.

        Nothing to negotiate (no action flag covers it; Postfix reads it at any
        stage).  Called from the end-of-message callback's own thread, the only
        one that may write to libmilter's context.
        """
        try:
            self.progress()
        except Exception:  # noqa: BLE001 - Postfix gone: the final answer fails the same way
            log.debug("cannot send SMFIR_PROGRESS to Postfix", exc_info=True)

    def abort(self) -> int:
        return self._guard("abort", self._abort)

    def _abort(self) -> int:
        self._drop_carried()
        self._finish()
        return Milter.CONTINUE

    def close(self) -> int:
        try:
            self._judge_dropped("close")
            self._finish()
            self.pipeline.close(self.session)
        except Exception:  # noqa: BLE001
            log.exception("error while closing the connection from %s", self.session.client_addr)
        finally:
            if self._counted:
                self._counted = False
                _count(-1)
        return Milter.CONTINUE

    # --- helpers ------------------------------------------------------------
    def _guard(self, stage: str, func: Callable[..., int], *args: Any) -> int:
        if getattr(_undecodable, "raw", None) is not None:
            self._judge_dropped(stage)
        if stage == "eoh" and self.envelope is not None:
            # Postfix sends the queue id with RCPT's macros only once one exists (smtpd_delay_open), and over a unix
            # socket DATA may be skipped: a message refused at a header or at end of headers is logged with it too.
            self.envelope.queue_id = self._symval("i") or self.envelope.queue_id
        if stage in self._no_reply:
            return self._guard_no_reply(stage, func, *args)
        if self._carried is not None and stage != "abort":
            return self._answer_carried(stage)
        try:
            return func(*args)
        except Exception as exc:  # noqa: BLE001 - answer 451 rather than crash or accept blindly
            if isinstance(exc, EditsRefused):  # no internal error: the message's row and summary line say why
                log.warning("Postfix did not take the edits for client %s (%s): it may have stopped waiting "
                            "(milter_content_timeout); answering tempfail", self.session.client_addr, exc)
            else:
                log.exception("internal error at %s for client %s; answering tempfail", stage, self.session.client_addr)
            self._log_failed_message(stage, exc)
            try:
                self.setreply(*setreply_args(INTERNAL_ERROR))
            except Exception:  # noqa: BLE001
                pass
            if stage in ("eom", "abort"):
                self._end_transaction()
            return Milter.TEMPFAIL

    def _guard_no_reply(self, stage: str, func: Callable[..., int], *args: Any) -> int:
        """A stage negotiated without a reply: what it decides waits for the next stage that replies."""
        if self._carried is not None:
            return Milter.NOREPLY  # already refused or failed: the rest of the stage changes nothing
        try:
            result = func(*args)
        except Exception as exc:  # noqa: BLE001 - tempfail at the next reply rather than crash or accept blindly
            log.exception("internal error at %s for client %s; answering tempfail at the next reply", stage, self.session.client_addr)
            self._log_failed_message(stage, exc)
            self._carry(stage, Decision(Action.TEMPFAIL, INTERNAL_ERROR))
            return Milter.NOREPLY
        if result != Milter.CONTINUE and self.refusal is not None:
            self._carry(stage, self.refusal)
        return Milter.NOREPLY

    def _log_failed_message(self, stage: str, error: Exception) -> None:
        """An internal error at a stage of the message itself: log the message as tempfailed (summary line and row).

        From DATA on, an internal error tempfails the whole message, over TCP at once, over
        a unix socket at the next stage that replies (end of headers, end of message): it is
        logged as one at end of message is (``Pipeline.fail``), not dropped unlogged when
        the transaction ends.  End of message logs its own (``Pipeline.eom``: a second call
        here writes nothing).  MAIL and RCPT are not: a 451 there ends no message (the client
        may give another MAIL FROM, the other recipients go on).  Never raises.
        """
        envelope = self.envelope
        if stage not in _MESSAGE_STAGES or envelope is None:
            return
        try:
            # Over a unix socket DATA may be skipped: the queue id comes with end of headers' macros.
            envelope.queue_id = self._symval("i") or envelope.queue_id
        except Exception:  # noqa: BLE001 - logged without it rather than not at all
            log.debug("cannot read the queue id of the failed message", exc_info=True)
        try:
            self.pipeline.fail(self.session, envelope, error)
        except Exception:  # noqa: BLE001 - the 451 is what matters
            log.debug("cannot log the failed message", exc_info=True)

    def _judge_dropped(self, stage: str) -> None:
        """Judge the callback pymilter dropped before this one; what it decides waits for the next reply (``_carried``).

        A HELO name that is not UTF-8 (Postfix passes 8-bit names on with
        smtputf8_enable = no) gets the HELO stage it missed, with the bytes
        decoded with U+FFFD in place of the bad ones (the HELO check finds it
        not a valid name), unless this callback is a new HELO that replaces
        it.  Any other dropped callback is answered with a tempfail.
        """
        raw = take_undecodable()
        if raw is None:
            return
        session = self.session
        shown = escape(raw.decode("utf-8", "surrogateescape"), ascii_only=True)[:200]
        if not dropped_helo(stage, self._connected, self.envelope is not None):
            log.warning("pymilter could not decode '%s' from client %s: a callback before %s was skipped; answering tempfail", shown, session.client_addr, stage)
            if stage not in ("abort", "close"):  # nothing left to answer; connect's failure, for the whole session
                self._carry(stage if self._connected else "connect", Decision(Action.TEMPFAIL, INTERNAL_ERROR))
                # A header or the body tempfails the message: logged as one (the abort that follows logs nothing).
                self._log_failed_message(stage, ValueError(f"pymilter could not decode '{shown}'"))
            return
        log.warning("client %s said HELO '%s', which is not UTF-8; judged as an invalid name", session.client_addr, shown)
        if stage in ("helo", "close"):
            return  # replaced by the new HELO, or no mail to judge
        session.helo = raw.decode("utf-8", "replace")
        try:
            decision = self.pipeline.helo(session)
        except Exception:  # noqa: BLE001 - as _guard: a tempfail at the next reply
            log.exception("internal error at helo for client %s; answering tempfail", session.client_addr)
            decision = Decision(Action.TEMPFAIL, INTERNAL_ERROR)
        if decision is not None:
            self._carry("helo", decision)

    def _carry(self, stage: str, decision: Decision) -> None:
        self._carried = decision
        self._carried_sticky = stage in ("connect", "helo")

    def _answer_carried(self, stage: str) -> int:
        """Answer at *stage* what a no-reply stage decided; a transaction's decision ends with it."""
        decision = self._carried
        assert decision is not None
        if not self._carried_sticky:
            self._carried = None
        result = self._reply(decision)
        if stage == "eom":
            self._finish()  # no end of message ran: logged as a refused transaction, or not at all (an error)
        return result

    def _drop_carried(self) -> None:
        if not self._carried_sticky:
            self._carried = None

    def _require_envelope(self) -> Envelope:
        if self.envelope is None:  # a stage after MAIL without MAIL (should not happen with Postfix)
            self.envelope = self.pipeline.new_envelope(self.session)
        return self.envelope

    def _finish(self) -> None:
        if self.envelope is not None:
            envelope, self.envelope = self.envelope, None
            self.pipeline.finish(self.session, envelope)

    def _end_transaction(self) -> None:
        if self.envelope is not None:
            envelope, self.envelope = self.envelope, None
            envelope.logged = True  # logged at end of message, or deliberately not
            self.pipeline.finish(self.session, envelope)

    def _answer(self, decision: Decision | None) -> int:
        if decision is None:
            return Milter.CONTINUE
        return self._reply(decision)

    def _reply(self, decision: Decision) -> int:
        self.refusal = decision
        if decision.action == Action.DISCARD:
            return Milter.DISCARD
        temporary = decision.action in (Action.TEMPFAIL, Action.GREYLIST)
        reply = decision.reply or (TEMPFAIL if temporary else REJECT)
        result = self._set_reply(reply)
        if decision.reply is not None and decision.action in (Action.TEMPFAIL, Action.GREYLIST, Action.REJECT) and temporary != (result == Milter.TEMPFAIL):
            log.warning("action %s came with the reply %r; answering as its code says", decision.action.label, str(reply)[:200])
        return result

    def _set_reply(self, reply: Reply) -> int:
        """The one place a :class:`Reply` becomes libmilter's reply; the milter result that goes with it.

        The result follows the reply's code, whatever action chose it: a 4xx
        code tempfails, a 5xx one rejects.  libmilter sends the reply only
        with the matching result (a 4xx reply with SMFIS_REJECT would reach
        the client as a plain 550, without its text).
        """
        code, xcode, text = setreply_args(reply)
        try:
            self.setreply(code, xcode, text)
        except Exception:  # noqa: BLE001 - libmilter refused the text: keep the code, never turn it into a 451
            log.warning("libmilter refused the reply %r; answering %s with a plain text", str(reply)[:200], code)
            self.setreply(code, xcode, "Rejected" if code.startswith("5") else "Try again later")
        return Milter.TEMPFAIL if code.startswith("4") else Milter.REJECT

    def _edit(self, op: str, name: str, value: str, index: int) -> None:
        value = header_safe(value)
        if value and self._leadspc:
            value = " " + value  # with HDR_LEADSPC Postfix adds no space after the colon
        if op == "add":
            self.addheader(name, value)
        elif op == "insert":
            self.addheader(name, value, index)
        else:
            self.chgheader(name, index, value)

    def _symval(self, name: str) -> str | None:
        """Macro *name*'s value; one that is not UTF-8 with U+FFFD for its bad bytes.

        pymilter decodes a macro strictly: an 8-bit SASL login name (Postfix passes
        ``{auth_authen}`` on as the client sent it) would otherwise fail every MAIL
        FROM of that user with a tempfail.
        """
        try:
            value: str | None = self.getsymval(name)
        except UnicodeDecodeError as exc:
            return bytes(exc.object).decode("utf-8", "replace")
        return value

    def _macros(self, *names: str) -> dict[str, str]:
        found = {}
        for name in names:
            value = self._symval(name)
            if value:
                found[name] = value
        return found


def _strip_brackets(address: str) -> str:
    """An envelope address as Postfix passes it, as the message is sent: without its angle brackets and without
    a source route (logged and greylisted with the route, the address was another than the one delivered to)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    while address.startswith("@"):
        end = _route_end(address)
        if end < 0:
            break
        address = address[end:].strip()
    return address


def _route_end(address: str) -> int:
    """Where the first hop of the source route at the start of *address* ends: past its colon, found as Postfix's
    rewrite_tree finds it (outside a quoted string and an ``[address literal]``; blanks, ``,@``-lists and text
    after a literal are hops too: ``@a.example,b.example:``, ``@[192.0.2.1]x:``, ``@relay:@relay2:``); -1 for none."""
    quoted = literal = escaped = False
    for at, char in enumerate(address):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif literal:
            literal = char != "]"
        elif char == '"':
            quoted = True
        elif char == "[":
            literal = True
        elif char == ":":
            return at + 1
    return -1
