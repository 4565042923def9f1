"""Checks: small units that look at one aspect of a message and emit symbols.

Each check is a subclass of :class:`Check` in a module of this package that
lists it in a module-level ``CHECKS`` tuple; :func:`discover` finds them, so a
new check is one new module.  A check declares the symbols it can emit (name,
default score, one-line description: the table ``milterd rules`` shows and
``rules/symbols.toml`` re-weights) and overrides the hooks of the SMTP stages
it needs; the pipeline negotiates with Postfix only the stages some check uses.

Hooks return an iterable of :class:`~milterd.message.model.Hit`.  Checks keep no
per-message state on ``self`` (one instance serves every connection of a
worker, from several threads): they keep it in their own namespace,
``session.check_state(self.name)`` or ``envelope.check_state(self.name)``.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Iterable

from ..message.model import Envelope, Hit, Session, Verdict

if TYPE_CHECKING:
    from ..message.policy import GreylistStatus
    from ..services import Services


class Stage(enum.Enum):
    """The SMTP stages a check may hook."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"


@dataclass(frozen=True)
class Symbol:
    """A symbol a check can emit, with its default score."""

    name: str
    score: float
    description: str


Hits = Iterable[Hit]

_HOOKS = {
    Stage.CONNECT: "on_connect",
    Stage.HELO: "on_helo",
    Stage.MAIL: "on_mail",
    Stage.RCPT: "on_rcpt",
    Stage.DATA: "on_data",
    Stage.HEADER: "on_header",
    Stage.EOH: "on_eoh",
    Stage.BODY: "on_body",
    Stage.EOM: "on_eom",
}


class Check:
    """Base class of all checks; subclasses override the hooks they need."""

    #: Short name, used in the log, in ``[checks]`` and for per-message state.
    name: ClassVar[str] = ""
    #: One line for ``milterd rules`` and the documentation.
    description: ClassVar[str] = ""
    #: Every symbol this check can emit.
    symbols: ClassVar[tuple[Symbol, ...]] = ()
    #: Top-level keys of rule files this check reads (e.g. ``"dnsbl"``).
    rule_sections: ClassVar[tuple[str, ...]] = ()
    #: Whether the check runs for clients in trusted_networks / that authenticated.
    applies_to_trusted: ClassVar[bool] = False
    applies_to_authenticated: ClassVar[bool] = False
    #: Order among checks of the same stage (lower first).
    order: ClassVar[int] = 100

    def __init__(self, services: "Services") -> None:
        self.services = services

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        """Whether this check runs with the given configuration."""
        return True

    @classmethod
    def stages(cls) -> frozenset[Stage]:
        """The stages whose hooks this class overrides."""
        return frozenset(stage for stage, hook in _HOOKS.items() if getattr(cls, hook) is not getattr(Check, hook))

    def eom_tier(self) -> int:
        """End-of-message hooks of one tier run concurrently; a higher tier runs
        after the lower ones, and not at all once a hit has rejected or
        discarded the message (spamd need not scan a virus)."""
        return 0

    def eom_waits(self, envelope: Envelope) -> bool:
        """Whether this check's end-of-message hook may wait on something outside
        (DNS, a scanner) for *envelope*: such hooks run concurrently in the
        pipeline's pool; one that only computes runs in the caller's thread,
        which saves a hand-off (a GIL switch) per message."""
        return True

    def dynamic_symbols(self) -> tuple[Symbol, ...]:
        """Symbols known only once the rules are loaded (custom rules, DNSBL zones)."""
        return ()

    def loaded(self) -> None:
        """Called once every enabled check is built and ``services.symbols`` is
        complete: cross-check rules against it (raise ConfigError)."""

    def on_connect(self, session: Session) -> Hits:
        """The client connected (address, name, Postfix's macros)."""
        return ()

    def on_helo(self, session: Session) -> Hits:
        """The client said HELO or EHLO (``session.helo``)."""
        return ()

    def before_mail(self, session: Session, envelope: Envelope) -> None:
        """MAIL FROM, before any check's :meth:`on_mail`: start the lookups this check's ``on_mail`` will
        wait for, so that they run while the checks before it wait for theirs (all within the stage's
        one DNS deadline)."""

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        """MAIL FROM (``envelope.sender``, ``session.auth_user``)."""
        return ()

    def on_rcpt(self, session: Session, envelope: Envelope, recipient: str) -> Hits:
        """One RCPT TO; a hit with an action rejects or defers this recipient only."""
        return ()

    def on_data(self, session: Session, envelope: Envelope) -> Hits:
        """DATA: all recipients are known."""
        return ()

    def on_header(self, session: Session, envelope: Envelope, name: str, value: bytes) -> Hits:
        """One header, already appended to ``envelope.headers``."""
        return ()

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        """End of headers."""
        return ()

    def on_body(self, session: Session, envelope: Envelope, chunk: bytes) -> Hits:
        """A body chunk, already written to ``envelope.spool``."""
        return ()

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        """End of message; hooks of several checks run concurrently here."""
        return ()

    def on_symbols(self, session: Session, envelope: Envelope, symbols: frozenset[str]) -> Hits:
        """After every end-of-message hook, before the verdict: sees every symbol hit
        so far (connect to end of message); meta rules live here."""
        return ()

    def symbols_on_symbols(self) -> frozenset[str]:
        """The symbols :meth:`on_symbols` may emit: counted after the tiers chose whether to ask spamd
        (``rules whatif`` leaves them out of the score before spamd)."""
        return frozenset()

    def on_score_greylist(self, session: Session, envelope: Envelope) -> "GreylistStatus | None":
        """The score greylists the message (``policy.greylists_at_score``): must it
        wait?  The greylist check answers from its store; None is no opinion."""
        return None

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        """After the policy decided: may add header edits or learn from the
        verdict (Authentication-Results, signing, auto-learning).  Must return a Verdict."""
        return verdict

    def on_skipped(self, session: Session, envelope: Envelope) -> None:
        """At end of message, when the check does not apply to this client (trusted, authenticated): what it still
        owes the message, such as removing header fields a sender forged in its name."""

    def on_abort(self, session: Session, envelope: Envelope) -> None:
        """The transaction ended without end of message: release what it holds."""

    def on_close(self, session: Session) -> None:
        """The connection closed."""


def discover() -> list[type[Check]]:
    """Every check class in this package, in stage order."""
    found: list[type[Check]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "CHECKS", ()))
    return sorted(found, key=lambda c: (c.order, c.name))


def builtin_symbols() -> dict[str, Symbol]:
    """The symbols every built-in check declares, by name."""
    table: dict[str, Symbol] = {}
    for check in discover():
        for symbol in check.symbols:
            table[symbol.name] = symbol
    return table

