"""The model card: every parameter of the risk model, read from a versioned JSON file.

The card is data, not code: a site replaces the baseline (or the whole model) by pointing
``CDS_MODEL_CARD`` at another file with the same structure. Loading validates everything once at
start-up and fails with :class:`ModelCardError` naming the offending field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

from cds_service.i18n import BCP47, SUPPORTED, Locale, normalize

DEFAULT_MODEL_CARD = "fei-2022-hfs-rfa.json"
DEFAULT_CAVEAT = "Informational only; see assumptions and limitations."

X1Coding = Literal["binary", "per_10_minutes"]
X2Coding = Literal["ordinal", "binary"]
Indicator = Literal["info", "warning", "critical"]

log = logging.getLogger(__name__)


class ModelCardError(ValueError):
    """The model card file is missing, malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class Citation:
    text: str
    pmid: str
    url: str
    #: The short name a card's link shows (``"Fei et al., Pain Physician 2022 (PubMed)"``).
    label: str = ""


@dataclass(frozen=True, slots=True)
class OperationTimeCovariate:
    coefficient: float
    cut_minutes: float
    valid_minutes: tuple[float, float]
    basis: str


@dataclass(frozen=True, slots=True)
class HBGradeCovariate:
    coefficient: float
    model_grades: tuple[int, int]
    primary_window_hours: float
    fallback_window_hours: float
    basis: str


@dataclass(frozen=True, slots=True)
class BaselineKnot:
    month: float
    survival: float


@dataclass(frozen=True, slots=True)
class Scenarios:
    x1_codings: tuple[X1Coding, ...]
    x1_reference_minutes: float  # reference operation time for the per-10-minute coding
    x2_codings: tuple[X2Coding, ...]
    reference_x2: tuple[float, ...]
    basis: str


@dataclass(frozen=True, slots=True)
class Tier:
    id: str
    label: str
    min_risk_12m: float
    indicator: Indicator
    follow_up_months: tuple[float, ...]
    advice: str  # what to do, never a treatment plan and never a schedule (that is computed)
    risk_sentence: str  # how the risk reads; only the highest tier may call recurrence "likely"


@dataclass(frozen=True, slots=True)
class TierTexts:
    label: str
    advice: str
    risk_sentence: str


@dataclass(frozen=True, slots=True)
class CardTexts:
    """The texts of a model card a person reads, in one language (``translations`` in the JSON).

    A site translates its own card without code: ``"translations": {"zh-Hans": {"title": …,
    "population": …, "caveat": …, "citation": {"label": …}, "tiers": {"<id>": {"label": …,
    "advice": …, "risk_sentence": …}},
    "assumptions": […], "limitations": […]}}``, the arrays in the order of the English ones. A key
    left out reads English (and is named in a start-up warning).
    """

    title: str
    population: str
    caveat: str
    citation_label: str
    tiers: Mapping[str, TierTexts]  # by tier id
    assumptions: tuple[str, ...]
    limitations: tuple[str, ...]

    def tier(self, tier: Tier) -> TierTexts:
        return self.tiers[tier.id]


