"""Text that leaves milterd, through a real Postfix and a real ``milterd serve``:
long replies keep their code, database passwords never show."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest

from tests.conftest import NO_CHECKS, message
from tests.harness.milterd import Milterd
from tests.harness.stack import Stack, stack_root

if TYPE_CHECKING:
    from tests.harness.scanners import Clamd

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


def test_virus_notice_survives_a_hostile_subject(make_stack: Callable[..., Stack], clamd: "Clamd") -> None:
    """A virus quarantined with a Subject carrying CR/LF (in an encoded-word), raw 8-bit text
    and 1,500 characters: the recipient's notice and the digest are well-formed mail, the
    Subject stays one header, no header is injected, and the text shows visible escapes."""
    import email
    import email.policy

    from tests.harness.milterd import write_config
    from tests.harness.scanners import EICAR

    stack = make_stack({**NO_CHECKS, "clamav": {"enabled": True, "address": clamd.address, "action": "quarantine"}})
    hostile = "=?utf-8?q?Invoice=0D=0ABcc:_victim@example.net=0D=0A=0D=0Ainjected_body?= " + "long " * 300
    eightbit = "Rechnung f\u00fcr Sie \u20ac\x1b[2J"
    for subject, rcpt in ((hostile, "bob@example.com"), (eightbit, "carol@example.com")):
        assert stack.send(message(subject=subject, body="Hi,\r\n" + EICAR.decode() + "\r\n"), recipients=[rcpt]) == {}
    sections = {k: dict(v) for k, v in stack.milterd.sections.items()}
    sections.setdefault("quarantine", {})["release_smtp"] = f"127.0.0.1:{stack.postfix.reinject_port}"  # through Postfix to the sink
    config = write_config(stack.milterd.root / "notices.conf", sections)
    result = subprocess.run([sys.executable, "-m", "milterd", "-c", str(config), "quarantine", "digest", "--to", "postmaster@example.org",
                             "--since", "1h", "--notify-virus-recipients"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    notices = {m.recipients[0]: m for m in stack.sink.wait(3, match=lambda m: m.recipients[0] in ("bob@example.com", "carol@example.com", "postmaster@example.org"))}
    assert set(notices) == {"bob@example.com", "carol@example.com", "postmaster@example.org"}
    # The recipients' notices from the null sender (RFC 3834: no bounce comes back), the digest from report_from.
    assert [notices[r].sender for r in ("bob@example.com", "carol@example.com", "postmaster@example.org")] == ["<>", "<>", "postmaster@mx.test"]
    for recipient, received in notices.items():
        parsed = email.message_from_bytes(received.data, policy=email.policy.default)
        assert not parsed.defects, (recipient, parsed.defects)
        assert parsed.get_all("Bcc") is None
        assert len(parsed.get_all("Subject") or []) == 1
        assert {name.lower() for name in parsed.keys()} <= {"from", "to", "subject", "date", "message-id", "auto-submitted", "content-type",
                                                            "content-transfer-encoding", "mime-version", "received", "return-path"}
        assert all(len(line) <= 998 for line in received.data.split(b"\r\n"))
        text = parsed.get_content() if not parsed.is_multipart() else ""
        assert not any(line.startswith(("Bcc:", "injected_body", "injected body")) for line in text.splitlines())
        assert "\x1b" not in text and "\x1b" not in str(parsed["Subject"])
    bob = email.message_from_bytes(notices["bob@example.com"].data, policy=email.policy.default)
    assert str(bob["Subject"]).startswith("Quarantined: Invoice\\r\\nBcc: victim@example.net")
    assert "subject: Invoice\\r\\nBcc: victim@example.net\\r\\n\\r\\ninjected body" in bob.get_content()
    carol = email.message_from_bytes(notices["carol@example.com"].data, policy=email.policy.default)
    assert "Rechnung f\u00fcr Sie \u20ac\\x1b[2J" in str(carol["Subject"])
    rows = json.loads(subprocess.run([sys.executable, "-m", "milterd", "-c", str(config), "quarantine", "list", "--json"], capture_output=True, text=True, check=True).stdout)
    row = next(r for r in rows if r["recipients"] == ["bob@example.com"])
    show = subprocess.run([sys.executable, "-m", "milterd", "-c", str(config), "quarantine", "show", str(row["id"])], capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert "subject:    Invoice\\r\\nBcc: victim@example.net\\r\\n\\r\\ninjected body" in show.stdout
    assert not any(line.startswith(("Bcc:", "injected")) for line in show.stdout.splitlines())
    listing = subprocess.run([sys.executable, "-m", "milterd", "-c", str(config), "quarantine", "list"], capture_output=True, text=True, timeout=60)
    assert "\x1b" not in listing.stdout and not any(line.startswith("Bcc:") for line in listing.stdout.splitlines())


def test_spf_explanation_is_escaped_in_the_reply(make_stack: Callable[..., Stack], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A domain's SPF exp= text (2,000 characters with ESC, CR and LF) is its own to write:
    the client still gets 550 5.7.23, with the control characters as visible escapes."""
    from tests.harness.dns import LocalDns

    parts = " ".join(f'"{"y" * 250}"' for _ in range(8))
    local_data = [
        "mx.example.org. A 192.0.2.1",
        'exp.test. TXT "v=spf1 ip4:203.0.113.0/24 exp=why.exp.test -all"',
        "exp.test. MX 10 mx.example.org.",
        f'why.exp.test. TXT "Not allowed\\027[2J\\013\\010250 forged " {parts}',
    ]
    dns = LocalDns(tmp_path_factory.mktemp("dns"), local_data, {"bl.safety.test": ("ip4set", ":127.0.0.2:listed\n192.0.2.250\n")}).start()
    try:
        checks = {name: {"enabled": name == "spf"} for name in ("dnsbl", "rdns", "helo", "sender", "spf", "headers", "local_domains")}
        checks["spf"]["fail_action"] = "reject"
        stack = make_stack({"milter": {"trusted_networks": []}, "dns": {"nameservers": [dns.nameserver]}, "checks": checks})
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            stack.send(message(subject="spf exp", sender="x@exp.test"), sender="x@exp.test",
                       xclient={"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"})
    finally:
        dns.stop()
    code, text = info.value.recipients["bob@example.com"]
    assert code == 550, text
    assert text.startswith(b"5.7.23 <x@exp.test>: SPF validation failed for exp.test: Not allowed\\x1b[2J\\r\\n250 forged yyy"), text
