"""``milterd db upgrade|version``: the store's schema."""

from __future__ import annotations

import argparse
import sys

from ..config import load_config
from ..store import Store, StoreError, driver_reason, unknown_schema, unversioned_tables
from ..text import redact_url
from . import config_parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db``."""
    db = sub.add_parser("db", parents=[config_parent()], help="create or upgrade the database schema")
    db.add_argument("action", choices=["upgrade", "version"], help="upgrade: create or upgrade to the newest schema; version: show it")
    db.set_defaults(func=run_db)


def run_db(args: argparse.Namespace) -> int:
    """Upgrade or show the schema."""
    config = load_config(args.config)
    try:
        store = Store(config.database)
        if args.action == "upgrade":
            version = store.upgrade()
            print(f"schema at {version} ({redact_url(config.database.url)})")
        else:
            current, head = store.schema_version(), store.head_version()
            if store.unversioned(current):
                print(f"milterd: {unversioned_tables(config.database.url)}", file=sys.stderr)
                return 1
            if current is None:
                print(f"milterd: the database has no schema yet (this milterd needs {head}): run `milterd db upgrade`", file=sys.stderr)
                return 1
            print(f"schema at {current}; this milterd needs {head}")
            if not store.known_version(current):
                print(f"milterd: {unknown_schema(current, head, store.has_tables())}", file=sys.stderr)
                return 1
            if current != head:  # scripts can tell an upgrade is due
                print("milterd: run `milterd db upgrade`", file=sys.stderr)
                return 1
    except StoreError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a database that does not answer
        print(f"milterd: cannot reach {redact_url(config.database.url)}: {driver_reason(exc, config.database.url)}", file=sys.stderr)
        return 1
    return 0
