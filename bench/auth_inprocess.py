#!/usr/bin/env python3
"""The auth row's checks in one process: CPU per message without Postfix, libmilter or the client (issue #14).

    .venv/bin/python bench/auth_inprocess.py                    # 2000 messages, warm caches
    .venv/bin/python bench/auth_inprocess.py --cold 100         # the answer cache emptied every 100 messages
    .venv/bin/py-spy record -o out.svg -- .venv/bin/python bench/auth_inprocess.py   # where it goes

The configuration is the ``auth`` row's (bench/scenarios.py): every check on, the
shipped rules of rules/, the row's own local resolver (unbound + rbldnsd from
bench/auth.py: the signing key, the ``p=reject`` DMARC policy, the list zones with
nothing of ours listed), a fresh SQLite log.  The row's pool of 100 signed 5 KB
messages with a link goes through :func:`milterd.milter.offline.check_message`
(the worker's adapter driven stage by stage, as ``milterd check`` does) from the
row's 100 client addresses.  The figure is ``time.process_time`` per message
over the timed part (every thread of this process, the end-of-message pool's and
the DNS threads' included); a warm-up pass fills the caches first.  This is a
tool for comparing code changes on one machine, not a row of bench/run.py: the
row's msg/s also carries Postfix, the client and the resolver.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import auth, corpus  # noqa: E402
from bench.scenarios import checks_off, learner_off  # noqa: E402
from milterd.config import Config  # noqa: E402
from milterd.message.pipeline import Pipeline  # noqa: E402
from milterd.milter.offline import Client, check_message  # noqa: E402
from milterd.services import build  # noqa: E402
from milterd.store import Store  # noqa: E402


def client_for(index: int) -> Client:
    """The row's client for message *index*: the XCLIENT address and HELO bench.corpus's replay gives it, and its sender."""
    xclient = corpus.client_for("ham", index)
    return Client(addr=xclient["ADDR"], name="", helo=xclient["HELO"], sender=corpus.SENDER, recipients=[auth.RECIPIENT])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages timed (after one warm-up pass over the pool)")
    parser.add_argument("--checks-off", action="store_true", help="the auth-core row's configuration: every check off (the pipeline, adapter and log only)")
    parser.add_argument("--cold", type=int, default=0, help="empty the DNS answer cache every N messages (0: never)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="milterd-authcost-"))
    resolver = auth.start_dns(root)
    try:
        rules = root / "rules"
        rules.mkdir()
        for path in sorted((REPO / "rules").glob("*.toml")):
            (rules / path.name).write_text(path.read_text())
        sections: dict[str, Any] = {
            "dns": {"nameservers": [resolver.nameserver]},
            "milter": {"trusted_networks": []},
            "database": {"url": f"sqlite:///{root / 'log.sqlite'}"},
            "rules": {"dir": str(rules)},
        }
        if args.checks_off:
            sections.update({"checks": checks_off(), **learner_off()})
        config = Config.model_validate(sections)
        Store(config.database).upgrade()  # the schema, as `milterd serve` creates it
        services = build(config)
        pipeline = Pipeline(services, keep_log=True)
        pool = auth.signed_pool(resolver.key, 5120)
        outcomes: Counter[str] = Counter()
        for i, message in enumerate(pool):
            check_message(pipeline, message.data, client_for(i))
        started_cpu, started = time.process_time(), time.perf_counter()
        for i in range(args.messages):
            if args.cold and i % args.cold == 0:
                services.resolver.cache = type(services.resolver.cache)(config.dns.cache_size)
            checked = check_message(pipeline, pool[i % len(pool)].data, client_for(i))
            symbols = checked.symbols
            authenticated = all(s in symbols for s in auth.REQUIRED) and not any(s in symbols for s in auth.FORBIDDEN)
            outcomes["authenticated" if authenticated else "checks off" if args.checks_off else "NOT authenticated"] += 1
        cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
        print(f"{args.messages} messages: {1000 * cpu / args.messages:.3f} ms CPU/msg, {1000 * wall / args.messages:.3f} ms wall/msg"
              f" (cold every {args.cold or 'never'}); {dict(outcomes)}")
        pipeline.shutdown()
        services.close()
        return 0 if outcomes["NOT authenticated"] == 0 else 1
    finally:
        resolver.stop()


if __name__ == "__main__":
    sys.exit(main())
