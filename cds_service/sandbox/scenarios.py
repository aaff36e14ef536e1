"""The synthetic patient catalogue: FHIR R4 test patients for any FHIR server (``hfs-cds synth``).

Each patient follows one :class:`Scenario`: a typical scorable record, or one of the edge cases the
mapping rules name (no ablation, an ablation not completed, a date-only procedure, an out-of-range
duration, House-Brackmann IV, a repeat ablation, a recurrence on record, a later microvascular
decompression, several candidate grades, a grade that is only preliminary, a duration recorded as
an Observation in hours, ...). Codes come from the value sets the service uses, so a site that
replaces them (``CDS_VALUESETS_FILE``) gets patients coded its way.

Output is deterministic: the same ``seed``, patient count and ``today`` give the same Bundle byte
for byte. Dates are relative to ``today``. Patient ``i`` always gets the same scenario and the same
random draws, whatever the count, so adding patients never changes the earlier ones.

Loading twice must not duplicate anything, on sekmet-fhir, HAPI or a vendor sandbox. So every
resource carries a stable business identifier (``Patient.identifier`` in
:data:`PATIENT_IDENTIFIER_SYSTEM`, the others in :data:`RECORD_IDENTIFIER_SYSTEM`) and the Bundle is
built by :mod:`~cds_service.sandbox.bundles` (conditional updates, ``urn:uuid`` references).
Follow-up data is added without touching the scenarios (:func:`build_bundle`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, Final, Literal

from cds_service.sandbox.bundles import full_url, transaction_bundle
from fhir_mappings import Reason, Resource, ValueSets, load_value_sets, roman

#: Business identifier systems of the synthetic data (never real patients).
PATIENT_IDENTIFIER_SYSTEM: Final = "https://hfs-cds.example.org/fhir/sid/synthetic-patient"
RECORD_IDENTIFIER_SYSTEM: Final = "https://hfs-cds.example.org/fhir/sid/synthetic-record"
#: ``Patient.meta.tag`` systems: the scenario's name, and what the service should answer.
SCENARIO_TAG_SYSTEM: Final = "https://hfs-cds.example.org/fhir/CodeSystem/synthetic-scenario"
EXPECTED_TAG_SYSTEM: Final = "https://hfs-cds.example.org/fhir/CodeSystem/synthetic-expected"
#: Every resource is labelled as test data (HL7 v3 ActReason HTEST) so no one mistakes it for PHI.
TEST_DATA_LABEL: Final = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
#: The value of patient ``i`` is ``f"{KEY_PREFIX}-{seed}-{i:03d}"``.
KEY_PREFIX: Final = "hfs-synth"
DEFAULT_SEED: Final = 2026

_SNOMED: Final = "http://snomed.info/sct"
_UCUM: Final = "http://unitsofmeasure.org"
_OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
_CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
_CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_HB_DISPLAY: Final = {
    "I": "Grade I - normal facial function",
    "II": "Grade II - mild dysfunction",
    "III": "Grade III - moderate dysfunction",
    "IV": "Grade IV - moderately severe dysfunction",
    "V": "Grade V - severe dysfunction",
    "VI": "Grade VI - total paralysis",
}
#: UTC offsets of the synthetic sites (minutes): EHRs send local times with their offset.
_OFFSETS_MINUTES: Final = (480, -300, 0, 60, 330, -480, 120)
_FAMILY: Final = (
    "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Novak", "Silva", "Kowalski",
    "Murphy", "Ibrahim", "Rossi", "Nguyen", "Fischer", "Mensah", "Duarte", "Kaur",
)  # fmt: skip
_GIVEN: Final = {
    "female": ("Amara", "Ingrid", "Claire", "Yuki", "Leila", "Petra", "Ana", "Zofia", "Mei"),
    "male": ("Emeka", "Lars", "Julien", "Kenji", "Omar", "Tomas", "Rui", "Piotr", "Arjun"),
}

Expected = Literal["scored", "not-scored", "no-card"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """What a synthetic patient's record is like, and what the service should answer for it."""

    name: str
    expected: Expected
    description: str
    reasons: tuple[Reason, ...] = ()  # the not-scored reasons the service must give, exactly

    @property
    def expected_code(self) -> str:
        """Machine-readable expectation: ``scored``, ``no-card`` or ``not-scored:r1+r2``."""
        if self.expected != "not-scored":
            return self.expected
        return "not-scored:" + "+".join(sorted(r.value for r in self.reasons))


