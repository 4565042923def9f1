"""``milterd greylist list|stats|whitelist|purge``: the greylist for the administrator.

Every command works on the store of ``[database]``, so on a PostgreSQL store it
shows and changes the state that every MX host shares.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import sys
from typing import Any, Callable

from .. import greylist as gl
from ..addresses import embedded_ipv4_network
from ..config import Config, load_config
from ..store import Store, StoreError
from ..text import cut, escape
from ..units import format_duration
from . import config_parent, count_arg, describe_failure, open_store, text_arg

#: Triplets a ``purge --dry-run`` names one by one; the rest are only counted (in SQL).
DRY_RUN_SHOWN = 100


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``greylist`` and its sub-commands."""
    parser = sub.add_parser("greylist", parents=[config_parent()], help="show and manage the greylist")
    actions = parser.add_subparsers(dest="greylist_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", parents=[config_parent()], help="the stored triplets, most recently seen first")
    listing.add_argument("--client", type=text_arg, metavar="NETWORK", help="only this client network (e.g. 192.0.2.0/24; an address stands for its network)")
    listing.add_argument("--sender", type=text_arg, metavar="ADDR", help="only this sender (normalised as the triplets hold it); '' for the null sender")
    listing.add_argument("--recipient", type=text_arg, metavar="ADDR", help="only this recipient")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--passed", dest="passed", action="store_const", const=True, help="only triplets that passed")
    state.add_argument("--waiting", dest="passed", action="store_const", const=False, help="only triplets still waiting for a retry")
    listing.add_argument("--limit", type=count_arg, default=100, metavar="N", help="at most N triplets (default 100; 0: all)")
    listing.add_argument("--json", action="store_true", help="a JSON array, one object per triplet")
    listing.set_defaults(func=_guarded(run_list))

    stats = actions.add_parser("stats", parents=[config_parent()], help="counts of triplets, clients and whitelist entries")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(func=_guarded(run_stats))

    whitelist = actions.add_parser("whitelist", parents=[config_parent()], help="show, add or remove whitelist entries")
    wl = whitelist.add_subparsers(dest="whitelist_command", metavar="ACTION")
    wl_list = wl.add_parser("list", parents=[config_parent()], help="every entry: shipped, milter.conf and stored (the default)")
    wl_list.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="a JSON array of {kind, value, source, comment}")
    for name, helptext in (("add", "add a stored entry (every MX host sharing the store sees it)"), ("remove", "remove a stored entry")):
        cmd = wl.add_parser(name, parents=[config_parent()], help=helptext)
        cmd.add_argument("kind", choices=["client", "sender", "recipient"])
        cmd.add_argument("value", type=text_arg, help="client: network, name, .suffix or /regex/; sender/recipient: address, @domain, .domain or /regex/")
        if name == "add":
            cmd.add_argument("--comment", type=text_arg, default="", help="why (shown by whitelist list)")
    whitelist.add_argument("--json", action="store_true", help="without an ACTION: as list --json")
    whitelist.set_defaults(func=_guarded(run_whitelist))

    clients = actions.add_parser("clients", parents=[config_parent()], help="the client networks' successful retries (the auto whitelist), most recently seen first")
    clients.add_argument("--client", type=text_arg, metavar="NETWORK", help="only this client network (an address stands for its network)")
    clients.add_argument("--whitelisted", action="store_true", help="only the networks auto-whitelisted now")
    clients.add_argument("--limit", type=count_arg, default=100, metavar="N", help="at most N networks (default 100; 0: all)")
    clients.add_argument("--json", action="store_true", help="a JSON array, one object per network")
    clients.set_defaults(func=_guarded(run_clients))

    purge = actions.add_parser("purge", parents=[config_parent()], help="delete expired triplets and stale clients now")
    which = purge.add_mutually_exclusive_group()
    which.add_argument("--triplet", nargs=3, type=text_arg, metavar=("NETWORK", "SENDER", "RECIPIENT"), help="delete this one triplet instead (it is greylisted again)")
    which.add_argument("--client", type=text_arg, metavar="NETWORK",
                       help="delete every triplet of this client network and its successful retries (its auto whitelisting) instead (an address stands for its network)")
    purge.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    purge.set_defaults(func=_guarded(run_purge))


