"""Settings from the environment (12-factor), read once: one dataclass tree and one parser.

:func:`load_settings` reads every variable at once: the service's (``CDS_*``, :class:`Settings`),
the store's (``CDS_*``, ``settings.store``) and the SMART app's (``SMART_*``, ``settings.smart``).
Variable = the section's prefix + the field name in upper case; ``create_app(config)`` overrides by
the same names (the service's also without ``CDS_``). Every default is the safe one: with nothing
set the service answers hooks from prefetch only, contacts no FHIR server and the SMART app is not
set up. An empty value is the default.

One rule per kind of value, for every variable (``_ACCEPTS``): a flag is true or false, a count a
whole number of at least 1, a duration a number above 0, a list comma and/or whitespace separated,
and a URL https (http only on loopback in development mode: :func:`cds_service.fhir.parse_allowlist`).
Anything else is a :class:`ConfigError` whose one line names the variable and what it accepts.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from cds_service.i18n import normalize

#: The embedded database's file name in ``instance_path`` when ``CDS_DATABASE_URL`` is not set.
DEFAULT_DATABASE_FILE = "hfs-cds.sqlite3"

# Kinds of value besides bool, int (a count), float (a duration) and str; the parser reads the
# kind from each field's annotation.
Words = tuple[str, ...]  # a list, comma and/or whitespace separated
FhirBases = tuple[str, ...]  # URLs under the one URL rule, without trailing slashes
Url = str  # one URL under the same rule
LogLevel = str  # a logging level name
Language = str  # a supported language tag (cds_service.i18n), stored as its locale name

_URL_RULE = "https; http only on loopback in development mode"
_ACCEPTS = {
    "bool": "true or false (also 1/0, yes/no, on/off)",
    "int": "a whole number, at least 1",
    "float": "a number above 0",
    "str": "text",
    "Words": "a list, comma and/or whitespace separated",
    "FhirBases": f"absolute URLs, comma and/or whitespace separated ({_URL_RULE})",
    "Url": f"one absolute URL ({_URL_RULE})",
    "LogLevel": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "Language": "en or zh-Hans (Simplified Chinese; zh and zh-CN also name it)",
}
_FLAGS = {"1": True, "true": True, "yes": True, "on": True}
_FLAGS |= {"0": False, "false": False, "no": False, "off": False}
_SEPARATORS = re.compile(r"[\s,]+")

#: Read-only access to what the assessment reads, in SMART v2 syntax; ``online_access`` asks for a
#: refresh token that lives as long as the user's EHR session. ``launch`` is replaced by
#: ``launch/patient`` in a standalone launch.
DEFAULT_SCOPES = (
    "launch",
    "patient/Patient.rs",
    "patient/Procedure.rs",
    "patient/Observation.rs",
    "patient/Condition.rs",
    "online_access",
)


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


class Variable(NamedTuple):
    """One environment variable, as the configuration reference lists it."""

    name: str
    default: str
    accepts: str
    help: str


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Audit and feedback persistence (``settings.store``)."""

    PREFIX: ClassVar[str] = "CDS_"

    #: Audit and feedback database, a SQLAlchemy URL (``postgresql://…`` for several replicas,
    #: ``sqlite:///path``). Empty: a SQLite file in the instance path, created and migrated at start.
    database_url: str = ""
    #: The instance directory, relative to the working directory: where the embedded database lives.
    instance_path: str = "instance"
    #: How many days audit records and feedback are kept (``hfs-cds db purge`` deletes older rows):
    #: a year of follow-up plus a quarter for governance review.
    audit_retention_days: int = 400
    #: Seconds between two purges of the expired JWT replay entries and idle SMART sessions (kept in
    #: the database with the audit records, shared by every worker and replica).
    state_purge_seconds: float = 60.0
    #: JWT replay entries each worker process may keep in memory while the database is unreachable
    #: (a replay to the same process is still refused); beyond it new tokens are answered 503.
    replay_fallback_entries: int = 100_000
    #: Folder where each process keeps the audit records the database refused (an outage), written
    #: back in order when it answers; local to the replica. Empty: ``audit-spool`` in the instance
    #: path.
    audit_spool_path: str = ""
    #: The most bytes the audit spool may hold (all processes together); past it, and when the disk
    #: is full, hook calls are answered 503 rather than with a card the service could not record.
    audit_spool_max_bytes: int = 256 * 2**20

    def resolved_url(self) -> str:
        """The database URL to use: ``database_url``, else the SQLite file in the instance path."""
        if self.database_url:
            return self.database_url
        return (
            f"sqlite:///{Path(self.instance_path).expanduser().absolute() / DEFAULT_DATABASE_FILE}"
        )

    def spool_directory(self) -> Path:
        """The audit spool's folder: ``audit_spool_path``, else ``audit-spool`` in the instance path."""
        folder = self.audit_spool_path or str(Path(self.instance_path) / "audit-spool")
        return Path(folder).expanduser().absolute()


