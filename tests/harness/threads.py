"""Run Python code on a POSIX thread that Python did not start, as libmilter's threads are."""

from __future__ import annotations

import ctypes
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def on_foreign_thread(work: Callable[[], T]) -> T:
    """Run *work* on a thread made with pthread_create (threading sees a dummy thread); return its result or raise."""
    outcome: list[tuple[bool, Any]] = []

    def capture(_arg: Any) -> int:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append((False, exc))
        return 0

    callback = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(capture)
    libc = ctypes.CDLL(None)
    thread = ctypes.c_ulong()
    if libc.pthread_create(ctypes.byref(thread), None, callback, None) != 0:
        raise OSError("pthread_create failed")
    libc.pthread_join(thread, None)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
