"""``hfs-cds fit`` and ``hfs-cds validate``: recalibrate the model card and check it.

``register(subparsers)`` adds both commands to the ``hfs-cds`` parser::

    hfs-cds fit --mode baseline|slope|full (--fhir BASE [--token T] | --ndjson DIR | --csv FILE)
                --out CARD.json [--model CARD]
    hfs-cds validate --model CARD [--compare CARD]
                (--cohort SOURCE | --fhir BASE [--token T] | --ndjson DIR | --csv FILE)
                [--format text|json|html] [--out FILE] [--html OUT.html]
                [--bootstrap B] [--seed S] [--min-at-risk N] [--groups G]

``--cohort SOURCE`` picks the reader from the value: an ``http(s)://`` URL is a FHIR server, a
directory a Bulk Data export, anything else a CSV file. The FHIR token may also come from the
environment variable ``HFS_CDS_FHIR_TOKEN`` (keeps it out of the process list). FHIR cohorts are
censored at the last HFS-specific assessment; the follow-up value set is the ``hfs_follow_up`` key
of the value-set file (``CDS_VALUESETS_FILE``, else the packaged one). Every error is
printed as one ``hfs-cds: ...`` line without a traceback and exits with status 2; patients left
out of the cohort are listed on standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cds_service.config import ConfigError, Settings
from cds_service.model import ModelCard, ModelCardError, load_model_card
from cds_service.recalibration.bootstrap import DEFAULT_REPLICATES, DEFAULT_SEED
from cds_service.recalibration.card_writer import build_card, read_card_json, write_card
from cds_service.recalibration.cohort import (
    Cohort,
    cohort_from_csv,
    cohort_from_source,
)
from cds_service.recalibration.definitions import FollowUpRules, follow_up_rules
from cds_service.recalibration.errors import RecalibrationError
from cds_service.recalibration.fit import FIT_MODES, FitOptions, recalibrate
from cds_service.recalibration.report import report_json
from cds_service.recalibration.sources import fetch_fhir_resources, read_ndjson_dir
from cds_service.recalibration.validate import (
    ValidationOptions,
    render_html,
    render_text,
    validate,
)
from fhir_mappings import ValueSetError, ValueSets, load_value_sets

TOKEN_ENV = "HFS_CDS_FHIR_TOKEN"
_ERRORS = (RecalibrationError, ModelCardError, ValueSetError, ConfigError)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fit`` and ``validate`` to the ``hfs-cds`` sub-command parser."""
    fit = subparsers.add_parser(
        "fit",
        help="recalibrate the model card on local patients and write a new card",
        description="Recalibrate the model on local patients: the baseline hazard only "
        "(--mode baseline, keeps the published coefficients), the baseline and one calibration "
        "slope on the published linear predictor (--mode slope), or both coefficients too "
        "(--mode full). Writes a model card the service loads with CDS_MODEL_CARD=CARD.json.",
    )
    fit.add_argument("--mode", required=True, choices=FIT_MODES)
    _source_arguments(fit, allow_cohort=False)
    fit.add_argument("--out", required=True, type=Path, metavar="CARD.json")
    fit.add_argument(
        "--model",
        type=Path,
        metavar="CARD",
        help="the card to recalibrate (default: the published card shipped with the package)",
    )
    fit.add_argument(
        "--allow-short-follow-up",
        action="store_true",
        help="if local follow-up stops before the horizon, extend the baseline to it at a "
        "constant hazard (recorded in the card) instead of failing",
    )
    defaults = FitOptions()
    fit.add_argument("--min-patients", type=int, default=defaults.min_patients, metavar="N")
    fit.add_argument("--min-events", type=int, default=defaults.min_events, metavar="N")
    fit.add_argument(
        "--save-cohort", type=Path, metavar="FILE.csv", help="also write the cohort table as CSV"
    )
    fit.add_argument("--card-version", help="version of the new card (default: derived)")
    fit.set_defaults(run=run_fit)

    val = subparsers.add_parser(
        "validate",
        help="C-index and calibration of model cards on a cohort, with intervals (text, JSON, HTML)",
        description="At a named evaluation horizon: Harrell's and Uno's C, calibration slope, "
        "observed/expected and calibration by risk group (Kaplan-Meier observed vs predicted), "
        "with seeded bootstrap intervals and, for a refit validated on its own cohort, Harrell's "
        "optimism correction; for --model and, side by side, --compare (default: the published "
        "card).",
    )
    val.add_argument("--model", required=True, type=Path, metavar="CARD")
    val.add_argument(
        "--compare",
        type=Path,
        metavar="CARD",
        help="a second card on the same cohort (default: the published card, unless --model is it)",
    )
    _source_arguments(val, allow_cohort=True)
    val.add_argument(
        "--format",
        choices=("text", "json", "html"),
        default="text",
        help="report format on standard output or --out (default text)",
    )
    val.add_argument("--out", type=Path, metavar="FILE", help="write the report here")
    val.add_argument("--html", type=Path, metavar="OUT.html", help="also write the HTML report")
    val.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=DEFAULT_REPLICATES,
        metavar="B",
        help=f"bootstrap resamples for the intervals (default {DEFAULT_REPLICATES}; 0: none)",
    )
    val.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})"
    )
    val.add_argument(
        "--min-at-risk",
        type=_positive,
        default=10,
        metavar="N",
        help="patients that must still be followed at the evaluation horizon (default 10)",
    )
    val.add_argument(
        "--groups", type=_positive, default=3, metavar="G", help="risk groups (default 3)"
    )
    val.set_defaults(run=run_validate)


