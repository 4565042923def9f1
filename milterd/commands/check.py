"""``milterd check``: explain the verdict on stored messages; mass check labelled corpora.

``milterd check FILE…`` runs each message (a file, an mbox, a Maildir, a
directory of those) through the same pipeline as the milter, without an MTA
and without writing the log, and explains the verdict.  The exit status is
the most severe action: 0 accept, 10 + the action's rank otherwise (11
add_header, 12 rewrite_subject, 13 quarantine, 14 greylist, 15 tempfail,
16 discard, 17 reject); 1 when a message could not be read or judged; 2 for
a bad configuration.

``milterd check --ham DIR… --spam DIR…`` is a mass check: spam caught and ham
flagged per folder and overall, at the configured thresholds and a few
others, with the symbols behind the false positives and the misses.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from ..checks.greylist import Greylist
from ..config import Config, load_config
from ..learner.classifier import Counts
from ..message.model import Action
from ..message.pipeline import Pipeline
from ..message.policy import PIPELINE_DESCRIPTIONS, threshold_action
from ..milter.offline import HEAD_SIZE, CheckedMessage, Client, MessageRef, check_message, no_mail, sources
from ..services import Services, build
from ..store import Store, StoreError
from ..store.learner import LearnerStore, model_may_exist
from ..text import escape
from ..tuning import Judged, configured_thresholds, forced_action, mass_report, symbol_table
from . import config_parent, whole_number_arg
from .learn import UnreadableMessage, prepare, read_message

#: Exit status of a run whose most severe action is this one.
EXIT_BASE = 10
EXIT_UNREADABLE = 1
#: Show a progress bar from this many messages on (when stderr is a terminal).
PROGRESS_FROM = 20


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``check``."""
    parser = sub.add_parser(
        "check", parents=[config_parent()], help="explain the verdict on message files, mboxes, Maildirs; mass-check labelled folders",
        description="Run messages through the pipeline without an MTA (nothing is logged) and explain the verdict. "
        "Exit status: 0 accept, 11 add_header, 12 rewrite_subject, 13 quarantine, 14 greylist, 15 tempfail, 16 discard, "
        "17 reject (the most severe over all messages); 1 unreadable input; 2 bad configuration.",
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="FILE", help="message file (.eml), mbox, Maildir or directory")
    parser.add_argument("--client-ip", metavar="IP", default="", help="the SMTP client's address (default: none; connection checks see nothing)")
    parser.add_argument("--client-name", metavar="NAME", default="", help="the client's verified host name")
    parser.add_argument("--helo", metavar="NAME", default="", help="the HELO/EHLO name (default: the client address literal, [IP])")
    parser.add_argument("--from", dest="sender", metavar="ADDR", default=None, help="envelope sender (default: Return-Path, else From)")
    parser.add_argument("--to", dest="recipients", metavar="ADDR", action="append", default=[], help="an envelope recipient; repeat for more (default: To and Cc)")
    parser.add_argument("--auth-user", metavar="USER", default="", help="act as if the client authenticated as USER")
    parser.add_argument("--smtputf8", action="store_true", help="act as if MAIL FROM said SMTPUTF8 (8-bit header fields are then valid)")
    parser.add_argument("--ham", metavar="DIR", nargs="+", action="extend", type=Path, default=[], help="mass check: folders or mboxes of ham")
    parser.add_argument("--spam", metavar="DIR", nargs="+", action="extend", type=Path, default=[], help="mass check: folders or mboxes of spam")
    parser.add_argument("--train-ham", metavar="DIR", nargs="+", action="extend", type=Path, default=[], help="mass check with a scratch classifier model learned from these ham folders first (the live store is never touched)")
    parser.add_argument("--train-spam", metavar="DIR", nargs="+", action="extend", type=Path, default=[], help="the same, spam folders to learn into the scratch model")
    parser.add_argument("--cross-validate", type=folds_arg, default=0, metavar="K", help="mass check in K folds: each fold of --ham/--spam is judged by a scratch classifier model learned from the other folds (the live store is never touched)")
    parser.add_argument("--progress", choices=["auto", "always", "never"], default="auto", help="progress bar on stderr (auto: on a terminal, from 20 messages)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Check the messages given and print the explanation or the mass-check report."""
    if args.client_ip:
        try:
            ipaddress.ip_address(args.client_ip)
        except ValueError:
            print(f"milterd: --client-ip: {args.client_ip!r} is not an IP address", file=sys.stderr)
            return 2
    mass = bool(args.ham or args.spam)
    if not mass and not args.paths:
        print("milterd: check: give message files, or --ham/--spam folders", file=sys.stderr)
        return 2
    if mass and args.paths:
        print("milterd: check: give either message files or --ham/--spam folders, not both", file=sys.stderr)
        return 2
    try:
        config = offline_config(load_config(args.config))
    except StoreError as exc:  # a [database] url that cannot be used: said as the other commands say it
        print(f"milterd: {exc}", file=sys.stderr)
        return 2
    if args.cross_validate:
        if not (args.ham and args.spam) or args.train_ham or args.train_spam:
            print("milterd: check: --cross-validate K needs --ham and --spam folders (and no --train-ham/--train-spam)", file=sys.stderr)
            return 2
        client = Client(args.client_ip, args.client_name, args.helo, args.sender, list(args.recipients), args.auth_user, args.smtputf8)
        return _with_scratch(lambda: _cross_validate(args, config, client))
    if args.train_ham or args.train_spam:
        if not (args.train_ham and args.train_spam and mass):
            print("milterd: check: --train-ham and --train-spam go together, with --ham/--spam folders to test", file=sys.stderr)
            return 2
        return _with_scratch(lambda: _trained_check(args, config, mass))
    return _check_with(args, config, mass)


def _with_scratch(run: Callable[[], int]) -> int:
    """*run*'s exit status; 1, said in one line, when its scratch model cannot be made or written (a full or
    unwritable $TMPDIR: the training corpus may be large), as ``milterd learn`` says its store's failures."""
    try:
        return run()
    except BrokenPipeError:
        raise  # the report's reader went away: the command line's own case
    except (StoreError, OSError) as exc:
        print(f"milterd: check: the scratch model: {exc}", file=sys.stderr)
        return 1


def _trained_check(args: argparse.Namespace, config: Config, mass: bool) -> int:
    """The mass check of ``--train-ham``/``--train-spam``: a scratch model taught those folders judges the others."""
    with tempfile.TemporaryDirectory(prefix="milterd-scratch-") as scratch:
        config = config.with_changes({"database.url": f"sqlite:///{Path(scratch) / 'model.sqlite'}", "learner.enabled": True})
        trained = train_scratch_model(config, args.train_ham, args.train_spam)
        print(f"scratch model: learned {trained.spam} spam and {trained.ham} ham (the live store is not touched)", file=sys.stderr)
        if trained.spam < config.learner.min_spam or trained.ham < config.learner.min_ham:
            print(f"milterd: check: fewer than [learner] min_spam/min_ham ({config.learner.min_spam}/{config.learner.min_ham}) learned: the classifier abstains", file=sys.stderr)
        return _check_with(args, config, mass)


def _check_with(args: argparse.Namespace, config: Config, mass: bool) -> int:
    services = offline_services(config)
    pipeline = Pipeline(services, keep_log=False)
    client = Client(args.client_ip, args.client_name, args.helo, args.sender, list(args.recipients), args.auth_user, args.smtputf8)
    try:
        if mass:
            return _mass_check(args, services, pipeline, client)
        return _check_files(args, services, pipeline, client)
    finally:
        pipeline.shutdown()
        services.close()


def train_scratch_model(config: Config, ham: Iterable[Path], spam: Iterable[Path]) -> Counts:
    """Create *config*'s (scratch) store and teach its classifier the given folders; the totals learned."""
    labelled: list[tuple[str, MessageRef]] = []
    for label, folders in (("ham", ham), ("spam", spam)):
        refs, problems = _collect(folders)
        for problem in problems:
            print(f"milterd: {escape(problem)}", file=sys.stderr)
        labelled.extend((label, ref) for ref in refs)
    return learn_scratch(config, labelled)


def learn_scratch(config: Config, labelled: Iterable[tuple[str, MessageRef]], reported: set[str] | None = None) -> Counts:
    """Create *config*'s (scratch) store and teach its classifier the (label, message) pairs; the totals learned.

    A message that cannot be learned is left out and said, as ``milterd learn`` does, once
    (its label is added to *reported*: cross-validating learns it once per fold)."""
    reported = set() if reported is None else reported
    store = Store(config.database)
    try:
        store.upgrade()
        repository = LearnerStore(store.engine)
        for label, ref in labelled:
            try:
                raw = read_message(ref)  # as milterd learn reads it
            except UnreadableMessage as exc:
                if ref.label not in reported:
                    reported.add(ref.label)
                    print(f"milterd: {escape(exc)}", file=sys.stderr)
                continue
            digest, tokens = prepare(raw, config.learner.max_size)
            repository.learn(digest, tokens, "spam" if label == "spam" else "ham")
        return repository.totals()
    finally:
        store.close()


def fold_numbers(kinds: list[str], folds: int) -> list[int]:
    """The fold of each message: round-robin within each kind, so that every fold gets its share of ham and of spam."""
    seen: Counter[str] = Counter()
    numbers = []
    for kind in kinds:
        numbers.append(seen[kind] % folds)
        seen[kind] += 1
    return numbers


#: The most folds ``--cross-validate`` takes.
MAX_FOLDS = 100


#: argparse type of ``--cross-validate``.
folds_arg = whole_number_arg(2, MAX_FOLDS, "a number of folds")


def _cross_validate(args: argparse.Namespace, config: Config, client: Client) -> int:
    """Mass check in K folds, each judged by a scratch model learned from the others."""
    labelled, unread = _labelled(args)
    if not labelled:
        print("milterd: check: no message found", file=sys.stderr)
        return 1
    folds = args.cross_validate
    if folds > len(labelled):
        # Each fold builds a scratch store and a pipeline: K past the messages ran empty folds (without end for a huge K).
        print(f"milterd: check: --cross-validate {folds}: more folds than the {len(labelled)} messages found", file=sys.stderr)
        return 2
    numbers = fold_numbers([kind for kind, _, _ in labelled], folds)
    _warn_small_folds(config, [kind for kind, _, _ in labelled], numbers, folds)
    progress = Progress(len(labelled), args.progress)
    items: list[Judged] = []
    errors = 0
    unlearned: set[str] = set()
    for fold in range(folds):
        with tempfile.TemporaryDirectory(prefix="milterd-scratch-") as scratch:
            fold_config = config.with_changes({"database.url": f"sqlite:///{Path(scratch) / 'model.sqlite'}", "learner.enabled": True})
            learn_scratch(fold_config, [(kind, ref) for (kind, _, ref), number in zip(labelled, numbers, strict=True) if number != fold], unlearned)
            services = offline_services(fold_config)
            pipeline = Pipeline(services, keep_log=False)
            try:
                judged, failed = _judge_all([entry for entry, number in zip(labelled, numbers, strict=True) if number == fold], pipeline, client, progress, config)
            finally:
                pipeline.shutdown()
                services.close()
        items.extend(judged)
        errors += failed
    progress.done()
    report = mass_report(items, config.actions)
    report["cross_validate"] = folds
    return _reported(args, report, unread, errors, f"{folds}-fold cross-validation: each fold judged by a scratch model learned from the other folds")


def _warn_small_folds(config: Config, kinds: list[str], numbers: list[int], folds: int) -> None:
    """Say so when some fold's scratch model learns fewer messages than the classifier needs to score (as
    ``--train-*`` does): its report would hold no BAYES_* symbol, and look like an evaluation of the classifier."""
    total = Counter(kinds)
    per_fold = Counter(zip(kinds, numbers, strict=True))
    spam = min(total["spam"] - per_fold["spam", fold] for fold in range(folds))
    ham = min(total["ham"] - per_fold["ham", fold] for fold in range(folds))
    if spam < config.learner.min_spam or ham < config.learner.min_ham:
        print(f"milterd: check: a fold's model learns as few as {spam} spam and {ham} ham, fewer than [learner] min_spam/min_ham "
              f"({config.learner.min_spam}/{config.learner.min_ham}): the classifier abstains there", file=sys.stderr)


def offline_config(config: Config) -> Config:
    """The configuration for an offline check: the classifier reads the live
    model, but off where reading it would create the store (an SQLite file that
    does not exist: there is no model to read), and never auto-learns.  Greylisting stays configured;
    :func:`offline_services` leaves its check out.  StoreError when the URL cannot be used at all."""
    if config.learner.enabled and not model_may_exist(config.database.url):
        config = config.with_changes({"learner.enabled": False})
    if config.learner.autolearn_spam is not False or config.learner.autolearn_ham is not False:
        # A check is a dry run: it must not teach the live model (nor, cross-validating, the test folds).
        config = config.with_changes({"learner.autolearn_spam": False, "learner.autolearn_ham": False})
    return config


def offline_services(config: Config) -> Services:
    """The services of *config* without the greylist check: it would record triplets
    in the store and defer every new message.  The ``[actions] greylist`` threshold
    stays (the configuration refuses it without greylisting): a message scoring at it
    gets ``greylist``, the milter's answer to a first attempt."""
    services = build(config)
    services.checks[:] = [check for check in services.checks if not isinstance(check, Greylist)]
    return services


def exit_status(judgements: Iterable[CheckedMessage]) -> int:
    """0 when every message is accepted, else 10 + the rank of the most severe action; 1 on a read error."""
    worst = Action.ACCEPT
    for item in judgements:
        if item.error:
            return EXIT_UNREADABLE
        worst = max(worst, item.action)
    return 0 if worst == Action.ACCEPT else EXIT_BASE + int(worst)


# --- message files ------------------------------------------------------------------
def _collect(paths: Iterable[Path]) -> tuple[list[MessageRef], list[str]]:
    refs: list[MessageRef] = []
    problems: list[str] = []
    for path in paths:
        try:
            found = list(sources(path))
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a broken mbox index
            problems.append(f"{path}: cannot read: {exc}")
            continue
        if not found:
            problems.append(f"{path}: no message found")
        refs.extend(found)
    return refs, problems


def _run(refs: list[MessageRef], pipeline: Pipeline, client: Client, progress: "Progress") -> Iterable[CheckedMessage]:
    for ref in refs:
        progress.step(ref.label)
        try:
            raw = ref.load()
        except Exception as exc:  # noqa: BLE001
            yield CheckedMessage(ref.label, Action.ACCEPT, 0.0, {}, {}, error=f"cannot read: {exc}")
            continue
        why = no_mail(raw[:HEAD_SIZE])
        if why:
            # A file named on the command line is read whatever it holds: a compressed or empty one was judged (a
            # spam mbox.gz one missed spam, the rates counted it), where learn refuses it.
            yield CheckedMessage(ref.label, Action.ACCEPT, 0.0, {}, {}, error=f"not a mail message ({why})")
            continue
        yield check_message(pipeline, raw, client, ref.label)
    progress.done()


def _check_files(args: argparse.Namespace, services: Services, pipeline: Pipeline, client: Client) -> int:
    refs, problems = _collect(args.paths)
    for problem in problems:
        print(f"milterd: {escape(problem)}", file=sys.stderr)
    progress = Progress(len(refs), args.progress)
    judgements = list(_run(refs, pipeline, client, progress))
    owners = {s.name: s for s in symbol_table(services)}
    actions = services.config.actions
    if args.json:
        out = {
            "thresholds": {key: value for key, value in actions.model_dump().items() if key in ("add_header", "rewrite_subject", "greylist", "quarantine", "reject")},
            "messages": [_judgement_json(j, services, owners) for j in judgements],
            "summary": dict(Counter(j.action.label if not j.error else "error" for j in judgements)),
        }
        # ASCII (non-ASCII as \u escapes): UTF-8 whatever the locale (RFC 8259 §8.1), a file name or
        # detail that is not UTF-8 (surrogateescape) cannot stop the output, no raw C1 control on a terminal.
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        thresholds = ", ".join(f"{'/'.join(names)} {value:g}" for value, names in sorted(configured_thresholds(actions).items()))
        for item in judgements:
            _explain(item, services, owners, thresholds if len(judgements) == 1 else "")
        if len(judgements) > 1:
            counts = Counter(j.action.label if not j.error else "error" for j in judgements)
            print(f"{len(judgements)} messages: " + ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])))
            print(f"thresholds: {thresholds}")
    # A file named that could not be read is as a message that could not be (it was left out unsaid: 0 with the others accepted).
    return EXIT_UNREADABLE if problems else exit_status(judgements)


