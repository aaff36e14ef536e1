"""``hfs-cds report`` figures and formats, and the ``db`` commands (upgrade, status, purge)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

import tests.postgres
from cds_service import __version__
from cds_service.store import HEAD, Store, open_store
from cds_service.store.commands import _labels
from cds_service.store.feedback import OVERRIDE_REASON_SYSTEM, FeedbackEntry, Outcome, ReasonCoding
from cds_service.store.report import (
    Durations,
    Report,
    ReportLabels,
    build_report,
    render_html,
    render_json,
    render_text,
)
from cds_service.store.schema import audit_record, feedback
from tests.cli_runner import run_cli
from tests.test_store_audit import synthetic_record

# Fixtures from tests/postgres.py (redundant once conftest.py lists it in pytest_plugins).
postgres_server = tests.postgres.postgres_server
database_url = tests.postgres.database_url
store = tests.postgres.store

SERVICE = "hfs-rfa-recurrence-patient-view"
MON = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)  # a Monday
RunCli = Callable[..., tuple[int, str, str]]


def _overridden(
    card: str, at: datetime, reason: ReasonCoding | None = None, **kw: int
) -> FeedbackEntry:
    return FeedbackEntry(card, Outcome.OVERRIDDEN, at, reason=reason, **kw)  # type: ignore[arg-type]


def seed(store: Store) -> None:
    """Seven cards over four weeks (one empty), feedback on five, and one unknown card."""
    cards = {
        "h1": (MON, "high"),
        "i1": (MON + timedelta(days=1), "intermediate"),
        "l1": (MON + timedelta(days=2), "low"),
        "n1": (MON + timedelta(days=3), None),
        "i2": (MON + timedelta(days=7), "intermediate"),
        "l2": (MON + timedelta(days=8), "low"),
        "h2": (MON + timedelta(days=21), "high"),
    }
    store.write_audit(
        [
            synthetic_record(
                uuid,
                at,
                status="scored" if tier else "not-scored",
                tier=tier,
                model_version="1.1.0" if uuid == "h2" else "1.0.0",
            )
            for uuid, (at, tier) in cards.items()
        ]
    )

    def at(card: str, seconds: int) -> datetime:
        return cards[card][0] + timedelta(seconds=seconds)

    planned = ReasonCoding("already-planned", OVERRIDE_REASON_SYSTEM)
    judgement = ReasonCoding("clinical-judgement", OVERRIDE_REASON_SYSTEM)
    posts = [
        [FeedbackEntry("h1", Outcome.ACCEPTED, at("h1", 60), accepted_suggestions=("s",))],
        [_overridden("i1", at("i1", 120), planned, comment_length=40)],
        [_overridden("l1", at("l1", 300))],
        [_overridden("i2", at("i2", 3600), judgement)],
        [FeedbackEntry("i2", Outcome.ACCEPTED, at("i2", 7200), accepted_suggestions=("s",))],
        [_overridden("l2", at("l2", 30), ReasonCoding("ehr-own", "urn:ehr:reasons"))],
        [_overridden("nobody-knows", at("l2", 40))],
    ]
    for entries in posts:
        store.save_feedback(SERVICE, entries, received_at=entries[0].outcome_at)


LABELS = ReportLabels(
    tier_order=("high", "intermediate", "low"),
    tier_labels={"high": "High", "intermediate": "Intermediate", "low": "Low"},
    reason_displays={(OVERRIDE_REASON_SYSTEM, "already-planned"): "Follow-up already planned"},
)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def report(store: Store) -> Report:
    """The report over the seeded store, with the packaged model's labels."""
    seed(store)
    return build_report(store, labels=LABELS, now=NOW)


def test_cards_by_model_version_and_tier(report: Report) -> None:
    assert report.cards == 7
    assert [(t.model_version, t.tier, t.cards) for t in report.by_tier] == [
        ("1.0.0", "high", 1),
        ("1.0.0", "intermediate", 2),
        ("1.0.0", "low", 2),
        ("1.0.0", None, 1),
        ("1.1.0", "high", 1),
    ]


def test_acceptance_and_overrides_per_card_with_the_latest_outcome(report: Report) -> None:
    assert (report.cards_with_feedback, report.feedback_entries) == (5, 6)
    assert (report.accepted, report.overridden) == (2, 3)  # i2: overridden, then accepted
    assert report.acceptance_rate == pytest.approx(0.4)
    assert report.override_rate == pytest.approx(0.6)
    assert report.feedback_rate == pytest.approx(5 / 7)
    reasons = {(r.system, r.code): (r.display, r.cards) for r in report.override_reasons}
    assert reasons == {
        (OVERRIDE_REASON_SYSTEM, "already-planned"): ("Follow-up already planned", 1),
        ("urn:ehr:reasons", "ehr-own"): (None, 1),
    }
    assert (report.overrides_without_reason, report.overrides_with_comment) == (1, 1)
    assert report.unknown_card_feedback == 1


