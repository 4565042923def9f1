"""The time as milterd stores and compares it: timezone-aware UTC.

Times that several hosts compare (greylisting's triplets in a shared PostgreSQL
store) are read from one clock, the database server's: :class:`DatabaseClock`
is the local clock plus the measured offset of the database's.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Callable, NamedTuple

log = logging.getLogger("milterd")

#: How often (seconds) a process measures the offset of a shared database's
#: clock again: one query a minute, never one per message.
CLOCK_INTERVAL = 60.0

#: An offset larger than this (seconds) is logged, once per process: the
#: hosts' clocks should be kept by NTP.
CLOCK_SKEW_WARNING = 30.0

#: A reading whose round trip took longer than this (seconds) is not used: the
#: offset is only known to half the round trip, and a stall of a few seconds
#: (a busy host, a pause of the database) would shift every "now" of the process
#: by as much for a whole interval, enough to pass a greylisted triplet early.
MAX_ROUND_TRIP = 1.0

#: After a reading too slow to use, seconds before the next attempt.
RETRY_AFTER = 5.0


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (what every time column holds)."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A time read back from the store as aware UTC: a naive value (SQLite's) is UTC, an aware one
    (PostgreSQL's, in the session's time zone) is converted."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


class ClockReading(NamedTuple):
    """The database's clock read once, between two readings of the local clock."""

    before: dt.datetime
    database: dt.datetime
    after: dt.datetime

    @property
    def offset(self) -> dt.timedelta:
        """The database's time minus the local time halfway through the round trip."""
        return self.database - (self.before + (self.after - self.before) / 2)


class DatabaseClock:
    """The time of a database that several hosts share: the local clock plus the
    offset of the database server's, so that times one host writes and another
    compares are read from one clock (as sqlgrey uses the database's ``now()``).

    *read* reads the database's clock (:class:`ClockReading`), or returns None
    when the database has no clock of its own (SQLite: one host): the offset
    then stays 0 and it is not asked again.  The offset is measured at first
    use, then at most every *interval* seconds (one thread measures, the
    others go on with the last offset); a reading that fails keeps the last
    offset (0 before the first) and is tried again an interval later, so
    :meth:`now` never fails; one whose round trip took longer than
    :data:`MAX_ROUND_TRIP` is not used either, and is tried again
    :data:`RETRY_AFTER` seconds later.
    """

    def __init__(self, read: Callable[[], ClockReading | None], interval: float = CLOCK_INTERVAL, name: str = "the database server") -> None:
        self._read = read
        self.interval = interval
        self.name = name
        self._offset = dt.timedelta(0)
        self._measured: float | None = None  # monotonic time of the last attempt
        self._attempted = False  # the first attempt has ended (the callers of now() waited for it)
        self._local_only = False
        self._warned = False
        self._lock = threading.Lock()

    @property
    def offset(self) -> dt.timedelta:
        """The offset applied: the database's time minus this host's."""
        return self._offset

    def now(self) -> dt.datetime:
        """The database's current time (the local time plus the offset), aware UTC."""
        first = not self._attempted
        if not self._local_only and (first or self._measured is None or time.monotonic() - self._measured >= self.interval):
            self._measure(first=first)
        return utcnow() + self._offset

    def _measure(self, first: bool) -> None:
        # At first use every thread waits for the one measurement (until it has ended, not only begun: a thread
        # let through meanwhile would take the host's own clock); later only one thread measures and the others
        # keep the last offset meanwhile.
        if not self._lock.acquire(blocking=first):
            return
        try:
            if self._attempted and self._measured is not None and time.monotonic() - self._measured < self.interval:
                return  # another thread just measured
            self._measured = time.monotonic()
            try:
                reading = self._read()
            except Exception as exc:  # noqa: BLE001 - a clock that cannot be read must not stop the caller
                log.warning("cannot read the clock of %s (keeping an offset of %.1fs): %s", self.name, self._offset.total_seconds(), exc)
                return
            if reading is None:
                self._local_only = True
                return
            round_trip = (reading.after - reading.before).total_seconds()
            if round_trip > MAX_ROUND_TRIP:
                log.warning("the clock of %s took %.1fs to read: not used (keeping an offset of %.1fs), read again in %gs",
                            self.name, round_trip, self._offset.total_seconds(), RETRY_AFTER)
                self._retry_soon()
                return
            self._offset = reading.offset
            seconds = self._offset.total_seconds()
            if abs(seconds) > CLOCK_SKEW_WARNING and not self._warned:
                self._warned = True
                log.warning(
                    "clock offset %+.1fs: the clock of %s is %.1fs %s this host's; greylisting uses the database's time, "
                    "but the hosts' clocks should be kept in sync (NTP)",
                    seconds, self.name, abs(seconds), "ahead of" if seconds > 0 else "behind",
                )
        finally:
            self._attempted = True
            self._lock.release()

    def _retry_soon(self) -> None:
        """Measure again :data:`RETRY_AFTER` seconds from now rather than an interval later."""
        assert self._measured is not None
        self._measured = min(self._measured, time.monotonic() - self.interval + RETRY_AFTER)
