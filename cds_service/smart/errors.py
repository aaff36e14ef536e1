"""Every way a launch or a page can fail, each with a page that says what happened and what to do.

A :class:`SmartError` carries a stable ``code`` (shown small on the page and in ``data-error`` for
tests and support calls) and an optional ``detail`` that is safe to show: an OAuth error code, the
launching server's URL, an HTTP status. Never a token, a code, a stack trace or patient data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


def N_(message: str) -> str:
    """Marks a catalogue msgid (Babel extracts ``N_``); the page translates it when it renders."""
    return message


_RELAUNCH = N_("Close this window and open the app again from the patient's chart in the EHR.")


class Failure(StrEnum):
    NOT_CONFIGURED = "not-configured"
    LAUNCH_PARAMETERS = "launch-parameters"
    ISS_NOT_ALLOWED = "iss-not-allowed"
    DISCOVERY_FAILED = "discovery-failed"
    DISCOVERY_INVALID = "discovery-invalid"
    NO_SESSION = "no-session"
    STATE_MISSING = "state-missing"
    STATE_INVALID = "state-invalid"
    STATE_USED = "state-used"
    STATE_EXPIRED = "state-expired"
    AUTHORIZATION_DENIED = "authorization-denied"
    AUTHORIZATION_ERROR = "authorization-error"
    CODE_MISSING = "code-missing"
    TOKEN_FAILED = "token-failed"
    TOKEN_INVALID = "token-invalid"
    NO_PATIENT = "no-patient"
    SCOPE_INSUFFICIENT = "scope-insufficient"
    LAUNCH_NOT_FOUND = "launch-not-found"
    SESSION_EXPIRED = "session-expired"
    FHIR_UNAUTHORIZED = "fhir-unauthorized"
    PATIENT_NOT_FOUND = "patient-not-found"
    FHIR_UNAVAILABLE = "fhir-unavailable"
    STORE_UNAVAILABLE = "store-unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class FailureText:
    """The page's three texts, in English (the msgids); :meth:`translated` gives another language."""

    status: int
    title: str
    what_happened: str
    what_to_do: str

    def translated(self, gettext: Callable[[str], str]) -> FailureText:
        return FailureText(
            self.status, gettext(self.title), gettext(self.what_happened), gettext(self.what_to_do)
        )


