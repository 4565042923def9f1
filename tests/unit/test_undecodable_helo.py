"""A HELO name that is not UTF-8 (Postfix with smtputf8_enable = no passes it on).

pymilter's C module decodes the name strictly before it calls the HELO
callback: the UnicodeDecodeError, raised in C with no traceback, reaches
only ``sys.excepthook``, where the worker's hook (supervisor.milter_excepthook)
keeps the bytes and lets the stage continue; the adapter judges them at the
connection's next callback.  Here the hook is called as pymilter's
``PyErr_Print`` calls it, and the adapter is driven through pymilter's
``TestCtx`` as in test_protocol.py.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator

import Milter
import milter
import pytest
from Milter import testctx

from milterd.cli import main
from milterd.message.model import Action, Decision, Session
from milterd.message.reply import Reply
from milterd.milter import adapter, supervisor
from milterd.milter.adapter import MilterdMilter
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config
from tests.harness.pipeline import milter_worker

RAW_HELO = b"h\xe9llo.example"


class Context(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that takes the header edits at end of message (TestCtx's own need a parsed message)."""

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        pass

    def chgheader(self, field: str, idx: int, value: str) -> None:
        pass


def c_decode_error(raw: bytes = RAW_HELO) -> UnicodeDecodeError:
    """The exception pymilter's Py_BuildValue("(Os)") leaves: made in C, never raised through Python code."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return UnicodeDecodeError(exc.encoding, exc.object, exc.start, exc.end, exc.reason)
    raise AssertionError("decodes")


def pymilter_reports(exc: BaseException) -> None:
    """What pymilter's _report_exception does with it: PyErr_Print calls sys.excepthook (the traceback, if any)."""
    supervisor.milter_excepthook(type(exc), exc, exc.__traceback__)


@pytest.fixture()
def policies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The exception policies set in pymilter's C module, in order."""
    seen: list[int] = []
    monkeypatch.setattr(milter, "set_exception_policy", seen.append)
    return seen


