"""Review 19: values on the command line and in ``[database] url`` that made a CLI command end in a
Python traceback.  Each is now refused in one line naming the option, file or URL and why: an
unbounded ``--limit`` or ``--jobs``, a text filter that is not UTF-8, a FIFO among the messages a
scratch model learns, a ``[database] url`` that does not parse or names a file too long, a pid file
that is no regular file or holds no pid, and ``db upgrade``'s multi-line, unredacted errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

import milterd.store
from milterd.cli import main
from milterd.config import ChecksSection, DatabaseSection
from milterd.store import Store, StoreError
from tests.conftest import message
from tests.harness.milterd import NO_RESOLVER

HUGE = "9" * 26
#: A byte of the command line that is not UTF-8, as Python hands it over (a surrogate escape).
NOT_UTF8 = "\udcff"
#: Every check off: a check run here reads nothing but the message.
NO_CHECKS = "\n".join(f"[checks.{name}]\nenabled = false" for name in ChecksSection.model_fields)


def _conf(tmp_path: Path, url: str | None = None, extra: str = "") -> Path:
    path = tmp_path / "milter.conf"
    url = f"sqlite:///{tmp_path / 's.sqlite'}" if url is None else url
    path.write_text(f'[milter]\nhostname = "mx.test"\n[dns]\nnameservers = ["{NO_RESOLVER}"]\n[rules]\ndir = ""\n'
                    f'[database]\nurl = "{url}"\n{extra}')
    return path


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    """A milter.conf whose SQLite store has its schema: a value the parser lets through reaches the database."""
    path = _conf(tmp_path)
    assert main(["db", "upgrade", "-c", str(path)]) == 0
    return path


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The error argparse gives for *argv* (exit status 2), its last line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# 1. --limit has an upper bound, for every command that takes one.
@pytest.mark.parametrize("command", [["quarantine", "list"], ["greylist", "list"], ["log"]])
def test_a_limit_too_large_is_refused_by_the_parser(conf: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    line = _refused(capsys, [*command, "-c", str(conf), "--limit", HUGE])
    assert "argument --limit" in line and "too large" in line and "1000000000" in line
    assert main([*command, "-c", str(conf), "--limit", "1000000000"]) == 0


# 2. A text filter that is not UTF-8 is refused by the parser, naming the option.
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["quarantine", "list", "--sender", NOT_UTF8], "--sender"),
        (["quarantine", "list", "--recipient", f"a{NOT_UTF8}@x"], "--recipient"),
        (["quarantine", "list", "--reason", NOT_UTF8], "--reason"),
        (["quarantine", "release", "1", "--by", NOT_UTF8], "--by"),
        (["quarantine", "release", "1", "--to", f"{NOT_UTF8}@x.example"], "--to"),
        (["log", "--sender", NOT_UTF8], "--sender"),
        (["log", "--queue-id", NOT_UTF8], "--queue-id"),
        (["log", "--action", NOT_UTF8], "--action"),
        (["greylist", "list", "--client", NOT_UTF8], "--client"),
        (["greylist", "list", "--sender", NOT_UTF8], "--sender"),
        (["greylist", "list", "--recipient", NOT_UTF8], "--recipient"),
        (["greylist", "purge", "--client", NOT_UTF8], "--client"),
        (["greylist", "purge", "--triplet", "192.0.2.1", NOT_UTF8, "b@x.example"], "--triplet"),
        (["greylist", "whitelist", "add", "sender", f"{NOT_UTF8}@x"], "value"),
        (["greylist", "whitelist", "add", "sender", "a@x", "--comment", NOT_UTF8], "--comment"),
        (["greylist", "whitelist", "remove", "sender", f"{NOT_UTF8}@x"], "value"),
    ],
)
def test_a_text_filter_that_is_not_utf8_is_refused_by_the_parser(conf: Path, capsys: pytest.CaptureFixture[str], argv: list[str], option: str) -> None:
    line = _refused(capsys, [*argv, "-c", str(conf)])
    assert f"argument {option}: not valid UTF-8 (" in line and "\\xff" in line


# 3. --jobs is a number of processes from 1 to 256.
@pytest.mark.parametrize("jobs", [HUGE, "257", "0", "-1"])
def test_learn_jobs_out_of_bounds_is_refused_by_the_parser(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    line = _refused(capsys, ["learn", "-c", str(conf), "--spam", "--jobs", jobs, str(eml)])
    assert "argument --jobs" in line and "1 to 256" in line


# 4. A FIFO among the messages a scratch model learns is said and left out, as milterd learn does.
@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    for kind in ("ham", "spam"):
        folder = tmp_path / kind
        folder.mkdir()
        for n in range(3):
            (folder / f"{n}.eml").write_bytes(message(subject=f"{kind} {n}", body=f"{kind} words number {n}\r\n"))
    os.mkfifo(tmp_path / "spam" / "fifo")
    return tmp_path


@pytest.mark.parametrize("mode", ["train", "cross-validate"])
def test_a_fifo_in_a_training_folder_is_reported_and_skipped(folders: Path, capsys: pytest.CaptureFixture[str], mode: str) -> None:
    path = _conf(folders, extra=f"[learner]\nmin_spam = 1\nmin_ham = 1\n{NO_CHECKS}\n")
    ham, spam = str(folders / "ham"), str(folders / "spam")
    if mode == "train":
        argv = ["--train-ham", ham, "--train-spam", spam, "--ham", ham, "--spam", ham]
    else:
        argv = ["--cross-validate", "2", "--ham", ham, "--spam", spam]
    capsys.readouterr()
    # Cross-validating, the FIFO is among the messages judged too: one that could not be read, status 1.
    assert main(["check", "-c", str(path), "--json", *argv]) == (1 if mode == "cross-validate" else 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Said once (cross-validating learns it in every fold but its own), as milterd learn says it.
    assert err.count("fifo: not a regular file") == 1, err
    if mode == "train":
        assert "learned 3 spam and 3 ham" in err
    assert main(["db", "upgrade", "-c", str(path)]) == 0
    capsys.readouterr()
    assert main(["learn", "-c", str(path), "--spam", spam]) == 1
    assert "milterd: " + os.path.join(spam, "fifo") + ": not a regular file" in capsys.readouterr().err


def test_a_training_message_gone_before_it_is_learned_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from milterd.commands.check import learn_scratch
    from milterd.config import load_config
    from milterd.milter.offline import sources

    folder = tmp_path / "spam"
    folder.mkdir()
    for n in range(2):
        (folder / f"{n}.eml").write_bytes(message(subject=f"spam {n}"))
    refs = list(sources(folder))
    (folder / "0.eml").unlink()
    config = load_config(_conf(tmp_path, url=f"sqlite:///{tmp_path / 'scratch.sqlite'}"))
    assert learn_scratch(config, [("spam", ref) for ref in refs]).spam == 1
    assert "0.eml: No such file or directory" in capsys.readouterr().err


# 5. A [database] url that does not parse: check says it as the other commands do.
@pytest.mark.parametrize("url", ["x", "", "://", "postgresql://[::1/db"])
def test_check_reports_a_malformed_database_url(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    path = _conf(tmp_path, url=url)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    capsys.readouterr()
    assert main(["check", "-c", str(path), str(eml)]) == 2
    err = _one_line(capsys.readouterr().err)
    # Since the thirtieth session refused as milter.conf is read, with the file and key, by every command alike.
    assert err.rstrip("\n") == f"milterd: {path}: [database] url: {url!r} is not an SQLAlchemy URL (sqlite:///path or postgresql+psycopg://user@host/database)"
    assert main(["log", "-c", str(path)]) == 2
    assert f"{path}: [database] url: {url!r} is not an SQLAlchemy URL" in capsys.readouterr().err


# 6. An SQLite file name too long: the store's error, never an OSError's traceback.
@pytest.fixture()
def long_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / ('a' * 300)}"


@pytest.mark.parametrize(
    "argv",
    [["quarantine", "list"], ["quarantine", "purge", "--older-than", "1d"], ["greylist", "purge"], ["log"], ["db", "version"], ["learn", "--spam", "M"], ["check", "M"]],
)
def test_an_sqlite_file_name_too_long_is_a_store_error(tmp_path: Path, long_url: str, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    path = _conf(tmp_path, url=long_url)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    capsys.readouterr()
    assert main([str(eml) if arg == "M" else arg for arg in [*argv, "-c", str(path)]]) in (1, 2)
    err = _one_line(capsys.readouterr().err)
    assert f"cannot use database {long_url!r}: File name too long" in err


def test_upgrading_a_store_whose_file_name_is_too_long(long_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the service account (serve's first upgrade): root's own guard names the file otherwise.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    store = Store(DatabaseSection(url=long_url))
    try:
        with pytest.raises(StoreError, match="File name too long"):
            store.upgrade()
    finally:
        store.close()


# 7. reload reads a small regular file only, and says in one line why it cannot.
class Blocked(Exception):
    """The pid file's read still waiting (a FIFO opened for reading waits for a writer)."""


