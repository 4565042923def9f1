"""``milterd log`` says what became of a quarantined message: its quarantine id, and whether (and by whom) it was
released, or that its copy is gone; ``--json`` gives the same as a ``quarantine`` object (null for mail never stored).

An administrator asked "why did this mail reach the user after all?" looks in the log: before, a released message
showed there only as "quarantine", with nothing to say it was delivered. SQLite in a temporary file; releases go
through the quarantine fixture's outbox (no mail is sent).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from milterd import cli
from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness import quarantine as quarantine_harness

conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine
outbox = quarantine_harness.outbox

RAW = b"From: a@example.org\r\nSubject: held\r\n\r\nbody\r\n"


def add(quarantine: Quarantine, subject: str, recipients: list[str] | None = None) -> int:
    """Store one quarantined message as the pipeline does (log row and quarantine row, one transaction); its quarantine id."""
    when = utcnow()
    recipients = recipients or ["bob@example.com"]
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="alice@example.org", recipients=recipients, subject=subject, score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "alice@example.org", "recipients": recipients, "subject": subject, "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {"TEST": 13.0}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return int(quarantine.rows(limit=1)[0]["id"])


def log(capsys: Any, conf: Path, *args: str) -> str:
    assert cli.main(["-c", str(conf), "log", *args]) == 0
    return str(capsys.readouterr().out)


def blocks(table: str) -> dict[str, str]:
    """The table's messages: each message line (by its subject, its last column) → the indented lines under it, joined."""
    said: dict[str, str] = {}
    subject = ""
    for line in table.splitlines()[1:]:
        if line.startswith(" "):
            said[subject] += line.strip() + "\n"
        else:
            subject = line.rsplit("  ", 1)[-1].strip()
            said[subject] = ""
    return said


def test_the_log_says_which_quarantined_message_was_released_and_by_whom(conf: Path, quarantine: Quarantine, outbox: Any, capsys: Any) -> None:
    released = add(quarantine, "released one")
    kept = add(quarantine, "kept one")
    deleted = add(quarantine, "deleted one")
    quarantine.store.log_message(MessageRecord(action="accept", time=utcnow(), mta_host="mx.test", queue_id="QOK", sender="x@example.org", recipients=["bob@example.com"], subject="plain", score=0.0))
    assert quarantine.release(released, who="admin@mx.test").ok and outbox.sent == ["bob@example.com"]
    assert quarantine.delete([deleted]) == 1

    said = blocks(log(capsys, conf))
    assert len(said) == 4
    released_text = next(text for subject, text in said.items() if "released one" in subject)
    assert f"quarantine: #{released} (discard), released " in released_text and "by admin@mx.test (1 time(s))" in released_text
    kept_text = next(text for subject, text in said.items() if "kept one" in subject)
    assert f"quarantine: #{kept} (discard), not released" in kept_text
    deleted_text = next(text for subject, text in said.items() if "deleted one" in subject)
    assert "quarantine: no longer stored (deleted or purged)" in deleted_text
    plain_text = next(text for subject, text in said.items() if "plain" in subject)
    assert "quarantine:" not in plain_text

    by_subject = {row["subject"]: row for row in json.loads(log(capsys, conf, "--json"))}
    assert by_subject["released one"]["quarantine"]["id"] == released
    assert by_subject["released one"]["quarantine"]["release"] == "released"
    assert by_subject["released one"]["quarantine"]["released_by"] == "admin@mx.test"
    assert by_subject["released one"]["quarantine"]["release_count"] == 1
    assert by_subject["released one"]["quarantine"]["released_at"].startswith(str(utcnow().year))
    assert by_subject["kept one"]["quarantine"] == {
        "id": kept, "mode": "discard", "released_at": None, "released_by": None, "release_count": 0, "release": None,
    }
    assert by_subject["deleted one"]["quarantine"] is None and by_subject["plain"]["quarantine"] is None


def test_the_quarantine_rows_are_read_with_each_batch_of_log_rows(conf: Path, quarantine: Quarantine) -> None:
    """More log rows than one batch: every quarantined one still finds its copy (ids across batches)."""
    ids = [add(quarantine, f"m{i}") for i in range(7)]
    rows = list(quarantine.store.each_message(batch=3, quarantine=True))
    assert sorted(row["quarantine"]["id"] for row in rows) == sorted(ids)
    assert all(row["quarantine"]["message_log_id"] == row["id"] for row in rows)
    assert "quarantine" not in next(quarantine.store.each_message())  # only when asked: one query less


