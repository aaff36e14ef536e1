"""Errors a hook call can end in, each with its HTTP status and an OperationOutcome body.

CDS Hooks 3.0 asks for an OperationOutcome on every non-2xx answer; the EHR's integrators read the
``diagnostics`` text, so it names the field or prefetch key at fault. It never echoes request values.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify


class HookError(Exception):
    """A request the service answers with a 4xx status and an OperationOutcome."""

    status = 400
    issue_code = "invalid"  # http://hl7.org/fhir/issue-type

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


class InvalidHookRequest(HookError):
    """The request body is not a valid CDS Hooks request for this service (400)."""


class UnknownService(HookError):
    status = 404
    issue_code = "not-found"


class UnsupportedMediaType(HookError):
    status = 415
    issue_code = "not-supported"


class FeedbackNotStored(HookError):
    """The feedback store is unavailable; nothing was kept, and the EHR may resend (503)."""

    status = 503
    issue_code = "transient"


class AuditUnavailable(HookError):
    """Neither the database nor the local spool takes audit records: a card shown now could not
    be recorded, so none is shown (503; the EHR may call again)."""

    status = 503
    issue_code = "transient"


def operation_outcome(
    diagnostics: str, code: str = "processing", severity: str = "error"
) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_response(status: int, diagnostics: str, code: str = "processing") -> Response:
    response = jsonify(operation_outcome(diagnostics, code))
    response.status_code = status
    return response
