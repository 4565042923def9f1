"""The core, end to end: a real Postfix with smtpd_milters pointing at milterd.

Assertions are on what an administrator would look at: the SMTP reply, the
headers of the delivered message in the sink, the rows of `milterd log`.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import time
from pathlib import Path

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.postfix import SinkMessage
from tests.harness.stack import Stack, stack_root

RULES = {
    "test.toml": """
[[rule]]
name = "TEST_REJECT"
header = "Subject"
regex = "REJECTME"
score = 100

[[rule]]
name = "TEST_TAG"
header = "Subject"
regex = "TAGME"
score = 6

[[rule]]
name = "TEST_SUBJECT"
header = "Subject"
regex = "REWRITEME"
score = 9

[[rule]]
name = "TEST_FOLDED_STATUS_LONG_NAME_1"
header = "Subject"
regex = "FOLDME"
score = 0.5

[[rule]]
name = "TEST_FOLDED_STATUS_LONG_NAME_2"
header = "Subject"
regex = "FOLDME"
score = 0.5

[[rule]]
name = "TEST_FOLDED_STATUS_LONG_NAME_3"
header = "Subject"
regex = "FOLDME"
score = 0.5

[[rule]]
name = "TEST_FOLDED_STATUS_LONG_NAME_4"
header = "Subject"
regex = "FOLDME"
score = 0.5

[[rule]]
name = "TEST_FOLDED_STATUS_LONG_NAME_5"
header = "Subject"
regex = "FOLDME"
score = 0.5