def _guarded(run: Callable[[argparse.Namespace, Config, Store], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        config = load_config(args.config)
        try:
            store = open_store(config)
            try:
                return run(args, config, store)
            finally:
                store.close()
        except StoreError as exc:
            print(f"milterd: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            raise  # the reader left (| head): cli.main ends quietly with 0
        except Exception as exc:  # noqa: BLE001 - no schema yet, database down
            print(f"milterd: cannot use the greylist: {describe_failure(exc)}", file=sys.stderr)
            return 1

    return wrapper


#: The most stored networks one --client may stand for (a /16 of IPv4 /24s is 256).
MAX_NETWORKS = 4096


def stored_networks(text: str, config: Config) -> list[str]:
    """The client networks, as the triplets hold them, that *text* names: an address or a network inside one
    network of ``[greylist] netmask_v4``/``netmask_v6`` stands for it (``203.0.114.9/32`` is ``203.0.114.0/24``),
    a wider one for each inside it (``203.0.112.0/22``: four /24s), written canonically (``2001:DB8:0::/64`` →
    ``2001:db8::/64``, an IPv4-mapped one in IPv4's form).  ValueError for one wider than :data:`MAX_NETWORKS`
    stored networks.  A unix-socket client is stored by its path."""
    text = text.strip()
    if "/" not in text:
        return [gl.client_network(text, config.greylist.netmask_v4, config.greylist.netmask_v6)]
    try:
        written = ipaddress.ip_network(text.lower().removeprefix("ipv6:"), strict=False)
    except ValueError:
        return [text.lower()]
    # An IPv4-mapped or NAT64 network (::ffff:198.51.100.0/120, 64:ff9b::c633:6400/120) as its clients'
    # triplets hold it: the IPv4 one behind it, 198.51.100.0/24.
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = embedded_ipv4_network(written) or written
    netmask = config.greylist.netmask_v4 if network.version == 4 else config.greylist.netmask_v6
    # The network as written too: triplets stored under an earlier netmask keep theirs until they expire.
    if network.prefixlen >= netmask:
        return sorted({str(network), str(network.supernet(new_prefix=netmask))})
    if netmask - network.prefixlen > MAX_NETWORKS.bit_length() - 1:
        raise ValueError(f"{text} holds more than {MAX_NETWORKS} client networks of /{netmask}: name a narrower one")
    return [str(network), *(str(subnet) for subnet in network.subnets(new_prefix=netmask))]


def client_filter(text: str | None, config: Config) -> list[str] | None:
    """The stored networks a listing's ``--client`` *text* names (:func:`stored_networks`; None without one);
    ValueError saying what is wrong, an empty one too (it would list every network)."""
    if text is None:
        return None
    if not text.strip():
        raise ValueError("--client needs a client network")
    try:
        return stored_networks(text, config)
    except ValueError as exc:
        raise ValueError(f"--client: {exc}") from None


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _dump(data: Any) -> None:
    json.dump(data, sys.stdout, indent=1, default=_json_value)  # ASCII: a sender's bidi override or C1 character as a \uNNNN escape, as the other --json outputs
    sys.stdout.write("\n")


def run_list(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Print the stored triplets; an expired one is shown as ``expired`` (the check starts it again)."""
    try:
        networks = client_filter(args.client, config)
    except ValueError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 2
    sender = gl.triplet_sender(args.sender) if args.sender is not None else None
    recipient = args.recipient.strip().strip("<>") if args.recipient is not None else None
    now = store.greylist.now()  # the database's clock, as the check's
    # --passed / --waiting: as the check judges them now, so without the expired rows.
    expired = False if args.passed is not None else None
    rows = store.greylist.list_triplets(networks, sender, recipient, args.passed, args.limit or None, expired=expired, now=now)
    for row in rows:
        row["state"] = "expired" if row["expires_at"] < now else "passed" if row["passed_at"] else "waiting"
    if args.json:
        _dump([{k: _json_value(v) for k, v in row.items()} for row in rows])
        return 0
    print(f"{'client':20} {'sender':30} {'recipient':30} {'state':8} {'first seen':19}  {'expires':19}  tries passes")
    for row in rows:
        print(
            f"{cut(escape(row['network']), 20):20} {cut(escape(row['sender'] or '<>'), 30):30} {cut(escape(row['recipient']), 30):30} {row['state']:8} "
            f"{row['first_seen']:%Y-%m-%d %H:%M:%S}  {row['expires_at']:%Y-%m-%d %H:%M:%S}  {row['attempts']:5} {row['passes']:6}"
        )
    return 0


def run_stats(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Print the counts."""
    counts = store.greylist.stats(config.greylist.auto_whitelist_after, expire=config.greylist.expire)
    if args.json:
        _dump(counts)
    else:
        width = max(len(k) for k in counts)
        for key, value in counts.items():
            print(f"{key.replace('_', ' '):{width}}  {value}")
    return 0


def run_whitelist(args: argparse.Namespace, config: Config, store: Store) -> int:
    """List, add or remove whitelist entries."""
    command = args.whitelist_command or "list"
    if command == "add":
        try:
            added = store.greylist.whitelist_add(args.kind, args.value, args.comment)
        except ValueError as exc:
            print(f"milterd: {args.kind} {args.value!r}: {exc}", file=sys.stderr)
            return 2
        value = escape(args.value)
        print(f"added {args.kind} {value}" if added else f"{args.kind} {value} is already whitelisted")
        return 0
    if command == "remove":
        if store.greylist.whitelist_remove(args.kind, args.value):
            print(f"removed {args.kind} {escape(args.value)}")
            return 0
        print(f"milterd: no stored {args.kind} entry {args.value!r} (entries of milter.conf are changed there)", file=sys.stderr)
        return 1
    entries = [
        {"kind": kind, "value": value, "source": "shipped" if kind == "client" and value in gl.PROVIDER_CLIENTS else "milter.conf", "comment": ""}
        for kind, value in gl.config_entries(config.greylist)
    ]
    entries += [
        {"kind": row["kind"], "value": row["value"], "source": "store", "comment": row["comment"], **_unusable(row["kind"], row["value"])}
        for row in store.greylist.whitelist_rows()
    ]
    if args.json:
        _dump(entries)
        return 0
    for entry in entries:
        # Escaped as every view of the store is: an entry's value and comment are whatever was stored (a shared store's
        # other writers included), and ESC or CR LF in them drove the terminal or forged a row.
        comment = f"  # {escape(entry['comment'])}" if entry["comment"] else ""
        unusable = f"  (unused: {escape(entry['unusable'])})" if entry.get("unusable") else ""
        print(f"{entry['kind']:9} {escape(entry['value']):40} {entry['source']}{comment}{unusable}")
    return 0


def _unusable(kind: str, value: str) -> dict[str, str]:
    """``{"unusable": why}`` for a stored entry the check skips (one an older version took, a glob or a partial
    address that matched nothing: remove it and add the form meant), else nothing."""
    try:
        gl.compile_pattern(kind, value)
    except ValueError as exc:
        return {"unusable": str(exc)}
    return {}


def run_clients(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Print the client networks' successful-retry counts and whether each is auto-whitelisted now."""
    try:
        networks = client_filter(args.client, config)
    except ValueError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 2
    now = store.greylist.now()
    rows = store.greylist.client_rows(networks, limit=None if args.whitelisted else (args.limit or None))
    for row in rows:
        row["whitelisted"] = gl.auto_whitelisted(row["passes"], row["last_seen"], now, config.greylist)
    if args.whitelisted:
        rows = [row for row in rows if row["whitelisted"]][:args.limit or None]
    if args.json:
        _dump(rows)
        return 0
    for row in rows:
        mark = "auto-whitelisted" if row["whitelisted"] else ""
        print(f"{escape(row['network']):43} {row['passes']:6} retries  last seen {row['last_seen']:%Y-%m-%d %H:%M:%S}  {mark}".rstrip())
    if not rows:
        print("no client networks")
    return 0


def run_purge(args: argparse.Namespace, config: Config, store: Store) -> int:
    """Delete expired entries, or the triplets named."""
    if args.triplet or args.client is not None:  # --client "" (an unset variable in a script) is refused below
        sender: str | None = None
        recipient: str | None = None
        if args.triplet:
            network, sender, recipient = args.triplet[0], gl.triplet_sender(args.triplet[1]), args.triplet[2].strip().strip("<>")
        else:
            network = args.client
        if not network.strip() or recipient == "":
            # An empty filter is no filter: "this one triplet" would be every triplet of the sender.
            print("milterd: --triplet and --client need a client network (and --triplet a recipient)", file=sys.stderr)
            return 2
        try:
            networks = stored_networks(network, config)
        except ValueError as exc:
            print(f"milterd: {exc}", file=sys.stderr)
            return 2
        if args.dry_run:
            rows = store.greylist.list_triplets(networks, sender, recipient, limit=DRY_RUN_SHOWN)
            for row in rows:
                print(f"would delete {escape(row['network'])} <{escape(row['sender'])}> <{escape(row['recipient'])}>")
            total = store.greylist.count_triplets(networks, sender, recipient) if len(rows) >= DRY_RUN_SHOWN else len(rows)
            _more(total, len(rows))
            counted = store.greylist.client_rows(networks, limit=None) if not args.triplet else []
            for client in counted[:DRY_RUN_SHOWN]:
                print(f"would delete the successful retries of {escape(client['network'])} ({client['passes']})")
            _more(len(counted), min(len(counted), DRY_RUN_SHOWN))
            print(f"would delete {total} triplet(s){f' and {len(counted)} client network(s)' if counted else ''} (dry run: nothing deleted)")
            return 0
        count = store.greylist.remove_triplets(networks, sender, recipient)
        # The network's successful retries too: they auto-whitelist it, and "purge --client" left it exempt.
        removed = store.greylist.remove_clients(networks) if not args.triplet else 0
        print(f"deleted {count} triplet(s){f' and the successful retries of {removed} client network(s)' if removed else ''}")
        return 0
    if args.dry_run:
        now = store.greylist.now()  # the database's clock, as the purge itself
        expired = store.greylist.list_triplets(limit=DRY_RUN_SHOWN, expired=True, now=now)
        for row in expired:
            print(f"would purge {escape(row['network'])} <{escape(row['sender'])}> <{escape(row['recipient'])}> (expired {row['expires_at']:%Y-%m-%d %H:%M:%S})")
        total = store.greylist.count_triplets(expired=True, now=now) if len(expired) >= DRY_RUN_SHOWN else len(expired)
        _more(total, len(expired))
        print(f"would purge {total} expired triplet(s) and the clients unseen for {format_duration(config.greylist.expire)} (dry run: nothing deleted)")
        return 0
    triplets, clients = store.greylist.purge(config.greylist.expire)
    print(f"purged {triplets} expired triplet(s) and {clients} stale client(s)")
    return 0


def _more(total: int, shown: int) -> None:
    if total > shown:
        print(f"… and {total - shown} more")

