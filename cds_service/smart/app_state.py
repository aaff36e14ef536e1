"""What the SMART app prepares once per Flask app (``app.extensions["hfs_cds_smart"]``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from cds_service.config import SmartSettings
from cds_service.fhir import FhirAllowlist, FhirClient
from cds_service.runtime import Runtime
from cds_service.smart.oauth import OAuthClient
from cds_service.smart.record import RecordReader
from cds_service.smart.sealing import Sealer
from cds_service.smart.sessions import Sessions
from cds_service.smart.shared_sessions import SharedSessionStore


@dataclass(frozen=True, slots=True)
class SmartRuntime:
    settings: SmartSettings
    cds: Runtime  # the service's runtime: the one Assessor, the clock, the public base URL
    store: Sessions  # in the store's database: shared by every worker and replica on it
    oauth: OAuthClient
    fhir_client: FhirClient  # allowlisted to the SMART FHIR bases only
    reader: RecordReader
    frame_ancestors: tuple[str, ...]

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.cds.clock

    @classmethod
    def build(cls, settings: SmartSettings, cds: Runtime) -> SmartRuntime:
        allow_loopback_http = cds.settings.dev_mode
        client = FhirClient(
            FhirAllowlist(settings.fhir_bases, allow_loopback_http=allow_loopback_http),
            budget_seconds=settings.fhir_budget_seconds,
            connect_timeout_seconds=settings.fhir_connect_timeout_seconds,
            max_pages=cds.settings.fhir_max_pages,
            max_response_bytes=cds.settings.fhir_max_response_bytes,
        )
        return cls(
            settings=settings,
            cds=cds,
            store=SharedSessionStore(
                cds.state,
                # SMART_SESSION_KEY, shared by the replicas; else made here, in memory only: with
                # gunicorn's preload_app the master builds the app and every worker it forks
                # inherits this key (see smart/sealing.py).
                Sealer(settings.sealing_key()),
                cds.clock,
                timedelta(seconds=settings.session_idle_seconds),
                lease_seconds=refresh_lease_seconds(settings),
                schedule=cds.purge,
            ),
            oauth=OAuthClient(
                settings.client_id,
                settings.client_secret,
                timeout_seconds=settings.http_timeout_seconds,
                discovery_ttl_seconds=settings.discovery_ttl_seconds,
                allow_loopback_http=allow_loopback_http,
            ),
            fhir_client=client,
            reader=RecordReader(cds.assessor, client, cds.clock),
            frame_ancestors=settings.frame_ancestors or default_frame_ancestors(settings),
        )

    def close(self) -> None:
        self.fhir_client.close()
        self.oauth.close()


def refresh_lease_seconds(settings: SmartSettings) -> float:
    """How long a token refresh may hold its launch: longer than a token request can take
    (connect and read timeouts, plus a margin), so a refresh token is never sent twice."""
    return 2 * settings.http_timeout_seconds + 5.0


def default_frame_ancestors(settings: SmartSettings) -> tuple[str, ...]:
    """``'self'`` plus the origin of every FHIR base the app accepts launches from."""
    origins = []
    for base in settings.fhir_bases:
        parts = urlsplit(base)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in origins:
            origins.append(origin)
    return ("'self'", *origins)
