"""Text that leaves milterd, through a real Postfix and a real ``milterd serve``:
long replies keep their code, database passwords never show."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, Stack, message, stack_root
from tests.harness.milterd import Milterd

LONG_TEXT = "Refused by the site's policy, " + "a very long explanation " * 90  # about 2,200 characters
RULES = {"local.toml": '[[rule]]\nname = "SUBJ_REFUSE"\nheader = "Subject"\nregex = "refuse me"\nscore = 50\ndescription = "test"\n'}


def _reply_code(stack: Stack, body: bytes, sender: str = "alice@example.org") -> tuple[int, str]:
    try:
        stack.send(body, sender=sender)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error.decode(errors="replace")
    except smtplib.SMTPSenderRefused as exc:
        return exc.smtp_code, exc.smtp_error.decode(errors="replace")
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return code, text.decode(errors="replace")
    return 250, ""


def test_long_reject_message_keeps_its_5xx(make_stack: Callable[..., Stack]) -> None:
    """A 2,200-character reply is beyond libmilter's 980: shortened, still 550 5.7.1, never 451."""
    stack = make_stack({**NO_CHECKS, "milter": {"trusted_networks": []}, "actions": {"reject_message": LONG_TEXT}}, rules=RULES)
    code, text = _reply_code(stack, message(subject="please refuse me"))
    assert code == 550, text
    assert text.startswith("5.7.1 Refused by the site's policy")
    assert "Traceback" not in stack.milterd.stderr()


def test_long_outsider_address_in_reply_keeps_its_5xx(make_stack: Callable[..., Stack]) -> None:
    """The client controls the address quoted in a 553: a 950-character one still gets 553 5.7.1."""
    sections = {
        **NO_CHECKS,
        "milter": {"trusted_networks": [], "local_domains": ["example.org"]},
        "checks": {**NO_CHECKS.get("checks", {}), "local_domains": {"enabled": True, "action": "reject"}},
    }
    stack = make_stack(sections)
    sender = "x" * 960 + "@example.org"
    code, text = _reply_code(stack, message(subject="long sender"), sender=sender)
    assert code == 553, text
    assert text.startswith("5.7.1 <xxxx")


def _pg_config(root: Path, url: str) -> Milterd:
    return Milterd(root, {"database": {"url": url}})


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://milterd:S3cretPassw0rd@127.0.0.1:1/milterd",  # nothing listens there
    "postgresql+psycopg://milterd:S3cretPassw0rd@127.0.0.1:notaport/milterd",  # refused by the driver
    "postgresql+psycopg://milterd:S3cretPassw0rd@127.0.0.1:5432/milterd_no_such_db",
])
def test_database_password_never_printed(url: str) -> None:
    root = stack_root()
    milterd = _pg_config(root / "m", url)
    with pytest.raises(RuntimeError) as info:
        milterd.start(timeout=60)
    milterd.stop()
    assert "S3cretPassw0rd" not in str(info.value)
    assert "S3cretPassw0rd" not in milterd.stderr()
    assert milterd.stderr().strip(), "serve said nothing"
    for args in (["doctor", "--no-postfix", "--json"], ["doctor", "--no-postfix"], ["db", "upgrade"], ["log", "--limit", "1"], ["config", "show"]):
        result = milterd.cli(*args)
        assert "S3cretPassw0rd" not in result.stdout + result.stderr, args
        assert "Traceback" not in result.stderr, (args, result.stderr)
