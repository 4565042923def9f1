"""SPF (RFC 7208) with pyspf, and the Authentication-Results header (RFC 8601).

SPF is evaluated at MAIL FROM for the envelope sender, or for the HELO
identity (``postmaster@HELO``) when the sender is null.  ``fail`` may be set
to reject every recipient with ``550 5.7.23``.  pyspf asks milterd's
resolver (``[dns] nameservers``), bounded by the stage's deadline.

Once every end-of-message check has run (at the verdict), one
``Authentication-Results`` header with our authserv-id carrying the SPF,
DKIM, DMARC and ARC results is put at the top, and incoming ones claiming
that id are removed first (a forger's ``spf=pass`` must not reach a Sieve
rule or a mail client).  That part runs for every client, trusted and authenticated ones included.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar, Literal

import spf
from pydantic import Field

from ..authresults import authserv_id_of as authserv_id_of  # re-exported
from ..authresults import build as build_authentication_results
from ..authresults import forged_indexes
from ..dns import ExpiringLRU, traced_lookups, use_for_spf
from ..message.model import Action, Envelope, HeaderEdit, Hit, Session, Verdict
from ..message.reply import Reply
from ..options import CheckSwitches
from . import Hits, Symbol
from .configured import ConfiguredCheck
from .sender import dns_name

if TYPE_CHECKING:
    from ..services import Services


class SpfChecks(CheckSwitches):
    """SPF (RFC 7208) at MAIL FROM, the HELO identity for the null sender; Authentication-Results."""

    enabled: bool = Field(True, description="Evaluate SPF. Authentication-Results and the removal of forged ones (the two switches below) run either way.")
    fail_action: Literal["score", "reject"] = Field("score", description="SPF fail: score SPF_FAIL, or reject each recipient with 550 5.7.23.")
    authentication_results: bool = Field(True, description="Insert one Authentication-Results header (RFC 8601) with the SMTP AUTH, SPF, DKIM, DMARC and ARC results.")
    remove_forged: bool = Field(True, description="Remove incoming Authentication-Results headers that claim our authserv-id.")


RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_STATE = "spf"
#: SPF results kept per worker (a few hundred bytes each).
RESULTS_CACHE_SIZE = 4096

Key = tuple[str, str, str]


class SpfResults(ExpiringLRU[Key, tuple[str, str]]):
    """SPF results (client address, sender, HELO) → (result, explanation), each kept until its DNS answers expire."""

    def __init__(self, size: int = RESULTS_CACHE_SIZE) -> None:
        super().__init__(size)


class _Query(spf.query):  # type: ignore[misc]  # pyspf has no type hints
    """pyspf's query, with DNS errors of the ``ptr`` mechanism and the ``%{p}`` macro read as RFC 7208 §5.5 says.

    pyspf lets them through as a temperror, and both lookups are in DNS the sending client controls (its
    reverse zone, the zone its PTR names): a forger made its own PTR time out, and an SPF ``ptr -all`` domain's
    ``p=reject`` became DMARC_TEMPFAIL, delivered.
    """

    def validated_ptrs(self) -> list[str]:
        """The client's PTR names whose addresses include it: a DNS error on the PTR lookup means none (the
        mechanism "fails to match"), one on a name's address lookup skips that name."""
        try:
            names = self.dns_ptr(self.i)
        except spf.TempError:
            return []
        validated = []
        for name in names[:spf.MAX_PTR]:
            try:
                if self.cidrmatch(self.dns_a(name, self.A), self.cidrmax):
                    validated.append(name)
            except spf.TempError:
                continue
        return validated


