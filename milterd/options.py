"""The building blocks of milter.conf's sections, shared by ``config`` and the checks.

A leaf module (it imports nothing else of milterd but ``units``), so that each
check can define its ``[checks.NAME]`` options model beside its code and
``config`` can assemble ``[checks]`` from them without an import cycle.
``config`` re-exports everything here.
"""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from .units import parse_duration, parse_size


def _shown(value: object) -> str:
    """*value* for an error line: 400 digits would bury the reason."""
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "…"


#: Characters no domain name holds (non-ASCII letters, digits, "-" and "_" are left to DNS and IDNA).
_NOT_IN_A_NAME = re.compile(r"[\s@*\[\]/\\:;,<>\"'()!?#$%&+=|~^`{}]")


def domain_names(value: list[str], hint: str) -> list[str]:
    """*value*, when no entry is plainly no domain name ("@example.com", "*.example.net", ".example.org", a
    network): ValueError naming the first, with *hint*.  Such an entry matched nothing, silently."""
    for entry in value:
        if not entry or entry.startswith(".") or ".." in entry or len(entry) > 254 or _NOT_IN_A_NAME.search(entry):
            raise ValueError(f"{entry!r} is not a domain name: {hint}")
    return value


def finite(value: object) -> float:
    """A TOML number (a score or threshold) as a float; ValueError for nan, an infinity or one past :data:`MAX_SCORE`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # not a ValueError: pydantic would let it escape as a traceback
        raise ValueError(f"{_shown(value)} is too large") from None
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {_shown(value)}")
    if abs(number) > MAX_SCORE:
        # Two hits of 1e308 summed to inf, and the verdict hung on the order the hits were added in.
        raise ValueError(f"must be between -{MAX_SCORE:,.0f} and {MAX_SCORE:,.0f}, got {_shown(value)}")
    return number


#: The largest score or threshold taken (SpamAssassin's scores stay under 100).
MAX_SCORE = 1_000_000.0


#: The longest duration accepted: past about 290 years a socket timeout or a thread's
#: wait overflows, past 2,000 a date before year 1 does (every message, not at start).
MAX_DURATION = 3650 * 86400.0


def _finite_duration(value: object) -> object:
    """*value* unchanged unless it is a duration no float holds (parse_duration, run next, parses it)."""
    try:
        seconds = parse_duration(value)
    except OverflowError:  # float() of a huge integer
        raise ValueError(f"{_shown(value)} is too large") from None
    except ValueError:
        return value  # parse_duration says why
    if not math.isfinite(seconds):  # nan, inf, or "999…9" seconds
        raise ValueError(f"must be a finite duration, got {_shown(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be at most 3650d (ten years), got {_shown(value)}")
    return value


def _finite_size(value: object) -> object:
    """*value* unchanged unless it is a size no int holds (parse_size, run next, parses it)."""
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"must be a finite size, got {_shown(value)}")
    try:
        parse_size(value)
    except OverflowError:  # int() of an infinite float ("999…9", inf), float() of a huge integer
        raise ValueError(f"{_shown(value)} is too large") from None
    except ValueError:
        pass  # parse_size says why
    return value


# Before-validators run last first: the guard, then the parser (whose presence
# confdoc looks for to render defaults as "30s" and "1M").
#: Seconds, written as a number or "90s", "5m", "2h", "35d".
Duration = Annotated[float, BeforeValidator(parse_duration), BeforeValidator(_finite_duration)]
#: Bytes, written as a number or "512K", "25M", "1G".
Size = Annotated[int, BeforeValidator(parse_size), BeforeValidator(_finite_size)]


class ConfigError(Exception):
    """A configuration or rule file that cannot be used; the message says where and why."""

    def __init__(self, file: str | os.PathLike[str], key: str, reason: str) -> None:
        self.file, self.key, self.reason = str(file), key, _shortened(reason)
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(_one_line(where + self.reason))


#: The longest reason an error gives: a value of 100,000 characters was quoted whole (its key and what is expected
#: stay, at the reason's start and end).
MAX_REASON = 600


def _shortened(reason: str) -> str:
    """*reason*, of a value quoted in it, cut in the middle past :data:`MAX_REASON` characters."""
    if len(reason) <= MAX_REASON:
        return reason
    head, tail = MAX_REASON - 200, 150
    return f"{reason[:head]}…({len(reason) - head - tail} characters)…{reason[-tail:]}"


def _one_line(text: str) -> str:
    """*text* with its control characters escaped: a value's newline must not split the error line."""
    if text.isprintable():
        return text
    # repr, not the unicode_escape codec: Python imports a codec on its first use, which fails where the
    # interpreter's files are unreadable to [milter] user (the spool check runs with its ids): a traceback.
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


#: The largest whole number a setting takes (a count, a size in bytes: a petabyte).
MAX_WHOLE = 10**15


class Section(BaseModel):
    """A section of milter.conf: immutable, and a misspelt key is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_count(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes true for 1: max_headers = true would refuse every message.
        if isinstance(value, bool) and info.field_name and cls.model_fields[info.field_name].annotation is int:
            raise ValueError(f"expected a whole number, got {str(value).lower()}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_huge_number(cls, value: Any) -> Any:
        # Counts and sizes reach SQL (SQLite holds 64 bits) and arithmetic: 10**29 was taken here and
        # failed later, an OverflowError naming neither file nor key.
        if type(value) is int and abs(value) > MAX_WHOLE:
            raise ValueError(f"{value} is too large (at most {MAX_WHOLE:,})")
        return value


class CheckSwitches(Section):
    """The switches every ``[checks.NAME]`` section has; a check's options model extends it.

    Its docstring is the section's introduction in the generated milter.conf.
    """

    enabled: bool = Field(True, description="Run this check.")
    skip_trusted: bool = Field(True, description="Skip it for clients in trusted_networks.")
    skip_authenticated: bool = Field(True, description="Skip it for clients that authenticated with SMTP AUTH.")
