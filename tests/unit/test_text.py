"""Escaping, secret redaction (milterd/text.py) and reply shaping (milterd/message/reply.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from milterd.logs import summary_line
from milterd.message.reply import MAX_REPLY_TEXT, Reply, setreply_args
from milterd.store import MessageRecord
from milterd.text import escape, redact, redact_url


def test_escape_makes_controls_visible() -> None:
    assert escape("a\r\nb\tc\x1b[31md\x00") == "a\\r\\nb\\tc\\x1b[31md\\x00"
    assert escape("caf\u00e9 \u2028 \u202e") == "caf\u00e9 \\u2028 \\u202e"
    assert escape("caf\u00e9", ascii_only=True) == "caf\\xe9"
    assert escape(b"\xff\xfe".decode("utf-8", "surrogateescape")) == "\\xff\\xfe"
    assert escape("\x85\x7f") == "\\x85\\x7f"
    assert escape("plain text, 100% ok") == "plain text, 100% ok"


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql+psycopg://milterd:S3cr%40t@db.example.org:5432/milterd") == "postgresql+psycopg://milterd:***@db.example.org:5432/milterd"
    assert redact_url("postgresql+psycopg://milterd@db/milterd") == "postgresql+psycopg://milterd@db/milterd"
    assert redact_url("sqlite:///var/lib/milterd/milterd.sqlite") == "sqlite:///var/lib/milterd/milterd.sqlite"
    assert redact_url("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"


def test_redact_finds_the_password_in_any_text() -> None:
    url = "postgresql+psycopg://milterd:S3cr%40t@db/milterd"
    text = f"cannot use database '{url}': password S3cr@t and S3cr%40t rejected"
    out = redact(text, url)
    assert "S3cr" not in out
    assert "milterd:***@db/milterd" in out


def test_reply_split_escaped_and_percent_doubled() -> None:
    assert setreply_args(Reply("550", "5.7.1", "Virus found: Eicar")) == ("550", "5.7.1", "Virus found: Eicar")
    assert setreply_args(Reply("451", "4.7.1", "Greylisted, 100% sure")) == ("451", "4.7.1", "Greylisted, 100%% sure")
    assert setreply_args(Reply("554", None, "blocked")) == ("554", None, "blocked")
    assert setreply_args(Reply("550", "5.7.23", "<a@b>: explained\r\n250 forged\x1b")) == ("550", "5.7.23", "<a@b>: explained\\r\\n250 forged\\x1b")
    assert setreply_args(Reply("550", "4.7.1", "mismatched class")) == ("550", None, "mismatched class")
    assert setreply_args(Reply("250", "2.0.0", "not a refusal"))[0] == "451"
    assert str(Reply("550", "5.7.1", "Virus found: Eicar")) == "550 5.7.1 Virus found: Eicar" and str(Reply("554", None, "blocked")) == "554 blocked"


def test_long_reply_keeps_its_codes_within_libmilter_limit() -> None:
    code, xcode, text = setreply_args(Reply("554", "5.7.1", "Service unavailable; " + "x" * 2000))
    assert (code, xcode) == ("554", "5.7.1")
    assert len(text.encode()) <= MAX_REPLY_TEXT and text.endswith("...")
    code, xcode, text = setreply_args(Reply("550", "5.7.1", "%" * 2000))
    assert len(text) <= MAX_REPLY_TEXT
    assert (len(text) - len(text.rstrip("%"))) % 2 == 0  # no half of a doubled %
    code, xcode, text = setreply_args(Reply("550", "5.7.1", "\x01" * 1000))
    assert len(text) <= MAX_REPLY_TEXT


def test_summary_line_escapes_outsider_text() -> None:
    record = MessageRecord(
        action="reject", time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), queue_id="4Fh3kT0zZ9z",
        client_addr="192.0.2.1", client_name="evil\r\nmilterd[1]: forged", sender="a\nb@example.org",
        recipients=["c\x1b[2J@example.net"], reason="SPF fail: \r\nforged line", score=20.0,
    )
    line = summary_line(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "client=evil\\r\\nmilterd[1]:\\x20forged[192.0.2.1]" in line  # the space too: it would end the field
    assert "from=<a\\nb@example.org>" in line and "to=<c\\x1b[2J@example.net>" in line


def test_every_log_line_is_escaped_and_hides_the_password() -> None:
    import io
    import logging

    from milterd.logs import SafeFormatter

    url = "postgresql+psycopg://milterd:S3cret@db/milterd"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(message)s", url=url))
    logger = logging.getLogger("milterd.test_text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("greylist store unavailable, not greylisting %s %s", "192.0.2.0/24", "a\r\nmilterd[1]: forged")
        try:
            raise RuntimeError(f"cannot connect to {url}")
        except RuntimeError:
            logger.exception("store failed for %s", "helo\x1b[2J")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "S3cret" not in out
    assert "\x1b" not in out and "a\\r\\nmilterd[1]" in out
    assert out.splitlines()[0].startswith("greylist store unavailable") and "forged" not in out.splitlines()[1]


def test_log_table_escapes_outsider_text(capsys: pytest.CaptureFixture[str]) -> None:
    from milterd.commands.log import print_table

    row = {"time": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "queue_id": "Q1", "action": "reject", "score": 20.0,
           "sender": "a\rb@example.org", "recipients": ["c@example.net"], "subject": "hi\r\nBcc: x@example.net\x1b[2J",
           "symbols": {"SUBJ": 20.0}, "reason": "because\nforged"}
    print_table([row])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert not any(line.startswith(("Bcc:", "forged")) for line in out.splitlines())


def test_a_reloaded_database_url_is_hidden_too() -> None:
    """A SIGHUP reload may bring a new [database] url: its password is hidden from then on, the old one still is."""
    import io
    import logging

    from milterd.logs import SafeFormatter, hide_database_url

    old, new = "postgresql+psycopg://milterd:Old5ecret@db/milterd", "postgresql+psycopg://milterd:N3wSecret@db2/milterd"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(message)s", url=old))
    root = logging.getLogger()
    root.addHandler(handler)
    logger = logging.getLogger("milterd.test_reload")
    try:
        logger.error("before: cannot use %s", new)
        hide_database_url(new)
        hide_database_url("sqlite:////var/lib/milterd/milterd.sqlite")  # nothing to hide: adds nothing
        logger.error("after: cannot use %s (was %s)", new, old)
    finally:
        root.removeHandler(handler)
    before, after = stream.getvalue().splitlines()
    assert "N3wSecret" in before  # the fault this test guards: the new URL was unknown to the formatter
    assert "N3wSecret" not in after and "Old5ecret" not in after and "db2" in after
    assert isinstance(handler.formatter, SafeFormatter) and len(handler.formatter.urls) == 2
