"""Pure helpers of the benchmark: medians, ratios, target notes, the Markdown table.

Nothing here starts a process or reads a clock, so it is unit-tested
(tests/unit/test_bench_report.py); ``bench/run.py`` does the measuring.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Sample:
    """One timed run of a scenario: *messages* sent over *sessions* in *seconds*."""

    messages: int
    sessions: int
    seconds: float
    ok: bool = True
    note: str = ""
    rss_mb: float | None = None  # the milter's largest worker after this run
    cpu_ms: float | None = None  # CPU time of the milter's workers during this run, in ms

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def ms_per_message(self) -> float:
        """Wall milliseconds per message (at one session: the serial latency)."""
        return 1000.0 * self.seconds / self.messages if self.messages else 0.0


@dataclass
class Row:
    """Every sample of one scenario, split into concurrent and serial runs."""

    name: str
    title: str
    concurrent: list[Sample] = field(default_factory=list)
    serial: list[Sample] = field(default_factory=list)
    skipped: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the last run saw (a corpus row's outcomes)

    @property
    def rate(self) -> float | None:
        """Median msg/s of the concurrent runs."""
        return median([s.rate for s in self.concurrent])

    @property
    def serial_ms(self) -> float | None:
        """Median ms/message of the serial (one-session) runs."""
        return median([s.ms_per_message for s in self.serial])

    @property
    def cpu_per_message(self) -> float | None:
        """Median CPU ms the milter's workers spent per message (concurrent runs)."""
        return median([s.cpu_ms / s.messages for s in self.concurrent if s.cpu_ms is not None and s.messages])

    @property
    def concurrent_ms(self) -> float | None:
        """Median wall ms/message of the concurrent runs."""
        return median([s.ms_per_message for s in self.concurrent])


@dataclass(frozen=True)
class Target:
    """A goal for a row: ``rate ≥ factor × rate(reference)``, ``serial ms ≤ limit``,
    ``serial ms ≤ max(serial ms of the references) + margin`` (kind ``serial_max``, references comma-separated),
    ``serial ms ≤ factor × serial ms(reference)`` (kind ``serial_ratio``) or ``milter CPU ms/msg ≤ limit`` (kind ``cpu_ms``)."""

    kind: str  # "ratio", "serial_ms", "serial_max", "serial_ratio" or "cpu_ms"
    value: float
    reference: str = ""

    def describe(self) -> str:
        """The target as printed: ``≥ 0.75 × postfix``, ``≤ 10 ms serial`` or ``≤ max(clamd, spamc) + 5 ms serial``."""
        if self.kind == "ratio":
            return f"≥ {self.value:g} × {self.reference}"
        if self.kind == "serial_max":
            return f"≤ max({', '.join(self.reference.split(','))}) + {self.value:g} ms serial"
        if self.kind == "serial_ratio":
            return f"≤ {self.value:g} × {self.reference} serial"
        if self.kind == "cpu_ms":
            return f"≤ {self.value:g} ms milter CPU/msg"
        return f"≤ {self.value:g} ms serial"


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def ratio(row: Row, reference: Row | None) -> float | None:
    """Median throughput of *row* relative to *reference* (None when either is missing)."""
    if reference is None or row.rate is None or not reference.rate:
        return None
    return row.rate / reference.rate


def round_ratios(row: Row, reference: Row) -> list[float]:
    """*row*'s msg/s over *reference*'s, round by round (the i-th concurrent run of each: the rounds interleave
    the rows, so each pair ran close together in time, under the same load)."""
    return [a.rate / b.rate for a, b in zip(row.concurrent, reference.concurrent, strict=False) if b.rate > 0]


def per_round(row: Row, reference: Row) -> str:
    """`` (per round: median 0.78, 0.72–0.84)`` for two rounds or more, else nothing."""
    values = round_ratios(row, reference)
    if len(values) < 2:
        return ""
    return f" (per round: median {statistics.median(values):.2f}, {min(values):.2f}–{max(values):.2f})"