[[rule]]
name = "TEST_FOLDED_STATUS_LONG_NAME_6"
header = "Subject"
regex = "FOLDME"
score = 0.5
"""
}


@pytest.fixture(scope="module")
def stack(make_stack) -> Stack:  # type: ignore[no-untyped-def]
    return make_stack(with_sections(NO_CHECKS, {"milter": {"workers": 2}}), RULES)


def queue_id_of(received: str) -> str:
    match = re.search(r"with E?SMTP id (\w+)", received)
    assert match, received
    return match.group(1)


def test_clean_message_arrives_with_spam_headers(stack: Stack) -> None:
    stack.send(message("clean one"))
    [delivered] = stack.sink.wait(1, match=lambda m: "clean one" in m.headers)
    assert delivered.header("X-Spam-Status") == ["No, score=0.0 required=5 tests=none"]
    assert delivered.header("X-Spam-Score") == ["0.0"]
    assert delivered.header("X-Spam-Flag") == []
    queue_id = queue_id_of(delivered.header("Received")[0])
    [row] = stack.milterd.log_json("--queue-id", queue_id)
    assert row["action"] == "accept"
    assert row["subject"] == "clean one"
    assert row["client_addr"] == "192.0.2.10"
    assert row["helo"] == "client.example.org"
    assert row["sender"] == "alice@example.org"
    assert row["recipients"] == ["bob@example.com"]
    assert row["mta_host"] == "mx.test"
    assert row["size"] > 100
    assert set(row) >= {"id", "time", "queue_id", "client_addr", "client_name", "helo", "sender", "recipients", "subject", "message_id", "size", "score", "action", "reason", "symbols"}


def test_message_over_reject_threshold_gets_550_and_never_arrives(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("please REJECTME now"))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.startswith(b"5.7.1 Message rejected as spam (score 100)")
    time.sleep(1)
    assert stack.sink.with_subject("REJECTME") == []
    rows = stack.milterd.log_json("--action", "reject")
    row = next(r for r in rows if r["subject"] == "please REJECTME now")
    assert row["symbols"] == {"TEST_REJECT": 100.0}
    assert row["score"] == 100.0
    # The queue id in the log is the one Postfix reported when it rejected.
    assert f"{row['queue_id']}: milter-reject: END-OF-MESSAGE" in stack.postfix.maillog.read_text()


def test_thresholds_tag_and_rewrite_subject(stack: Stack) -> None:
    stack.send(message("TAGME please"))
    stack.send(message("REWRITEME please"))
    [tagged] = stack.sink.wait(1, match=lambda m: "TAGME please" in m.headers)
    assert tagged.header("X-Spam-Flag") == ["YES"]
    assert tagged.header("X-Spam-Status") == ["Yes, score=6.0 required=5 tests=TEST_TAG"]
    assert tagged.header("Subject") == ["TAGME please"]
    [rewritten] = stack.sink.wait(1, match=lambda m: "REWRITEME please" in m.headers)
    assert rewritten.header("Subject") == ["[SPAM] REWRITEME please"]
    assert rewritten.header("X-Spam-Flag") == ["YES"]


def test_forged_spam_headers_are_removed(stack: Stack) -> None:
    stack.send(message("forged flags", headers={"X-Spam-Flag": "NO", "X-Spam-Status": "No, score=-100"}))
    [delivered] = stack.sink.wait(1, match=lambda m: "forged flags" in m.headers)
    assert delivered.header("X-Spam-Flag") == []
    assert delivered.header("X-Spam-Status") == ["No, score=0.0 required=5 tests=none"]


def test_two_transactions_on_one_connection_are_scored_independently(stack: Stack) -> None:
    client = stack.postfix.smtp(xclient={"ADDR": "192.0.2.11", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"})
    try:
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("alice@example.org", ["bob@example.com"], message("first REJECTME"))
        client.rset()
        client.sendmail("carol@example.org", ["dave@example.com"], message("second fine"))
    finally:
        client.quit()
    [second] = stack.sink.wait(1, match=lambda m: "second fine" in m.headers)
    assert second.header("X-Spam-Status") == ["No, score=0.0 required=5 tests=none"]
    rows = {r["subject"]: r for r in stack.milterd.log_json("--limit", "20")}
    assert rows["first REJECTME"]["action"] == "reject"
    assert rows["second fine"]["action"] == "accept"
    assert rows["second fine"]["symbols"] == {}
    assert rows["second fine"]["sender"] == "carol@example.org"
    assert rows["second fine"]["recipients"] == ["dave@example.com"]


def test_a_long_spam_status_arrives_folded_after_its_commas(stack: Stack) -> None:
    stack.send(message("please FOLDME"))
    [delivered] = stack.sink.wait(1, match=lambda m: "please FOLDME" in m.headers)
    names = ",".join(f"TEST_FOLDED_STATUS_LONG_NAME_{n}" for n in range(1, 7))
    raw = delivered.headers.split("X-Spam-Status: ", 1)[1].split("\r\nX-", 1)[0]
    lines = raw.split("\r\n")
    assert len(lines) > 1 and all(line.startswith("\t") for line in lines[1:]) and max(map(len, lines)) < 998
    assert raw.replace("\r\n\t", "") == f"No, score=3.0 required=5 tests={names}"


def test_trusted_network_is_logged_but_not_scored(stack: Stack) -> None:
    client = stack.postfix.smtp()  # 127.0.0.1, in trusted_networks
    try:
        client.sendmail("alice@example.org", ["bob@example.com"], message("trusted REJECTME", headers={"X-Spam-Flag": "YES"}))
    finally:
        client.quit()
    [delivered] = stack.sink.wait(1, match=lambda m: "trusted REJECTME" in m.headers)
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "trusted REJECTME")
    assert row["action"] == "accept"
    assert row["client_addr"] == "127.0.0.1"
    assert row["symbols"]["UNSCORED"] == 0 and row["details"]["UNSCORED"] == "trusted client 127.0.0.1"  # the row says so itself
    # Not scored: no X-Spam-* header of ours (its score would mark the users' own mail), the forged one removed.
    assert [name for name in ("X-Spam-Flag", "X-Spam-Status", "X-Spam-Score") if delivered.header(name)] == []


def summary_line(stack: Stack, delivered: SinkMessage) -> tuple[str, str]:
    """The queue ID of *delivered* and milterd's summary line for it, waited for up to 5 s."""
    queue_id = queue_id_of(delivered.header("Received")[0])
    deadline = time.monotonic() + 5
    while f"{queue_id}: action=" not in stack.milterd.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    return queue_id, next(text for text in stack.milterd.stderr().splitlines() if f"{queue_id}: action=" in text)


def test_summary_line_per_message(stack: Stack) -> None:
    stack.send(message("summary line"))
    [delivered] = stack.sink.wait(1, match=lambda m: "summary line" in m.headers)
    queue_id, line = summary_line(stack, delivered)
    assert re.search(rf"milterd\[\d+\]: INFO {queue_id}: action=accept score=0 symbols=- client=unknown\[192\.0\.2\.10\] from=<alice@example\.org> to=<bob@example\.com> ms=[\d.]+", line), line


