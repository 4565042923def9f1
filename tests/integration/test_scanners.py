"""ClamAV and SpamAssassin through the private Postfix, with a private clamd and spamd.

Most messages come from a client in ``trusted_networks`` with
``skip_trusted = false`` and ``scan_trusted = true``: it is scored and
scanned while the other checks (DNS, SPF, HELO…, which skip trusted clients)
stay out of the score, so SpamAssassin's score alone meets the thresholds.
"""

from __future__ import annotations

import base64
import io
import smtplib
import uuid
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

import pytest

from milterd.config import DatabaseSection
from milterd.learner.classifier import Counts
from milterd.store import Store
from milterd.store.learner import LearnerStore
from tests.conftest import message
from tests.harness.scanners import CLAM_NAME, EICAR, EICAR_NAME, GTUBE, TESTFILES, Clamd, Spamd
from tests.harness.stack import Stack

TRUSTED = {"ADDR": "192.0.2.10", "NAME": "mail.example.org", "HELO": "mail.example.org"}
UNTRUSTED = {"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}




def sections(clamd_address: str, spamd_address: str, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """milter.conf for a stack scanning with both daemons."""
    result: dict[str, dict[str, Any]] = {
        "milter": {"trusted_networks": ["127.0.0.1/32", "192.0.2.0/24"], "skip_trusted": False, "log_level": "debug"},
        "clamav": {"enabled": True, "address": clamd_address, "scan_trusted": True, "max_size": "35M", "timeout": 20},
        "spamd": {"enabled": True, "address": spamd_address, "scan_trusted": True, "timeout": 30},
    }
    for name, values in extra.items():
        result.setdefault(name, {}).update(values)
    return result


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> Stack:
    """Default thresholds: add_header 5, rewrite_subject 8, quarantine 12, reject 15."""
    return make_stack(sections(clamd.address, spamd.address))


def subject() -> str:
    return "scan " + uuid.uuid4().hex[:12]


def with_attachment(title: str, data: bytes, filename: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = "Alice <alice@example.org>"
    mail["To"] = "Bob <bob@example.com>"
    mail["Subject"] = title
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    mail.set_content("The file you asked for.\n")
    mail.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    return mail.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def refused_at_data(stack: Stack, raw: bytes, xclient: dict[str, str] = TRUSTED) -> tuple[int, str]:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, xclient=xclient)
    return info.value.smtp_code, info.value.smtp_error.decode("utf-8", "replace")


def row(stack: Stack, title: str) -> dict[str, Any]:
    rows = [r for r in stack.milterd.log_json() if r["subject"] == title]
    assert rows, f"no log row for {title!r}"
    return rows[0]


def test_clean_mail_carries_both_scanners_headers(stack: Stack) -> None:
    title = subject()
    assert stack.send(message(subject=title), xclient=TRUSTED) == {}
    delivered = stack.sink.wait(1, match=lambda m: title in m.headers)
    assert delivered, stack.milterd.stderr()[-2000:]
    mail = delivered[0]
    assert mail.header("X-Virus-Status") == ["Clean"]
    assert mail.header("X-Virus-Scanned")[0].startswith("ClamAV using milterd at mx.test")
    assert "SPAMASSASSIN" in mail.header("X-Spam-Status")[0]
    logged = row(stack, title)
    assert logged["action"] == "accept" and "SPAMASSASSIN" in logged["symbols"]
    assert logged["details"].get("SPAMASSASSIN") is not None


@pytest.mark.parametrize("form", ["body", "zip"])
def test_eicar_is_rejected_with_its_name(stack: Stack, form: str) -> None:
    title = subject()
    if form == "body":
        raw = message(subject=title, body="Hello,\r\n" + EICAR.decode() + "\r\nbye\r\n")
    else:
        raw = with_attachment(title, zipped("eicar.com", EICAR), "eicar.zip")
    code, text = refused_at_data(stack, raw, xclient=UNTRUSTED if form == "body" else TRUSTED)
    assert code == 550 and "5.7.1 Virus found: " + EICAR_NAME in text
    assert not stack.sink.with_subject(title)
    logged = row(stack, title)
    assert logged["action"] == "reject" and logged["details"]["CLAMAV_VIRUS"].startswith(EICAR_NAME)


@pytest.mark.parametrize("sample", ["clam.exe", "clam.zip", "clam.7z", "clam.tar.gz", "clam.cab", "clam.exe.bz2"])
def test_testfile_sample_caught_in_archive_forms(stack: Stack, sample: str) -> None:
    title = subject()
    code, text = refused_at_data(stack, with_attachment(title, (TESTFILES / sample).read_bytes(), sample))
    assert code == 550 and "Virus found: " + CLAM_NAME in text
    assert not stack.sink.with_subject(title)


def test_gtube_is_rejected_by_the_default_thresholds(stack: Stack) -> None:
    title = subject()
    code, text = refused_at_data(stack, message(subject=title, body=GTUBE + "\r\n"))
    assert code == 550 and "rejected as spam" in text
    logged = row(stack, title)
    assert logged["action"] == "reject" and logged["symbols"]["SPAMASSASSIN"] >= 1000
    assert "GTUBE" in logged["details"]["SPAMASSASSIN"].split(",")


def test_gtube_is_not_auto_learned_as_spam(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> None:
    # GTUBE (1,000 points from a string anyone can paste) learned the message's words as spam: a sender could
    # teach the classifier the site's own ham vocabulary (found by review). SpamAssassin's auto-learning ignores it.
    stack = make_stack(sections(clamd.address, spamd.address, learner={"autolearn_spam": 15, "autolearn_ham": -5}))
    title = subject()
    code, _ = refused_at_data(stack, message(subject=title, body="Quarterly budget review agenda\r\n" + GTUBE + "\r\n"), xclient=UNTRUSTED)
    assert code == 550
    logged = row(stack, title)
    assert "GTUBE" in logged["details"]["SPAMASSASSIN"].split(",") and "BAYES_AUTOLEARN" not in logged["details"]
    store = Store(DatabaseSection(url=stack.milterd.sections["database"]["url"]))
    try:
        assert LearnerStore(store.engine).totals() == Counts(0, 0)
    finally:
        store.close()


def test_the_site_s_words_with_eicar_and_an_exe_attached_are_not_auto_learned(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> None:
    # With [spamd] after_clamav spamd is not asked about a virus: the message scored 15 on what the sender attached
    # (ClamAV's test file, a banned, disguised .exe) and was learned as spam, the site's own words with it.
    stack = make_stack(sections(clamd.address, spamd.address, spamd={"after_clamav": True}, learner={"autolearn_spam": 12, "autolearn_ham": -5}))
    title = subject()
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "Alice <alice@example.org>", "Bob <bob@example.com>", title
    mail.set_content("Minutes of the quarterly board meeting, as agreed.\n")
    mail.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="minutes.pdf.exe")
    code, _ = refused_at_data(stack, mail.as_bytes().replace(b"\n", b"\r\n"), xclient=UNTRUSTED)
    assert code == 550
    logged = row(stack, title)
    assert {"CLAMAV_VIRUS", "ATTACH_BANNED"} <= set(logged["symbols"]) and logged["score"] >= 12, logged["symbols"]
    assert "SPAMASSASSIN" not in logged["symbols"] and "BAYES_AUTOLEARN" not in logged["details"], logged["details"]
    store = Store(DatabaseSection(url=stack.milterd.sections["database"]["url"]))
    try:
        assert LearnerStore(store.engine).totals() == Counts(0, 0)
    finally:
        store.close()


def test_a_message_spamd_judged_is_auto_learned_as_ham(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> None:
    # Ham is auto-learned only from a message spamd judged (with spamd off it never is: test_learner.py).
    stack = make_stack(sections(clamd.address, spamd.address, learner={"autolearn_spam": 15, "autolearn_ham": 4.9}))
    title = subject()
    assert stack.send(message(subject=title, body="Minutes of the budget meeting, as agreed.\r\n"), xclient=UNTRUSTED) == {}
    logged = row(stack, title)
    assert "SPAMASSASSIN" in logged["symbols"] and logged["details"].get("BAYES_AUTOLEARN") == "ham: learned", (logged["action"], logged["score"], logged["symbols"], logged["details"])


@pytest.mark.parametrize(
    "actions, outcome",
    [
        ({"rewrite_subject": False, "quarantine": False, "reject": False}, "add_header"),
        ({"quarantine": False, "reject": False}, "rewrite_subject"),
        ({"reject": False}, "quarantine"),
    ],
)
def test_gtube_follows_the_thresholds(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd, actions: dict[str, Any], outcome: str) -> None:
    stack = make_stack(sections(clamd.address, spamd.address, actions=actions))
    title = subject()
    assert stack.send(message(subject=title, body=GTUBE + "\r\n"), xclient=TRUSTED) == {}
    logged = row(stack, title)
    assert logged["action"] == outcome and "GTUBE" in logged["details"]["SPAMASSASSIN"]
    if outcome == "quarantine":
        assert not stack.sink.wait(1, timeout=1, match=lambda m: title in m.headers)
        return
    mail = stack.sink.wait(1, match=lambda m: title in m.headers)[0]
    assert mail.header("X-Spam-Flag") == ["YES"]
    assert mail.header("Subject")[0].startswith("[SPAM] ") == (outcome == "rewrite_subject")


def test_clamd_stopped_tempfails(make_stack: Callable[..., Stack], spamd: Spamd, tmp_path: Path) -> None:
    own = Clamd(tmp_path / "clamd").start()
    try:
        stack = make_stack(sections(own.address, spamd.address))
        title = subject()
        assert stack.send(message(subject=title), xclient=TRUSTED) == {}
        assert stack.sink.wait(1, match=lambda m: title in m.headers)
        own.stop()
        title = subject()
        code, text = refused_at_data(stack, message(subject=title))
        assert code == 451 and "4.7.1" in text
        logged = row(stack, title)
        assert logged["action"] == "tempfail" and "CLAMAV_ERROR" in logged["symbols"]
        assert not stack.sink.with_subject(title)  # 451 at end of data: Postfix never took it
    finally:
        own.stop()


def test_spamd_stopped_delivers_with_a_symbol(make_stack: Callable[..., Stack], clamd: Clamd, tmp_path: Path) -> None:
    own = Spamd(tmp_path / "spamd").start()
    try:
        stack = make_stack(sections(clamd.address, own.address))
        own.stop()
        title = subject()
        assert stack.send(message(subject=title), xclient=TRUSTED) == {}
        mail = stack.sink.wait(1, match=lambda m: title in m.headers)
        assert mail and mail[0].header("X-Virus-Status") == ["Clean"]
        logged = row(stack, title)
        assert logged["action"] == "accept" and "SPAMD_ERROR" in logged["symbols"]
    finally:
        own.stop()


def _memory(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def test_30mb_message_streams_with_flat_worker_memory(stack: Stack) -> None:
    title = subject()
    # Warm up both workers so that imports and first-use allocations are done.
    for _ in range(4):
        stack.send(message(subject=subject()), xclient=TRUSTED)
    before = {}
    for pid in stack.milterd.workers():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        before[pid] = _memory(pid)
    line = base64.b64encode(bytes(range(256)) * 3)[:76] + b"\r\n"
    body = line * (30 * 1024 * 1024 // len(line))
    raw = message(subject=title, body="").rstrip(b"\r\n") + b"\r\n\r\n" + body
    assert stack.send(raw, xclient=TRUSTED) == {}
    assert stack.sink.wait(1, timeout=120, match=lambda m: title in m.headers)
    logged = row(stack, title)
    assert logged["size"] >= 30 * 1024 * 1024 - 1024
    # Scanned by clamd (streamed, 35M limit), too large for spamd (512K).
    assert "CLAMAV_SKIPPED_SIZE" not in logged["symbols"] and "SPAMD_SKIPPED_SIZE" in logged["symbols"]
    for pid, was in before.items():
        now = _memory(pid)
        grew = now["VmHWM"] - was["VmRSS"]
        print(f"worker {pid}: RSS {was['VmRSS'] >> 20} MB before, peak {now['VmHWM'] >> 20} MB, now {now['VmRSS'] >> 20} MB")
        assert grew < 12 * 1024 * 1024, f"worker {pid} grew by {grew >> 20} MB for a 30 MB message"