def check_target(target: Target, row: Row, rows: dict[str, Row]) -> tuple[bool | None, str]:
    """Whether *row* meets *target*: (True/False, note), or (None, why) when it cannot be told."""
    if target.kind == "ratio":
        reference = rows.get(target.reference)
        value = ratio(row, reference)
        if value is None or reference is None:
            return None, f"{target.describe()}: no figure"
        return value >= target.value, f"{target.describe()}: {value:.2f}{per_round(row, reference)}"
    if target.kind == "serial_ms":
        if row.serial_ms is None:
            return None, f"{target.describe()}: no figure"
        return row.serial_ms <= target.value, f"{target.describe()}: {row.serial_ms:.1f} ms"
    if target.kind == "serial_max":
        others = [rows[name].serial_ms if name in rows else None for name in target.reference.split(",")]
        if row.serial_ms is None or any(o is None for o in others):
            return None, f"{target.describe()}: no figure"
        limit = max(o for o in others if o is not None) + target.value
        return row.serial_ms <= limit, f"{target.describe()}: {row.serial_ms:.1f} ms (limit {limit:.1f} ms)"
    if target.kind == "serial_ratio":
        reference = rows.get(target.reference)
        if row.serial_ms is None or reference is None or not reference.serial_ms:
            return None, f"{target.describe()}: no figure"
        value = row.serial_ms / reference.serial_ms
        return value <= target.value, f"{target.describe()}: {value:.2f} ({row.serial_ms:.1f} / {reference.serial_ms:.1f} ms)"
    if target.kind == "cpu_ms":
        if row.cpu_per_message is None:
            return None, f"{target.describe()}: no figure"
        return row.cpu_per_message <= target.value, f"{target.describe()}: {row.cpu_per_message:.2f} ms"
    raise ValueError(f"unknown target kind {target.kind!r}")


def verdict_word(met: bool | None) -> str:
    """PASS, FAIL or n/a."""
    return "n/a" if met is None else ("PASS" if met else "FAIL")


def select(names: list[str], wanted: str | None, groups: dict[str, str] | None = None, references: dict[str, str] | None = None) -> list[str]:
    """Scenario names to run for ``--scenarios a,b,group`` (all when *wanted* is empty), in table order.

    An entry is a scenario name or a group name (*groups*: name → group).
    The rows a chosen row is compared with (*references*: name → name, followed
    transitively) are added, and so is ``postfix``: every run has its
    Postfix-alone figure.  Unknown entries raise ValueError naming them.
    """
    if not wanted:
        return list(names)
    groups, references = groups or {}, references or {}
    asked = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [w for w in asked if w not in names and w not in groups.values()]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = {n for n in names if n in asked or groups.get(n) in asked}
    pending = list(chosen) + (["postfix"] if "postfix" in names else [])
    while pending:
        name = pending.pop()
        chosen.add(name)
        reference = references.get(name)
        if reference in names and reference not in chosen:
            pending.append(reference)
    return [n for n in names if n in chosen]


def rotate(items: list[str], round_no: int) -> list[str]:
    """*items* rotated by *round_no*: each round starts with another scenario (noise spreads)."""
    if not items:
        return []
    k = round_no % len(items)
    return items[k:] + items[:k]


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[Row], reference: str = "postfix", references: dict[str, str] | None = None) -> str:
    """The Markdown table of a run: msg/s, ms/message, ratio, serial latency, samples.

    *references* names, per row, the row its ratio is against (default *reference*).
    """
    by_name = {r.name: r for r in rows}
    references = references or {}
    lines = [
        "| scenario | msg/s (median) | ms/msg at concurrency | × reference | serial ms/msg (median) | runs | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.title} | — | — | — | — | 0 | skipped: {row.skipped} |")
            continue
        ref_name = references.get(row.name, reference)
        value = ratio(row, by_name.get(ref_name))
        ratio_text = "—" if value is None else f"{value:.2f} × {ref_name}"
        runs = f"{len(row.concurrent)}+{len(row.serial)}"
        rates = ", ".join(f"{s.rate:.0f}" for s in row.concurrent)
        notes = "; ".join(row.problems) or (f"runs: {rates} msg/s" if rates else "")
        if row.notes:
            notes += "; " + "; ".join(row.notes)
        if row.cpu_per_message is not None:
            notes += f"; milter CPU {row.cpu_per_message:.2f} ms/msg"
        rss = [s.rss_mb for s in row.concurrent if s.rss_mb is not None]
        if rss:
            notes += "; worker RSS MB: " + "→".join(f"{m:.0f}" for m in rss)
        lines.append(
            f"| {row.title} | {_fmt(row.rate, '.1f')} | {_fmt(row.concurrent_ms, '.2f')} | {ratio_text} | {_fmt(row.serial_ms, '.1f')} | {runs} | {notes} |"
        )
    return "\n".join(lines)
