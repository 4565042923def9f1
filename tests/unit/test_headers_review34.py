"""The header check's review, thirty-fourth session.

* From, To and Cc of addresses just under 2,048 characters, each padded with comments, cost a worker
  1.6 s of CPU at end of headers: the stdlib's parser (quadratic on such input) read 64 KB of them.  One
  message now has the parser read at most ``_PARSE_BUDGET`` characters of address values (plain lists
  cost nothing); what lies past it is not judged.
* A base64 encoded-word without its "=" padding (``=?utf-8?b?aGVsbG8?=``), which decode_header and
  Thunderbird read as "hello", was HDR_ENCODED_WORD_INVALID.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from milterd.checks import headers as headers_module
from milterd.checks.headers import Headers, ParseBudget, address_list_problem, bad_encoded_words
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services


def judge(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    check = Headers(Services(config=Config()))
    envelope = Envelope(spool=Spool(1024), headers=headers, mail_args={})
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}


def padded(tag: int, count: int = 15) -> bytes:
    return ",".join("(a)" * 600 + f"u{tag}x{n}@example.com" for n in range(count)).encode()


def test_the_parser_reads_at_most_the_budget_of_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    parse = headers_module.parsed_address_list_problem

    def counted(name: str, value: str) -> str:
        read.append(len(value))
        return parse(name, value)

    monkeypatch.setattr(headers_module, "parsed_address_list_problem", counted)
    headers_module._cached_address_list_problem.cache_clear()  # noqa: SLF001
    now = datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000").encode()
    hits = judge([("From", padded(0)), ("From", padded(9)), ("To", padded(1)), ("Cc", padded(2)),
                  ("Subject", b"x"), ("Date", now), ("Message-ID", b"<a@b.c>")])
    assert "HDR_FROM_MULTIPLE" in hits
    assert 0 < sum(read) <= headers_module._PARSE_BUDGET  # noqa: SLF001 - before: 61 values, 110,000 characters


def test_what_the_budget_reaches_is_judged_and_plain_lists_cost_nothing() -> None:
    budget = ParseBudget(100)
    assert address_list_problem("To", "bob@example.com, Carol <carol@example.org>", budget) == "" and budget.left == 100
    assert address_list_problem("From", "Alice <alice>", budget) and budget.left == 100 - len("Alice <alice>")
    assert address_list_problem("From", "(x)" * 40 + "Alice <alice>", budget) == ""  # past it: not judged
    assert address_list_problem("From", "Bob <bob>", budget) == ""  # nor what comes after
    hits = judge([("From", b"Alice <alice>"), ("To", padded(1))])
    assert "HDR_FROM_INVALID" in hits  # the From is judged first


def test_a_base64_word_without_its_padding_is_read_as_clients_read_it() -> None:
    assert bad_encoded_words("=?utf-8?b?aGVsbG8?=") == ""
    assert bad_encoded_words("=?utf-8?b?aGVsbA?= world") == ""
    assert bad_encoded_words("=?utf-8?b?aGVsb?=") == "=?utf-8?b?aGVsb?="  # 5 characters: no base64 at all
    assert bad_encoded_words("=?utf-8?b?aGV$bG8?=") == "=?utf-8?b?aGV$bG8?="  # a byte outside the alphabet


def test_a_from_value_is_charged_once_for_its_judgement_and_its_count() -> None:
    # Second look: the From's judgement and its count of mailboxes each spent its length.
    budget = ParseBudget(100)
    value = "(x) Alice <alice@example.org>"
    assert address_list_problem("From", value, budget) == "" and budget.left == 100 - len(value)
    assert headers_module.mailboxes(value, budget) == 1 and budget.left == 100 - len(value)
