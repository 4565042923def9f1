"""A database password given as a URL parameter (``?password=…``), which SQLAlchemy hands to the driver
as the password: hidden as ``user:PASSWORD@`` is, in ``config show``, the CLI's errors and the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.logs import SafeFormatter
from milterd.text import redact, redact_url, url_password

URL = "postgresql+psycopg://milterd@127.0.0.1:1/milterd?password=Hunter2Secret"


def test_the_parameter_is_redacted_in_the_url() -> None:
    assert redact_url(URL) == "postgresql+psycopg://milterd@127.0.0.1:1/milterd?password=***"
    assert url_password(URL) == "Hunter2Secret"
    both = "postgresql://u:userinfo1@h/db?sslmode=require&sslpassword=keypass1&PASSWORD=x%2By%20z"
    assert redact_url(both) == "postgresql://u:***@h/db?sslmode=require&sslpassword=***&PASSWORD=***"
    assert redact_url("sqlite:////var/lib/milterd/milterd.sqlite?mode=ro") == "sqlite:////var/lib/milterd/milterd.sqlite?mode=ro"
    assert redact_url("postgresql://h/db?password=") == "postgresql://h/db?password="


@pytest.mark.parametrize(("url", "password"), [
    ("postgresql+psycopg://m@h/db?password=s3cr3t#Tail-Of-The-Password", "s3cr3t#Tail-Of-The-Password"),  # no fragment to SQLAlchemy
    ("postgresql+psycopg://m@h/db?pass%77ord=TopSecret99", "TopSecret99"),  # the name decoded, as SQLAlchemy decodes it
    ("postgresql+psycopg://m@h/db?x=1&PassWord=a%26b+c", "a&b c"),
])
def test_the_parameter_is_read_as_sqlalchemy_reads_it(url: str, password: str) -> None:
    # Found by review: a "#" ended the hidden part, and an encoded name was not seen as a password.
    from sqlalchemy import make_url

    assert make_url(url).query.get(next(k for k in make_url(url).query if k.lower() == "password")) == password
    assert url_password(url) == password
    assert password not in redact_url(url) and "=***" in redact_url(url)
    assert password not in redact(f"cannot use {url}: {password} refused", url)


@pytest.mark.parametrize(("url", "password"), [
    ("postgresql+psycopg://milter:Pa55/word-Xy9@db.example/milterd", "Pa55/word-Xy9"),
    ("postgresql://u:s3cr3t/x?y@h/db", "s3cr3t/x?y"),
])
def test_a_password_holding_a_slash_is_hidden(url: str, password: str) -> None:
    # SQLAlchemy reads the password up to the first "@", "/" included; it was looked for before the first "/" only.
    from sqlalchemy import make_url

    assert make_url(url).password == password == url_password(url)
    assert password not in redact_url(url) and ":***@" in redact_url(url)
    assert password not in redact(f"cannot use {url}: {password} refused", url)


def test_the_parameter_is_hidden_wherever_a_message_quotes_it() -> None:
    out = redact(f"cannot use {URL}: password Hunter2Secret rejected (Hunter2Secret)", URL)
    assert "Hunter2Secret" not in out and "?password=***" in out
    both = "postgresql://u:userinfo1@h/db?sslpassword=keypass1&password=x%2By%20z"
    out = redact("userinfo1 keypass1 x+y z x%2By%20z", both)
    assert out == "*** *** *** ***"
    formatter = SafeFormatter("%(message)s", url=URL)
    line = formatter.format(logging.LogRecord("milterd", logging.ERROR, __file__, 1, "store down: %s", (f"{URL} Hunter2Secret",), None))
    assert "Hunter2Secret" not in line


def test_a_short_parameter_password_is_hidden_only_in_its_parameter() -> None:
    url = "postgresql://milterd@127.0.0.1/x?password=451"
    assert redact("451 4.3.0 try later", url) == "451 4.3.0 try later"
    assert redact("dsn host=127.0.0.1&password=451&x", url) == "dsn host=127.0.0.1&password=***&x"


@pytest.mark.parametrize("command", [["config", "show"], ["log", "--limit", "1"], ["quarantine", "list"], ["db", "version"]])
def test_the_cli_never_prints_the_parameter(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    # Port 1 on loopback: the database does not answer, and the error names it.
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "{URL}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    main(["-c", str(conf), *command])
    captured = capsys.readouterr()
    assert "127.0.0.1:1/milterd" in captured.out + captured.err  # the URL is named...
    assert "Hunter2Secret" not in captured.out + captured.err  # ...without its password
