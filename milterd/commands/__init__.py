"""The ``milterd`` sub-commands, one module each, and what they share: their
``-c/--config`` option, the store they open, how a store failure reads and the
``--since`` argument.  milterd.cli builds the command line from them."""

from __future__ import annotations

import argparse
import datetime
from typing import Callable

from ..config import Config
from ..store import Store, StoreError
from ..text import escape
from ..units import parse_since

#: The largest ``--limit``: beyond it SQLite refused the number with an OverflowError (a traceback).
MAX_COUNT = 10**9


def config_parent() -> argparse.ArgumentParser:
    """A parent parser giving a sub-command its own ``-c/--config``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="milter.conf to read")
    return parent


def open_store(config: Config) -> Store:
    """The store of *config* for a command that reads or changes it; StoreError without a schema."""
    store = Store(config.database)
    try:
        store.require_schema()
    except Exception:
        store.close()
        raise
    return store


def describe_failure(exc: BaseException) -> str:
    """One line for a failed store operation: a StoreError's message, else the
    database driver's own words (never the SQL statement SQLAlchemy appends)."""
    if isinstance(exc, StoreError):
        return str(exc)
    reason = getattr(exc, "orig", None) or exc
    return f"{exc.__class__.__name__}: {str(reason).splitlines()[0] if str(reason) else ''}"


def since_arg(value: str) -> datetime.datetime:
    """argparse type of ``--since``: a duration back from now (1h, 7d) or an ISO date."""
    try:
        return parse_since(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(value: str) -> int:
    """argparse type of a ``--limit``: a whole number from 0 (all) to MAX_COUNT."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative (0 means all)")
    if number > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{value!r} is too large (at most {MAX_COUNT}; 0 means all)")
    return number


def whole_number_arg(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type of a whole number from *low* to *high*, refused as not being *what* (a beyond-range
    number reached SQL or the process pool and raised OverflowError: a traceback)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what} (a whole number)") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what} ({low} to {high})")
        return number

    return parse


def address_arg(value: str) -> str:
    """argparse type of ``--sender``/``--recipient``: :func:`text_arg`, written with or without angle
    brackets, as the listings show it (``<>`` is the null sender, as ``''`` is)."""
    value = text_arg(value).strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


def text_arg(value: str) -> str:
    """argparse type of a text option that reaches the database: UTF-8 text.  A byte of the
    command line that is not UTF-8 arrives as a lone surrogate, which the driver cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not valid UTF-8 ({escape(value)})") from None
    return value