def test_a_recipient_cannot_forge_the_summary_lines_fields(stack: Stack) -> None:
    """A quoted local part holds blanks, "<>" and '"': it wrote a second from=<…> and action= into milterd's line.
    Past 10 recipients the line counts the rest (a thousand long ones made a line syslog dropped whole)."""
    forged = '"x> from=<ceo@bank.example> action=reject"@example.com'
    recipients = [forged] + [f"r{i}@example.com" for i in range(11)]
    assert stack.send(message("forged fields"), recipients=recipients) == {}
    [delivered] = stack.sink.wait(1, match=lambda m: "forged fields" in m.headers)
    _, line = summary_line(stack, delivered)
    assert line.count(" from=<") == 1 and line.count(" action=") == 1, line
    assert 'to=<\\x22x\\x3e\\x20from=\\x3cceo@bank.example\\x3e\\x20action=reject\\x22@example.com>,<r0@example.com>' in line, line
    assert "<r8@example.com> (+2 more) ms=" in line and "r9@" not in line, line


def test_log_filters(stack: Stack) -> None:
    stack.send(message("filter me"), sender="filter@example.net")
    stack.sink.wait(1, match=lambda m: "filter me" in m.headers)
    rows = stack.milterd.log_json("--sender", "filter@example.net")
    assert [r["subject"] for r in rows] == ["filter me"]
    table = stack.milterd.cli("log", "--since", "1h", "--limit", "5")
    assert table.returncode == 0
    assert "filter me" in table.stdout  # the newest row, logged before Postfix delivered it


def test_killed_worker_is_replaced_and_mail_flows(stack: Stack) -> None:
    before = stack.milterd.workers()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = stack.milterd.workers()
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    assert len(stack.milterd.workers()) == 2
    assert before[0] not in stack.milterd.workers()
    assert f"worker {before[0]} was killed by signal 9 (SIGKILL)" in stack.milterd.stderr()
    for n in range(4):  # several connections, so both workers serve one
        stack.send(message(f"after kill {n}"))
    assert len(stack.sink.wait(4, match=lambda m: "after kill" in m.headers)) == 4


def test_unix_socket_and_sendmail_spelling(make_stack) -> None:  # type: ignore[no-untyped-def]
    tmp_path = stack_root()  # Postfix's smtpd (user postfix) must reach the socket
    unix = make_stack(with_sections(NO_CHECKS, {"milter": {"socket_mode": "0666"}}), RULES, socket=f"unix:{tmp_path}/run/milterd.sock")
    assert oct(os.stat(tmp_path / "run" / "milterd.sock").st_mode & 0o777) == "0o666"
    unix.send(message("over unix"))
    [delivered] = unix.sink.wait(1, match=lambda m: "over unix" in m.headers)
    assert delivered.header("X-Spam-Score") == ["0.0"]
    from tests.harness.postfix import free_port

    port = free_port()
    sendmail = make_stack(NO_CHECKS, RULES, socket=f"inet:{port}@127.0.0.1")
    sendmail.send(message("sendmail spelling"))
    assert sendmail.sink.wait(1, match=lambda m: "sendmail spelling" in m.headers)
    unix.milterd.stop()
    assert not (tmp_path / "run" / "milterd.sock").exists()


def test_reload_refuses_bad_config_and_applies_good_one(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(NO_CHECKS, RULES)
    rules_file = Path(stack.milterd.sections["rules"]["dir"]) / "test.toml"
    good = rules_file.read_text()
    # A broken rule: refused, the old configuration keeps running.
    rules_file.write_text(good + '\n[[rule]]\nname = "BROKEN"\nheader = "Subject"\nregex = "(x"\n')
    old_workers = stack.milterd.workers()
    stack.milterd.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in stack.milterd.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reload refused" in stack.milterd.stderr()
    assert "BROKEN" in stack.milterd.stderr()
    assert stack.milterd.workers() == old_workers
    with pytest.raises(smtplib.SMTPDataError):
        stack.send(message("still REJECTME"))
    # A good change: TAGME now rejects; workers are replaced one by one.
    rules_file.write_text(good.replace("score = 6", "score = 50"))
    stack.milterd.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reload done" not in stack.milterd.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reload done" in stack.milterd.stderr()
    assert not set(stack.milterd.workers()) & set(old_workers)
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(message("TAGME after reload"))
    assert info.value.smtp_code == 550


def test_sigterm_stops_cleanly(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(NO_CHECKS, RULES)
    stack.send(message("before stop"))
    assert stack.sink.wait(1, match=lambda m: "before stop" in m.headers)
    started = time.monotonic()
    assert stack.milterd.stop() == 0
    assert time.monotonic() - started < 15
    assert "stopped" in stack.milterd.stderr()
    # With milterd gone, Postfix applies milter_default_action = tempfail: nothing is lost.
    with pytest.raises(smtplib.SMTPException) as info:
        stack.send(message("while stopped"))
    code = getattr(info.value, "smtp_code", None) or getattr(info.value, "recipients", {})
    assert "4" in str(code)[:1] or "451" in str(info.value) or "421" in str(info.value)