FAILURES: dict[Failure, FailureText] = {
    Failure.NOT_CONFIGURED: FailureText(
        503,
        N_("The app is not set up on this server"),
        N_("This server has no SMART client registration, so it cannot sign in to an EHR."),
        N_(
            "Ask the administrator to register the app with the EHR and set SMART_CLIENT_ID and "
            "SMART_ALLOWED_ISSUERS (see the README)."
        ),
    ),
    Failure.LAUNCH_PARAMETERS: FailureText(
        400,
        N_("The app was opened without a launch from the EHR"),
        N_(
            "The address has no EHR launch parameters (iss and launch), and no standalone FHIR "
            "server is configured."
        ),
        N_("Open the app from the patient's chart or from the recurrence-risk card in the EHR."),
    ),
    Failure.ISS_NOT_ALLOWED: FailureText(
        403,
        N_("This EHR is not registered with the app"),
        N_("The app was launched by a FHIR server it does not know. Nothing was sent to it."),
        N_(
            "If this EHR should use the app, ask the administrator to add its FHIR base URL to "
            "SMART_ALLOWED_ISSUERS."
        ),
    ),
    Failure.DISCOVERY_FAILED: FailureText(
        502,
        N_("The EHR's sign-in settings could not be read"),
        N_(
            "The app could not read the EHR's SMART configuration (.well-known/smart-configuration)."
        ),
        N_("Try again in a minute. If it keeps happening, tell the EHR's integration team."),
    ),
    Failure.DISCOVERY_INVALID: FailureText(
        502,
        N_("The EHR's sign-in settings cannot be used"),
        N_("The EHR's SMART configuration is missing something the app needs."),
        N_("Tell the EHR's integration team; the detail below says what is missing."),
    ),
    Failure.NO_SESSION: FailureText(
        400,
        N_("Your browser did not keep the app's session"),
        N_(
            "The sign-in came back, but without the app's session cookie. Browsers that block "
            "third-party cookies in an embedded frame do this."
        ),
        N_(
            "Open the app again from the chart. If it fails again, open it in a new window, or allow "
            "cookies for this app."
        ),
    ),
    Failure.STATE_MISSING: FailureText(
        400,
        N_("The sign-in answer is incomplete"),
        N_(
            "The answer from the EHR's sign-in has no 'state' value, so the app cannot tell that it "
            "belongs to the sign-in this browser started. It was refused."
        ),
        _RELAUNCH,
    ),
    Failure.STATE_INVALID: FailureText(
        400,
        N_("The sign-in answer does not belong to this browser"),
        N_(
            "The 'state' value in the sign-in answer was not issued to this browser session. It was "
            "refused, because it may have been altered or started elsewhere."
        ),
        _RELAUNCH,
    ),
    Failure.STATE_USED: FailureText(
        400,
        N_("This sign-in answer was already used"),
        N_(
            "Each sign-in answer works once; this one was used before (for example after a reload or "
            "the back button)."
        ),
        _RELAUNCH,
    ),
    Failure.STATE_EXPIRED: FailureText(
        400,
        N_("The sign-in took too long"),
        N_("The sign-in was started more than ten minutes ago and has expired."),
        _RELAUNCH,
    ),
    Failure.AUTHORIZATION_DENIED: FailureText(
        403,
        N_("The EHR did not give the app access"),
        N_(
            "Access was declined at the EHR's sign-in, so the app has no access to the patient's record."
        ),
        N_(
            "If this was not intended, open the app again from the chart and approve the access it "
            "asks for."
        ),
    ),
    Failure.AUTHORIZATION_ERROR: FailureText(
        400,
        N_("The EHR's sign-in failed"),
        N_("The EHR's sign-in answered with an error instead of access."),
        N_(
            "Open the app again from the chart. If it keeps happening, tell the EHR's integration "
            "team the error code below."
        ),
    ),
    Failure.CODE_MISSING: FailureText(
        400,
        N_("The sign-in answer is incomplete"),
        N_("The answer from the EHR's sign-in has neither an authorization code nor an error."),
        _RELAUNCH,
    ),
    Failure.TOKEN_FAILED: FailureText(
        502,
        N_("The EHR did not grant access"),
        N_("Exchanging the sign-in for an access token failed."),
        N_(
            "Open the app again from the chart. If it keeps happening, tell the EHR's integration "
            "team the detail below."
        ),
    ),
    Failure.TOKEN_INVALID: FailureText(
        502,
        N_("The EHR's access token cannot be used"),
        N_("The EHR's token answer is missing something the app needs."),
        N_("Tell the EHR's integration team; the detail below says what is missing."),
    ),
    Failure.NO_PATIENT: FailureText(
        502,
        N_("No patient was selected"),
        N_("The EHR granted access but did not say which patient the app is for."),
        N_("Open the app from a patient's chart (or pick a patient when the EHR asks)."),
    ),
    Failure.SCOPE_INSUFFICIENT: FailureText(
        403,
        N_("The app was given too little access"),
        N_(
            "The EHR granted fewer permissions than the assessment needs, so the risk cannot be "
            "calculated reliably."
        ),
        N_(
            "Ask the EHR's administrator to grant the app read access to the resources listed below."
        ),
    ),
    Failure.LAUNCH_NOT_FOUND: FailureText(
        404,
        N_("This page has expired"),
        N_(
            "The app's session for this page has ended (it was idle, the browser lost its cookie, or "
            "the app was restarted)."
        ),
        _RELAUNCH,
    ),
    Failure.SESSION_EXPIRED: FailureText(
        401,
        N_("The app's access has expired"),
        N_("The access the EHR granted has expired and could not be renewed."),
        _RELAUNCH,
    ),
    Failure.FHIR_UNAUTHORIZED: FailureText(
        403,
        N_("The EHR refused to share the record"),
        N_("The EHR's FHIR server refused the app's access to this patient's data."),
        N_(
            "Open the app again from the chart. If it keeps happening, ask the EHR's administrator "
            "whether the app may read Patient, Procedure, Observation and Condition data."
        ),
    ),
    Failure.PATIENT_NOT_FOUND: FailureText(
        404,
        N_("The patient was not found"),
        N_("The EHR's FHIR server does not know the patient the app was launched for."),
        _RELAUNCH,
    ),
    Failure.FHIR_UNAVAILABLE: FailureText(
        504,
        N_("The patient's data could not be read"),
        N_("The EHR's FHIR server did not answer in time or answered with an error."),
        N_(
            "Try again in a minute (reload this page). If it keeps happening, tell the EHR's "
            "integration team."
        ),
    ),
    Failure.STORE_UNAVAILABLE: FailureText(
        503,
        N_("The app cannot keep its session right now"),
        N_(
            "The service's database did not answer, so the app could neither start a session "
            "nor find yours."
        ),
        N_(
            "Try again in a minute (reload this page). If it keeps happening, tell the app's "
            "administrator the time it happened."
        ),
    ),
    Failure.INTERNAL: FailureText(
        500,
        N_("Something went wrong in the app"),
        N_("The app hit an unexpected error. The details are in the app's log."),
        N_("Try again. If it keeps happening, tell the app's administrator the time it happened."),
    ),
}


class SmartError(Exception):
    """A failure shown to the user as a page; ``detail`` must be safe to show (no secrets, no PHI)."""

    def __init__(self, failure: Failure, detail: str | None = None) -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.detail = detail

    @property
    def text(self) -> FailureText:
        return FAILURES[self.failure]


#: What a generic HTTP error page in the app tells the user to do (``http-<status>`` codes; the
#: title and description are Werkzeug's English: the app's views raise no HTTPException of their
#: own, and routing errors such as 404 and 405 reach the service's handler, not this blueprint's).
HTTP_TO_DO = N_("Open the app again from the patient's chart in the EHR.")
