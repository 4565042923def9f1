"""DKIM verification (RFC 6376) with dkimpy, and signing of outgoing mail.

Every DKIM-Signature (up to ``[checks.dkim] max_signatures``) is verified at
end of message; dkimpy honours ``l=``, ``t=`` and ``x=`` and refuses keys
smaller than ``min_key_bits``; a signature whose ``h=`` leaves out From is a
permerror (RFC 6376 §6.1.1), and so is an ``rsa-sha1`` signature (RFC 8301) and
one its key record's ``h=`` or ``t=s`` does not allow; one whose ``l=`` leaves part of the body unsigned
is, with ``unsigned_body = "policy"`` (the default), the RFC 8601 result
``policy``, not a pass (RFC 6376 §8.2: anyone can append to such a message);
its RSA arithmetic is done by OpenSSL and its relaxed canonicalisation skips
what changes nothing (:mod:`milterd.dkimfast`, the same verdicts).  Keys are looked up through milterd's resolver
(``[dns] nameservers``, bounded by ``[dns] timeout``), never the system's.
The results go to ``envelope.check_state("dkim")["result"]`` for DMARC and
Authentication-Results.  A message over ``max_size`` is not verified: it has
no ``result`` (Authentication-Results claims none), and ``["unverified"]``
lists the d= of the signatures left unverified, which DMARC counts as it
counts a key it could not look up (temperror when one would align).

:class:`DkimSigner` signs mail from trusted networks and authenticated
clients with the keys of ``[dkim_signing]`` (see :mod:`milterd.dkimsign`),
after the verdict, over the headers and body as Postfix passed them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Literal

import dkim
from pydantic import Field

from .. import dkimfast, dkimsign
from ..dns import fold_case
from ..message.model import Action, Envelope, HeaderEdit, Hit, Session, SpoolError, Verdict, header_safe
from ..message.policy import MAX_LINE_OCTETS, plan_headers
from ..options import CheckSwitches, Size
from . import Check, Hits, Symbol
from .configured import ConfiguredCheck
from .dmarc import aligned, envelope_from_domains, from_fields, org_domain, queryable, signing_domains
from .localdomains import SenderLogin, login_table, unowned_from

if TYPE_CHECKING:
    from ..services import Services


class DkimChecks(CheckSwitches):
    """DKIM signatures (RFC 6376) verified with dkimpy; keys looked up through [dns]."""

    max_signatures: int = Field(5, ge=0, le=50, description="Most DKIM signatures verified per message (topmost first); the rest are ignored.")
    min_key_bits: int = Field(1024, ge=512, description="Smallest RSA key accepted: a signature made with a smaller key is a permerror (DKIM_INVALID).")
    max_size: Size = Field(10 * 1024 * 1024, ge=1024, description="Larger messages are not verified (DKIM_NONE with the reason in the log); an aligned signature left unverified does not pass DMARC, and a p=reject failure is then quarantined, not rejected. Keep it at or above Postfix's message_size_limit. At least 1K (0, Postfix's \"no limit\", had no message verified).")
    unsigned_body: Literal["policy", "pass"] = Field("policy", description="A signature whose body length tag l= leaves part of the body unsigned (text appended after the signed length, which anyone can add to a genuine signed message, RFC 6376 §8.2): \"policy\" gives it the result policy (Authentication-Results dkim=policy with the reason, DKIM_INVALID when no other signature passes, and DMARC does not count it); \"pass\" lets it pass as RFC 6376 allows. The same holds for the newest ARC-Message-Signature of an ARC chain (\"policy\": the chain fails). A signature whose l= covers the whole body passes either way.")


STATE = "dkim"
#: The results RFC 8601 knows for dkim (``policy``: signed, but some aspect of the signature was not acceptable to the ADMD).
RESULTS = ("pass", "fail", "policy", "neutral", "temperror", "permerror")


#: The DNS deadlines (``Resolver.stage_deadline``) of the key lookups of signatures aligned with a From
#: domain, one per From domain (this, a colon and its organizational domain): apart from the end of
#: message's, which any sender can spend with keys of its own DNS, and from each other's.
FROM_KEYS_STAGE = "eom-from-keys"


@dataclass(frozen=True)
class SignatureResult:
    """The outcome of one DKIM-Signature."""

    domain: str
    selector: str
    result: str
    reason: str = ""
    header_d: str = ""

    @property
    def label(self) -> str:
        """``d=DOMAIN s=SELECTOR`` for the log."""
        return f"d={self.domain} s={self.selector}"


class DnsRecorder:
    """dkimpy's ``dnsfunc``, answered by milterd's resolver; remembers lookups that failed or found nothing.

    A name that is no DNS name (an empty label, a label over 63 octets, over 253 in all, a character no
    selector or domain may hold) is not asked: it is counted in ``invalid``, not in ``failed`` (no DNS error, RFC 6376
    §6.1.1: the signature can never verify).
    """

    def __init__(self, resolver: Any, deadline: float, own_deadline: Callable[[str], float | None] | None = None) -> None:
        self.resolver = resolver
        self.deadline = deadline
        #: The deadline of a key's domain that has one of its own (the From domain's), else None: *deadline*.
        self.own_deadline = own_deadline
        self.failed: dict[str, str] = {}
        self.missing: set[str] = set()
        #: Names not asked, counted: no DNS name.
        self.invalid = 0
        #: The key record given to dkimpy for each name that answered.
        self.records: dict[str, bytes] = {}
        #: Lookups that failed, counted (``failed`` keeps one entry per name, so it cannot tell a second failure).
        self.failures = 0

    def __call__(self, name: bytes | str, timeout: float = 5.0) -> bytes | None:
        qname = record_name(name.decode("utf-8", "replace") if isinstance(name, bytes) else name)
        if not queryable(qname):
            self.invalid += 1
            return None
        deadline = self.own_deadline(qname.partition("._domainkey.")[2]) if self.own_deadline else None
        answer = self.resolver.txt(qname, self.deadline if deadline is None else deadline)
        if answer.failed:
            self.failed[qname] = answer.error or "DNS error"
            self.failures += 1
            return None
        if not answer.ok:
            self.missing.add(qname)
            return None
        texts = [b"".join(r.strings) for r in answer.rdata]
        record = next((t for t in texts if t.lstrip().lower().startswith(b"v=dkim1")), texts[0])
        self.records[qname] = record
        return service_types_for_dkimpy(record)


#: A key record's s= tag (RFC 6376 §3.6.1: service types, a colon-separated list).
_SERVICE_TAG = re.compile(rb"(^|;)([ \t\r\n]*s[ \t\r\n]*=)([^;]*)", re.IGNORECASE)


def service_types_for_dkimpy(record: bytes) -> bytes:
    """*record* with a list of service types in s= given to dkimpy as the one it knows: dkimpy compares the
    whole value with "email", "*" or "tlsrpt", so "s=email:tlsrpt" made a valid key unusable (RFC 6376 §3.6.1:
    a list, its unknown types ignored)."""
    def one(found: re.Match[bytes]) -> bytes:
        types = [t.strip().lower() for t in found.group(3).split(b":")]
        if len(types) < 2:
            return found.group(0)
        known = b"email" if b"email" in types or b"*" in types else b"tlsrpt" if b"tlsrpt" in types else found.group(3)
        return found.group(1) + found.group(2) + known
    return _SERVICE_TAG.sub(one, record)


class QuietLogger(logging.Logger):
    """dkimpy's logger: it logs every broken signature as an error, which milterd reports itself."""

    def __init__(self) -> None:
        super().__init__("milterd.dkimpy", logging.CRITICAL + 1)


