"""``milterd learn --spam|--ham|--forget PATH…`` and ``milterd learn --clear``: teach milterd's classifier.

Each PATH is a message file, an mbox, a Maildir or a directory of those (as
``milterd check`` reads them).  Messages are tokenized in ``--jobs`` processes
and counted in the shared store, one transaction per message: learning the
same message twice counts once, learning it with the other label moves it,
``--forget`` removes it; ``--clear`` empties the model.  A progress line is shown on a terminal; the run ends
with a summary (``--json``: one object).  Exit status 1 when a message could
not be read or the store refused it, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from ..config import load_config
from ..learner.classifier import Counts
from ..learner.tokenizer import MAX_DIGEST_READ, hashed_tokens, message_digest
from ..milter.offline import HEAD_SIZE, MessageRef, looks_like_message, sources
from ..store.errors import StoreError
from ..store.learner import LearnerStore
from ..text import escape
from . import config_parent, describe_failure, open_store, whole_number_arg

#: Messages handed to a tokenizing process at once at most,
BATCH = 16
#: and bytes of messages (but always one message, up to MAX_DIGEST_READ bytes of it).
BATCH_BYTES = 4 * 1024 * 1024
#: The most tokenizing processes ``--jobs`` asks for (a larger number made ProcessPoolExecutor raise OverflowError).
MAX_JOBS = 256


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``learn``."""
    parser = sub.add_parser("learn", parents=[config_parent()], help="teach milterd's classifier spam or ham (or forget messages)")
    label = parser.add_mutually_exclusive_group(required=True)
    label.add_argument("--spam", action="store_const", dest="label", const="spam", help="the messages are spam")
    label.add_argument("--ham", action="store_const", dest="label", const="ham", help="the messages are ham (not spam)")
    label.add_argument("--forget", action="store_const", dest="label", const="forget", help="remove what was learned from the messages")
    label.add_argument("--clear", action="store_const", dest="label", const="clear", help="empty the model: every count and learned message (no PATH)")
    parser.add_argument("paths", nargs="*", metavar="PATH", type=Path, help="message files, mboxes, Maildirs or directories of those")
    parser.add_argument("--jobs", type=jobs_arg, default=1, metavar="N", help=f"tokenize in N processes (default 1, at most {MAX_JOBS})")
    parser.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    parser.set_defaults(func=run_learn)


#: argparse type of ``--jobs`` (a huge number made the process pool raise OverflowError).
jobs_arg = whole_number_arg(1, MAX_JOBS, "a number of processes")


def prepare(raw: bytes, max_size: int) -> tuple[str, list[int]]:
    """What is stored of one message: its digest and the hashes of the tokens of its first *max_size* bytes
    in CRLF lines, as the milter classifies them (``[learner] max_size`` of a mailbox's LF file held more
    of its text: words learned past the milter's cut were never looked up for the same message)."""
    start = raw[:max_size].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")[:max_size]
    return message_digest(raw), hashed_tokens(start)


def _prepare_batch(batch: list[bytes], max_size: int) -> list[tuple[str, list[int]]]:
    return [prepare(raw, max_size) for raw in batch]


def _messages(path: Path, errors: Counter[str], failures: list[str]) -> Iterator[MessageRef]:
    """The messages of *path*, taken one at a time: an mbox is open only while its messages are
    read (listing a directory's whole made every mbox in it open at once, and past the open-file
    limit, 1024 by default, each next one unreadable).  A path that cannot be read is reported."""
    found = sources(path)
    while True:
        try:
            ref = next(found)
        except StopIteration:
            return
        except OSError as exc:  # a folder unreadable, or gone since it was named
            errors["unreadable"] += 1
            failures.append(f"{path}: {exc.strerror or exc}")
            return
        yield ref


class UnreadableMessage(Exception):
    """A message that cannot be learned: ``"<its label>: <why>"``."""


