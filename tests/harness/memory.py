"""Memory a call allocates, for tests that bound it (tracemalloc: Python's own allocations),
and the peak resident set size of a ``milterd quarantine`` command run as a child."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
import uuid
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from tests.harness.stack import Stack

T = TypeVar("T")


def peak_while(call: Callable[[], T]) -> tuple[T, int]:
    """What *call* returns and the most memory it allocated at once."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def quarantine_cli_peak(stack: Stack, *args: str, text: bool = False, timeout: float = 300) -> tuple[subprocess.CompletedProcess[Any], int]:
    """``milterd -c CONF quarantine ARGS`` with *stack*'s configuration, releasing to its Postfix, in a child
    that reports its own peak RSS (bytes) on its last stderr line: the child's result (its output text when
    *text*, else bytes) and that peak."""
    from tests.harness.milterd import write_config

    sections = {k: dict(v) for k, v in stack.milterd.sections.items()}
    sections.setdefault("quarantine", {})["release_smtp"] = f"unix:{stack.postfix.reinject_socket}"
    path = write_config(stack.milterd.root / f"cli-{uuid.uuid4().hex[:8]}.conf", sections)
    # VmHWM of the process's own address space (ru_maxrss would include the forking parent's).
    code = (
        "import sys\n"
        "from milterd import cli\n"
        "rc = cli.main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "sys.stderr.write(f'\\nPEAK {int(hwm) * 1024}\\n')\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "-c", str(path), "quarantine", *args], capture_output=True, text=text, timeout=timeout)
    stderr = result.stderr if text else result.stderr.decode(errors="replace")
    assert "PEAK " in stderr, (result.returncode, result.stdout[-2000:], stderr[-2000:])
    return result, int(stderr.rsplit("PEAK ", 1)[1].split()[0])
