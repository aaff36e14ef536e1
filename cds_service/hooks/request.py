"""Validation of an incoming CDS Hooks request body into a typed :class:`HookRequest`.

Tolerant reader: unknown top-level fields and ``extension`` objects are ignored; only what the spec
requires, and what this service relies on, is checked.

``hookInstance`` is a UUID in CDS Hooks ("a universally unique identifier (UUID) for this
particular hook call"). It is logged and kept in the audit trail, so it must be a plain token (the
rule request ids follow, :func:`~cds_service.logging_setup.plain_token`: letters, digits, ``.``,
``_``, ``-``, at most 64 characters): every UUID is one, and a value with control characters,
markup or a line break is refused with a 400 rather than stored or "cleaned" into something the
EHR never sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cds_service.hooks.errors import InvalidHookRequest
from cds_service.hooks.services import CdsService
from cds_service.logging_setup import plain_token


@dataclass(frozen=True, slots=True)
class FhirAuthorization:
    """The EHR's bearer token for ``fhirServer``: transient, never logged (kept out of repr)."""

    access_token: str = field(repr=False)
    scope: str = ""
    patient: str | None = None


@dataclass(frozen=True, slots=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    fhir_server: str | None
    fhir_authorization: FhirAuthorization | None
    prefetch: dict[str, Any]

    @property
    def patient_id(self) -> str:
        value: str = self.context["patientId"]
        return value


def parse_hook_request(body: Any, service: CdsService) -> HookRequest:
    """Check ``body`` against the CDS Hooks request schema and the service's hook context."""
    if not isinstance(body, dict):
        raise InvalidHookRequest("the request body must be a JSON object")
    hook = _required_str(body, "hook")
    if hook != service.hook:
        raise InvalidHookRequest(
            f"hook '{_clip(hook)}' does not match service '{service.id}', which handles '{service.hook}'"
        )
    hook_instance = _required_str(body, "hookInstance")
    if plain_token(hook_instance) is None:
        raise InvalidHookRequest(
            "'hookInstance' must be a UUID (letters, digits, '-', '.', '_'; at most 64 characters)"
        )
    context = body.get("context")
    if not isinstance(context, dict):
        raise InvalidHookRequest("'context' is required and must be an object")
    for f in service.context:
        value = context.get(f.name)
        if value is None:
            if f.required:
                raise InvalidHookRequest(
                    f"context.{f.name} is required for the {service.hook} hook"
                )
            continue
        if not isinstance(value, f.kind) or (isinstance(value, str) and not value.strip()):
            kind = "a non-empty string" if f.kind is str else "an object"
            raise InvalidHookRequest(f"context.{f.name} must be {kind}")
    fhir_server = body.get("fhirServer")
    if fhir_server is not None:
        if not isinstance(fhir_server, str) or urlsplit(fhir_server).scheme not in (
            "http",
            "https",
        ):
            raise InvalidHookRequest("'fhirServer' must be an absolute http(s) URL")
        fhir_server = fhir_server.rstrip("/")
    auth = _parse_authorization(body.get("fhirAuthorization"))
    if auth is not None and fhir_server is None:
        raise InvalidHookRequest("'fhirAuthorization' was sent without 'fhirServer'")
    prefetch = body.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise InvalidHookRequest("'prefetch' must be an object")
    return HookRequest(hook, hook_instance, context, fhir_server, auth, prefetch)


def _parse_authorization(value: Any) -> FhirAuthorization | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidHookRequest("'fhirAuthorization' must be an object")
    token = value.get("access_token")
    if not isinstance(token, str) or not token:
        raise InvalidHookRequest("fhirAuthorization.access_token is required")
    token_type = value.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise InvalidHookRequest("fhirAuthorization.token_type must be 'Bearer'")
    scope = value.get("scope", "")
    patient = value.get("patient")
    return FhirAuthorization(
        access_token=token,
        scope=scope if isinstance(scope, str) else "",
        patient=patient if isinstance(patient, str) else None,
    )


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidHookRequest(f"'{name}' is required and must be a non-empty string")
    return value


def _clip(value: str, limit: int = 64) -> str:
    """Echo at most a short, printable prefix of a client value in an error message."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in value[:limit])
    return printable + ("..." if len(value) > limit else "")
