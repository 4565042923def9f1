"""Issue #14/#15's cuts of the Authentication-Results header, the log row and the summary line give what the plain paths give.

The references are the code before the cuts: ``_fresh_build`` is authresults.build
as it was (authres objects and str() on every call), and the log row's reference
is SQLAlchemy's own INSERT of ``MessageRecord.as_row()`` (the non-SQLite path);
``_old_summary_line`` is logs.summary_line as it was.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import authres
import authres.arc
import authres.dmarc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import milterd.store as store
from milterd import authresults, logs
from milterd.authresults import _mailfrom, _pvalue, _reason, _token, authserv_id_of, forged_indexes
from milterd.checks.arc import ArcResult
from milterd.checks.dkim import SignatureResult
from milterd.checks.dmarc import Evaluation
from milterd.checks.spf import Spf
from milterd.config import Config, DatabaseSection
from milterd.logs import summary_line
from milterd.message.model import Action, Envelope, HeaderEdit, Session, Spool, Verdict

# --- Authentication-Results --------------------------------------------------


def _fresh_build(
    authserv_id: str,
    *,
    auth_user: str = "",
    spf: dict[str, str] | None = None,
    dkim: Sequence[SignatureResult] | None = None,
    dmarc: Evaluation | None = None,
    arc: ArcResult | None = None,
) -> str:
    """authresults.build before the memo, line for line."""
    results: list[Any] = []
    if auth_user:
        results.append(authres.SMTPAUTHAuthenticationResult(result="pass", smtp_auth=_pvalue(auth_user)))
    if spf is not None:
        kwargs = {"smtp_helo": _pvalue(spf["helo"])} if spf["identity"] == "helo" else {"smtp_mailfrom": _mailfrom(spf["sender"])}
        results.append(authres.SPFAuthenticationResult(result=spf["result"], **kwargs))
    if dkim is not None:
        if not dkim:
            results.append(authres.DKIMAuthenticationResult(result="none"))
        for sig in dkim:
            results.append(
                authres.DKIMAuthenticationResult(
                    result=sig.result,
                    reason=_reason(sig.reason) if sig.result != "pass" else None,
                    header_d=_token(sig.domain),
                    header_s=_token(sig.selector),
                )
            )
    if arc is not None:
        results.append(authres.arc.ARCAuthenticationResult(result=arc.result, header_as_d=_token(arc.sealers[-1]) if arc.sealers else None))
    if dmarc is not None:
        results.append(
            authres.dmarc.DMARCAuthenticationResult(
                result=dmarc.result,
                header_from=_token(dmarc.domain),
                policy=dmarc.policy.upper() if dmarc.result in ("pass", "fail") else None,
            )
        )
    if not results:
        results.append(authres.NoneAuthenticationResult())
    text = str(authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results))
    return text.split(":", 1)[1].strip()


def _outcome(function: Callable[..., str], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """The value, or the exception's class and text: a hostile input must fail the same way."""
    try:
        return ("value", function(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - compared, not hidden
        return (type(exc).__name__, str(exc))


HOSTILE = ["", "x", 'a"b', "a\\b", "caf\u00e9", "a b", "a;b", "a(b)c", "\x00", "\r\n", "x" * 300, "\udce9", "d\u00f6main.test"]

SPFS: list[dict[str, str] | None] = [None] + [
    {"result": result, "explanation": explanation, "identity": identity, "sender": sender, "helo": helo}
    for result, explanation, identity, sender, helo in [
        ("pass", "sender SPF authorized", "mailfrom", "author@signed.test", "client.signed.test"),
        ("pass", "another explanation", "mailfrom", "author@signed.test", "other.helo"),
        ("fail", "nope", "helo", "postmaster@client.test", "client.test"),
        ("softfail", "", "mailfrom", 'we"ird\\@x.test', "h"),
        ("neutral", "x", "helo", "postmaster@caf\u00e9", "caf\u00e9 (x)"),
        ("temperror", "DNS", "mailfrom", "a" * 300 + "@x.test", ""),
    ]
]
DKIMS: list[list[SignatureResult] | None] = [
    None,
    [],
    [SignatureResult("signed.test", "sel", "pass")],
    [SignatureResult("signed.test", "sel", "pass", reason="ignored for a pass")],
    [SignatureResult("signed.test", "sel", "fail", reason='body hash "mismatch" \\ ' + "r" * 200)],
    [SignatureResult("signed.test", "sel", "fail", reason="caf\u00e9\x00\r\n\tend")],
    [SignatureResult('d"q', "s\\", "temperror", reason="")],
    [SignatureResult("a.test", "s1", "pass"), SignatureResult("b.test", "s2", "permerror", reason="no key"), SignatureResult("", "", "neutral")],
]
DMARCS: list[Evaluation | None] = [
    None,
    Evaluation("pass", "signed.test", "reject"),
    Evaluation("pass", "signed.test", "reject", reason="other reason"),
    Evaluation("fail", "signed.test", "quarantine", applied="quarantine"),
    Evaluation("none", "unsigned.test"),
    Evaluation("temperror", 'x"y\\z', reason="DNS"),
    Evaluation("permerror", "caf\u00e9.test", "none"),
]
ARCS: list[ArcResult | None] = [
    None,
    ArcResult("none"),
    ArcResult("pass", ("first.test", "last.test")),
    ArcResult("fail", ('b"ad',), reason="x"),
    ArcResult("pass", ("last.test",), temporary=True),
]


def test_memoised_header_equals_a_fresh_build_over_many_combinations() -> None:
    authresults._built.cache_clear()  # noqa: SLF001
    combinations = list(itertools.product(["mx.example.org", "MX.Example.ORG"], ["", "alice", 'b"ob'], SPFS, DKIMS, DMARCS, ARCS))
    for _ in range(2):  # the second pass answers from the memo
        for authserv_id, auth_user, spf, dkim, dmarc, arc in combinations:
            kwargs = {"auth_user": auth_user, "spf": spf, "dkim": dkim, "dmarc": dmarc, "arc": arc}
            assert _outcome(authresults.build, authserv_id, **kwargs) == _outcome(_fresh_build, authserv_id, **kwargs)
    assert authresults._built.cache_info().hits > 0  # noqa: SLF001


@settings(max_examples=300, deadline=None)
@given(
    authserv_id=st.sampled_from(HOSTILE) | st.text(max_size=20),
    auth_user=st.sampled_from(HOSTILE) | st.text(max_size=20),
    sender=st.sampled_from(HOSTILE) | st.text(max_size=40),
    reason=st.sampled_from(HOSTILE) | st.text(max_size=200),
    domain=st.sampled_from(HOSTILE) | st.text(max_size=30),
    result=st.sampled_from(["pass", "fail", "none", "neutral", "temperror", "permerror", "policy"]),
)
def test_memoised_header_equals_a_fresh_build_on_hostile_values(authserv_id: str, auth_user: str, sender: str, reason: str, domain: str, result: str) -> None:
    spf = {"result": result, "explanation": reason, "identity": "mailfrom", "sender": sender, "helo": domain}
    dkim = [SignatureResult(domain, sender, result, reason=reason)]
    dmarc = Evaluation("fail" if result == "fail" else "pass", domain, "reject")
    arc = ArcResult(result, (domain,), reason=reason)
    kwargs = {"auth_user": auth_user, "spf": spf, "dkim": dkim, "dmarc": dmarc, "arc": arc}
    for _ in range(2):
        assert _outcome(authresults.build, authserv_id, **kwargs) == _outcome(_fresh_build, authserv_id, **kwargs)


def test_unhashable_inputs_are_built_without_the_memo() -> None:
    arc = ArcResult("pass", ["a.test", "b.test"])  # type: ignore[arg-type] - a list, not the tuple the check stores
    assert authresults.build("mx", arc=arc) == _fresh_build("mx", arc=arc)


# --- the log row ----------------------------------------------------------------

_COLUMNS = [c.name for c in store.schema.messages.c if c.name != "id"]

SYMBOLS: list[dict[str, Any]] = [
    {},
    {"RDNS_NONE": 1.5, "SPF_PASS": -0.5, "DKIM_VALID": -0.1, "DKIM_VALID_AUTHOR": -0.1, "DMARC_PASS": -0.5},
    {f"SYMBOL_{k}": round(0.37 * k - 2.1, 3) for k in range(20)},
    {"ZERO": 0.0},
    {"ZERO": -0.0},
    {"ZERO": 0},
    {"ZERO": False},
    {"ONE": 1.0},
    {"ONE": 1},
    {"ONE": True},
    {"BIG": 1e300, "SMALL": 5e-324, "INF": math.inf, "NEG_INF": -math.inf},
    {"NAN": math.nan},
    {'QU"OTE': 1.0, "BACK\\SLASH": 2.0, "CAF\u00c9": 3.0, "CTRL\x01": 4.0, "NUL\x00": 5.0, "\udce9": 6.0},
    {"B": 1.0, "A": 2.0},  # order kept, not sorted
    {"A": 2.0, "B": 1.0},
]
DETAILS: list[dict[str, Any]] = [
    {},
    {"RDNS_NONE": "192.0.2.10", "SPF_PASS": "author@example.org: sender SPF authorized", "DKIM_VALID": "d=example.org s=bench"},
    {f"SYMBOL_{k}": f"detail {k} for 192.0.2.{k}: something happened" for k in range(20)},
    {"A": ""},
    {"": ""},
    {"Q": 'say "hi"'},
    {"B": "back\\slash"},
    {"C": "caf\u00e9"},
    {"D": "tab\there"},
    {"E": "del\x7fete"},
    {"F": "nul\x00byte"},
    {"G": "cr\rlf\n"},
    {"H": "lone \udce9 surrogate"},
    {"I": "x" * 1000},
    {'"': "quote key", "\\": "backslash key"},
    {"J": "}{\", \""},
    {"K": "a", "L": 'b"'},  # the quote count alone tells
    {"M": 1},  # not a string
    {"N": None},
]


def _records() -> list[store.MessageRecord]:
    records = []
    for i, (symbols, details) in enumerate(itertools.product(SYMBOLS, DETAILS)):
        records.append(
            store.MessageRecord(
                action="add_header" if i % 2 else "accept",
                time=dt.datetime(2026, 12, 2, 11, 0, i % 60, 1000 * i, tzinfo=dt.timezone.utc),
                queue_id=f"4Fh3kT{i}",
                client_addr=f"192.0.2.{i % 250}",
                client_name=["", "mail.example.org", "caf\u00e9.test", "n\x00l"][i % 4],
                helo=["client.test", "h" * 300, "\udce9"][i % 3],
                sender="author@example.org",
                recipients=[["rcpt@example.test"], [], ['q"uote@x', "b@y"]][i % 3],
                subject=["Hello", "caf\u00e9", ""][i % 3],
                message_id=f"<{i}@example.org>",
                size=5120 + i,
                score=round(sum(v for v in symbols.values() if isinstance(v, (int, float)) and math.isfinite(v)), 2),
                reason=["", "score 6 >= add_header 6", "x\x00y"][i % 3],
                symbols=dict(symbols),
                details=dict(details),
                elapsed_ms=1.25 * i,
            )
        )
    return records


def _stored(path: Path) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        columns = ", ".join(f"{c}, typeof({c})" for c in _COLUMNS)
        return connection.execute(f"SELECT {columns} FROM messages ORDER BY id").fetchall()  # noqa: S608 - our own column names
    finally:
        connection.close()


def test_log_rows_are_stored_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    fast = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/fast.sqlite"))
    slow = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/slow.sqlite"))
    fast.upgrade()
    slow.upgrade()
    records = _records() * 2  # the second round answers the symbols from the memo
    for record in records:
        fast.log_message(record)  # the SQLite row path (_log_row, parameters_of)
        with slow.engine.begin() as connection:  # SQLAlchemy's INSERT of as_row(), as before the cuts
            connection.execute(store._INSERT_MESSAGE, record.as_row())  # noqa: SLF001
    fast.close()
    slow.close()
    assert _stored(tmp_path / "fast.sqlite") == _stored(tmp_path / "slow.sqlite")
    assert len(_stored(tmp_path / "fast.sqlite")) == len(records)


def test_log_row_parameters_equal_the_bind_processors(tmp_path: Path) -> None:
    db = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/log.sqlite"))
    statement = db._log_insert  # noqa: SLF001
    assert statement is not None
    for record in _records() * 2:
        assert repr(statement.parameters_of(record)) == repr(statement.parameters(record.as_row()))  # repr: -0.0 and 0.0, 1 and 1.0 apart
    db.close()


_scores = st.one_of(st.floats(allow_nan=False), st.integers(-5, 5), st.booleans(), st.sampled_from([0.0, -0.0, 0, 1, 1.0]))


@settings(max_examples=300, deadline=None)
@given(
    symbols=st.lists(st.dictionaries(st.text(max_size=12), _scores, max_size=8), min_size=1, max_size=4),
    details=st.dictionaries(st.text(max_size=12), st.text(max_size=60), max_size=8),
)
def test_symbols_and_details_json_is_json_dumps(tmp_path_factory: pytest.TempPathFactory, symbols: list[dict[str, Any]], details: dict[str, str]) -> None:
    converters = {name: convert for name, convert in _statement(tmp_path_factory).converters}
    for value in symbols + symbols:  # again: from the memo
        assert converters["symbols"](value) == json.dumps(value)
    assert converters["details"](details) == json.dumps(details)


_STATEMENTS: dict[str, Any] = {}


def _statement(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if "s" not in _STATEMENTS:
        db = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path_factory.mktemp('row')}/log.sqlite"))
        _STATEMENTS["s"] = db._log_insert  # noqa: SLF001
    return _STATEMENTS["s"]


# --- the summary line -------------------------------------------------------------


def _old_summary_line(record: store.MessageRecord) -> str:
    """milterd.logs.summary_line without the one-test shortcut: each value made safe on its own
    (logs._field, the bounds and delimiters of the twentieth session's review included)."""
    symbols = ",".join(sorted(record.symbols)) or "-"
    shown = record.recipients[:logs.MAX_LOG_RECIPIENTS]
    more = f" (+{len(record.recipients) - len(shown)} more)" if len(record.recipients) > len(shown) else ""
    recipients = ",".join(f"<{logs._field(r)}>" for r in shown) or "<>"  # noqa: SLF001 - the per-value rule is the reference
    line = (
        f"{logs._field(record.queue_id) or 'NOQUEUE'}: action={record.action} score={record.score:g} symbols={symbols}"  # noqa: SLF001
        f" client={logs._field(record.client_name) or 'unknown'}[{logs._field(record.client_addr)}] from=<{logs._field(record.sender)}> to={recipients}{more}"  # noqa: SLF001
        f" ms={record.elapsed_ms:g}"
    )
    if record.reason and record.action not in ("accept", "add_header"):
        line += f" reason=\"{logs._field(record.reason, logs.MAX_LOG_REASON, blanks=True)}\""  # noqa: SLF001
    return line


_field = st.sampled_from(HOSTILE + ["4Fh3kT0zZ9z", "192.0.2.10", "author@example.org", "tab\there", "del\x7f", "\u2028"]) | st.text(max_size=30)


@settings(max_examples=500, deadline=None)
@given(
    queue_id=_field,
    client_name=_field,
    client_addr=_field,
    sender=_field,
    recipients=st.lists(_field, max_size=12),
    reason=_field,
    action=st.sampled_from(["accept", "add_header", "reject", "quarantine"]),
)
def test_summary_line_equals_the_line_before(
    queue_id: str, client_name: str, client_addr: str, sender: str, recipients: list[str], reason: str, action: str
) -> None:
    record = store.MessageRecord(
        action=action, queue_id=queue_id, client_name=client_name, client_addr=client_addr, sender=sender, recipients=recipients,
        reason=reason, score=6.05, elapsed_ms=12.5, symbols={"B": 1.0, "A": 2.0},
    )
    assert summary_line(record) == _old_summary_line(record)


def test_summary_line_of_the_usual_and_the_empty_record() -> None:
    for record in _records()[:60] + [store.MessageRecord(action="accept")]:
        assert summary_line(record) == _old_summary_line(record)


# --- Spf.on_verdict and forged_indexes -------------------------------------------------


def _old_forged_indexes(headers: list[tuple[str, bytes]], authserv_id: str) -> list[int]:
    """authresults.forged_indexes before the length test, line for line."""
    found: list[int] = []
    index = 0
    for name, value in headers:
        if name.lower() != "authentication-results":
            continue
        index += 1
        if authserv_id_of(value.decode("utf-8", "replace")) == authserv_id.lower():
            found.append(index)
    return sorted(found, reverse=True)


_NAMES = ["Authentication-Results", "authentication-results", "AUTHENTICATION-RESULTS", "Authentication-Results ", "Authentication-Result",
          "Authentication-Resul\u0130s", "\u212authentication-Results", "Authentication-Re\u017fults", "Subject", "", "ARC-Authentication-Results"]


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(st.sampled_from(_NAMES) | st.text(max_size=24), st.sampled_from([b"mx.test; spf=pass", b"MX.TEST (c); x", b"other; y", b"\xff;"])), max_size=12),
    authserv_id=st.sampled_from(["mx.test", "MX.Test", "other", ""]),
)
def test_forged_indexes_equal_the_ones_before(headers: list[tuple[str, bytes]], authserv_id: str) -> None:
    assert forged_indexes(headers, authserv_id) == _old_forged_indexes(headers, authserv_id)


