"""[milter] spam_lovers: a message whose every recipient takes spam (an abuse mailbox) is not scored; its checks
still run and are logged, and what a check forces (a banned attachment) still applies."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import pytest

from milterd.checks.bayes import autolearn_allowed
from milterd.config import ConfigError, load_config
from milterd.message.model import Action, Verdict
from milterd.message.pipeline import Pipeline
from milterd.message.policy import wants_spam
from milterd.milter.offline import CheckedMessage, Client, check_message
from milterd.services import build
from milterd.tuning import unscored, whatif
from tests.conftest import message

LOVERS = '["abuse@", "@reports.example.net", "Phish@Example.org"]'
RULE = "[[rule]]\nname = \"SUBJ_LOTTERY\"\nheader = \"Subject\"\nregex = '(?i)lottery'\nscore = 30\n"


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(RULE)
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[milter]\nspam_lovers = {LOVERS}\n[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    pipe = Pipeline(build(load_config(conf)), keep_log=False)
    yield pipe
    pipe.shutdown()


def judged(pipeline: Pipeline, *recipients: str, raw: bytes | None = None) -> CheckedMessage:
    result = check_message(pipeline, raw or message(subject="You won the lottery"), Client(addr="192.0.2.10", sender="x@example.com", recipients=list(recipients)))
    assert not result.error, result.error
    return result


def test_a_message_to_spam_lovers_only_is_logged_but_not_scored(pipeline: Pipeline) -> None:
    for recipients in (["abuse@example.com"], ["ABUSE@other.example"], ["phish@example.org", "a@reports.example.net"]):
        result = judged(pipeline, *recipients)
        assert (result.action, result.scored, result.spam_status) == (Action.ACCEPT, False, ""), recipients
        assert "SUBJ_LOTTERY" in result.symbols  # its checks ran: the log says what it would have scored


def test_one_other_recipient_and_near_misses_are_scored_as_any_message(pipeline: Pipeline) -> None:
    for recipients in (["abuse@example.com", "bob@example.com"], ["bob@example.com"], ["a@sub.reports.example.net"], ["abuse-x@example.com"],
                       ["phish@example.com"]):
        result = judged(pipeline, *recipients)
        assert (result.action, result.scored) == (Action.REJECT, True), recipients


def test_what_a_check_forces_still_applies_to_spam_lovers(pipeline: Pipeline) -> None:
    exe = base64.b64encode(b"MZ\x90\x00" + b"\x00" * 300).decode()
    raw = (f"From: x@example.com\r\nTo: abuse@example.com\r\nSubject: report\r\nDate: Sat, 5 Dec 2026 10:00:00 +0000\r\n"
           f"Message-ID: <r@example.com>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsample\r\n"
           f"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=sample.exe\r\n"
           f"Content-Transfer-Encoding: base64\r\n\r\n{exe}\r\n--b--\r\n").encode()
    result = judged(pipeline, "abuse@example.com", raw=raw)
    assert result.action == Action.REJECT and "ATTACH_BANNED" in result.symbols and not result.scored


def test_wants_spam_matches_an_address_a_domain_or_a_local_part() -> None:
    lovers = ["abuse@", "@reports.example.net", "phish@example.org"]
    assert wants_spam(["Abuse@example.com"], lovers)
    assert wants_spam(["abuse"], lovers)  # RCPT TO:<abuse>, without a domain
    assert wants_spam(["x@reports.example.net", "PHISH@EXAMPLE.ORG"], lovers)
    assert not wants_spam([], lovers)  # no recipient: nobody asked for spam
    assert not wants_spam(["abuse@example.com"], [])
    assert not wants_spam(["abuse@example.com", "bob@example.com"], lovers)
    assert not wants_spam(["phish@example.org.evil.example"], lovers)


def test_a_local_part_that_routes_elsewhere_never_matches() -> None:
    # Postfix delivers these to bob@example.com once reports.example.net is its own domain (found by review).
    lovers = ["@reports.example.net", "abuse@"]
    for recipient in ("bob%example.com@reports.example.net", '"bob@example.com"@reports.example.net', "example.com!bob@reports.example.net",
                      "bob:x@reports.example.net", "abuse%bob@example.com", "bob!abuse"):
        assert not wants_spam([recipient], lovers), recipient
    assert wants_spam(["abuse@example.com."], ["abuse@example.com"])  # the trailing dot Postfix drops


def test_an_address_extension_matches_without_it_once_the_delimiter_is_set() -> None:
    lovers = ["abuse@", "phish@example.org", "@reports.example.net"]
    for recipient in ("abuse+spamcop@example.com", "Phish+x@example.org", "abuse-y+z@example.com", "abuse+x"):
        assert not wants_spam([recipient], lovers), recipient  # no delimiter set: as Postfix without recipient_delimiter
        assert wants_spam([recipient], lovers, "+-"), recipient
    assert wants_spam(["abuse+x@example.com"], ["abuse+x@"])  # listed as it is
    for recipient in ("abuser+x@example.com", "+abuse@example.com", "phish+x@example.com", "abuse%bob+x@example.com"):
        assert not wants_spam([recipient], lovers, "+"), recipient
    assert not wants_spam(["owner-abuse@example.com"], ["owner@"], "-")  # Postfix never splits owner-x
    assert not wants_spam(["double-bounce@example.org"], ["double@"], "-")  # nor its double-bounce address (review)
    assert not wants_spam(["abuse+x@example.com", "bob+abuse@example.com"], lovers, "+")


def test_the_pipeline_takes_the_delimiter_of_the_local_domains_section(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[milter]\nspam_lovers = ["abuse@"]\n[checks.local_domains]\nrecipient_delimiter = "+"\n'
                    f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text(RULE)
    pipe = Pipeline(build(load_config(conf)), keep_log=False)
    try:
        assert (judged(pipe, "Abuse+SpamCop@example.com").scored, judged(pipe, "abuse-x@example.com").scored) == (False, True)
    finally:
        pipe.shutdown()


def test_tuning_sees_such_a_row_as_unscored(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text('[milter]\nspam_lovers = ["abuse@"]\n')
    milter = load_config(conf).milter
    assert unscored({"client_addr": "192.0.2.10", "recipients": ["abuse@example.com"]}, milter)
    assert not unscored({"client_addr": "192.0.2.10", "recipients": ["abuse@example.com", "bob@example.com"]}, milter)
    extended = {"client_addr": "192.0.2.10", "recipients": ["abuse+x@example.com"], "action": "accept", "reason": "", "symbols": {}, "score": 0.0}
    assert not unscored(extended, milter) and unscored(extended, milter, "+")
    # rules whatif keeps the action of such a row: the thresholds never applied to it
    logged = {**extended, "symbols": {"SUBJ_LOTTERY": 30.0}, "score": 30.0}
    assert whatif([logged], {}, load_config(conf).actions, milter, delimiters="+").changed == 0
    assert whatif([logged], {}, load_config(conf).actions, milter).changed == 1


def test_a_row_scored_when_logged_and_unscored_now_takes_no_threshold(tmp_path: Path) -> None:
    # Rejected by its score, then abuse@ became a spam lover: whatif predicted quarantine at reject = 17, the
    # milter accepts it (no threshold applies); counted as a change the settings made, not the one asked (review).
    conf = tmp_path / "milter.conf"
    conf.write_text('[milter]\nspam_lovers = ["abuse@"]\n')
    config = load_config(conf)
    row = {"client_addr": "192.0.2.10", "recipients": ["abuse@example.com"], "action": "reject", "reason": "score 16.0 >= 15",
           "symbols": {"SUBJ_LOTTERY": 16.0}, "score": 16.0}
    asked = config.with_changes({"actions.reject": 17.0}).actions
    report = whatif([row], {}, asked, config.milter, current=config.actions)
    assert dict(report.changes) == {("reject", "accept"): 1} and dict(report.unasked) == {("reject", "accept"): 1}
    # A hit the row cannot show may have forced an action (a DMARC quarantine, a check's tempfail): kept as logged.
    forced = {**row, "symbols": {"DMARC_FAIL_QUARANTINE": 2.0, "URIBL_X": 14.0}}
    assert whatif([forced], {}, asked, config.milter).kept_may_force == {"reject": 1}
    # Without a client address the row was still scored (a client of unknown family): re-scored as before.
    assert dict(whatif([{**row, "client_addr": "", "recipients": ["bob@example.com"]}], {}, asked, config.milter).changes) == {("reject", "quarantine"): 1}


def test_an_unscored_message_is_never_auto_learned() -> None:
    verdict = Verdict(action=Action.ACCEPT, score=30.0, symbols={"SUBJ_LOTTERY": 30.0}, details={}, reason="", reply=None, required=5.0, scored=False)
    assert not autolearn_allowed("spam", verdict)
    assert autolearn_allowed("spam", Verdict(action=Action.REJECT, score=30.0, symbols={"SUBJ_LOTTERY": 30.0}, details={}, reason="", reply=None, required=5.0), spamd=False)


@pytest.mark.parametrize("entry", ["abuse", "@", "a@b@c", "<abuse@example.org>", "ab use@", "a%b@", "@.example.org", "abuse@example.org.", "@b\u00fccher.example"])
def test_an_entry_that_is_no_address_is_refused_at_start(tmp_path: Path, entry: str) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f"[milter]\nspam_lovers = [{entry!r}]\n".replace("'", '"'))
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert (info.value.file, info.value.key) == (str(conf), "[milter] spam_lovers")
    assert "is not an address, @domain or local part@" in info.value.reason or "without a leading or trailing dot" in info.value.reason
