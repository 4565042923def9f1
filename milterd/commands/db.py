"""``milterd db upgrade|version``: the store's schema."""

from __future__ import annotations

import argparse
import sys

from ..cli import config_parent
from ..config import load_config
from ..store import Store, StoreError


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
            print(f"schema at {version} ({config.database.url})")
        else:
            print(f"schema at {store.schema_version() or 'nothing'}; this milterd needs {store.head_version()}")
    except StoreError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a database that does not answer
        print(f"milterd: cannot reach {config.database.url}: {exc}", file=sys.stderr)
        return 1
    return 0
