"""Everything the service prepares once at start-up and shares across requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cds_service.assessment import Assessor
from cds_service.config import ConfigError, Settings
from cds_service.fhir import FhirAllowlist, FhirClient
from cds_service.gather.prefetch import FetchPolicy
from cds_service.model import load_model_card
from cds_service.security.ehr_auth import EhrAuthenticator, replay_ttl_needed
from cds_service.security.trusted_issuers import (
    TrustConfigError,
    TrustedIssuer,
    development_issuers,
    load_trusted_issuers,
)
from cds_service.store import (
    AuditWriter,
    Store,
    open_engine,
    open_store,
    upgrade,
)
from cds_service.store.recent_actions import RecentActions
from cds_service.store.replay_cache import ReplayCache
from cds_service.store.spool import AuditSpool
from cds_service.store.state import PurgeSchedule, StateDatabase, open_state
from fhir_mappings import load_value_sets


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    assessor: Assessor
    fhir_client: FhirClient
    fetch_policy: FetchPolicy
    #: State every worker and replica on the store's database shares (JWT replay cache, SMART
    #: sessions), and the schedule that purges what has expired from it.
    state: StateDatabase
    purge: PurgeSchedule
    authenticator: EhrAuthenticator | None  # None only when CDS_AUTH_REQUIRED is off
    replay: ReplayCache | None  # the authenticator's replay cache (its status is on /readyz)
    store: Store
    audit: AuditWriter  # audit records are written off the request path
    #: Recent feedback actions for patient-view suppression, refreshed from the store at most once
    #: a second (tests move its monotonic clock with ``create_app({"MONOTONIC": ...})``).
    recent_actions: RecentActions
    #: "Now" for assessments; tests pin it with ``create_app({"CLOCK": ...})``.
    clock: Callable[[], datetime]

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Load the model card and value sets; fails fast on bad files."""
        card = load_model_card(settings.model_card or None)
        value_sets = load_value_sets(settings.valuesets_file or None)
        client = FhirClient(
            FhirAllowlist(settings.fhir_allowlist, allow_loopback_http=settings.dev_mode),
            budget_seconds=settings.fhir_budget_seconds,
            connect_timeout_seconds=settings.fhir_connect_timeout_seconds,
            max_pages=settings.fhir_max_pages,
            max_response_bytes=settings.fhir_max_response_bytes,
            max_fetches_per_issuer=settings.fhir_max_fetches_per_issuer,
        )
        store = _store(settings)
        state = open_state(settings.store.resolved_url())
        purge = PurgeSchedule(settings.store.state_purge_seconds)
        replay = (
            ReplayCache(
                state,
                max_ttl_seconds=replay_ttl_needed(),
                schedule=purge,
                fallback_entries=settings.store.replay_fallback_entries,
            )
            if settings.auth_required
            else None
        )
        return cls(
            settings=settings,
            assessor=Assessor(card, value_sets),
            fhir_client=client,
            fetch_policy=FetchPolicy(fetch_without_token=settings.fhir_fetch_without_token),
            state=state,
            purge=purge,
            authenticator=_authenticator(settings, replay),
            replay=replay,
            store=store,
            audit=AuditWriter(
                store,
                spool=AuditSpool(
                    settings.store.spool_directory(),
                    max_bytes=settings.store.audit_spool_max_bytes,
                ),
            ),
            recent_actions=RecentActions(
                store,
                period_days=card.alerting.suppress_after_feedback_days,
                monotonic=settings.flask.get("MONOTONIC") or time.monotonic,
            ),
            clock=settings.flask.get("CLOCK") or _utc_now,
        )

    def close(self) -> None:
        self.fhir_client.close()
        if self.authenticator is not None:
            self.authenticator.close()
        self.purge.close()
        self.audit.close(timeout=10.0)
        self.store.close()
        self.state.close()


def _store(settings: Settings) -> Store:
    """The audit and feedback store. The embedded SQLite default is created and migrated here; a
    configured database must be migrated beforehand (``hfs-cds db upgrade``), as in any deploy."""
    url = settings.store.resolved_url()
    if not settings.store.database_url:
        engine = open_engine(url, create_directory=True)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
    return open_store(url)


def _authenticator(settings: Settings, replay: ReplayCache | None) -> EhrAuthenticator | None:
    """Trusted issuers from the file, plus the development issuers in development mode only.

    The replay cache is in the store's database, so a token replayed to a sibling worker or to
    another replica on the same database is refused too.
    """
    if not settings.auth_required or replay is None:
        return None
    issuers: tuple[TrustedIssuer, ...] = ()
    try:
        if settings.trusted_issuers_file:
            issuers = load_trusted_issuers(settings.trusted_issuers_file)
        if settings.dev_mode:
            known = {i.iss for i in issuers}
            issuers += tuple(i for i in development_issuers() if i.iss not in known)
    except TrustConfigError as exc:
        raise ConfigError(f"CDS_TRUSTED_ISSUERS_FILE: {exc}") from exc
    if not issuers:
        raise ConfigError(
            "EHR authentication is required (CDS_AUTH_REQUIRED) but no issuer is trusted: set "
            "CDS_TRUSTED_ISSUERS_FILE, or CDS_DEV_MODE=1 for local development"
        )
    return EhrAuthenticator(issuers, replay_cache=replay)


def _utc_now() -> datetime:
    return datetime.now(UTC)
