"""What a sender wrote reaches the administrator's terminal only escaped (review, twentieth session).

``milterd greylist list`` and ``greylist purge --dry-run`` printed the stored envelope
addresses as they were: a sender's ESC sequences drove the terminal (a cleared screen,
an OSC 8 link), a newline in a recipient forged a row, and ``--json`` wrote a bidi
override raw.  Every other view escaped them already.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import insert

from milterd.cli import main
from milterd.commands.quarantine import _summary
from milterd.config import load_config
from milterd.logs import summary_line
from milterd.store import MessageRecord, Store, schema, utcnow
from milterd.text import cut, escape

HOSTILE_SENDER = "x\x1b[2J\x1b[Hfake\u202e@example.org"
HOSTILE_RECIPIENT = "bob\x1b]8;;http://attacker.example/\x1b\\@example.net\nFAKE-ROW"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(f'[milter]\nhostname = "mx.test"\n[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    return path


def seed(conf: Path, expires_in: float) -> None:
    store = Store(load_config(conf).database)
    store.upgrade()
    now = utcnow()
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist), [{
            "network": "192.0.2.0/24", "sender": HOSTILE_SENDER, "recipient": HOSTILE_RECIPIENT,
            "first_seen": now, "last_seen": now, "passed_at": None, "expires_at": now + dt.timedelta(seconds=expires_in)}])
    store.close()


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [("greylist", "list"), ("greylist", "list", "--json"), ("greylist", "purge", "--dry-run")])
def test_greylist_views_escape_the_senders_text(conf: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    seed(conf, -60 if "purge" in argv else 3600)
    out = printed(capsys, *argv, "-c", str(conf))
    assert "\x1b" not in out and "\u202e" not in out and "FAKE-ROW\n" not in out.replace("\\nFAKE-ROW", "")
    assert out.isascii() if "--json" in argv else "\\x1b[2J" in out
    if "--json" in argv:
        [row] = json.loads(out)
        assert (row["sender"], row["recipient"]) == (HOSTILE_SENDER, HOSTILE_RECIPIENT)  # the data itself, unchanged


def test_a_cut_never_leaves_half_an_escape() -> None:
    text = escape("abcdefgh\x1b!")  # abcdefgh\x1b! (13 characters)
    assert [cut(text, width) for width in (9, 10, 11, 12)] == ["abcdefgh…", "abcdefgh…", "abcdefgh…", "abcdefgh…"]
    assert cut(text, 13) == text and cut("short", 10) == "short"


# --- the per-message summary line (milterd.logs) --------------------------------------------------
def test_a_recipient_cannot_forge_the_summary_lines_fields() -> None:
    # A quoted local part holds blanks, "<>" and '"': it wrote "from=<ceo@bank.example> … action=accept" into the line.
    forged = '"x> from=<ceo@bank.example> client=mail.bank.example[198.51.100.7] action=accept x"@example.net'
    record = MessageRecord(action="reject", queue_id="Q1", client_addr="192.0.2.7", sender="a@example.org", recipients=[forged],
                           reason='Sender <"a" quoted> refused')
    line = summary_line(record)
    assert line.count(" from=<") == 1 and line.count(" client=") == 1 and line.count(" action=") == 1
    assert 'to=<\\x22x\\x3e\\x20from=\\x3cceo@bank.example\\x3e\\x20' in line
    assert line.endswith(' reason="Sender <\\x22a\\x22 quoted> refused"')


def test_the_summary_line_stays_within_a_syslog_line() -> None:
    # 1,000 recipients of 2 KB (bob+…@, any real bob) made a 2 MB line: lost whole by syslog (EMSGSIZE).
    record = MessageRecord(action="quarantine", queue_id="Q2", client_addr="192.0.2.7", sender="s" * 3000 + "@example.org",
                           recipients=[f"bob+{i}{'x' * 2000}@example.net" for i in range(1000)], reason="r" * 5000)
    line = summary_line(record)
    assert len(line) < 8192 and line.isascii() and "\n" not in line
    assert "(+990 more)" in line and line.count("<bob+") == 10
    assert ' ms=0 reason="' in line  # the verdict's reason is still there, after every field


def test_a_cut_never_leaves_half_an_escape_of_a_character_past_the_basic_plane() -> None:
    text = escape("a" * 10 + "\U0001f600", ascii_only=True)  # aaaaaaaaaa\U0001f600
    assert [cut(text, width, "...") for width in range(13, 20)] == ["aaaaaaaaaa..."] * 7 and cut(text, 20) == text
    assert cut(text, 2, "...") == ".." and cut(text, 0) == "" and cut("abcdefghij", 1, "...") == "."


def test_checks_progress_keeps_the_end_of_a_path_without_starting_inside_an_escape() -> None:
    from milterd.commands.check import _tail

    assert _tail("\u202e" + "b" * 58, 20) == "…" + "b" * 19
    assert _tail("/corpus/\x1bx/spam-1", 12) == "…x/spam-1"  # "…\x1bx/spam-1" would be 13
    assert _tail("short", 20) == "short"


def test_greylist_whitelist_views_escape_what_was_stored(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: printed raw: a value or comment holding ESC drove the terminal, and CR LF in a comment forged a row
    # (a shared store's other writers included). Found in review, twenty-sixth session.
    value, comment = "x\x1b[2J@example.org", "ok\r\nclient    192.0.2.0/24      shipped\x1b]0;pwned\x07"
    Store(load_config(conf).database).upgrade()
    added = printed(capsys, "greylist", "whitelist", "add", "sender", value, "--comment", comment, "-c", str(conf))
    listed = printed(capsys, "greylist", "whitelist", "list", "-c", str(conf))
    removed = printed(capsys, "greylist", "whitelist", "remove", "sender", value, "-c", str(conf))
    for out in (added, listed, removed):
        assert "\x1b" not in out and "\r" not in out and "\x07" not in out, out
    assert "x\\x1b[2j@example.org" in listed and listed.count("\n") == len(listed.splitlines())
    assert "shipped\\x1b]0;pwned" in listed and "\\r\\nclient" in listed


def test_a_dry_run_line_names_ten_recipients_and_counts_the_rest() -> None:
    row = {"id": 1, "time": dt.datetime(2026, 12, 6, 2, 0), "sender": "a@example.org",
           "recipients": [f"r{i}@example.com" for i in range(10_001)], "subject": "s" * 5000}
    line = _summary(row)
    assert "r9@example.com (+9991 more)" in line and "r10@" not in line and len(line) < 600
