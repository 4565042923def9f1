"""Issue 15's hot-path cuts give the answers the slow paths give (and skip the slow paths when they may).

Each cut is behaviour-identical by design; these tests hold it to that against the
code it bypasses, over many generated inputs, and check that the bypass happens.
"""

from __future__ import annotations

import random

import pytest

from milterd.checks import headers, helo
from milterd.checks.headers import address_list_problem, parsed_address_list_problem

ATOMS = ["a", "joe", "J.Doe", "x-y", "o'neil", "a+b", "1", "_", "=", "?", "#", "~", "{", "é", "ex-ample", "-b", "b-"]
NOISE = [".", "..", "@", "<", ">", '"', ",", " ", "  ", "(", ")", ":", ";", "\\", "=?", "?=", "[", "]", "\t", "", "=?utf-8?q?x?=", "\x00"]


def _address(rng: random.Random) -> str:
    local = ".".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 2)))
    domain = ".".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 3)))
    spec = f"{local}@{domain}"
    shape = rng.randint(0, 3)
    if shape == 0:
        return spec
    if shape == 1:
        return f"<{spec}>"
    if shape == 2:
        return " ".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 3))) + rng.choice([" ", ""]) + f"<{spec}>"
    return '"' + " ".join(rng.choice(ATOMS + [",", "<x>", "@", "."]) for _ in range(rng.randint(0, 3))) + '"' + rng.choice([" ", ""]) + f"<{spec}>"


def _value(rng: random.Random) -> str:
    value = rng.choice([", ", ",", " , "]).join(_address(rng) for _ in range(rng.randint(1, 3)))
    for _ in range(rng.choice([0, 0, 1, 2])):  # a mutation now and then
        at = rng.randint(0, len(value))
        value = value[:at] + rng.choice(NOISE) + value[at + rng.randint(0, 2):]
    return value.strip()


def test_plain_address_shortcut_agrees_with_the_parser() -> None:
    rng = random.Random(15)
    shortcut = 0
    for _ in range(6000):
        value = _value(rng)
        for name in ("From", "To"):
            fast, slow = address_list_problem(name, value), parsed_address_list_problem(name, value)
            if fast == "" and slow != "":
                pytest.fail(f"{name}: {value!r}: the shortcut says fine, the parser says {slow!r}")
            assert fast == slow or fast == ""
        shortcut += headers._PLAIN_ADDRESS_LIST.fullmatch(value) is not None and "=?" not in value
    assert shortcut > 1000  # the generator does reach the shortcut


def test_plain_addresses_skip_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        class default:  # noqa: N801 - stands for email.policy.default
            @staticmethod
            def header_factory(*args: object) -> object:
                raise AssertionError("the stdlib parser was called")

    monkeypatch.setattr(headers, "policy", Refusing)
    for value in ("<sender@example.org>", "rcpt@example.com", "Joe Bloggs <j.b@ex-ample.org>", '"Bloggs, Joe" <j@example.org>, a@b.c'):
        assert address_list_problem("From", value) == ""
    # not plain (a period in the display name): the parser judges it (here: the refusing stand-in)
    assert address_list_problem("To", "Jo.e <a@b.c>") == "unparseable (AssertionError)"


def test_unfold_unchanged() -> None:
    assert headers.unfold(b" a\r\n b\n\tc ") == "a b\tc"
    assert headers.unfold(b"x\r\n\ty") == "x\ty"
    assert headers.unfold(b"plain ") == "plain"
    assert headers.unfold(b"a\r\nb") == "a\r\nb"  # a bare line break that is not folding stays


def test_helo_shape_is_cached_and_unchanged() -> None:
    helo.helo_shape.cache_clear()
    cases = {"": "missing", "  ": "missing", "[192.0.2.1]": "literal", "[IPv6:2001:db8::1]": "literal", "[bad]": "bad_literal",
             "192.0.2.1": "bare_ip", "localhost": "not_fqdn", "host.example.org": "fqdn", "host.example.org.": "fqdn", "a.123": "not_fqdn"}
    for value, kind in cases.items():
        assert helo.helo_shape(value).kind == kind
        assert helo.helo_shape(value) is helo.helo_shape(value)
    assert helo.helo_shape("[IPv6:2001:DB8::1]").address == "2001:db8::1"
    assert helo.helo_shape.cache_info().hits >= len(cases)


def test_store_values_cleaned_as_before() -> None:
    from milterd.text import storable  # the store's and the greylist triplets' cleaning

    def slow(value: str) -> str:  # the cleaning before the ASCII shortcut
        return value.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")

    for value in ("", "plain@example.org", "a\x00b", "caf\u00e9", "bad \udce9 byte", "\x00", "tab\tand\r\nnewline", "\U0001f600"):
        assert storable(value) == slow(value)


def test_log_row_insert_is_built_once(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import milterd.store as store
    from milterd.config import DatabaseSection

    db = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/log.sqlite"))
    db.upgrade()

    def no_new_insert(*args: object) -> object:
        raise AssertionError("an INSERT built per message")

    monkeypatch.setattr(store, "insert", no_new_insert)
    first = db.log_message(store.MessageRecord(action="accept", sender="a@example.org", recipients=["b@example.com"], symbols={"X": 1.0}))
    second = db.log_message(store.MessageRecord(action="reject", subject="s\x00"))
    rows = db.messages(newest_first=False)
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["recipients"] == ["b@example.com"] and rows[0]["symbols"] == {"X": 1.0} and rows[1]["subject"] == "s\\0"
    db.close()
