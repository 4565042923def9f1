"""Malformed milter.conf and rule files: refused with one ConfigError line (file, key, reason), never a traceback.

:func:`start` does what ``milterd serve`` / ``config show`` / ``rules lint`` do
before anything starts (:func:`load_config`, then :func:`build`) for a temporary
directory holding a milter.conf and a rules/ directory; the CLI prints a
ConfigError as ``milterd: FILE: KEY: REASON`` and any other exception as a
traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milterd.config import Config, ConfigError, load_config
from milterd.rulelang import MetaSyntaxError, names, parse
from milterd.services import build

HUGE = "1" + "0" * 400  # a TOML integer no float can hold
LONG_DIGITS = '"' + "9" * 400 + '"'  # a size or duration string whose number is infinite as a float


def start(directory: Path, conf: str | bytes, rules: str | bytes | None = None) -> str | ConfigError:
    """"accepted", or the ConfigError start-up would print; any other exception escapes."""
    path = directory / "milter.conf"
    path.write_bytes(conf if isinstance(conf, bytes) else conf.encode())
    (directory / "rules").mkdir(exist_ok=True)
    if rules is not None:
        local = directory / "rules" / "local.toml"
        local.write_bytes(rules if isinstance(rules, bytes) else rules.encode())
    try:
        build(load_config(path))
    except ConfigError as exc:
        return exc
    return "accepted"


def refused(directory: Path, conf: str | bytes, rules: str | bytes | None = None) -> ConfigError:
    """The ConfigError of a configuration that must be refused, checked to be one line naming its file."""
    result = start(directory, conf, rules)
    assert isinstance(result, ConfigError), f"accepted: {conf!r} {rules!r}"
    line = f"milterd: {result}"
    assert "\n" not in line
    assert Path(result.file).name in ("milter.conf", "local.toml")
    return result


def test_defaults_and_sane_values_are_accepted(tmp_path: Path) -> None:
    assert start(tmp_path, "") == "accepted"
    conf = '[milter]\nsocket = "inet:[::1]:8895"\nsocket_mode = "0600"\n[dns]\ntimeout = "1.5s"\n[actions]\nreject = 1e3\nadd_header = -1\n'
    rules = '[[rule]]\nname = "AB"\nbody = "x{1,3}"\nscore = -2.5\n'
    assert start(tmp_path, conf, rules) == "accepted"


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        # numbers no float holds, and infinite sizes: OverflowError escaped pydantic
        (f"[milter]\nmax_header_size = {HUGE}\n", "[milter] max_header_size"),
        (f"[milter]\nmax_header_size = {LONG_DIGITS}\n", "[milter] max_header_size"),
        ("[clamav]\nmax_size = inf\n", "[clamav] max_size"),
        (f"[dns]\ntimeout = {HUGE}\n", "[dns] timeout"),
        (f"[checks.attachments]\narchive_max_size = {LONG_DIGITS}\n", "[checks.attachments] archive_max_size"),
        (f"[actions]\nreject = {HUGE}\n", "[actions] reject"),
        (f"[learner]\nskip_spamd_above = {HUGE}\n", "[learner] skip_spamd_above"),
        # nan and infinities were accepted: a nan threshold never fires, a nan timeout breaks sockets
        ("[dns]\ntimeout = nan\n", "[dns] timeout"),
        ("[greylist]\ndelay = inf\n", "[greylist] delay"),
        (f"[database]\nbusy_timeout = {LONG_DIGITS}\n", "[database] busy_timeout"),
        ("[actions]\nreject = nan\n", "[actions] reject"),
        ("[actions]\nadd_header = -inf\n", "[actions] add_header"),
        # the socket was parsed only when opened, after validation: a ValueError traceback
        ('[milter]\nsocket = "inet:x"\n', "[milter] socket"),
        ('[milter]\nsocket = "unix:relative/path"\n', "[milter] socket"),
        ('[milter]\nsocket = "localhost:8895"\n', "[milter] socket"),
        # modes chmod cannot take, or that set every bit (-1 is 07777: a world-writable socket)
        ('[milter]\nsocket_mode = "-1"\n', "[milter] socket_mode"),
        ('[milter]\nsocket_mode = "77777777777777777777777"\n', "[milter] socket_mode"),
        # a regular expression re cannot compile for other reasons than re.error
        ('[greylist]\nwhitelist_clients = ["/x{99999999999}/"]\n', "[greylist] whitelist_clients"),
        # an over-long rules directory name: OSError from exists()
        (f"[rules]\ndir = {LONG_DIGITS}\n", "[rules] dir"),
        # not UTF-8
        (b"\xff\xfe[milter]\n", ""),
        # re's other refusals in the rDNS check's patterns
        ('[checks.rdns]\ngeneric_patterns = ["x{99999999999}"]\n', "[checks.rdns] generic_patterns[0]"),
    ],
)
def test_bad_milter_conf_is_refused_in_one_line(tmp_path: Path, conf: str | bytes, key: str) -> None:
    error = refused(tmp_path, conf)
    assert error.key.startswith(key)
    assert Path(error.file).name == "milter.conf"


@pytest.mark.parametrize(
    ("rules", "key"),
    [
        (b"\xff[[rule]]\n", ""),
        (f'[[rule]]\nname = "AB"\nbody = "x"\nscore = {HUGE}\n', "rule AB.score"),
        ('[[rule]]\nname = "AB"\nbody = "x"\nscore = nan\n', "rule AB.score"),
        ('[[rule]]\nname = "AB"\nbody = "x"\nscore = inf\n', "rule AB.score"),
        ('[[rule]]\nname = "AB"\nbody = "x{99999999999}"\n', "rule AB.body"),
        ('[[rule]]\nname = "AB"\nbody = "' + "(?:" * 2000 + "x" + ")" * 2000 + '"\n', "rule AB.body"),
        ('[[rule]]\nname = "AB"\nheader = "Subject"\nregex = "x{99999999999}"\n', "rule AB.regex"),
        ('[[rule]]\nname = "AB"\nmeta = "' + "(" * 2000 + "AB" + ")" * 2000 + '"\n', "rule AB.meta"),
        ('[[rule]]\nname = "AB"\nmeta = "' + "not " * 5000 + 'AB"\n', "rule AB.meta"),
        ("[custom]\nmax_text = inf\n", "custom.max_text"),
        (f"[custom]\nmax_text = {HUGE}\n", "custom.max_text"),
        (f"[custom]\nmax_text = {LONG_DIGITS}\n", "custom.max_text"),
        (f"[symbols]\nHDR_FROM_MISSING = {HUGE}\n", "symbols.HDR_FROM_MISSING"),
        ("[symbols]\nHDR_FROM_MISSING = nan\n", "symbols.HDR_FROM_MISSING"),
        ("[symbols]\nHDR_FROM_MISSING = { score = -inf }\n", "symbols.HDR_FROM_MISSING"),
        ('[[dnsbl]]\nname = "X"\nzone = "z.example"\nscore = inf\n', "dnsbl X.score"),
        (f'[[dnsbl]]\nname = "X"\nzone = "z.example"\nscore = {HUGE}\n', "dnsbl X.score"),
        ('[[dnsbl]]\nname = "X"\nzone = "z.example"\ncodes = [{ name = "A", answers = ["127.0.0.2"], score = nan }]\n', "dnsbl X.codes[0].score"),
    ],
)
def test_bad_rule_file_is_refused_in_one_line(tmp_path: Path, rules: str | bytes, key: str) -> None:
    error = refused(tmp_path, "", rules)
    assert error.key.startswith(key)
    assert Path(error.file).name == "local.toml"


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["(", ")", "!", "&&", "||", " and ", " or ", "not ", "A", "B_2", "$", " "]), max_size=400))
def test_meta_expressions_parse_or_say_why(tokens: list[str]) -> None:
    text = "".join(tokens)
    try:
        tree = parse(text)
    except MetaSyntaxError as exc:
        assert str(exc) and "\n" not in str(exc)  # the reason, for the one line a ConfigError prints
        return
    # Words of the text ("A" then "not " is the symbol "Anot"), never an operator or a parenthesis.
    assert names(tree) and names(tree) <= set(re.findall(r"\w+", text)) - {"and", "or", "not"}


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.sampled_from(["dns.timeout", "clamav.max_size", "actions.reject", "milter.workers", "milter.socket_mode", "milter.socket"]),
    st.one_of(st.integers(min_value=-(10**400), max_value=10**400), st.floats(), st.text(max_size=30), st.booleans(), st.lists(st.integers(), max_size=2)),
)
def test_any_value_is_accepted_or_refused_as_config_error(key: str, value: object) -> None:
    try:
        Config().with_changes({key: value})
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_a_byte_order_mark_is_named_as_the_problem(tmp_path: Path) -> None:
    error = refused(tmp_path, b"\xef\xbb\xbf[milter]\n")
    assert "byte order mark" in error.reason
