"""The fault suite's reconciliation: every message lands in exactly one bucket."""

from __future__ import annotations

from tests.harness.load import SendResult, load_id, reconcile, tagged_message


def ok(tag: str, qid: str) -> SendResult:
    return SendResult(tag, 250, f"2.0.0 Ok: queued as {qid}", qid)


def test_delivered_once_and_refusals() -> None:
    results = [ok("a", "Q1"), ok("b", "Q2"), SendResult("c", 451, "4.7.1 try again"), SendResult("d", 550, "5.7.1 spam"), SendResult("e", 0, "data: broken pipe")]
    out = reconcile(results, delivered=["a", "b"], logged_queue_ids=["Q1", "Q2", "Q3"])
    assert (out.delivered_once, out.refused_4xx, out.refused_5xx, out.lost, out.duplicated, out.unlogged) == (2, 2, 1, 0, 0, 0)
    assert out.no_answer == 1 and out.ok and out.total == 5


def test_lost_duplicated_unlogged() -> None:
    results = [ok("a", "Q1"), ok("b", "Q2"), ok("c", "Q3"), SendResult("d", 451, "4.7.1 try again")]
    out = reconcile(results, delivered=["b", "b", "c", "d"], logged_queue_ids=["Q1", "Q2"])
    assert out.lost == 1  # a: accepted, never delivered
    assert out.duplicated == 2  # b twice; d refused yet delivered (the client will send it again)
    assert out.unlogged == 1  # c: no log row
    assert not out.ok
    assert len(out.problems) == 4


def test_discarded_on_purpose_is_not_lost() -> None:
    out = reconcile([ok("a", "Q1")], delivered=[], logged_queue_ids=["Q1"], discarded_queue_ids=["Q1"])
    assert out.delivered_once == 1 and out.ok


def test_tagged_message_round_trip() -> None:
    data = tagged_message("x-000001")
    assert load_id(data) == "x-000001"
    assert load_id(b"Subject: none\r\n\r\nX-Load-Id: body-only\r\n") == ""
