"""``milterd doctor``: check the configuration, every backend and Postfix's settings."""

from __future__ import annotations

import argparse
import json

from ..diagnostics import diagnose, worst
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
    findings = diagnose(args.config, args.postfix_config, use_postconf=not args.no_postfix)
    status = worst(findings)
    if args.json:
        print(json.dumps({"status": status, "findings": [f.as_dict() for f in findings]}, indent=2))
    else:
        width = max(len(f.name) for f in findings)
        for finding in findings:
            print(f"{finding.status.upper():4}  {finding.name:{width}}  {finding.detail}")
        print(f"doctor: {status}")
    return 1 if status == "fail" or (args.strict and status == "warn") else 0
