"""The building blocks of milter.conf's sections, shared by ``config`` and the checks.

A leaf module (it imports nothing else of milterd but ``units``), so that each
check can define its ``[checks.NAME]`` options model beside its code and
``config`` can assemble ``[checks]`` from them without an import cycle.
``config`` re-exports everything here.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .units import parse_duration, parse_size

#: Seconds, written as a number or "90s", "5m", "2h", "35d".
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: Bytes, written as a number or "512K", "25M", "1G".
Size = Annotated[int, BeforeValidator(parse_size)]


class ConfigError(Exception):
    """A configuration or rule file that cannot be used; the message says where and why."""

    def __init__(self, file: str | os.PathLike[str], key: str, reason: str) -> None:
        self.file, self.key, self.reason = str(file), key, reason
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + reason)


class Section(BaseModel):
    """A section of milter.conf: immutable, and a misspelt key is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckSwitches(Section):
    """The switches every ``[checks.NAME]`` section has; a check's options model extends it.

    Its docstring is the section's introduction in the generated milter.conf.
    """

    enabled: bool = Field(True, description="Run this check.")
    skip_trusted: bool = Field(True, description="Skip it for clients in trusted_networks.")
    skip_authenticated: bool = Field(True, description="Skip it for clients that authenticated with SMTP AUTH.")
