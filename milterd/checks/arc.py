"""ARC (RFC 8617): the chain of ARC sets that mailing lists and forwarders add, verified with dkimpy.

The chain's result and its sealers (ARC-Seal ``d=``, oldest first) go to
``envelope.check_state("arc")["result"]``: DMARC lets a passing chain whose newest sealer is
in ``[checks.arc] trusted_sealers`` override its failure, and
Authentication-Results reports ``arc=``.  Keys are looked up through
milterd's resolver.  With ``[checks.dkim] unsigned_body = "policy"`` (the
default) a chain whose newest ARC-Message-Signature's ``l=`` leaves part of
the body unsigned fails, as it would without ``l=``: text appended after the
newest sealer signed must not ride on a trusted sealer's pass.

With ``seal``, :class:`ArcSealer` adds milterd's own ARC set to the mail it
lets through (accepted, tagged, its Subject rewritten, or quarantined, as DKIM
signing does), attesting the Authentication-Results milterd wrote, so that the
next hop of a forwarder or list host can trust them.  It seals the message as
Postfix delivers it: our header folded with CRLF, the Subject tagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import authres
import dkim
from pydantic import Field, field_validator

from .. import dkimfast
from ..authresults import authserv_id_of, field_name
from ..dkimsign import LABELS, parse_key, signing_domain
from ..files import read_error, read_regular
from ..message.model import Action, Envelope, HeaderEdit, Hit, Session, SpoolError, Verdict, header_safe
from ..message.policy import plan_headers, spam_verdict_field
from ..options import CheckSwitches, ConfigError, domain_names
from . import Check, Hits, Symbol
from .configured import ConfiguredCheck
from .dkim import QUIET, DnsRecorder, fields_as_delivered, record_name
from .dmarc import is_trusted_sealer
from .spf import message_results

if TYPE_CHECKING:
    from ..services import Services


class ArcChecks(CheckSwitches):
    """ARC chains (RFC 8617) of mailing lists and forwarders; trusted sealers override a DMARC failure."""

    trusted_sealers: list[str] = Field([], description="Domains (ARC-Seal d=) of mailing lists and forwarders whose passing ARC chain overrides a DMARC failure, as Gmail and Rspamd do.")
    min_key_bits: int = Field(1024, ge=512, description="Smallest RSA key accepted in an ARC chain.")
    seal: bool = Field(False, description="ARC-seal the mail this check sees and accepts (for a forwarder or mailing list host: the next hop can trust milterd's Authentication-Results); needs seal_domain, seal_selector and seal_key_file.")
    seal_domain: str = Field("", description="The sealing domain (ARC-Seal d=).")
    seal_selector: str = Field("", description="The sealing selector (s=): the key is published at SELECTOR._domainkey.DOMAIN.")
    seal_key_file: str = Field("", description="The RSA private key (PEM) that seals, relative to this file ('milterd dkim keygen' writes one).")

    @field_validator("seal_domain")
    @classmethod
    def _seal_domain(cls, value: str) -> str:
        # Written as it is into ARC-Seal d=: "ex ample.org" or "a;b=c" made a seal no verifier takes, "bücher.example"
        # one error a message.  Its A-labels, as [dkim_signing] keys take a domain.
        if not value:
            return value
        domain = signing_domain(value)
        if domain is None:
            raise ValueError(f"{value[:80]!r} is not a domain name (lists.example.org)")
        return domain

    @field_validator("seal_selector")
    @classmethod
    def _seal_selector(cls, value: str) -> str:
        if value and not LABELS.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not a selector: letters, digits, '-' and '_' in dot-separated labels (arc2026)")
        return value

    @field_validator("trusted_sealers")
    @classmethod
    def _sealers(cls, value: list[str]) -> list[str]:
        # Compared whole with the seal's d=: "*.google.com" or "https://lists.example.org" never matched, silently.
        return domain_names(value, "write each sealer's domain as its ARC-Seal d= gives it (lists.example.org)")


STATE = "arc"
#: RFC 8617 §5.2: a message may carry at most 50 ARC sets; with more, the chain fails unverified.
MAX_ARC_SETS = 50
#: The DNS deadline (``Resolver.stage_deadline``) of the chain's key lookups, started when they are asked.
ARC_STAGE = "eom-arc"


@dataclass(frozen=True)
class ArcResult:
    """The chain's validation: ``pass``, ``fail`` or ``none``, its sealers oldest first, and why."""

    result: str
    sealers: tuple[str, ...] = ()
    reason: str = ""
    temporary: bool = False
    #: What the newest sealer recorded on receipt (its ARC-Authentication-Results), read when the chain
    #: passed: (method, result, domain) for dkim (header.d), spf (smtp.mailfrom's domain) and dmarc (header.from).
    recorded: tuple[tuple[str, str, str], ...] = ()
    #: The newest set's sealer (its ARC-Seal's d=) when the chain failed because a key of that set in the
    #: sealer's own domain could not be looked up (DNS error), and asked again on its own it still could not
    #: (:meth:`Arc.on_eom`, for a trusted sealer): the chain may pass once DNS answers.  "" otherwise.
    unverified_sealer: str = ""
    #: The newest set's key names in the sealer's domain whose lookup failed in the validation.
    unverified_keys: tuple[str, ...] = ()


