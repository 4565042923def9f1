"""Spending spamd's time well, through the private Postfix with a private clamd and spamd:

* ``[spamd] after_clamav = true``: a virus is rejected without a spamd call;
  by default both scanners run side by side;
* a message retried after a 4xx (here: score-based greylisting at end of data)
  is not scanned again: the worker reuses spamd's result (``[spamd] cache_*``),
  and never for other content or another client.

spamd logs ``checking message <Message-ID>`` for every scan: the tests count
those lines in its log file.  One worker per milterd, so that a retry meets
the worker that kept the result (the cache is per worker).
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.scanners import EICAR, EICAR_NAME, GTUBE, Clamd, Spamd
from tests.harness.stack import Stack
from tests.integration.test_learner import MIN_LEARNED, synthetic

CLIENT = {"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}
OTHER_CLIENT = {"ADDR": "203.0.113.9", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}
#: Long enough that a second attempt with spamd's scan in between (a fraction of a second, more on a
#: loaded machine) is still inside it.
DELAY = 3.0
GREY_RULES = {"grey.toml": '[[rule]]\nname = "SUBJ_GREYME"\nheader = "Subject"\nregex = "greyme"\nscore = 50.0\n'}




def sections(clamd: Clamd, spamd: Spamd, after_clamav: bool) -> dict[str, dict[str, Any]]:
    return with_sections(NO_CHECKS, {
        "milter": {"workers": 1, "trusted_networks": [], "log_level": "debug"},
        "clamav": {"enabled": True, "address": clamd.address, "timeout": 20},
        "spamd": {"enabled": True, "address": spamd.address, "timeout": 30, "after_clamav": after_clamav},
        "greylist": {"enabled": True, "mode": "score", "delay": DELAY, "auto_whitelist_after": 0, "whitelist_providers": False},
        "actions": {"greylist": 40, "quarantine": False, "reject": False},
    })


@pytest.fixture(scope="module")
def tiered(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> Stack:
    return make_stack(sections(clamd, spamd, after_clamav=True), rules=GREY_RULES)


@pytest.fixture(scope="module")
def side_by_side(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> Stack:
    return make_stack(sections(clamd, spamd, after_clamav=False), rules=GREY_RULES)


def message_id(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", raw, re.M | re.I)
    assert found
    return found.group(1).decode()


def spamd_scans(spamd: Spamd, raw: bytes) -> int:
    """How many times spamd logged a scan of this message."""
    wanted = f"checking message {message_id(raw)}"
    return sum(1 for line in spamd.log.read_text(errors="replace").splitlines() if wanted in line)


def rows(stack: Stack, title: str) -> list[dict[str, Any]]:
    """The log rows of the messages with this subject, oldest first."""
    found = [r for r in stack.milterd.log_json() if r["subject"] == title]
    return sorted(found, key=lambda r: r["id"])


def send(stack: Stack, raw: bytes, xclient: dict[str, str] = CLIENT, recipient: str = "bob@example.com") -> int:
    """The SMTP code for this message: 250 when accepted, the refusal's code otherwise."""
    try:
        stack.send(raw, recipients=[recipient], xclient=xclient)
        return 250
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code


def eicar(title: str) -> bytes:
    return message(subject=title, body="Hello,\r\n" + EICAR.decode() + "\r\nbye\r\n")


def test_after_clamav_skips_spamd_for_a_virus(tiered: Stack, spamd: Spamd) -> None:
    title = "tier " + uuid.uuid4().hex[:10]
    raw = eicar(title)
    with pytest.raises(smtplib.SMTPDataError) as info:
        tiered.send(raw, xclient=CLIENT)
    assert info.value.smtp_code == 550 and f"Virus found: {EICAR_NAME}" in info.value.smtp_error.decode()
    [logged] = rows(tiered, title)
    assert logged["action"] == "reject" and logged["details"]["CLAMAV_VIRUS"].startswith(EICAR_NAME)
    assert "SPAMASSASSIN" not in logged["symbols"] and "SPAMD_ERROR" not in logged["symbols"]
    assert spamd_scans(spamd, raw) == 0


def test_after_clamav_still_scans_clean_mail_with_spamd(tiered: Stack, spamd: Spamd) -> None:
    title = "tier " + uuid.uuid4().hex[:10]
    raw = message(subject=title)
    assert send(tiered, raw) == 250
    [logged] = rows(tiered, title)
    assert "SPAMASSASSIN" in logged["symbols"] and spamd_scans(spamd, raw) == 1


def test_by_default_both_scanners_run_on_a_virus(side_by_side: Stack, spamd: Spamd) -> None:
    title = "tier " + uuid.uuid4().hex[:10]
    raw = eicar(title)
    assert send(side_by_side, raw) == 550
    [logged] = rows(side_by_side, title)
    assert logged["action"] == "reject" and "CLAMAV_VIRUS" in logged["symbols"] and "SPAMASSASSIN" in logged["symbols"]
    assert spamd_scans(spamd, raw) == 1


