"""Why a patient is not scored, said in the reader's language (by the problem's reason code).

``fhir_mappings`` writes each :class:`~fhir_mappings.Problem` in English, naming the resources and
fields it found; those messages are data. In another language the reason code chooses a translated
explanation and action, and the English message follows in brackets as the precise detail an
integrator needs (resource ids, code systems, field names are the same in every language).
"""

from __future__ import annotations

from cds_service.presentation.statement import N_
from cds_service.presentation.wording import Wording
from fhir_mappings import Problem, Reason

#: What is wrong and what to do, per reason (msgids; English readers get the problem's own text).
_BY_REASON: dict[Reason, tuple[str, str]] = {
    Reason.NO_ABLATION: (
        N_("No completed facial-nerve radiofrequency ablation was found."),
        N_("Record the ablation as a completed Procedure with start and end times."),
    ),
    Reason.UNREADABLE_RECORD: (
        N_("A record the rules read is not in FHIR R4 form, so it cannot be read safely."),
        N_("Have the interface send the record in FHIR R4 form."),
    ),
    Reason.PROCEDURE_NOT_COMPLETED: (
        N_("The ablation is not recorded as completed."),
        N_(
            "The risk is scored once the Procedure is recorded as completed, with start and end times."
        ),
    ),
    Reason.PROCEDURE_DATE_MISSING: (
        N_("The completed ablation has no usable date."),
        N_("Record the ablation's start and end times."),
    ),
    Reason.PERIOD_WITHOUT_TIMES: (
        N_("The operation time cannot be derived: the ablation's period has no times."),
        N_("Record the ablation's start and end times, or the operation time as an Observation."),
    ),
    Reason.DURATION_INVALID: (
        N_("The operation time cannot be derived from the record."),
        N_("Record the ablation's start and end times, or the operation time as an Observation."),
    ),
    Reason.DURATION_OUT_OF_RANGE: (
        N_("The recorded operation time is outside the plausible range."),
        N_("Correct the ablation's start and end times or the operation-time Observation."),
    ),
    Reason.DURATION_UNSUPPORTED_UNIT: (
        N_("The operation time's unit is not supported."),
        N_("Record the operation time in minutes (UCUM min) or hours (h)."),
    ),
    Reason.NO_HB_IN_WINDOW: (
        N_("No accepted House-Brackmann grade was recorded in the window after the ablation."),
        N_(
            "Record the House-Brackmann grade 0-72 h after the procedure as a final Observation "
            "(grade I-VI)."
        ),
    ),
    Reason.HB_PRELIMINARY_ONLY: (
        N_("Only preliminary House-Brackmann grades were recorded after the ablation."),
        N_("Record the House-Brackmann grade with status 'final' once it is confirmed."),
    ),
    Reason.HB_OUTSIDE_MODEL: (
        N_(
            "The House-Brackmann grade after the ablation is outside the grades the model was "
            "derived on, so no risk is calculated."
        ),
        N_(
            "Facial palsy: protect the eye (lubricating drops by day, ointment and taping at "
            "night, urgent eye review if it is red or painful) and arrange an early review of "
            "facial nerve function."
        ),
    ),
    Reason.HB_UNSUPPORTED_VALUE: (
        N_("The House-Brackmann grade's value cannot be read."),
        N_("Correct the grade's value: a House-Brackmann code I-VI or an integer 1-6."),
    ),
    Reason.REPEAT_PROCEDURE: (
        N_("This is a repeat ablation; no risk is calculated after a repeat procedure."),
        N_("If the earlier ablation was recorded in error, mark it entered-in-error."),
    ),
    Reason.RECURRENCE_RECORDED: (
        N_("A recurrence of hemifacial spasm is recorded after the ablation."),
        N_(
            "No recurrence risk is calculated once a recurrence is recorded; if it was recorded "
            "in error, mark it entered-in-error."
        ),
    ),
    Reason.LATER_TREATMENT: (
        N_(
            "A later treatment is recorded after the ablation; its recurrence risk no longer applies."
        ),
        N_("If the later treatment was recorded in error, mark it entered-in-error."),
    ),
}


def problem_texts(problem: Problem, words: Wording) -> tuple[str, str, str | None]:
    """``(message, action, English detail or None)`` for a reader of ``words``' language."""
    if words.locale == "en" or problem.reason not in _BY_REASON:
        return problem.message, problem.action, None
    message, action = _BY_REASON[problem.reason]
    return words.gettext(message), words.gettext(action), problem.message