def verify_chain(message: bytes, dnsfunc: DnsRecorder, min_key_bits: int, *, unsigned_body: str = "policy") -> ArcResult:
    """Validate the ARC chain of *message*.

    *unsigned_body* is ``[checks.dkim] unsigned_body``: with ``"policy"`` a chain whose newest
    ARC-Message-Signature leaves part of the body unsigned (``l=``) fails, as it would if that
    signature had no ``l=`` (the body changed after the newest sealer signed it).
    """
    dkimfast.install()  # RSA by OpenSSL, faster canonicalisation: the same verdicts (milterd/dkimfast.py)
    unsigned = 0
    arc: dkim.ARC | None = None
    try:
        arc = dkim.ARC(message, logger=QUIET, minkey=min_key_bits)
        newest, _ = arc.sorted_arc_headers()
        if newest > MAX_ARC_SETS:
            # Checked first: dkimpy would verify every set, hashing the body once per set.
            return ArcResult("fail", (), f"ARC set i={newest}: more than {MAX_ARC_SETS} sets")
        with dkimfast.one_body():
            cv, results, reason = arc.verify(dnsfunc=dnsfunc)
        if cv == dkim.CV_Pass and unsigned_body == "policy":
            unsigned = unsigned_body_bytes(arc)
    except dkim.DKIMException as exc:
        cv, results, reason = dkim.CV_Fail, [], str(exc)
    except Exception as exc:  # noqa: BLE001 - dkimpy on hostile input: a failed chain, never a crash
        cv, results, reason = dkim.CV_Fail, [], f"{type(exc).__name__}: {exc}"
    sealers = tuple(
        r["as-domain"].decode("ascii", "replace").lower() for r in sorted(results, key=lambda r: int(r.get("instance", 0))) if r.get("as-domain")
    )
    if cv == dkim.CV_Pass and unsigned:
        # A trusted sealer's pass overrides DMARC: text appended after its l= must not ride on it.
        return ArcResult("fail", sealers, f"ARC-Message-Signature i={newest}: l= leaves {unsigned} bytes of the body unsigned")
    if cv == dkim.CV_Pass:
        return ArcResult("pass", sealers, str(reason), recorded=newest_results(arc))
    if cv == dkim.CV_None:
        return ArcResult("none", sealers, str(reason))
    sealer, keys = _newest_keys_not_looked_up(arc, dnsfunc)
    return ArcResult("fail", sealers, str(reason)[:200], temporary=bool(dnsfunc.failed), unverified_sealer=sealer, unverified_keys=keys)