def parse_expected_code(code: str) -> tuple[Expected, frozenset[str]]:
    """The inverse of :attr:`Scenario.expected_code` (for tags read back from a server)."""
    status, _, reasons = code.partition(":")
    if status == "scored":
        return "scored", frozenset()
    if status == "no-card":
        return "no-card", frozenset()
    if status == "not-scored":
        return "not-scored", frozenset(r for r in reasons.split("+") if r)
    raise ValueError(f"not an expected-outcome code: {code!r}")


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    """One synthetic patient: the Patient resource first, then the clinical resources.

    Resources reference each other with ``urn:uuid`` full URLs (:func:`full_url`); they carry no
    ``id``, since the FHIR server assigns ids.
    """

    key: str  # the Patient's business identifier value
    index: int
    scenario: Scenario
    resources: tuple[Resource, ...]
    #: End of the most recent completed ablation (a follow-up simulator's time origin), if any.
    index_ablation_end: datetime | None = None

    @property
    def patient(self) -> Resource:
        return self.resources[0]

    @property
    def full_url(self) -> str:
        return full_url(self.patient)

    def reference(self) -> dict[str, str]:
        """A reference to this patient for resources in the same Bundle."""
        return {"reference": self.full_url}

    def record_identifier(self, suffix: str) -> dict[str, str]:
        """A stable business identifier for another resource of this patient."""
        return {"system": RECORD_IDENTIFIER_SYSTEM, "value": f"{self.key}-{suffix}"}


def build_bundle(
    patients: Sequence[SyntheticPatient],
    extra_resources_by_patient: Mapping[str, Sequence[Resource]] | None = None,
) -> Resource:
    """One transaction Bundle with every patient's resources, plus extra ones by patient key.

    Extra resources (e.g. simulated follow-up) must carry a business identifier (see
    :meth:`SyntheticPatient.record_identifier`) and reference the patient with
    :meth:`SyntheticPatient.reference`; they follow the patient's own resources.
    """
    extra = dict(extra_resources_by_patient or {})
    unknown = sorted(set(extra) - {p.key for p in patients})
    if unknown:
        raise ValueError(f"extra resources for unknown patient key(s): {', '.join(unknown)}")
    return transaction_bundle(r for p in patients for r in (*p.resources, *extra.get(p.key, ())))


