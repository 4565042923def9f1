"""Quarantine release planning: a pure decision, before any socket or postsuper."""

from __future__ import annotations

from typing import Any

from milterd.quarantine import ReleasePlan, plan_release


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"mode": "discard", "mta_host": "mx1.test", "queue_id": "4AbC", "recipients": ["bob@example.com", "carol@example.com"]}
    return {**base, **changes}


def test_a_discarded_message_goes_by_smtp_to_its_recipients() -> None:
    assert plan_release(row(), "mx1.test") == ReleasePlan("smtp", ("bob@example.com", "carol@example.com"))


def test_new_recipients_replace_the_original_ones() -> None:
    assert plan_release(row(), "mx1.test", to=["dave@example.com"]) == ReleasePlan("smtp", ("dave@example.com",))


def test_a_held_message_is_released_from_the_hold_queue_on_its_own_host() -> None:
    assert plan_release(row(mode="hold"), "mx1.test") == ReleasePlan("postsuper", ("bob@example.com", "carol@example.com"))


def test_a_held_message_on_another_host_says_where_to_run_postsuper() -> None:
    plan = plan_release(row(mode="hold"), "mx2.test")
    assert plan.method == "postsuper" and "held in Postfix's queue on mx1.test" in plan.error and "postsuper -H 4AbC" in plan.error


def test_smtp_or_new_recipients_send_the_stored_copy_of_a_held_message() -> None:
    assert plan_release(row(mode="hold"), "mx2.test", smtp=True).method == "smtp"
    assert plan_release(row(mode="hold"), "mx2.test", to=["dave@example.com"]) == ReleasePlan("smtp", ("dave@example.com",))


def test_no_recipients_is_refused_before_any_connection() -> None:
    assert plan_release(row(recipients=[]), "mx1.test") == ReleasePlan("smtp", error="no recipients")