def _newest_keys_not_looked_up(arc: dkim.ARC | None, dnsfunc: DnsRecorder) -> tuple[str, tuple[str, ...]]:
    """The newest ARC set's sealer (its ARC-Seal's d=) and the key names of that set in the sealer's domain
    whose lookup failed; ("", ()) when none did.

    Only the newest set's keys in the sealer's own domain count: a lookup that fails elsewhere (an older
    set's, or a newest ARC-Message-Signature's d= in a domain whose DNS a forger keeps silent) says nothing
    of whether the sealer signed.  A failure here may still be the forger's doing (the shared deadline spent
    on their silent domain first, so the sealer's key was never asked): :meth:`Arc.on_eom` asks again.
    """
    if arc is None or not dnsfunc.failed:
        return "", ()
    try:
        newest, headers = arc.sorted_arc_headers()
        tags = [dkim.parse_tag_value(v) for instance, (name, v) in headers
                if instance == newest and name.lower() in (b"arc-seal", b"arc-message-signature")]
        seal = next(dkim.parse_tag_value(v) for instance, (name, v) in headers if instance == newest and name.lower() == b"arc-seal")
        sealer = seal.get(b"d", b"").decode("ascii").strip().lower().rstrip(".")
        names = {record_name(f"{t.get(b's', b'').decode('ascii').strip()}._domainkey.{t.get(b'd', b'').decode('ascii').strip()}") for t in tags}
    except Exception:  # noqa: BLE001 - no newest seal, or one dkimpy cannot read: no sealer to wait for
        return "", ()
    failed = tuple(sorted(name for name in names if name in dnsfunc.failed and name.partition("._domainkey.")[2] == sealer))
    return (sealer, failed) if sealer and failed else ("", ())


def still_not_looked_up(result: ArcResult, trusted: Sequence[str], resolver: Any, again: Callable[[], ArcResult]) -> ArcResult:
    """*result* keeping its :attr:`ArcResult.unverified_sealer` only when the sealer is in *trusted* and one of
    its keys that failed still fails asked again with a deadline of its own.  When they answer now, the chain
    is validated *again* (the keys are in the cache: a lookup that timed out once and then answered must not
    leave a genuine post failed), and that result stands, never held; a key that does not exist leaves the
    chain failed as it was (DMARC's policy applies)."""
    sealer = result.unverified_sealer
    if not sealer:
        return result
    if is_trusted_sealer(sealer, trusted):
        deadline = resolver.deadline()
        answers = [resolver.txt(name, deadline) for name in result.unverified_keys]
        if any(answer.failed for answer in answers):
            return result
        if any(answer.ok for answer in answers):
            return replace(again(), unverified_sealer="", unverified_keys=())
    return replace(result, unverified_sealer="", unverified_keys=())


#: The longest newest ARC-Authentication-Results read for the results it records (more records nothing):
#: authres's parser takes time quadratic in a field's length, 0.7 s of CPU for 32 KB, and any sender can seal
#: with a key of its own domain.  A set's results for a few dozen signatures fit many times over.
MAX_RECORDED_RESULTS = 8192


def newest_results(arc: dkim.ARC) -> tuple[tuple[str, str, str], ...]:
    """The results the newest ARC set's ARC-Authentication-Results records, as (method, result, domain).

    Only dkim (``header.d``), spf (the domain of ``smtp.mailfrom``) and dmarc (``header.from``) are
    kept, lower case; a field authres cannot parse records nothing (so it vouches for nothing).
    """
    newest, headers = arc.sorted_arc_headers()
    value = next((v for instance, (name, v) in headers if instance == newest and name.lower() == b"arc-authentication-results"), None)
    if value is None or len(value) > MAX_RECORDED_RESULTS:
        return ()
    # "i=N; authserv-id; results": authres parses what follows the instance tag.
    text = value.decode("utf-8", "replace").replace("\r\n", "").replace("\n", "").partition(";")[2]
    try:
        parsed = authres.parse_value(text)
    except Exception:  # noqa: BLE001 - whatever the sealer wrote: no recorded pass
        return ()
    wanted = {"dkim": ("header", "d"), "spf": ("smtp", "mailfrom"), "dmarc": ("header", "from")}
    recorded = []
    for result in parsed.results:
        method = str(result.method).lower()
        if method not in wanted:
            continue
        kind, name = wanted[method]
        value_of = next((str(p.value) for p in result.properties if str(p.type).lower() == kind and str(p.name).lower() == name), "")
        domain = value_of.rpartition("@")[2].strip().lower().rstrip(".")
        recorded.append((method, str(result.result).lower(), domain))
    return tuple(recorded)