def _source_arguments(parser: argparse.ArgumentParser, *, allow_cohort: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    if allow_cohort:
        group.add_argument(
            "--cohort",
            metavar="SOURCE",
            help="a FHIR base URL, a Bulk Data NDJSON directory, or a CSV file",
        )
    group.add_argument("--fhir", metavar="BASE", help="FHIR server base URL")
    group.add_argument("--ndjson", type=Path, metavar="DIR", help="Bulk Data $export directory")
    group.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="CSV with columns operation_minutes,hb_grade,time_months,event",
    )
    parser.add_argument(
        "--token", help=f"bearer token for --fhir (or set {TOKEN_ENV})", default=None
    )
    parser.add_argument(
        "--max-pages", type=int, default=1000, metavar="N", help="page limit per FHIR search"
    )
    parser.add_argument(
        "--as-of",
        metavar="DATE",
        help="ignore FHIR data dated after this ISO 8601 date-time (default: now)",
    )
    parser.add_argument(
        "--since",
        type=_date,
        metavar="YYYY-MM-DD",
        help="FHIR sources: only patients whose first ablation ended on or after this date",
    )
    parser.add_argument(
        "--until",
        type=_date,
        metavar="YYYY-MM-DD",
        help="FHIR sources: only patients whose first ablation ended on or before this date",
    )


# -- commands ---------------------------------------------------------------------------------------


def run_fit(args: argparse.Namespace) -> int:
    try:
        return _fit(args)
    except _ERRORS as exc:
        print(f"hfs-cds: {exc}", file=sys.stderr)
        return 2


def run_validate(args: argparse.Namespace) -> int:
    try:
        return _validate(args)
    except _ERRORS as exc:
        print(f"hfs-cds: {exc}", file=sys.stderr)
        return 2