@pytest.fixture()
def bounded() -> Iterator[None]:
    def stop(*_args: Any) -> None:
        raise Blocked

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(5)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_reload_refuses_a_pid_file_that_is_no_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], bounded: None) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/null"):
        assert main(["reload", "--pid-file", path]) == 1
        assert _one_line(capsys.readouterr().err) == f"milterd: cannot signal the daemon from {path}: not a regular file\n"


def test_reload_reads_a_few_bytes_and_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid_file = tmp_path / "pid"
    pid_file.write_text("".join(f"line {n}\n" for n in range(20000)))
    assert main(["reload", "--pid-file", str(pid_file)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err == f"milterd: cannot signal the daemon from {pid_file}: it holds no pid\n"


# 8. db upgrade's errors: one line, the password hidden, without SQLAlchemy's SQL or link.
def test_db_upgrade_of_a_database_that_does_not_answer_says_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _conf(tmp_path, url="postgresql://milterd:S3cretPassw0rd@127.0.0.1:1/milterd")  # nobody listens on port 1
    assert main(["db", "upgrade", "-c", str(path)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("milterd: cannot upgrade the schema of postgresql://milterd:***@127.0.0.1:1/milterd: OperationalError: ")
    assert "sqlalche.me" not in err and "S3cretPassw0rd" not in err


def test_db_upgrade_hides_the_password_the_driver_quotes(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = _conf(tmp_path, url="postgresql://milterd:S3cretPassw0rd@db.example.org/milterd")
    monkeypatch.setattr(milterd.store, "make_engine", lambda *_args: create_engine("sqlite://"))

    def refused(_connection: Any) -> None:
        raise OperationalError("SELECT pg_advisory_xact_lock(1)", {}, Exception('password "S3cretPassw0rd" refused\nHINT: ask the DBA'))

    monkeypatch.setattr(milterd.store, "_lock_for_upgrade", refused)
    assert main(["db", "upgrade", "-c", str(path)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err == ('milterd: cannot upgrade the schema of postgresql://milterd:***@db.example.org/milterd: '
                   'OperationalError: password "***" refused HINT: ask the DBA\n')


def test_a_url_that_does_not_parse_quotes_no_part_of_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A raw "@" and ":" in the password: the parser's error quoted its rest ('w0rdXYZ@127.0.0.1', third review).
    path = _conf(tmp_path, url="postgresql://admin:S3cret@Pass:w0rdXYZ@127.0.0.1/db")
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    capsys.readouterr()
    assert main(["check", "-c", str(path), str(eml)]) == 2
    assert main(["db", "upgrade", "-c", str(path)]) == 2  # refused at load since 9ca397e, naming the key
    err = capsys.readouterr().err
    assert "w0rd" not in err and "S3cret" not in err and "Pass" not in err, err
    assert err.count("[database] url: the password holds an \"@\": percent-encode it (%40)") == 2, err
    # One that does not parse is refused at load too since the thirtieth session, quoting nothing of it.
    path = _conf(tmp_path, url="postgresql://admin:S3cret@127.0.0.1:w0rdXYZ/db")
    assert main(["db", "upgrade", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "S3cret" not in err and "w0rd" not in err and "[database] url: is not an SQLAlchemy URL" in err, err


def test_a_raw_at_sign_in_the_password_is_refused_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SQLAlchemy read "Passw0rdXYZ@127.0.0.1" as the host, and the driver's errors quoted it (fourth review).
    path = _conf(tmp_path, url="postgresql://milterd:S3cret@Passw0rdXYZ@127.0.0.1:1/db")
    capsys.readouterr()
    assert main(["db", "upgrade", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[database] url: the password holds an \"@\": percent-encode it (%40)" in err and "Passw0rd" not in err and "S3cret" not in err, err


def test_a_url_that_parses_keeps_the_drivers_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The old postgres:// scheme: "does not parse (percent-encode …)" sent the admin to a password that was fine.
    path = _conf(tmp_path, url="postgres://u:secret@127.0.0.1:1/db")
    capsys.readouterr()
    # Since the thirtieth session refused as milter.conf is read (exit 2, the file and key named), never the password.
    assert main(["db", "upgrade", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[database] url: SQLAlchemy has no dialect 'postgres'" in err and "secret" not in err, err


def test_a_model_under_the_home_directory_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.store.learner import model_may_exist

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.sqlite").write_bytes(b"")
    assert model_may_exist("sqlite:///~/m.sqlite") and not model_may_exist("sqlite:///~/none.sqlite")
