"""Rule tuning from evidence: symbol statistics, what-if rescoring, mass-check reports.

Pure functions of log rows (dictionaries as :meth:`Store.messages` returns
them) and of check results, so that ``milterd rules stats|whatif`` and
``milterd check --ham/--spam`` can be recomputed by a test.  Re-scoring uses
:func:`milterd.message.policy.decide`, exactly as the milter decides.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Any, Iterable, Mapping

from .addresses import as_judged, client_networks
from .checks import Check, attachments, clamav, discover
from .checks import spamassassin as spamd
from .checks.bayes import SKIPPED_CONFIDENT, confident, spoke
from .checks.spamassassin import SPAMASSASSIN
from .config import ActionsSection, Config, MilterSection
from .message.model import Action, Hit
from .message.policy import AFTER_VERDICT_SYMBOLS, SCORE_GREYLIST_SYMBOLS, THRESHOLD_ACTIONS, UNSCORED, GreylistStatus, decide, threshold_action, wants_spam

if TYPE_CHECKING:
    from .services import Services

#: Actions that count as "caught" for ``rules stats`` (the message did not reach the inbox).
SPAM_ACTIONS = frozenset({"reject", "quarantine"})
#: Actions of a deferred attempt (451): no final answer, the client retries, and the retry
#: is a log row of its own (with the same symbols, plus GREYLIST_PASSED after greylisting).
DEFERRED_ACTIONS = frozenset({"greylist", "tempfail"})
#: Symbols whose score is carried by each hit (a scanner's own score), not a weight of the
#: rules: ``whatif --set symbols.NAME`` cannot re-weight them; why, and what to do instead.
HIT_SCORED: Mapping[str, str] = {
    SPAMASSASSIN: "its score is SpamAssassin's own for each message, not a weight, and cannot be re-weighted; "
                  "try the thresholds instead (--set actions.NAME=THRESHOLD), or change SpamAssassin's rule scores in its own local.cf",
}
#: Symbols added to the verdict with a fixed 0.0 after the decision (signing, sealing), so
#: that no weight of theirs ever counts: ``whatif --set symbols.NAME`` refuses them.
AFTER_DECISION: Mapping[str, str] = {
    name: "it is added with a fixed score of 0 after the verdict (signing, sealing), so its weight never counts and cannot be re-weighted"
    for name in AFTER_VERDICT_SYMBOLS
}
#: The mark of a message that was not scored: no weight of it counts.
UNSCORED_MARK: Mapping[str, str] = {
    UNSCORED: "it marks a message that was not scored (a trusted or authenticated client's, or every recipient one of "
              "[milter] spam_lovers) with a fixed score of 0, so its weight never counts and cannot be re-weighted",
}
#: Symbols the policy adds with a fixed 0.0 to a message the ``[actions] greylist`` threshold
#: reached (``[greylist] mode = "score"``).  In triplet mode the greylist check emits them as hits
#: of their own, and there their weight counts.
SCORE_GREYLIST: Mapping[str, str] = {
    name: "with [greylist] mode = \"score\" it is added with a fixed score of 0 by the greylisting decision, "
          "so its weight never counts and cannot be re-weighted; try the thresholds instead (--set actions.greylist=THRESHOLD)"
    for name in SCORE_GREYLIST_SYMBOLS
}
#: Every symbol whose logged score no weight changes (in score mode): :func:`not_weighted`.
FIXED_ZERO: frozenset[str] = frozenset(AFTER_DECISION) | frozenset(SCORE_GREYLIST) | frozenset(UNSCORED_MARK)
#: A symbol that, in a row, forces the score of the symbols named with a prefix to 0 whatever
#: their weight: a DMARC failure of a message sealed by a trusted ARC sealer is not scored.
OVERRIDES: Mapping[str, str] = {"DMARC_ARC_OVERRIDE": "DMARC_FAIL_"}
#: Symbols whose hit may force an action below reject (quarantine, 451 or discard, by ``[clamav]
#: action``, the DMARC and attachment actions, a scanner's ``on_error``).  A score that reached a
#: more severe action names the score as the reason, so the row does not say whether the hit forced
#: anything: ``whatif`` keeps such a message at its action rather than lower it past what may be forced.
MAY_FORCE: frozenset[str] = frozenset({
    clamav.VIRUS, clamav.ERROR, spamd.ERROR, "DMARC_FAIL_REJECT", "DMARC_FAIL_QUARANTINE",
    attachments.BANNED, attachments.DOUBLE, attachments.MISMATCH, attachments.MACRO, attachments.ENCRYPTED, attachments.LIMIT, attachments.UNREADABLE, attachments.MIME_LIMIT,
    attachments.ERROR, "EOM_TIMEOUT", "CHECK_ERROR",  # 451: a scanner that failed or ran out of time, a spool unread
})
#: Which setting of milter.conf says a hit of a :data:`MAY_FORCE` symbol forces nothing (only scores, or does not
#: apply): the attribute path from the configuration, and the values that force nothing.
_FORCES_NOTHING_WHEN: Mapping[str, tuple[str, frozenset[str]]] = {
    **{symbol: (f"checks.attachments.{field}", frozenset({"score", "off"})) for symbol, field in attachments.ACTION_OPTIONS.items()},
    attachments.ERROR: ("checks.attachments.limit_action", frozenset({"score", "off"})),  # held with limit_action
    clamav.ERROR: ("clamav.on_error", frozenset({"accept"})),
    spamd.ERROR: ("spamd.on_error", frozenset({"accept"})),
    "DMARC_FAIL_REJECT": ("checks.dmarc.reject_action", frozenset({"score"})),
    "DMARC_FAIL_QUARANTINE": ("checks.dmarc.quarantine_action", frozenset({"score"})),
    "CHECK_ERROR": ("milter.on_check_error", frozenset({"accept"})),
}


def forced_whatever_configured(row: Mapping[str, Any]) -> frozenset[str]:
    """The symbols of *row* whose hit forced a 451 whatever :data:`_FORCES_NOTHING_WHEN`'s setting says: a
    CHECK_ERROR of a spool that could not be read back (its detail "check: error"; a check that raised
    under ``on_check_error = "accept"`` logs the check's name alone), an ATTACH_ERROR of this machine's
    disk or memory (:data:`milterd.checks.attachments.LOCAL_FAILURE`)."""
    details = row.get("details") or {}
    found = set()
    if ": " in str(details.get("CHECK_ERROR") or ""):
        found.add("CHECK_ERROR")
    if str(details.get(attachments.ERROR) or "").startswith(attachments.LOCAL_FAILURE + ":"):
        found.add(attachments.ERROR)
    return frozenset(found)


def forcing_symbols(config: Config) -> frozenset[str]:
    """The symbols of :data:`MAY_FORCE` whose hit may force an action with *config*: an attachment category
    that only scores, a scanner that fails open, a DMARC action of "score" force nothing (``whatif`` held such
    a message at its action although the milter, so configured, would lower it)."""
    forcing = set(MAY_FORCE)
    for symbol, (path, values) in _FORCES_NOTHING_WHEN.items():
        setting: Any = config
        for name in path.split("."):
            setting = getattr(setting, name)
        if setting in values:
            forcing.discard(symbol)
    return frozenset(forcing)


#: How far a row's logged score may be from the sum of its logged symbols (each rounded to 3 places, the sum to 2).
SCORE_SLACK = 0.02
#: How many example messages ``whatif`` and the mass check show per group.
EXAMPLES = 3


# --- the symbol table -------------------------------------------------------
@dataclass(frozen=True)
class SymbolInfo:
    """A symbol, its scores and the check that emits it."""

    name: str
    default: float
    score: float
    check: str
    check_description: str
    description: str
    enabled: bool
    builtin: bool


def symbol_table(services: "Services") -> list[SymbolInfo]:
    """Every symbol known to *services*: built-in ones (also of disabled checks) and the rules' own."""
    enabled = {type(c) for c in services.checks}
    table: dict[str, SymbolInfo] = {}
    for cls in discover():
        for symbol in cls.symbols:
            table[symbol.name] = SymbolInfo(
                symbol.name, symbol.score, services.weight(symbol.name), cls.name, cls.description,
                services.describe(symbol.name) or symbol.description, cls in enabled, True,
            )
    for check in services.checks:
        for symbol in check.dynamic_symbols():
            if symbol.name not in table:
                table[symbol.name] = SymbolInfo(
                    symbol.name, symbol.score, services.weight(symbol.name), check.name, check.description,
                    services.describe(symbol.name) or symbol.description, True, False,
                )
    return sorted(table.values(), key=lambda s: (s.check, s.name))


def symbols_toml(classes: Iterable[type[Check]] | None = None) -> str:
    """rules/symbols.toml: every built-in symbol with its default score, grouped by check."""
    lines = [
        "# Scores of every symbol the built-in checks emit, with their defaults.",
        "# Generated by `milterd rules symbols > rules/symbols.toml`; edit a number to re-weight",
        "# that symbol (0 switches it off).  A symbol's description is the comment after it.",
        "# Custom rules (rules/local.toml) carry their own scores.",
        "",
        "[symbols]",
    ]
    for cls in sorted(classes if classes is not None else discover(), key=lambda c: c.name):
        if not cls.symbols:
            continue
        lines.append("")
        lines.append(f"# --- {cls.name}: {cls.description}".rstrip(": "))
        for symbol in sorted(cls.symbols, key=lambda s: s.name):
            comment = f"  # {symbol.description}" if symbol.description else ""
            lines.append(f"{symbol.name} = {_number(symbol.score)}{comment}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] + ".0" if text.endswith(".0") else text


# --- rules stats -------------------------------------------------------------
@dataclass
class SymbolStats:
    """How one symbol behaved over a set of logged messages."""

    symbol: str
    hits: int = 0
    share: float = 0.0
    mean_score: float = 0.0
    total_score: float = 0.0
    in_spam_actions: int = 0
    released_as_ham: int = 0
    deferred: int = 0  # on deferred attempts (greylist, tempfail), not in the counts above

    def as_json(self) -> dict[str, Any]:
        """The JSON object of ``rules stats --json``."""
        return {
            "symbol": self.symbol, "hits": self.hits, "share": round(self.share, 4), "mean_score": round(self.mean_score, 3),
            "in_reject_or_quarantine": self.in_spam_actions, "released_as_ham": self.released_as_ham,
            "on_deferred_attempts": self.deferred,
        }


@dataclass
class LogStats:
    """``rules stats``: the messages of the log and, apart, the deferred attempts."""

    messages: int = 0
    deferred: Counter[str] = field(default_factory=Counter)
    symbols: list[SymbolStats] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The JSON object of ``rules stats --json``."""
        return {
            "messages": self.messages, "symbols": [s.as_json() for s in self.symbols],
            "deferred_attempts": sum(self.deferred.values()), "deferred_by_action": dict(self.deferred),
        }


def deferred_attempt(row: Mapping[str, Any]) -> bool:
    """Whether *row* is an attempt answered 451 (greylisted, or a tempfail): not a message
    with a final answer, since the client retries and the retry is logged again."""
    return row.get("action") in DEFERRED_ACTIONS


def log_stats(rows: Iterable[Mapping[str, Any]]) -> LogStats:
    """The number of messages and, per symbol, hits, share of messages, mean score,
    how often part of a reject or quarantine and how often on a message released as ham.

    Deferred attempts (:func:`deferred_attempt`) are counted apart, by action and per
    symbol, and left out of the rest: a message greylisted and then passed on its retry
    is one message, the retry's row.  Symbols sorted by hits, most first."""
    report = LogStats()
    stats: dict[str, SymbolStats] = {}
    for row in rows:
        deferred = deferred_attempt(row)
        if deferred:
            report.deferred[str(row.get("action"))] += 1
        else:
            report.messages += 1
        for name, score in (row.get("symbols") or {}).items():
            entry = stats.setdefault(name, SymbolStats(name))
            if deferred:
                entry.deferred += 1
                continue
            entry.hits += 1
            value = float(score)
            entry.total_score += 0.0 if math.isnan(value) else value  # NaN counts 0, as the policy counts it (score_hits)
            if row.get("action") in SPAM_ACTIONS:
                entry.in_spam_actions += 1
            if row.get("released_as_ham"):
                entry.released_as_ham += 1
    total = report.messages
    for entry in stats.values():
        entry.share = entry.hits / total if total else 0.0
        entry.mean_score = entry.total_score / entry.hits if entry.hits else 0.0
    report.symbols = sorted(stats.values(), key=lambda s: (-s.hits, -s.deferred, s.symbol))
    return report


# --- rules whatif --------------------------------------------------------------
def unscored(row: Mapping[str, Any], milter: MilterSection, delimiters: str = "", local: bool = True) -> bool:
    """Whether the milter did not score this message (trusted or authenticated client, or every recipient one of
    ``spam_lovers``, with or without its address extension given *delimiters*: ``recipient_delimiter``).  A row
    without a client address is a local submission (unix socket, sendmail: trusted) when *local*; a client of
    unknown address family, scored, leaves one too, so a row known to have been scored is judged with *local* False.
    A row that says so itself (UNSCORED, logged since milterd marks them) is unscored whatever the settings now: no
    check's symbols were weighed, and a trusted network removed since does not make it a scored message."""
    if UNSCORED in (row.get("symbols") or {}):
        return True
    if row.get("auth_user") and milter.skip_authenticated:
        return True
    if wants_spam(row.get("recipients") or [], milter.spam_lovers, delimiters):
        return True
    if not milter.skip_trusted:
        return False
    address = row.get("client_addr") or ""
    if not address:
        return local  # a local (unix socket, sendmail) submission, most likely
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    ip = as_judged(ip)  # a row logged before milterd judged such clients as IPv4
    return any(ip in net for net in client_networks(milter.trusted_networks))


def score_derived(row: Mapping[str, Any], milter: MilterSection, delimiters: str = "") -> bool:
    """Whether the row's action came from its score (so a new score can re-derive it).

    Actions forced by a hit (virus, DNSBL or SPF reject, greylisting, a store
    failure) or decided before end of data have another reason and are kept.
    So is a 451 of a greylist store that did not answer (GREYLIST_ERROR with
    action tempfail: ``[greylist] on_error = "tempfail"``), whose reason in score
    mode starts with the score that greylisted it: the store's failure, not the
    score, answered 451, and re-scored it would pass as if the store had answered
    (or as ``on_error = "accept"`` lets it through), as a tempfail of a scanner's
    error is not lowered.  With ``on_error = "accept"`` the row's action is the
    score's (the message went on) and is re-derived as any other.
    """
    if row.get("action") == Action.TEMPFAIL.label and "GREYLIST_ERROR" in (row.get("symbols") or {}):
        return False
    reason = row.get("reason") or ""
    if reason.startswith("score "):
        return True
    return row.get("action") == "accept" and not reason and not unscored(row, milter, delimiters)


@dataclass
class Rescored:
    """One logged message, re-scored."""

    row: Mapping[str, Any]
    old_action: str
    new_action: str
    old_score: float
    new_score: float
    #: Why the row was kept at its action ('' when it was re-scored): "forced" (forced, decided
    #: before end of data, or not scored), "may_force" (a hit of :data:`MAY_FORCE` may hold it at
    #: its action), "unexplained" (its symbols do not add up to its logged score: a row of an older version, say).
    why: str = ""
    #: The changes would have the tiers skip spamd, which answered when the row was logged: re-scored without its points.
    skips_spamd: bool = False

    @property
    def kept(self) -> bool:
        """Whether the row keeps its logged action whatever the changes (:attr:`why` says why)."""
        return bool(self.why)


def logged_greylist(row: Mapping[str, Any]) -> GreylistStatus | None:
    """The greylist store's answer recorded in *row*, as :func:`decide` takes it.

    A message that passed greylisting (GREYLIST_PASSED: the retry after the
    delay), was exempt from it (GREYLIST_EXEMPT) or whose greylist store did not answer (GREYLIST_ERROR) was not
    deferred: a score at the greylist threshold gets the action below it, as
    the milter gave.  Otherwise None (a score that greylists defers).  A row that
    GREYLIST_ERROR tempfailed (``[greylist] on_error = "tempfail"``) is not
    re-derived at all (:func:`score_derived`).
    """
    symbols = row.get("symbols") or {}
    if "GREYLIST_ERROR" in symbols:
        return GreylistStatus(needed=False, error=str((row.get("details") or {}).get("GREYLIST_ERROR") or "greylist store unavailable"))
    if "GREYLIST_PASSED" in symbols:
        return GreylistStatus(needed=False)
    if "GREYLIST_EXEMPT" in symbols:
        return GreylistStatus(needed=False, exempt=True)
    return None


def not_weighted(greylist_mode: str = "score") -> Mapping[str, str]:
    """The symbols ``whatif --set symbols.NAME`` cannot re-weight, with why: those scored by their
    hit, those added with a fixed 0 after the decision and, with *greylist_mode* ``score``, the
    greylisting decision's (in triplet mode the greylist check emits them, weighted)."""
    return {**HIT_SCORED, **AFTER_DECISION, **UNSCORED_MARK, **(SCORE_GREYLIST if greylist_mode == "score" else {})}


def fixed_scores(symbols: Mapping[str, Any], fixed: AbstractSet[str] = FIXED_ZERO) -> set[str]:
    """The symbols of a row whose logged score no weight changes: scored by their hit
    (:data:`HIT_SCORED`), logged with a fixed score (*fixed*: :data:`FIXED_ZERO` by default)
    or forced to 0 by another symbol of the row (:data:`OVERRIDES`)."""
    prefixes = tuple(prefix for override, prefix in OVERRIDES.items() if override in symbols)
    return {name for name in symbols if name in HIT_SCORED or name in fixed or (bool(prefixes) and name.startswith(prefixes))}


@dataclass(frozen=True)
class SpamdSkip:
    """The tiers' bounds (``[learner] skip_spamd_above`` and ``skip_spamd_below``) and the symbols that are only
    counted after the tiers decided (meta rules: ``on_symbols``), which the score before spamd leaves out."""

    above: float | bool
    below: float | bool
    after: frozenset[str] = frozenset()
    #: The meta rules that name one of spamd's symbols (:meth:`~milterd.checks.custom.CustomRules.metas_naming`): whether
    #: they hit where the tiers would skip spamd is not known from the row.
    spamd_metas: frozenset[str] = frozenset()

    def asks_spamd(self, symbols: Mapping[str, float]) -> bool:
        """Whether a row whose spamd was skipped as confident (SPAMD_SKIPPED_CONFIDENT), with these (re-weighted)
        *symbols*, would have spamd asked now: its score before spamd is no longer beyond a bound."""
        if SKIPPED_CONFIDENT not in symbols:
            return False
        return not confident(self.before_spamd(symbols), True, self.above, self.below)

    def skips_spamd(self, symbols: Mapping[str, float]) -> bool:
        """Whether a row whose spamd answered (SPAMASSASSIN), with these (re-weighted) *symbols*, would have
        spamd skipped now: the classifier spoke and the score before spamd is beyond a bound."""
        if SPAMASSASSIN not in symbols:
            return False
        return confident(self.before_spamd(symbols), spoke(symbols), self.above, self.below)

    def before_spamd(self, symbols: Mapping[str, float]) -> float:
        """The score the tiers compare with the bounds, as the milter counts it: without spamd's answer and the
        symbols counted after the tiers."""
        return round(sum(score for name, score in symbols.items() if name not in self.after and name not in SPAMD_ANSWER), 2)


#: The symbols of spamd's answer (fresh or cached), which a message whose spamd the tiers skip does not have.
SPAMD_ANSWER = frozenset({SPAMASSASSIN, spamd.CACHED})


def without_spamd(symbols: Mapping[str, float]) -> dict[str, float]:
    """*symbols* as the milter logs them when the tiers skip spamd: no answer of spamd, SPAMD_SKIPPED_CONFIDENT."""
    return {**{name: score for name, score in symbols.items() if name not in SPAMD_ANSWER}, SKIPPED_CONFIDENT: 0.0}


def rescore(
    row: Mapping[str, Any], weights: Mapping[str, float], actions: ActionsSection, milter: MilterSection, fixed: AbstractSet[str] = FIXED_ZERO,
    delimiters: str = "", may_force: AbstractSet[str] = MAY_FORCE, spamd_skip: SpamdSkip | None = None,
) -> Rescored:
    """*row* with the symbols of *weights* re-weighted (but for :func:`fixed_scores` with *fixed*) and the thresholds of *actions*.

    A row whose action a hit forced (a virus, a DMARC policy) keeps it, unless the new score
    reaches a more severe threshold action: the milter takes the more severe of the two.  A row
    of an unscored message (trusted or authenticated client, spam_lovers' with *delimiters*: :func:`unscored`)
    keeps its action; one whose action its score chose, unscored with the settings now, takes accept (what no
    threshold chooses).  *may_force*: the symbols whose hit may have forced an action (:func:`forcing_symbols`).
    A row whose spamd was skipped as confident (SPAMD_SKIPPED_CONFIDENT) whose action the changes would move and
    that they would no longer leave beyond *spamd_skip*'s bounds keeps its action: spamd would be asked, and
    what it says is not known.  A row whose spamd answered that the changes would put beyond the bounds is
    re-scored without spamd's points (:attr:`Rescored.skips_spamd`): the milter would not ask it."""
    logged = row.get("symbols") or {}
    may_force = may_force | forced_whatever_configured(row)
    fixed_names = fixed_scores(logged, fixed)
    symbols = {name: float(score if name in fixed_names else weights.get(name, score)) for name, score in logged.items()}
    skips = spamd_skip is not None and spamd_skip.skips_spamd(symbols)
    old_action, old_score = str(row.get("action")), float(row.get("score") or 0.0)
    if skips and spamd_skip is not None and spamd_skip.spamd_metas:
        # Without spamd's answer, the meta rules naming its symbols may hit otherwise: not known from the row.
        return Rescored(row, old_action, old_action, old_score, old_score, why="spamd_unknown")
    if skips:
        symbols = without_spamd(symbols)
    hits = [Hit(name, score=score) for name, score in symbols.items()]
    verdict = decide(hits, lambda _s: 0.0, actions, greylist=logged_greylist(row))
    unexplained = abs(sum(float(score) for score in logged.values()) - old_score) > SCORE_SLACK
    if not score_derived(row, milter, delimiters):
        if unscored(row, milter, delimiters) or old_action not in _LABELS or _severity(verdict.action.label) <= _severity(old_action):
            return Rescored(row, old_action, old_action, old_score, verdict.score, why="forced")
        if unexplained:
            return Rescored(row, old_action, old_action, old_score, verdict.score, why="unexplained")
        if spamd_skip is not None and spamd_skip.asks_spamd(symbols):
            return Rescored(row, old_action, old_action, old_score, verdict.score, why="spamd_unknown")
        return Rescored(row, old_action, verdict.action.label, old_score, verdict.score, skips_spamd=skips)
    if unscored(row, milter, delimiters, local=False):
        # Scored when logged, no longer with the settings now (spam_lovers or trusted_networks added since): only
        # what a hit forces applies, as the milter does; a row whose hits may have forced one (not logged) keeps its action.
        if may_force & logged.keys():
            return Rescored(row, old_action, old_action, old_score, verdict.score, why="may_force")
        unscored_verdict = decide(hits, lambda _s: 0.0, actions, greylist=logged_greylist(row), scored=False)
        return Rescored(row, old_action, unscored_verdict.action.label, old_score, unscored_verdict.score, skips_spamd=skips)
    if unexplained:
        # Re-scored, it would move by what its symbols do not account for, not by the changes asked.
        return Rescored(row, old_action, old_action, old_score, verdict.score, why="unexplained")
    new_action = verdict.action.label
    if new_action != old_action and spamd_skip is not None and spamd_skip.asks_spamd(symbols):
        return Rescored(row, old_action, old_action, old_score, verdict.score, why="spamd_unknown")
    # A forced action the score matched is named as the reason, and none is milder than quarantine:
    # only a score action above quarantine can hide one, and only a lower new action would undo it.
    if may_force & logged.keys() and Action.QUARANTINE < _severity(old_action) and _severity(new_action) < _severity(old_action):
        return Rescored(row, old_action, old_action, old_score, verdict.score, why="may_force")
    return Rescored(row, old_action, new_action, old_score, verdict.score, skips_spamd=skips)


_LABELS = frozenset(action.label for action in Action)


def _severity(label: str) -> Action:
    try:
        return Action.parse(label)
    except ValueError:  # an action this version does not know (an older row's)
        return Action.ACCEPT


@dataclass
class WhatIfReport:
    """What a change of weights and thresholds would have done to logged messages."""

    messages: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    #: Rows kept because a hit of :data:`MAY_FORCE` may hold them, by action.
    kept_may_force: Counter[str] = field(default_factory=Counter)
    #: Rows kept because their symbols do not add up to their logged score, by action.
    unexplained: Counter[str] = field(default_factory=Counter)
    #: Rows whose spamd was skipped as confident and would not be now, by action: spamd's part is not known.
    spamd_unknown: Counter[str] = field(default_factory=Counter)
    #: Rows whose spamd answered and would be skipped as confident with the changes, by action: re-scored without its points.
    spamd_skipped: Counter[str] = field(default_factory=Counter)
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[Rescored]] = field(default_factory=dict)
    after: Counter[str] = field(default_factory=Counter)
    before: Counter[str] = field(default_factory=Counter)
    #: Symbols of the rows that no check or rule emits now (renamed or removed since they were
    #: logged), with how many rows carry each: they keep their logged scores, no --set reaches them.
    unknown: Counter[str] = field(default_factory=Counter)
    #: Of the changes, those the settings in effect (thresholds and, with *in_effect*, weights) make with no change at all (by (from, to)):
    #: the rows were logged under other thresholds or weights, not moved by what was asked.
    unasked: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Deferred attempts (:func:`deferred_attempt`), by action: not messages, not re-scored
    #: (the retry is a row of its own), as ``rules stats`` counts them.
    deferred: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        """How many messages would get another action."""
        return sum(self.changes.values())

    def as_json(self) -> dict[str, Any]:
        """The JSON object of ``rules whatif --json``."""
        return {
            "messages": self.messages,
            "deferred_attempts": sum(self.deferred.values()),
            "deferred_by_action": dict(self.deferred),
            "changed": self.changed,
            "changed_without_changes": sum(self.unasked.values()),
            "changes_without_changes": [{"from": old, "to": new, "count": count} for (old, new), count in self.unasked.most_common()],
            "kept_forced": dict(self.kept),
            "kept_may_be_forced": dict(self.kept_may_force),
            "kept_unexplained": dict(self.unexplained),
            "kept_spamd_unknown": dict(self.spamd_unknown),
            "rescored_without_spamd": dict(self.spamd_skipped),
            "unknown_symbols": dict(self.unknown.most_common()),
            "before": dict(self.before),
            "after": dict(self.after),
            "changes": [
                {"from": old, "to": new, "count": count, "examples": [_example(r) for r in self.examples.get((old, new), [])]}
                for (old, new), count in self.changes.most_common()
            ],
        }


def json_safe(value: Any) -> Any:
    """*value* with every float that is not finite (a NaN or infinite score an older version
    logged) as None: JSON has no NaN or Infinity, and ``json.dump`` would write them anyway."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def _example(item: Rescored) -> dict[str, Any]:
    row = item.row
    time: Any = row.get("time")
    return {
        "id": row.get("id"), "time": time.isoformat() if hasattr(time, "isoformat") else time, "queue_id": row.get("queue_id"),
        "sender": row.get("sender"), "subject": row.get("subject"), "old_score": item.old_score, "new_score": item.new_score,
    }


def whatif(
    rows: Iterable[Mapping[str, Any]], weights: Mapping[str, float], actions: ActionsSection, milter: MilterSection,
    known: AbstractSet[str] | None = None, current: ActionsSection | None = None, greylist_mode: str = "score",
    delimiters: str = "", may_force: AbstractSet[str] = MAY_FORCE, spamd_skip: SpamdSkip | None = None,
    in_effect: Mapping[str, float] | None = None,
) -> WhatIfReport:
    """Re-score every row; count the messages whose action would change, by (from, to).

    *in_effect* (the weights of rules/ and the checks now, by symbol) re-weights what *weights* does not name:
    a row logged before a weight was changed in rules/ is scored as the milter scores it now.

    With *known* (the symbols checks and rules emit now), the rows' other symbols are counted
    (:attr:`WhatIfReport.unknown`): logged by an older version or a rule since removed, they
    keep their logged scores whatever ``--set`` says of a new name.  With *current* (the
    thresholds in effect), each change that these alone would make, with no weight changed,
    is counted too (:attr:`WhatIfReport.unasked`): the settings changed since it was logged.
    Deferred attempts are counted apart (:attr:`WhatIfReport.deferred`), as :func:`log_stats` does;
    *greylist_mode* (``[greylist] mode``) says which symbols have a fixed score (:func:`not_weighted`); *delimiters*
    (``[checks.local_domains] recipient_delimiter``) which recipients are spam_lovers (:func:`unscored`); *may_force*
    which hits may have forced an action (:func:`forcing_symbols`); *spamd_skip* the tiers' bounds (:func:`rescore`)."""
    report = WhatIfReport()
    fixed = frozenset(not_weighted(greylist_mode))
    now = dict(in_effect or {})
    weights = {**now, **weights}
    for row in rows:
        if deferred_attempt(row):
            report.deferred[str(row.get("action"))] += 1
            continue
        item = rescore(row, weights, actions, milter, fixed, delimiters, may_force, spamd_skip)
        if known is not None:
            report.unknown.update(name for name in (row.get("symbols") or {}) if name not in known)
        report.messages += 1
        if item.skips_spamd:
            report.spamd_skipped[item.old_action] += 1
        report.before[item.old_action] += 1
        report.after[item.new_action] += 1
        if item.why == "may_force":
            report.kept_may_force[item.old_action] += 1
        elif item.why == "unexplained":
            report.unexplained[item.old_action] += 1
        elif item.why == "spamd_unknown":
            report.spamd_unknown[item.old_action] += 1
        elif item.kept:
            report.kept[item.old_action] += 1
        elif item.new_action != item.old_action:
            key = (item.old_action, item.new_action)
            report.changes[key] += 1
            # Only the rows that change are re-scored twice: most rows do not.
            if current is not None and rescore(row, now, current, milter, fixed, delimiters, may_force, spamd_skip).new_action != item.old_action:
                report.unasked[key] += 1
            examples = report.examples.setdefault(key, [])
            if len(examples) < EXAMPLES:
                examples.append(item)
    return report


# --- mass check ------------------------------------------------------------------
#: Actions that mark nothing: the message is delivered as it came (greylist: once retried) or was not judged.
_NOT_FLAGGED = frozenset({"accept", "greylist", "tempfail"})


@dataclass(frozen=True)
class Judged:
    """One message of a labelled corpus and what the pipeline made of it."""

    kind: str  # "ham" or "spam"
    folder: str
    label: str
    score: float
    action: str
    symbols: Mapping[str, float]
    forced: bool = False  # the action was forced by a hit, not chosen by the score
    #: False for a message the policy did not score (trusted or authenticated client): no threshold applies to it.
    scored: bool = True

    def flagged(self, threshold: float | None = None) -> bool:
        """Flagged at the configured thresholds (None) or at a score *threshold*
        (where an unscored message keeps its action, forced or accept).  A greylisted message is delivered
        unmarked once retried, so it is not flagged (as :func:`milterd.message.policy.flagged`)."""
        if threshold is None or self.forced or not self.scored:
            return self.action not in _NOT_FLAGGED
        return self.score >= threshold


def forced_action(action: Action, score: float, actions: ActionsSection) -> bool:
    """Whether *action* is more severe than what the thresholds choose for *score*."""
    return action > threshold_action(score, actions)


def configured_thresholds(actions: ActionsSection) -> dict[float, list[str]]:
    """Each threshold of ``[actions]`` that is on, with the actions at it."""
    found: dict[float, list[str]] = {}
    for _action, key in THRESHOLD_ACTIONS:
        value = getattr(actions, key)
        if value is not False:
            found.setdefault(float(value), []).append(key)
    return found


def mass_report(items: Iterable[Judged], actions: ActionsSection, extra: Iterable[float] = (3.0, 5.0, 8.0, 10.0, 15.0, 20.0)) -> dict[str, Any]:
    """Spam caught and ham flagged per folder and overall, at the configured thresholds
    (``flagged``: any action but accept) and at each score threshold, with the
    symbols behind the false positives and the misses.

    Messages the policy did not score (:attr:`Judged.scored`) are left out of the counts
    at each score threshold (``at``, ``thresholds``: no threshold applies to them) and
    counted apart (``unscored``); ``scored`` gives the messages those counts are out of."""
    items = list(items)
    named = configured_thresholds(actions)
    thresholds = sorted(set(named) | {float(t) for t in extra})
    folders: dict[tuple[str, str], list[Judged]] = {}
    for item in items:
        folders.setdefault((item.folder, item.kind), []).append(item)

    def summary(group: list[Judged]) -> dict[str, Any]:
        flagged = sum(1 for i in group if i.flagged())
        scored = [i for i in group if i.scored]
        return {
            "messages": len(group), "flagged": flagged, "rate": _rate(flagged, len(group)),
            "scored": len(scored), "unscored": len(group) - len(scored),
            "at": {f"{t:g}": sum(1 for i in scored if i.flagged(t)) for t in thresholds},
        }

    ham = [i for i in items if i.kind == "ham"]
    spam = [i for i in items if i.kind == "spam"]
    false_positives = [i for i in ham if i.flagged()]
    misses = [i for i in spam if not i.flagged()]
    scored_ham = [i for i in ham if i.scored]
    scored_spam = [i for i in spam if i.scored]
    return {
        "thresholds": [{"threshold": t, "actions": named.get(t, []), "spam_caught": sum(1 for i in scored_spam if i.flagged(t)), "ham_flagged": sum(1 for i in scored_ham if i.flagged(t))} for t in thresholds],
        "unscored": {"ham": len(ham) - len(scored_ham), "spam": len(spam) - len(scored_spam)},
        "folders": [{"folder": folder, "kind": kind, **summary(group)} for (folder, kind), group in folders.items()],
        "overall": {"spam": summary(spam), "ham": summary(ham)},
        "false_positives": _behind(false_positives, positive=True),
        "misses": _behind(misses, positive=False),
    }


def _behind(items: list[Judged], positive: bool) -> dict[str, Any]:
    """The symbols that hit a group of messages (most frequent first, then by the
    score they added) and a few examples."""
    counts: Counter[str] = Counter()
    totals: defaultdict[str, float] = defaultdict(float)
    for item in items:
        for name, score in item.symbols.items():
            # False positives: what pushed the score up; misses: everything that hit.
            if score > 0 or not positive:
                counts[name] += 1
                totals[name] += abs(score)
    ranked = sorted(counts, key=lambda n: (-counts[n], -totals[n], n))[:15]
    worst = sorted(items, key=lambda i: -i.score if positive else i.score)[:EXAMPLES * 2]
    return {
        "messages": len(items),
        "symbols": [{"symbol": name, "messages": counts[name], "score": round(totals[name], 2)} for name in ranked],
        "examples": [{"label": i.label, "score": i.score, "action": i.action, "symbols": dict(i.symbols)} for i in worst],
    }


def _rate(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0