@dataclass(frozen=True, slots=True)
class SmartSettings:
    """The SMART app (``settings.smart``). With no client id it answers a "not set up" page and
    talks to nobody; cookies are ``Secure``; frames are allowed only from the registered EHRs."""

    PREFIX: ClassVar[str] = "SMART_"

    #: The client id the EHR registered for this app; empty = the app is not set up.
    client_id: str = ""
    #: Set for a confidential client (HTTP Basic at the token endpoint); empty = public client.
    client_secret: str = ""
    #: FHIR base URLs (``iss``) of the EHRs allowed to launch the app; nothing else is contacted.
    allowed_issuers: FhirBases = ()
    #: FHIR base for a standalone launch (``/smart/launch`` without parameters); empty = none.
    standalone_fhir_base: Url = ""
    #: The registered redirect URI; empty = CDS_PUBLIC_BASE_URL (else the request host) + callback.
    redirect_url: Url = ""
    #: Scopes asked for.
    scopes: Words = DEFAULT_SCOPES
    #: ``Secure`` on the session cookie. Only tests over plain http on loopback turn it off.
    cookie_secure: bool = True
    #: CSP ``frame-ancestors`` sources; empty = ``'self'`` plus the origins of the allowed issuers.
    frame_ancestors: Words = ()
    #: A browser session (and the access it holds) ends after this many seconds without a request.
    session_idle_seconds: int = 3600
    #: Key sealing the tokens in SMART sessions in the database: 32 random bytes, base64 (``openssl
    #: rand -base64 32``), the same on every replica so that any replica serves any session. Empty: a
    #: random key per instance (its workers share it; sessions end when it restarts).
    session_key: str = ""
    #: Time budget in seconds for the FHIR queries behind one page.
    fhir_budget_seconds: float = 5.0
    #: Connect timeout in seconds of each FHIR query behind a page.
    fhir_connect_timeout_seconds: float = 1.0
    #: Timeout in seconds of a discovery or token request to the EHR's authorization server.
    http_timeout_seconds: float = 5.0
    #: How many seconds a ``.well-known/smart-configuration`` document is reused.
    discovery_ttl_seconds: int = 3600

    @property
    def enabled(self) -> bool:
        return bool(self.client_id)

    @property
    def confidential(self) -> bool:
        return bool(self.client_secret)

    def sealing_key(self) -> bytes | None:
        """``session_key`` as 32 bytes, None when not set; ConfigError (never quoting the key,
        a secret) when it is not base64 of 32 bytes."""
        if not self.session_key:
            return None
        try:
            key = base64.b64decode(self.session_key, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError(
                "SMART_SESSION_KEY: not 32 random bytes in base64 (make one with "
                "'openssl rand -base64 32')"
            )
        return key

    @property
    def fhir_bases(self) -> tuple[str, ...]:
        """Every FHIR base the app may contact: the allowed issuers and the standalone base."""
        bases = self.allowed_issuers
        if self.standalone_fhir_base and self.standalone_fhir_base not in bases:
            bases += (self.standalone_fhir_base,)
        return bases


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings: the service's here, the store's and the SMART app's in their sections."""

    PREFIX: ClassVar[str] = "CDS_"

    #: Require a valid JWT from a trusted EHR on discovery, service and feedback calls.
    auth_required: bool = True
    #: JSON file of trusted EHR issuers (keys, audiences, tenants, FHIR servers); see docs/security.md.
    trusted_issuers_file: str = ""
    #: Path of the model card JSON; empty = the published model shipped with the package.
    model_card: str = ""
    #: Path of a value-set JSON replacing the packaged code sets; empty = packaged.
    valuesets_file: str = ""
    #: Base URLs of FHIR servers the service may query when prefetch is incomplete.
    fhir_allowlist: FhirBases = ()
    #: Query an allowlisted FHIR server even when the EHR sent no ``fhirAuthorization`` (open sandboxes).
    fhir_fetch_without_token: bool = False
    #: Development mode (``make run``): allows http FHIR servers on loopback. Never in production.
    dev_mode: bool = False
    #: Overall time budget in seconds for the FHIR fallback queries of one hook call.
    fhir_budget_seconds: float = 2.0
    #: Connect timeout in seconds of each FHIR fallback query.
    fhir_connect_timeout_seconds: float = 0.5
    #: Upper bound on search-result pages followed per prefetch key.
    fhir_max_pages: int = 5
    #: Largest FHIR response read, in bytes after decompression; a larger one is refused (412).
    fhir_max_response_bytes: int = 4 * 1024 * 1024
    #: FHIR fetches one EHR may have in flight per worker process; more wait within the budget.
    fhir_max_fetches_per_issuer: int = 4
    #: Origins allowed by CORS; ``*`` allows any (no credentials are ever allowed).
    cors_origins: Words = ("*",)
    #: The service's public base URL as EHRs call it (behind proxies): JWT audiences and card links.
    public_base_url: str = ""
    #: Largest accepted request body, in bytes.
    max_request_bytes: int = 5 * 1024 * 1024
    #: Lowest level of the JSON log lines on stderr (``hfs-cds serve`` and gunicorn).
    log_level: LogLevel = "INFO"
    #: Language of the cards and pages when the trust list names none for the calling EHR.
    language: Language = "en"
    store: StoreSettings = field(default_factory=StoreSettings)
    smart: SmartSettings = field(default_factory=SmartSettings)
    #: Extra Flask settings from ``create_app(config)`` that are not service settings (e.g. TESTING).
    flask: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def describe(cls) -> list[Variable]:
        """Every variable with its default, what it accepts and its field's ``#:`` comment."""
        rows = []
        for section in (cls, StoreSettings, SmartSettings):
            comments = _comments(section)
            for name, f in _variables(section):
                rows.append(
                    Variable(name, _shown(f.default), _ACCEPTS[str(f.type)], comments[f.name])
                )
        return rows


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Every setting from ``environ`` (default ``os.environ``) and ``create_app`` ``overrides``.

    An override key is a variable name (``SMART_CLIENT_ID``) or a service variable without
    ``CDS_`` (``AUTH_REQUIRED``); its value is text or already typed (``True``, ``2.0``, a list).
    Any other key is a Flask setting (``TESTING``). Raises ConfigError on the first bad value.
    """
    known = {
        name
        for section in (Settings, StoreSettings, SmartSettings)
        for name, _ in _variables(section)
    }
    raw: dict[str, Any] = dict(os.environ if environ is None else environ)
    flask: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if (name := key if key in known else Settings.PREFIX + key) in known:
            raw[name] = value
        else:
            flask[key] = value
    given = {k: v for k, v in raw.items() if k in known and v is not None and str(v).strip()}
    dev_mode = "CDS_DEV_MODE" in given and _parse("CDS_DEV_MODE", given["CDS_DEV_MODE"], "bool")

    def section(cls: type[Any]) -> dict[str, Any]:
        return {
            f.name: _parse(name, given[name], str(f.type), dev_mode)
            for name, f in _variables(cls)
            if name in given
        }

    smart = SmartSettings(**section(SmartSettings))
    if smart.enabled and not smart.fhir_bases:
        raise ConfigError(
            "SMART_CLIENT_ID is set but no EHR may launch the app: set SMART_ALLOWED_ISSUERS "
            "or SMART_STANDALONE_FHIR_BASE"
        )
    smart.sealing_key()  # a bad key stops start-up here, with the variable named
    store = StoreSettings(**section(StoreSettings))
    return Settings(**section(Settings), store=store, smart=smart, flask=flask)


def _variables(cls: type[Any]) -> list[tuple[str, Any]]:
    """(variable name, field) of each setting of a section; sections and ``flask`` are not ones."""
    return [(cls.PREFIX + f.name.upper(), f) for f in fields(cls) if str(f.type) in _ACCEPTS]


def _parse(name: str, value: Any, kind: str, dev_mode: bool = False) -> Any:
    """One variable's value (the environment's text or an override) as its kind, or ConfigError."""
    if kind in ("Words", "FhirBases", "Url"):
        text = value if isinstance(value, str) else " ".join(str(item) for item in value)
        items = tuple(item for item in _SEPARATORS.split(text) if item)  # the one list syntax
        if kind == "Words":
            return items
        from cds_service.fhir import parse_allowlist  # the FHIR client: imported only for a URL

        try:
            bases = parse_allowlist(" ".join(items), allow_loopback_http=dev_mode)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        if kind == "FhirBases" or len(bases) == 1:
            return bases if kind == "FhirBases" else bases[0]
    elif kind == "str":
        return str(value).strip()
    elif kind == "LogLevel" and (level := str(value).strip().upper()) in _ACCEPTS[kind]:
        return level
    elif kind == "Language" and (locale := normalize(str(value))) is not None:
        return locale
    else:
        text = str(value).strip().lower()
        try:
            if kind == "bool" and text in _FLAGS:
                return _FLAGS[text]
            if kind == "int" and (count := int(text)) >= 1:
                return count
            if kind == "float" and 0 < (seconds := float(text)) < float("inf"):
                return seconds
        except ValueError:
            pass
    raise ConfigError(f"{name}: cannot use {value!r} ({_ACCEPTS[kind]})")


def _shown(default: Any) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    return ", ".join(default) if isinstance(default, tuple) else str(default)


def _comments(cls: type[Any]) -> dict[str, str]:
    """Each field's ``#:`` comment in the class's source, as one line ("" for a field without)."""
    import inspect

    found: dict[str, str] = {f.name: "" for f in fields(cls)}
    comment: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            comment.append(text[2:].strip())
            continue
        if comment and (match := re.match(r"(\w+):", text)):
            found[match[1]] = " ".join(comment)
        comment = []
    return found