def _fit(args: argparse.Namespace) -> int:
    card, source_json = read_card_json(args.model)
    cohort = load_cohort(args, card, _value_sets())
    print(cohort.report(), file=sys.stderr)
    if args.save_cohort:
        _write_text(args.save_cohort, cohort.to_csv())
    options = FitOptions(
        min_patients=args.min_patients,
        min_events=args.min_events,
        allow_short_follow_up=args.allow_short_follow_up,
    )
    rec = recalibrate(cohort, card, args.mode, options)
    data = build_card(rec, source_json, version=args.card_version)
    new = write_card(data, args.out)
    for warning in rec.warnings:
        print(f"hfs-cds: warning: {warning}", file=sys.stderr)
    s = {k.month: k.survival for k in new.baseline_knots}
    h = new.horizon_months
    print(
        f"wrote {args.out}: {new.id} {new.version} ({args.mode} fit on {rec.n} patients, "
        f"{rec.events} recurrences within {h:g} months; {len(new.baseline_knots)} knots; "
        f"reference patient recurrence by {h:g} months {1 - s[max(s)]:.1%})"
    )
    if rec.cox is not None:
        cox = rec.cox
        for j, name in enumerate(cox.names_):
            lo, hi = cox.confidence_intervals_[j]
            print(
                f"  {name}: {cox.params_[j]:+.3f} (SE {cox.standard_errors_[j]:.3f}, "
                f"95% CI {lo:+.3f} to {hi:+.3f})"
            )
        lr = cox.log_likelihood_ratio_test_
        print(
            f"  LR test: chi2 {lr.statistic:.2f} on {lr.degrees_of_freedom} df, p = {lr.p_value:.3g}"
        )
    print(f"use it: CDS_MODEL_CARD={args.out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    card = load_model_card(args.model)
    published = load_model_card(None)
    compare: ModelCard | None
    if args.compare is not None:
        compare = load_model_card(args.compare)
    else:
        compare = published if published.sha256 != card.sha256 else None
    cohort = load_cohort(args, card, _value_sets())
    print(cohort.report(), file=sys.stderr)
    options = ValidationOptions(
        replicates=args.bootstrap,
        seed=args.seed,
        min_at_risk=args.min_at_risk,
        groups=args.groups,
    )
    started = time.perf_counter()
    results = []
    if compare is not None:
        results.append(validate(compare, cohort, _label(compare, published), options))
    results.append(validate(card, cohort, _label(card, published), options))
    print(
        f"validated {len(results)} card(s) on {len(cohort)} patients in "
        f"{time.perf_counter() - started:.1f} s (bootstrap {args.bootstrap} resamples, seed "
        f"{args.seed})",
        file=sys.stderr,
    )
    if args.format == "json":
        report = json.dumps(report_json(results, cohort), indent=2, allow_nan=False) + "\n"
    elif args.format == "html":
        report = render_html(results, cohort)
    else:
        report = render_text(results, cohort) + "\n"
    if args.out:
        _write_text(args.out, report)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(report)
    if args.html:
        _write_text(args.html, render_html(results, cohort))
        print(f"wrote {args.html}", file=sys.stderr if args.format != "text" else sys.stdout)
    return 0


def _label(card: ModelCard, published: ModelCard) -> str:
    kind = "published" if card.sha256 == published.sha256 else str(card.fit.get("mode", "card"))
    return f"{card.id} {card.version} ({kind})"


# -- shared ---------------------------------------------------------------------------------------


def load_cohort(
    args: argparse.Namespace,
    card: ModelCard,
    value_sets: ValueSets,
    follow_up: FollowUpRules | None = None,
) -> Cohort:
    """The cohort from whichever source option was given (``--cohort`` is auto-detected)."""
    fhir, ndjson, csv_file = args.fhir, args.ndjson, args.csv
    cohort_arg: str | None = getattr(args, "cohort", None)
    if cohort_arg is not None:
        if cohort_arg.startswith(("http://", "https://")):
            fhir = cohort_arg
        elif Path(cohort_arg).is_dir():
            ndjson = Path(cohort_arg)
        else:
            csv_file = Path(cohort_arg)
    as_of = _parse_as_of(args.as_of) if args.as_of else None
    window = {"since": args.since, "until": args.until}
    if fhir is not None or ndjson is not None:
        rules = follow_up or follow_up_rules(
            value_sets, Settings.from_env(os.environ).valuesets_file or None
        )
    if fhir is not None:
        token = args.token or os.environ.get(TOKEN_ENV) or None
        data = fetch_fhir_resources(fhir, value_sets, token, max_pages=args.max_pages, **window)
        return cohort_from_source(data, card, value_sets, as_of=as_of, follow_up=rules, **window)
    if ndjson is not None:
        return cohort_from_source(
            read_ndjson_dir(ndjson), card, value_sets, as_of=as_of, follow_up=rules, **window
        )
    assert csv_file is not None  # argparse requires one source
    if args.since or args.until or args.as_of:
        raise RecalibrationError("--since, --until and --as-of need dates: use a FHIR source")
    return cohort_from_csv(csv_file, card)


def _value_sets() -> ValueSets:
    """The value sets the service would use (``CDS_VALUESETS_FILE``, else the packaged ones)."""
    settings = Settings.from_env(os.environ)
    return load_value_sets(settings.valuesets_file or None)


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return number


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from exc


def _parse_as_of(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RecalibrationError(f"--as-of {value!r} is not an ISO 8601 date or date-time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RecalibrationError(f"cannot write {path}: {exc.strerror}") from exc


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with just these commands (tests; the real one is ``hfs-cds``)."""
    parser = argparse.ArgumentParser(prog="hfs-cds")
    register(parser.add_subparsers(required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one of these commands (``python -m cds_service.recalibration.commands fit ...``)."""
    args: Any = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
