"""``milterd doctor``: check the configuration, every backend and Postfix's settings."""

from __future__ import annotations

import argparse
import json

from ..config import ConfigError, load_config
from ..diagnostics import Finding, diagnose, worst
from ..milter.supervisor import reload_blockers
from ..text import escape
from . import config_parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor``."""
    doctor = sub.add_parser("doctor", parents=[config_parent()], help="check the configuration, the backends and Postfix's settings")
    doctor.add_argument("--postfix-config", metavar="DIR", help="Postfix's configuration directory (postconf -c DIR; default: Postfix's own)")
    doctor.add_argument("--no-postfix", action="store_true", help="do not read Postfix's settings")
    doctor.add_argument("--json", action="store_true", help="print {status, findings: [{name, status, detail}]} for monitoring")
    doctor.add_argument("--strict", action="store_true", help="warnings count as failures in the exit status")
    doctor.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Print the findings; exit 1 on any failure (or warning, with --strict)."""
    findings = diagnose(args.config, args.postfix_config, use_postconf=not args.no_postfix) + reload_findings(args.config)
    status = worst(findings)
    if args.json:
        print(json.dumps({"status": status, "findings": [f.as_dict() for f in findings]}, indent=2))
    else:
        # A detail quotes what a backend said (a banner, clamd's VERSION, a resolver's error): escaped for the terminal.
        rows = [(f.status.upper(), escape(f.name), escape(f.detail)) for f in findings]
        width = max(len(name) for _status, name, _detail in rows)
        for status_text, name, detail in rows:
            print(f"{status_text:4}  {name:{width}}  {detail}")
        print(f"doctor: {status}")
    return 1 if status == "fail" or (args.strict and status == "warn") else 0


def reload_findings(config_path: str | None) -> list[Finding]:
    """A warning for each file that ``serve`` reads as root at start but ``[milter] user`` cannot read at a reload."""
    try:
        config = load_config(config_path)
    except ConfigError:  # diagnose reported it
        return []
    return [Finding(f"reload {error.key or 'milter.conf'}", "warn", str(error)) for error in reload_blockers(config)]
