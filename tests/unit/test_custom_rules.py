"""Custom rules: header, body, URI and meta rules, compiled at load, refused when broken."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from milterd.checks.custom import CustomRules
from milterd.config import Config, ConfigError
from milterd.content.mimetext import extract, html_to_text
from milterd.message.pipeline import Pipeline
from milterd.milter.offline import Client, check_message
from milterd.rulelang import MetaSyntaxError, evaluate, parse
from milterd.services import build
from tests.conftest import message

RULES = r"""
[[rule]]
name = "SUBJ_LOTTERY"
header = "Subject"
regex = '(?i)\blottery\b'
score = 3.0
description = "Subject talks about a lottery"

[[rule]]
name = "BODY_WINNER"
body = '(?i)you are a winner'
score = 2.5

[[rule]]
name = "URI_TOP"
uri = '(?i)^https?://[^/]*\.top(/|$)'
score = 1.5

[[rule]]
name = "META_LOTTERY_WIN"
meta = "SUBJ_LOTTERY and (BODY_WINNER or URI_TOP) and not BODY_UNSUBSCRIBE"
score = 4

[[rule]]
name = "BODY_UNSUBSCRIBE"
body = '(?i)unsubscribe'
score = 0.1

[[rule]]
name = "META_OF_META"
meta = "META_LOTTERY_WIN && URI_TOP"
score = 0.5
"""


def make_config(tmp_path: Path, rules: str, conf: str = "") -> Config:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "local.toml").write_text(rules)
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n' + conf)
    from milterd.config import load_config

    return load_config(path)


@pytest.fixture()
def pipeline(tmp_path: Path):
    pipe = Pipeline(build(make_config(tmp_path, RULES)), keep_log=False)
    yield pipe
    pipe.shutdown()


def symbols_of(pipeline: Pipeline, raw: bytes) -> set[str]:
    result = check_message(pipeline, raw, Client(addr="192.0.2.10"))
    assert not result.error, result.error
    return set(result.symbols)


def html_message(subject: str, html: str) -> bytes:
    encoded = base64.encodebytes(html.encode("utf-8")).decode("ascii")
    return message(subject=subject, body=encoded, headers={"Content-Type": "text/html; charset=utf-8", "Content-Transfer-Encoding": "base64"})


def test_header_rule_matches_decoded_subject(pipeline: Pipeline) -> None:
    assert "SUBJ_LOTTERY" in symbols_of(pipeline, message(subject="=?utf-8?q?Your_LOTTERY_prize?="))
    assert "SUBJ_LOTTERY" not in symbols_of(pipeline, message(subject="lotteryless"))


def test_body_rule_sees_base64_html_text(pipeline: Pipeline) -> None:
    raw = html_message("hi", "<p>You are a <b>winner</b>?</p><p>you are a winner</p>")
    assert "BODY_WINNER" in symbols_of(pipeline, raw)
    # Tags are not text: "You are a <b>winner" renders as "You are a winner" too.
    assert "BODY_WINNER" in symbols_of(pipeline, html_message("hi", "<p>You are a <b>winner</b></p>"))
    assert "BODY_WINNER" not in symbols_of(pipeline, message(body="You are a wiener.\r\n"))


def test_body_rule_decodes_quoted_printable_and_charset(pipeline: Pipeline) -> None:
    raw = message(body="you are a=\r\n winner\r\n", headers={"Content-Transfer-Encoding": "quoted-printable", "Content-Type": "text/plain; charset=iso-8859-1"})
    assert "BODY_WINNER" in symbols_of(pipeline, raw)


def test_a_body_rule_anchored_at_line_ends_matches_plain_text_lines(tmp_path: Path) -> None:
    # Was: a plain text part's text kept SMTP's CRLF and "$" matches only before "\n": the rule hit HTML parts only.
    rules = "[[rule]]\nname = \"DEAR_LINE\"\nbody = '(?m)^Dear friend$'\n"
    pipe = Pipeline(build(make_config(tmp_path, rules)), keep_log=False)
    try:
        found = [set(check_message(pipe, raw, Client(addr="192.0.2.10")).symbols) for raw in (
            message(body="hello\r\nDear friend\r\nbye\r\n"),
            message(body=base64.encodebytes(b"hello\rDear friend\rbye").decode(), headers={"Content-Transfer-Encoding": "base64"}),
            html_message("hi", "<p>hello</p><p>Dear friend</p>"),
            message(body="hello\r\nDear friends\r\n"),
        )]
    finally:
        pipe.shutdown()
    assert ["DEAR_LINE" in symbols for symbols in found] == [True, True, True, False]


def test_uri_rule_sees_href_and_plain_text_links(pipeline: Pipeline) -> None:
    assert "URI_TOP" in symbols_of(pipeline, html_message("hi", '<a href="https://prize.top/claim">here</a>'))
    assert "URI_TOP" in symbols_of(pipeline, message(body="go to www.prize.top now\r\n"))
    assert "URI_TOP" not in symbols_of(pipeline, message(body="go to https://example.org/top\r\n"))


def test_meta_fires_only_when_its_parts_do(pipeline: Pipeline) -> None:
    both = symbols_of(pipeline, html_message("lottery", '<p>you are a winner</p>'))
    assert {"SUBJ_LOTTERY", "BODY_WINNER", "META_LOTTERY_WIN"} <= both
    assert "META_OF_META" not in both
    only_subject = symbols_of(pipeline, message(subject="lottery"))
    assert "SUBJ_LOTTERY" in only_subject and "META_LOTTERY_WIN" not in only_subject
    only_body = symbols_of(pipeline, message(body="you are a winner\r\n"))
    assert "BODY_WINNER" in only_body and "META_LOTTERY_WIN" not in only_body
    negated = symbols_of(pipeline, message(subject="lottery", body="you are a winner; unsubscribe here\r\n"))
    assert "BODY_UNSUBSCRIBE" in negated and "META_LOTTERY_WIN" not in negated
    chained = symbols_of(pipeline, html_message("lottery", '<a href="http://a.top/">you are a winner</a>'))
    assert {"META_LOTTERY_WIN", "META_OF_META"} <= chained


def test_trusted_clients_are_not_checked(pipeline: Pipeline) -> None:
    result = check_message(pipeline, message(subject="lottery"), Client(addr="127.0.0.1"))
    assert "SUBJ_LOTTERY" not in result.symbols and result.action.label == "accept"


def test_body_limit_from_custom_table(tmp_path: Path) -> None:
    rules = "[[rule]]\nname = \"FAR_AWAY\"\nbody = 'needle'\n"
    services = build(make_config(tmp_path, "[custom]\nmax_text = \"1K\"\n" + rules))
    pipe = Pipeline(services, keep_log=False)
    try:
        near = check_message(pipe, message(body="needle\r\n" + "x" * 5000 + "\r\n"), Client(addr="192.0.2.10"))
        far = check_message(pipe, message(body="x" * 5000 + "\r\nneedle\r\n"), Client(addr="192.0.2.10"))
    finally:
        pipe.shutdown()
    assert "FAR_AWAY" in near.symbols and "FAR_AWAY" not in far.symbols


@pytest.mark.parametrize(
    ("rules", "key", "reason"),
    [
        ("[[rule]]\nname = \"BAD_RX\"\nheader = \"Subject\"\nregex = '(unclosed'\n", "rule BAD_RX.regex", "bad regular expression"),
        ("[[rule]]\nname = \"BAD_BODY\"\nbody = '[z-a]'\n", "rule BAD_BODY.body", "bad regular expression"),
        ("[[rule]]\nname = \"BAD_URI\"\nuri = '*x'\n", "rule BAD_URI.uri", "bad regular expression"),
        ("[[rule]]\nname = \"BAD_META\"\nmeta = 'NO_SUCH_SYMBOL and BAD_META2'\n", "rule BAD_META.meta", "unknown symbol"),
        ("[[rule]]\nname = \"BAD_SYNTAX\"\nmeta = 'A and (B'\n", "rule BAD_SYNTAX.meta", "bad expression"),
        ("[[rule]]\nname = \"LOOP_A\"\nmeta = 'LOOP_B'\n[[rule]]\nname = \"LOOP_B\"\nmeta = 'not LOOP_A'\n", "meta", "circle"),
        # A thousand metas each naming the next: a RecursionError traceback at start (found by review).
        ("[[rule]]\nname = \"CHAIN_END\"\nbody = 'x'\n" + "".join(f"[[rule]]\nname = \"CHAIN_{i}\"\nmeta = '{f'CHAIN_{i + 1}' if i < 999 else 'CHAIN_END'}'\n" for i in range(1000)),
         "rule CHAIN_64.meta", "more than 64 metas each refer to the next"),
        # The same chain of 79 written leaf first: no long path was ever walked, so it was accepted (a review).
        ("[[rule]]\nname = \"CHAIN_END\"\nbody = 'x'\n" + "".join(f"[[rule]]\nname = \"CHAIN_{i}\"\nmeta = '{f'CHAIN_{i + 1}' if i < 78 else 'CHAIN_END'}'\n" for i in reversed(range(79))),
         "rule CHAIN_14.meta", "more than 64 metas each refer to the next"),
        ("[[rule]]\nname = \"TWO_KINDS\"\nbody = 'x'\nuri = 'y'\n", "rule TWO_KINDS", "exactly one"),
        ("[[rule]]\nname = \"lower\"\nbody = 'x'\n", "rule lower", "upper-case"),
        ("[[rule]]\nname = \"DUP\"\nbody = 'x'\n[[rule]]\nname = \"DUP\"\nbody = 'y'\n", "rule DUP", "already defined"),
    ],
)
def test_broken_rules_are_refused_with_file_and_rule(tmp_path: Path, rules: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(make_config(tmp_path, rules))
    assert caught.value.file.endswith("local.toml")
    assert key in caught.value.key
    assert reason in caught.value.reason


def test_meta_may_name_a_builtin_symbol(tmp_path: Path) -> None:
    builtin = sorted(build(Config()).symbols)
    assert builtin
    rules = f"[[rule]]\nname = \"META_BUILTIN\"\nmeta = 'not {builtin[0]}'\n"
    services = build(make_config(tmp_path, rules))
    check = next(c for c in services.checks if isinstance(c, CustomRules))
    assert [r.name for r in check.metas] == ["META_BUILTIN"]


def test_no_rules_hooks_no_stage(tmp_path: Path) -> None:
    """With no [[rule]] and no [custom] table the check is not built: no stage runs it (#15's core row)."""
    services = build(make_config(tmp_path, ""))
    pipe = Pipeline(services, keep_log=False)
    try:
        assert not any(isinstance(c, CustomRules) for c in services.checks)
        assert not any(isinstance(c, CustomRules) for checks in pipe._by_stage.values() for c in checks)
        result = check_message(pipe, message(subject="lottery"), Client(addr="192.0.2.10"))
        assert not result.error and result.action.label == "accept"
    finally:
        pipe.shutdown()
    assert any(isinstance(c, CustomRules) for c in build(make_config(tmp_path, RULES)).checks)
    limits_only = build(make_config(tmp_path, "[custom]\nmax_text = \"1K\"\n"))
    assert any(isinstance(c, CustomRules) for c in limits_only.checks)  # [custom] still validated


def test_bad_max_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(make_config(tmp_path, "[custom]\nmax_text = \"lots\"\n"))
    assert caught.value.key == "custom.max_text" and caught.value.file.endswith("local.toml")


def test_meta_language() -> None:
    tree = parse("A and (B || not C) or !D")
    assert evaluate(tree, {"A", "B"}) and evaluate(tree, set()) and not evaluate(tree, {"D"})
    assert evaluate(parse("A && B"), {"A", "B"}) and not evaluate(parse("A && B"), {"A"})
    for bad in ("", "A and", "(A", "A B", "A $", ")"):
        with pytest.raises(MetaSyntaxError):
            parse(bad)


def test_extract_is_bounded_and_lenient() -> None:
    assert extract(b"\xff\xfe garbage without headers").error == ""
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nhttp://a%d.example/\r\n" % i for i in range(2100))
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    found = extract(raw)
    assert found.truncated and len(found.uris) < 2100
    text, links = html_to_text('<script>var x="http://evil.example/";</script><a href="http://ok.example/">t</a>')
    assert links == ["http://ok.example/"] and "evil" not in text
    bad_charset = b"Content-Type: text/plain; charset=x-no-such\r\n\r\nh\xe9llo\r\n"
    assert "llo" in extract(bad_charset).text


def test_a_backtracking_rule_spends_at_most_its_search_budget_on_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Each search gave up after 0.5 s, but on each of 20 Subject fields: 10 s of a worker for one rule and one
    # message (found by review).  A rule's searches of a message share RULE_SEARCH_BUDGET (1 s): 2 or 3 give up;
    # the next rule has its own, so a slow rule leaves no later rule unsearched (second review).
    from milterd.message.model import Envelope, Session, Spool

    rules = ("[[rule]]\nname = \"REDOS\"\nheader = \"Subject\"\nregex = '(x+x+)+y'\nscore = 1\n"
             "[[rule]]\nname = \"LATER\"\nheader = \"Subject\"\nregex = 'x{4000}'\nscore = 1\n")
    services = build(make_config(tmp_path, rules, '[dns]\nnameservers = ["127.0.0.1:9"]\n'))
    check = next(c for c in services.checks if isinstance(c, CustomRules))
    envelope = Envelope(spool=Spool(1024), headers=[("Subject", b"x" * 5000)] * 20)
    assert [hit.symbol for hit in check.on_eoh(Session(), envelope)] == ["LATER"]
    gave_up = [r for r in caplog.records if "gave up after" in r.getMessage()]
    assert 1 <= len(gave_up) <= 4, len(gave_up)
    assert any("rule REDOS: 1s of regular expression searches spent on one message" in r.getMessage() for r in caplog.records)
