"""FHIR date/dateTime/instant strings as spans of instants; garbage gives None, never an error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fhir_mappings.fhir_time import parse_fhir_time, time_key

CST = timezone(timedelta(hours=8))


def test_year_is_the_whole_year_in_utc_without_reference() -> None:
    t = parse_fhir_time("2024")
    assert t is not None
    assert t.earliest == datetime(2024, 1, 1, tzinfo=UTC)
    assert t.latest == datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert not t.has_time
    assert t.text == "2024"


def test_month_ends_on_its_last_day() -> None:
    t = parse_fhir_time("2024-02")
    assert t is not None
    assert t.latest.date().isoformat() == "2024-02-29"


def test_date_takes_the_time_zone_of_the_reference_instant() -> None:
    reference = datetime(2024, 3, 1, 9, 0, tzinfo=CST)
    t = parse_fhir_time("2024-03-02", reference)
    assert t is not None
    assert t.earliest == datetime(2024, 3, 2, tzinfo=CST)
    assert t.latest == datetime(2024, 3, 2, 23, 59, 59, 999_999, tzinfo=CST)


def test_date_time_with_offset_is_an_instant() -> None:
    t = parse_fhir_time("2024-03-02T10:15:00+08:00")
    assert t is not None
    assert t.earliest == t.latest == datetime(2024, 3, 2, 2, 15, tzinfo=UTC)
    assert t.earliest.utcoffset() == timedelta(hours=8)
    assert t.has_time


def test_zulu_and_fractional_seconds() -> None:
    t = parse_fhir_time("2024-03-02T10:15:00.123456789Z")
    assert t is not None
    assert t.earliest == datetime(2024, 3, 2, 10, 15, 0, 123_456, tzinfo=UTC)
    assert parse_fhir_time("2024-03-02T10:15:00.5Z") is not None


def test_time_without_zone_uses_the_reference_zone() -> None:
    reference = datetime(2024, 1, 1, tzinfo=CST)
    t = parse_fhir_time("2024-03-02T10:15:00", reference)
    assert t is not None and t.earliest == datetime(2024, 3, 2, 10, 15, tzinfo=CST)
    u = parse_fhir_time("2024-03-02T10:15:00")
    assert u is not None and u.earliest.tzinfo is UTC


def test_minute_precision_spans_the_minute() -> None:
    t = parse_fhir_time("2024-03-02T10:15+08:00")
    assert t is not None and t.has_time
    assert (t.latest - t.earliest) < timedelta(minutes=1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "24",
        "2024-13",
        "2024-02-30",
        "2024-03-02T25:00:00Z",
        "2024-03-02T10:61:00Z",
        "2024-03-02T10:15:60Z",
        "2024-03-02T10:15:00+25:00",
        "2024-03-02T10:15:00+08:75",
        "2024-03-02 10:15:00",
        " 2024-03-02",
        "2024-03-02T",
        "0000-01-01",
        "\u0662\u0660\u0662\u0664",  # Arabic-Indic digits are not FHIR digits
        "2024-03-02T10:15:00+0800",
        "x" * 500,
        None,
        2024,
        20240302.0,
        True,
        ["2024"],
        {"start": "2024"},
    ],
)
def test_unparseable_values_give_none(value: object) -> None:
    assert parse_fhir_time(value) is None


def test_comparisons_respect_uncertainty() -> None:
    day = parse_fhir_time("2026-05-01", datetime(2026, 5, 1, tzinfo=CST))
    morning = parse_fhir_time("2026-05-01T09:42:00+08:00")
    next_day = parse_fhir_time("2026-05-02")
    assert day is not None and morning is not None and next_day is not None
    assert not day.is_after(morning) and not morning.is_after(day)  # same day: not certainly later
    assert next_day.is_after(morning)
    low, high = day.hours_since(morning)
    assert low < 0 < high


def test_extreme_years_do_not_overflow() -> None:
    for text in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "9999", "0001"):
        t = parse_fhir_time(text)
        assert t is not None
        assert time_key(t) <= (t.latest, t.latest)
        t.earliest.timestamp()


def test_time_key_sorts_missing_first() -> None:
    t = parse_fhir_time("2024")
    assert time_key(None) < time_key(t)


def test_a_date_is_compared_as_a_day_in_the_zone_of_a_timed_value() -> None:
    day = parse_fhir_time("2026-05-01")  # read in UTC on its own
    early_local = parse_fhir_time("2026-05-01T07:00:00+08:00")  # 2026-04-30T23:00Z
    assert day is not None and early_local is not None
    low, high = early_local.hours_since(day)
    assert low < 0 < high  # same local day: may be after the date
    assert not day.is_after(early_local) and not early_local.is_after(day)
    next_day = parse_fhir_time("2026-05-02")
    assert next_day is not None and next_day.is_after(early_local)
