"""Settings from the environment (12-factor), read once when the app is created.

Every setting has a safe default: with nothing set the service answers hooks from prefetch only and
contacts no FHIR server. ``create_app(config)`` overrides fields by their upper-case names for tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CDS_"
#: The shared-state file's name in ``instance_path`` when ``CDS_SHARED_STATE_PATH`` is not set.
DEFAULT_SHARED_STATE_FILE = "shared-state.sqlite3"


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    """All service settings. Environment variable = ``CDS_`` + the field name in upper case."""

    #: Require a valid JWT from a trusted EHR on discovery, service and feedback calls.
    auth_required: bool = True
    #: JSON file of trusted EHR issuers (keys, audiences, tenants, FHIR servers); see the README.
    trusted_issuers_file: str = ""
    #: Path of the model card JSON; empty = the published model shipped with the package.
    model_card: str = ""
    #: Path of a value-set JSON replacing the packaged code sets; empty = packaged.
    valuesets_file: str = ""
    #: Base URLs of FHIR servers the service may query when prefetch is incomplete.
    fhir_allowlist: tuple[str, ...] = ()
    #: Query an allowlisted FHIR server even when the EHR sent no ``fhirAuthorization`` (open sandboxes).
    fhir_fetch_without_token: bool = False
    #: Development mode (``make run``): allows http FHIR servers on loopback. Never in production.
    dev_mode: bool = False
    #: Overall time budget for FHIR fallback queries in one hook call, and per-connection timeout.
    fhir_budget_seconds: float = 2.0
    fhir_connect_timeout_seconds: float = 0.5
    #: Upper bound on search-result pages followed per prefetch key.
    fhir_max_pages: int = 5
    #: Origins allowed by CORS; ``*`` allows any (no credentials are ever allowed).
    cors_origins: tuple[str, ...] = ("*",)
    #: The service's public base URL as EHRs call it (behind proxies): JWT audiences and card links.
    public_base_url: str = ""
    #: Audit and feedback database (SQLAlchemy URL; PostgreSQL for several replicas). Empty: a
    #: SQLite file in ``instance_path``, created and migrated at start-up.
    database_url: str = ""
    instance_path: str = "instance"
    #: SQLite file holding what the worker processes of one instance share (the JWT replay cache,
    #: the SMART sessions). Disposable: recreated when missing or outdated. Empty: a file in
    #: ``instance_path`` (see :meth:`shared_state_file`).
    shared_state_path: str = ""
    #: How long audit records and feedback are kept (``hfs-cds db purge`` deletes older rows).
    audit_retention_days: int = 400
    #: Largest accepted request body.
    max_request_bytes: int = 5 * 1024 * 1024
    #: Extra Flask settings from ``create_app(config)`` that are not service settings (e.g. TESTING).
    flask: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and f.name != "flask":
                values[f.name] = _parse(f.name, raw, f.type)
        return cls(**values)

    def shared_state_file(self) -> Path:
        """The shared-state SQLite file: ``shared_state_path``, else one in ``instance_path``."""
        if self.shared_state_path:
            return Path(self.shared_state_path).expanduser().absolute()
        return Path(self.instance_path).expanduser().absolute() / DEFAULT_SHARED_STATE_FILE

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """Apply ``create_app(config)`` keys: service settings by upper-case field name, the rest to Flask."""
        names = {f.name.upper(): f.name for f in dataclasses.fields(self) if f.name != "flask"}
        mine = {names[k]: v for k, v in overrides.items() if k in names}
        flask = {**self.flask, **{k: v for k, v in overrides.items() if k not in names}}
        for key in ("fhir_allowlist", "cors_origins"):
            if key in mine and isinstance(mine[key], str):
                mine[key] = _split(mine[key])
            elif key in mine:
                mine[key] = tuple(mine[key])
        return dataclasses.replace(self, **mine, flask=flask)


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse(name: str, raw: str, type_name: Any) -> Any:
    kind = str(type_name)
    try:
        if kind == "bool":
            if raw.strip().lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.strip().lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return _split(raw)
    except ValueError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}: cannot use {raw!r} ({kind} expected)"
        ) from exc
    return raw.strip()
