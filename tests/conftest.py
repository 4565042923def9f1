"""Shared fixtures: the sink, a private Postfix and milterd itself, all on loopback.

``make_stack(sections, rules)`` starts a milterd with that milter.conf and
rule files, and a private Postfix whose smtpd_milters points at it; the sink
receives what Postfix delivers.  Feature test modules build their own stacks
with the configuration they need.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, Sink

if TYPE_CHECKING:
    from tests.harness.scanners import Clamd, Spamd


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
        pytest.exit(f"the test suite needs Postfix ({', '.join(missing)} missing): run .ci/setup first", returncode=3)


@dataclass
class Stack:
    """A milterd, the Postfix in front of it and the sink behind it."""

    milterd: Milterd
    postfix: Postfix
    sink: Sink

    def send(self, message: bytes, sender: str = "alice@example.org", recipients: list[str] | None = None, xclient: dict[str, str] | None = None) -> dict[str, Any]:
        """Send one message through Postfix; return the refused recipients (smtplib's dict)."""
        client = self.postfix.smtp(xclient=xclient or {"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"})
        try:
            return client.sendmail(sender, recipients or ["bob@example.com"], message)
        finally:
            try:
                client.quit()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        self.postfix.stop()
        self.milterd.stop()


STACKS = Path("/tmp/milterd-tests")


def stack_root() -> Path:
    """A fresh directory for one stack, outside pytest's 0700 temporary tree:
    Postfix's unprivileged processes must be able to reach their files."""
    import tempfile

    STACKS.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="stack-", dir=STACKS))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator["Clamd"]:
    """A private clamd with the test signatures (StreamMaxLength 40M), for one test module."""
    from tests.harness.scanners import Clamd

    daemon = Clamd(tmp_path_factory.mktemp("clamd"))
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator["Spamd"]:
    """A private spamd with Debian's rules, for one test module."""
    from tests.harness.scanners import Spamd

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


#: milter.conf sections that switch off the DNS, HELO, sender and header checks,
#: for tests of the core that must not depend on them.
NO_CHECKS: dict[str, dict[str, Any]] = {
    "checks": {name: {"enabled": False} for name in ("dnsbl", "rdns", "helo", "sender", "spf", "dkim", "dmarc", "arc", "headers", "local_domains")}
}


def with_sections(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge milter.conf section dictionaries (later ones win, key by key)."""
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for section, values in part.items():
            merged.setdefault(section, {}).update(values)
    return merged


def message(subject: str = "hello", body: str = "Hello Bob,\r\nsee you tomorrow.\r\n", headers: dict[str, str] | None = None, sender: str = "alice@example.org", to: str = "bob@example.com") -> bytes:
    """A well-formed RFC 5322 message."""
    import email.utils
    import uuid

    fields = {
        "From": f"Alice <{sender}>",
        "To": f"Bob <{to}>",
        "Subject": subject,
        "Date": email.utils.formatdate(localtime=False),
        "Message-ID": f"<{uuid.uuid4().hex}@example.org>",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=utf-8",
    }
    fields.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
    return (head + "\r\n" + body).encode("utf-8")
