"""SMTP replies: the one type a check's answer travels in, and its form for libmilter.

A check builds a :class:`Reply` (``Reply("550", "5.7.1", "Virus found: X")``);
the policy, the pipeline and the adapter pass it on unchanged, and only the
adapter turns it into ``smfi_setreply`` arguments, with :func:`setreply_args`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..text import escape

#: libmilter's limit on the text of one reply line (MAXREPLYLEN in libmilter/smfi.c), ``%`` doubled.
MAX_REPLY_TEXT = 980
#: RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, its code and CRLF included.
MAX_REPLY_LINE = 512
_CODE = re.compile(r"^[45]\d\d$")
_XCODE = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Reply:
    """An SMTP answer: the code (``"550"``), the enhanced code (``"5.7.1"`` or None) and the text."""

    code: str
    xcode: str | None
    text: str

    def __str__(self) -> str:
        """The reply as a client sees it (``550 5.7.1 text``), for the log and ``milterd check``."""
        return " ".join(part for part in (self.code, self.xcode, self.text) if part)

    @classmethod
    def tempfail(cls, text: str) -> "Reply":
        """The default temporary failure code with a text of its own (``451 4.7.1 text``)."""
        return cls(TEMPFAIL.code, TEMPFAIL.xcode, text)

    @classmethod
    def reject(cls, text: str) -> "Reply":
        """The default refusal code with a text of its own (``550 5.7.1 text``)."""
        return cls(REJECT.code, REJECT.xcode, text)


#: A refusal no check gave a reply for.
REJECT = Reply("550", "5.7.1", "Message rejected by policy")
#: A tempfail (or greylisting) no check gave a reply for, and a store that cannot keep the message.
TEMPFAIL = Reply("451", "4.7.1", "Service temporarily unavailable, please try again later")
#: milterd itself failed (a bug): the client retries.
INTERNAL_ERROR = Reply("451", "4.3.0", "Temporary internal error, please try again later")


def setreply_args(reply: Reply) -> tuple[str, str | None, str]:
    """*reply* as ``smfi_setreply`` takes it, made safe for libmilter.

    The text is escaped (ASCII, no CR/LF), shortened (ending in ``...``) so
    that the line the client sees, ``code xcode text`` and CRLF, fits the 512
    octets of RFC 5321 §4.5.3.1.5 (and, ``%`` doubled, libmilter's 980-byte
    limit), so that a long DNSBL TXT or SPF explanation still gives its own
    code, never a 451 from a refused reply.  An enhanced code whose class
    differs from the reply's is dropped (libmilter would refuse it).  A reply
    without a valid 4xx/5xx code is :data:`INTERNAL_ERROR`.
    """
    if not _CODE.match(reply.code):
        reply = INTERNAL_ERROR
    code = reply.code
    match = _XCODE.match(reply.xcode or "")
    xcode = reply.xcode if match and match.group(1) == code[0] else None
    # "code xcode text" CRLF; without an xcode some libmilter versions still write both spaces.
    room = MAX_REPLY_LINE - len(f"{code} {xcode or ''} \r\n")
    text = _shortened(escape(reply.text, ascii_only=True) or "Rejected", room)
    return code, xcode, text.replace("%", "%%")


def _shortened(text: str, room: int) -> str:
    """ASCII *text* cut to end in ``...`` when longer than *room*, or longer than libmilter takes with ``%`` doubled.

    Postfix sends a milter's ``%%`` as ``%``, so a ``%`` costs one octet of
    the line but two of libmilter's limit.
    """
    if len(text) <= room and len(text) + text.count("%") <= MAX_REPLY_TEXT:
        return text
    line = milter = len("...")
    for end, char in enumerate(text):
        line, milter = line + 1, milter + (2 if char == "%" else 1)
        if line > room or milter > MAX_REPLY_TEXT:
            return text[:end] + "..."
    return text
