"""What a failed FHIR call says: safe to show (no token, no patient data), with the HTTP status."""

from __future__ import annotations


class FhirError(Exception):
    """A FHIR call failed.

    ``status`` is the server's HTTP status when it answered with one (401 and 403 matter to the SMART
    app: refresh the token, or say access was refused); ``query`` names the query that failed (a
    prefetch key or a search's resource type, never its parameters) and leads the message.
    """

    def __init__(self, message: str, status: int | None = None, query: str | None = None) -> None:
        super().__init__(f"{query}: {message}" if query else message)
        self.status = status
        self.query = query


class FhirUnreachable(FhirError):
    """No answer: the connection was refused, dropped or never made (``cause`` says which)."""

    def __init__(self, cause: str, query: str | None = None) -> None:
        super().__init__(f"the FHIR server could not be reached ({cause})", query=query)
        self.cause = cause


class FhirTimeout(FhirError):
    """The server did not answer within the call's time budget."""


class FhirTooManyPages(FhirError):
    """A search had more pages than the client's cap (a result is never silently cut short)."""


class FhirTooLarge(FhirError):
    """An answer was larger than the client's byte cap (counted after decompression); the
    connection was closed without reading the rest."""
