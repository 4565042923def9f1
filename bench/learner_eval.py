"""milterd's classifier alone on Apache SpamAssassin's public corpus, by the honest protocol of issue #13.

Training (and any tuning): ``spam-1``, ``easy-ham-1`` and the first half,
sorted by file name, of ``hard-ham-1``.  Evaluation: ``spam-2``,
``easy-ham-2`` and the other half of ``hard-ham-1`` (later mail).  The
evaluation folders are never learned and never used to choose a setting.

The model is learned through the real code path (:class:`LearnerStore` on a
scratch SQLite store: digests, executemany upserts) and every evaluation
message is classified as a worker does (tokenizer, the worker's token cache,
batched lookups, :func:`classify`).  CPU is ``time.process_time`` of this
process around each message: tokenizing, lookup and combining for a
classification; tokenizing and the store's transaction for learning.

``--tune`` instead splits the *training* folders in two by file name (first
half learned, second half classified) to show the buckets' spam/ham mix that
the BAYES_* scores before the refits were chosen from (the shipped ones come from
``bench.learner_refit``'s second rule).

``--spamd`` adds SpamAssassin in the same run (a private spamd, ``-L``, no
network tests): its score without Bayes, its score with its own Bayes trained
by ``sa-learn`` on the same training folders, and SpamAssassin's score (no
Bayes) plus milterd's BAYES_* score, at several thresholds.

Usage: ``nice -n 10 .venv/bin/python -m bench.learner_eval [--tune] [--spamd] [--json]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.corpus import fetch, folders, split, to_smtp
from milterd.checks.bayes import SCORES
from milterd.commands.check import learn_scratch
from milterd.config import Config, DatabaseSection, LearnerSection
from milterd.learner.cache import TokenCache
from milterd.learner.classifier import BUCKETS, Counts, bucket, classify
from milterd.learner.tokenizer import hashed_tokens, message_digest
from milterd.milter.offline import sources
from milterd.scanners.spamd import SpamdClient
from milterd.store import Store
from milterd.store.learner import LearnerStore
from tests.harness.scanners import Spamd

CACHE = Path.home() / ".cache" / "milterd-bench"
THRESHOLDS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


def learn_training(url: str, cache: Path = CACHE) -> Counts:
    """Teach the classifier of the (new) store at *url* the training folders (:func:`bench.corpus.split`)
    through milterd's own ``check --train-*`` path; the totals learned.  The corpus-tiers row and the soak use it."""
    training = folders(fetch(cache), "training")
    labelled = [(label, ref) for label in ("spam", "ham") for path in training[label] for ref in sources(path)]
    return learn_scratch(Config().with_changes({"database.url": url}), labelled)


def tuning_split(train: dict[str, list[Path]]) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The training folders cut in two by file name: learn the first halves, classify the second."""
    first = {k: v[: len(v) // 2] for k, v in train.items()}
    second = {k: v[len(v) // 2:] for k, v in train.items()}
    return first, second


def spamd_scores(paths: list[Path], address: str, workers: int = 2) -> list[float]:
    """SpamAssassin's score of each message, asked in *workers* threads."""
    client = SpamdClient(address, timeout=300)

    def one(path: Path) -> float:
        return client.check(to_smtp(path.read_bytes())).score

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def sa_learn(home: Path, learn: dict[str, list[Path]]) -> None:
    """Train spamd's Bayes database under *home* on *learn* (sa-learn, then given to spamd's user)."""
    prefix = home / "bayes" / "bayes"
    for label, paths in learn.items():
        option = "--spam" if label == "spam" else "--ham"
        listing = home / f"{label}.list"
        listing.write_text("".join(f"{path}\n" for path in paths))
        subprocess.run(["sa-learn", f"--dbpath={prefix}", "--no-sync", option, "-f", str(listing)], check=True, capture_output=True)
    subprocess.run(["sa-learn", f"--dbpath={prefix}", "--sync"], check=True, capture_output=True)
    for path in [home / "bayes", *(home / "bayes").iterdir()]:
        shutil.chown(path, "debian-spamd", "debian-spamd")


def with_spamd(learn: dict[str, list[Path]], test: dict[str, list[Path]], probabilities: dict[str, list[float]]) -> dict[str, object]:
    """SpamAssassin without and with its Bayes, and SpamAssassin + milterd's BAYES_* score, on *test*."""
    with tempfile.TemporaryDirectory() as scratch:
        spamd = Spamd(Path(scratch), children=2).start()
        try:
            plain = {label: spamd_scores(paths, spamd.address) for label, paths in test.items()}
            sa_learn(spamd.home, learn)
            trained = {label: spamd_scores(paths, spamd.address) for label, paths in test.items()}
        finally:
            spamd.stop()
    combined = {label: [score + SCORES[bucket(p)] for score, p in zip(plain[label], probabilities[label], strict=True)] for label in test}
    return {name: threshold_rows(scores, (5.0, 6.0, 8.0)) for name, scores in (("spamassassin", plain), ("spamassassin_bayes", trained), ("spamassassin_plus_milterd_bayes", combined))}


