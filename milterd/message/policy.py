"""The policy: from symbols to a verdict, and from a verdict to header edits.

Pure functions of their arguments, so that the milter, ``milterd check`` and
``milterd rules whatif`` decide the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from email.header import Header
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from ..content.headertext import decoded
from .model import Action, HeaderEdit, Hit, Verdict
from .reply import Reply

if TYPE_CHECKING:  # annotations only: checks.dkim's signer imports this module, and config imports the checks
    from ..config import ActionsSection

#: Symbols added to the verdict with a fixed score of 0 after the decision, by signing and sealing
#: (the checks' ``on_verdict``): no weight of theirs counts, and no meta rule sees them.
AFTER_VERDICT_SYMBOLS = ("DKIM_SIGNED", "DKIM_SIGN_ERROR", "ARC_SEALED", "ARC_SEAL_ERROR")
#: Symbols :func:`decide` adds with a fixed score of 0 when the ``[actions] greylist`` threshold
#: greylists (``[greylist] mode = "score"``).  In triplet mode the greylist check emits them as hits.
SCORE_GREYLIST_SYMBOLS = ("GREYLIST", "GREYLIST_PASSED", "GREYLIST_EXEMPT", "GREYLIST_ERROR")

#: The symbol of a message whose end of message outlasted ``Pipeline.eom_budget``.
EOM_TIMEOUT = "EOM_TIMEOUT"
#: The symbols the pipeline itself emits (no check names them): a log row's symbols that are no one's else, and
#: no rule's name (a rule named EOM_TIMEOUT that hit made the pipeline skip the later checks).
#: The symbol (0 points) of a message that was not scored (:func:`unscored_verdict`): the log row says so itself,
#: so that ``rules whatif`` need not guess it from the trusted networks and spam_lovers configured since.
UNSCORED = "UNSCORED"
#: The pipeline's own symbols, each with its description (``milterd check`` prints them beside the checks' own).
PIPELINE_DESCRIPTIONS = {
    "CHECK_ERROR": "A check failed with an internal error and judged nothing (detail: the check; [milter] on_check_error decides)",
    EOM_TIMEOUT: "End of message outlasted its time budget: the message was tempfailed (451 4.4.5)",
    UNSCORED: "Not scored: a trusted or authenticated client's message, or one to spam_lovers only (detail: why); "
              "only forced actions apply",
}
PIPELINE_SYMBOLS = frozenset(PIPELINE_DESCRIPTIONS)

#: Threshold actions, most severe first.
THRESHOLD_ACTIONS = (
    (Action.REJECT, "reject"),
    (Action.QUARANTINE, "quarantine"),
    (Action.GREYLIST, "greylist"),
    (Action.REWRITE_SUBJECT, "rewrite_subject"),
    (Action.ADD_HEADER, "add_header"),
)

SPAM_HEADERS = ("X-Spam-Status", "X-Spam-Score", "X-Spam-Flag")

#: The field a release adds to the copy it re-injects (who released it, when).
RELEASE_HEADER = "X-Milterd-Released"


def spam_verdict_field(name: str) -> bool:
    """Whether a header field called *name* states a verdict a sender must not be able to claim: a spam verdict
    (``X-Spam-*``: SpamAssassin's Level, Report and Checker-Version, or Rspamd's ``X-Spam``) or milterd's
    :data:`RELEASE_HEADER` (an administrator looked at this message and let it through)."""
    lower = name.lower()
    return lower == "x-spam" or lower.startswith("x-spam-") or lower == "x-milterd-released"


def spam_header_names(headers: Mapping[str, int]) -> list[str]:
    """The verdict fields among *headers* (counts by lower-case name) to remove: ours by their names first."""
    ours = [name for name in SPAM_HEADERS if headers.get(name.lower())]
    known = {name.lower() for name in SPAM_HEADERS}
    return ours + sorted(name for name in headers if spam_verdict_field(name) and name not in known)


def score_hits(hits: Iterable[Hit], weight: Callable[[str], float]) -> tuple[dict[str, float], dict[str, str]]:
    """Symbol → score and symbol → detail; a symbol hit twice counts once (its highest score).

    A score that is not a number (NaN: TOML reads ``score = nan``) counts 0: in
    the sum it would make every threshold comparison false and pass the message.
    """
    symbols: dict[str, float] = {}
    details: dict[str, str] = {}
    for hit in hits:
        score = hit.score if hit.score is not None else weight(hit.symbol)
        if math.isnan(score):
            score = 0.0
        if hit.symbol not in symbols or score > symbols[hit.symbol]:
            symbols[hit.symbol] = round(score, 3)
        if hit.detail and hit.symbol not in details:
            details[hit.symbol] = hit.detail
    return symbols, details


#: Characters of a local part by which Postfix routes the mail elsewhere once its domain is local (the percent hack,
#: a bang path, a quoted "@"): bob%example.com@reports.example.org goes to bob@example.com.
_ROUTING = frozenset('%!@:"\\')


def routed(recipient: str) -> bool:
    """Whether *recipient*'s local part (the whole of it, without a domain) may send the mail elsewhere once its
    domain is local (:data:`_ROUTING`): it is not the mailbox its domain names.  Read as Postfix reads it, its
    quoting undone: ``"john.doe"@x`` and ``john\\ doe@x`` are mailboxes, ``"ceo@mx.example"@x`` routes."""
    local, at, _ = recipient.rpartition("@")
    local = local if at else recipient
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = local[1:-1]
    return bool(_ROUTING.intersection(_QUOTED_PAIR.sub(r"\1", local)))


#: A backslash and the character it quotes (RFC 5321's quoted-pair).
_QUOTED_PAIR = re.compile(r"\\(.)")


def wants_spam(recipients: Iterable[str], lovers: Iterable[str], delimiters: str = "") -> bool:
    """Whether every one of *recipients* (at least one) is in *lovers* (``[milter] spam_lovers``: an address,
    ``@domain`` or ``local@``, compared without case): such a message is not scored.  With *delimiters*
    (``[checks.local_domains] recipient_delimiter``, Postfix's), a recipient with an address extension is one
    too when it is without it (Postfix delivers abuse+spamcop@ to abuse@).  A recipient whose local part routes
    elsewhere (:data:`_ROUTING`) never matches."""
    entries = {entry.lower() for entry in lovers}
    if not entries:
        return False
    found = False
    for recipient in recipients:
        address = recipient.lower().rstrip(".")  # abuse@example.org. is delivered to abuse@example.org
        local, at, domain = address.rpartition("@")
        if routed(address):
            return False
        # RCPT TO:<postmaster> (RFC 5321 4.5.1) has no domain: its local part alone.
        names = {address, f"@{domain}", f"{local}@"} if at else {address, f"{address}@"}
        user = without_extension(local if at else address, delimiters)
        if user is not None:
            names |= {f"{user}@{domain}", f"{user}@"} if at else {user, f"{user}@"}
        if not names & entries:
            return False
        found = True
    return found


def without_extension(local: str, delimiters: str) -> str | None:
    """The lower-case local part *local* without its address extension, which starts at the first of the
    *delimiters*; None when it has none, as Postfix's split_addr (no empty user, no owner-x or x-request
    with "-", postmaster, mailer-daemon and double-bounce never split)."""
    local = local.lower()
    if not delimiters or local in ("postmaster", "mailer-daemon", "double-bounce"):
        return None
    if "-" in delimiters and (local.startswith("owner-") or (len(local) > 8 and local.endswith("-request"))):
        return None
    cut = next((at for at, char in enumerate(local) if char in delimiters), -1)
    return local[:cut] if cut > 0 else None


def threshold_action(score: float, actions: ActionsSection) -> Action:
    """The action the thresholds of ``[actions]`` choose for *score*."""
    for action, key in THRESHOLD_ACTIONS:
        threshold = getattr(actions, key)
        if threshold is not False and score >= threshold:
            return action
    return Action.ACCEPT


def unreachable_thresholds(actions: ActionsSection) -> list[str]:
    """Why each threshold of ``[actions]`` that no score can reach is so: at or above a more severe action's, which
    :func:`threshold_action` takes first (reject = 5 with quarantine = 12 quarantines nothing)."""
    found = []
    for position, (_action, key) in enumerate(THRESHOLD_ACTIONS):
        threshold = getattr(actions, key)
        if threshold is False:
            continue
        for _stronger, other in THRESHOLD_ACTIONS[:position]:
            above = getattr(actions, other)
            if above is not False and above <= threshold:
                found.append(f"[actions] {key} = {float(threshold):g} is at or above {other} = {float(above):g}: "
                             f"no message reaches {key} by its score ({other} comes first)")
                break
    return found


@dataclass(frozen=True)
class GreylistStatus:
    """The greylist store's answer for a message the score would greylist.

    ``needed``: some triplet has not waited long enough (``wait`` seconds
    more; ``detail`` names the triplets).  Otherwise the retry passed, or,
    with ``error``, the store did not answer: the message is then answered
    ``reply`` where greylisting fails closed (``[greylist] on_error =
    "tempfail"``), else judged as if greylisting were off.
    """

    needed: bool
    wait: float = 0.0
    detail: str = ""
    error: str = ""
    reply: Reply | None = None
    #: No triplet was judged (every recipient exempt: a whitelist, an auto-whitelisted or DNSWL-listed client):
    #: nothing passed, and the log says GREYLIST_EXEMPT, not GREYLIST_PASSED.
    exempt: bool = False


def greylist_reply(wait: float) -> Reply:
    """The SMTP reply of a greylisted recipient or message."""
    return Reply.tempfail(f"Greylisted, please try again in {max(1, int(round(wait)))} seconds")


def greylists_at_score(verdict: Verdict) -> bool:
    """Whether *verdict* greylists by the ``[actions] greylist`` threshold (not a
    check's own greylisting, which comes with its reply): the greylist store decides."""
    return verdict.action == Action.GREYLIST and verdict.reply is None


def decide(
    hits: Iterable[Hit], weight: Callable[[str], float], actions: ActionsSection, *, scored: bool = True, greylist: GreylistStatus | None = None
) -> Verdict:
    """Add up the hits and choose the action: the most severe of the threshold
    action and any action a hit forces (a virus, a greylisted triplet).

    With ``scored=False`` (trusted or authenticated client) only forced actions count.
    With *greylist* (the store's answer, asked when :func:`greylists_at_score`),
    a message the score greylists waits when ``greylist.needed`` (451 with the
    wait), or is answered ``greylist.reply`` with GREYLIST_ERROR when the store
    did not answer and greylisting fails closed; otherwise the threshold action
    below greylist applies, with GREYLIST_PASSED (or GREYLIST_ERROR when the
    store did not answer; GREYLIST_EXEMPT where every recipient is exempt, ``greylist.exempt``).
    """
    hits = list(hits)
    verdict = _decide(hits, weight, actions, scored)
    if greylist is None or not greylists_at_score(verdict):
        return verdict
    if greylist.reply is not None:
        return replace(
            verdict,
            action=Action.TEMPFAIL,
            reply=greylist.reply,
            reason=f"{verdict.reason}; {greylist.reply}: greylist store unavailable".lstrip("; "),
            symbols={**verdict.symbols, "GREYLIST_ERROR": 0.0},
            details={**verdict.details, "GREYLIST_ERROR": greylist.error or "greylist store unavailable"},
        )
    if greylist.needed:
        return replace(
            verdict,
            reply=greylist_reply(greylist.wait),
            reason=f"{verdict.reason}; greylisted {greylist.detail}".lstrip("; "),
            symbols={**verdict.symbols, "GREYLIST": 0.0},
            details={**verdict.details, "GREYLIST": greylist.detail},
        )
    below = _decide(hits, weight, actions.model_copy(update={"greylist": False}), scored)
    if greylist.error:
        symbol, detail = "GREYLIST_ERROR", greylist.error
    elif greylist.exempt:
        symbol, detail = "GREYLIST_EXEMPT", f"score {verdict.score:g}, every recipient exempt from greylisting"
    else:
        symbol, detail = "GREYLIST_PASSED", f"score {verdict.score:g}, retried after the greylisting delay"
    return replace(below, symbols={**below.symbols, symbol: 0.0}, details={**below.details, symbol: detail})


def unscored_verdict(verdict: Verdict, why: str) -> Verdict:
    """*verdict* of a message not scored (a trusted or authenticated client's, or every recipient a spam lover's),
    marked with UNSCORED (0 points) and *why* in its details."""
    return replace(verdict, symbols={**verdict.symbols, UNSCORED: 0.0}, details={**verdict.details, UNSCORED: why})


def _decide(hits: list[Hit], weight: Callable[[str], float], actions: ActionsSection, scored: bool) -> Verdict:
    symbols, details = score_hits(hits, weight)
    score = round(sum(symbols.values()), 2)
    action = threshold_action(score, actions) if scored else Action.ACCEPT
    reason = _threshold_reason(action, score, actions) if action != Action.ACCEPT else ""
    reply: Reply | None = None
    forced = False
    for hit in hits:
        # A forced action also names the reason when the score alone reached it
        # (a virus in spam is rejected as "Virus found", not "score 21"; `rules whatif`
        # then knows a DMARC quarantine is never lowered by a new threshold).
        if hit.action is not None and (hit.action > action or (hit.action == action and (not forced or (hit.reply and not reply)))):
            action = hit.action
            reason = str(hit.reply) if hit.reply else f"{hit.symbol}{': ' + hit.detail if hit.detail else ''}"
            reply = hit.reply
            forced = True
    if action == Action.REJECT and not reply:
        reply = Reply.reject(f"{actions.reject_message} (score {score:g})")
    required = actions.add_header if actions.add_header is not False else None
    return Verdict(action=action, score=score, symbols=symbols, details=details, reason=reason, reply=reply, required=required, scored=scored)


def _threshold_reason(action: Action, score: float, actions: ActionsSection) -> str:
    key = dict(THRESHOLD_ACTIONS)[action]
    return f"score {score:g} >= {key} {getattr(actions, key):g}"


#: The line length :func:`spam_status` folds to (RFC 5322 §2.1.1's SHOULD), the field name included.
FOLD_WIDTH = 78


#: The actions that mark a message as spam whatever its score; not greylist or tempfail, which judge no content.
_FLAGGING = frozenset({Action.ADD_HEADER, Action.REWRITE_SUBJECT, Action.QUARANTINE, Action.DISCARD, Action.REJECT})


def flagged(verdict: Verdict) -> bool:
    """Whether *verdict* marks the message as spam (X-Spam-Flag: YES, X-Spam-Status: Yes): its score reached
    add_header, or its action is add_header or more severe (a higher threshold with ``add_header = false``, an
    action a check forced), greylist and tempfail aside.  One answer for both headers: a Sieve rule may match either."""
    return verdict.is_spam or verdict.action in _FLAGGING


def spam_status(verdict: Verdict, *, folded: bool = False) -> str:
    """The X-Spam-Status value in SpamAssassin's format (Sieve rules match on it).

    With *folded* (the header milterd adds), a value whose line would pass
    :data:`FOLD_WIDTH` characters is folded as SpamAssassin folds it: after a
    comma of the tests list, each further line starting with a tab ("\\n\\t",
    which the milter sends as a folded header).  Unfolded (CRLF removed, RFC
    5322 §2.2.3) it reads as the one-line value with a tab after each comma
    where it was folded ("A,\\tB").  A short value is the one line as it was.
    """
    flag = "Yes" if flagged(verdict) else "No"
    required = f"{verdict.required:g}" if verdict.required is not None else "none"
    head = f"{flag}, score={verdict.score:.1f} required={required} tests="
    names = sorted(verdict.symbols)
    if not folded or len("X-Spam-Status: ") + len(head) + len(",".join(names)) <= FOLD_WIDTH:
        return head + (",".join(names) or "none")
    lines: list[str] = []
    line, width = head, len("X-Spam-Status: ") + len(head)
    for position, name in enumerate(names):
        token = name + ("," if position < len(names) - 1 else "")
        if line not in (head, "\t") and width + len(token) > FOLD_WIDTH:
            lines.append(line)
            line, width = "\t", 1
        line += token
        width += len(token)
    lines.append(line)
    return "\n".join(lines)


def plan_headers(verdict: Verdict, headers: Mapping[str, int], subject: str | None, actions: ActionsSection) -> list[HeaderEdit]:
    """The header edits that carry out *verdict* on a delivered message.

    *headers* counts the headers the message arrived with by lower-case name:
    incoming X-Spam-* headers are removed (a sender must not be able to claim
    a verdict), then ours are added (``[actions] headers``); at rewrite_subject
    the Subject is tagged.
    A message that was not scored (a trusted or authenticated client's) gets
    no X-Spam-* header of ours: its score would mark the users' own mail.
    """
    edits: list[HeaderEdit] = []
    for name in spam_header_names(headers):
        # Delete from the last occurrence down so that indexes stay valid.
        for index in range(headers.get(name.lower(), 0), 0, -1):
            edits.append(HeaderEdit("change", name, "", index))
    if not verdict.scored:
        return edits
    if actions.headers:
        edits.append(HeaderEdit("add", "X-Spam-Status", spam_status(verdict, folded=True)))
        edits.append(HeaderEdit("add", "X-Spam-Score", f"{verdict.score:.1f}"))
        if flagged(verdict):
            edits.append(HeaderEdit("add", "X-Spam-Flag", "YES"))
    if tags_subject(verdict, actions):
        edits.extend(tag_subject(subject, actions.subject_tag))
    return edits


def tags_subject(verdict: Verdict, actions: ActionsSection) -> bool:
    """Whether :func:`plan_headers` tags the Subject for *verdict*: at rewrite_subject, or at a
    more severe action (quarantine) over the rewrite_subject threshold, and only for a scored message."""
    if not verdict.scored:
        return False
    return verdict.action == Action.REWRITE_SUBJECT or (verdict.action > Action.REWRITE_SUBJECT and _over(verdict.score, actions.rewrite_subject))


def _over(score: float, threshold: float | bool) -> bool:
    return threshold is not False and score >= threshold


def tag_subject(subject: str | None, tag: str) -> list[HeaderEdit]:
    """Prefix the Subject with *tag* once (a retried or re-scanned message is not tagged twice).

    *subject* is the Subject as :meth:`~milterd.message.model.Envelope.header`
    gives it: its bytes decoded as UTF-8, U+FFFD for what is not UTF-8 (8-bit
    Latin-1, say).  Such a Subject is left as it is (see :func:`taggable`):
    the X-Spam-Flag and X-Spam-Status headers still mark the message.  A tag
    already there is seen in the raw value and in the decoded one (an earlier
    hop may have written it in an RFC 2047 encoded-word, ``=?utf-8?q?=5BSPAM=5D_…?=``).
    """
    if subject is None:
        return [HeaderEdit("add", "Subject", written_tag(tag, ""))]
    if subject.lstrip().startswith(tag) or decoded(subject).lstrip().startswith(tag) or not taggable(subject):
        return []
    if not subject.strip():
        return [HeaderEdit("change", "Subject", written_tag(tag, ""), 1)]
    rest = subject.lstrip()
    # Before an encoded-word, the tag's own ends with the space: the blank between two encoded-words is not shown.
    shown = written_tag(tag, rest)
    if shown != tag and _encoded_first(rest):
        shown = written_tag(tag + " ", rest)
    tagged = f"{shown} {rest}"
    if len(f"Subject: {tagged.split(chr(10), 1)[0]}".encode()) > MAX_LINE_OCTETS:
        # Its first line past RFC 5322's 998 octets: Postfix would break it where it is long (smtp_line_length_limit),
        # changing the Subject and breaking a signature over it; folded after the tag, it is read as the same text.
        tagged = f"{shown}\n {rest}"
    return [HeaderEdit("change", "Subject", tagged, 1)]


def written_tag(tag: str, subject: str) -> str:
    """*tag* as it is written before *subject*: as it is when either is ASCII-only text or the Subject is
    8-bit already, else as an RFC 2047 encoded-word (a UTF-8 tag written raw into an ASCII Subject made an
    8-bit header in mail that may not carry one, sent without SMTPUTF8)."""
    if tag.isascii() or not subject.isascii():
        return tag
    return Header(tag, "utf-8").encode(linesep="\n")


def _encoded_first(subject: str) -> bool:
    """Whether *subject* begins with an RFC 2047 encoded-word."""
    return _ENCODED_WORD.match(subject) is not None


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=(\s|$)")


#: The most octets a line of a message may have, its CRLF not counted (RFC 5322 §2.1.1).
MAX_LINE_OCTETS = 998


def taggable(subject: str) -> bool:
    """Whether a Subject (decoded as :func:`tag_subject` takes it) can be tagged without changing its bytes.

    The tagged Subject goes to Postfix through pymilter's ``chgheader``, which
    takes text and sends it as UTF-8 (its C side parses the value with ``s``:
    neither bytes nor surrogate escapes get through), so the original bytes of
    a Subject that is not UTF-8 cannot be kept: sent, they would reach the
    reader as U+FFFD.  Rewriting it as an RFC 2047 encoded-word would need a
    charset milterd does not know.  Such a Subject is not tagged; so is one
    holding a literal U+FFFD, which cannot be told apart from it here (and is
    just as likely a Subject an earlier hop has already mangled).
    """
    return "\ufffd" not in subject
