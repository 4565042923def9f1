"""Prometheus metrics: scraped from the supervisor after messages through Postfix."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time
import urllib.request
from typing import Callable

import pytest

from tests.conftest import message
from tests.harness.postfix import free_port
from tests.harness.stack import Stack


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def metrics_stack(make_stack: Callable[..., Stack]) -> tuple[Stack, int]:
    port = free_port()
    stack = make_stack({"metrics": {"listen": f"127.0.0.1:{port}"}, "actions": {"reject": 0.5}},
                       {"local.toml": '[[rule]]\nname = "METRICS_REJECT"\nheader = "Subject"\nregex = "reject-me"\nscore = 100\n'})
    return stack, port


def test_counters_after_messages(metrics_stack: tuple[Stack, int]) -> None:
    stack, port = metrics_stack
    trusted = {"ADDR": "127.0.0.1", "NAME": "localhost", "HELO": "localhost"}  # trusted: not scored, accepted
    for i in range(3):
        stack.send(message(subject=f"metrics {i}"), xclient=trusted)
    with pytest.raises(smtplib.SMTPDataError):
        stack.send(message(subject="please reject-me"))
    values = _scrape(port)
    assert values.get('milterd_messages_total{action="accept"}', 0) >= 3, values
    assert values.get('milterd_messages_total{action="reject"}', 0) >= 1, values
    assert values.get('milterd_symbol_hits_total{symbol="METRICS_REJECT"}', 0) >= 1, values
    assert values.get("milterd_eom_seconds_count", 0) >= 4, values
    assert values.get("milterd_transaction_seconds_count", 0) >= 4, values
    # The DNS checks looked answers up in the cache (the hit ratio is hit / (hit + miss)).
    assert values.get('milterd_dns_cache_lookups_total{result="miss"}', 0) > 0, values
    # Both workers served (or at least: the counts are the sum over processes, not one worker's).
    assert sum(v for k, v in values.items() if k.startswith("milterd_messages_total")) == len(stack.milterd.log_json())


def test_worker_restart_counted(metrics_stack: tuple[Stack, int]) -> None:
    stack, port = metrics_stack
    before = _scrape(port).get("milterd_worker_restarts_total", 0)
    os.kill(stack.milterd.workers()[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _scrape(port).get("milterd_worker_restarts_total", 0) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _scrape(port).get("milterd_worker_restarts_total", 0) == before + 1
    stack.send(message(subject="after restart"), xclient={"ADDR": "127.0.0.1", "NAME": "localhost", "HELO": "localhost"})


def test_idle_connections_to_the_metrics_port_are_closed_and_bounded(metrics_stack: tuple[Stack, int]) -> None:
    # Was: each idle connection held a thread and a descriptor of the supervisor for ever; at the descriptor limit
    # the next worker restart (os.pipe: EMFILE) ended the supervisor and every worker.
    stack, port = metrics_stack
    assert stack.milterd.process is not None
    supervisor_fds = f"/proc/{stack.milterd.process.pid}/fd"
    before = len(os.listdir(supervisor_fds))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
    try:
        for conn in idle:
            assert conn.recv(1) == b""  # closed by the server: at once past 16 at a time, else after 5 s idle
    finally:
        for conn in idle:
            conn.close()
    assert _scrape(port)["milterd_worker_restarts_total"] >= 0
    assert len(os.listdir(supervisor_fds)) <= before + 2


def test_bad_listen_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from milterd.config import ConfigError, load_config

    (tmp_path / "m.conf").write_text('[metrics]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "m.conf")
    assert "[metrics] listen" in str(info.value)
