"""``milterd doctor`` warns when the DNS lists were skipped for (nearly) every client as private
(``[checks.dnsbl] skip_private``): NAT, a proxy or a relay in front of Postfix makes every client
look private, and the lists then silently ask about nobody.

The end-to-end tests run the real ``doctor`` command (``milterd.cli.main``) against a real SQLite
store whose rows are written with :meth:`Store.log_message`, the private clients' symbols given by the
real DNS list check (no resolver needed: a private client is never looked up).  Nothing leaves
loopback: the nameserver is 127.0.0.1:9 and the release target a closed loopback port.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.checks.dnsbl import DnsLists
from milterd.cli import main
from milterd.commands.doctor import PRIVATE_MIN_MESSAGES, SKIPPED_PRIVATE, judge_private_clients, private_client_findings
from milterd.config import load_config
from milterd.message.model import Envelope, Session, Spool
from milterd.message.policy import score_hits
from milterd.services import build
from milterd.store import MessageRecord, Store, utcnow

NAME = "dnsbl skip_private"
ADVICE = (
    " If Postfix sees a NAT gateway, a proxy or a relay instead of the real clients, no DNS list can help, as none lists"
    " a private address: let Postfix see the real client address (smtpd_upstream_proxy_protocol or"
    " postscreen_upstream_proxy_protocol = haproxy behind a proxy, XCLIENT from a relay listed in smtpd_authorized_xclient_hosts, no source NAT in front of it)."
    " If they are your own hosts, list their networks in [milter] trusted_networks (never a proxy's or a NAT gateway's"
    " address: every client would be trusted and not scored). skip_private = false helps only with a list of your own"
    " that knows these networks"
)


# --- the decision (pure) ------------------------------------------------------------------------


def test_every_client_private_warns_with_the_whole_advice() -> None:
    finding = judge_private_clients([("172.17.0.1", 1234 - 1000, 1234 - 1000), ("10.0.0.7", 1000, 1000)], ["127.0.0.0/8", "::1/128"])
    assert finding is not None and finding.name == NAME and finding.status == "warn"
    assert finding.detail == (
        "DNS lists skipped for all of the last 1,234 messages from clients neither trusted nor authenticated (within the last 7 days):"
        " the client address was private (10.0.0.7, 172.17.0.1; DNSBL_SKIPPED_PRIVATE, [checks.dnsbl] skip_private)." + ADVICE
    )


def test_the_threshold_and_the_minimum() -> None:
    trusted = ["127.0.0.0/8"]
    # 90% warns, 89% does not (shown rounded down), fewer than the minimum is not judged at all.
    at = judge_private_clients([("10.0.0.1", 90, 90), ("192.0.2.1", 10, 0)], trusted)
    assert at is not None and at.status == "warn" and at.detail.startswith("DNS lists skipped for 90% (90) of the last 100 messages")
    below = judge_private_clients([("10.0.0.1", 89, 89), ("192.0.2.1", 11, 0)], trusted)
    assert below is not None and below.status == "ok"
    assert below.detail == ("89% (89) of the last 100 messages from clients neither trusted nor authenticated (within the last 7 days)"
                            " came from a private address, which no DNS list is asked about (DNSBL_SKIPPED_PRIVATE)")
    nearly = judge_private_clients([("10.0.0.1", 999, 999), ("192.0.2.1", 1, 0)], trusted)
    assert nearly is not None and nearly.status == "warn" and "99% (999) of the last 1,000 messages" in nearly.detail
    none = judge_private_clients([("192.0.2.1", 60, 0)], trusted)
    assert none is not None and none.status == "ok" and none.detail.startswith("none of the last 60 messages")
    assert PRIVATE_MIN_MESSAGES == 50
    assert judge_private_clients([("10.0.0.1", 49, 49)], trusted) is None
    assert judge_private_clients([("10.0.0.1", 50, 50)], trusted) is not None
    assert judge_private_clients([], trusted) is None


def test_trusted_and_non_ip_clients_are_left_out() -> None:
    counts = [("10.1.2.3", 500, 500), ("", 300, 0), ("localhost", 5, 0), ("192.0.2.9", 40, 0)]
    # 10/8 trusted: only 40 messages are left, too few.
    assert judge_private_clients(counts, ["10.0.0.0/8"]) is None
    # Not trusted: the unix-socket and unparsable clients still do not dilute the share.
    finding = judge_private_clients(counts, ["127.0.0.0/8"])
    assert finding is not None and finding.status == "warn"
    assert "92% (500) of the last 540 messages" in finding.detail and "(10.1.2.3; DNSBL_SKIPPED_PRIVATE" in finding.detail


def test_the_busiest_private_addresses_are_named_and_the_rest_counted() -> None:
    counts = [(f"10.0.0.{i}", i, i) for i in range(1, 8)] + [("fd00::5", 30, 30)]
    finding = judge_private_clients(counts, [])
    assert finding is not None and finding.status == "warn"
    assert "(fd00::5, 10.0.0.7, 10.0.0.6 and 5 more; DNSBL_SKIPPED_PRIVATE" in finding.detail


# --- the store function -------------------------------------------------------------------------


@contextmanager
def _opened(tmp_path: Path) -> Iterator[Store]:
    """The store of the configuration in *tmp_path*, upgraded, closed after use."""
    config = load_config(_write_config(tmp_path))
    store = Store(config.database)
    store.upgrade()
    try:
        yield store
    finally:
        store.close()


def _private_symbols(tmp_path: Path, addr: str) -> tuple[dict[str, float], dict[str, str]]:
    """The symbols and details the real DNS list check gives a client at *addr* (connect and MAIL FROM)."""
    services = build(load_config(tmp_path / "milter.conf"))
    try:
        check = next(c for c in services.checks if isinstance(c, DnsLists))
        session = Session(client_addr=addr, family="inet6" if ":" in addr else "inet")
        hits = [*check.on_connect(session), *check.on_mail(session, Envelope(spool=Spool(1024)))]
        return score_hits(hits, services.weight)
    finally:
        services.close()


def _log(store: Store, tmp_path: Path, addr: str, count: int, *, private: bool, auth_user: str = "", age: dt.timedelta = dt.timedelta()) -> None:
    symbols, details = _private_symbols(tmp_path, addr) if private else ({"SPF_NONE": 0.0, "BAYES_50": 0.0}, {})
    if private:
        assert symbols == {SKIPPED_PRIVATE: 0.0}, symbols
    start = utcnow() - age
    for i in range(count):
        store.log_message(MessageRecord(action="accept", time=start - dt.timedelta(seconds=i), client_addr=addr, auth_user=auth_user,
                                        sender=f"s{i}@example.org", recipients=["bob@example.com"], symbols=dict(symbols), details=dict(details)))


def test_store_counts_per_client_the_newest_unauthenticated_rows_of_the_period(tmp_path: Path) -> None:
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "10.0.0.5", 30, private=True)
        _log(store, tmp_path, "192.0.2.8", 12, private=False, age=dt.timedelta(minutes=1))
        _log(store, tmp_path, "10.0.0.5", 7, private=True, auth_user="alice")  # authenticated: left out
        _log(store, tmp_path, "10.0.0.6", 9, private=True, age=dt.timedelta(days=8))  # before the period
        since = utcnow() - dt.timedelta(days=7)
        assert sorted(store.symbol_counts_by_client(SKIPPED_PRIVATE, since, 1000)) == [("10.0.0.5", 30, 30), ("192.0.2.8", 12, 0)]
        # At most *limit* rows, the newest by time: the public client's rows are older than the newest 30 of 10.0.0.5.
        _log(store, tmp_path, "192.0.2.9", 5, private=False, age=dt.timedelta(hours=1))
        assert sorted(store.symbol_counts_by_client(SKIPPED_PRIVATE, since, 32)) == [("10.0.0.5", 30, 30), ("192.0.2.8", 2, 0)]
        assert store.symbol_counts_by_client("NO_SUCH_SYMBOL", since, 1000) and all(
            hits == 0 for _addr, _rows, hits in store.symbol_counts_by_client("NO_SUCH_SYMBOL", since, 1000))
        assert store.symbol_counts_by_client(SKIPPED_PRIVATE, utcnow() + dt.timedelta(minutes=1), 1000) == []


# --- the real doctor command --------------------------------------------------------------------


def _write_config(root: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    conf = root / "milter.conf"
    if not conf.exists() or extra:
        conf.write_text(
            f'[database]\nurl = "sqlite:///{root}/store.sqlite"\n'
            '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 0.2\n'
            '[learner]\nenabled = false\n'
            '[quarantine]\nrelease_smtp = "127.0.0.1:9"\n'
            f'[rules]\ndir = "{rules}"\n' + extra
        )
    return conf


def _doctor(conf: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["doctor", "-c", str(conf), "--no-postfix", "--json", *args])
    report = json.loads(capsys.readouterr().out)
    return code, report


def _private_finding(report: dict[str, Any]) -> dict[str, str] | None:
    found = [f for f in report["findings"] if f["name"] == NAME]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_doctor_warns_when_every_client_was_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = _write_config(tmp_path)
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "172.17.0.1", 70, private=True)  # Docker's NAT: every client looks like the bridge
        _log(store, tmp_path, "203.0.113.4", 20, private=False, auth_user="alice")  # authenticated: not judged
        _log(store, tmp_path, "127.0.0.1", 20, private=False)  # trusted (the default trusted_networks): not judged
    code, report = _doctor(conf, capsys)
    finding = _private_finding(report)
    assert finding is not None and finding["status"] == "warn", report
    assert finding["detail"] == (
        "DNS lists skipped for all of the last 70 messages from clients neither trusted nor authenticated (within the last 7 days):"
        " the client address was private (172.17.0.1; DNSBL_SKIPPED_PRIVATE, [checks.dnsbl] skip_private)." + ADVICE
    )
    # The text output says the same.
    capsys.readouterr()
    assert main(["doctor", "-c", str(conf), "--no-postfix"]) == code
    lines = [line for line in capsys.readouterr().out.splitlines() if NAME in line]
    assert len(lines) == 1 and lines[0].startswith("WARN") and "DNS lists skipped for all of the last 70 messages" in lines[0]


def test_doctor_says_ok_while_most_clients_are_looked_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = _write_config(tmp_path)
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "192.168.1.20", 30, private=True)  # an own host on the LAN, not listed as trusted
        _log(store, tmp_path, "198.51.100.7", 40, private=False)
    _code, report = _doctor(conf, capsys)
    finding = _private_finding(report)
    assert finding is not None and finding["status"] == "ok", report
    assert finding["detail"].startswith("42% (30) of the last 70 messages from clients neither trusted nor authenticated")


def test_doctor_does_not_judge_too_few_old_authenticated_or_trusted_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = _write_config(tmp_path)
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "10.9.8.7", PRIVATE_MIN_MESSAGES - 1, private=True)
        _log(store, tmp_path, "10.9.8.7", 200, private=True, auth_user="bob")
        _log(store, tmp_path, "10.9.8.6", 300, private=True, age=dt.timedelta(days=8))
    _code, report = _doctor(conf, capsys)
    assert _private_finding(report) is None, report
    # One more recent message: now there are enough to judge.
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "10.9.8.7", 1, private=True)
    _code, report = _doctor(conf, capsys)
    finding = _private_finding(report)
    assert finding is not None and finding["status"] == "warn" and "all of the last 50 messages" in finding["detail"], report
    # Those clients listed as trusted: they are not judged, nothing is left.
    conf = _write_config(tmp_path, '[milter]\ntrusted_networks = ["127.0.0.0/8", "10.9.8.0/24"]\n')
    _code, report = _doctor(conf, capsys)
    assert _private_finding(report) is None, report


@pytest.mark.parametrize("extra", [
    "[checks.dnsbl]\nskip_private = false\n",
    "[checks.dnsbl]\nenabled = false\n",
    None,  # every zone switched off
])
def test_no_finding_while_the_lists_would_not_skip_private_clients(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str | None) -> None:
    conf = _write_config(tmp_path)
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "10.0.0.5", 60, private=True)
    _code, report = _doctor(conf, capsys)
    assert _private_finding(report) is not None  # the same rows warn with the lists on
    if extra is None:
        (tmp_path / "rules" / "off.toml").write_text(
            "".join(f'[[{kind}]]\nname = "{name}"\nenabled = false\n\n' for kind, name in (("dnsbl", "SPAMHAUS"), ("dnsbl", "SPAMCOP"), ("dnsbl", "BARRACUDA"), ("dnswl", "ORG")))
        )
    else:
        _write_config(tmp_path, extra)
    _code, report = _doctor(conf, capsys)
    assert _private_finding(report) is None, report


def test_no_store_yet_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = _write_config(tmp_path)
    _code, report = _doctor(conf, capsys)
    assert _private_finding(report) is None
    assert not (tmp_path / "store.sqlite").exists()


def test_trusted_rows_crowding_the_sample_make_doctor_read_further(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The review's case: 980 newer rows of a trusted relay and 60 older private ones; the first 1,000
    # rows left 20 to judge (under the minimum of 50), so nothing was said.
    conf = _write_config(tmp_path)
    with _opened(tmp_path) as store:
        _log(store, tmp_path, "127.0.0.1", 980, private=False)  # trusted (the default trusted_networks), newest
        _log(store, tmp_path, "172.17.0.1", 60, private=True, age=dt.timedelta(hours=1))
    _code, report = _doctor(conf, capsys)
    finding = _private_finding(report)
    assert finding is not None and finding["status"] == "warn" and "all of the last 60 messages" in finding["detail"], report


def test_an_unusable_database_url_gives_no_traceback_and_no_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The integration suite's case: a port that is no number made Store() raise out of the new check,
    # and doctor printed a traceback (the database finding already says why).
    conf = _write_config(tmp_path)
    conf.write_text(conf.read_text().replace(f"sqlite:///{tmp_path}/store.sqlite", "postgresql+psycopg://milterd:pw@127.0.0.1:notaport/milterd"))
    assert "notaport" in conf.read_text()
    assert private_client_findings(str(conf)) == []


def test_an_unknown_service_user_is_a_finding_not_an_empty_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # doctor --json printed nothing (exit 2) and every other finding was lost (found by review).
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root, where serve looks the user up
    conf = _write_config(tmp_path / "m", '[milter]\nuser = "no_such_user_xyz"\n')
    code, report = _doctor(conf, capsys)
    assert code == 1 and report["status"] == "fail"
    [finding] = [f for f in report["findings"] if f["name"] == "[milter] user"]
    assert finding["status"] == "fail" and "no_such_user_xyz" in finding["detail"]
    assert len(report["findings"]) > 1  # the other checks are still said


def test_places_serve_refuses_are_failed_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # doctor passed setups serve refused to start: a missing spool_dir, a socket path too long or taken by a file,
    # an unknown socket owner or group (found by review).
    taken = tmp_path / "file.sock"
    taken.write_text("")
    for extra, key, said in (
        (f'spool_dir = "{tmp_path / "nospool"}"', "[milter] spool_dir", "no such directory"),
        (f'socket = "unix:{tmp_path / ("d" * 110) / "m.sock"}"', "[milter] socket", "a unix socket's path holds at most 107"),
        (f'socket = "unix:{taken}"', "[milter] socket", "exists and is not a socket"),
        ('socket_owner = "no_such_user_xyz"', "[milter] socket_owner", "no such user"),
        ('socket_group = "no_such_group_xyz"', "[milter] socket_group", "no such group"),
    ):
        if "socket_" in extra:  # read for a unix socket only
            extra += f'\nsocket = "unix:{tmp_path / "ok.sock"}"'
        conf = _write_config(tmp_path / key.strip("[]").replace(" ", "_"), f"[milter]\n{extra}\n")
        code, report = _doctor(conf, capsys)
        found = [f for f in report["findings"] if f["name"] == key]
        assert code == 1 and found and found[0]["status"] == "fail" and said in found[0]["detail"], (extra, report["findings"])


def test_a_tcp_sockets_owner_and_group_are_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # serve gives a TCP socket no owner: an unknown name there is no failure (found by review).
    conf = _write_config(tmp_path / "tcp", '[milter]\nsocket = "inet:127.0.0.1:8895"\nsocket_owner = "nosuchuser"\nsocket_group = "nosuchgroup"\n')
    _code, report = _doctor(conf, capsys)
    assert not [f for f in report["findings"] if f["name"].startswith("[milter] socket_")], report["findings"]