#: One for every message: dkimpy only asks it whether to log (never), and it is in no logging registry.
QUIET = QuietLogger()


def verify_all(
    message: bytes, dnsfunc: DnsRecorder, max_signatures: int, min_key_bits: int, *, unsigned_body: str = "pass"
) -> list[SignatureResult]:
    """Verify the first *max_signatures* DKIM signatures of *message* (topmost first).

    *unsigned_body* is ``[checks.dkim] unsigned_body`` (the check passes it): with ``"policy"`` a
    signature that verifies but whose ``l=`` leaves part of the body unsigned is a ``policy`` result.
    """
    dkimfast.install()  # RSA by OpenSSL, faster canonicalisation: the same verdicts (milterd/dkimfast.py)
    try:
        verifier = dkim.DKIM(message, logger=QUIET, minkey=min_key_bits)
    except Exception as exc:  # noqa: BLE001 - a message dkimpy cannot parse: its signatures cannot verify
        return [SignatureResult("", "", "permerror", f"unparsable message: {type(exc).__name__}: {exc}"[:200])]
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    with dkimfast.one_body():
        return [_verify_one(verifier, index, dnsfunc, unsigned_body) for index in range(min(count, max_signatures))]


def tag_items(value: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (tag, value as written) pairs of a DKIM tag list (RFC 6376 §3.2), leniently: a part without
    ``=`` is skipped, tags are stripped of blanks, values are not (each reader unfolds what it reads)."""
    for part in value.split(b";"):
        tag, eq, text = part.partition(b"=")
        if eq:
            yield tag.strip(), text


def key_names(headers: list[tuple[str, bytes]], max_signatures: int) -> list[str] | None:
    """The key records (``s._domainkey.d``) the first *max_signatures* DKIM signatures in *headers* name;
    None when one has no plain d= or s=.  Only a guess of what dkimpy will ask, for scheduling: a wrong
    guess makes the check run in the pipeline's thread or pool, never changes its verdict."""
    names: list[str] = []
    for name, value in headers:
        if name.lower() != "dkim-signature":
            continue
        if len(names) >= max_signatures:
            break
        # d= and s= only: the other tags' values (b=, bh=) are not worked out.
        tags = {tag: b"".join(text.split()) for tag, text in tag_items(value) if tag == b"d" or tag == b"s"}
        domain, selector = tags.get(b"d", b""), tags.get(b"s", b"")
        if not (domain and selector and (domain + selector).isascii()):
            return None
        names.append(f"{selector.decode()}._domainkey.{domain.decode()}")
    return names


def unverified_domains(headers: list[tuple[str, bytes]], max_signatures: int) -> list[str]:
    """The d= (lower case) of the first *max_signatures* DKIM signatures in *headers* that sign From:
    those a message too large to verify leaves undecided (a signature without From in h= never passes)."""
    domains: list[str] = []
    seen = 0
    for name, value in headers:
        if name.lower() != "dkim-signature":
            continue
        if seen >= max_signatures:
            break
        seen += 1
        tags: dict[bytes, bytes] = {}
        for tag, text in tag_items(value):
            tags.setdefault(tag, text)
        domain = fold_case(b"".join(tags.get(b"d", b"").split()).decode("utf-8", "replace")).rstrip(".")
        if domain and b"from" in b"".join(tags.get(b"h", b"").split()).lower().split(b":"):
            domains.append(domain)
    return domains


def revoked(record: bytes) -> bool:
    """Whether the key record *record* has an empty ``p=``: the key was revoked (RFC 6376 §3.6.1)."""
    return next((not text.strip() for tag, text in tag_items(record) if tag == b"p"), False)


def _verify_one(verifier: Any, index: int, dnsfunc: DnsRecorder, unsigned_body: str = "pass") -> SignatureResult:
    before, invalid_before = dnsfunc.failures, dnsfunc.invalid
    verifier.domain, verifier.selector = None, None
    # As the signature writes them, for a result dkimpy refuses before it reads them (an expired x=, an i= outside
    # d=): such a result named no domain or selector, in Authentication-Results and the log.
    verifier.milterd_written = _signature_tags(verifier, index)
    verifier.pk = None  # dkimpy sets it once the key record parsed: still None, the record was unusable
    verifier.unsigned_body_bytes = None  # set by dkimfast's body hash check; None: it did not run
    try:
        # dkimpy's verify(index) in its two steps, so that h= is seen before the key is looked up.
        sig, include_headers, sigheaders = verifier.verify_headerprep(index)
        if b"from" not in include_headers:
            # RFC 6376 §5.4 and §6.1.1: From MUST be signed; such a signature is ignored (PERMFAIL), so that
            # it cannot vouch for a From its signer never saw.
            return _result(verifier, "permerror", "From header field not signed")
        if sig.get(b"a", b"").strip().lower() == b"rsa-sha1":
            # RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid (SHA-1 collisions are practical).
            return _result(verifier, "permerror", "rsa-sha1 signatures are not accepted (RFC 8301)")
        ok = bool(verifier.verify_sig(sig, include_headers, sigheaders[index], dnsfunc))
        reason = "" if ok else "signature did not verify"
    except dkim.ValidationError as exc:
        ok, reason = False, str(exc)
        if "body hash mismatch" in reason:
            reason = "body hash mismatch"
    except dkim.DKIMException as exc:
        return _result(verifier, "permerror", str(exc) or type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - dkimpy on hostile input: a permerror, never a crash
        return _result(verifier, "permerror", f"{type(exc).__name__}: {exc}")
    if ok:
        refused = key_restriction(dnsfunc.records.get(_key_name(verifier), b""), sig)
        if refused:
            return _result(verifier, "permerror", refused)
        unsigned = unsigned_bytes(verifier, sig)
        if unsigned and unsigned_body == "policy":
            return _result(verifier, "policy", f"l={int(sig[b'l'])} leaves {unsigned} bytes of the body unsigned")
        return _result(verifier, "pass", "")
    key = _key_name(verifier)
    if dnsfunc.failures > before:
        return _result(verifier, "temperror", f"key lookup failed: {dnsfunc.failed.get(key, 'DNS error')}")
    if key in dnsfunc.missing:
        return _result(verifier, "permerror", f"no key published at {key}")
    if dnsfunc.invalid > invalid_before:
        return _result(verifier, "permerror", f"key name is no valid DNS name: {key}")
    if verifier.pk is None and key in dnsfunc.records:
        # The key record answered but dkimpy made no key of it. RFC 6376 §6.1.2: an empty p= is a
        # revoked key, a record that does not parse a syntax error: PERMFAIL.  (A signature refused
        # before its key was asked for, an expired one say, is not about the key: it stays a fail.)
        record = dnsfunc.records.get(key, b"")
        return _result(verifier, "permerror", "key revoked" if revoked(record) else f"unusable key record at {key}")
    if testing_mode(dnsfunc.records.get(key, b"")):
        # RFC 6376 §3.6.1: mail of a signer testing DKIM (t=y) MUST NOT be treated otherwise than unsigned mail,
        # "even should the signature fail to verify": no DKIM_INVALID, dkim=neutral.
        return _result(verifier, "neutral", f"{reason} (key in testing mode, t=y: as unsigned)")
    return _result(verifier, "fail", reason)


def testing_mode(record: bytes) -> bool:
    """Whether the key record *record* has the ``t=y`` flag (RFC 6376 §3.6.1: the domain is testing DKIM)."""
    for tag, text in tag_items(record):
        if tag == b"t":  # tag names are case-sensitive (RFC 6376 §3.2): "T=y" is an unknown tag
            return b"y" in b"".join(text.split()).lower().split(b":")
    return False


def key_restriction(record: bytes, sig: dict[bytes, bytes]) -> str:
    """Why the key record *record* does not let the verified signature *sig* pass, or "".

    dkimpy reads ``p=``, ``k=`` and ``s=`` of a key record but not these restrictions of RFC 6376
    §3.6.1, each of which makes the signature a PERMFAIL (§6.1.2): ``h=`` (the hash algorithms the
    key may sign with) and the ``t=s`` flag (the ``i=`` domain must be ``d=`` itself, no subdomain).
    """
    tags: dict[bytes, bytes] = {}
    for tag, text in tag_items(record):
        tags.setdefault(tag, b"".join(text.split()).lower())  # names case-sensitive (§3.2): "H=" is no h=
    hashes = [h for h in tags.get(b"h", b"").split(b":") if h]
    algorithm = b"".join(sig.get(b"a", b"").split()).lower()
    digest = algorithm.rpartition(b"-")[2]
    if hashes and digest not in hashes:
        return f"the key record's h= does not allow {digest.decode('ascii', 'replace')}"
    if b"s" in tags.get(b"t", b"").split(b":"):
        domain = b"".join(sig.get(b"d", b"").split()).lower().rstrip(b".")
        identity = b"".join(sig.get(b"i", b"").split()).lower().rpartition(b"@")[2].rstrip(b".")
        if identity and identity != domain:
            return "the key record's t=s does not allow an i= domain other than d="
    return ""


def record_name(name: str) -> str:
    """A key record's name as :class:`DnsRecorder` asks and keeps it: case folded, without a trailing dot."""
    return fold_case(name.rstrip("."))


def _key_name(verifier: Any) -> str:
    """The key record name (as DnsRecorder keeps it) of the signature *verifier* last looked at.

    Made as DnsRecorder makes it: ``d=example.org.`` (a trailing dot) missed the record kept, and the key's
    t=s and h= restrictions were not applied (a pass), a revoked key was a fail instead of a permerror.
    """
    return record_name(f"{_text(verifier.selector)}._domainkey.{_text(verifier.domain)}")


def unsigned_bytes(verifier: Any, sig: dict[bytes, bytes]) -> int:
    """How many bytes of the canonicalized body the verified signature *sig*'s ``l=`` left unsigned.

    dkimfast's body hash check records it (``verifier.unsigned_body_bytes``); when dkimpy's own
    check ran instead (a key not RSA, a dkimpy release dkimfast was not checked against), the body
    is canonicalized again here as dkimpy did, for a signature with ``l=`` only.
    """
    recorded = getattr(verifier, "unsigned_body_bytes", None)
    if recorded is not None:
        return int(recorded)
    if b"l" not in sig or verifier.tlsrpt:
        return 0
    policy = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    return max(0, len(policy.canonicalize_body(verifier.body)) - int(sig[b"l"]))


def _signature_tags(verifier: Any, index: int) -> tuple[bytes | None, bytes | None]:
    """The d= and s= of the *index*-th DKIM-Signature of the message *verifier* holds (blanks removed), or None."""
    try:
        value = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"][index]
    except (AttributeError, IndexError, TypeError):
        return None, None
    tags = {tag: b"".join(text.split()) for tag, text in tag_items(value) if tag in (b"d", b"s")}
    return tags.get(b"d") or None, tags.get(b"s") or None


def _result(verifier: Any, result: str, reason: str) -> SignatureResult:
    domain, selector = verifier.domain, verifier.selector
    if domain is None and selector is None:
        domain, selector = getattr(verifier, "milterd_written", (None, None))
    return SignatureResult(_text(domain).lower(), _text(selector), result, reason[:200])


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def hits_for(results: list[SignatureResult], author_domain: str | tuple[str, ...] | None, psl_path: str = "") -> list[Hit]:
    """The DKIM symbols for *results*: DKIM_VALID_AUTHOR when *author_domain* (the From domain, or every
    From domain) is not empty and each of its domains has a valid signature aligned (relaxed) with it."""
    if not results:
        return [Hit("DKIM_NONE")]
    passed = [r for r in results if r.result == "pass"]
    if passed:
        hits = [Hit("DKIM_VALID", detail=", ".join(r.label for r in passed)[:200])]
        authors = (author_domain,) if isinstance(author_domain, str) else author_domain or ()
        author = [r for r in passed if any(aligned(r.domain, a, "r", psl_path) for a in authors)]
        # A forged second From (or address) must not ride on a signature of the first one's domain.
        if authors and all(any(aligned(r.domain, a, "r", psl_path) for r in passed) for a in authors):
            hits.append(Hit("DKIM_VALID_AUTHOR", detail=", ".join(r.label for r in author)[:200]))
        return hits
    temp = [r for r in results if r.result == "temperror"]
    if temp:
        return [Hit("DKIM_TEMPFAIL", detail="; ".join(f"{r.label}: {r.reason}" for r in temp)[:200])]
    counted = [r for r in results if r.result != "neutral"]  # a testing-mode signature that failed: as none
    if not counted:
        return [Hit("DKIM_NONE", detail="; ".join(f"{r.label}: {r.reason}" for r in results)[:200])]
    return [Hit("DKIM_INVALID", detail="; ".join(f"{r.label}: {r.reason}" for r in counted)[:200])]


class Dkim(ConfiguredCheck[DkimChecks]):
    """DKIM signatures of the message."""

    name: ClassVar[str] = "dkim"
    description: ClassVar[str] = "DKIM signatures verified with dkimpy (l=, t=, x= honoured; limits on count and key size)"
    order: ClassVar[int] = 60
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("DKIM_VALID", -0.1, "A DKIM signature verified"),
        Symbol("DKIM_VALID_AUTHOR", -0.1, "A DKIM signature verified for each From domain (or its organizational domain)"),
        Symbol("DKIM_INVALID", 0.1, "The message is DKIM-signed but no signature verified"),
        Symbol("DKIM_NONE", 0.0, "The message has no DKIM signature"),
        Symbol("DKIM_TEMPFAIL", 0.0, "No DKIM signature verified and a key could not be looked up (DNS error)"),
    )

    def eom_waits(self, envelope: Envelope) -> bool:
        """Only a signed message whose keys are not all in the resolver's cache waits (for DNS)."""
        if not envelope.header_count("DKIM-Signature"):
            return False
        names = key_names(envelope.headers, self.options.max_signatures)
        resolver = self.services.resolver
        return names is None or not all(resolver.cached(name, "TXT") for name in names)

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        options = self.options
        if not envelope.header_count("DKIM-Signature"):
            envelope.check_state(STATE)["result"] = []
            return [Hit("DKIM_NONE")]
        if envelope.size > options.max_size:
            # Not verified, so no result (none would be untrue); DMARC must not read the silence as a failure.
            envelope.check_state(STATE)["unverified"] = unverified_domains(envelope.headers, options.max_signatures)
            return [Hit("DKIM_NONE", detail=f"not verified: size {envelope.size} > {options.max_size}")]
        resolver = self.services.resolver
        domains = envelope_from_domains(envelope)
        dnsfunc = DnsRecorder(resolver, resolver.stage_deadline(envelope.dns_deadlines, "eom"), self._from_deadline(envelope, domains))
        results = verify_all(envelope.message_bytes(), dnsfunc, options.max_signatures, options.min_key_bits, unsigned_body=options.unsigned_body)
        envelope.check_state(STATE)["result"] = results
        return hits_for(results, domains, self.services.config.checks.dmarc.public_suffix_list)

    def _from_deadline(self, envelope: Envelope, domains: tuple[str, ...]) -> Callable[[str], float | None]:
        """The deadline of a key lookup for a signing domain aligned with a From domain (relaxed): one of
        that From domain's own, set at the first of them (:data:`FROM_KEYS_STAGE`).  Sharing the stage's, a forger's
        second signature whose domain's DNS never answers used it up: the From domain's key lookup timed
        out unasked, and its DMARC policy gave way to a temperror.  *domains*: the message's From domains."""
        resolver, psl_path = self.services.resolver, self.services.config.checks.dmarc.public_suffix_list

        def deadline(signer: str) -> float | None:
            # One per From domain: with the sender's own domain first in From, its keys spent bank.example's time.
            domain = next((domain for domain in domains if aligned(signer, domain, "r", psl_path)), None)
            return None if domain is None else float(resolver.stage_deadline(envelope.dns_deadlines, f"{FROM_KEYS_STAGE}:{org_domain(domain, psl_path)}"))

        return deadline


class DkimSigner(Check):
    """Signs mail from trusted networks and authenticated clients (``[dkim_signing]``)."""

    name: ClassVar[str] = "dkim_sign"
    description: ClassVar[str] = "DKIM-signs mail from trusted networks and authenticated clients with the keys of [dkim_signing]"
    applies_to_trusted: ClassVar[bool] = True
    applies_to_authenticated: ClassVar[bool] = True
    order: ClassVar[int] = 10_000  # last at verdict: sign over the final header set
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("DKIM_SIGNED", 0.0, "milterd signed the message (the log names domain and selectors)"),
        Symbol("DKIM_SIGN_ERROR", 0.0, "milterd should have signed the message but could not (the log says why)"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.keys = dkimsign.load_keys(services.config.dkim_signing, services.config.path)
        # With a sender login map, an authenticated client is signed for only the From addresses its login owns.
        self.logins = login_table(services) if SenderLogin.enabled(services) else None

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return bool(services.config.dkim_signing.enabled and services.config.dkim_signing.keys)

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        options = self.services.config.dkim_signing
        wanted = (session.trusted and options.sign_trusted) or (session.authenticated and options.sign_authenticated)
        if not wanted or verdict.action not in (Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT, Action.QUARANTINE):
            return verdict
        if session.authenticated and self.logins is not None:
            # A signature would make a From the login does not own pass DMARC: another user's, or another
            # customer's domain sharing this host (the login map says whose it is, as for the envelope sender).
            delimiters = self.services.config.checks.local_domains.recipient_delimiter
            unowned = unowned_from(self.logins, session.auth_user, from_fields(envelope), delimiters)
            if unowned:
                return _with_hit(verdict, "DKIM_SIGN_ERROR", f"not signed: From <{unowned}> is not owned by login {session.auth_user}"[:200])
        # Every From domain's keys: a From naming two domains (RFC 7489 §6.6.1 evaluates each) went out unsigned, unsaid.
        domains = signing_domains(from_fields(envelope))
        keys = list(dict.fromkeys(key for name in domains for key in dkimsign.keys_for(self.keys, name)))
        if not keys:
            return verdict
        domain = ", ".join(domains)
        # The pipeline tags the Subject after the verdict (a quarantined message over rewrite_subject): sign what is delivered.
        subject_edits = [e for e in plan_headers(verdict, {}, envelope.header("Subject"), self.services.config.actions) if e.name == "Subject"]
        header_section = header_section_as_delivered(envelope, subject_edits)
        body = LongLines()  # the body's lines measured as it is hashed: the spool read once
        try:
            signatures = dkimsign.sign(header_section, body.passing(envelope.spool.chunks()), keys, options.headers)
            # Postfix's smtp client breaks a line past smtp_line_length_limit (998) on the way out, after the signature.
            long_line = has_long_line([header_section]) or body.finish()
        except SpoolError:
            raise  # the message unread: the pipeline answers 451, not an unsigned delivery
        except Exception as exc:  # noqa: BLE001 - an unsigned message is delivered; the log says why
            return _with_hit(verdict, "DKIM_SIGN_ERROR", f"{domain}: {type(exc).__name__}: {exc}"[:200])
        for value in reversed(signatures):
            envelope.edits.append(HeaderEdit("insert", "DKIM-Signature", value, 0))
        if verdict.action == Action.QUARANTINE and self.services.config.quarantine.mode == "discard":
            # Postfix drops the message with the signature; a release sends the copy as stored, Subject untagged:
            # it is stored with signatures of its own, over it as stored.
            try:
                stored = signatures if not subject_edits else dkimsign.sign(envelope.header_bytes, envelope.spool.chunks(), keys, options.headers)
            except SpoolError:
                raise
            except Exception as exc:  # noqa: BLE001 - stored unsigned; the log says why
                return _with_hit(verdict, "DKIM_SIGN_ERROR", f"{domain}: the quarantined copy: {type(exc).__name__}: {exc}"[:200])
            envelope.stored_fields.extend(b"DKIM-Signature: " + value.replace("\n", "\r\n").encode("ascii") for value in stored)
        signed = ", ".join(f"d={k.domain} s={k.selector}" for k in keys)
        if long_line:
            signed += ("; a line is over 998 octets: Postfix's smtp client breaks it on delivery (smtp_line_length_limit), "
                       "which breaks the signature there (local delivery keeps it)")
        return _with_hit(verdict, "DKIM_SIGNED", signed)


class LongLines:
    """Whether text given in chunks has a line of more than *limit* octets (its CR LF not counted), noted as the
    chunks go by (:meth:`feed`, or :meth:`passing` while another reader takes them)."""

    def __init__(self, limit: int = MAX_LINE_OCTETS) -> None:
        self.limit = limit
        self.found = False
        self._run = 0  # octets of the line being read, a CR before its LF included

    def passing(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """*chunks*, each fed on its way."""
        for chunk in chunks:
            self.feed(chunk)
            yield chunk

    def feed(self, chunk: bytes) -> None:
        """Measure the lines of the next *chunk*."""
        start = 0
        while not self.found:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._run += len(chunk) - start
                self.found = self._run > self.limit + 1
                return
            line = self._run + end - start
            self.found = line > self.limit + (1 if chunk[end - 1:end] == b"\r" or (end == start and self._run) else 0)
            self._run, start = 0, end + 1

    def finish(self) -> bool:
        """Whether a line was too long, the last one without its line end included."""
        return self.found or self._run > self.limit


def has_long_line(chunks: Iterable[bytes], limit: int = MAX_LINE_OCTETS) -> bool:
    """Whether the text given as *chunks* has a line of more than *limit* octets (its CR LF not counted)."""
    lines = LongLines(limit)
    for chunk in chunks:
        lines.feed(chunk)
        if lines.found:
            return True
    return lines.finish()


def header_section_as_delivered(envelope: Envelope, subject_edits: list[HeaderEdit]) -> bytes:
    """The header section (CRLF line ends, the empty line included) with milterd's own Subject edits
    (``change`` index 1, or ``add``) made as Postfix makes them; the body follows it unchanged.

    The Subject is the only header a signature covers that milterd changes after
    the verdict (X-Spam-*, X-Virus-*, Authentication-Results and ARC cannot be signed).
    """
    if not subject_edits:
        return envelope.header_bytes
    return b"".join(field + b"\r\n" for field in fields_as_delivered(envelope, subject_edits)) + b"\r\n"


def fields_as_delivered(envelope: Envelope, subject_edits: list[HeaderEdit]) -> list[bytes]:
    """The header fields of :func:`header_section_as_delivered`, in order, each one as it is delivered
    (name, colon, value, its folds as CRLF) without the CRLF that ends it.

    Without *subject_edits* they are the fields of ``envelope.header_bytes``.
    """
    raws = envelope.raw_headers if len(envelope.raw_headers) == len(envelope.headers) else None
    lines = [raws[i] if raws is not None else name.encode("ascii", "replace") + b": " + value for i, (name, value) in enumerate(envelope.headers)]
    subjects = [i for i, (name, _) in enumerate(envelope.headers) if name.lower() == "subject"]
    for edit in subject_edits:
        line = b"Subject: " + header_safe(edit.value).encode("utf-8")  # as the adapter sends it
        if edit.op == "add":
            lines.append(line)
        elif 0 < edit.index <= len(subjects):
            lines[subjects[edit.index - 1]] = line
    return [line.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for line in lines]


def _with_hit(verdict: Verdict, symbol: str, detail: str) -> Verdict:
    return replace(verdict, symbols={**verdict.symbols, symbol: 0.0}, details={**verdict.details, symbol: detail})


CHECKS: tuple[type[Check], ...] = (Dkim, DkimSigner)