def read_message(ref: MessageRef) -> bytes:
    """What learning reads of *ref*: only what :func:`prepare` reads (the digest's bytes; the tokens'
    are fewer).  UnreadableMessage when it cannot be read (a FIFO, a file gone) or is no mail message."""
    try:
        raw = ref.start(MAX_DIGEST_READ)
    except MemoryError:  # what is read is bounded, but 65 MB may still not fit: this message only
        raise UnreadableMessage(f"{ref.label}: not enough memory to read it") from None
    except OSError as exc:  # a FIFO, a file gone (a Maildir's message expunged since the folder was listed)
        raise UnreadableMessage(f"{ref.label}: {exc.strerror or exc}") from None
    if not looks_like_message(raw[:HEAD_SIZE]):
        # A file named on the command line is read whatever it holds: an empty or compressed
        # one would be counted as a message of no (or of random) words.
        raise UnreadableMessage(f"{ref.label}: not a mail message (no header line at its start; compressed?)")
    return raw


def _batches(paths: Iterable[Path], errors: Counter[str], failures: list[str]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for path in paths:
        for ref in _messages(path, errors, failures):
            try:
                raw = read_message(ref)
            except UnreadableMessage as exc:
                errors["unreadable"] += 1
                failures.append(str(exc))
                continue
            batch.append(raw)
            size += len(batch[-1])
            if len(batch) >= BATCH or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


#: Messages in a row the store refused after which a run stops: the store is down (a
#: remote PostgreSQL gone mid-run), and each further message would wait for its own timeout.
MAX_FAILURES_IN_A_ROW = 10
#: Failures kept for the summary (the rest are counted).
MAX_LISTED = 100


def run_learn(args: argparse.Namespace) -> int:
    """Learn or forget every message of the paths (or, with ``--clear``, empty the model); print a summary."""
    if (args.label == "clear") == bool(args.paths):
        print(f"milterd learn: {'--clear takes no PATH' if args.paths else 'at least one PATH is needed'}", file=sys.stderr)
        return 2
    config = load_config(args.config)
    try:
        store = open_store(config)
    except StoreError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 1
    repository = LearnerStore(store.engine)
    if args.label == "clear":
        return _clear(repository, store.close, args.json)
    label: Literal["spam", "ham"] | None = None if args.label == "forget" else args.label
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    progress = sys.stderr.isatty() and not args.json
    run = _Run()
    stop = ""  # why the run stopped early: the store's failure
    totals: Counts | None = None
    # Spawned, not forked: a forked worker held a copy of the store's connection, so a PostgreSQL session killed
    # with its learner stayed open (its transaction's locks too) as long as the orphaned workers lived.
    executor = (ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_worker_start, initargs=(os.getpid(),))
                if args.jobs > 1 else None)
    previous = _stop_on_signals()
    try:
        batches = _batches(args.paths, outcomes, failures)
        prepared: Iterable[list[tuple[str, list[int]]]]
        if executor is not None:
            prepared = _windowed(executor, batches, config.learner.max_size, 4 * args.jobs)
        else:
            prepared = (_prepare_batch(batch, config.learner.max_size) for batch in batches)
        try:
            for results in prepared:
                _learn_batch(repository, results, label, outcomes, failures, run, progress)
        except BrokenProcessPool:
            outcomes["failed"] += 1
            failures.append(f"a tokenizing process died (killed, or out of memory): stopped after {run.done} messages")
        except StoreError as exc:  # the store failed too many messages in a row: what was done is still summed up
            stop = str(exc)
        try:
            totals = repository.totals()
        except StoreError as exc:
            stop = stop or str(exc)
    except _Stopped as stopped:
        print(f"milterd learn: stopped by {signal.Signals(stopped.signum).name} after {run.done} messages", file=sys.stderr)
        return 128 + stopped.signum
    finally:
        _restore_signals(previous)
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        store.close()
    done = run.done
    if progress:
        print(f"\r{done} messages", file=sys.stderr)
    model = None if totals is None else {"spam": totals.spam, "ham": totals.ham}
    summary = {"action": args.label, "messages": done, **{key: outcomes[key] for key in ("learned", "moved", "already", "forgotten", "unknown", "failed", "unreadable")},
               "model": model, "errors": failures[:100], "stopped": stop or None}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for line in failures[:100]:
            print(f"milterd: {escape(line)}", file=sys.stderr)
        if stop:
            print(f"milterd: {stop}", file=sys.stderr)
        counted = ", ".join(f"{outcomes[key]} {key}" for key in ("learned", "moved", "already", "forgotten", "unknown", "failed", "unreadable") if outcomes[key])
        held = "the model's counts could not be read" if totals is None else f"the model holds {totals.spam} spam and {totals.ham} ham"
        print(f"{done} messages: {counted or 'nothing done'}; {held}")
    return 1 if stop or outcomes["failed"] or outcomes["unreadable"] else 0


