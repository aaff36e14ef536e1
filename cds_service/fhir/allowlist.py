"""Which FHIR servers may be contacted: the service's allowlist, plus the bases a calling EHR's
trust entry names (for that EHR only).

Every URL is parsed by :mod:`.urls`, the one place that says what a base is and what lies under
it. One http rule everywhere: an http base is allowed only for a loopback host in development mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cds_service.fhir.urls import FhirBase, UrlRefused, parsed_base

_SEPARATORS = re.compile(r"[\s,]+")


def parse_allowlist(raw: str, allow_loopback_http: bool) -> tuple[str, ...]:
    """The bases of an allowlist string, comma and/or whitespace separated, in normal form
    (lower-case scheme and host, no trailing slash); ValueError naming the first entry
    :func:`base_problem` refuses."""
    bases = []
    for part in _SEPARATORS.split(raw):
        if not part:
            continue
        if (why := base_problem(part, allow_loopback_http)) is not None:
            raise ValueError(f"{part.rstrip('/')!r} {why}")
        bases.append(FhirBase.parse(part).url)
    return tuple(bases)


def base_problem(url: str, allow_loopback_http: bool) -> str | None:
    """Why the service may not send a token to the base ``url``, or None."""
    parsed = parsed_base(url)
    if isinstance(parsed, FhirBase):
        return parsed.http_problem(allow_loopback_http)
    if parsed.kind == "absolute":
        return f"is {parsed.reason}"
    if parsed.kind == "credentials":
        return "must not carry credentials"
    return f"must not have {parsed.reason}"


def outside(url: str, base: str) -> str | None:
    """Why ``url`` is not under ``base``, or None (:meth:`FhirBase.target`: scheme and host
    compare case-insensitively, port and path exactly, and the URL must be well formed)."""
    root = parsed_base(base)
    if not isinstance(root, FhirBase):
        return f"the base has {root.reason}"
    try:
        root.target(url)
    except UrlRefused as exc:
        return exc.reason
    return None


@dataclass(frozen=True, slots=True)
class FhirAllowlist:
    """Base-URL prefixes the service may query; http only on loopback in development mode."""

    bases: tuple[str, ...]
    allow_loopback_http: bool = False

    def base_for(self, url: str, extra_bases: tuple[str, ...] = ()) -> FhirBase:
        """``url`` as a base the service may send a token to: at or below a base of the list or
        of ``extra_bases`` (the calling EHR's own). UrlRefused says why not. An entry that is not
        a valid base (or http off loopback or outside development mode) allows nothing."""
        target = FhirBase.parse(url)
        for entry in self.bases + extra_bases:
            allowed = parsed_base(entry)
            if (
                isinstance(allowed, FhirBase)
                and allowed.http_problem(self.allow_loopback_http) is None
                and allowed.covers(target)
            ):
                return target
        raise UrlRefused("not on this service's FHIR allowlist", kind="allowlist")

    def permits(self, url: str, extra_bases: tuple[str, ...] = ()) -> bool:
        """Is ``url`` a base under an allowed one (the list, or ``extra_bases`` for this caller)?"""
        try:
            self.base_for(url, extra_bases)
        except UrlRefused:
            return False
        return True