def unsigned_body_bytes(arc: dkim.ARC) -> int:
    """How many bytes of the canonicalized body the newest ARC-Message-Signature's ``l=`` leaves unsigned (0 without ``l=``)."""
    newest, headers = arc.sorted_arc_headers()
    for instance, (name, value) in headers:
        if instance == newest and name.lower() == b"arc-message-signature":
            sig = dkim.parse_tag_value(value)
            if b"l" not in sig:
                return 0
            policy = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"relaxed/relaxed"))  # dkimpy's default for ARC
            return max(0, len(policy.canonicalize_body(arc.body)) - int(sig[b"l"]))
    return 0


class Arc(ConfiguredCheck[ArcChecks]):
    """The ARC chain of the message."""

    name: ClassVar[str] = "arc"
    description: ClassVar[str] = "ARC chain verified with dkimpy; trusted sealers override DMARC failures"
    order: ClassVar[int] = 61
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("ARC_PASS", 0.0, "The message's ARC chain validated"),
        Symbol("ARC_TRUSTED", -0.5, "The ARC chain validated and its newest sealer is in [checks.arc] trusted_sealers"),
        Symbol("ARC_FAIL", 0.5, "The message has an ARC chain that does not validate"),
        Symbol("ARC_TEMPFAIL", 0.0, "The ARC chain could not be validated: a key could not be looked up (DNS error)"),
    )

    def eom_waits(self, envelope: Envelope) -> bool:
        """Only a message with an ARC chain waits (for the sealers' keys in DNS)."""
        return bool(envelope.header_count("ARC-Seal"))

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        if not envelope.header_count("ARC-Seal"):
            envelope.check_state(STATE)["result"] = ArcResult("none")
            return ()  # the common case: no symbol, arc=none in Authentication-Results
        if envelope.size > self.services.config.checks.dkim.max_size:
            return ()
        resolver = self.services.resolver
        # Its own deadline, as the link lookups': a key lookup of the DKIM check, started first, may have spent the
        # end of message's while this check waited for a thread of the pipeline's pool.
        dnsfunc = DnsRecorder(resolver, resolver.stage_deadline(envelope.dns_deadlines, ARC_STAGE))
        unsigned_body = self.services.config.checks.dkim.unsigned_body
        result = verify_chain(envelope.message_bytes(), dnsfunc, self.options.min_key_bits, unsigned_body=unsigned_body)
        result = still_not_looked_up(result, self.options.trusted_sealers, resolver, lambda: verify_chain(
            envelope.message_bytes(), DnsRecorder(resolver, resolver.deadline()), self.options.min_key_bits, unsigned_body=unsigned_body))
        envelope.check_state(STATE)["result"] = result
        chain = " > ".join(result.sealers)
        if result.result == "pass":
            hits = [Hit("ARC_PASS", detail=chain)]
            if result.sealers and is_trusted_sealer(result.sealers[-1], self.options.trusted_sealers):
                hits.append(Hit("ARC_TRUSTED", detail=result.sealers[-1]))
            return hits
        if result.temporary:
            return [Hit("ARC_TEMPFAIL", detail=f"{chain}: {result.reason}"[:200])]
        return [Hit("ARC_FAIL", detail=f"{chain}: {result.reason}"[:200])]


def delivered_field(name: str, value: str) -> bytes:
    """The header field *name* with milterd's *value* as Postfix delivers it: the value as the
    adapter sends it (:func:`~milterd.message.model.header_safe`), each line ended with CRLF."""
    return (f"{name}: " + header_safe(value).replace("\n", "\r\n") + "\r\n").encode("utf-8", "replace")