def threshold_rows(scores: dict[str, list[float]], thresholds: tuple[float, ...]) -> list[dict[str, float]]:
    """Spam caught and ham flagged (easy, hard, both) at each threshold."""
    hams = scores["ham"] + scores["hard"]
    return [
        {
            "threshold": threshold,
            "spam_caught": 100.0 * sum(p >= threshold for p in scores["spam"]) / len(scores["spam"]),
            "ham_flagged": 100.0 * sum(p >= threshold for p in hams) / len(hams),
            "easy_ham_flagged": 100.0 * sum(p >= threshold for p in scores["ham"]) / len(scores["ham"]),
            "hard_ham_flagged": 100.0 * sum(p >= threshold for p in scores["hard"]) / max(len(scores["hard"]), 1),
        }
        for threshold in thresholds
    ]


def run(learn: dict[str, list[Path]], test: dict[str, list[Path]], max_size: int, spamd: bool = False) -> dict[str, object]:
    """Learn *learn*, classify *test*; detection, false positives, buckets and CPU."""
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(DatabaseSection(url=f"sqlite:///{scratch}/learner.sqlite"))
        store.upgrade()
        repo = LearnerStore(store.engine)
        learn_cpu = 0.0
        learned = 0
        sizes = 0
        for label, paths in learn.items():
            for path in paths:
                raw = to_smtp(path.read_bytes())
                started = time.process_time()
                repo.learn(message_digest(raw), hashed_tokens(raw[:max_size]), "spam" if label == "spam" else "ham")
                learn_cpu += time.process_time() - started
                learned += 1
        totals = repo.totals()
        cache = TokenCache(LearnerSection().cache_size, 3600.0)
        probs: dict[str, list[float]] = {"spam": [], "ham": [], "hard": []}
        buckets: dict[str, Counter[str]] = {"spam": Counter(), "ham": Counter()}
        cpu = 0.0
        for label, paths in test.items():
            for path in paths:
                raw = to_smtp(path.read_bytes())
                sizes += len(raw)
                started = time.process_time()
                tokens = hashed_tokens(raw[:max_size])
                counts = cache.lookup(tokens, time.monotonic(), repo.counts)
                score = classify(tokens, counts, totals)
                cpu += time.process_time() - started
                probs[label].append(score.probability)
                buckets["spam" if label == "spam" else "ham"][score.symbol] += 1
        model_tokens = repo.size()
        store.close()
    hams = probs["ham"] + probs["hard"]
    spams = probs["spam"]
    tested = len(hams) + len(spams)
    rows = threshold_rows(probs, THRESHOLDS)
    return {
        "learned": {"spam": totals.spam, "ham": totals.ham, "messages": learned, "tokens": model_tokens},
        "tested": {"spam": len(spams), "easy_ham": len(probs["ham"]), "hard_ham": len(probs["hard"])},
        "thresholds": rows,
        "buckets": {symbol: {"spam": buckets["spam"][symbol], "ham": buckets["ham"][symbol]} for _, symbol in BUCKETS},
        "cpu_ms_per_classification": 1000.0 * cpu / tested,
        "cpu_ms_per_learned_message": 1000.0 * learn_cpu / learned,
        "mean_size_tested": sizes / tested,
        "cache_hit_share": cache.hits / max(cache.hits + cache.misses, 1),
        **({"spamd": with_spamd(learn, test, probs)} if spamd else {}),
    }


def markdown(result: dict[str, object]) -> str:
    """The result as the tables of bench/RESULTS.md."""
    lines = ["| P(spam) at or above | spam caught | ham flagged | easy ham | hard ham |", "|---|---|---|---|---|"]
    for row in result["thresholds"]:  # type: ignore[attr-defined]
        lines.append(f"| {row['threshold']} | {row['spam_caught']:.1f} % | {row['ham_flagged']:.2f} % | {row['easy_ham_flagged']:.2f} % | {row['hard_ham_flagged']:.1f} % |")
    lines += ["", "| bucket | spam | ham |", "|---|---|---|"]
    for symbol, count in result["buckets"].items():  # type: ignore[attr-defined]
        lines.append(f"| {symbol} | {count['spam']} | {count['ham']} |")
    for name, rows in (result.get("spamd") or {}).items():  # type: ignore[attr-defined]
        lines += ["", f"{name}:", "", "| score at or above | spam caught | ham flagged | easy ham | hard ham |", "|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['threshold']} | {row['spam_caught']:.1f} % | {row['ham_flagged']:.2f} % | {row['easy_ham_flagged']:.2f} % | {row['hard_ham_flagged']:.1f} % |")
    lines += ["", f"learned {result['learned']}, tested {result['tested']}; CPU per classification {result['cpu_ms_per_classification']:.2f} ms "
              f"(mean message {result['mean_size_tested'] / 1024:.1f} KB), per learned message {result['cpu_ms_per_learned_message']:.2f} ms; "
              f"token cache hits {100 * result['cache_hit_share']:.0f} %"]  # type: ignore[operator]
    return "\n".join(lines)


def main() -> None:
    """Run the evaluation (or the tuning split) and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="split the training folders only (for choosing scores)")
    parser.add_argument("--spamd", action="store_true", help="also SpamAssassin (a private spamd), without and with its Bayes, and combined")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    train, test = split(fetch(CACHE))
    if args.tune:
        train, test = tuning_split(train)
    result = run(train, test, LearnerSection().max_size, spamd=args.spamd)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
