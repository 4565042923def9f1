"""How a bad milter.conf or rule file is refused, through the command line itself.

Each test runs ``milterd -c FILE rules lint`` (what ``serve`` does before it
starts: :func:`load_config`, then :func:`build`) and expects either success or
exit status 2 with one line on stderr naming the file, the key and the reason,
never a traceback and never a wait.
"""

from __future__ import annotations

import os
import signal
import types
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.cli import main
from milterd.config import MAX_FILE_SIZE, Config, ConfigError, load_config
from milterd.files import read_regular
from milterd.message.model import Envelope
from milterd.message.pipeline import Pipeline
from milterd.milter import supervisor
from milterd.services import build
from milterd.store import StoreError
from milterd.store.engine import refuse_unsafe_store
from tests.harness.pipeline import HAM, run_message

#: Every configuration here asks a resolver on loopback that does not answer, never the system's.
DNS = '[dns]\nnameservers = ["127.0.0.1:9"]\n'


class Hang(Exception):
    """Raised by the alarm: start-up waited instead of refusing."""


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """Turn a start-up that blocks (on a FIFO, say) into a failure after 5 seconds."""

    def alarm(signum: int, frame: types.FrameType | None) -> None:
        raise Hang("start-up blocked")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def lint(conf: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``milterd -c CONF rules lint``."""
    status = main(["-c", str(conf), "rules", "lint"])
    return status, capsys.readouterr().err


def write(directory: Path, conf: str | bytes = DNS, rules: str | bytes | None = None) -> Path:
    """A milter.conf (and rules/local.toml) in *directory*; the milter.conf's path."""
    path = directory / "milter.conf"
    path.write_bytes(conf if isinstance(conf, bytes) else conf.encode())
    if rules is not None:
        (directory / "rules").mkdir(exist_ok=True)
        (directory / "rules" / "local.toml").write_bytes(rules if isinstance(rules, bytes) else rules.encode())
    return path


def refused(conf: Path, capsys: pytest.CaptureFixture[str], file: Path | str, key: str, reason: str) -> str:
    """Check the one-line refusal ``milterd: FILE: KEY: REASON`` with status 2; the line."""
    status, err = lint(conf, capsys)
    assert status == 2, err
    assert "Traceback" not in err
    line, = err.splitlines()
    assert line.startswith(f"milterd: {file}: " + (f"{key}: " if key else "")), line
    assert reason in line, line
    return line


# --- the file itself --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_file_refused_leaves_no_descriptor_open(tmp_path: Path, kind: str) -> None:
    # Was: fdopen() refused a directory without closing the descriptor: each refused reload left one open in
    # the supervisor, inherited by every worker forked after it.
    path = tmp_path / "milter.conf"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(OSError):
            read_regular(path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_fifo_as_milter_conf_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: open() blocked until something wrote to the FIFO, that is for ever.
    conf = tmp_path / "milter.conf"
    os.mkfifo(conf)
    refused(conf, capsys, conf, "", "not a regular file")


def test_a_fifo_in_the_rules_directory_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(tmp_path)
    (tmp_path / "rules").mkdir()
    os.mkfifo(tmp_path / "rules" / "local.toml")
    refused(conf, capsys, tmp_path / "rules" / "local.toml", "", "not a regular file")


def test_a_device_is_not_read_as_milter_conf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: /dev/null read as an empty file (defaults silently), /dev/zero read until the memory ran out.
    conf = tmp_path / "milter.conf"
    conf.symlink_to(os.devnull)
    refused(conf, capsys, conf, "", "not a regular file")


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(tmp_path, DNS + "#" * 100 + "\n")
    with open(conf, "ab") as handle:
        handle.write((b"#" + b"x" * 1023 + b"\n") * (MAX_FILE_SIZE // 1024 + 1))
    refused(conf, capsys, conf, "", "larger than 16 MiB")


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda d: (d / "milter.conf").mkdir(), "Is a directory"),
        (lambda d: (d / "milter.conf").symlink_to(d / "nowhere"), "No such file or directory"),
        (lambda d: (d / "milter.conf").write_bytes(b"[milter]\nhostname = \"caf\xe9\"\n"), "not UTF-8 (byte 25)"),
        (lambda d: (d / "milter.conf").write_bytes(b"[milter]\nhostname = \"a\x00\"\n"), "(at line 2, column 14)"),
        (lambda d: (d / "milter.conf").write_text("[milter]\nworkers = 1\nworkers = 2\n"), "(at line 3, column"),
        (lambda d: (d / "milter.conf").write_text("[milter\n"), "(at line 1, column 8)"),
    ],
)
def test_an_unusable_file_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, reason: str) -> None:
    setup(tmp_path)
    refused(tmp_path / "milter.conf", capsys, tmp_path / "milter.conf", "", reason)


