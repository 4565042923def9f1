"""The ``milterd`` command line as a new user meets it (--version as a process: tests/integration/test_cli_process.py): --to, config show,
a store without schema, --dry-run of destructive commands, the release audit trail."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from milterd.cli import main
from milterd.config import load_config
from milterd.store import Store, schema, utcnow
from tests.conftest import message
from tests.harness.postfix import Sink


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def conf(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(f'[milter]\nhostname = "mx.test"\n[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n{extra}')
    return path


def test_check_to_takes_one_address_per_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eml = tmp_path / "one.eml"
    eml.write_bytes(message())
    status, out, err = run(capsys, "check", "-c", str(conf(tmp_path)), "--to", "b@x.example", "--to", "c@x.example", str(eml), "--json")
    assert status == 0, err
    assert len(json.loads(out)["messages"]) == 1


def test_config_show_reads_back_and_hides_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "milter.conf"
    path.write_text(
        '[database]\nurl = "postgresql+psycopg://milterd:s3cret@db.example.org/milterd"\n'
        '[checks.local_domains]\nsender_logins = { "alice@example.org" = ["alice"], "@example.org" = ["admin"] }\n'
        '[actions]\nquarantine = false\n[greylist]\ndelay = "2m"\n'
    )
    status, out, err = run(capsys, "config", "show", "-c", str(path))
    assert status == 0, err
    assert "s3cret" not in out and "milterd:***@db.example.org" in out
    again = tmp_path / "again.conf"
    again.write_text(out.replace("***", "s3cret"))
    assert tomllib.loads(out)["checks"]["local_domains"]["sender_logins"]["@example.org"] == ["admin"]
    shown, original = load_config(again), load_config(path)
    assert shown.model_dump(exclude={"path", "rules"}) == original.model_dump(exclude={"path", "rules"})
    assert shown.rules.dir == "" and not (tmp_path / "rules").exists()  # the default directory, absent: none


def test_config_show_saved_elsewhere_names_the_same_rules_keys_and_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # config show printed "rules" and "example.org.s2026.key" as written: saved as /etc/milterd/milter.conf (review,
    # thirty-sixth session), the local rules were not found (silently: the default directory may be absent).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules").mkdir()
    (tmp_path / "logins").write_text("")
    path = tmp_path / "milter.conf"
    path.write_text('[database]\nurl = "sqlite:///store/milterd.sqlite"\n[checks.arc]\nseal_key_file = "arc.key"\n'
                    '[checks.local_domains]\nsender_login_maps = "logins"\n')
    status, out, err = run(capsys, "config", "show", "-c", str(path))
    assert status == 0, err
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "milter.conf").write_text(out)
    monkeypatch.chdir(elsewhere)
    shown = load_config(elsewhere / "milter.conf")
    assert shown.rules_dir == tmp_path / "rules"
    assert shown.database.url == f"sqlite:///{tmp_path / 'store' / 'milterd.sqlite'}"
    assert shown.checks.arc.seal_key_file == str(tmp_path / "arc.key")
    assert shown.checks.local_domains.sender_login_maps == str(tmp_path / "logins")


@pytest.mark.parametrize(
    "argv",
    [
        ["log"], ["log", "--json"], ["quarantine", "list"], ["quarantine", "purge", "--older-than", "1d"],
        ["greylist", "list"], ["greylist", "stats"], ["greylist", "purge"], ["rules", "stats"],
        ["rules", "whatif", "--set", "actions.reject=3"],
    ],
)
def test_a_store_without_schema_says_run_db_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run(capsys, *argv, "-c", str(conf(tmp_path)))
    assert status == 1
    assert "run `milterd db upgrade`" in err
    assert "SELECT" not in err + out and "Traceback" not in err and "[SQL" not in err
    assert not (tmp_path / "s.sqlite").exists(), "a command that only reads must not create the database"


def test_db_version_on_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path)
    status, _out, err = run(capsys, "db", "version", "-c", str(path))
    assert status != 0 and "no schema" in err and "milterd db upgrade" in err
    assert not (tmp_path / "s.sqlite").exists()
    assert run(capsys, "db", "upgrade", "-c", str(path))[0] == 0
    status, out, _err = run(capsys, "db", "version", "-c", str(path))
    assert status == 0 and "schema at" in out


RAW = b"From: a@example.org\r\nTo: bob@example.com\r\nSubject: QUARANTINE-ME\r\n\r\nbody\r\n"


@pytest.fixture()
def quarantined(tmp_path: Path) -> tuple[Path, list[int]]:
    """Two quarantined messages, 40 days and 1 day old (whole-message rows, as schema 0001 stored them)."""
    path = conf(tmp_path)
    store = Store(load_config(path).database)
    store.upgrade()
    ids = []
    with store.engine.begin() as connection:
        for age in (40, 1):
            row = {
                "time": utcnow() - dt.timedelta(days=age), "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1",
                "client_name": "unknown", "helo": "h", "sender": "alice@example.org", "recipients": ["bob@example.com"],
                "subject": f"QUARANTINE-ME {age}", "score": 13.0, "reason": "score 13.0 >= 12", "symbols": {"TEST": 13.0},
                "size": len(RAW), "mode": "discard", "raw": RAW, "release_count": 0, "learned_ham": False,
            }
            ids.append(int(connection.execute(insert(schema.quarantine).values(**row)).inserted_primary_key[0]))
    store.close()
    return path, ids


def quarantine_count(path: Path) -> int:
    store = Store(load_config(path).database)
    with store.engine.connect() as connection:
        count = int(connection.execute(select(func.count()).select_from(schema.quarantine)).scalar() or 0)
    store.close()
    return count


def test_quarantine_delete_and_purge_dry_run_change_nothing(quarantined: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    path, (old, new) = quarantined
    status, out, _err = run(capsys, "quarantine", "delete", "--dry-run", str(old), str(new), "-c", str(path))
    assert status == 0 and f"would delete {old}:" in out and f"would delete {new}:" in out and "would delete 2" in out
    assert quarantine_count(path) == 2
    status, out, _err = run(capsys, "quarantine", "purge", "--older-than", "30d", "--dry-run", "-c", str(path))
    # Line starts only: a time of day such as 07:52:28 contains "2:" too.
    assert status == 0 and f"would purge {old}:" in out and f"would purge {new}:" not in out and "would purge 1" in out
    assert quarantine_count(path) == 2
    status, out, _err = run(capsys, "quarantine", "purge", "--older-than", "30d", "-c", str(path))
    assert status == 0 and "purged 1" in out and quarantine_count(path) == 1


def test_quarantine_release_to_before_the_ids_and_the_real_user(quarantined: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path, (_old, new) = quarantined
    sink = Sink().start()
    try:
        path.write_text(path.read_text() + f'[quarantine]\nrelease_smtp = "127.0.0.1:{sink.port}"\n')
        monkeypatch.setenv("USER", "mallory")
        monkeypatch.setenv("LOGNAME", "mallory")
        monkeypatch.setenv("SUDO_USER", "mallory")
        status, out, err = run(capsys, "quarantine", "release", "--to", "carol@example.net", str(new), "-c", str(path))
        assert status == 0, err
        assert "<carol@example.net>: released" in out
        status, out, _err = run(capsys, "quarantine", "show", str(new), "-c", str(path))
    finally:
        sink.stop()
    real = pwd.getpwuid(os.getuid()).pw_name
    expected = "mallory" if os.getuid() == 0 else real  # root through sudo: SUDO_USER
    assert f"by {expected}@mx.test" in out


def test_calling_user() -> None:
    from milterd.quarantine import calling_user

    root = pwd.getpwuid(0).pw_name
    assert calling_user({"SUDO_USER": "alice", "USER": "root"}, 0) == "alice"
    assert calling_user({"USER": "mallory", "LOGNAME": "mallory"}, 0) == root
    nobody = pwd.getpwnam("nobody").pw_uid
    assert calling_user({"SUDO_USER": "mallory", "USER": "mallory"}, nobody) == "nobody"


def test_greylist_purge_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conf(tmp_path)
    store = Store(load_config(path).database)
    store.upgrade()
    now = utcnow()
    rows = [
        {"network": "192.0.2.0/24", "sender": "a@example.org", "recipient": "b@example.com", "first_seen": now, "last_seen": now, "expires_at": now + dt.timedelta(days=1)},
        {"network": "198.51.100.0/24", "sender": "c@example.org", "recipient": "d@example.com", "first_seen": now, "last_seen": now, "expires_at": now - dt.timedelta(days=1)},
    ]
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist), rows)

    def count() -> int:
        with store.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(schema.greylist)).scalar() or 0)

    status, out, _err = run(capsys, "greylist", "purge", "--dry-run", "-c", str(path))
    assert status == 0 and "198.51.100.0/24" in out and "192.0.2.0/24" not in out and "would purge 1" in out
    assert count() == 2
    status, out, _err = run(capsys, "greylist", "purge", "--client", "192.0.2.0/24", "--dry-run", "-c", str(path))
    assert status == 0 and "192.0.2.0/24 <a@example.org> <b@example.com>" in out and "would delete 1" in out
    status, out, _err = run(capsys, "greylist", "purge", "--triplet", "192.0.2.0/24", "a@example.org", "b@example.com", "--dry-run", "-c", str(path))
    assert status == 0 and "would delete 1" in out
    assert count() == 2
    assert run(capsys, "greylist", "purge", "-c", str(path))[0] == 0
    assert count() == 1
    store.close()