@dataclass
class _Run:
    """How far a run is: the messages done, and the store's failures in a row."""

    done: int = 0
    in_a_row: int = 0


def _learn_batch(repository: LearnerStore, results: list[tuple[str, list[int]]], label: Literal["spam", "ham"] | None,
                 outcomes: Counter[str], failures: list[str], run: _Run, progress: bool) -> None:
    """Learn (or forget, *label* None) one batch of prepared messages, counted in *run*.  StoreError once
    MAX_FAILURES_IN_A_ROW messages in a row could not be stored."""
    for digest, tokens in results:
        try:
            outcomes[repository.learn(digest, tokens, label)] += 1
            run.in_a_row = 0
        except StoreError as exc:
            outcomes["failed"] += 1
            run.in_a_row += 1
            if len(failures) < MAX_LISTED:
                failures.append(describe_failure(exc))
            if run.in_a_row >= MAX_FAILURES_IN_A_ROW:
                run.done += 1  # this message was tried too
                raise StoreError(f"{run.in_a_row} messages in a row could not be stored, stopping after {run.done} "
                                 f"({outcomes['learned'] + outcomes['moved'] + outcomes['forgotten']} changed the model): "
                                 f"{describe_failure(exc)}") from exc
        run.done += 1
        if progress and run.done % 25 == 0:
            print(f"\r{run.done} messages", end="", file=sys.stderr, flush=True)


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (timeout, systemd, a closed terminal): the run ends as at Ctrl-C, the transaction in hand
    rolled back and the workers stopped, instead of the process ending where it stood and leaving them."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _stop_on_signals() -> list[Any]:
    """Make SIGTERM and SIGHUP end the run through its cleanup (:class:`_Stopped`); the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        return []  # only the main thread may set handlers (a command run from a test's thread)
    return [signal.signal(signum, _raise_stopped) for signum in _STOP_SIGNALS]


def _restore_signals(previous: list[Any]) -> None:
    for signum, handler in zip(_STOP_SIGNALS, previous, strict=False):  # none set from another thread
        signal.signal(signum, handler)


def _worker_start(learner: int) -> None:
    """A tokenizing process's start (*learner*: its parent's pid): it ends with the learner (Linux's
    PR_SET_PDEATHSIG, even when the learner is killed with SIGKILL), and leaves Ctrl-C to it (the terminal sends
    SIGINT to the whole group: each worker printed a KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the pool's own checks stop the worker when it next asks for work
    if os.getppid() != learner:  # the learner died while this process started (spawning takes a second)
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _clear(repository: LearnerStore, close: Callable[[], None], as_json: bool) -> int:
    """Empty the model, as ``sa-learn --clear`` does SpamAssassin's; say what it held (*close*: the store's, called here)."""
    try:
        held = repository.clear()
    except StoreError as exc:
        print(f"milterd: {exc}", file=sys.stderr)
        return 1
    finally:
        close()
    summary = {"action": "clear", "removed": {"spam": held.spam, "ham": held.ham, "tokens": held.tokens, "messages": held.messages}}
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"the model is empty: removed {held.spam} spam and {held.ham} ham counted, {held.tokens} tokens,"
              f" {held.messages} learned messages; the classifier abstains until [learner] min_spam and min_ham are learned again")
    return 0


def _windowed(executor: ProcessPoolExecutor, batches: Iterable[list[bytes]], max_size: int, window: int) -> Iterator[list[tuple[str, list[int]]]]:
    # At most *window* batches, and about *window* × BATCH_BYTES / 4 bytes, in flight: a large
    # Maildir is never read into memory whole, nor a folder of large messages 4 × N batches at once.
    pending: deque[tuple[Future[list[tuple[str, list[int]]]], int]] = deque()
    in_flight, most = 0, window * BATCH_BYTES // 4
    for batch in batches:
        size = sum(len(raw) for raw in batch)
        pending.append((executor.submit(_prepare_batch, batch, max_size), size))
        in_flight += size
        while len(pending) >= window or (len(pending) > 1 and in_flight > most):
            future, size = pending.popleft()
            in_flight -= size
            yield future.result()
    while pending:
        yield pending.popleft()[0].result()