# --- [rules] dir ------------------------------------------------------------------------------
def test_a_nul_in_the_rules_directory_is_refused_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: ValueError: embedded null byte, a traceback out of main().
    conf = write(tmp_path, DNS + '[rules]\ndir = "rules\\u0000x"\n')
    refused(conf, capsys, conf, "[rules] dir", "null byte")


def test_a_dangling_rules_link_is_refused_not_read_as_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: the default "rules" may be absent, and a link to a missing directory counted as
    # absent: the site's rules (re-weights, disabled zones) silently not loaded.
    conf = write(tmp_path)
    (tmp_path / "rules").symlink_to(tmp_path / "moved-away")
    refused(conf, capsys, conf, "[rules] dir", "is a symbolic link to")


def test_a_rules_link_loop_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: RuntimeError: Symlink loop (Python 3.11's Path.resolve), a traceback from lint, doctor and serve.
    conf = write(tmp_path)
    (tmp_path / "rules").symlink_to(tmp_path / "rules")
    refused(conf, capsys, conf, "[rules] dir", "unusable: Too many levels of symbolic links")


def test_a_store_link_loop_is_refused_naming_the_database_key(tmp_path: Path) -> None:
    # Was: RuntimeError: Symlink loop, a traceback from serve before the socket was opened.
    (tmp_path / "log.sqlite").symlink_to(tmp_path / "log.sqlite")
    config = load_config(write(tmp_path, DNS + f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n'))
    with pytest.raises(ConfigError, match=r"\[database\] url: .*log.sqlite: Too many levels of symbolic links"):
        supervisor.check_writable(config)
    supervisor.hand_over_store(config)  # makes nothing, raises nothing: check_writable said what is wrong
    if os.geteuid() == 0:
        with pytest.raises(StoreError, match="Too many levels of symbolic links"):
            refuse_unsafe_store(tmp_path / "log.sqlite")


@pytest.mark.parametrize(("table", "where", "reason"), [
    ('[milter]\nlocal_domains = ["example.org", "@example.com"]', "[milter] local_domains", "'@example.com' is not a domain name"),
    ('[milter]\nlocal_domains = ["*.example.net"]', "[milter] local_domains", "'*.example.net' is not a domain name"),
    ('[checks.helo]\nour_names = [".example.org"]', "[checks.helo] our_names", "'.example.org' is not a domain name"),
    ('[checks.helo]\nour_addresses = ["192.0.2.0/24"]', "[checks.helo] our_addresses", "'192.0.2.0/24' is not an IP address"),
    ('[checks.helo]\nour_addresses = ["[192.0.2.1]"]', "[checks.helo] our_addresses", "'[192.0.2.1]' is not an IP address"),
])
def test_an_entry_that_can_never_match_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, where: str, reason: str) -> None:
    # Was: accepted silently: forged mail from ceo@example.com passed the local-domain spoof check unscored, a HELO
    # claiming one of our addresses was not HELO_CLAIMS_OURS.
    conf = write(tmp_path, DNS + table + "\n")
    refused(conf, capsys, conf, where, reason)


def test_domains_and_addresses_in_their_written_forms_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(tmp_path, DNS + '[milter]\nlocal_domains = ["example.org", "B\u00fccher.de", "mail.example.org."]\n'
                 '[checks.helo]\nour_names = ["mx.example.org"]\nour_addresses = ["192.0.2.1", "2001:db8::25"]\n')
    assert lint(conf, capsys)[0] == 0


@pytest.mark.parametrize(("rules", "key", "reason"), [
    ('[[dnsbl]]\nname = "TEMPFAIL"\nzone = "bl.example"\nscore = 4\n', "dnsbl DNSBL_TEMPFAIL", "symbol DNSBL_TEMPFAIL is one of milterd's own: name the zone otherwise"),
    ('[[uribl]]\nname = "UNREAD"\nzone = "ubl.example"\nscore = 4\n', "uribl URIBL_UNREAD", "symbol URIBL_UNREAD is one of milterd's own: name the list otherwise"),
])
def test_a_list_named_as_a_built_in_symbol_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], rules: str, key: str, reason: str) -> None:
    # Was: accepted; the list's score replaced the built-in symbol's (DNSBL_TEMPFAIL 0 became 4: every resolver
    # timeout scored as a listing).
    conf = write(tmp_path, rules=rules)
    refused(conf, capsys, tmp_path / "rules" / "local.toml", key, reason)


