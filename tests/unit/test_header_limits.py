"""The header limits' decision (a pure function): which limit a header crosses, and the reply."""

from __future__ import annotations

from milterd.checks.headers import TOO_LARGE_REPLY, TOO_MANY_REPLY, HeaderLimits, field_size, header_limit_hit
from milterd.message.model import Action

LIMITS = HeaderLimits(count=3, field_size=100, section_size=250)


def test_within_the_limits_is_none() -> None:
    assert header_limit_hit(LIMITS, 3, 250, "X-A", 100) is None
    assert header_limit_hit(HeaderLimits(), 10**6, 10**9, "X-A", 10**8) is None  # 0 is no limit


def test_each_limit_gives_its_symbol_reply_and_detail() -> None:
    one = header_limit_hit(LIMITS, 1, 101, "X-Big", 101)
    assert one is not None and (one.symbol, one.action, one.reply) == ("HDR_TOO_LARGE", Action.REJECT, TOO_LARGE_REPLY)
    assert "X-Big: 101 bytes > max_header_size 100" == one.detail
    many = header_limit_hit(LIMITS, 4, 40, "X-D", 10)
    assert many is not None and (many.symbol, many.reply) == ("HDR_TOO_MANY", TOO_MANY_REPLY) and str(many.reply) == "554 5.6.0 Too many headers"
    section = header_limit_hit(LIMITS, 3, 251, "X-C", 90)
    assert section is not None and section.symbol == "HDR_TOO_LARGE" and "max_header_section 250" in section.detail
    assert str(TOO_LARGE_REPLY) == "552 5.3.4 Message header too large"


def test_field_size_counts_name_colon_value_and_crlf() -> None:
    assert field_size("Subject", b" hello\n\tworld") == len(b"Subject: hello\r\n\tworld\r\n") - 1  # LF-joined folding as Postfix passes it
