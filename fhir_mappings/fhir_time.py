"""FHIR date, dateTime and instant strings as the span of instants they can mean.

"2026-05-01" is a whole day, "2026-05" a whole month; the rules compare spans, so a date recorded
without a time neither gains nor loses hours by being pinned to midnight.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

# FHIR R4 dateTime/instant; seconds are optional here because some EHRs omit them.
_PATTERN = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<mo>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_NEVER = datetime.min.replace(tzinfo=UTC)  # sorts before every real time


@dataclass(frozen=True, slots=True)
class FhirTime:
    """A parsed FHIR time: the earliest and latest instant it can mean (both timezone-aware)."""

    text: str  # exactly as written in the resource
    earliest: datetime
    latest: datetime
    has_time: bool  # a time of day was recorded, not just a date

    def is_after(self, other: FhirTime) -> bool:
        """Certainly later than ``other`` (same-day dates do not count as later)."""
        mine, theirs = self._aligned(other), other._aligned(self)
        return mine.earliest > theirs.latest

    def hours_since(self, other: FhirTime) -> tuple[float, float]:
        """The least and greatest number of hours from ``other`` to this time."""
        mine, theirs = self._aligned(other), other._aligned(self)
        low = (mine.earliest - theirs.latest).total_seconds() / 3600.0
        high = (mine.latest - theirs.earliest).total_seconds() / 3600.0
        return low, high

    def _aligned(self, other: FhirTime) -> FhirTime:
        """A date read as a day in the time zone of the timed value it is compared with."""
        if self.has_time or not other.has_time:
            return self
        return parse_fhir_time(self.text, other.earliest) or self


def parse_fhir_time(value: object, reference: datetime | None = None) -> FhirTime | None:
    """Parse a FHIR date/dateTime/instant; anything unparseable gives None (never raises).

    A value without a time zone is read in the time zone of ``reference`` (the instant it will be
    compared with), else UTC.
    """
    if not isinstance(value, str) or len(value) > 40:
        return None
    zone = reference.tzinfo if reference is not None and reference.tzinfo is not None else UTC
    return _parse(value, zone)


# The rules read the same few dates of a patient many times per request (and the same patient
# is assessed again on every chart open); FhirTime is immutable, so parses can be shared.
@functools.lru_cache(maxsize=4096)
def _parse(value: str, zone: tzinfo) -> FhirTime | None:
    match = _PATTERN.fullmatch(value)
    if match is None:
        return None
    try:
        return _span(value, match, zone)
    except (ValueError, OverflowError):  # e.g. month 13, 30 February, offset +25:00
        return None


def _span(text: str, m: re.Match[str], default_zone: tzinfo) -> FhirTime:
    year = int(m["y"])
    if m["mo"] is None:
        start = datetime(year, 1, 1, tzinfo=default_zone)
        return FhirTime(text, start, _end_of_day(year, 12, 31, default_zone), False)
    month = int(m["mo"])
    if m["d"] is None:
        start = datetime(year, month, 1, tzinfo=default_zone)
        last = calendar.monthrange(year, month)[1]
        return FhirTime(text, start, _end_of_day(year, month, last, default_zone), False)
    day = int(m["d"])
    if m["h"] is None:
        start = datetime(year, month, day, tzinfo=default_zone)
        return FhirTime(text, start, _end_of_day(year, month, day, default_zone), False)
    zone = _zone(m["tz"]) if m["tz"] else default_zone
    hour, minute = int(m["h"]), int(m["mi"])
    if m["s"] is None:  # minute precision
        start = datetime(year, month, day, hour, minute, tzinfo=zone)
        end = datetime(year, month, day, hour, minute, 59, 999_999, tzinfo=zone)
        return FhirTime(text, start, end, True)
    micro = int((m["f"] or "0")[:6].ljust(6, "0"))
    instant = datetime(year, month, day, hour, minute, int(m["s"]), micro, tzinfo=zone)
    return FhirTime(text, instant, instant, True)


def _end_of_day(year: int, month: int, day: int, zone: tzinfo) -> datetime:
    return datetime(year, month, day, 23, 59, 59, 999_999, tzinfo=zone)


def _zone(text: str) -> tzinfo:
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if minutes >= 60:
        raise ValueError("offset minutes out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def time_key(time: FhirTime | None) -> tuple[datetime, datetime]:
    """Sort key: by earliest, then latest instant; a missing time sorts first."""
    return (time.earliest, time.latest) if time is not None else (_NEVER, _NEVER)