@pytest.mark.parametrize(("value", "reason"), [("true", "expected a duration"), ("inf", "must be a finite duration"), ("1e308", "must be at most 3650d")])
def test_archive_process_seconds_is_a_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, reason: str) -> None:
    # Was a plain float, the only one: true was 1 second, inf and 1e308 were taken.
    conf = write(tmp_path, DNS + f"[checks.attachments]\narchive_process_seconds = {value}\n")
    refused(conf, capsys, conf, "[checks.attachments] archive_process_seconds", reason)


def test_thresholds_no_score_can_reach_are_said_at_lint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: OK without a word; with reject = 5 and quarantine = 12 a score of 13 was rejected, nothing quarantined.
    status, err = lint(write(tmp_path, DNS + "[actions]\nreject = 5\nquarantine = 12\nrewrite_subject = false\nadd_header = 4\n"), capsys)
    assert status == 0
    assert err.splitlines() == [f"milterd: warning: {tmp_path / 'milter.conf'}: [actions] quarantine = 12 is at or above reject = 5: "
                                "no message reaches quarantine by its score (reject comes first)"]


@pytest.mark.parametrize(("dkim", "reason"), [
    ("enabled = false", "[checks.dmarc] needs the DKIM check's results"),
    ("max_signatures = 0", "[checks.dmarc] needs the DKIM check's results"),
    ("skip_trusted = true\n[checks.dmarc]\nskip_trusted = false", "[checks.dmarc] skip_trusted = false needs [checks.dkim] skip_trusted = false"),
])
def test_dmarc_without_the_dkim_results_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], dkim: str, reason: str) -> None:
    # Was: accepted; a genuine signature aligned with a p=reject From domain was "no DKIM pass", and a forwarded
    # message (SPF not aligned) was rejected.
    conf = write(tmp_path, DNS + f"[checks.dkim]\n{dkim}\n")
    refused(conf, capsys, conf, "checks", reason)
    status, _ = lint(write(tmp_path, DNS + "[checks.dkim]\nenabled = false\n[checks.dmarc]\nenabled = false\n"), capsys)
    assert status == 0


def test_an_absent_default_rules_directory_still_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = lint(write(tmp_path), capsys)
    assert (status, err) == (0, "")


def test_an_unreadable_rules_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: Path.glob lists a directory it may not read as empty: no local rule loaded, nothing said.
    # (Tests run as root, who reads every directory: the refusal is simulated.)
    conf = write(tmp_path, rules='[symbols]\nHDR_NUL = 9\n')
    rules = tmp_path / "rules"
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == rules:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    refused(conf, capsys, rules, "", "Permission denied")


# --- values -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nameserver", "reason"),
    [("x", "'x' does not appear to be an IPv4 or IPv6 address"), ("127.0.0.1:99999", "not a port"), ("", "does not appear")],
)
def test_a_bad_nameserver_is_refused_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str], nameserver: str, reason: str) -> None:
    # Was: accepted; the first DNS lookup of each worker raised ValueError and every DNS check failed.
    conf = write(tmp_path, f'[dns]\nnameservers = ["127.0.0.1", "{nameserver}"]\n')
    refused(conf, capsys, conf, "[dns] nameservers", reason)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("dns", "timeout", "1e12"), ("dns", "timeout", '"999999999d"'), ("greylist", "expire", "1e300"), ("checks.headers", "date_past", '"100000w"')],
)
def test_a_duration_no_clock_holds_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str, value: str) -> None:
    # Was: accepted; socket.settimeout() and date arithmetic then raised OverflowError in every message.
    extra = "" if section == "dns" else DNS
    conf = write(tmp_path, f"{extra}[{section}]\n{key} = {value}\n" + ('nameservers = ["127.0.0.1:9"]\n' if section == "dns" else ""))
    where = f"[{section}] {key}"
    refused(conf, capsys, conf, where, "must be at most 3650d")


def test_ten_years_is_still_a_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = lint(write(tmp_path, DNS + '[quarantine]\nretention = "3650d"\n[learner]\ntoken_expiry = "520w"\n'), capsys)
    assert (status, err) == (0, "")


def test_a_busy_timeout_sqlite_would_wrap_to_zero_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: 25 days is 2,160,000,000 ms, past a C int: SQLite took it as 0, no waiting for a lock at all.
    conf = write(tmp_path, DNS + '[database]\nbusy_timeout = "25d"\n')
    refused(conf, capsys, conf, "[database] busy_timeout", "at most 24d")
    status, _ = lint(write(tmp_path, DNS + '[database]\nbusy_timeout = "24d"\n'), capsys)
    assert status == 0


