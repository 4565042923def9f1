"""Helpers every test may use: well-formed messages and milter.conf sections.

Fixtures that start daemons live in tests/integration/conftest.py; the
stack of milterd, Postfix and the sink in tests/harness/stack.py.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from milterd.logs import Repeats
from milterd.message import pipeline
from tests.harness.stack import Stack, stack_root  # noqa: F401 - where tests written before the split look for them


@pytest.fixture(autouse=True)
def fresh_check_tracebacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test sees the traceback of a check's first failure (the pipeline logs it once in five minutes
    per process: a test must not find it already spent by an earlier test)."""
    monkeypatch.setattr(pipeline, "CHECK_TRACEBACKS", Repeats())
    yield

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