def synthetic_patients(
    seed: int = DEFAULT_SEED,
    count: int | None = None,
    today: date | None = None,
    value_sets: ValueSets | None = None,
    past_cohort: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[SyntheticPatient]:
    """``count`` patients (default: one per named scenario), dated relative to ``today``.

    The first patients cover :data:`SCENARIOS` in order; any beyond them are typical scorable
    records with random durations, grades and codings: recent ones, or with ``past_cohort``
    ablations 13-30 months ago, whose follow-up outcomes can then be simulated.
    ``progress(done, total)`` hears of each patient made.
    """
    count = len(SCENARIOS) if count is None else count
    if count < 0:
        raise ValueError("the patient count must not be negative")
    today = today or datetime.now(UTC).date()
    value_sets = value_sets or load_value_sets()
    patients = []
    for i in range(count):
        patients.append(_make_patient(seed, i, today, value_sets, past_cohort))
        if progress is not None:
            progress(i + 1, count)
    return patients


# -- one patient ----------------------------------------------------------------------------------


@dataclass
class _Builder:
    """Accumulates one patient's resources; every random draw comes from the patient's own RNG."""

    key: str
    rng: random.Random
    today: date
    vs: ValueSets
    tz: timezone
    resources: list[Resource] = field(default_factory=list)
    patient_url: str = ""
    ablation_end: datetime | None = None
    _counters: dict[str, int] = field(default_factory=dict)

    # -- time ------------------------------------------------------------------------------------

    def local(self, days_ago: float, hour: int, minute: int = 0) -> datetime:
        """A local date-time ``days_ago`` whole days before today (fraction ignored)."""
        day = self.today - timedelta(days=int(days_ago))
        return datetime.combine(day, time(hour, minute), tzinfo=self.tz)

    def stamp(self, moment: datetime) -> str:
        text = moment.isoformat(timespec="seconds")
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    # -- identity --------------------------------------------------------------------------------

    def identifier(self, kind: str) -> list[dict[str, str]]:
        n = self._counters.get(kind, 0) + 1
        self._counters[kind] = n
        return [{"system": RECORD_IDENTIFIER_SYSTEM, "value": f"{self.key}-{kind}{n}"}]

    def meta(self) -> dict[str, Any]:
        return {"security": [dict(TEST_DATA_LABEL)]}

    def subject(self) -> dict[str, str]:
        return {"reference": self.patient_url}

    def add(self, resource: Resource) -> Resource:
        self.resources.append(resource)
        return resource

    # -- codings ---------------------------------------------------------------------------------

    def codings(self, set_name: str, *, at_most: int = 2) -> list[dict[str, str]]:
        """One or (sometimes) two codings of a value set, as an EHR would record them."""
        members = list(self.vs.code_set(set_name).codes)
        if not members:
            raise ValueError(f"value set {set_name!r} is empty; cannot generate data for it")
        how_many = 1 if len(members) == 1 or at_most == 1 else self.rng.choice((1, 1, 2))
        chosen = self.rng.sample(members, how_many)
        return [
            {"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})}
            for c in chosen
        ]

    # -- resources -------------------------------------------------------------------------------

    def patient(self, index: int, scenario: Scenario) -> None:
        gender = self.rng.choice(("female", "male"))
        age_days = self.rng.randint(35 * 365, 78 * 365)
        resource: Resource = {
            "resourceType": "Patient",
            "identifier": [
                {"use": "usual", "system": PATIENT_IDENTIFIER_SYSTEM, "value": self.key}
            ],
            "meta": {
                "security": [dict(TEST_DATA_LABEL)],
                "tag": [
                    {"system": SCENARIO_TAG_SYSTEM, "code": scenario.name},
                    {"system": EXPECTED_TAG_SYSTEM, "code": scenario.expected_code},
                ],
            },
            "active": True,
            "name": [
                {
                    "use": "official",
                    "family": self.rng.choice(_FAMILY),
                    "given": [self.rng.choice(_GIVEN[gender])],
                }
            ],
            "gender": gender,
            "birthDate": (self.today - timedelta(days=age_days)).isoformat(),
        }
        self.add(resource)
        self.patient_url = full_url(resource)

    def hfs_condition(self, *, clinical: str = "active", onset_years: float | None = None) -> str:
        """Hemifacial spasm diagnosed years ago; returns its full URL."""
        years = onset_years if onset_years is not None else self.rng.uniform(1.5, 9)
        onset = self.today - timedelta(days=int(years * 365))
        recorded = onset + timedelta(days=self.rng.randint(20, 200))
        resource = self.add(
            {
                "resourceType": "Condition",
                "identifier": self.identifier("hfs"),
                "meta": self.meta(),
                "clinicalStatus": _concept(_CONDITION_CLINICAL, clinical),
                "verificationStatus": _concept(_CONDITION_VERIFICATION, "confirmed"),
                "category": [_concept(_CONDITION_CATEGORY, "problem-list-item")],
                "code": {
                    "coding": self.codings("hemifacial_spasm_condition"),
                    "text": "Hemifacial spasm",
                },
                "subject": self.subject(),
                "onsetDateTime": onset.strftime("%Y-%m"),
                "recordedDate": recorded.isoformat(),
            }
        )
        return full_url(resource)

    def ablation(
        self,
        *,
        start: datetime | None,
        minutes: float | None = None,
        status: str = "completed",
        performed_date_only: bool = False,
        performed_time_only: bool = False,
        reason: str | None = None,
    ) -> str:
        """An RFA of the facial nerve; returns its full URL.

        ``minutes`` gives performedPeriod start and end; ``performed_date_only`` records only
        performedDateTime as a date, ``performed_time_only`` performedDateTime with a time.
        """
        resource: Resource = {
            "resourceType": "Procedure",
            "identifier": self.identifier("rfa"),
            "meta": self.meta(),
            "status": status,
            "category": _concept(_SNOMED, "387713003", "Surgical procedure"),
            "code": {
                "coding": self.codings("ablation_procedure"),
                "text": "CT-guided radiofrequency ablation of the facial nerve",
            },
            "subject": self.subject(),
        }
        if start is not None:
            if performed_date_only:
                resource["performedDateTime"] = start.date().isoformat()
            elif performed_time_only:
                assert minutes is not None
                resource["performedDateTime"] = self.stamp(start + timedelta(minutes=minutes))
            elif minutes is None:
                resource["performedPeriod"] = {"start": self.stamp(start)}
            else:
                end = start + timedelta(minutes=minutes)
                resource["performedPeriod"] = {"start": self.stamp(start), "end": self.stamp(end)}
        if reason:
            resource["reasonReference"] = [{"reference": reason}]
        if status == "completed" and start is not None:
            end_at = start + timedelta(minutes=minutes or 0)
            if self.ablation_end is None or end_at > self.ablation_end:
                self.ablation_end = end_at
        return full_url(self.add(resource))

    def mvd(self, *, start: datetime, minutes: float) -> str:
        """A microvascular decompression (the later treatment set)."""
        end = start + timedelta(minutes=minutes)
        resource = self.add(
            {
                "resourceType": "Procedure",
                "identifier": self.identifier("mvd"),
                "meta": self.meta(),
                "status": "completed",
                "category": _concept(_SNOMED, "387713003", "Surgical procedure"),
                "code": {
                    "coding": self.codings("later_treatment_procedure", at_most=1),
                    "text": "Microvascular decompression of the facial nerve",
                },
                "subject": self.subject(),
                "performedPeriod": {"start": self.stamp(start), "end": self.stamp(end)},
            }
        )
        return full_url(resource)

    def hb(
        self,
        *,
        grade: int,
        at: datetime,
        status: str = "final",
        as_integer: bool | None = None,
    ) -> str:
        """A House-Brackmann grade Observation (valueCodeableConcept or valueInteger)."""
        integer = self.rng.random() < 0.4 if as_integer is None else as_integer
        resource: Resource = {
            "resourceType": "Observation",
            "identifier": self.identifier("hb"),
            "meta": self.meta(),
            "status": status,
            "category": [_concept(_OBSERVATION_CATEGORY, "exam", "Exam")],
            "code": {
                "coding": self.codings("hb_grade_observation"),
                "text": "House-Brackmann grade",
            },
            "subject": self.subject(),
            "effectiveDateTime": self.stamp(at),
            "issued": self.stamp(at + timedelta(minutes=self.rng.randint(5, 90))),
        }
        if integer:
            resource["valueInteger"] = grade
        else:
            numeral = roman(grade)
            resource["valueCodeableConcept"] = {
                "coding": [
                    {
                        "system": self.vs.house_brackmann_code_system,
                        "code": numeral,
                        "display": _HB_DISPLAY[numeral],
                    }
                ],
                "text": f"House-Brackmann {numeral}",
            }
        return full_url(self.add(resource))

    def duration_observation(self, *, procedure: str, at: datetime, hours: float) -> str:
        """The operation time as an Observation partOf the procedure, in hours (UCUM ``h``)."""
        resource = self.add(
            {
                "resourceType": "Observation",
                "identifier": self.identifier("duration"),
                "meta": self.meta(),
                "status": "final",
                "category": [_concept(_OBSERVATION_CATEGORY, "procedure", "Procedure")],
                "code": {
                    "coding": self.codings("operation_duration_observation", at_most=1),
                    "text": "Operation time",
                },
                "subject": self.subject(),
                "partOf": [{"reference": procedure}],
                "effectiveDateTime": self.stamp(at),
                "valueQuantity": {"value": hours, "unit": "h", "system": _UCUM, "code": "h"},
            }
        )
        return full_url(resource)

    def recurrence_condition(self, *, onset: date) -> str:
        """Recurrence of hemifacial spasm after RFA, recorded as a Condition."""
        resource = self.add(
            {
                "resourceType": "Condition",
                "identifier": self.identifier("recurrence"),
                "meta": self.meta(),
                "clinicalStatus": _concept(_CONDITION_CLINICAL, "active"),
                "verificationStatus": _concept(_CONDITION_VERIFICATION, "confirmed"),
                "category": [_concept(_CONDITION_CATEGORY, "encounter-diagnosis")],
                "code": {
                    "coding": self.codings("recurrence_finding", at_most=1),
                    "text": "Hemifacial spasm recurred after RFA",
                },
                "subject": self.subject(),
                "onsetDateTime": onset.isoformat(),
                "recordedDate": (onset + timedelta(days=self.rng.randint(1, 10))).isoformat(),
            }
        )
        return full_url(resource)

    # -- composite -------------------------------------------------------------------------------

    def start_time(self, days_ago: int) -> datetime:
        """A weekday-hours ablation start ``days_ago`` days before today."""
        return self.local(days_ago, self.rng.randint(8, 15), self.rng.choice((0, 10, 15, 20, 30)))

    def scored_record(
        self,
        *,
        days_ago: tuple[int, int],
        minutes: tuple[int, int],
        grade: int,
        hb_hours: tuple[float, float] = (2, 60),
        hb_status: str = "final",
        as_integer: bool | None = None,
    ) -> datetime:
        """Diagnosis, one timed ablation and one grade: a record the model can score."""
        reason = self.hfs_condition(clinical=self.rng.choice(("active", "remission")))
        start = self.start_time(self.rng.randint(*days_ago))
        length = self.rng.randint(*minutes)
        self.ablation(start=start, minutes=length, reason=reason)
        end = start + timedelta(minutes=length)
        self.hb(
            grade=grade,
            at=_minute(end + timedelta(hours=self.rng.uniform(*hb_hours))),
            status=hb_status,
            as_integer=as_integer,
        )
        return end


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, str] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# -- the scenarios --------------------------------------------------------------------------------
# Days-ago ranges keep every event (grades up to 20 days after) before today, and every scorable
# ablation inside the model's 12-month horizon.

_Build = Callable[[_Builder], None]
_NAMED: list[tuple[Scenario, _Build]] = []


def _scenario(
    name: str, expected: Expected, description: str, *reasons: Reason
) -> Callable[[_Build], _Build]:
    """Adds the builder it decorates to :data:`SCENARIOS`, in the order they are defined."""

    def register(build: _Build) -> _Build:
        _NAMED.append((Scenario(name, expected, description, reasons), build))
        return build

    return register


@_scenario("typical-coded-hb", "scored", "34-70 min, HB II coded")
def _typical_coded(b: _Builder) -> None:
    b.scored_record(days_ago=(20, 150), minutes=(34, 70), grade=2, as_integer=False)


@_scenario("short-ablation-integer-hb", "scored", "under 30 min, HB I integer")
def _short_integer(b: _Builder) -> None:
    b.scored_record(days_ago=(10, 90), minutes=(12, 28), grade=1, as_integer=True)


@_scenario("amended-hb-iii", "scored", "HB III with status amended")
def _amended_grade(b: _Builder) -> None:
    b.scored_record(days_ago=(30, 200), minutes=(22, 45), grade=3, hb_status="amended")


@_scenario("duration-observation-hours", "scored", "time-only end; duration Observation in h")
def _duration_observation_hours(b: _Builder) -> None:
    reason = b.hfs_condition()
    start = b.start_time(b.rng.randint(15, 120))
    minutes = b.rng.choice((36, 45, 54, 66))  # a whole number of 0.05 h: exact in hours
    procedure = b.ablation(start=start, minutes=minutes, performed_time_only=True, reason=reason)
    end = start + timedelta(minutes=minutes)
    b.duration_observation(procedure=procedure, at=end, hours=round(minutes / 60, 2))
    b.hb(grade=2, at=_minute(end + timedelta(hours=b.rng.uniform(3, 30))))


@_scenario("several-hb-candidates", "scored", "pre-op, preliminary, void and later grades")
def _several_hb_candidates(b: _Builder) -> None:
    reason = b.hfs_condition()
    start = b.start_time(b.rng.randint(15, 120))
    minutes = b.rng.randint(25, 50)
    b.ablation(start=start, minutes=minutes, reason=reason)
    end = start + timedelta(minutes=minutes)
    b.hb(grade=1, at=_minute(start - timedelta(days=2)))  # pre-operative baseline: ignored
    b.hb(grade=3, at=_minute(end + timedelta(hours=1)), status="preliminary")  # not accepted
    b.hb(grade=4, at=_minute(end + timedelta(hours=2)), status="entered-in-error")  # void
    b.hb(grade=2, at=_minute(end + timedelta(hours=b.rng.uniform(16, 30))))  # the one scored
    b.hb(grade=1, at=_minute(end + timedelta(days=5)), status="amended")  # later: not first


@_scenario("hb-fallback-window", "scored", "only grade 3-7 days after")
def _hb_fallback_window(b: _Builder) -> None:
    b.scored_record(days_ago=(20, 120), minutes=(30, 60), grade=2, hb_hours=(80, 160))


@_scenario("no-ablation", "no-card", "hemifacial spasm, no ablation")
def _no_ablation(b: _Builder) -> None:
    b.hfs_condition()


@_scenario("ablation-over-12-months", "no-card", "ablation 14-20 months ago")
def _ablation_over_horizon(b: _Builder) -> None:
    b.scored_record(days_ago=(420, 600), minutes=(25, 50), grade=2)


@_scenario(
    "procedure-not-completed",
    "not-scored",
    "ablation in progress or in preparation",
    Reason.PROCEDURE_NOT_COMPLETED,
)
def _procedure_not_completed(b: _Builder) -> None:
    reason = b.hfs_condition()
    start = b.start_time(b.rng.randint(8, 60))
    b.ablation(start=start, status=b.rng.choice(("in-progress", "preparation")), reason=reason)


@_scenario(
    "missing-times", "not-scored", "performedDateTime is a date only", Reason.PERIOD_WITHOUT_TIMES
)
def _missing_times(b: _Builder) -> None:
    reason = b.hfs_condition()
    start = b.start_time(b.rng.randint(15, 120))
    b.ablation(start=start, minutes=40, performed_date_only=True, reason=reason)
    b.hb(grade=2, at=_minute(start + timedelta(hours=b.rng.uniform(20, 40))))


@_scenario(
    "duration-out-of-range",
    "not-scored",
    "195-260 min performedPeriod",
    Reason.DURATION_OUT_OF_RANGE,
)
def _duration_out_of_range(b: _Builder) -> None:
    b.scored_record(days_ago=(15, 120), minutes=(195, 260), grade=2)


@_scenario("hb-iv", "not-scored", "HB IV after the ablation", Reason.HB_OUTSIDE_MODEL)
def _hb_iv(b: _Builder) -> None:
    b.scored_record(days_ago=(8, 60), minutes=(30, 60), grade=4, hb_hours=(2, 20))


@_scenario(
    "repeat-ablation",
    "not-scored",
    "second ablation months after the first",
    Reason.REPEAT_PROCEDURE,
)
def _repeat_ablation(b: _Builder) -> None:
    reason = b.hfs_condition()
    first = b.start_time(b.rng.randint(250, 330))
    b.ablation(start=first, minutes=b.rng.randint(25, 45), reason=reason)
    b.hb(grade=2, at=_minute(first + timedelta(hours=20)))
    second = b.start_time(b.rng.randint(15, 90))
    minutes = b.rng.randint(25, 45)
    b.ablation(start=second, minutes=minutes, reason=reason)
    b.hb(grade=2, at=_minute(second + timedelta(minutes=minutes, hours=18)))


@_scenario(
    "recurrence-recorded",
    "not-scored",
    "recurrence Condition after the ablation",
    Reason.RECURRENCE_RECORDED,
)
def _recurrence_recorded(b: _Builder) -> None:
    end = b.scored_record(days_ago=(150, 300), minutes=(25, 50), grade=2)
    b.recurrence_condition(onset=(end + timedelta(days=b.rng.randint(60, 120))).date())


@_scenario(
    "later-mvd",
    "not-scored",
    "microvascular decompression after the ablation",
    Reason.LATER_TREATMENT,
)
def _later_mvd(b: _Builder) -> None:
    end = b.scored_record(days_ago=(200, 320), minutes=(25, 50), grade=1)
    start = b.local(0, 8) - timedelta(days=b.rng.randint(30, 90))
    assert start > end
    b.mvd(start=start, minutes=b.rng.randint(150, 240))


@_scenario(
    "hb-preliminary-only", "not-scored", "the only grade is preliminary", Reason.HB_PRELIMINARY_ONLY
)
def _hb_preliminary_only(b: _Builder) -> None:
    b.scored_record(days_ago=(8, 40), minutes=(25, 50), grade=2, hb_status="preliminary")


@_scenario("no-hb-in-window", "not-scored", "grade 10-20 days after only", Reason.NO_HB_IN_WINDOW)
def _no_hb_in_window(b: _Builder) -> None:
    b.scored_record(days_ago=(30, 120), minutes=(25, 50), grade=2, hb_hours=(240, 480))


def _random_record(b: _Builder, days_ago: tuple[int, int]) -> None:
    """A typical scorable record with a random duration, grade and coding."""
    b.scored_record(
        days_ago=days_ago,
        minutes=(12, 95),
        grade=b.rng.choice((1, 2, 2, 3)),
        hb_status=b.rng.choice(("final", "final", "amended")),
    )


#: The named scenarios, in patient order. Patients beyond them are ``typical-random``.
SCENARIOS: Final = tuple(_NAMED)
TYPICAL_RANDOM: Final = Scenario(
    "typical-random", "scored", "random duration 12-95 min, HB I-III, coded or integer"
)


#: Patients beyond the named scenarios for a recalibration cohort: treated long enough ago that
#: their whole 12-month follow-up lies in the past (the service gives them no card).
PAST_COHORT: Final = Scenario(
    "past-cohort", "no-card", "ablation 13-30 months ago, for follow-up outcomes and recalibration"
)


def scenario_for(index: int, past_cohort: bool = False) -> Scenario:
    """The scenario of patient ``index`` (stable whatever the patient count)."""
    if index < len(SCENARIOS):
        return SCENARIOS[index][0]
    return PAST_COHORT if past_cohort else TYPICAL_RANDOM


def patient_key(seed: int, index: int) -> str:
    return f"{KEY_PREFIX}-{seed}-{index:03d}"


def _make_patient(
    seed: int, index: int, today: date, value_sets: ValueSets, past_cohort: bool = False
) -> SyntheticPatient:
    rng = random.Random(f"{KEY_PREFIX}:{seed}:{index}")
    offset = timedelta(minutes=rng.choice(_OFFSETS_MINUTES))
    builder = _Builder(
        key=patient_key(seed, index),
        rng=rng,
        today=today,
        vs=value_sets,
        tz=timezone(offset) if offset else UTC,
    )
    scenario = scenario_for(index, past_cohort)
    builder.patient(index, scenario)
    if index < len(SCENARIOS):
        SCENARIOS[index][1](builder)
    else:
        _random_record(builder, (400, 900) if past_cohort else (5, 330))
    return SyntheticPatient(
        key=builder.key,
        index=index,
        scenario=scenario,
        resources=tuple(builder.resources),
        index_ablation_end=builder.ablation_end,
    )


__all__ = [
    "DEFAULT_SEED",
    "EXPECTED_TAG_SYSTEM",
    "PAST_COHORT",
    "PATIENT_IDENTIFIER_SYSTEM",
    "RECORD_IDENTIFIER_SYSTEM",
    "SCENARIOS",
    "SCENARIO_TAG_SYSTEM",
    "TEST_DATA_LABEL",
    "TYPICAL_RANDOM",
    "Scenario",
    "SyntheticPatient",
    "build_bundle",
    "parse_expected_code",
    "patient_key",
    "scenario_for",
    "synthetic_patients",
]
