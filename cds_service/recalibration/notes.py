"""What a report says in words, kept as data until a person reads it: a :class:`Note` is a message
code and its parameters (numbers, counts, codes), worded by :meth:`Note.say` in the reader's
language from the message catalogues (:mod:`cds_service.i18n`).

The statistics (:mod:`.metrics`, :mod:`.validate`) and the cohort (:mod:`.cohort`) return notes,
never sentences, so the text and HTML reports can say them in English or Simplified Chinese while
the JSON report keeps the English wording (``str(note)``: JSON is for machines, and its texts are
documented and stable). The format of each number lives in its message (``%(months).2f``), so the
figures are the same in every language: English and Simplified Chinese write decimals and
percentages alike (checked against CLDR in ``tests/test_i18n_validate.py``).
"""

from __future__ import annotations

import gettext
from dataclasses import dataclass
from typing import Final

from cds_service.i18n import DEFAULT, Locale, translations


def N_(message: str) -> str:  # marks a msgid for the catalogue (cds_service.i18n)
    return message


#: English reads the msgids as they are.
ENGLISH: Final = gettext.NullTranslations()


def catalogue(locale: Locale = DEFAULT) -> gettext.NullTranslations:
    """The messages of a locale (English: the msgids themselves, no look-up)."""
    return ENGLISH if locale == DEFAULT else translations(locale)


#: Every note a report can carry: code -> msgid (the English text, with its number formats).
MESSAGES: Final[dict[str, str]] = {
    # Kaplan-Meier observed risk (metrics.KaplanMeier.risk)
    "km-all-recurred": N_(
        "interval undefined: every patient at risk recurred (%(at_start)s at start)"
    ),
    "km-not-observed": N_("not observed: follow-up ends at %(months).2f months"),
    "km-none-yet": N_("interval undefined: no recurrence by then"),
    # Follow-up (metrics.follow_up_time)
    "follow-up-descriptive": N_("descriptive: no interval"),
    "follow-up-not-reached": N_(
        "not reached: more than half were still followed at %(months).2f months"
    ),
    # The evaluation horizon (metrics.Horizon.reason)
    "horizon-model": N_(
        "the model's %(model_months)g-month horizon (%(at_risk)s patients followed that long; "
        "at least %(min_at_risk)s required)"
    ),
    "horizon-latest": N_(
        "only %(at_model)s patient(s) followed to the model's %(model_months)g-month horizon "
        "(fewer than %(min_at_risk)s), so the latest time with at least %(min_at_risk)s still "
        "followed (%(at_risk)s at risk)"
    ),
    # Smoothed calibration (metrics.smoothed_calibration)
    "curve-flat": N_("not drawn: every patient has the same predicted risk"),
    # Validation (validate.validate)
    "fewer-groups": N_(
        "%(found)s risk group(s), not %(wanted)s: only %(found)s distinct predicted risk(s) in "
        "the cohort, and tied patients are never split"
    ),
    "month-not-reported": N_(
        "not reported: only %(followed)s patient(s) followed to %(month)g months (fewer than "
        "%(min_at_risk)s); see the %(horizon).2f-month horizon instead"
    ),
    # i18n: %(error)s is the fitting error in English (a technical detail)
    "slope-not-estimable": N_("calibration slope not estimable: %(error)s"),
    # Why a statistic is undefined (validate._estimates)
    "no-usable-pair": N_("no usable pair (no recurrence before a longer follow-up)"),
    "slope-undefined": N_("not estimable on this cohort (see notes)"),
    "no-predicted-risk": N_("no predicted risk"),
    "no-patient": N_("no patient"),
    "bootstrap-off": N_("bootstrap off (--bootstrap 0): no interval"),
    "resamples-undefined": N_("%(failed)s of %(replicates)s resamples undefined, left out"),
    "too-few-resamples": N_("too few resamples"),
    # i18n: %(why)s is another note, e.g. "3 of 200 resamples undefined, left out"
    "interval-undefined": N_("interval undefined: %(why)s"),
    # Harrell's optimism correction (validate._optimism)
    "optimism-not-applicable": N_(
        "not applicable: the card's coefficients were not fitted on local data (fit mode %(mode)s)"
    ),
    "optimism-not-applicable-unknown": N_(
        "not applicable: the card's coefficients were not fitted on local data (fit mode unknown)"
    ),
    "optimism-other-cohort": N_(
        "not applied: this cohort is not the one the card was fitted on (input checksum "
        "differs), so its performance is not apparent"
    ),
    "optimism-bootstrap-off": N_("not computed: bootstrap off (--bootstrap 0)"),
    # i18n: %(mode)s is a fit mode as given to --mode: baseline, slope or full
    "optimism-applied": N_(
        "Harrell's bootstrap optimism correction: the %(mode)s fit repeated on each of "
        "%(replicates)s resamples"
    ),
    "optimism-applied-failures": N_(
        "Harrell's bootstrap optimism correction: the %(mode)s fit repeated on each of "
        "%(replicates)s resamples (%(failures)s refits failed, left out)"
    ),
    # A card's fit mode (card.fit.mode, --mode) and a card's label in a report
    "fit-mode-published": N_("published"),
    "fit-mode-baseline": N_("baseline"),
    "fit-mode-slope": N_("slope"),
    "fit-mode-full": N_("full"),
    # i18n: a card in a report: "fei-2022-hfs-rfa-recurrence 1.1.0 (published)"
    "card-label": N_("%(card)s (%(kind)s)"),
    # The fit (fit.recalibrate): warnings, also written into the new card in English
    "baseline-extended": N_(
        "follow-up ends at %(months).2f months: the baseline is extended to %(horizon)g months "
        "at a constant hazard"
    ),
    "few-at-horizon": N_(
        "only %(at_risk)s patient(s) followed recurrence-free to %(horizon)g months: the "
        "baseline near the horizon is imprecise"
    ),
}


@dataclass(frozen=True, slots=True)
class Note:
    """A message code and its parameters; a parameter may itself be a note (said first)."""

    code: str
    params: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.code not in MESSAGES:
            raise ValueError(f"unknown note code {self.code!r}")

    @classmethod
    def of(cls, code: str, **params: object) -> Note:
        return cls(code, tuple(params.items()))

    def say(self, words: gettext.NullTranslations = ENGLISH) -> str:
        """The note in the language of ``words`` (:func:`catalogue`); English by default."""
        values = {k: v.say(words) if isinstance(v, Note) else v for k, v in self.params}
        return words.gettext(MESSAGES[self.code]) % values

    def __str__(self) -> str:
        return self.say()


def fit_mode(mode: str) -> Note | str:
    """A fit mode as a note (said in the reader's language); an unknown one as it is written."""
    code = f"fit-mode-{mode}"
    return Note(code) if code in MESSAGES else mode


def say(text: Note | str, words: gettext.NullTranslations = ENGLISH) -> str:
    """A note in the language of ``words``, or a plain text (an identifier) as it is."""
    return text.say(words) if isinstance(text, Note) else text
