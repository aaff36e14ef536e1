"""FHIR base URLs and the URLs under them, parsed and checked in this one place.

A **base** (an allowlist entry, a trust list's ``fhir_servers``, a hook's ``fhirServer``, a tool's
``--fhir``) is an absolute http(s) URL with a host and nothing that could move a request elsewhere
once a server or a proxy reads it: no userinfo, no query, no fragment (not even an empty ``?`` or
``#``), and a path without dot segments (``..``, ``.``, ``..;x``), without percent-encoded dots,
slashes, backslashes, percent signs or control characters, and without raw backslashes, spaces,
control or non-ASCII characters. Its normal form has a lower-case scheme and host and no trailing
slash; the port stays as written (``:443`` is not the same server as no port).

A **target** (a search built on a base, a Bundle's ``next`` link) obeys the same rules but may
carry a query, and lies *under* its base: same scheme, host and port, and a path equal to the
base's or below it at a segment boundary (``/fhir`` covers ``/fhir/x``, not ``/fhirx``). What is
checked is what is sent: a URL that passes is requested as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from cds_service.security.net import is_loopback

# A percent sign not starting an escape, or an escape of '.', '/', '\', '%' or a control character.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%(?:2[EeFf5]|5[Cc]|[01][0-9A-Fa-f]|7[Ff])")
_HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")


class UrlRefused(ValueError):
    """Why a URL may not be used; ``str()`` is a short noun phrase ("a query in the base")."""

    def __init__(self, reason: str, *, kind: str = "form") -> None:
        super().__init__(reason)
        self.reason = reason
        #: "absolute" (no http(s) scheme, host or valid port), "credentials", "form" (anything
        #: else wrong with the URL itself), "server" or "path" (a target not under its base),
        #: "allowlist" (a base the caller may not use)
        self.kind = kind


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x21-\x7e]")  # spaces, controls, DEL, non-ASCII


@dataclass(frozen=True, slots=True)
class _Parts:
    scheme: str
    netloc: str  # lower-case host, brackets for IPv6, ":port" as written
    path: str


def _split(url: str, *, query_allowed: bool) -> _Parts:
    if not isinstance(url, str) or not url:
        raise UrlRefused("not an absolute http(s) URL", kind="absolute")
    if _NOT_PRINTABLE_ASCII.search(url):
        raise UrlRefused("spaces, control or non-ASCII characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise UrlRefused("not an absolute http(s) URL", kind="absolute")
    if "@" in parts.netloc:
        raise UrlRefused("credentials in the URL", kind="credentials")
    host, port = parts.netloc.lower(), ""
    if _has_port(host):
        host, _, port = host.rpartition(":")
    if not _HOST.fullmatch(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise UrlRefused("not a valid host or port", kind="absolute")
    if "#" in url:
        raise UrlRefused("a fragment")
    if "?" in url and not query_allowed:
        raise UrlRefused("a query")
    _check_path(parts.path)
    return _Parts(scheme, f"{host}:{port}" if port else host, parts.path)


def _has_port(netloc: str) -> bool:
    return ":" in netloc.rpartition("]")[2]


def _check_path(path: str) -> None:
    if "\\" in path:
        raise UrlRefused("a backslash in the path")
    if _BAD_ESCAPE.search(path):
        raise UrlRefused(
            "an encoded dot, slash, backslash, percent or control character in the path"
        )
    for segment in path.split("/"):
        name = segment.split(";", 1)[0]
        if name and name.strip(".") == "":
            raise UrlRefused("a dot segment in the path")


@dataclass(frozen=True, slots=True)
class FhirBase:
    """A FHIR base URL in normal form (see the module docstring)."""

    scheme: str
    netloc: str
    path: str  # "" for the server's root, else "/a/b" without a trailing slash

    @classmethod
    def parse(cls, url: str) -> FhirBase:
        """The base ``url`` names; UrlRefused says why it cannot be one."""
        parts = _split(url, query_allowed=False)
        return cls(parts.scheme, parts.netloc, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def url(self) -> str:
        return self.origin + self.path

    def __str__(self) -> str:
        return self.url

    @property
    def host(self) -> str:
        host = self.netloc.rpartition(":")[0] if _has_port(self.netloc) else self.netloc
        return host.strip("[]")

    def http_problem(self, allow_loopback_http: bool) -> str | None:
        """Why a token may not go to this base over its scheme, or None."""
        if self.scheme == "http" and not (allow_loopback_http and is_loopback(self.host)):
            return "must be https (http only on loopback in development mode)"
        return None

    def covers(self, other: FhirBase) -> bool:
        """Is ``other`` this base or a base below it?"""
        return self._covers(other.scheme, other.netloc, other.path) is None

    def target(self, url: str) -> str:
        """``url`` itself when it lies under this base (a query allowed), else UrlRefused."""
        parts = _split(url, query_allowed=True)
        why = self._covers(parts.scheme, parts.netloc, parts.path)
        if why is not None:
            raise why
        return url

    def join(self, relative: str) -> str:
        """The URL of a query relative to this base (``Procedure?patient=…``), checked as a
        target: a relative part cannot climb out of the base."""
        return self.target(f"{self.url}/{relative.lstrip('/')}")

    def _covers(self, scheme: str, netloc: str, path: str) -> UrlRefused | None:
        if (scheme, netloc) != (self.scheme, self.netloc):
            return UrlRefused(f"another server ({scheme}://{netloc})", kind="server")
        if path != self.path and not path.startswith(self.path + "/"):
            return UrlRefused(f"outside the base path {self.path or '/'}", kind="path")
        return None


@lru_cache(maxsize=512)
def parsed_base(url: str) -> FhirBase | UrlRefused:
    """:meth:`FhirBase.parse` remembered (the same few bases come with every call): the base, or
    why ``url`` cannot be one."""
    try:
        return FhirBase.parse(url)
    except UrlRefused as exc:
        return exc.with_traceback(None)
