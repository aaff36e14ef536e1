"""The store read behind patient-view suppression (``Store.acted_on_since``), on SQLite and
PostgreSQL: scoped to the inputs key, the issuer and tenant, and the period; one indexed query;
and the schema migration that added the key."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

import tests.postgres
from cds_service.feedback import FeedbackEntry, Outcome
from cds_service.store import Store, StoreError, inputs_key, open_engine, open_store, upgrade
from cds_service.store.schema import audit_record
from tests import fhir_builders as fb
from tests.test_store_audit import synthetic_record

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url
store = tests.postgres.store

SERVICE = "hfs-rfa-recurrence-patient-view"
T0 = datetime(2026, 5, 20, 8, 0, tzinfo=UTC)
EHR = "https://ehr.example.org"


def _card_with_feedback(
    store: Store,
    key: str,
    *,
    outcome_at: datetime = T0,
    received_at: datetime = T0,
    issuer: str | None = EHR,
    tenant: str | None = "hospital-1",
    card: str = "card-1",
) -> None:
    record = dataclasses.replace(synthetic_record(card, T0), inputs_key=key)
    store.write_audit([record])
    entry = FeedbackEntry(card, Outcome.OVERRIDDEN, outcome_at)
    store.save_feedback(SERVICE, [entry], received_at=received_at, issuer=issuer, tenant=tenant)


def test_feedback_on_a_card_with_the_key_counts_within_the_period(store: Store) -> None:
    _card_with_feedback(store, "k1")
    assert store.acted_on_since("k1", T0 - timedelta(days=30), issuer=EHR, tenant="hospital-1")
    assert not store.acted_on_since(
        "k1", T0 + timedelta(seconds=1), issuer=EHR, tenant="hospital-1"
    )
    assert not store.acted_on_since("k2", T0 - timedelta(days=30), issuer=EHR, tenant="hospital-1")


@pytest.mark.parametrize(
    ("issuer", "tenant"),
    [
        ("https://other-ehr.example.org", "hospital-1"),
        (EHR, "hospital-2"),
        (EHR, None),
        (None, None),
    ],
)
def test_feedback_from_another_ehr_or_tenant_does_not_count(
    store: Store, issuer: str | None, tenant: str | None
) -> None:
    """Patient ids are unique only within one EHR: feedback is scoped as the store keeps it."""
    _card_with_feedback(store, "k1")
    assert not store.acted_on_since("k1", T0 - timedelta(days=1), issuer=issuer, tenant=tenant)


def test_without_a_jwt_issuer_feedback_matches_on_null(store: Store) -> None:
    """Development mode (no EHR authentication): no issuer on either side still matches."""
    _card_with_feedback(store, "k1", issuer=None, tenant=None)
    assert store.acted_on_since("k1", T0 - timedelta(days=1), issuer=None, tenant=None)


def test_an_ehr_clock_running_ahead_cannot_stretch_the_silence(store: Store) -> None:
    """The action counts from the earlier of outcomeTimestamp and our receipt."""
    _card_with_feedback(store, "k1", outcome_at=T0 + timedelta(days=365), received_at=T0)
    assert not store.acted_on_since("k1", T0 + timedelta(days=1), issuer=EHR, tenant="hospital-1")


def test_the_read_is_one_probe_of_the_feedback_index(store: Store) -> None:
    """On the hook path: SQLite's plan searches feedback by the inputs key and reads nothing of
    the audit trail (which grows with every chart opening)."""
    if store.backend != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    _card_with_feedback(store, "k1")
    with store.engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT 1 FROM feedback WHERE feedback.inputs_key = 'k1' "
                "AND feedback.outcome_at >= '2026-01-01' AND feedback.received_at >= '2026-01-01' "
                "AND feedback.issuer IS NULL AND feedback.tenant IS NULL LIMIT 1"
            )
        ).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_feedback_inputs_key" in details and "audit_record" not in details


def test_a_database_error_is_a_store_error_naming_no_values(store: Store) -> None:
    """The read runs on a raw DBAPI cursor: its errors must still arrive as StoreError (the hook
    then shows the card), with the class name only."""
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE feedback"))
    with pytest.raises(StoreError, match="feedback could not be read") as raised:
        store.acted_on_since("k-secret", T0, issuer=EHR, tenant="hospital-1")
    assert "k-secret" not in str(raised.value) and EHR not in str(raised.value)


def test_many_cards_without_feedback_do_not_count(store: Store) -> None:
    """A chart opened hundreds of times leaves hundreds of cards with one key and no feedback."""
    records = [
        dataclasses.replace(synthetic_record(f"card-{i}", T0), inputs_key="k1") for i in range(300)
    ]
    store.write_audit(records)
    assert not store.acted_on_since("k1", T0 - timedelta(days=30), issuer=EHR, tenant="hospital-1")


def test_feedback_on_an_unknown_card_never_silences(store: Store) -> None:
    """Feedback that arrives before (or without) its card's audit record has no key: it is kept,
    but it cannot silence anything; the card is shown rather than hidden by a race."""
    entry = FeedbackEntry("card-x", Outcome.OVERRIDDEN, T0)
    store.save_feedback(SERVICE, [entry], received_at=T0, issuer=EHR, tenant="hospital-1")
    store.write_audit([dataclasses.replace(synthetic_record("card-x", T0), inputs_key="k1")])
    assert not store.acted_on_since("k1", T0 - timedelta(days=1), issuer=EHR, tenant="hospital-1")


def test_upgrading_from_version_1_keeps_the_audit_trail(database_url: str) -> None:
    """Schema 2 and 3 add the key to a live database: old rows stay, with no key."""
    engine = open_engine(database_url, create_directory=True)
    try:
        upgrade(engine, target=1)
        with engine.begin() as conn:
            row = synthetic_record("old-card", T0).to_row()
            del row["inputs_key"]
            conn.execute(audit_record.insert().values(**row))
        upgrade(engine)
    finally:
        engine.dispose()
    opened = open_store(database_url)
    try:
        with opened.engine.connect() as conn:
            (old,) = conn.execute(select(audit_record)).mappings().all()
        assert old["card_uuid"] == "old-card" and old["inputs_key"] is None
    finally:
        opened.close()


def test_upgrading_from_version_2_copies_the_key_onto_stored_feedback(database_url: str) -> None:
    """Feedback stored under schema 2 keeps silencing its inputs after the upgrade to 3."""
    engine = open_engine(database_url, create_directory=True)
    try:
        upgrade(engine, target=2)
        with engine.begin() as conn:
            row = dataclasses.replace(synthetic_record("card-1", T0), inputs_key="k1").to_row()
            conn.execute(audit_record.insert().values(**row))
            conn.execute(
                text(
                    "INSERT INTO feedback (natural_key, received_at, service_id, card_uuid, "
                    "card_known, outcome, outcome_at, accepted_suggestions, has_comment, issuer, "
                    "tenant) VALUES ('n1', :t, :s, 'card-1', true, 'overridden', :t, '[]', false, "
                    ":i, 'hospital-1')"
                ),
                {"t": T0.replace(tzinfo=None), "s": SERVICE, "i": EHR},
            )
        upgrade(engine)
    finally:
        engine.dispose()
    opened = open_store(database_url)
    try:
        since = T0 - timedelta(days=1)
        assert opened.acted_on_since("k1", since, issuer=EHR, tenant="hospital-1")
    finally:
        opened.close()


def test_the_key_depends_on_the_ehr_patient_and_input_versions() -> None:
    """Same record twice: same key. Another tenant, patient or grade version: another key."""
    from cds_service.assessment import Assessor
    from cds_service.model import load_model_card
    from fhir_mappings import load_value_sets

    assessor = Assessor(load_model_card(), load_value_sets())

    def key(patient: str = "p1", version: str = "1", tenant: str | None = "t1") -> str:
        meta = {"versionId": version}
        record = [
            fb.ablation_procedure(patient=patient),
            fb.hb_observation(patient=patient, meta=meta),
        ]
        a = assessor.assess(record, patient, as_of=T0)
        return inputs_key(a, issuer=EHR, tenant=tenant)

    assert key() == key()
    assert len({key(), key(patient="p2"), key(version="2"), key(tenant="t2")}) == 4