def test_time_from_card_to_first_feedback(report: Report) -> None:
    # First feedback per card: 60, 120, 300, 3600 (i2's first), 30 seconds.
    assert report.time_to_feedback == Durations(n=5, median_seconds=120.0, p90_seconds=3600.0)


def test_weeks_are_continuous_and_count_tiers_and_outcomes(report: Report) -> None:
    weeks = [(w.week.isoformat(), dict(w.cards), dict(w.outcomes)) for w in report.weeks]
    assert weeks == [
        (
            "2026-05-04",
            {"high": 1, "intermediate": 1, "low": 1, "not-scored": 1},
            {"accepted": 1, "overridden": 2, "none": 1},
        ),
        ("2026-05-11", {"intermediate": 1, "low": 1}, {"accepted": 1, "overridden": 1}),
        ("2026-05-18", {}, {}),
        ("2026-05-25", {"high": 1}, {"none": 1}),
    ]
    assert report.categories == ("high", "intermediate", "low", "not-scored")


def test_since_limits_cards_and_their_feedback(store: Store) -> None:
    seed(store)
    later = build_report(store, since=MON + timedelta(days=7), labels=LABELS, now=NOW)
    assert (later.cards, later.cards_with_feedback, later.accepted, later.overridden) == (
        3,
        2,
        1,
        1,
    )
    assert later.unknown_card_feedback == 1  # received on day 8
    until = build_report(store, until=MON + timedelta(days=7), labels=LABELS, now=NOW)
    assert (until.cards, until.cards_with_feedback, until.unknown_card_feedback) == (4, 3, 0)


def test_an_empty_store_gives_an_empty_report(store: Store) -> None:
    empty = build_report(store, now=NOW)
    assert (empty.cards, empty.time_to_feedback, empty.weeks) == (0, None, ())
    assert "Cards shown: 0" in render_text(empty)
    assert "No cards in the period" in render_html(empty)
    assert json.loads(render_json(empty))["feedback"]["acceptanceRate"] is None


def test_text_format(report: Report) -> None:
    text = render_text(report)
    assert "Cards shown: 7" in text
    assert re.search(r"Accepted: +2 +40\.0%", text)
    assert re.search(r"Overridden: +3 +60\.0%", text)
    assert re.search(r"Follow-up already planned \(already-planned\) +1", text)
    assert re.search(r"ehr-own \(urn:ehr:reasons\) +1", text)
    assert "median 2 min, 90th percentile 1 h 0 min (n = 5)" in text
    assert "Feedback for cards not in the audit trail (or shown to another EHR): 1" in text
    assert re.search(r"2026-05-18 +0 +0 +0 +0 +0 +0 +0", text)


def test_json_format(report: Report) -> None:
    data = json.loads(render_json(report))
    assert data["cards"]["total"] == 7
    assert data["feedback"]["acceptanceRate"] == 0.4
    assert data["feedback"]["timeToFeedbackSeconds"] == {"n": 5, "median": 120.0, "p90": 3600.0}
    assert data["weeks"][0]["week"] == "2026-05-04"
    assert data["generatedAt"] == "2026-06-01T00:00:00Z"


def test_html_has_an_inline_svg_chart_and_loads_nothing(report: Report) -> None:
    page = render_html(report)
    assert page.count("<svg") == 1 and "</svg>" in page
    bars = re.findall(
        r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+" fill="#\w+">', page
    )
    assert len(bars) == (4 + 2 + 1) + (3 + 2 + 1)  # tier and outcome segments, weeks with cards
    assert "<title>week of 2026-05-04: High 1</title>" in page
    assert "<title>week of 2026-05-04: Overridden 2</title>" in page
    for external in ("<script", "src=", "href=", "url(", "@import", "<link"):
        assert external not in page
    assert re.findall(r"https?://[^\"'<\s]+", page) == ["http://www.w3.org/2000/svg"]


def test_html_escapes_labels(store: Store) -> None:
    seed(store)
    labels = ReportLabels(tier_labels={"high": "<b>High</b> & co"})
    page = render_html(build_report(store, labels=labels, now=NOW))
    assert "<b>High</b>" not in page and "&lt;b&gt;High&lt;/b&gt; &amp; co" in page


def test_labels_come_from_the_packaged_model_card_and_the_card_builder() -> None:
    labels = _labels()
    assert labels.tier_order == ("high", "intermediate", "low")
    assert labels.reason_displays[(OVERRIDE_REASON_SYSTEM, "already-planned")]


