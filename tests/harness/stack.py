"""A milterd, the private Postfix in front of it and the sink behind it, for integration tests."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, Sink


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


def row_for(stack: Stack, subject: str) -> dict[str, Any]:
    """The log row (``milterd log --json``) of the stack's message with this Subject, the newest if several."""
    for row in stack.milterd.log_json():
        if row["subject"] == subject:
            return row
    raise AssertionError(f"no log row for {subject}")


STACKS = Path("/tmp/milterd-tests")


def stack_root() -> Path:
    """A fresh directory for one stack, outside pytest's 0700 temporary tree:
    Postfix's unprivileged processes must be able to reach their files."""
    STACKS.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="stack-", dir=STACKS))
    root.chmod(0o755)
    return root
