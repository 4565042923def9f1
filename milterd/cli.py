"""The ``milterd`` command line: one sub-command per administrator task.

Sub-commands live in ``milterd/commands/``, one module each (``log`` in
commands/log.py, …); this module only parses arguments and turns
a :class:`~milterd.config.ConfigError` into a one-line message and exit status
2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Callable, Sequence

from . import record_early_hup


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command *argv* names, past the options before it (``-c FILE``, ``--config=FILE``, ``--conf FILE``
    as argparse takes an abbreviation); None if none."""
    rest = iter(argv)
    for arg in rest:
        if arg == "-c" or (len(arg) > 2 and "--config".startswith(arg)):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


if command_of(sys.argv[1:]) == "serve":  # before the imports below (about half a second): see milterd.EARLY_HUPS
    # "milterd -c FILE serve" too: only "serve" first was guarded, and a SIGHUP then ended the process unsaid.
    signal.signal(signal.SIGHUP, record_early_hup)

from .commands import config_parent, describe_failure, open_store, since_arg  # noqa: E402, F401 - re-exported: the commands' old spelling
from .config import ConfigError  # noqa: E402

#: Sub-command name → "module:function" that adds its parser.  A feature adds
#: its sub-commands by adding its module here.
COMMANDS: dict[str, str] = {
    "serve": "milterd.commands.serve:add_parser",
    "db": "milterd.commands.db:add_parser",
    "log": "milterd.commands.log:add_parser",
    "config": "milterd.commands.config:add_parser",
    "doctor": "milterd.commands.doctor:add_parser",
    "check": "milterd.commands.check:add_parser",
    "rules": "milterd.commands.rules:add_parser",
    "quarantine": "milterd.commands.quarantine:add_parser",
    "greylist": "milterd.commands.greylist:add_parser",
    "learn": "milterd.commands.learn:add_parser",
    "dkim": "milterd.commands.dkim:add_parser",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="milterd", description="A mail content filter for Postfix (a milter).")
    parser.add_argument("--version", action="version", version=f"milterd {version()}")
    parser.add_argument("-c", "--config", metavar="FILE", help="milter.conf to read (default: ./milter.conf, then /etc/milterd/milter.conf)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for target in COMMANDS.values():
        module, _, func = target.partition(":")
        add: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = getattr(importlib.import_module(module), func)
        add(sub)
    return parser


def version() -> str:
    """The installed milterd's version (from its package metadata)."""
    try:
        return package_version("milterd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milterd`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
