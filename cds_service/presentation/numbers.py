"""How a risk is written for people: whole percentages, never "0%" or "100%".

A 99-patient model cannot claim certainty, so values below 5% read "<5%" and above 95% read
">95%" on every surface (clinical-presentation.md §1). Machine-readable output keeps the fractions.
"""

from __future__ import annotations

#: Below this a risk reads "<5%"; above ``1 - FLOOR`` it reads ">95%".
FLOOR = 0.05
_BELOW, _ABOVE = f"<{FLOOR * 100:.0f}%", f">{(1.0 - FLOOR) * 100:.0f}%"
#: "0%" … "100%", indexed by the whole percentage: a card formats ~15 figures, and a look-up
#: costs a third of formatting each one (issue 12 benchmark).
_WHOLE = tuple(f"{n}%" for n in range(101))


def percent(value: float) -> str:
    """``0.1526`` → ``"15%"``; ``0.012`` → ``"<5%"``; ``0.996`` → ``">95%"``."""
    if value < FLOOR:
        return _BELOW
    if value > 1.0 - FLOOR:
        return _ABOVE
    # Half up, not Python's half-to-even, so 0.125 reads 13% wherever it is shown (int() is floor
    # here: the value is at least FLOOR; NaN raises ValueError as math.floor did).
    return _WHOLE[int(value * 100 + 0.5)]


def percent_range(low: float, high: float) -> str:
    """``"<5% to 15%"``; a range that reads the same at both ends is written once."""
    lo, hi = percent(low), percent(high)
    return lo if lo == hi else f"{lo} to {hi}"
