"""Greylisting's ``expire`` and the administrator's commands (review): an ``expire``
shorter than the renewal cadence (0 included) is refused at start, 0 means "at once"
in the store as in the check, and ``milterd greylist list|stats|purge --dry-run``
show expired triplets as expired, count in SQL and strip ``<>`` from a recipient."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import insert

from milterd import greylist as gl
from milterd.cli import main
from milterd.config import Config, ConfigError, DatabaseSection, GreylistSection
from milterd.services import build
from milterd.store import Store, schema, utcnow

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
NETWORK = "192.0.2.0/24"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 's.sqlite'}"))
    store.upgrade()
    yield store
    store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(f'[milter]\nhostname = "mx.test"\n[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n')
    return path


def triplet_row(recipient: str, expires_in: float, passed: bool = False, network: str = NETWORK) -> dict[str, object]:
    now = utcnow()
    return {"network": network, "sender": "a@example.org", "recipient": recipient, "first_seen": now, "last_seen": now,
            "passed_at": now if passed else None, "expires_at": now + dt.timedelta(seconds=expires_in)}


def seed(store: Store, rows: list[dict[str, object]]) -> None:
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist), rows)


# --- 1. an expire shorter than the renewal cadence --------------------------------------
@pytest.mark.parametrize("expire", [0.0, 1800.0, 5400.0])
def test_an_expire_below_twice_the_renewal_interval_is_refused_at_start(tmp_path: Path, expire: float) -> None:
    # Renewals are written at most hourly: with expire = 30 min a triplet used every 5 minutes
    # expired after 35 minutes and was greylisted again; 0 forgot every pass at once.
    config = Config().with_changes({"database.url": f"sqlite:///{tmp_path / 's.sqlite'}", "greylist.enabled": True, "greylist.expire": expire})
    with pytest.raises(ConfigError) as caught:
        build(config)
    assert caught.value.key == "[greylist] expire"
    assert "at least 7200s" in caught.value.reason and f"({expire:g}s)" in caught.value.reason


def test_an_expire_of_two_hours_starts(tmp_path: Path) -> None:
    config = Config().with_changes({"database.url": f"sqlite:///{tmp_path / 's.sqlite'}", "greylist.enabled": True, "greylist.expire": 7200})
    services = build(config)
    assert any(check.name == "greylist" for check in services.checks)
    services.close()


# --- 2. expire = 0 means "at once" everywhere ---------------------------------------------
def test_stats_with_expire_zero_count_no_auto_whitelisted_client(store: Store) -> None:
    # The check (auto_whitelisted) honours no entry with expire = 0; stats counted them all.
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist_clients).values(network=NETWORK, passes=9, last_seen=at(-60)))
    config = GreylistSection(expire=0, auto_whitelist_after=5)
    assert not gl.auto_whitelisted(9, at(-60), at(0), config)
    assert store.greylist.stats(5, now=at(0), expire=0)["auto_whitelisted_clients"] == 0
    assert store.greylist.stats(5, now=at(0))["auto_whitelisted_clients"] == 1  # no expire given: no limit


def test_a_count_with_client_expire_zero_starts_from_zero(store: Store) -> None:
    # client_expire = 0 read as "never" kept adding to a count the check and the purge treat as stale.
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist_clients).values(network=NETWORK, passes=4, last_seen=at(-7200)))
    write = gl.Write(gl.Triplet(NETWORK, "a@example.org", "b@example.com"), "pass", at(0), at(86400), count_client=True, client_expire=0)
    store.greylist.record([write], now=at(0))
    assert store.greylist.client_state(NETWORK) == (1, at(0))


# --- 3. the commands ----------------------------------------------------------------------
def test_list_shows_an_expired_triplet_as_expired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path)
    store = Store(load_database(path))
    store.upgrade()
    seed(store, [triplet_row("live@example.com", 3600), triplet_row("gone@example.com", -60),
                 triplet_row("old@example.com", -60, passed=True), triplet_row("known@example.com", 3600, passed=True)])
    store.close()
    status, out, err = run(capsys, "greylist", "list", "-c", str(path))
    assert status == 0, err
    states = {line.split()[2]: line.split()[3] for line in out.splitlines()[1:]}
    assert states == {"live@example.com": "waiting", "gone@example.com": "expired", "old@example.com": "expired", "known@example.com": "passed"}
    status, out, err = run(capsys, "greylist", "list", "--waiting", "--json", "-c", str(path))
    assert status == 0, err
    assert [(r["recipient"], r["state"]) for r in json_rows(out)] == [("live@example.com", "waiting")]
    status, out, err = run(capsys, "greylist", "list", "--passed", "--json", "-c", str(path))
    assert [(r["recipient"], r["state"]) for r in json_rows(out)] == [("known@example.com", "passed")]


def test_stats_split_the_triplets_into_passed_waiting_and_expired(store: Store) -> None:
    seed(store, [triplet_row("live@example.com", 3600), triplet_row("gone@example.com", -60),
                 triplet_row("old@example.com", -60, passed=True), triplet_row("known@example.com", 3600, passed=True)])
    counts = store.greylist.stats(5)
    assert (counts["triplets"], counts["passed"], counts["waiting"], counts["expired"]) == (4, 1, 1, 2)


def test_purge_dry_run_names_a_bounded_number_and_counts_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = conf(tmp_path)
    store = Store(load_database(path))
    store.upgrade()
    seed(store, [triplet_row(f"r{i}@example.com", -60) for i in range(12)] + [triplet_row("live@example.com", 3600)])
    monkeypatch.setattr("milterd.commands.greylist.DRY_RUN_SHOWN", 5, raising=False)
    status, out, err = run(capsys, "greylist", "purge", "--dry-run", "-c", str(path))
    assert status == 0, err
    assert sum(line.startswith("would purge 192.0.2.0/24") for line in out.splitlines()) == 5
    assert "… and 7 more" in out and "would purge 12 expired triplet(s)" in out and "live@example.com" not in out
    assert "the clients unseen for 35d (dry run" in out  # not "3.024e+06s"
    status, out, err = run(capsys, "greylist", "purge", "--client", NETWORK, "--dry-run", "-c", str(path))
    assert status == 0, err
    assert sum(line.startswith("would delete 192.0.2.0/24") for line in out.splitlines()) == 5
    assert "… and 8 more" in out and "would delete 13 triplet(s)" in out
    assert store.greylist.count_triplets() == 13  # nothing deleted
    store.close()


def test_list_recipient_strips_angle_brackets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path)
    store = Store(load_database(path))
    store.upgrade()
    seed(store, [triplet_row("b@example.com", 3600), triplet_row("c@example.com", 3600)])
    store.close()
    status, out, err = run(capsys, "greylist", "list", "--recipient", "<b@example.com>", "--json", "-c", str(path))
    assert status == 0, err
    assert [r["recipient"] for r in json_rows(out)] == ["b@example.com"]


def load_database(path: Path) -> DatabaseSection:
    return Config().with_changes({"database.url": f"sqlite:///{path.parent / 's.sqlite'}"}).database


def json_rows(out: str) -> list[dict[str, object]]:
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows
