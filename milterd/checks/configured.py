"""What the checks configured in ``[checks.NAME]`` share: the enable switch and the bypass.

``skip_trusted`` and ``skip_authenticated`` of a check's section decide
whether the pipeline runs it for trusted and authenticated clients; this
module defines no check itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, cast

from ..options import CheckSwitches
from . import Check

if TYPE_CHECKING:
    from ..message.model import Session
    from ..services import Services


#: A check's own ``[checks.NAME]`` model (defined beside the check).
OptionsT = TypeVar("OptionsT", bound=CheckSwitches)


class ConfiguredCheck(Check, Generic[OptionsT]):
    """A check whose switches live in ``[checks.<options_name>]``, typed by its own model *OptionsT*."""

    #: The sub-section of ``[checks]`` holding this check's options; empty: its ``name``.
    options_name: ClassVar[str] = ""

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        options = self.options_of(services)
        # Instance attributes shadow the class defaults the pipeline reads.
        self.applies_to_trusted = not options.skip_trusted  # type: ignore[misc]
        self.applies_to_authenticated = not options.skip_authenticated  # type: ignore[misc]

    @classmethod
    def options_of(cls, services: "Services") -> OptionsT:
        """This check's ``[checks.NAME]`` section."""
        # ChecksSection names each section's model; the check class says which one is its own.
        return cast(OptionsT, getattr(services.config.checks, cls.options_name or cls.name))

    @property
    def options(self) -> OptionsT:
        """This check's ``[checks.NAME]`` section."""
        return self.options_of(self.services)

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return bool(cls.options_of(services).enabled)

    def bypassed(self, session: "Session") -> bool:
        """Whether the options exempt this client (for hooks that must run for everyone)."""
        options = self.options
        return (session.trusted and options.skip_trusted) or (session.authenticated and options.skip_authenticated)
