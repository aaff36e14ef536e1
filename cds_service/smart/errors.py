"""Every way a launch or a page can fail, each with a page that says what happened and what to do.

A :class:`SmartError` carries a stable ``code`` (shown small on the page and in ``data-error`` for
tests and support calls) and an optional ``detail`` that is safe to show: an OAuth error code, the
launching server's URL, an HTTP status. Never a token, a code, a stack trace or patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

_RELAUNCH = "Close this window and open the app again from the patient's chart in the EHR."


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
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class FailureText:
    status: int
    title: str
    what_happened: str
    what_to_do: str


FAILURES: dict[Failure, FailureText] = {
    Failure.NOT_CONFIGURED: FailureText(
        503,
        "The app is not set up on this server",
        "This server has no SMART client registration, so it cannot sign in to an EHR.",
        "Ask the administrator to register the app with the EHR and set SMART_CLIENT_ID and "
        "SMART_ALLOWED_ISSUERS (see the README).",
    ),
    Failure.LAUNCH_PARAMETERS: FailureText(
        400,
        "The app was opened without a launch from the EHR",
        "The address has no EHR launch parameters (iss and launch), and no standalone FHIR "
        "server is configured.",
        "Open the app from the patient's chart or from the recurrence-risk card in the EHR.",
    ),
    Failure.ISS_NOT_ALLOWED: FailureText(
        403,
        "This EHR is not registered with the app",
        "The app was launched by a FHIR server it does not know. Nothing was sent to it.",
        "If this EHR should use the app, ask the administrator to add its FHIR base URL to "
        "SMART_ALLOWED_ISSUERS.",
    ),
    Failure.DISCOVERY_FAILED: FailureText(
        502,
        "The EHR's sign-in settings could not be read",
        "The app could not read the EHR's SMART configuration (.well-known/smart-configuration).",
        "Try again in a minute. If it keeps happening, tell the EHR's integration team.",
    ),
    Failure.DISCOVERY_INVALID: FailureText(
        502,
        "The EHR's sign-in settings cannot be used",
        "The EHR's SMART configuration is missing something the app needs.",
        "Tell the EHR's integration team; the detail below says what is missing.",
    ),
    Failure.NO_SESSION: FailureText(
        400,
        "Your browser did not keep the app's session",
        "The sign-in came back, but without the app's session cookie. Browsers that block "
        "third-party cookies in an embedded frame do this.",
        "Open the app again from the chart. If it fails again, open it in a new window, or allow "
        "cookies for this app.",
    ),
    Failure.STATE_MISSING: FailureText(
        400,
        "The sign-in answer is incomplete",
        "The answer from the EHR's sign-in has no 'state' value, so the app cannot tell that it "
        "belongs to the sign-in this browser started. It was refused.",
        _RELAUNCH,
    ),
    Failure.STATE_INVALID: FailureText(
        400,
        "The sign-in answer does not belong to this browser",
        "The 'state' value in the sign-in answer was not issued to this browser session. It was "
        "refused, because it may have been altered or started elsewhere.",
        _RELAUNCH,
    ),
    Failure.STATE_USED: FailureText(
        400,
        "This sign-in answer was already used",
        "Each sign-in answer works once; this one was used before (for example after a reload or "
        "the back button).",
        _RELAUNCH,
    ),
    Failure.STATE_EXPIRED: FailureText(
        400,
        "The sign-in took too long",
        "The sign-in was started more than ten minutes ago and has expired.",
        _RELAUNCH,
    ),
    Failure.AUTHORIZATION_DENIED: FailureText(
        403,
        "The EHR did not give the app access",
        "Access was declined at the EHR's sign-in, so the app has no access to the patient's record.",
        "If this was not intended, open the app again from the chart and approve the access it "
        "asks for.",
    ),
    Failure.AUTHORIZATION_ERROR: FailureText(
        400,
        "The EHR's sign-in failed",
        "The EHR's sign-in answered with an error instead of access.",
        "Open the app again from the chart. If it keeps happening, tell the EHR's integration "
        "team the error code below.",
    ),
    Failure.CODE_MISSING: FailureText(
        400,
        "The sign-in answer is incomplete",
        "The answer from the EHR's sign-in has neither an authorization code nor an error.",
        _RELAUNCH,
    ),
    Failure.TOKEN_FAILED: FailureText(
        502,
        "The EHR did not grant access",
        "Exchanging the sign-in for an access token failed.",
        "Open the app again from the chart. If it keeps happening, tell the EHR's integration "
        "team the detail below.",
    ),
    Failure.TOKEN_INVALID: FailureText(
        502,
        "The EHR's access token cannot be used",
        "The EHR's token answer is missing something the app needs.",
        "Tell the EHR's integration team; the detail below says what is missing.",
    ),
    Failure.NO_PATIENT: FailureText(
        502,
        "No patient was selected",
        "The EHR granted access but did not say which patient the app is for.",
        "Open the app from a patient's chart (or pick a patient when the EHR asks).",
    ),
    Failure.SCOPE_INSUFFICIENT: FailureText(
        403,
        "The app was given too little access",
        "The EHR granted fewer permissions than the assessment needs, so the risk cannot be "
        "calculated reliably.",
        "Ask the EHR's administrator to grant the app read access to the resources listed below.",
    ),
    Failure.LAUNCH_NOT_FOUND: FailureText(
        404,
        "This page has expired",
        "The app's session for this page has ended (it was idle, the browser lost its cookie, or "
        "the app was restarted).",
        _RELAUNCH,
    ),
    Failure.SESSION_EXPIRED: FailureText(
        401,
        "The app's access has expired",
        "The access the EHR granted has expired and could not be renewed.",
        _RELAUNCH,
    ),
    Failure.FHIR_UNAUTHORIZED: FailureText(
        403,
        "The EHR refused to share the record",
        "The EHR's FHIR server refused the app's access to this patient's data.",
        "Open the app again from the chart. If it keeps happening, ask the EHR's administrator "
        "whether the app may read Patient, Procedure, Observation and Condition data.",
    ),
    Failure.PATIENT_NOT_FOUND: FailureText(
        404,
        "The patient was not found",
        "The EHR's FHIR server does not know the patient the app was launched for.",
        _RELAUNCH,
    ),
    Failure.FHIR_UNAVAILABLE: FailureText(
        504,
        "The patient's data could not be read",
        "The EHR's FHIR server did not answer in time or answered with an error.",
        "Try again in a minute (reload this page). If it keeps happening, tell the EHR's "
        "integration team.",
    ),
    Failure.INTERNAL: FailureText(
        500,
        "Something went wrong in the app",
        "The app hit an unexpected error. The details are in the app's log.",
        "Try again. If it keeps happening, tell the app's administrator the time it happened.",
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
