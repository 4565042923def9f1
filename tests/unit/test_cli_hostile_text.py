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
from milterd.config import load_config
from milterd.store import Store, schema, utcnow
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
