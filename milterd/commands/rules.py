"""``milterd rules list|symbols|lint|stats|whatif``: the symbol table and rule tuning.

* ``list``: every symbol, its score in effect, its default, its check, its description.
* ``symbols``: the built-in symbol table as TOML (``> rules/symbols.toml``).
* ``lint``: validate milter.conf and rules/ as ``serve`` would, start nothing.
* ``stats``: per symbol, from the message log: hits, share, mean score,
  part of a reject or quarantine, on messages later released as ham.  Deferred
  attempts (greylisted, tempfail: the retry is a row of its own) are counted apart.
* ``whatif``: re-score the logged messages with changed weights and thresholds
  (not the symbols scored by their hit, such as SPAMASSASSIN, nor those logged with a fixed
  score, such as DKIM_SIGNED: ``--set`` refuses them).  Deferred attempts are counted apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ..checks.custom import CustomRules
from ..checks.spamassassin import SpamAssassinCheck
from ..config import Config, ConfigError, load_config
from ..message.policy import PIPELINE_SYMBOLS, unreachable_thresholds
from ..milter.supervisor import check_start
from ..options import finite
from ..ruleset import is_shipped
from ..services import Services, build
from ..text import escape
from ..tuning import SpamdSkip, forcing_symbols, json_safe, log_stats, not_weighted, symbol_table, symbols_toml, whatif
from . import config_parent, describe_failure, open_store, since_arg

T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rules`` and its sub-commands."""
    parser = sub.add_parser("rules", parents=[config_parent()], help="list, lint and tune the rules (stats, whatif)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = config_parent()

    listing = verbs.add_parser("list", parents=[common], help="every symbol: score, default, check, description")
    listing.add_argument("--json", action="store_true", help="a JSON array")
    listing.set_defaults(func=run_list)

    symbols = verbs.add_parser("symbols", parents=[common], help="print the built-in symbol table as TOML (rules/symbols.toml)")
    symbols.set_defaults(func=run_symbols)

    lint = verbs.add_parser("lint", parents=[common], help="validate milter.conf and rules/ without starting anything")
    lint.set_defaults(func=run_lint)

    stats = verbs.add_parser(
        "stats", parents=[common],
        help="per-symbol statistics of the logged messages; deferred attempts (greylisted, tempfail) counted apart",
        description="Per symbol, over the logged messages: hits, share of messages, mean score, how often part of a "
                    "reject or quarantine, how often on a message later released as ham. An attempt deferred with 451 "
                    "(greylisted, or tempfail) is not a message: the client retries and the retry is logged again; such "
                    "attempts are counted apart (deferred), and left out of the messages and of the symbols' hits.",
    )
    stats.add_argument("--since", type=since_arg, metavar="AGE", help="only messages newer than AGE (7d) or an ISO date")
    stats.add_argument("--until", type=since_arg, metavar="AGE", help="only messages older than AGE (1d) or before an ISO date")
    stats.add_argument("--json", action="store_true", help="JSON for scripts")
    stats.set_defaults(func=run_stats)

    what = verbs.add_parser("whatif", parents=[common], help="re-score the logged messages with changed weights and thresholds")
    what.add_argument("--set", dest="changes", metavar="KEY=VALUE", action="append", default=[], required=True,
                      help="actions.NAME=THRESHOLD (or false) or symbols.NAME=SCORE; repeatable "
                           "(not a symbol scored by its hit, such as SPAMASSASSIN, nor one logged with a fixed score, such as DKIM_SIGNED)")
    what.add_argument("--since", type=since_arg, metavar="AGE", help="only messages newer than AGE (7d) or an ISO date")
    what.add_argument("--until", type=since_arg, metavar="AGE", help="only messages older than AGE (1d) or before an ISO date")
    what.add_argument("--json", action="store_true", help="JSON for scripts")
    what.set_defaults(func=run_whatif)




def _services(args: argparse.Namespace) -> Services:
    return build(load_config(args.config))


# --- list, symbols, lint ---------------------------------------------------------------
def run_list(args: argparse.Namespace) -> int:
    """Print the symbol table in effect."""
    table = symbol_table(_services(args))
    if args.json:
        json.dump([s.__dict__ for s in table], sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    print(f"{'symbol':30} {'score':>7} {'default':>7}  {'check':12} description")
    for s in table:
        check = s.check if s.enabled else f"({s.check})"
        print(f"{s.name:30} {s.score:7.2f} {s.default:7.2f}  {check:12} {s.description}")
    return 0


def run_symbols(args: argparse.Namespace) -> int:
    """Print rules/symbols.toml."""
    sys.stdout.write(symbols_toml())
    return 0


def run_lint(args: argparse.Namespace) -> int:
    """Validate; exit 0 with a one-line summary, or 2 with the file, key and reason."""
    config = load_config(args.config)
    services = build(config)
    check_start(config)

    custom = sum(1 for s in symbol_table(services) if not s.builtin)
    shipped = sum(1 for path in services.ruleset.files if is_shipped(path))
    local = config.rules_dir if config.rules_dir and config.rules_dir.exists() else "(none)"
    print(
        f"{config.path or 'embedded defaults'}: OK; rules: {shipped} shipped files, local {local}: "
        f"{len(services.ruleset.files) - shipped} files; {len(services.ruleset.weights)} weights, "
        f"{custom} rule symbols; {len(services.checks)} checks enabled"
    )
    for problem in unreachable_thresholds(config.actions):
        print(f"milterd: warning: {config.path or 'embedded defaults'}: {problem}", file=sys.stderr)
    return 0


# --- stats, whatif -------------------------------------------------------------------------
def _rows(args: argparse.Namespace, config: Any) -> Iterator[dict[str, Any]]:
    return open_store(config).iter_messages(since=args.since, until=args.until)


def _from_log(read: Callable[[], T]) -> T | None:
    """What *read* makes of the log, or None when the log cannot be read (said on stderr)."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - StoreError, no schema yet, database down
        print(f"milterd: cannot read the log: {describe_failure(exc)}", file=sys.stderr)
        return None


def _print_json(data: Any) -> None:
    """*data* as JSON on stdout."""
    # ASCII (non-ASCII as \u escapes): UTF-8 whatever the locale (RFC 8259 §8.1), a sender's
    # undecodable byte cannot stop the output, and no raw C1 control or bidi override reaches a terminal.
    json.dump(json_safe(data), sys.stdout, indent=1)
    sys.stdout.write("\n")


def _counted(items: Iterable[tuple[str, int]]) -> str:
    """``name count, name count`` for a terminal: the names (actions, symbols from the log) escaped."""
    return ", ".join(f"{escape(name)} {count}" for name, count in items)


def run_stats(args: argparse.Namespace) -> int:
    """Print per-symbol statistics of the logged messages."""
    config = load_config(args.config)
    report = _from_log(lambda: log_stats(_rows(args, config)))
    if report is None:
        return 1
    if args.json:
        _print_json(report.as_json())
        return 0
    print(f"{report.messages} messages")
    if report.deferred:
        by_action = _counted(sorted(report.deferred.items()))
        print(f"deferred attempts: {sum(report.deferred.values())} ({by_action}); counted apart (column 'deferred'): "
              f"the client retries, and a retry that gets through is one of the messages")
    print(f"{'symbol':30} {'hits':>7} {'share':>7} {'mean':>7} {'rej/quar':>8} {'ham-rel':>7} {'deferred':>8}")
    for s in report.symbols:
        print(f"{escape(s.symbol):30} {s.hits:7} {100 * s.share:6.1f}% {s.mean_score:7.2f} {s.in_spam_actions:8} {s.released_as_ham:7} {s.deferred:8}")
    return 0


def parse_changes(changes: list[str], services: Services) -> tuple[dict[str, Any], dict[str, float]]:
    """``--set`` values as ``[actions]`` changes and symbol weights; ConfigError on a bad one."""
    actions: dict[str, Any] = {}
    weights: dict[str, float] = {}
    fixed = not_weighted(services.config.greylist.mode)
    for change in changes:
        key, sep, value = change.partition("=")
        key, value = key.strip(), value.strip()
        section, _, name = key.partition(".")
        if not sep or not name:
            raise ConfigError("--set", change, "expected actions.NAME=VALUE or symbols.NAME=SCORE")
        if section == "actions":
            actions[name] = _value(value)
        elif section == "symbols":
            if name in fixed:
                raise ConfigError("--set", key, fixed[name])
            if name not in services.symbols:
                raise ConfigError("--set", key, "no check or rule emits this symbol (misspelt?)")
            try:
                # finite: a nan would count 0 unsaid, an inf reject every message and write Infinity (not JSON).
                weights[name] = finite(float(value))
            except ValueError:
                raise ConfigError("--set", key, f"score must be a finite number, got {value!r}") from None
        else:
            raise ConfigError("--set", key, "only actions.* and symbols.* can be changed")
    return actions, weights


def _value(text: str) -> Any:
    """A --set value as TOML would read it: false/true, a number, else the text."""
    if text.lower() in ("false", "true"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def with_action_changes(config: Config, changes: dict[str, Any]) -> Config:
    """*config* with the ``--set actions.NAME`` *changes*; ConfigError naming ``--set`` and
    the key (not milter.conf, which is fine) when a value is refused."""
    if not changes:
        return config
    try:
        return config.with_changes({f"actions.{k}": v for k, v in changes.items()})
    except ConfigError as exc:
        key = exc.key.removeprefix("[actions] ")
        raise ConfigError("--set", f"actions.{key}" if key != exc.key else "actions", exc.reason) from None


def _after_tiers(services: Services) -> frozenset[str]:
    """The symbols counted after the tiers decided whether to ask spamd (meta rules, the greylist's RCPT deferrals)."""
    return frozenset().union(*(check.symbols_on_symbols() for check in services.checks))


def _spamd_metas(services: Services) -> frozenset[str]:
    """The meta rules that name one of the spamd check's symbols, itself or through another meta rule."""
    spamd = frozenset(symbol.name for symbol in SpamAssassinCheck.symbols)
    return frozenset().union(*(check.metas_naming(spamd) for check in services.checks if isinstance(check, CustomRules)))


def run_whatif(args: argparse.Namespace) -> int:
    """Re-score the log and print what would change."""
    services = _services(args)
    config = services.config
    action_changes, weights = parse_changes(args.changes, services)
    changed = with_action_changes(config, action_changes)
    report = _from_log(lambda: whatif(_rows(args, config), weights, changed.actions, config.milter, known=set(services.symbols) | PIPELINE_SYMBOLS,
                                      current=config.actions, greylist_mode=config.greylist.mode,
                                      delimiters=config.checks.local_domains.recipient_delimiter, may_force=forcing_symbols(config),
                                      spamd_skip=SpamdSkip(config.learner.skip_spamd_above, config.learner.skip_spamd_below, _after_tiers(services),
                                                           _spamd_metas(services)),
                                      in_effect={name: services.weight(name) for name in services.symbols}))
    if report is None:
        return 1
    if args.json:
        _print_json(report.as_json())
        return 0
    print(f"{report.messages} messages; {report.changed} would change action")
    if report.deferred:
        print(f"deferred attempts: {sum(report.deferred.values())} ({_counted(sorted(report.deferred.items()))}); counted apart and "
              f"not re-scored: the client retries, and a retry that gets through is one of the messages")
    unasked = sum(report.unasked.values())
    if unasked:
        print(f"of which {unasked} would change with no --set at all: the settings in effect (thresholds, weights) differ "
              f"from those they were logged under")
    for entry in report.as_json()["changes"]:
        without = report.unasked.get((entry["from"], entry["to"]), 0)
        print(f"  {escape(entry['from']):>15} -> {escape(entry['to']):15} {entry['count']:6}" + (f"  ({without} with no --set)" if without else ""))
        for example in entry["examples"]:
            print(f"      {escape(example['time'] or ''):25.25} {escape(example['queue_id'] or '-'):12} {example['old_score']:6.2f} -> {example['new_score']:6.2f}  "
                  f"<{escape((example['sender'] or '')[:80])}> {escape((example['subject'] or '')[:50])}")
    if report.unknown:
        unknown = _counted(report.unknown.most_common(10))
        more = f" and {len(report.unknown) - 10} more" if len(report.unknown) > 10 else ""
        print(f"symbols no check or rule emits now (renamed or removed since logged; they keep their logged scores, "
              f"--set does not reach them), by messages: {unknown}{more}")
    for counted, why in (
        (report.kept, "kept as they were (forced by a hit or decided before end of data, and no more severe threshold action reached; "
                      "or not scored)"),
        (report.kept_may_force, "kept as they were (a hit that may force an action, such as a virus or a DMARC or attachment policy, "
                                "is under a score that went further; lower they might not go)"),
        (report.unexplained, "kept as they were (their symbols do not add up to their logged score, as in rows of an older version; "
                             "they cannot be re-scored)"),
        (report.spamd_unknown, "kept as they were (with these changes the tiers would ask spamd where they skipped it, or skip it where "
                               "meta rules read its answer: what that changes is not known)"),
        (report.spamd_skipped, "re-scored without spamd's points (spamd answered, and with these changes the tiers would skip it as "
                               "confident)"),
    ):
        if counted:
            print(f"{why}: {_counted(counted.most_common())}")
    return 0