# -- the commands --------------------------------------------------------------------------------


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """Run the store commands through ``hfs-cds`` in-process: ``code, out, err = run(...)``."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = run_cli(*argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def test_db_upgrade_creates_the_instance_database(
    run: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDS_INSTANCE_PATH", str(tmp_path / "instance"))
    code, out, _ = run("db", "upgrade")
    assert code == 0 and "applied migration 1" in out
    assert (tmp_path / "instance" / "hfs-cds.sqlite3").exists()
    code, out, _ = run("db", "upgrade")
    assert code == 0 and f"already at version {HEAD}" in out
    code, out, _ = run("db", "status")
    assert code == 0 and f"schema version {HEAD} (this release: {HEAD})" in out


def test_db_status_fails_without_a_database(run: RunCli, tmp_path: Path) -> None:
    code, out, _ = run("db", "status", "--database-url", f"sqlite:///{tmp_path / 'none.sqlite3'}")
    assert code == 1 and "no database yet" in out


def test_commands_on_either_backend(run: RunCli, database_url: str, tmp_path: Path) -> None:
    code, out, err = run("db", "upgrade", "--database-url", database_url)
    assert code == 0, err
    store = open_store(database_url)
    seed(store)
    code, out, err = run("report", "--database-url", database_url)
    assert code == 0, err
    assert "Cards shown: 7" in out and "Follow-up already planned" in out
    code, out, _ = run(
        "report", "--database-url", database_url, "--since", "2026-05-11", "--format", "json"
    )
    assert json.loads(out)["cards"]["total"] == 3
    page = tmp_path / "report.html"
    code, out, _ = run(
        "report", "--database-url", database_url, "--format", "html", "-o", str(page)
    )
    assert code == 0 and out == "" and "<svg" in page.read_text()
    code, out, _ = run("db", "purge", "--database-url", database_url, "--before", "2026-05-11")
    assert code == 0 and "deleted 4 audit record(s) and 3 feedback entries" in out
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_record)).scalar() == 3
        assert conn.execute(select(func.count()).select_from(feedback)).scalar() == 4
    store.close()


def test_purge_defaults_to_the_retention_period(
    run: RunCli, store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    store.write_audit(
        [
            synthetic_record("old", now - timedelta(days=31)),
            synthetic_record("new", now - timedelta(days=29)),
        ]
    )
    monkeypatch.setenv("CDS_AUDIT_RETENTION_DAYS", "30")
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    code, out, _ = run("db", "purge")
    assert code == 0 and "deleted 1 audit record(s) and 0 feedback entries" in out
    with store.engine.connect() as conn:
        assert list(conn.execute(select(audit_record.c.card_uuid)).scalars()) == ["new"]


def test_purge_works_in_batches(store: Store) -> None:
    store.write_audit([synthetic_record(f"c{i}", MON) for i in range(25)])
    result = store.purge(MON + timedelta(seconds=1), batch=10)
    assert (result.audit_records, result.feedback) == (25, 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("report",), "run 'hfs-cds db upgrade'"),
        (("report", "--since", "last week"), "--since 'last week' is not an ISO 8601 date"),
        (("db", "purge", "--before", "2999-01-01"), "--before is in the future"),
        (("db", "upgrade", "--database-url", "mysql://u@h/x"), "unsupported database 'mysql'"),
    ],
)
def test_command_errors_are_one_line_and_exit_2(
    run: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
    message: str,
) -> None:
    monkeypatch.setenv("CDS_INSTANCE_PATH", str(tmp_path))
    if argv[:2] == ("db", "purge"):
        run("db", "upgrade")
    code, out, err = run(*argv)
    assert code == 2 and out == ""
    assert err.startswith("hfs-cds: ") and message in err and err.count("\n") == 1


def test_an_unreachable_server_is_reported_without_its_password(run: RunCli) -> None:
    code, _, err = run(
        "db",
        "upgrade",
        "--database-url",
        "postgresql://hfs:s3cret@127.0.0.1:1/hfs?connect_timeout=2",
    )
    assert code == 2 and err.startswith(
        "hfs-cds: cannot use the database postgresql+psycopg://hfs:***@127.0.0.1:1/"
    )
    assert "s3cret" not in err and err.count("\n") == 1


def test_cards_by_model_and_the_software_version_that_wrote_them(store: Store) -> None:
    """A record from before schema 4 has no version: reported as "unknown", never dropped."""
    store.write_audit([synthetic_record("a", MON), synthetic_record("b", MON)])
    with store.engine.begin() as conn:
        conn.execute(
            audit_record.update()
            .where(audit_record.c.card_uuid == "b")
            .values(software_version=None)
        )
    report = build_report(store, labels=LABELS, now=NOW)
    counts = [(s.model_version, s.software_version, s.cards) for s in report.by_software]
    assert counts == sorted([("1.0.0", __version__, 1), ("1.0.0", "unknown", 1)])
    data = json.loads(render_json(report))["cards"]["byModelAndSoftware"]
    assert {(d["softwareVersion"], d["cards"]) for d in data} == {(__version__, 1), ("unknown", 1)}
    assert f"hfs-cds {__version__}" in render_html(report) and "hfs-cds unknown" in render_html(
        report
    )