def test_a_key_inside_a_list_of_tables_is_named_where_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: "[dkim_signing] keys.key_file[0]", the index after the wrong name.
    conf = write(tmp_path, DNS + '[dkim_signing]\nkeys = [{ domain = "example.org", selector = "s1" }]\n')
    refused(conf, capsys, conf, "[dkim_signing] keys[0].key_file", "Field required")


@pytest.mark.parametrize(
    ("conf", "key", "reason"),
    [
        ("[milter]\nworkers = -1\n", "[milter] workers", "greater than or equal to 0"),
        ("[milter]\nworkers = 1e400\n", "[milter] workers", "finite"),
        ('[milter]\nsocket = ""\n', "[milter] socket", "is not a milter socket"),
        ('[milter]\nsocket = ["inet:8895@127.0.0.1"]\n', "[milter] socket", "valid string"),
        ('[milter]\nshutdown_timeout = "-1s"\n', "[milter] shutdown_timeout", "expected a duration"),
        ('[milter]\nshutdown_timeout = "1e309s"\n', "[milter] shutdown_timeout", "expected a duration"),
        ('[milter]\nshutdown_timeout = "0x10"\n', "[milter] shutdown_timeout", "expected a duration"),
        ('[milter]\nspool_memory = "10MB"\n', "[milter] spool_memory", "expected a size"),
        ("[milter]\nspool_memory = nan\n", "[milter] spool_memory", "finite"),
        ('[milter]\ntrusted_networks = "127.0.0.1"\n', "[milter] trusted_networks", "valid list"),
        ("milter = 3\n", "milter", "valid dictionary"),
        ("[miltr]\nworkers = 1\n", "miltr", "unknown key (misspelt?)"),
        ("[milter]\nworker = 1\n", "[milter] worker", "unknown key (misspelt?)"),
        ("[actions]\nreject = nan\n", "[actions] reject", "finite"),
    ],
)
def test_a_wrong_value_is_refused_with_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], conf: str, key: str, reason: str) -> None:
    path = write(tmp_path, conf + DNS)
    refused(path, capsys, path, key, reason)


@pytest.mark.parametrize(
    ("rules", "key", "reason"),
    [
        ('[[rule]]\nname = "AB"\nbody = "("\n', "rule AB.body", "bad regular expression"),
        ('[[rule]]\nname = "HDR_NUL"\nbody = "x"\n', "rule HDR_NUL", "a built-in check already emits this symbol"),
        ('[symbols]\nHDR_NUL = "2"\n', "symbols.HDR_NUL", "score must be a number"),
        ("[symbols]\nHDR_NUL = inf\n", "symbols.HDR_NUL", "finite"),
        ('[[rule]]\nname = "AB"\nmeta = "NOBODY"\n', "rule AB.meta", "unknown symbol NOBODY"),
        ("[nosuch]\na = 1\n", "nosuch", "unknown section"),
        ('[[rule]]\nname = "AB"\nbody = "x"\n[[rule]]\nname = "AB"\nbody = "y"\n', "rule AB", "already defined"),
        ("[[rule]\n", "", "(at line 1, column 7)"),
    ],
)
def test_a_bad_rule_file_is_refused_with_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], rules: str, key: str, reason: str) -> None:
    conf = write(tmp_path, rules=rules)
    refused(conf, capsys, tmp_path / "rules" / "local.toml", key, reason)


