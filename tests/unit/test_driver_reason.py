"""driver_reason: a database error on one line, without the SQL PostgreSQL quotes (thirty-eighth review)."""

from __future__ import annotations

from sqlalchemy.exc import ProgrammingError

from milterd.store import driver_reason


class Refusal(Exception):
    """What psycopg raises: the server's message, then the statement it refused and a caret under the place."""


def test_the_statement_postgresql_quotes_is_left_out() -> None:
    refusal = Refusal("permission denied for schema public\nLINE 2: CREATE TABLE alembic_version (\n               ^")
    exc = ProgrammingError("CREATE TABLE alembic_version (version_num VARCHAR(32))", {}, refusal)
    assert driver_reason(exc, "postgresql+psycopg://m:secret@db/m") == "ProgrammingError: permission denied for schema public"


def test_a_message_on_several_lines_is_joined_and_its_password_hidden() -> None:
    refusal = Refusal('connection failed: FATAL:  password authentication failed for user "m"\nsecret here')
    exc = ProgrammingError("SELECT 1", {}, refusal)
    assert driver_reason(exc, "postgresql+psycopg://m:secret@db/m") == (
        'ProgrammingError: connection failed: FATAL:  password authentication failed for user "m" *** here'
    )


def test_the_detail_and_hint_after_the_statement_are_kept() -> None:
    # Third look: everything after the quoted statement was cut, PostgreSQL's HINT with it.
    refusal = Refusal("operator does not exist: name = integer\nLINE 1: SELECT 1 WHERE 'a'::name = 1\n"
                      "                                     ^\nHINT:  No operator matches the given name and argument types.")
    exc = ProgrammingError("SELECT 1", {}, refusal)
    assert driver_reason(exc, "postgresql+psycopg://m@db/m") == (
        "ProgrammingError: operator does not exist: name = integer HINT:  No operator matches the given name and argument types."
    )