def test_a_retried_message_is_scanned_once(tiered: Stack, spamd: Spamd) -> None:
    title = "greyme " + uuid.uuid4().hex[:10]
    raw = message(subject=title, body="Hello Bob,\r\nthe minutes of the meeting are attached.\r\n")
    recipient = f"r{uuid.uuid4().hex[:8]}@example.com"  # a triplet of its own
    assert send(tiered, raw, recipient=recipient) == 451  # greylisted at end of data, after both scans
    time.sleep(DELAY + 0.5)
    assert send(tiered, raw, recipient=recipient) == 250  # the retry: same content, same client
    assert tiered.sink.wait(1, match=lambda m: title in "".join(m.header("Subject")))
    first, retry = rows(tiered, title)
    assert first["action"] == "greylist" and retry["action"] != "greylist"
    assert retry["symbols"]["SPAMASSASSIN"] == first["symbols"]["SPAMASSASSIN"]
    assert retry["details"]["SPAMASSASSIN"] == first["details"]["SPAMASSASSIN"]
    assert "SPAMD_CACHED" in retry["symbols"] and "SPAMD_CACHED" not in first["symbols"]
    assert spamd_scans(spamd, raw) == 1


def test_other_content_or_another_client_is_scanned_again(tiered: Stack, spamd: Spamd) -> None:
    title = "greyme " + uuid.uuid4().hex[:10]
    raw = message(subject=title)
    recipient = f"r{uuid.uuid4().hex[:8]}@example.com"  # a triplet of its own
    assert send(tiered, raw, recipient=recipient) == 451
    changed = raw.replace(b"see you tomorrow", b"see you tomorrow!")
    assert send(tiered, changed, recipient=recipient) == 451  # still within the delay: greylisted again, but scanned
    assert send(tiered, raw, xclient=OTHER_CLIENT, recipient=recipient) == 451  # a new triplet
    logged = rows(tiered, title)
    assert len(logged) == 3 and not any("SPAMD_CACHED" in r["symbols"] for r in logged)
    assert spamd_scans(spamd, raw) == 3  # the same Message-ID in all three


def test_whatif_predicts_the_action_of_a_change_that_makes_the_tiers_skip_spamd(make_stack: Callable[..., Stack], spamd: Spamd, tmp_path: Path) -> None:
    # Raising a weight can put the score before spamd past skip_spamd_above: the milter then skips spamd and
    # loses its points.  whatif kept them and predicted the opposite of what the milter did (review, 36th session).
    rule = '[[rule]]\nname = "SUBJ_TIERED"\nheader = "Subject"\nregex = "tiered"\nscore = {score}\n'
    stack = make_stack(with_sections(NO_CHECKS, {
        "milter": {"workers": 1, "trusted_networks": []},
        "spamd": {"enabled": True, "address": spamd.address, "timeout": 30},
        "learner": {"min_spam": MIN_LEARNED, "min_ham": MIN_LEARNED, "cache_ttl": 1, "skip_spamd_above": 10},
        "actions": {"add_header": 5, "rewrite_subject": 8, "quarantine": 10, "reject": 100},
    }), rules={"tiered.toml": rule.format(score=1.0)})
    for label in ("spam", "ham"):
        folder = tmp_path / label
        folder.mkdir()
        for number, raw in enumerate(synthetic(label, MIN_LEARNED + 2, 1)):
            (folder / f"{number}.eml").write_bytes(raw)
        assert stack.milterd.cli("learn", f"--{label}", str(folder)).returncode == 0

    def spam(title: str) -> bytes:
        [raw] = synthetic("spam", 1, 5, subject_tag=f"{title} ")
        return raw.replace(b"\r\n\r\n", b"\r\n\r\n" + GTUBE.encode() + b"\r\n", 1)

    assert send(stack, spam("tiered-asked")) == 550  # spamd asked (1 + the classifier's < 10): GTUBE's 1,000 points
    [asked] = [r for r in stack.milterd.log_json() if r["subject"].startswith("tiered-asked")]
    assert "SPAMASSASSIN" in asked["symbols"] and {"BAYES_99", "BAYES_999"} & asked["symbols"].keys(), asked["symbols"]
    report = json.loads(stack.milterd.cli("rules", "whatif", "--set", "symbols.SUBJ_TIERED=12", "--json", check=True).stdout)
    assert report["rescored_without_spamd"] == {"reject": 1}
    [change] = report["changes"]
    predicted = change["to"]

    old_workers = set(stack.milterd.workers())
    (stack.milterd.root / "rules" / "tiered.toml").write_text(rule.format(score=12.0))
    stack.milterd.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while (set(stack.milterd.workers()) & old_workers or not stack.milterd.workers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert send(stack, spam("tiered-skipped")) == 250
    [skipped] = [r for r in stack.milterd.log_json() if r["subject"].startswith("tiered-skipped")]
    assert "SPAMD_SKIPPED_CONFIDENT" in skipped["symbols"] and "SPAMASSASSIN" not in skipped["symbols"]
    assert skipped["action"] == predicted == "quarantine"