def message_for_seal(envelope: Envelope, authserv_id: str, results: str, subject_edits: Sequence[HeaderEdit] = ()) -> bytes:
    """The message as it will leave, as far as the seal covers it: our Authentication-Results on top, folded as
    delivered (:func:`delivered_field`), and the Subject as *subject_edits* leave it (tagged at
    rewrite_subject), by the same :func:`~milterd.checks.dkim.fields_as_delivered` that DKIM signing's header
    section is made of.  Every other Authentication-Results field is left out (forged ones claiming our id
    are removed from the message anyway): no ARC signature covers one, so no hash changes, and dkimpy's
    sealing parses each with authres, in time quadratic in its length (30 fields of 32 KB: 45 s of CPU),
    and stopped at one it could not read (a Latin-1 byte, a version other than 1)."""
    kept = [delivered_field("Authentication-Results", results)]
    kept += [field + b"\r\n" for field in fields_as_delivered(envelope, list(subject_edits))
             if field_name(field) != b"authentication-results"]
    return b"".join(kept) + b"\r\n" + envelope.spool.read()


#: ``cv=fail`` among an ARC-Seal's tags (relaxed-canonicalised value).
_CV_FAIL = re.compile(rb"(?:^|;)\s*cv\s*=\s*fail\s*(?:;|$)", re.IGNORECASE)


def chain_already_failed(arc: dkim.ARC) -> bool:
    """Whether the newest ARC-Seal of the message says ``cv=fail``: the chain ended at an earlier hop."""
    newest, headers = arc.sorted_arc_headers()
    return any(i == newest and name.lower() == b"arc-seal" and _CV_FAIL.search(value) for i, (name, value) in headers)


def seal(message: bytes, domain: str, selector: str, key: bytes, authserv_id: str) -> list[tuple[str, str]]:
    """The next ARC set for *message* as (name, value) pairs, values folded with LF; [] when the chain ended."""
    dkimfast.install()  # RSA by OpenSSL: the same seals (milterd/dkimfast.py)
    arc = dkim.ARC(message, logger=QUIET)
    if chain_already_failed(arc):
        return []  # RFC 8617 §5.1: a chain whose last seal says cv=fail has failed; no new set is added
    include = [h for h in arc.default_sign_headers() if not (h.lower().startswith(b"x-virus-") or spam_verdict_field(h.decode("latin-1")))]
    lines = arc.sign(selector.encode("ascii"), domain.encode("ascii"), key, authserv_id.encode("utf-8"), include_headers=include)
    pairs = []
    for line in lines:
        name, _, value = line.partition(b":")
        pairs.append((name.decode("ascii"), value.strip().decode("ascii").replace("\r\n", "\n")))
    return pairs


#: The actions whose message is delivered, now or later, and so sealed: those DKIM signing signs
#: (:class:`milterd.checks.dkim.DkimSigner`).  A quarantined message carries the edits of its verdict:
#: held (``[quarantine] mode = "hold"``), it is delivered with them, seal included, once released
#: with ``postsuper -H``; discarded, nothing is delivered (a release re-injects the stored copy as received).
SEALED_ACTIONS = frozenset({Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT, Action.QUARANTINE})


