"""The one error that leaves the store (a leaf module: the store's parts import it, not the package)."""

from __future__ import annotations

from typing import Callable, TypeVar

from sqlalchemy.exc import SQLAlchemyError

T = TypeVar("T")


class StoreError(Exception):
    """The store could not be reached or could not commit."""


def guarded(what: str, work: Callable[[], T]) -> T:
    """The result of *work*; a database error leaves as
    ``StoreError("cannot <what>: <error class>: <first line of the driver's message>")``."""
    try:
        return work()
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc)
        raise StoreError(f"cannot {what}: {exc.__class__.__name__}: {cause.splitlines()[0] if cause else ''}") from exc
