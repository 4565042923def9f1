"""Memory a call allocates, for tests that bound it (tracemalloc: Python's own allocations)."""

from __future__ import annotations

import tracemalloc
from typing import Callable, TypeVar

T = TypeVar("T")


def peak_while(call: Callable[[], T]) -> tuple[T, int]:
    """What *call* returns and the most memory it allocated at once."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