# --- rule files -------------------------------------------------------------------------------
def test_a_single_dnsbl_table_disables_by_name_as_an_array_table_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: [dnsbl] (one table, which the rule files otherwise take as one [[dnsbl]]) skipped the
    # merge by name: "dnsbl BARRACUDA.enabled: unknown key" for what [[dnsbl]] accepts.
    conf = write(tmp_path, rules='[dnsbl]\nname = "BARRACUDA"\nenabled = false\n')
    status, err = lint(conf, capsys)
    assert (status, err) == (0, "")
    assert main(["-c", str(conf), "config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "b.barracudacentral.org" not in shown.replace("disabled", "")  # the zone is gone, not looked up
    assert "BARRACUDA" in shown and "disabled" in shown


def test_a_single_dnswl_table_with_a_shipped_name_replaces_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(tmp_path, rules='[dnswl]\nname = "ORG"\nzone = "list.example"\nscore = -1.0\n')
    status, err = lint(conf, capsys)
    assert (status, err) == (0, "")
    assert main(["-c", str(conf), "config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "list.example" in shown and "list.dnswl.org" not in shown


def test_a_size_no_read_can_take_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: accepted; reading that many bytes of a message (the classifier's max_size) raised
    # OverflowError for every message.
    conf = write(tmp_path, DNS + "[learner]\nmax_size = 100000000000000000000\n")
    refused(conf, capsys, conf, "[learner] max_size", 'must be at most "1024G"')
    assert lint(write(tmp_path, DNS + '[learner]\nmax_size = "512K"\n'), capsys) == (0, "")


def test_a_max_text_no_read_can_take_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: accepted; the message text (4 × max_text bytes) could then never be read and every
    # body and URI rule silently missed every message.
    conf = write(tmp_path, rules='[custom]\nmax_text = "9999999999G"\n[[rule]]\nname = "AB"\nbody = "x"\n')
    refused(conf, capsys, tmp_path / "rules" / "local.toml", "custom.max_text", 'must be at most "1024G"')


def test_a_rules_dir_that_is_a_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: "milterd: /…/rules: the rules path is not a directory", naming neither milter.conf nor the key.
    conf = write(tmp_path)
    (tmp_path / "rules").write_text("[symbols]\n")
    refused(conf, capsys, conf, "[rules] dir", f"{tmp_path / 'rules'} is not a directory")


def test_a_newline_in_a_value_does_not_split_the_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: "…/a" and "b does not exist" on two lines: the value's newline printed as it is.
    conf = write(tmp_path, DNS + '[rules]\ndir = "a\\nb"\n')
    refused(conf, capsys, conf, "[rules] dir", f"{tmp_path}/a\\nb does not exist")


@pytest.mark.parametrize(
    ("conf", "key"),
    [("[milter]\nmax_headers = true\n", "[milter] max_headers"), ("[greylist]\nnetmask_v4 = false\n", "[greylist] netmask_v4"), ("[checks.attachments]\narchive_max_depth = true\n", "[checks.attachments] archive_max_depth")],
)
def test_a_boolean_for_a_count_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], conf: str, key: str) -> None:
    # Was: taken as 1 or 0: max_headers = true refused every message with more than one header field.
    path = write(tmp_path, conf + DNS)
    refused(path, capsys, path, key, "expected a whole number, got ")


def test_booleans_and_numbers_stay_accepted_where_they_belong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = "[milter]\nworkers = 2\nskip_trusted = false\n[actions]\nreject = false\nquarantine = 10\n[checks.dnsbl]\nenabled = false\n" + DNS
    assert lint(write(tmp_path, conf), capsys) == (0, "")


def test_a_max_text_no_worker_can_hold_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: "10G" accepted (under parse_size's 1024G); reading a window of 4 × max_text for a message over
    # spool_memory failed with MemoryError, and its body and URI rules were skipped, unsaid (review, 36th session).
    conf = write(tmp_path, rules='[custom]\nmax_text = "10G"\n[[rule]]\nname = "AB"\nbody = "x"\n')
    refused(conf, capsys, tmp_path / "rules" / "local.toml", "custom.max_text", "at most 16M")
    assert lint(write(tmp_path, rules='[custom]\nmax_text = "16M"\n[[rule]]\nname = "AB"\nbody = "x"\n'), capsys) == (0, "")


def verdict_without_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **changes: object) -> dict[str, str]:
    """The verdict's details for a message whose text cannot be read (MemoryError), through the pipeline."""
    services = build(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'log.sqlite'}", "dns.nameservers": ["127.0.0.1:9"], **changes}))
    services.store.ensure_schema(True)
    pipeline = Pipeline(services)

    def no_memory(self: Envelope, limit: int) -> None:
        raise MemoryError

    monkeypatch.setattr(Envelope, "text", no_memory)
    try:
        outcome, _ = run_message(pipeline, HAM)
    finally:
        pipeline.shutdown()
        services.close()
    return outcome.verdict.details


def test_a_message_whose_text_cannot_be_read_is_logged_with_check_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: a warning, and no hit: the message judged without its body and URI rules, unsaid in its row.
    rules = write(tmp_path, rules='[[rule]]\nname = "BODY_AB"\nbody = "ab"\n').parent / "rules"
    details = verdict_without_text(tmp_path, monkeypatch, **{"checks.uribl.enabled": False, "rules.dir": str(rules)})  # uribl: the other reader
    assert details.get("CHECK_ERROR") == "custom", details


def test_a_message_whose_links_cannot_be_read_says_so_in_uribl_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: a warning only; the row did not say that the message's links were never looked up.
    details = verdict_without_text(tmp_path, monkeypatch)
    assert details.get("URIBL_UNREAD") == "not read: the links could not be read (MemoryError)", details
