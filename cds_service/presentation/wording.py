"""The words of one language: catalogue look-ups and the locale's forms for ranges, lists, dates.

One :class:`Wording` per locale per process (:func:`wording` caches it), so the hot path looks a
catalogue up once and never builds a translator or parses locale data per card. Numbers are not
formatted here: a percentage reads the same in every supported locale (``numbers.percent``, checked
against each locale's CLDR pattern at import), so figures stay language-neutral.
"""

from __future__ import annotations

import gettext
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from typing import TypeVar

from cds_service.i18n import DEFAULT, Locale, translations
from cds_service.model import ModelCard
from cds_service.model.card import CardTexts

T = TypeVar("T")


class Wording:
    """Messages, plurals, ranges, lists and dates in one locale."""

    __slots__ = (
        "locale",
        "_t",
        "_to",
        "_sep",
        "_and",
        "_month_forms",
        "_tier_forms",
        "gettext",
        "ngettext",
    )

    def __init__(self, locale: Locale) -> None:
        self.locale = locale
        # English is the source language: its texts are the msgids, so it needs no look-up at all
        # (a GNUTranslations miss also evaluates the plural rule: measurable on every card).
        t = gettext.NullTranslations() if locale == DEFAULT else translations(locale)
        self._t = t
        #: The catalogue's own bound methods, not wrappers: about 20 look-ups per card.
        self.gettext: Callable[[str], str] = t.gettext
        self.ngettext: Callable[[str, str, int], str] = t.ngettext
        # i18n: between the two ends of a range of percentages, e.g. "<5% to 15%"
        to = t.pgettext("range", "%(low)s to %(high)s")
        # Split once around the two ends: a range is built for every figure of every card.
        head, _, rest = to.partition("%(low)s")
        middle, _, tail = rest.partition("%(high)s")
        self._to = (head, middle, tail)
        # i18n: between items of a list but the last, e.g. "3, 6 and 12"
        self._sep = t.pgettext("list", ", ")
        # i18n: before the last item of a list, e.g. "3, 6 and 12"
        self._and = t.pgettext("list", "%(items)s and %(last)s")
        self._month_forms: dict[float, str] = {}
        self._tier_forms: dict[str, tuple[str, str]] = {}

    def range(self, low: str, high: str) -> str:
        """Two formatted ends; a range that reads the same at both ends is written once."""
        if low == high:
            return low
        head, middle, tail = self._to
        return f"{head}{low}{middle}{high}{tail}"

    def join(self, items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        return self._and % {"items": self._sep.join(items[:-1]), "last": items[-1]}

    def series(self, items: list[str]) -> str:
        """Items with the list separator only (``"1, 3, 6, 12"``; ``"1、3、6、12"``)."""
        return self._sep.join(items)

    def months(self, month: float) -> str:
        """``"3 months"``, ``"1 month"`` (a label; cached: the same few months recur on every card)."""
        label = self._month_forms.get(month)
        if label is None:
            n = int(month) if float(month).is_integer() else 2  # 1.5 months is plural
            label = self._t.ngettext("%(n)s month", "%(n)s months", n) % {"n": f"{month:g}"}
            self._month_forms[month] = label
        return label

    def tier_phrases(self, label: str) -> tuple[str, str]:
        """``("Intermediate estimate", "intermediate-risk schedule")`` for a tier label (cached:
        a card's tiers are the same few on every call)."""
        found = self._tier_forms.get(label)
        if found is None:
            found = (
                self.gettext("%(tier)s estimate") % {"tier": label},
                self.gettext("%(tier)s-risk schedule") % {"tier": label.lower()},
            )
            self._tier_forms[label] = found
        return found

    def date(self, d: date) -> str:
        """ISO in English (as before); the unambiguous CLDR long form in Chinese (2027年1月2日)."""
        if self.locale == "zh_Hans":
            return f"{d.year}年{d.month}月{d.day}日"
        return d.isoformat()

    def card(self, card: ModelCard) -> CardTexts:
        """The model card's own texts in this language (English where the card has none)."""
        return card.texts(self.locale)


@lru_cache(maxsize=8)
def wording(locale: Locale = DEFAULT) -> Wording:
    return Wording(locale)


def per_card(build: Callable[[Wording, ModelCard], T]) -> Callable[[Wording, ModelCard], T]:
    """``build(words, card)`` once per language and model card, then looked up.

    For the texts that depend on the configuration only (translated templates, tier phrases, the
    card's caveat and labels): the hot path would otherwise look up and format them on every card.
    Never for anything a patient's inputs decide. Keyed by the card's identity (a ``ModelCard``
    holds dicts, so it is not hashable), which the entry keeps alive so the id cannot be reused;
    a service holds one or two cards, tests parse many, so the table is small and bounded.
    """
    memo: dict[tuple[str, int], tuple[ModelCard, T]] = {}

    def lookup(words: Wording, card: ModelCard) -> T:
        found = memo.get((words.locale, id(card)))
        if found is not None and found[0] is card:
            return found[1]
        if len(memo) >= 16:
            memo.clear()
        value = build(words, card)
        memo[(words.locale, id(card))] = (card, value)
        return value

    return lookup
