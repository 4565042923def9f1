"""Parsing of the duration and size values that milter.conf accepts.

A duration is a number of seconds or a string such as ``"90s"``, ``"5m"``,
``"2h"``, ``"35d"``, ``"1w"``; a size is a number of bytes or a string such as
``"512K"``, ``"25M"``, ``"1G"`` (binary multiples, as Postfix uses them).
"""

from __future__ import annotations

import datetime
import re

_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]?)\s*$")


def parse_duration(value: object) -> float:
    """Return *value* in seconds; raise ValueError with a readable reason."""
    return _parse(value, _DURATION_UNITS, "a duration such as 30, \"90s\", \"5m\", \"2h\", \"35d\"")


#: The largest size accepted: a larger one is no limit a message could reach, and past 8 EiB
#: a read of that many bytes raises OverflowError (every message, not at start).
MAX_SIZE = 1024**4


def parse_size(value: object) -> int:
    """Return *value* in bytes; raise ValueError with a readable reason."""
    size = int(_parse(value, _SIZE_UNITS, "a size such as 1048576, \"512K\", \"25M\", \"1G\""))
    if size > MAX_SIZE:
        text = repr(value)
        raise ValueError(f"must be at most \"1024G\", got {text if len(text) <= 24 else text[:20] + '…'}")
    return size


def _parse(value: object, units: dict[str, int], expected: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected {expected}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match and match.group(2).lower() in units:
            return float(match.group(1)) * units[match.group(2).lower()]
    raise ValueError(f"expected {expected}, got {value!r}")


#: The largest ``connect_timeout`` libpq reads (a C int).
MAX_CONNECT_TIMEOUT = 2**31 - 1


def connect_timeout_seconds(value: object) -> int | None:
    """A database URL's ``connect_timeout`` as a whole number of seconds (0 or more, as libpq takes it: 0 waits for
    ever); None for anything else (``"abc"``, ``"-1"``, ``"2.5"``, a value given twice)."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        seconds = int(value)
    else:
        return None
    return seconds if 0 <= seconds <= MAX_CONNECT_TIMEOUT else None


def format_duration(seconds: float) -> str:
    """Render seconds the way an administrator would write them."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def ago(seconds: float, text: str) -> datetime.datetime:
    """The time *seconds* before now, aware UTC; ValueError naming *text* (what was given) when
    that is before the year 1, the first time Python has."""
    try:
        return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(_out_of_range(text)) from None


def parse_since(value: str) -> datetime.datetime:
    """``--since 7d`` (a duration back from now) or an ISO date/time, as aware UTC.

    Eight digits that make a date (``20261106``, ISO 8601's basic form) are that date, not as many seconds."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        pass
    else:
        if not _basic_date(value.strip()):
            return ago(seconds, value)
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"expected a duration such as 1h or 7d, or an ISO date, got {value!r}") from None
    # In UTC: SQLite compares the stored times as UTC text, whatever offset a parameter carries.
    try:
        return moment.astimezone(datetime.timezone.utc) if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)
    except (OverflowError, OSError):  # 9999-12-31T23:59-01:00 is in the year 10000 in UTC
        raise ValueError(_out_of_range(value)) from None


def _basic_date(text: str) -> bool:
    """Whether *text* is a date written as eight digits (YYYYMMDD), which fromisoformat reads too."""
    if len(text) != 8 or not text.isdigit():
        return False
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _out_of_range(text: str) -> str:
    shown = repr(text)
    return f"out of range: a time from the year 1 to 9999 (UTC), got {shown if len(shown) <= 40 else shown[:36] + '…'}"
