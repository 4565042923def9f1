"""Send mail through Postfix and account for every message.

:func:`send_one` is an SMTP client that keeps what Postfix answered to each
message (the final reply, the queue id from ``250 … queued as ID``);
:func:`run_load` sends many such messages from several threads, each tagged
with a unique ``X-Load-Id`` header, Subject and Message-ID; :func:`reconcile`
is a pure function that compares what the client was told, what reached the
sink and what milterd logged, and puts every message in exactly one bucket.
The fault suite (``bench/faults``), its CI version and the soak share them.
"""

from __future__ import annotations

import email.utils
import re
import smtplib
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
LOAD_ID = re.compile(rb"^X-Load-Id:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


@dataclass
class SendResult:
    """What the client was told about one message."""

    tag: str
    code: int  # the final reply code; 0 when the connection failed with no reply
    reply: str = ""
    queue_id: str = ""
    stage: str = "data"  # where the final answer came: connect, mail, rcpt, data

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


def send_one(port: int, message: bytes, tag: str, sender: str = "alice@example.org", recipients: Iterable[str] = ("bob@example.com",),
             xclient: dict[str, str] | None = None, timeout: float = 120.0, host: str = "127.0.0.1") -> SendResult:
    """Send *message* in one SMTP session; never raises, returns what the server said."""
    recipients = list(recipients)
    stage = "connect"
    try:
        client = smtplib.SMTP(host, port, local_hostname="client.test", timeout=timeout)
    except (OSError, smtplib.SMTPException) as exc:
        return SendResult(tag, 0, f"connect: {exc}", stage=stage)
    try:
        client.ehlo()
        if xclient:
            args = " ".join(f"{k.upper()}={v}" for k, v in xclient.items())
            code, text = client.docmd("XCLIENT", args)
            if code != 220:
                return SendResult(tag, code, text.decode(errors="replace"), stage="xclient")
            client.ehlo_resp = None
            client.ehlo(xclient.get("HELO", "client.test"))
        stage = "mail"
        code, text = client.mail(sender)
        if code != 250:
            return SendResult(tag, code, text.decode(errors="replace"), stage=stage)
        stage = "rcpt"
        refused: list[tuple[int, bytes]] = []
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            if code not in (250, 251):
                refused.append((code, text))
        if len(refused) == len(recipients):
            code, text = refused[0]
            return SendResult(tag, code, text.decode(errors="replace"), stage=stage)
        stage = "data"
        code, text = client.data(message)
        reply = text.decode(errors="replace")
        found = QUEUED_AS.search(reply)
        return SendResult(tag, code, reply, found.group(1) if found else "", stage=stage)
    except smtplib.SMTPResponseException as exc:
        return SendResult(tag, exc.smtp_code, exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error), stage=stage)
    except (OSError, smtplib.SMTPException) as exc:
        return SendResult(tag, 0, f"{stage}: {exc.__class__.__name__}: {exc}", stage=stage)
    finally:
        try:
            client.quit()
        except Exception:  # noqa: BLE001
            client.close()