@pytest.fixture()
def previous(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """What reached the excepthook the worker's hook replaced."""
    seen: list[BaseException] = []

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        seen.append(exc)

    monkeypatch.setattr(supervisor, "_previous_excepthook", hook)
    return seen


@pytest.fixture(autouse=True)
def _nothing_kept() -> Iterator[None]:
    adapter.take_undecodable()
    yield
    adapter.take_undecodable()


# --- the hook's decision ------------------------------------------------------


def test_only_a_decode_error_raised_in_c_is_an_undecodable_argument() -> None:
    assert supervisor.undecodable_argument(c_decode_error(), None) == RAW_HELO
    try:
        RAW_HELO.decode("utf-8")
    except UnicodeDecodeError as exc:  # raised by Python code: it has a traceback
        assert supervisor.undecodable_argument(exc, exc.__traceback__) is None
    assert supervisor.undecodable_argument(RuntimeError("x"), None) is None


def test_hook_continues_a_dropped_helo_and_tempfails_anything_else(policies: list[int], previous: list[BaseException]) -> None:
    pymilter_reports(c_decode_error())
    assert policies == [milter.CONTINUE] and previous == []  # no 451, no traceback printed
    assert adapter.take_undecodable() == RAW_HELO
    assert adapter.take_undecodable() is None  # once
    try:
        raise AttributeError("'NoneType' object has no attribute 'hello'")
    except AttributeError as exc:
        other = exc
    pymilter_reports(other)
    assert policies == [milter.CONTINUE, milter.TEMPFAIL] and previous == [other]
    assert adapter.take_undecodable() is None


def test_worker_installs_the_hook_once_with_the_tempfail_policy(policies: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    original = sys.excepthook
    monkeypatch.setattr(sys, "excepthook", original)
    monkeypatch.setattr(supervisor, "_previous_excepthook", original)
    supervisor.install_exception_hook()
    supervisor.install_exception_hook()
    assert sys.excepthook is supervisor.milter_excepthook
    assert supervisor._previous_excepthook is original
    assert policies == [milter.TEMPFAIL, milter.TEMPFAIL]


def test_the_adapter_tells_a_dropped_helo_from_other_callbacks() -> None:
    for stage in ("helo", "mail", "abort", "close"):
        assert adapter.dropped_helo(stage, connected=True, in_transaction=False)
    assert not adapter.dropped_helo("helo", connected=False, in_transaction=False)  # connect's own argument
    for stage in ("header", "eoh", "abort", "close"):
        assert not adapter.dropped_helo(stage, connected=True, in_transaction=True)  # a header's name


# --- the adapter: the next callback judges the name ------------------------


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("badhelo")
    sections = with_sections(
        NO_CHECKS,
        {
            "milter": {"hostname": "mx.test", "trusted_networks": []},
            "dns": {"nameservers": ["127.0.0.1:9"]},
            "checks": {"helo": {"enabled": True, "resolve": False}},
            "database": {"url": f"sqlite:///{root / 'log.sqlite'}"},
        },
    )
    return write_config(root / "milter.conf", sections)


@pytest.fixture(scope="module")
def milter_class(conf: Path) -> Iterator[type[MilterdMilter]]:
    yield from milter_worker(conf)


@pytest.fixture()
def ctx(milter_class: type[MilterdMilter], monkeypatch: pytest.MonkeyPatch, policies: list[int], previous: list[BaseException]) -> Context:
    monkeypatch.setattr(Milter, "factory", milter_class)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    context._stage = Milter.M_CONNECT
    assert Milter.connect_callback(context, "[192.0.2.7]", socket.AF_INET, ("192.0.2.7", 4321)) == Milter.CONTINUE
    context._stage = None
    return context


def say_undecodable_helo() -> None:
    """EHLO h\\xe9llo.example as pymilter handles it: the HELO callback is never called."""
    pymilter_reports(c_decode_error())


def rows(conf: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--json", "--limit", "0"]) == 0
    return {row["queue_id"]: row for row in json.loads(capsys.readouterr().out)}


def test_undecodable_helo_is_judged_as_an_invalid_name(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    say_undecodable_helo()
    with caplog.at_level(logging.WARNING, logger="milterd"):
        assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    assert ctx.getpriv().session.helo == "h\ufffdllo.example"
    [record] = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert "192.0.2.7" in record.getMessage() and "HELO 'h\\xe9llo.example'" in record.getMessage() and record.exc_info is None
    ctx._setsymval("i", "QBADHELO1")
    assert ctx._envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert ctx._data() == Milter.CONTINUE
    assert ctx.getpriv().header_bytes("Subject", b"hello") == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._eom() == Milter.CONTINUE
    Milter.close_callback(ctx)
    row = rows(conf, capsys)["QBADHELO1"]
    assert row["helo"] == "h\ufffdllo.example"
    assert "HELO_NOT_FQDN" in row["symbols"] and "HELO_MISSING" not in row["symbols"]


def test_a_helo_refusal_is_answered_at_mail_for_the_whole_session(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = Decision(Action.REJECT, Reply("550", "5.7.1", "Bad HELO"))
    seen: list[str] = []

    def helo(session: Session) -> Decision | None:
        seen.append(session.helo)
        return refused

    monkeypatch.setattr(ctx.getpriv().pipeline, "helo", helo)
    say_undecodable_helo()
    for _ in range(2):
        ctx._reply = None
        assert ctx._envfrom("<alice@example.org>") == Milter.REJECT
        assert ctx._reply == ("550", "5.7.1", "Bad HELO")
    assert seen == ["h\ufffdllo.example"]
    monkeypatch.undo()
    Milter.close_callback(ctx)


def test_a_new_helo_replaces_the_dropped_one(ctx: Context) -> None:
    say_undecodable_helo()
    assert ctx._helo("client.example.org") == Milter.CONTINUE
    assert ctx.getpriv().session.helo == "client.example.org"
    assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    Milter.close_callback(ctx)


def test_rset_after_the_dropped_helo_keeps_it_judged(ctx: Context) -> None:
    say_undecodable_helo()
    assert ctx.getpriv().abort() == Milter.CONTINUE
    assert ctx.getpriv().session.helo == "h\ufffdllo.example"
    assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    Milter.close_callback(ctx)


def test_any_other_dropped_callback_tempfails_the_next_reply(ctx: Context, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctx._helo("client.example.org") == Milter.CONTINUE
    ctx._setsymval("i", "QDROPPED1")
    assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@example.com>") == Milter.CONTINUE
    assert ctx._data() == Milter.CONTINUE
    pymilter_reports(c_decode_error(b"X-N\xe4me"))  # a header whose name pymilter cannot decode (Postfix sends none)
    assert ctx.getpriv().header_bytes("Subject", b"hello") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")
    assert ctx.getpriv().abort() == Milter.CONTINUE
    Milter.close_callback(ctx)
    # The message tempfailed is logged as one (the abort that follows logged nothing: found by review).
    row = rows(conf, capsys)["QDROPPED1"]
    assert row["action"] == "tempfail" and "could not decode 'X-N\\xe4me'" in row["reason"], row["reason"]


def test_quit_after_the_dropped_helo_leaves_nothing_behind(ctx: Context) -> None:
    say_undecodable_helo()
    Milter.close_callback(ctx)
    assert adapter.take_undecodable() is None


def test_a_dropped_connect_tempfails_the_whole_session(milter_class: type[MilterdMilter], monkeypatch: pytest.MonkeyPatch, policies: list[int], previous: list[BaseException]) -> None:
    monkeypatch.setattr(Milter, "factory", milter_class)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0x1FFFFF, 0, 0])
    context = Context()
    assert context._negotiate() == Milter.CONTINUE
    pymilter_reports(c_decode_error(b"cl\xefent.example"))  # connect's host name (Postfix sends none such)
    assert context.getpriv().hello("client.example.org") == Milter.TEMPFAIL
    for _ in range(2):
        context._reply = None
        assert context._envfrom("<alice@example.org>") == Milter.TEMPFAIL
        assert context._reply[:2] == ("451", "4.3.0")
    Milter.close_callback(context)


def test_an_8bit_sasl_login_name_is_kept_not_a_tempfail(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    # pymilter's getsymval decodes a macro strictly too: an authenticated user whose login
    # name is not UTF-8 got 451 4.3.0 at every MAIL FROM.
    real = ctx.getsymval

    def getsymval(name: str) -> Any:
        if name == "{auth_authen}":
            return b"\xe9lodie".decode("utf-8")  # raises as pymilter's Py_BuildValue("s") does
        return real(name)

    monkeypatch.setattr(ctx, "getsymval", getsymval)
    assert ctx._helo("client.example.org") == Milter.CONTINUE
    assert ctx._envfrom("<alice@example.org>") == Milter.CONTINUE
    assert ctx.getpriv().session.auth_user == "\ufffdlodie"
    assert ctx.getpriv().session.authenticated
    Milter.close_callback(ctx)