@dataclass(frozen=True, slots=True)
class Alerting:
    """When the service speaks up (clinical-presentation.md §4); site-configurable."""

    #: After a clinician acted on a card, patient-view stays silent this long for the same inputs.
    suppress_after_feedback_days: float = 30.0
    #: order-sign, encounter-discharge and note-sign answer only this soon after the ablation.
    post_ablation_window_days: float = 7.0


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A validated model card; see ``model_cards/fei-2022-hfs-rfa.json`` for the fields."""

    id: str
    version: str
    title: str
    citation: Citation
    population: str
    fit: Mapping[str, Any]
    operation_time: OperationTimeCovariate
    hb_grade: HBGradeCovariate
    reference_x1: float
    reference_x2: float
    reference_basis: str
    baseline_knots: tuple[BaselineKnot, ...]
    baseline_basis: str
    horizon_months: float
    days_per_month: float
    report_months: tuple[float, ...]
    scenarios: Scenarios
    tiers: tuple[Tier, ...]  # highest threshold first
    tier_basis: str
    assumptions: tuple[str, ...]
    limitations: tuple[str, ...]
    sha256: str  # of the file's bytes, so an audit can name exactly which card scored
    #: True only once local clinical governance approved the tiers: only then is the follow-up
    #: suggestion marked recommended.
    tiers_approved: bool = False
    alerting: Alerting = Alerting()
    #: The one caveat line every card shows.
    caveat: str = DEFAULT_CAVEAT
    #: Covariance of (operation-time, HB-grade) coefficients from a local fit; None for the
    #: published card (the paper gives no standard errors, so no confidence interval exists).
    covariance: tuple[tuple[float, float], tuple[float, float]] | None = None
    #: The card's texts by locale (English always; others as the card's ``translations`` give them).
    translations: Mapping[str, CardTexts] = field(default_factory=dict)
    #: Per locale, the translation keys the card lacks (those texts read English).
    untranslated: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def texts(self, locale: Locale) -> CardTexts:
        """The card's texts in a locale; English where the card carries no translation."""
        found = self.translations.get(locale) or self.translations.get("en")
        return found if found is not None else _english_texts(self)

    @property
    def label(self) -> str:
        return f"{self.id}@{self.version}"

    def tier_for(self, risk_12m: float) -> Tier:
        """The first tier (highest threshold first) whose threshold a 12-month risk reaches."""
        for tier in self.tiers:
            if risk_12m >= tier.min_risk_12m:
                return tier
        return self.tiers[-1]


def load_model_card(path: str | Path | None = None) -> ModelCard:
    """Load and validate a model card; ``None`` loads the published model shipped with the package."""
    try:
        if path is None:
            raw = (resources.files(__package__) / "model_cards" / DEFAULT_MODEL_CARD).read_bytes()
        else:
            raw = Path(path).read_bytes()
    except OSError as exc:
        raise ModelCardError(f"cannot read model card {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(
            f"model card {path or DEFAULT_MODEL_CARD} is not valid JSON: {exc}"
        ) from exc
    try:
        card = parse_model_card(data, sha256=hashlib.sha256(raw).hexdigest())
    except ModelCardError as exc:  # name the file: a site may keep several cards
        raise ModelCardError(f"{path or DEFAULT_MODEL_CARD}: {exc}") from None
    for locale, keys in card.untranslated.items():
        if keys:  # at start-up (the card is loaded once): the texts read English in this language
            log.warning(
                "model card %s has no %s translation for %s; those texts are shown in English",
                path or DEFAULT_MODEL_CARD,
                BCP47[cast(Locale, locale)],
                ", ".join(keys),
            )
    return card