class _OldSpf(Spf):
    """Spf with on_verdict as it was before the cuts, line for line."""

    def on_verdict(self, session: Session, envelope: Envelope, verdict: Verdict) -> Verdict:
        if self.options.remove_forged:
            for index in _old_forged_indexes(envelope.headers, self.authserv_id):
                envelope.edits.append(HeaderEdit("change", "Authentication-Results", "", index))
        if self.options.authentication_results:
            spf_state = envelope.check_state("spf").get("evaluation")
            dkim, dmarc, arc = (envelope.check_state(name).get("result") for name in ("dkim", "dmarc", "arc"))
            if any(r is not None for r in (spf_state, dkim, dmarc, arc)) or session.authenticated:
                value = _fresh_build(self.authserv_id, auth_user=session.auth_user, spf=spf_state, dkim=dkim, dmarc=dmarc, arc=arc)
                envelope.edits.append(HeaderEdit("insert", "Authentication-Results", value, 0))
                envelope.check_state("spf")["authentication_results"] = value
        return verdict


def _envelope(headers: list[tuple[str, bytes]], spf: dict[str, str] | None, dkim: Any, dmarc: Any, arc: Any) -> Envelope:
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers.extend(headers)
    for name, key, value in (("spf", "evaluation", spf), ("dkim", "result", dkim), ("dmarc", "result", dmarc), ("arc", "result", arc)):
        if value is not None:
            envelope.check_state(name)[key] = value
    return envelope