def evaluate(client_addr: str, sender: str, helo: str, timeout: float, results: SpfResults) -> tuple[str, str]:
    """pyspf's ``(result, explanation)`` for this client, sender and HELO, from *results* while its DNS answers last."""
    key = (client_addr, sender, helo)
    cached = results.get(key)
    if cached is not None:
        return cached
    # One deadline for the whole evaluation: pyspf's querytime counts only lookups that answered.
    with traced_lookups(time.monotonic() + timeout) as trace:
        local, at, domain = sender.rpartition("@")
        query = _Query(i=client_addr, s=sender, h=helo, timeout=timeout, querytime=timeout)
        if "@" in local:
            # pyspf splits at the first "@": '"x@y"@example.org' would be judged for 'y"@example.org', none.
            query.l, query.o, query.d = local, domain, domain
        result, _, explanation = query.check()
    value = (str(result), str(explanation))
    if trace.lookups and value[0].lower() != "temperror":  # a timeout depends on the moment, not on the answers
        results.put(key, value, trace.expires)
    return value


def identities(sender: str, helo: str) -> tuple[str, str]:
    """The MAIL FROM and HELO identities SPF evaluates: each domain without one trailing dot (the
    absolute form of the same name, which pyspf would take for a malformed domain and judge ``none``)."""
    local, at, domain = sender.rpartition("@")
    if at:
        sender = f"{local}@{domain.removesuffix('.')}"
    return sender, helo.removesuffix(".")


def authentication_results(authserv_id: str, spf: dict[str, str] | None, auth_user: str) -> str:
    """The value of an Authentication-Results header with SMTP AUTH and SPF only (without the name)."""
    return build_authentication_results(authserv_id, auth_user=auth_user, spf=spf)


def message_results(authserv_id: str, session: Session, envelope: Envelope, ascii_only: bool = False, folded: bool = False) -> str | None:
    """The value of our Authentication-Results header for this message, from what the SPF, DKIM, DMARC
    and ARC checks recorded (None when none ran and the client did not authenticate); with *ascii_only*
    and *folded*, as :func:`milterd.authresults.build` says."""
    spf_state = envelope.check_state(_STATE).get("evaluation")
    dkim = envelope.check_state("dkim").get("result")
    dmarc = envelope.check_state("dmarc").get("result")
    arc = envelope.check_state("arc").get("result")
    if spf_state is None and dkim is None and dmarc is None and arc is None and not session.authenticated:
        return None
    return build_authentication_results(authserv_id, auth_user=session.auth_user, spf=spf_state, dkim=dkim, dmarc=dmarc, arc=arc,
                                        ascii_only=ascii_only, folded=folded)


#: The DNS deadline (``Resolver.stage_deadline``) of SPF's lookups, apart from the MAIL stage's.
SPF_STAGE = "mail-spf"