def parse_model_card(data: Any, sha256: str = "") -> ModelCard:
    """Build a :class:`ModelCard` from parsed JSON, checking every field."""
    r = _Reader(data, "model card")
    cov = r.obj("covariates")
    x1, x2 = cov.obj("operation_time"), cov.obj("hb_grade")
    if x1.text("coding") != "binary" or x2.text("coding") != "ordinal":
        raise ModelCardError(
            "covariates: the engine scores operation_time 'binary' and hb_grade 'ordinal'"
        )
    ref = r.obj("reference_patient")
    base = r.obj("baseline")
    if base.text("interpolation") != "linear-cumulative-hazard":
        raise ModelCardError("baseline.interpolation: only 'linear-cumulative-hazard' is supported")
    scen = r.obj("scenarios")
    x1_codings = scen.objs("x1_codings")
    per10 = [c for c in x1_codings if c.text("id") == "per_10_minutes"]
    card = ModelCard(
        id=r.text("id"),
        version=r.text("version"),
        title=r.text("title"),
        citation=Citation(
            **{k: r.obj("citation").text(k) for k in ("text", "pmid", "url")},
            label=r.obj("citation").optional_text("label", r.obj("citation").text("text")),
        ),
        population=r.text("population"),
        fit=r.obj("fit").data,
        operation_time=OperationTimeCovariate(
            coefficient=x1.num("coefficient"),
            cut_minutes=x1.num("cut_minutes"),
            valid_minutes=x1.pair("valid_minutes"),
            basis=x1.text("basis"),
        ),
        hb_grade=HBGradeCovariate(
            coefficient=x2.num("coefficient"),
            model_grades=(int(x2.pair("model_grades")[0]), int(x2.pair("model_grades")[1])),
            primary_window_hours=x2.num("primary_window_hours"),
            fallback_window_hours=x2.num("fallback_window_hours"),
            basis=x2.text("basis"),
        ),
        reference_x1=ref.num("x1"),
        reference_x2=ref.num("x2"),
        reference_basis=ref.text("basis"),
        baseline_knots=tuple(
            BaselineKnot(month=k.num("month"), survival=k.num("survival"))
            for k in base.objs("knots")
        ),
        baseline_basis=base.text("basis"),
        horizon_months=r.num("horizon_months"),
        days_per_month=r.num("days_per_month"),
        report_months=tuple(r.nums("report_months")),
        scenarios=Scenarios(
            x1_codings=tuple(
                cast(X1Coding, _coding(c.text("id"), ("binary", "per_10_minutes")))
                for c in x1_codings
            ),
            x1_reference_minutes=per10[0].num("reference_minutes") if per10 else math.nan,
            x2_codings=tuple(
                cast(X2Coding, _coding(c.text("id"), ("ordinal", "binary")))
                for c in scen.objs("x2_codings")
            ),
            reference_x2=tuple(scen.nums("reference_x2")),
            basis=scen.text("basis"),
        ),
        tiers=tuple(
            sorted(
                (
                    Tier(
                        id=t.text("id"),
                        label=t.text("label"),
                        min_risk_12m=t.num("min_risk_12m"),
                        indicator=cast(
                            Indicator, _coding(t.text("indicator"), ("info", "warning", "critical"))
                        ),
                        follow_up_months=tuple(t.nums("follow_up_months")),
                        advice=t.text("advice"),
                        risk_sentence=t.optional_text(
                            "risk_sentence", f"{t.text('label')} estimated risk."
                        ),
                    )
                    for t in r.objs("tiers")
                ),
                key=lambda t: -t.min_risk_12m,
            )
        ),
        tier_basis=r.text("tier_basis"),
        assumptions=tuple(r.texts("assumptions")),
        limitations=tuple(r.texts("limitations")),
        sha256=sha256,
        tiers_approved=_tiers_approved(r),
        alerting=_alerting(r),
        caveat=r.optional_text("caveat", DEFAULT_CAVEAT),
        covariance=_covariance(r.obj("fit")),
    )
    _check_consistency(card)
    return _with_translations(card, r)


def _english_texts(card: ModelCard) -> CardTexts:
    return CardTexts(
        title=card.title,
        population=card.population,
        caveat=card.caveat,
        citation_label=card.citation.label or card.citation.text,
        tiers={t.id: TierTexts(t.label, t.advice, t.risk_sentence) for t in card.tiers},
        assumptions=card.assumptions,
        limitations=card.limitations,
    )


def _with_translations(card: ModelCard, r: _Reader) -> ModelCard:
    """The card with its texts per supported locale; unknown languages are an error (a typo
    would otherwise leave a whole language silently English)."""
    english = _english_texts(card)
    given = r.obj("translations").data if "translations" in r.data else {}
    by_locale: dict[str, _Reader] = {}
    for tag in given:
        locale = normalize(tag) if isinstance(tag, str) else None
        if locale is None or locale == "en":
            offered = ", ".join(BCP47[s] for s in SUPPORTED if s != "en")
            raise ModelCardError(f"model card.translations.{tag}: expected one of {offered}")
        by_locale[locale] = r.obj("translations").obj(tag)
    texts: dict[str, CardTexts] = {"en": english}
    missing: dict[str, tuple[str, ...]] = {}
    for locale in SUPPORTED:
        if locale == "en":
            continue
        t = by_locale.get(locale)
        gaps: list[str] = []
        texts[locale] = _translated(english, t, gaps) if t else english
        missing[locale] = tuple(gaps) if t else ("all texts",)
    return replace(card, translations=texts, untranslated=missing)