@pytest.mark.parametrize("remove_forged", [True, False])
@pytest.mark.parametrize("authentication_results", [True, False])
@pytest.mark.parametrize("authserv_id", ["", "mx.test"])
def test_on_verdict_edits_and_state_equal_the_ones_before(remove_forged: bool, authentication_results: bool, authserv_id: str) -> None:
    config = Config.model_validate({"milter": {"authserv_id": authserv_id, "hostname": "host.test"},
                                    "checks": {"spf": {"remove_forged": remove_forged, "authentication_results": authentication_results}}})
    services: Any = SimpleNamespace(config=config, resolver=None)
    new, old = Spf(services), _OldSpf(services)
    headers = [("Authentication-Results", b"mx.test; spf=pass"), ("Subject", b"x"), ("authentication-results", b"host.test; dkim=pass"), ("From", b"a@b")]
    verdict = Verdict(action=Action.ACCEPT, score=0.0, symbols={}, details={}, reason="")
    for auth_user, spf, dkim, dmarc, arc in itertools.product(["", "alice"], SPFS[:3], DKIMS[:3], DMARCS[:2], ARCS[:3]):
        session = Session(auth_user=auth_user)
        envelopes = [_envelope(headers, spf, dkim, dmarc, arc) for _ in range(2)]
        assert new.on_verdict(session, envelopes[0], verdict) is verdict
        old.on_verdict(session, envelopes[1], verdict)
        assert envelopes[0].edits == envelopes[1].edits
        assert envelopes[0]._check_states == envelopes[1]._check_states  # noqa: SLF001 - the states each check reads