class Spf(ConfiguredCheck[SpfChecks]):
    """SPF of the envelope sender (or HELO), and Authentication-Results."""

    name: ClassVar[str] = "spf"
    description: ClassVar[str] = "SPF of MAIL FROM (HELO for bounces); Authentication-Results; forged ones removed"
    order: ClassVar[int] = 50
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("SPF_PASS", -0.5, "SPF pass: the client may send for the sender's domain"),
        Symbol("SPF_FAIL", 3.0, "SPF fail: the sender's domain says this client may not send for it"),
        Symbol("SPF_SOFTFAIL", 1.5, "SPF softfail: the sender's domain says this client is probably not allowed"),
        Symbol("SPF_NEUTRAL", 0.0, "SPF neutral: the sender's domain makes no claim about this client"),
        Symbol("SPF_NONE", 0.5, "SPF none: the sender's domain publishes no SPF record"),
        Symbol("SPF_TEMPERROR", 0.0, "SPF temperror: a DNS error while evaluating SPF"),
        Symbol("SPF_PERMERROR", 0.5, "SPF permerror: the domain's SPF record is broken"),
    )

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        # Also with SPF itself off: the one Authentication-Results header (DKIM, DMARC and ARC
        # results too) is written here, and a forged one claiming our id must never be delivered.
        options = cls.options_of(services)
        return bool(options.enabled or options.authentication_results or options.remove_forged)

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        # Evaluation honours the bypass itself; Authentication-Results cleaning runs for everyone.
        self.applies_to_trusted = True  # type: ignore[misc]
        self.applies_to_authenticated = True  # type: ignore[misc]
        use_for_spf(lambda: services.resolver)
        self.results = SpfResults()

    @property
    def authserv_id(self) -> str:
        """Our authserv-id: ``[milter] authserv_id``, else the host name."""
        # Without a final dot: "mx.example.org." is no authserv-id authres (and so dkimpy's ARC) can read back.
        return (self.services.config.milter.authserv_id or self.services.config.hostname).rstrip(".")

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        envelope.check_state(_STATE).clear()
        if not self.options.enabled or self.bypassed(session) or session.ip is None:
            return ()

        sender, helo = identities(envelope.sender.strip(), session.helo.strip())
        if not sender and (not helo or helo.startswith("[")):
            return ()
        domain = sender.rpartition("@")[2] if sender else helo
        resolver = self.services.resolver
        # A deadline of its own, set now: the MAIL stage's is spent by lookups of names the client chose (its
        # HELO name, its PTR names' addresses, the sender domain's MX), and a forged MAIL FROM domain's SPF
        # then timed out: an aligned temperror, and DMARC's p=reject gave way to DMARC_TEMPFAIL.
        remaining = max(0.05, resolver.stage_deadline(envelope.dns_deadlines, SPF_STAGE) - time.monotonic())
        try:
            if not domain.startswith("[") and dns_name(domain) is None:
                # Malformed (RFC 7208 §4.3): no DNS query can name it, so a permanent "none", not a temperror.
                result, explanation = "none", "the domain cannot be looked up in DNS"
            else:
                result, explanation = evaluate(session.client_addr, sender, helo or "unknown", remaining, self.results)
        except Exception as exc:  # noqa: BLE001 - pyspf on hostile input: a temperror, never a crash
            result, explanation = "temperror", f"{type(exc).__name__}: {exc}"
        result = str(result).lower()
        if result not in RESULTS:
            result = "permerror" if result == "ambiguous" else "temperror"
        envelope.check_state(_STATE)["evaluation"] = {
            "result": result,
            "explanation": str(explanation),
            "identity": "mailfrom" if sender else "helo",
            "sender": sender or f"postmaster@{helo}",
            "helo": helo,
        }
        if result == "fail" and self.options.fail_action == "reject":
            return ()  # the recipients are refused one by one (RCPT), and the log says why
        return [Hit(f"SPF_{result.upper()}", detail=f"{sender or helo}: {explanation}"[:200])]

    def on_rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Hits:
        state = envelope.check_state(_STATE).get("evaluation")
        if state is None or state["result"] != "fail" or self.options.fail_action != "reject":
            return ()
        domain = state["sender"].rpartition("@")[2]
        reply = Reply("550", "5.7.23", f"<{state['sender']}>: SPF validation failed for {domain}: {state['explanation']}"[:389])
        return [Hit("SPF_FAIL", detail=state["explanation"][:200], action=Action.REJECT, reply=reply)]

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        # After every end-of-message check, so that the one header carries
        # DKIM, DMARC and ARC too.  Deletions first, highest index first, then
        # our header at the top: the indexes refer to the headers as received.
        options, authserv_id = self.options, self.authserv_id  # properties (a configuration walk each): read once
        if options.remove_forged:
            for index in forged_indexes(envelope.headers, authserv_id):
                envelope.edits.append(HeaderEdit("change", "Authentication-Results", "", index))
        if options.authentication_results:
            # Folded where one line would pass RFC 5322's 998 octets (five long DKIM d= and s= did).  ASCII unless the
            # message is SMTPUTF8 (RFC 6532): an 8-bit HELO or login in a plain message made the header unparseable.
            value = message_results(authserv_id, session, envelope, ascii_only=not envelope.smtputf8, folded=True)
            if value is not None:
                envelope.edits.append(HeaderEdit("insert", "Authentication-Results", value, 0))
                envelope.check_state(_STATE)["authentication_results"] = value  # what an ARC seal attests
        return verdict


CHECKS = (Spf,)
