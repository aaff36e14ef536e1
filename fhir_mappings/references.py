"""Literal FHIR references ("Type/id", versioned, or absolute) reduced to (type, id), and the
server an absolute reference points at (:func:`reference_base`, compared with :func:`same_base`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from .json_access import get_str

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def parse_reference(text: str) -> tuple[str, str] | None:
    """``(type, id)`` of "Type/id", "Type/id/_history/v" or "http(s)://base/Type/id[/_history/v]"."""
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        if not FHIR_ID.fullmatch(parts[-1]):
            return None
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    if len(parts) > 2 and not text.startswith(("http://", "https://")):
        return None  # a relative reference has exactly two segments
    rtype, rid = parts[-2], parts[-1]
    if _TYPE.fullmatch(rtype) and FHIR_ID.fullmatch(rid):
        return rtype, rid
    return None


def referenced(reference: object) -> tuple[str, str] | None:
    """``(type, id)`` named by a Reference element, if it is a literal reference."""
    if not isinstance(reference, dict):
        return None
    text = get_str(reference, "reference")
    if text is None or len(text) > 2048:
        return None
    return parse_reference(text)


def reference_base(text: str) -> str | None:
    """The service base of an absolute literal reference, as written (``https://ehr/fhir`` of
    ``https://ehr/fhir/Patient/p1/_history/2``); None for a relative reference or anything
    :func:`parse_reference` does not read. Compare bases with :func:`same_base`."""
    if not text.startswith(("http://", "https://")) or parse_reference(text) is None:
        return None
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[:-2])


@lru_cache(maxsize=256)  # a request's references name one or two servers, many times over
def normalise_base(url: str) -> str | None:
    """A FHIR service base URL in a form two spellings of one server share, else None.

    FHIR R4 (http.html, "Service Base URL"): ``http`` and ``https`` are equivalent for comparing
    URLs, the path is case-sensitive, the query is not part of it. The host is a DNS name
    (case-insensitive) and a default port (80, 443) is the same as none; a trailing ``/`` is not
    part of the base. The result has no scheme: ``//host[:port]/path``.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    default = 80 if scheme == "http" else 443
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"//{netloc}{parts.path.rstrip('/')}"


def same_base(a: str | None, b: str | None) -> bool:
    """Whether two service base URLs name the same server (see :func:`normalise_base`)."""
    if a is None or b is None:
        return False
    na, nb = normalise_base(a), normalise_base(b)
    return na is not None and na == nb
