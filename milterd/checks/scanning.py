"""What the checks that ask a scanner daemon share (clamd, spamd).

Each is configured in its own top-level section of milter.conf (``[clamav]``,
``[spamd]``), not in ``[checks]``: ``enabled`` switches it on,
``scan_trusted`` also scans trusted and authenticated clients, and
``on_error`` decides whether a failed scan answers 451 or lets the message
through with a symbol.  This module defines no check itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..message.model import Action, Hit
from ..message.reply import Reply
from . import Check

if TYPE_CHECKING:
    from ..services import Services


def scan_error_hit(symbol: str, reason: str, on_error: str, reply: Reply) -> Hit:
    """The hit for a scan that failed: with ``on_error = "tempfail"`` it answers *reply*."""
    if on_error == "tempfail":
        return Hit(symbol, detail=reason[:200], action=Action.TEMPFAIL, reply=reply)
    return Hit(symbol, detail=reason[:200])


class ScannerCheck(Check):
    """A check that asks a scanner daemon configured in its own section."""

    #: The top-level section of milter.conf with this scanner's options.
    section: ClassVar[str] = ""

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        scan_trusted = bool(getattr(services.config, self.section).scan_trusted)
        # Instance attributes shadow the class defaults the pipeline reads.
        self.applies_to_trusted = self.applies_to_authenticated = scan_trusted  # type: ignore[misc]

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return bool(getattr(services.config, cls.section).enabled)