def _judgement_json(item: CheckedMessage, services: Services, owners: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": item.label, "action": item.action.label, "score": item.score, "reason": item.reason, "reply": item.reply,
        "stage": item.stage, "forced_by": item.forced, "x_spam_status": item.spam_status, "scored": item.scored, "error": item.error,
        "symbols": [
            {"symbol": name, "score": score, "check": owners[name].check if name in owners else "", "description": services.describe(name), "detail": item.details.get(name, "")}
            for name, score in sorted(item.symbols.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


def _explain(item: CheckedMessage, services: Services, owners: dict[str, Any], thresholds: str) -> None:
    # The file name, details, reasons and replies carry the message's own text: escaped, so that
    # a crafted message cannot move the terminal's cursor or fake lines of this report.
    label = escape(item.label)
    if item.error:
        print(f"{label}: error: {escape(item.error)}")
        return
    if item.scored:
        print(f"{label}: {item.action.label} (score {item.score:g})")
    else:
        print(f"{label}: {item.action.label} (not scored: trusted or authenticated client; no threshold applies, "
              f"no X-Spam-* header is added; its symbols add up to {item.score:g})")
    for name, score in sorted(item.symbols.items(), key=lambda kv: (-kv[1], kv[0])):
        owner = owners[name].check if name in owners else "pipeline" if name in PIPELINE_DESCRIPTIONS else "?"
        detail = escape(item.details.get(name, ""))
        described = services.describe(name) or PIPELINE_DESCRIPTIONS.get(name, "")
        print(f"  {score:7.2f}  {escape(name):28} {owner:10} {described}{f' [{detail}]' if detail else ''}")
    reply = escape(item.reply) if item.reply else ""
    if item.forced:
        print(f"  forced by {item.forced} at {item.stage}" + (f": {reply}" if reply else ""))
    elif item.reason:
        print(f"  {escape(item.reason)}")
    if reply and not item.forced:
        print(f"  reply: {reply}")
    if thresholds:
        print(f"  thresholds: {thresholds}")


# --- mass check ---------------------------------------------------------------------
def _labelled(args: argparse.Namespace) -> tuple[list[tuple[str, str, MessageRef]], int]:
    """(kind, folder, message) of every message of --ham and --spam, and how many folders could not be read (each said)."""
    labelled: list[tuple[str, str, MessageRef]] = []
    unread = 0
    for kind, folders in (("ham", args.ham), ("spam", args.spam)):
        for folder in folders:
            refs, problems = _collect([folder])
            for problem in problems:
                print(f"milterd: {escape(problem)}", file=sys.stderr)
            unread += bool(problems)
            labelled.extend((kind, str(folder), ref) for ref in refs)
    return labelled, unread


def _judge_all(labelled: list[tuple[str, str, MessageRef]], pipeline: Pipeline, client: Client, progress: "Progress", config: Config) -> tuple[list[Judged], int]:
    """The judged messages, and how many could not be judged."""
    items: list[Judged] = []
    errors = 0
    for kind, folder, ref in labelled:
        progress.step(ref.label)
        try:
            item = check_message(pipeline, ref.load(), client, ref.label)
        except Exception as exc:  # noqa: BLE001
            item = CheckedMessage(ref.label, Action.ACCEPT, 0.0, {}, {}, error=str(exc))
        if item.error:
            errors += 1
            continue
        if item.action == Action.TEMPFAIL:
            # A 451 judged nothing (a scanner down with on_error = "tempfail", a spool unread): counted as
            # not judged, never as spam caught or ham flagged.
            print(f"milterd: check: {escape(ref.label)}: answered {escape(item.reply or '451')} ({escape(item.reason)}): not judged", file=sys.stderr)
            errors += 1
            continue
        # Forced by a hit (a banned file also over the reject threshold) or more severe than the thresholds choose:
        # flagged at any threshold, as the milter refuses it whatever reject is set to.
        action: Action = item.action
        if action == Action.GREYLIST:
            # [actions] greylist (score mode): delivered once retried, then as the other thresholds choose.
            action = threshold_action(item.score, config.actions.model_copy(update={"greylist": False}))
        forced = bool(item.forced) or forced_action(action, item.score, config.actions)
        items.append(Judged(kind, folder, ref.label, item.score, action.label, item.symbols, forced, item.scored))
    return items, errors


def _mass_check(args: argparse.Namespace, services: Services, pipeline: Pipeline, client: Client) -> int:
    labelled, unread = _labelled(args)
    if not labelled:
        print("milterd: check: no message found", file=sys.stderr)
        return 1
    progress = Progress(len(labelled), args.progress)
    actions = services.config.actions
    items, errors = _judge_all(labelled, pipeline, client, progress, services.config)
    progress.done()
    return _reported(args, mass_report(items, actions), unread, errors)


def _reported(args: argparse.Namespace, report: dict[str, Any], unread: int, errors: int, heading: str = "") -> int:
    """Print a mass check's *report* (``--json``: as one object; else under *heading*, if any) and give the exit
    status: EXIT_UNREADABLE when a folder or message could not be read (*unread*) or judged (*errors*), since the
    rates leave it out (a --spam folder misspelt reported 0/0 caught, status 0); else 0."""
    report["errors"] = errors
    if args.json:
        json.dump(report, sys.stdout, indent=1)  # ASCII: see _check_files
        sys.stdout.write("\n")
    else:
        if heading:
            print(heading)
        print_mass_report(report)
    return EXIT_UNREADABLE if unread or errors else 0


def print_mass_report(report: dict[str, Any]) -> None:
    """The mass-check report for people."""
    print(f"{'folder':48} {'kind':4} {'msgs':>6} {'flagged':>8} {'%':>7}")
    for folder in report["folders"]:
        print(f"{_tail(folder['folder'], 48):48} {folder['kind']:4} {folder['messages']:6} {folder['flagged']:8} {folder['rate']:6.2f}%")
    spam, ham = report["overall"]["spam"], report["overall"]["ham"]
    print()
    print(f"at the configured thresholds: spam caught {spam['rate']:.2f}% ({spam['flagged']}/{spam['messages']}), "
          f"ham flagged {ham['rate']:.2f}% ({ham['flagged']}/{ham['messages']})")
    print()
    print(f"{'score >=':>9}  {'spam caught':>18}  {'ham flagged':>18}  configured as")
    for row in report["thresholds"]:
        print(f"{row['threshold']:9g}  {_pct(row['spam_caught'], spam['scored']):>18}  {_pct(row['ham_flagged'], ham['scored']):>18}  {', '.join(row['actions'])}")
    unscored = report.get("unscored") or {}
    if unscored.get("ham") or unscored.get("spam"):
        print(f"not scored (trusted or authenticated client; no threshold applies): {unscored.get('spam', 0)} spam and "
              f"{unscored.get('ham', 0)} ham, left out of this table")
    for key, title in (("false_positives", "false positives (ham flagged)"), ("misses", "misses (spam not flagged)")):
        group = report[key]
        if not group["messages"]:
            continue
        print()
        print(f"{title}: {group['messages']}; symbols that hit them:")
        for entry in group["symbols"]:
            print(f"  {entry['messages']:6}  {entry['symbol']}")
        for example in group["examples"]:
            tops = " ".join(f"{n}({s:g})" for n, s in sorted(example["symbols"].items(), key=lambda kv: -abs(kv[1]))[:6])
            print(f"  e.g. {example['score']:6.2f} {example['action']:12} {_tail(example['label'], 60)} {tops}")
    if report.get("errors"):
        print(f"\n{report['errors']} messages could not be judged")


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}% ({part})" if whole else "-"


def _tail(value: str, width: int) -> str:
    """The end of *value* escaped, in *width* characters, the cut marked by a leading ``…`` (a path ends
    with its file's name); the cut is made before escaping, so the text never starts inside an escape."""
    text = escape(value)
    if len(text) <= width:
        return text
    keep = width - 1
    while keep > 0 and len(escape(value[-keep:])) > width - 1:  # an escape is longer than what it stands for
        keep -= 1
    return "…" + (escape(value[-keep:]) if keep > 0 else "")


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, mode: str = "auto", width: int = 30) -> None:
        self.total, self.width, self.count = total, width, 0
        self.enabled = mode == "always" or (mode == "auto" and total >= PROGRESS_FROM and sys.stderr.isatty())
        self._every = max(1, total // 200)

    def step(self, label: str) -> None:
        """One more message started."""
        self.count += 1
        if self.enabled and (self.count % self._every == 0 or self.count == self.total):
            filled = self.width * self.count // max(1, self.total)
            sys.stderr.write(f"\r[{'#' * filled}{' ' * (self.width - filled)}] {self.count}/{self.total} {_tail(escape(label), 40):40}")
            sys.stderr.flush()

    def done(self) -> None:
        """Clear the bar."""
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 60) + "\r")
            sys.stderr.flush()