def tagged_message(tag: str, size: int = 2000, extra_headers: str = "") -> bytes:
    """A small well-formed message carrying *tag* in X-Load-Id, Subject and Message-ID."""
    body_line = "The quick brown fox jumps over the lazy dog. " * 2 + "\r\n"
    body = body_line * max(1, size // len(body_line))
    head = (
        f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: load {tag}\r\n"
        f"Message-ID: <{tag}@load.example.org>\r\nDate: {email.utils.formatdate()}\r\n"
        f"X-Load-Id: {tag}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n{extra_headers}"
    )
    return (head + "\r\n" + body).encode()


def load_id(data: bytes) -> str:
    """The X-Load-Id of a message as the sink received it ('' if none)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    found = LOAD_ID.search(head)
    return found.group(1).decode(errors="replace") if found else ""


def run_load(port: int, count: int, sessions: int = 4, prefix: str | None = None, make: Callable[[str], bytes] | None = None,
             xclient: dict[str, str] | None = None, during: Callable[[int], None] | None = None, pace: float = 0.0) -> list[SendResult]:
    """Send *count* tagged messages over *sessions* threads; return one result per message.

    *during(n)* is called from the first thread after its n-th message (the
    fault suite injects its fault there); *pace* sleeps between messages.
    """
    prefix = prefix or uuid.uuid4().hex[:8]
    make = make or tagged_message
    tags = [f"{prefix}-{i:06d}" for i in range(count)]
    results: list[SendResult] = []
    lock = threading.Lock()
    cursor = iter(tags)
    xclient = xclient or {"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}

    def worker(first: bool) -> None:
        sent = 0
        while True:
            with lock:
                tag = next(cursor, None)
            if tag is None:
                return
            result = send_one(port, make(tag), tag, xclient=xclient)
            with lock:
                results.append(result)
            sent += 1
            if first and during is not None:
                during(sent)
            if pace:
                time.sleep(pace)

    threads = [threading.Thread(target=worker, args=(i == 0,), daemon=True) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@dataclass
class Reconciliation:
    """Every message in exactly one bucket; ``problems`` explains lost/duplicated/unlogged ones."""

    delivered_once: int = 0
    refused_4xx: int = 0
    refused_5xx: int = 0
    lost: int = 0
    duplicated: int = 0
    unlogged: int = 0
    no_answer: int = 0
    problems: list[str] = field(default_factory=list)
    replies: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.delivered_once + self.refused_4xx + self.refused_5xx + self.lost + self.duplicated

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing duplicated, every accepted message logged."""
        return self.lost == 0 and self.duplicated == 0 and self.unlogged == 0

    def row(self) -> dict[str, int]:
        return {"sent": self.total, "delivered once": self.delivered_once, "refused 4xx": self.refused_4xx,
                "refused 5xx": self.refused_5xx, "lost/duplicated": self.lost + self.duplicated, "unlogged": self.unlogged}


def reconcile(results: Iterable[SendResult], delivered: Iterable[str], logged_queue_ids: Iterable[str],
              discarded_queue_ids: Iterable[str] = ()) -> Reconciliation:
    """Compare what the client was told (*results*), the tags the sink received (*delivered*,
    one entry per delivery) and the queue ids milterd logged.

    * accepted (2xx) and delivered exactly once and logged → ``delivered_once``;
      accepted, not delivered but logged as discarded/quarantined on purpose counts as delivered once
      (it was handled: stored in the quarantine);
    * accepted and never delivered → ``lost``; delivered more than once → ``duplicated``;
    * accepted with no log row for its queue id → ``unlogged`` (in addition to its bucket);
    * refused 4xx / 5xx → the client knows; a refused message that nonetheless reached
      the sink is ``duplicated`` (the client will send it again);
    * no answer at all (connection broken before a reply) → counted as 4xx (the client
      retries: nothing was acknowledged) and in ``no_answer``; reaching the sink too makes it duplicated.
    """
    copies = Counter(delivered)
    logged = set(logged_queue_ids)
    discarded = set(discarded_queue_ids)
    out = Reconciliation()
    for result in results:
        n = copies.get(result.tag, 0)
        out.replies[f"{result.code} {result.reply[:40]}".strip()] += 1
        if result.accepted:
            if result.queue_id and result.queue_id not in logged:
                out.unlogged += 1
                out.problems.append(f"{result.tag}: accepted as {result.queue_id} but not in milterd's log")
            if n == 1 or (n == 0 and result.queue_id in discarded):
                out.delivered_once += 1
            elif n == 0:
                out.lost += 1
                out.problems.append(f"{result.tag}: accepted ({result.reply}) but never delivered")
            else:
                out.duplicated += 1
                out.problems.append(f"{result.tag}: delivered {n} times")
        else:
            if n:
                out.duplicated += 1
                out.problems.append(f"{result.tag}: refused with {result.code} but delivered {n} time(s)")
            elif 500 <= result.code < 600:
                out.refused_5xx += 1
            else:
                out.refused_4xx += 1
                if result.code == 0:
                    out.no_answer += 1
    return out


def wait_delivered(sink_tags: Callable[[], list[str]], results: list[SendResult], timeout: float = 60.0, discarded: Iterable[str] = ()) -> list[str]:
    """Wait until every accepted message has reached the sink (or *timeout*); return the tags seen.

    Messages whose queue id is in *discarded* (logged as discarded or quarantined) are not waited for.
    """
    skip = set(discarded)
    wanted = {r.tag for r in results if r.accepted and r.queue_id not in skip}
    deadline = time.monotonic() + timeout
    while True:
        seen = sink_tags()
        if wanted <= set(seen) or time.monotonic() > deadline:
            time.sleep(0.5)  # a duplicate would arrive right behind the first copy
            return sink_tags()
        time.sleep(0.2)


def sink_tags(messages: list[Any]) -> list[str]:
    """The X-Load-Id of every message a harness Sink holds (one per delivery)."""
    return [t for t in (load_id(m.data) for m in list(messages)) if t]


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
