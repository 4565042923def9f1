"""Fixtures of the integration tests: private clamd and spamd, the sink, and
``make_stack(sections, rules)``, which starts a milterd with that milter.conf
and rule files and a private Postfix whose smtpd_milters points at it; the sink
receives what Postfix delivers.  Feature test modules build their own stacks
with the configuration they need.

Every test here drives real Postfix: the suite stops at once, with the reason,
where Postfix is not installed (.ci/setup installs it).  tests/unit needs none
of this.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, Sink
from tests.harness.scanners import Clamd, Spamd
from tests.harness.stack import Stack, stack_root


def _missing(*commands: str) -> list[str]:
    return [c for c in commands if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _integration_tools() -> None:
    missing = _missing("postfix", "postconf", "smtp-sink")
    if missing:
        pytest.exit(f"the integration tests need Postfix ({', '.join(missing)} missing): run .ci/setup first", returncode=3)


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A private clamd with the test signatures (StreamMaxLength 40M), for one test module."""
    daemon = Clamd(tmp_path_factory.mktemp("clamd"))
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    """A private spamd with Debian's rules, for one test module."""
    daemon = Spamd(tmp_path_factory.mktemp("spamd"))
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def make_stack(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(sections: dict[str, dict[str, Any]] | None = None, rules: dict[str, str] | None = None, postfix_extra: dict[str, str] | None = None, socket: str | None = None) -> Stack:
        root = stack_root()
        milterd = Milterd(root / "milterd", sections, rules, socket=socket).start()
        try:
            postfix = Postfix(root / "postfix", relay_port=sink.port, milter=milterd.postfix_spec, extra=postfix_extra or {}).start()
        except Exception:
            milterd.stop()
            raise
        stack = Stack(milterd, postfix, sink)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
        shutil.rmtree(stack.postfix.root.parent, ignore_errors=True)
