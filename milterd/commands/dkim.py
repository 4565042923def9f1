"""``milterd dkim keygen DOMAIN SELECTOR``: a new DKIM key and the DNS record to publish."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..dkimsign import LABELS, MIN_RSA_BITS, generate, public_record, signing_domain, write_private, zone_lines
from . import config_parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dkim`` and its sub-command ``keygen``."""
    parser = sub.add_parser("dkim", parents=[config_parent()], help="DKIM signing keys")
    actions = parser.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    keygen = actions.add_parser("keygen", parents=[config_parent()], help="write a new private key (mode 0600) and print the TXT record to publish")
    keygen.add_argument("domain", help="the domain to sign for (d=)")
    keygen.add_argument("selector", help="the selector (s=): the record goes at SELECTOR._domainkey.DOMAIN")
    keygen.add_argument("--type", choices=["rsa", "ed25519"], default="rsa", help="key type (default rsa)")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048, at least 1024)")
    keygen.add_argument("-o", "--output", metavar="FILE", help="the key file (default DOMAIN.SELECTOR.key in the current directory); never overwritten")
    keygen.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    """Write the key, print where and the record; exit status 2 on bad arguments or an existing file."""
    domain, selector = signing_domain(args.domain), args.selector
    if not domain:
        print(f"milterd: dkim keygen: {args.domain!r} is not a valid domain", file=sys.stderr)
        return 2
    if not LABELS.fullmatch(selector):
        print(f"milterd: dkim keygen: {selector!r} is not a valid selector", file=sys.stderr)
        return 2
    if args.type == "rsa" and not MIN_RSA_BITS <= args.bits <= 8192:
        print(f"milterd: dkim keygen: --bits {args.bits}: an RSA key has {MIN_RSA_BITS} to 8192 bits", file=sys.stderr)
        return 2
    path = Path(args.output or f"{domain}.{selector}.key")
    private = generate(args.type, args.bits)
    try:
        write_private(path, private)
    except FileExistsError:
        print(f"milterd: dkim keygen: {path} exists; not overwritten", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"milterd: dkim keygen: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"; private key written to {path} (mode 0600); in milter.conf:")
    # Absolute: key_file is read relative to milter.conf's directory, not to this one.  A JSON string is a TOML basic string.
    key_file = json.dumps(str(path.absolute()), ensure_ascii=False)
    print(f';   [dkim_signing] keys = [ {{ domain = "{domain}", selector = "{selector}", key_file = {key_file} }} ]')
    print("; publish in DNS:")
    print(zone_lines(selector, domain, public_record(args.type, private)))
    return 0
