"""Running C code that calls back into Python on a thread Python started.

A worker's callbacks run on libmilter's POSIX threads, and pymilter gives each
SMTP connection a Python thread state that later callbacks may use from other
threads.  CPython's per-thread "GIL state" record (what ``PyGILState_Ensure``
looks up) is then left pointing at thread states that belong to another
connection or were freed.  C code that calls back into Python through
``PyGILState_Ensure`` on such a thread hangs the worker (it waits for the GIL
it already holds) or crashes it, and a process forked there keeps the stale
record while every other thread state is freed: its first such callback uses
freed memory.  Such code (sqlite3's function destructors, libarchive's read
callbacks through ctypes, a fork that runs them) runs through
:func:`run_on_python_thread`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def run_on_python_thread(work: Callable[[], T]) -> T:
    """Run *work* on a thread Python started, and wait for it; return its result or raise its exception.

    Called on a thread Python did not start (a libmilter thread), *work* runs
    on a short-lived ``threading.Thread``, whose GIL state record is its own;
    anywhere else it runs in place.
    """
    if not isinstance(threading.current_thread(), threading._DummyThread):  # noqa: SLF001 - how threading names foreign threads
        return work()
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append((False, exc))

    helper = threading.Thread(target=target, name="milterd-helper", daemon=True)
    helper.start()
    helper.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
