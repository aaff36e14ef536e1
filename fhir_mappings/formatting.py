"""Numbers and grades written the way clinicians read them in messages."""

from __future__ import annotations

ROMAN = ("I", "II", "III", "IV", "V", "VI")


def number(value: float) -> str:
    """42.0 -> "42", 2.54 -> "2.5": one decimal at most."""
    return f"{value:.1f}".removesuffix(".0")


def roman(grade: int) -> str:
    """House-Brackmann grade 1-6 as I-VI (other integers as digits)."""
    return ROMAN[grade - 1] if 1 <= grade <= len(ROMAN) else str(grade)


def grade_from_roman(text: str) -> int | None:
    """ "I"-"VI" (any case, surrounding spaces ignored) as 1-6; anything else None."""
    numeral = text.strip().upper()
    return ROMAN.index(numeral) + 1 if numeral in ROMAN else None
