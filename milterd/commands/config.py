"""``milterd config defaults|show``: the documented defaults and the effective configuration."""

from __future__ import annotations

import argparse

from ..confdoc import render_defaults, render_effective
from ..config import load_config
from ..services import build
from . import config_parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config``."""
    parser = sub.add_parser("config", parents=[config_parent()], help="print the documented defaults or the effective configuration")
    parser.add_argument("what", choices=["defaults", "show"], help="defaults: milter.conf with every default; show: the configuration in effect")
    parser.set_defaults(func=run_config)


def run_config(args: argparse.Namespace) -> int:
    """Print what was asked."""
    if args.what == "defaults":
        print(render_defaults(), end="")
        return 0

    config = load_config(args.config)
    services = build(config)
    print(render_effective(config, services.ruleset), end="")
    return 0