class ArcSealer(Check):
    """Seals accepted mail with milterd's ARC set (``[checks.arc] seal``): the message as delivered, its Subject tagged at rewrite_subject."""

    name: ClassVar[str] = "arc_seal"
    description: ClassVar[str] = "ARC-seals accepted mail with the key of [checks.arc] seal_key_file"
    order: ClassVar[int] = 9_000  # after Authentication-Results, before DKIM signing
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("ARC_SEALED", 0.0, "milterd added its ARC set to the message"),
        Symbol("ARC_SEAL_ERROR", 0.0, "milterd should have sealed the message but could not (the log says why)"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        options = services.config.checks.arc
        self.applies_to_trusted = not options.skip_trusted  # type: ignore[misc]
        self.applies_to_authenticated = not options.skip_authenticated  # type: ignore[misc]
        where = services.config.path or Path("milter.conf")
        for key in ("seal_domain", "seal_selector", "seal_key_file"):
            if not getattr(options, key):
                raise ConfigError(where, f"[checks.arc] {key}", "needed when seal = true")
        if not services.config.checks.spf.authentication_results:
            # The seal attests milterd's own Authentication-Results: without them nothing was sealed, unsaid.
            raise ConfigError(where, "[checks.arc] seal", "needs [checks.spf] authentication_results = true (the seal attests those results)")
        path = services.config.directory / options.seal_key_file
        try:
            data = read_regular(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(where, "[checks.arc] seal_key_file", f"cannot read {path}: {read_error(exc)}") from None
        try:
            algorithm, self.key = parse_key(data)
        except ValueError as exc:
            raise ConfigError(where, "[checks.arc] seal_key_file", f"{path}: {exc}") from None
        if algorithm != "rsa":
            raise ConfigError(where, "[checks.arc] seal_key_file", f"{path}: ARC seals with RSA keys only")

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        options = services.config.checks.arc
        return bool(options.enabled and options.seal)

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        results = envelope.check_state("spf").get("authentication_results")
        if results is None or verdict.action not in SEALED_ACTIONS:
            return verdict  # nothing attested, or refused (no copy leaves)
        chain = envelope.check_state(STATE).get("result")
        if chain is None and envelope.header_count("ARC-Seal"):
            # Not validated (over [checks.dkim] max_size): our header has no arc= for the seal to carry, so dkimpy adds nothing.
            return _with_hit(verdict, "ARC_SEAL_ERROR", f"the chain was not validated (size {envelope.size} > [checks.dkim] max_size)")
        if isinstance(chain, ArcResult) and chain.temporary:
            # Sealed, it would say cv=fail and end for every later hop a chain that our resolver could not check.
            return _with_hit(verdict, "ARC_SEAL_ERROR", "the chain could not be validated (DNS error)")
        options = self.services.config.checks.arc
        authserv_id = authserv_id_of(results)
        if not results.isascii():
            # dkimpy reads our header with authres, which refuses UTF-8 (an SMTPUTF8 sender, a UTF-8 login):
            # unread, it seals nothing.  The seal attests the same results, those values left out.
            results = message_results(results.partition(";")[0].strip(), session, envelope, ascii_only=True, folded=True) or results
        # The pipeline tags the Subject after the verdict (rewrite_subject, or a quarantined message over
        # its threshold): the ARC-Message-Signature covers the Subject, so it is computed over the tagged one.
        subject_edits = [e for e in plan_headers(verdict, {}, envelope.header("Subject"), self.services.config.actions) if e.name == "Subject"]
        try:
            message = message_for_seal(envelope, authserv_id, results, subject_edits)
            arc_set = seal(message, options.seal_domain, options.seal_selector, self.key, authserv_id)
        except SpoolError:
            raise  # the message unread: the pipeline answers 451, not an unsigned delivery
        except Exception as exc:  # noqa: BLE001 - an unsealed message is delivered; the log says why
            return _with_hit(verdict, "ARC_SEAL_ERROR", f"{type(exc).__name__}: {exc}"[:200])
        if not arc_set:
            return _with_hit(verdict, "ARC_SEAL_ERROR", "the chain ended (an earlier set failed)")
        for name, value in reversed(arc_set):
            envelope.edits.append(HeaderEdit("insert", name, value, 0))
        return _with_hit(verdict, "ARC_SEALED", f"d={options.seal_domain} s={options.seal_selector}")


def _with_hit(verdict: Verdict, symbol: str, detail: str) -> Verdict:
    return replace(verdict, symbols={**verdict.symbols, symbol: 0.0}, details={**verdict.details, symbol: detail})


CHECKS: tuple[type[Check], ...] = (Arc, ArcSealer)