def _translated(en: CardTexts, t: _Reader, gaps: list[str]) -> CardTexts:
    def text(reader: _Reader | None, key: str, english: str, name: str) -> str:
        if reader is None or key not in reader.data:
            gaps.append(name)
            return english
        return reader.text(key)

    def texts(key: str, english: tuple[str, ...]) -> tuple[str, ...]:
        if key not in t.data:
            gaps.append(key)
            return english
        values = tuple(t.texts(key))
        if len(values) != len(english):
            raise ModelCardError(
                f"{t.path}.{key}: {len(values)} texts for the {len(english)} English ones "
                "(translate each, in the same order)"
            )
        return values

    tiers_given = t.obj("tiers") if "tiers" in t.data else None
    tiers = {}
    for tier_id, tier in en.tiers.items():
        one = tiers_given.obj(tier_id) if tiers_given and tier_id in tiers_given.data else None
        tiers[tier_id] = TierTexts(
            *(
                text(one, key, getattr(tier, key), f"tiers.{tier_id}.{key}")
                for key in ("label", "advice", "risk_sentence")
            )
        )
    citation = t.obj("citation") if "citation" in t.data else None
    return CardTexts(
        title=text(t, "title", en.title, "title"),
        population=text(t, "population", en.population, "population"),
        caveat=text(t, "caveat", en.caveat, "caveat"),
        citation_label=text(citation, "label", en.citation_label, "citation.label"),
        tiers=tiers,
        assumptions=texts("assumptions", en.assumptions),
        limitations=texts("limitations", en.limitations),
    )


def _tiers_approved(r: _Reader) -> bool:
    if "governance" not in r.data:
        return False
    value = r.obj("governance").data.get("tiers_approved", False)
    if not isinstance(value, bool):
        raise ModelCardError("model card.governance.tiers_approved: expected true or false")
    return value


def _alerting(r: _Reader) -> Alerting:
    default = Alerting()
    if "alerting" not in r.data:
        return default
    a = r.obj("alerting")
    out = Alerting(
        suppress_after_feedback_days=a.optional_num(
            "suppress_after_feedback_days", default.suppress_after_feedback_days
        ),
        post_ablation_window_days=a.optional_num(
            "post_ablation_window_days", default.post_ablation_window_days
        ),
    )
    if out.suppress_after_feedback_days < 0 or out.post_ablation_window_days <= 0:
        raise ModelCardError(
            "alerting: suppress_after_feedback_days must be >= 0 and post_ablation_window_days > 0"
        )
    return out