class PartlyOutbox:
    """Delivers to every recipient but those in *refuse* (550 5.1.1), as a re-injection smtpd would."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse

    def send(self, target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        b"".join(message)
        delivered = {r: "250 2.0.0 Ok: queued as 4QID" for r in recipients if r not in self.refuse}
        return delivered, {r: "550 5.1.1 no such user" for r in recipients if r in self.refuse}


def test_a_partial_release_reads_as_partial_in_list_show_log_and_digest(conf: Path, quarantine: Quarantine, capsys: Any, monkeypatch: Any) -> None:
    """Released to two of three recipients: before, list showed the release date, show headed it "released … (1 time(s))"
    over an attempt labelled FAILED, and digests said "released", with no sign that one recipient never got it."""
    when = utcnow()
    row_id = add(quarantine, "partly", ["bob@example.com", "gone@example.com", "carol@example.com"])
    monkeypatch.setattr(quarantine_module.reinject, "send", PartlyOutbox({"gone@example.com"}).send)
    report = quarantine.release(row_id, who="admin@mx.test")
    assert report.partial and set(report.delivered) == {"bob@example.com", "carol@example.com"}

    assert cli.main(["-c", str(conf), "quarantine", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()[1]
    assert " partly " in listed and f"{when:%Y-%m-%d}" in listed  # the time it was quarantined, not a release date
    assert cli.main(["-c", str(conf), "quarantine", "show", str(row_id)]) == 0
    shown = capsys.readouterr().out
    assert "(1 time(s)); 1 recipient(s) refused it (release --force --to ADDR to try them again)" in shown
    assert ": PARTLY DELIVERED" in shown and "FAILED" not in shown
    assert "<gone@example.com>: 550 5.1.1 no such user" in shown
    [logged] = [text for subject, text in blocks(log(capsys, conf)).items() if subject.endswith(" partly")]
    assert "1 recipient(s) refused it" in logged
    digest = quarantine_module.format_digest(quarantine.rows(), quarantine.config, when - dt.timedelta(days=1), utcnow(), total=1, reasons=[])
    assert "by admin@mx.test (1 recipient(s) refused it)" in digest

    # Sent again to one who had it: still partial (review: it read as whole, the claim's attempt having no refusal).
    monkeypatch.setattr(quarantine_module.reinject, "send", PartlyOutbox(set()).send)
    assert quarantine.release(row_id, who="admin@mx.test", force=True, to=["bob@example.com"]).ok
    assert cli.main(["-c", str(conf), "quarantine", "list"]) == 0
    assert " partly " in capsys.readouterr().out.splitlines()[1]
    assert "; 1 recipient(s) refused it" in quarantine_module.claim_text(quarantine.get(row_id))

    # The one refused released: no longer partial.
    assert quarantine.release(row_id, who="admin@mx.test", force=True, to=["gone@example.com"]).ok
    assert cli.main(["-c", str(conf), "quarantine", "list"]) == 0
    assert " partly " not in capsys.readouterr().out.splitlines()[1]


def released_row(recipients: list[str], *attempts: quarantine_module.ReleaseReport) -> dict[str, Any]:
    """A row claimed by the last of *attempts* (each recorded as a release records it)."""
    when = utcnow()
    history = [report.as_json("admin", when - dt.timedelta(seconds=len(attempts) - i)) for i, report in enumerate(attempts)]
    claimed = when - dt.timedelta(seconds=1)
    return {"recipients": recipients, "released_at": claimed, "released_by": "admin", "release_count": 1, "release_result": history}


def test_a_refused_address_given_with_to_is_not_a_recipient_left_out() -> None:
    # --to bobb@ (a typo) refused, then the message released to its recipients: nobody is left out (review).
    typo = quarantine_module.ReleaseReport(1, refused={"bobb@example.com": "550 5.1.1 no such user"})
    whole = quarantine_module.ReleaseReport(1, delivered={"bob@example.com": "250 ok", "carol@example.com": "250 ok"})
    assert quarantine_module.claim_refusals(released_row(["bob@example.com", "carol@example.com"], typo, whole)) == 0


def test_recipients_named_in_one_attempt_and_counted_in_another_are_counted_once() -> None:
    # 25 recipients: r21–r25 refused by name first, then the release refused all 25 (20 named, 5 only counted) and
    # delivered to d: 25 left out, not 30 (review).
    recipients = [f"r{i}@example.com" for i in range(1, 26)]
    first = quarantine_module.ReleaseReport(1, refused={r: "550 no" for r in recipients[20:]})
    claim = quarantine_module.ReleaseReport(1, delivered={"d@example.com": "250 ok"}, refused={r: "550 no" for r in recipients})
    assert len(claim.as_json("admin", utcnow())["refused"]) < 25  # the record names only some of one reply
    assert quarantine_module.claim_refusals(released_row([*recipients, "d@example.com"], first, claim)) == 25
