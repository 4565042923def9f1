"""The one error that leaves the store (a leaf module: the store's parts import it, not the package)."""

from __future__ import annotations


class StoreError(Exception):
    """The store could not be reached or could not commit."""
