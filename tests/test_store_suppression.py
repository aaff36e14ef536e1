"""The store read behind patient-view suppression (``Store.feedback_actions``, indexed in memory
by :class:`~cds_service.store.recent_actions.RecentActions`), on SQLite and PostgreSQL: scoped to
the inputs key, the issuer and tenant, and the period; and the schema migration that added the key.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

import tests.postgres
from cds_service.store import (
    RecentActions,
    Store,
    StoreError,
    inputs_key,
    open_engine,
    open_store,
    upgrade,
)
from cds_service.store.feedback import FeedbackEntry, Outcome
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
PERIOD_DAYS = 30.0


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


def acted_on_since(
    store: Store, key: str, since: datetime, *, issuer: str | None, tenant: str | None
) -> bool:
    """What the hook asks: a fresh index over the store, "now" one period after ``since``."""
    recent = RecentActions(store, period_days=PERIOD_DAYS)
    now = since + timedelta(days=PERIOD_DAYS)
    return recent.acted_on_since(key, since, issuer=issuer, tenant=tenant, now=now)


def test_feedback_on_a_card_with_the_key_counts_within_the_period(store: Store) -> None:
    _card_with_feedback(store, "k1")
    assert acted_on_since(store, "k1", T0 - timedelta(days=30), issuer=EHR, tenant="hospital-1")
    assert acted_on_since(store, "k1", T0, issuer=EHR, tenant="hospital-1")  # boundary included
    assert not acted_on_since(
        store, "k1", T0 + timedelta(seconds=1), issuer=EHR, tenant="hospital-1"
    )
    assert not acted_on_since(store, "k2", T0 - timedelta(days=30), issuer=EHR, tenant="hospital-1")


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
    assert not acted_on_since(store, "k1", T0 - timedelta(days=1), issuer=issuer, tenant=tenant)


def test_without_a_jwt_issuer_feedback_matches_on_null(store: Store) -> None:
    """Development mode (no EHR authentication): no issuer on either side still matches."""
    _card_with_feedback(store, "k1", issuer=None, tenant=None)
    assert acted_on_since(store, "k1", T0 - timedelta(days=1), issuer=None, tenant=None)


def test_a_long_issuer_matches_as_the_store_keeps_it(store: Store) -> None:
    """The store keeps 255 characters of the issuer and tenant; the lookup clips the same way."""
    issuer, tenant = EHR + "/" + "x" * 300, "t" * 300
    _card_with_feedback(store, "k1", issuer=issuer, tenant=tenant)
    assert acted_on_since(store, "k1", T0 - timedelta(days=1), issuer=issuer, tenant=tenant)


def test_an_ehr_clock_running_ahead_cannot_stretch_the_silence(store: Store) -> None:
    """The action counts from the earlier of outcomeTimestamp and our receipt."""
    _card_with_feedback(store, "k1", outcome_at=T0 + timedelta(days=365), received_at=T0)
    assert not acted_on_since(store, "k1", T0 + timedelta(days=1), issuer=EHR, tenant="hospital-1")
    (row,) = store.feedback_actions(0)
    assert row[1:] == ("k1", EHR, "hospital-1", T0)


def test_an_outcome_before_the_period_does_not_count(store: Store) -> None:
    """Received within the period, acted on before it (a late feedback POST): not silenced."""
    _card_with_feedback(store, "k1", outcome_at=T0 - timedelta(days=40), received_at=T0)
    assert not acted_on_since(store, "k1", T0 - timedelta(days=1), issuer=EHR, tenant="hospital-1")
    assert acted_on_since(store, "k1", T0 - timedelta(days=40), issuer=EHR, tenant="hospital-1")


def test_the_read_returns_new_rows_only_in_id_order(store: Store) -> None:
    """``after_id`` makes the refresh incremental; ``received_since`` bounds the first load."""
    _card_with_feedback(store, "k1", card="c1", received_at=T0 - timedelta(days=60))
    _card_with_feedback(store, "k2", card="c2", received_at=T0)
    _card_with_feedback(store, "k3", card="c3", received_at=T0 + timedelta(hours=1))
    rows = store.feedback_actions(0)
    assert [r[1] for r in rows] == ["k1", "k2", "k3"]
    ids = [r[0] for r in rows]
    assert ids == sorted(ids)
    assert [r[1] for r in store.feedback_actions(ids[1])] == ["k3"]
    assert [r[1] for r in store.feedback_actions(0, T0)] == ["k2", "k3"]
    assert store.feedback_actions(ids[2]) == []
    assert all(r[4].tzinfo is not None and r[4].utcoffset() == timedelta(0) for r in rows)


def test_a_database_error_is_a_store_error_naming_no_values(store: Store) -> None:
    """The refresh's read fails as StoreError with the class name only; the index then answers
    from what it had (here nothing), so the card is shown."""
    _card_with_feedback(store, "k-secret")
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE feedback"))
    with pytest.raises(StoreError, match="feedback could not be read") as raised:
        store.feedback_actions(0, T0)
    message = str(raised.value)
    assert "k-secret" not in message and EHR not in message and "SELECT" not in message
    assert not acted_on_since(store, "k-secret", T0, issuer=EHR, tenant="hospital-1")


def test_many_cards_without_feedback_do_not_count(store: Store) -> None:
    """A chart opened hundreds of times leaves hundreds of cards with one key and no feedback."""
    records = [
        dataclasses.replace(synthetic_record(f"card-{i}", T0), inputs_key="k1") for i in range(300)
    ]
    store.write_audit(records)
    assert store.feedback_actions(0) == []
    assert not acted_on_since(store, "k1", T0 - timedelta(days=30), issuer=EHR, tenant="hospital-1")


def test_feedback_on_an_unknown_card_never_silences(store: Store) -> None:
    """Feedback that arrives before (or without) its card's audit record has no key: it is kept,
    but it cannot silence anything; the card is shown rather than hidden by a race."""
    entry = FeedbackEntry("card-x", Outcome.OVERRIDDEN, T0)
    store.save_feedback(SERVICE, [entry], received_at=T0, issuer=EHR, tenant="hospital-1")
    store.write_audit([dataclasses.replace(synthetic_record("card-x", T0), inputs_key="k1")])
    assert store.feedback_actions(0) == []
    assert not acted_on_since(store, "k1", T0 - timedelta(days=1), issuer=EHR, tenant="hospital-1")


def test_upgrading_from_version_1_keeps_the_audit_trail(database_url: str) -> None:
    """Schema 2 and 3 add the key to a live database: old rows stay, with no key."""
    engine = open_engine(database_url, create_directory=True)
    try:
        upgrade(engine, target=1)
        with engine.begin() as conn:
            row = synthetic_record("old-card", T0).to_row()
            del row["inputs_key"], row["software_version"]  # columns of schemas 2 and 4
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
            del row["software_version"]  # a column of schema 4
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
        assert acted_on_since(opened, "k1", since, issuer=EHR, tenant="hospital-1")
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
