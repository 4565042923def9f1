"""ARC (RFC 8617): the chain of ARC sets that mailing lists and forwarders add, verified with dkimpy.

The chain's result and its sealers (ARC-Seal ``d=``, oldest first) go to
``envelope.state["arc"]``: DMARC lets a passing chain whose newest sealer is
in ``[checks.arc] trusted_sealers`` override its failure, and
Authentication-Results reports ``arc=``.  Keys are looked up through
milterd's resolver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import dkim

from ..model import Envelope, Hit, Session
from . import Hits, Symbol
from .dkim import DnsRecorder, QuietLogger
from .switches import ConfiguredCheck

STATE = "arc"


@dataclass(frozen=True)
class ArcResult:
    """The chain's validation: ``pass``, ``fail`` or ``none``, its sealers oldest first, and why."""

    result: str
    sealers: tuple[str, ...] = ()
    reason: str = ""
    temporary: bool = False


def verify_chain(message: bytes, dnsfunc: DnsRecorder, min_key_bits: int) -> ArcResult:
    """Validate the ARC chain of *message*."""
    try:
        cv, results, reason = dkim.ARC(message, logger=QuietLogger(), minkey=min_key_bits).verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        cv, results, reason = dkim.CV_Fail, [], str(exc)
    except Exception as exc:  # noqa: BLE001 - dkimpy on hostile input: a failed chain, never a crash
        cv, results, reason = dkim.CV_Fail, [], f"{type(exc).__name__}: {exc}"
    sealers = tuple(
        r["as-domain"].decode("ascii", "replace").lower() for r in sorted(results, key=lambda r: int(r.get("instance", 0))) if r.get("as-domain")
    )
    if cv == dkim.CV_Pass:
        return ArcResult("pass", sealers, str(reason))
    if cv == dkim.CV_None:
        return ArcResult("none", sealers, str(reason))
    return ArcResult("fail", sealers, str(reason)[:200], temporary=bool(dnsfunc.failed))


class Arc(ConfiguredCheck):
    """The ARC chain of the message."""

    name: ClassVar[str] = "arc"
    options_name: ClassVar[str] = "arc"
    description: ClassVar[str] = "ARC chain verified with dkimpy; trusted sealers override DMARC failures"
    order: ClassVar[int] = 61
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("ARC_PASS", 0.0, "The message's ARC chain validated"),
        Symbol("ARC_TRUSTED", -0.5, "The ARC chain validated and its newest sealer is in [checks.arc] trusted_sealers"),
        Symbol("ARC_FAIL", 0.5, "The message has an ARC chain that does not validate"),
        Symbol("ARC_TEMPFAIL", 0.0, "The ARC chain could not be validated: a key could not be looked up (DNS error)"),
    )

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        if not envelope.header_count("ARC-Seal"):
            envelope.state[STATE] = ArcResult("none")
            return ()  # the common case: no symbol, arc=none in Authentication-Results
        if envelope.size > self.services.config.checks.dkim.max_size:
            return ()
        resolver = self.services.resolver
        dnsfunc = DnsRecorder(resolver, resolver.stage_deadline(envelope.state, "dkim"))
        result = verify_chain(envelope.message_bytes(), dnsfunc, self.options.min_key_bits)
        envelope.state[STATE] = result
        chain = " > ".join(result.sealers)
        if result.result == "pass":
            trusted = {t.lower().rstrip(".") for t in self.options.trusted_sealers}
            hits = [Hit("ARC_PASS", detail=chain)]
            if result.sealers and result.sealers[-1] in trusted:
                hits.append(Hit("ARC_TRUSTED", detail=result.sealers[-1]))
            return hits
        if result.temporary:
            return [Hit("ARC_TEMPFAIL", detail=f"{chain}: {result.reason}"[:200])]
        return [Hit("ARC_FAIL", detail=f"{chain}: {result.reason}"[:200])]


CHECKS = (Arc,)
