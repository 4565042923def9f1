"""Domains of links for any module that needs them (the URI block lists, the link reader): registrable domains by
the Public Suffix List, and the links a redirector's link names in its path and query.

The list is the installed ``publicsuffixlist`` package's copy (``www.a.example.co.uk`` → ``example.co.uk``),
loaded once per process.  Neutral ground: :mod:`milterd.content` must not import from :mod:`milterd.checks`.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

from publicsuffixlist import PublicSuffixList

#: Where a link's path and query name another link (a redirector's target: ``google.com/url?q=https://…``,
#: ``/amp/s/<host>/…``, SafeLinks' ``?url=https%3A%2F%2F…`` once decoded): the authority after an http(s)
#: scheme and its slashes, or right after Google AMP's "/amp/s/", up to a parameter's end.
_EMBEDDED = re.compile(r"""(?i)(?:https?:[/\\]+|/amp/s/[/\\]*)([^/\\?#&\s"'<>]*)""")
#: Most distinct authorities of the links embedded in one link looked at (:func:`embedded_authorities`).
MAX_EMBEDDED = 10
#: A link's path and query are read for embedded links up to this many characters: web servers refuse
#: longer request lines (8 KiB by default for Apache and nginx).
MAX_EMBEDDING = 8 * 1024


@functools.lru_cache(maxsize=1)
def public_suffixes() -> PublicSuffixList:
    """The Public Suffix List of the installed ``publicsuffixlist`` package (loaded once per process)."""
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def registrable(host: str) -> str | None:
    """The registrable domain of *host* by :func:`public_suffixes` (None: it has none); remembered per process."""
    domain: str | None = public_suffixes().privatesuffix(host)
    return domain


def embedded_authorities(form: str) -> list[str]:
    """The authorities of the links named in *form*, a link's path and query (its fragment left out by the
    caller): as written, percent-decoded and decoded twice (``https%253A%252F%252F``), an ``http(s)://`` link
    anywhere in them or a host right after ``/amp/s/``; at most ``MAX_EMBEDDED`` distinct ones, the first found."""
    authorities: dict[str, None] = {}
    for decodings in range(3):
        authorities.update(dict.fromkeys(_EMBEDDED.findall(form)))
        if decodings == 2 or "%" not in form:
            break
        form = unquote(form)
    return [authority for authority in authorities if authority][:MAX_EMBEDDED]
