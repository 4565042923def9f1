"""The scanners see the whole message, while custom body and URI rules read it too.

At end of message spamd streams the spooled body in a pool thread while the
custom ``body``/``uri`` rules read the same spool on the libmilter thread.
Through the private Postfix, with clamd and spamd on, 20 messages of 50 KB
to 1 MB from 5 concurrent SMTP sessions (some in memory, some spooled to
disk: ``spool_memory`` is 256K) must each be scored by SpamAssassin, never
``SPAMD_ERROR``; the custom rules must find their marker and link at the very
end of every body; and clamd, fed as the body arrives, must find EICAR at the
very end of a 1 MB body.
"""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any, Callable

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.scanners import EICAR, EICAR_NAME, Clamd, Spamd
from tests.harness.stack import Stack

#: An untrusted client: custom rules skip trusted ones.  The DNS-based checks are off (NO_CHECKS).
CLIENT = {"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}
SESSIONS = 5
PER_SESSION = 4
MARKER = "ZZTAILMARKER"
LINK = "https://tail.example.net/the-last-link"

RULES = {
    "tail.toml": f"""
[[rule]]
name = "BODY_TAIL"
body = '{MARKER}'
score = 0.1

[[rule]]
name = "URI_TAIL"
uri = '^https://tail\\.example\\.net/'
score = 0.1
""",
}

WORDS = "meeting report quarter figures budget travel lunch project draft review schedule office team notes".split()


def sections(clamd: Clamd, spamd: Spamd) -> dict[str, dict[str, Any]]:
    """Both scanners on, the DNS-based checks off; big messages really sent to spamd."""
    return with_sections(NO_CHECKS, {
        "milter": {"spool_memory": "256K"},
        "clamav": {"enabled": True, "address": clamd.address, "max_size": "35M", "timeout": 60},
        "spamd": {"enabled": True, "address": spamd.address, "timeout": 240, "max_size": "4M", "cache_size": 0},
        "actions": {"reject": False, "quarantine": False},
    })


def body(size: int, seed: int, tail: str) -> str:
    """About *size* bytes of plain text lines, ending with *tail*."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(11)) + "\r\n"
        lines.append(line)
        total += len(line)
    return "".join(lines) + tail


def test_concurrent_big_messages_are_scanned_whole(make_stack: Callable[..., Stack], clamd: Clamd, spamd: Spamd) -> None:
    stack = make_stack(sections(clamd, spamd), rules=RULES)
    tag = uuid.uuid4().hex[:8]
    count = SESSIONS * PER_SESSION
    sizes = [50_000 + i * (1_000_000 - 50_000) // (count - 1) for i in range(count)]
    virus_index = count - 1  # the 1 MB one
    mails: list[tuple[str, bytes]] = []
    for index, size in enumerate(sizes):
        title = f"whole {tag} {index}"
        tail = f"{MARKER} see {LINK}\r\n"
        if index == virus_index:
            tail += EICAR.decode() + "\r\n"
        mails.append((title, message(subject=title, body=body(size, index, tail))))
    outcomes: dict[str, object] = {}
    lock = threading.Lock()

    def session(number: int) -> None:
        client = stack.postfix.smtp(xclient=CLIENT)
        try:
            for title, raw in mails[number::SESSIONS]:
                try:
                    result: object = client.sendmail("alice@example.org", ["bob@example.com"], raw)
                except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                    result = exc
                with lock:
                    outcomes[title] = result
        finally:
            try:
                client.quit()
            except Exception:  # noqa: BLE001
                pass

    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    virus_title = mails[virus_index][0]
    virus = outcomes[virus_title]
    assert getattr(virus, "smtp_code", None) == 550, f"{virus!r}\n{stack.milterd.stderr()[-3000:]}"
    assert f"Virus found: {EICAR_NAME}" in virus.smtp_error.decode()  # type: ignore[attr-defined]
    accepted = {title: result for title, result in outcomes.items() if title != virus_title}
    assert accepted == {title: {} for title, _ in mails if title != virus_title}, stack.milterd.stderr()[-3000:]

    rows = {r["subject"]: r for r in stack.milterd.log_json() if r["subject"].startswith(f"whole {tag} ")}
    assert sorted(rows) == sorted(title for title, _ in mails)
    for index, (title, raw) in enumerate(mails):
        row = rows[title]
        symbols = row["symbols"]
        assert "SPAMASSASSIN" in symbols and "SPAMD_ERROR" not in symbols, (title, len(raw), symbols, row["details"])
        assert "SPAMD_SKIPPED_SIZE" not in symbols, (title, len(raw))
        assert {"BODY_TAIL", "URI_TAIL"} <= set(symbols), (title, len(raw), symbols)
        assert row["size"] >= len(raw) - 200, (title, row["size"], len(raw))
        if index == virus_index:
            assert row["action"] == "reject" and row["details"]["CLAMAV_VIRUS"].startswith(EICAR_NAME)
        else:
            assert "CLAMAV_VIRUS" not in symbols and "CLAMAV_ERROR" not in symbols and row["action"] != "reject"
    delivered = stack.sink.wait(count - 1, timeout=120, match=lambda m: f"whole {tag} " in m.headers)
    assert len(delivered) == count - 1
    assert all(m.header("X-Virus-Status") == ["Clean"] for m in delivered)
