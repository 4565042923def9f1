"""doctor's database connection budget: the pools' total against the server's max_connections."""

from __future__ import annotations

from milterd.config import Config
from milterd.diagnostics import connection_budget, judge_connections, probe_connections


def test_budget_counts_every_worker_the_supervisor_and_a_reload() -> None:
    assert connection_budget(16, 2) == (34, 50)  # 16 × 2 + 2, and one more worker while a reload runs
    assert connection_budget(1, 1) == (3, 4)


def test_defaults_fit_a_stock_server() -> None:
    finding = judge_connections(16, 2, 100, 3)
    assert finding.status == "ok", finding
    assert "up to 34 connections" in finding.detail and "50 during a reload" in finding.detail and "allows 97" in finding.detail


def test_more_than_the_safe_share_warns() -> None:
    finding = judge_connections(16, 4, 100, 3)  # 66 serving, 82 at a reload: over 80 % of 97
    assert finding.status == "warn" and "pool_size" in finding.detail


def test_more_than_the_server_allows_fails() -> None:
    finding = judge_connections(32, 4, 100, 3)  # 162 at a reload
    assert finding.status == "fail" and "max_connections" in finding.detail



def test_a_database_that_does_not_answer_is_one_line() -> None:
    # Was: the driver's multi-line error with its "Background on this error" link, unlike the other findings.
    config = Config().with_changes({"database.url": "postgresql+psycopg://milterd@127.0.0.1:9/milterd"})
    [finding] = probe_connections(config)
    assert finding.status == "fail" and "\n" not in finding.detail and "sqlalche.me" not in finding.detail, finding
    assert finding.detail.startswith("StoreError: the database does not answer: "), finding
