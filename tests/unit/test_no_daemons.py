"""The guard of tests/unit/conftest.py: a unit test cannot start a process nor reach PostgreSQL."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest


def test_a_process_is_refused() -> None:
    with pytest.raises(AssertionError, match="move this test to tests/integration"):
        subprocess.run(["true"], check=True)
    with pytest.raises(AssertionError, match="os.fork"):
        if os.fork() == 0:  # the guard failed: the child must not go on running the tests
            os._exit(0)


def test_postgresql_is_refused_but_a_closed_port_is_still_a_connection_error() -> None:
    with pytest.raises(AssertionError, match="PostgreSQL"):
        psycopg.connect("host=127.0.0.1 dbname=test user=postgres")
    with pytest.raises(AssertionError, match="PostgreSQL"):
        psycopg.Connection.connect(host="127.0.0.1", port=5432, dbname="test")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect("host=127.0.0.1 port=1 dbname=none connect_timeout=5")
