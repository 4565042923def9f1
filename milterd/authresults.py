"""The Authentication-Results header (RFC 8601): one header, built with ``authres``.

milterd writes a single header with its authserv-id carrying the SMTP AUTH,
SPF, DKIM, DMARC and ARC results of the checks that ran; incoming headers
claiming that id are forgeries and removed (:func:`forged_indexes`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import authres
import authres.arc
import authres.dmarc

if TYPE_CHECKING:
    from .checks.arc import ArcResult
    from .checks.dkim import SignatureResult
    from .checks.dmarc import Evaluation

_COMMENT = re.compile(r"\([^()]*\)")


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims (lower case), or ""."""
    head = _COMMENT.sub(" ", value.split(";", 1)[0]).split()
    return head[0].lower() if head else ""


def forged_indexes(headers: list[tuple[str, bytes]], authserv_id: str) -> list[int]:
    """1-based indexes (among Authentication-Results headers) of those claiming *authserv_id*, highest first."""
    found: list[int] = []
    index = 0
    for name, value in headers:
        if name.lower() != "authentication-results":
            continue
        index += 1
        if authserv_id_of(value.decode("utf-8", "replace")) == authserv_id.lower():
            found.append(index)
    return sorted(found, reverse=True)


_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,253}")


def _token(text: str) -> str | None:
    # Property values come from the message (d=, s=, From): anything but a
    # plain name is left out rather than written into our header.
    return text if _TOKEN.fullmatch(text) else None


def _reason(text: str) -> str | None:
    # authres quotes the reason; a quote or backslash inside it would end it early.
    cleaned = "".join(c for c in text if c.isprintable() and c not in '"\\')[:120]
    return cleaned or None


def build(
    authserv_id: str,
    *,
    auth_user: str = "",
    spf: dict[str, str] | None = None,
    dkim: "Sequence[SignatureResult] | None" = None,
    dmarc: "Evaluation | None" = None,
    arc: "ArcResult | None" = None,
) -> str:
    """The value of our Authentication-Results header (without the name).

    A method that did not run (None) is left out; one that ran and found
    nothing says ``none``; no method at all gives ``none`` alone.
    """
    results: list[Any] = []
    if auth_user:
        results.append(authres.SMTPAUTHAuthenticationResult(result="pass", smtp_auth=auth_user))
    if spf is not None:
        kwargs = {"smtp_helo": spf["helo"]} if spf["identity"] == "helo" else {"smtp_mailfrom": spf["sender"]}
        results.append(authres.SPFAuthenticationResult(result=spf["result"], **kwargs))
    if dkim is not None:
        if not dkim:
            results.append(authres.DKIMAuthenticationResult(result="none"))
        for sig in dkim:
            results.append(
                authres.DKIMAuthenticationResult(
                    result=sig.result,
                    reason=_reason(sig.reason) if sig.result != "pass" else None,
                    header_d=_token(sig.domain),
                    header_s=_token(sig.selector),
                )
            )
    if arc is not None:
        results.append(authres.arc.ARCAuthenticationResult(result=arc.result, header_as_d=_token(arc.sealers[-1]) if arc.sealers else None))
    if dmarc is not None:
        results.append(
            authres.dmarc.DMARCAuthenticationResult(
                result=dmarc.result,
                header_from=_token(dmarc.domain),
                policy=dmarc.policy.upper() if dmarc.result in ("pass", "fail") else None,
            )
        )
    if not results:
        results.append(authres.NoneAuthenticationResult())
    text = str(authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results))
    return text.split(":", 1)[1].strip()