def _covariance(fit: _Reader) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The 2x2 coefficient covariance a local fit wrote, checked to be a covariance matrix."""
    value = fit.data.get("covariance")
    if value is None:
        return None
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(
            isinstance(row, list)
            and len(row) == 2
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in row
            )
            for row in value
        )
    )
    if not ok:
        raise ModelCardError("model card.fit.covariance: expected a 2x2 array of finite numbers")
    (a, b), (c, d) = value
    if a < 0 or d < 0 or abs(b - c) > 1e-9 * max(1.0, abs(b)) or a * d - b * c < -1e-12:
        raise ModelCardError(
            "model card.fit.covariance: not a symmetric positive semi-definite matrix"
        )
    return (float(a), float(b)), (float(c), float(d))


def _check_consistency(card: ModelCard) -> None:
    knots = card.baseline_knots
    if len(knots) < 2 or knots[0].month != 0 or knots[0].survival != 1.0:
        raise ModelCardError(
            "baseline.knots: must start at month 0 with survival 1.0 and have 2+ knots"
        )
    for a, b in zip(knots, knots[1:], strict=False):
        if not b.month > a.month:
            raise ModelCardError("baseline.knots: months must increase strictly")
        if not 0.0 < b.survival <= a.survival:
            raise ModelCardError("baseline.knots: survival must be in (0, 1] and never increase")
    if not 0 < card.horizon_months <= knots[-1].month:
        raise ModelCardError("horizon_months: must be positive and covered by the baseline knots")
    if any(not 0 < m <= card.horizon_months for m in card.report_months):
        raise ModelCardError("report_months: every month must be in (0, horizon_months]")
    lo, hi = card.operation_time.valid_minutes
    if not 0 < lo < hi:
        raise ModelCardError("covariates.operation_time.valid_minutes: need 0 < low < high")
    g_lo, g_hi = card.hb_grade.model_grades
    if not 1 <= g_lo <= g_hi <= 6:
        raise ModelCardError("covariates.hb_grade.model_grades: need 1 <= low <= high <= 6")
    if not 0 < card.hb_grade.primary_window_hours <= card.hb_grade.fallback_window_hours:
        raise ModelCardError(
            "covariates.hb_grade: need 0 < primary_window_hours <= fallback_window_hours"
        )
    if not card.tiers or card.tiers[-1].min_risk_12m != 0.0:
        raise ModelCardError("tiers: the lowest tier must start at min_risk_12m 0")
    for tier in card.tiers:
        if not 0.0 <= tier.min_risk_12m < 1.0:
            raise ModelCardError(
                f"tiers[{tier.id}].min_risk_12m: {tier.min_risk_12m:g} is not a probability "
                "from 0 to below 1 (write 0.7 for 70%)"
            )
    if "per_10_minutes" in card.scenarios.x1_codings and math.isnan(
        card.scenarios.x1_reference_minutes
    ):
        raise ModelCardError("scenarios.x1_codings: per_10_minutes needs reference_minutes")
    if not (
        card.scenarios.x1_codings and card.scenarios.x2_codings and card.scenarios.reference_x2
    ):
        raise ModelCardError("scenarios: x1_codings, x2_codings and reference_x2 must not be empty")
    if card.days_per_month <= 0:
        raise ModelCardError("days_per_month: must be positive")


def _coding(value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ModelCardError(f"unsupported value {value!r}; expected one of {', '.join(allowed)}")
    return value


class _Reader:
    """Typed access to one JSON object, raising ModelCardError with the field's path."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ModelCardError(f"{path}: expected an object")
        self.data: dict[str, Any] = data
        self.path = path

    def _get(self, key: str) -> Any:
        if key not in self.data:
            keys = [k for k in self.data if isinstance(k, str)]
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
            hint = f" (is {close[0]!r} a misspelling?)" if close else ""
            raise ModelCardError(f"{self.path}.{key}: missing{hint}")
        return self.data[key]

    def obj(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.path}.{key}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise ModelCardError(f"{self.path}.{key}: expected a non-empty string")
        return value

    def num(self, key: str) -> float:
        value = self._get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ModelCardError(f"{self.path}.{key}: expected a finite number")
        return float(value)

    def optional_text(self, key: str, default: str) -> str:
        return self.text(key) if key in self.data else default

    def optional_num(self, key: str, default: float) -> float:
        return self.num(key) if key in self.data else default

    def _array(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list) or not value:
            raise ModelCardError(f"{self.path}.{key}: expected a non-empty array")
        return value

    def objs(self, key: str) -> list[_Reader]:
        return [_Reader(v, f"{self.path}.{key}[{i}]") for i, v in enumerate(self._array(key))]

    def nums(self, key: str) -> list[float]:
        values = self._array(key)
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise ModelCardError(f"{self.path}.{key}: expected an array of numbers")
        return [float(v) for v in values]

    def texts(self, key: str) -> list[str]:
        values = self._array(key)
        if any(not isinstance(v, str) or not v for v in values):
            raise ModelCardError(f"{self.path}.{key}: expected an array of non-empty strings")
        return values

    def pair(self, key: str) -> tuple[float, float]:
        values = self.nums(key)
        if len(values) != 2:
            raise ModelCardError(f"{self.path}.{key}: expected [low, high]")
        return values[0], values[1]
