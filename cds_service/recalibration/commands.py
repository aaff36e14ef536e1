"""``hfs-cds fit`` and ``hfs-cds validate``: recalibrate the model card and check it.

The cohort comes from one source; ``--cohort`` picks the reader from the value (an ``http(s)://``
URL is a FHIR server, a directory a Bulk Data export, anything else a CSV file). FHIR cohorts are
censored at the last HFS-specific assessment; the follow-up value set is the ``hfs_follow_up`` key
of the value-set file. Patients left out of the cohort are listed on standard error.

``--lang`` (default ``CDS_LANGUAGE``, else ``en``) chooses the language of what a person reads:
the text and HTML reports, the cohort summary and the fit's summary. JSON reports and the card
written by ``fit`` do not depend on it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import click

from cds_service.cli_support import (
    INPUT_FILE,
    OUTPUT_FILE,
    TOKEN,
    Choice,
    IsoDate,
    IsoMoment,
    WholeNumber,
    language_option,
    locale_of,
    options,
    progress,
    value_sets,
    write_text,
)
from cds_service.config import load_settings
from cds_service.model import ModelCard, load_model_card
from cds_service.recalibration.bootstrap import DEFAULT_REPLICATES, DEFAULT_SEED
from cds_service.recalibration.card_writer import build_card, read_card_json, write_card
from cds_service.recalibration.cohort import Cohort, cohort_from_csv, cohort_from_source
from cds_service.recalibration.definitions import follow_up_rules
from cds_service.recalibration.errors import RecalibrationError
from cds_service.recalibration.fit import FIT_MODES, FitMode, FitOptions, recalibrate
from cds_service.recalibration.notes import Note, catalogue, fit_mode, say
from cds_service.recalibration.report import report_json
from cds_service.recalibration.sources import fetch_fhir_resources, read_ndjson_dir
from cds_service.recalibration.validate import ValidationOptions, render_html, render_text, validate
from fhir_mappings import ValueSets

Command = Callable[..., int]
FHIR = "FHIR sources: only patients whose first ablation ended"

_cohort = click.option(
    "--cohort", metavar="SOURCE", help="a FHIR base URL, a Bulk Data NDJSON directory or a CSV file"
)
_sources = options(
    click.option("--fhir", metavar="BASE", help="FHIR server base URL"),
    click.option(
        "--ndjson", type=click.Path(file_okay=False, path_type=Path), help="Bulk Data $export"
    ),
    click.option(
        "--csv", type=INPUT_FILE, help="CSV: operation_minutes,hb_grade,time_months,event"
    ),
    TOKEN,
    click.option("--max-pages", type=int, default=1000, help="page limit per FHIR search"),
    click.option(
        "--as-of", type=IsoMoment(), show_default="now", help="ignore FHIR data dated after it"
    ),
    click.option("--since", type=IsoDate(), help=f"{FHIR} on or after this date"),
    click.option("--until", type=IsoDate(), help=f"{FHIR} on or before this date"),
)


_lang = language_option("what a person reads (text and html reports, summaries)")


def _one_of(*names: str) -> Callable[[Command], Command]:
    """Exactly one of these options, refused as argparse's mutually exclusive group did."""

    def decorate(command: Command) -> Command:
        @wraps(command)
        def run(**kwargs: Any) -> int:
            given = [name for name in names if kwargs[name[2:]] is not None]
            if len(given) == 1:
                return command(**kwargs)
            message = (
                f"argument {given[1]}: not allowed with argument {given[0]}"
                if given
                else f"one of the arguments {' '.join(names)} is required"
            )
            raise click.UsageError(message, click.get_current_context())

        return run

    return decorate


@click.command()
@click.option("--mode", required=True, type=Choice(FIT_MODES), help="what to refit")
@_sources
@click.option("--out", required=True, type=OUTPUT_FILE, metavar="CARD.json", help="the new card")
@click.option(
    "--model", type=INPUT_FILE, show_default="the published card", help="the card to refit"
)
@click.option(
    "--allow-short-follow-up",
    is_flag=True,
    help="if local follow-up stops before the horizon, extend the baseline to it at a "
    "constant hazard (recorded in the card) instead of failing",
)
@click.option("--min-patients", type=int, default=FitOptions().min_patients, help="refuse below")
@click.option("--min-events", type=int, default=FitOptions().min_events, help="refuse below")
@click.option("--save-cohort", type=OUTPUT_FILE, help="also write the cohort table as CSV")
@click.option("--card-version", show_default="derived", help="version of the new card")
@_lang
@_one_of("--fhir", "--ndjson", "--csv")
def fit(
    mode: FitMode,
    out: Path,
    model: Path | None,
    allow_short_follow_up: bool,
    min_patients: int,
    min_events: int,
    save_cohort: Path | None,
    card_version: str | None,
    language: str,
    **source: Any,
) -> int:
    """Recalibrate the model card on local patients and write a new card.

    The baseline hazard only (--mode baseline, keeps the published coefficients), the baseline
    and one calibration slope on the published linear predictor (--mode slope), or both
    coefficients too (--mode full). Writes a model card the service loads with
    CDS_MODEL_CARD=CARD.json."""
    words = catalogue(locale_of(language))
    _ = words.gettext
    card, source_json = read_card_json(model)
    cohort = load_cohort(card, value_sets(), **source)
    print(cohort.report(words), file=sys.stderr)
    if save_cohort:
        write_text(save_cohort, cohort.to_csv())
    options = FitOptions(
        min_patients=min_patients,
        min_events=min_events,
        allow_short_follow_up=allow_short_follow_up,
    )
    rec = recalibrate(cohort, card, mode, options)
    data = build_card(rec, source_json, version=card_version)
    new = write_card(data, out)
    for warning in rec.warnings:
        print("hfs-cds: " + _("warning: %(text)s") % {"text": warning.say(words)}, file=sys.stderr)
    s = {k.month: k.survival for k in new.baseline_knots}
    h = new.horizon_months
    summary = _(
        "wrote %(out)s: %(card)s (%(mode)s fit on %(n)s patients, %(events)s recurrences within "
        "%(horizon)g months; %(knots)s knots; reference patient recurrence by %(horizon)g months "
        "%(risk).1f%%)"
    )
    print(
        summary
        % {
            "out": out,
            "card": f"{new.id} {new.version}",
            "mode": say(fit_mode(mode), words),
            "n": rec.n,
            "events": rec.events,
            "horizon": h,
            "knots": len(new.baseline_knots),
            "risk": (1 - s[max(s)]) * 100,
        }
    )
    if rec.cox is not None:
        cox = rec.cox
        for j, name in enumerate(cox.names_):
            lo, hi = cox.confidence_intervals_[j]
            line = _("%(name)s: %(value)+.3f (SE %(se).3f, 95%% CI %(low)+.3f to %(high)+.3f)")
            print(
                "  "
                + line
                % {
                    "name": _(name),
                    "value": cox.params_[j],
                    "se": cox.standard_errors_[j],
                    "low": lo,
                    "high": hi,
                }
            )
        lr = cox.log_likelihood_ratio_test_
        line = _("LR test: chi2 %(chi2).2f on %(df)s df, p = %(p).3g")
        print("  " + line % {"chi2": lr.statistic, "df": lr.degrees_of_freedom, "p": lr.p_value})
    print(_("use it: CDS_MODEL_CARD=%(out)s") % {"out": out})
    return 0


@click.command("validate")
@click.option("--model", required=True, type=INPUT_FILE, metavar="CARD", help="the card to check")
@click.option(
    "--compare",
    type=INPUT_FILE,
    metavar="CARD",
    show_default="the published card, unless --model is it",
    help="a second card on the same cohort",
)
@_cohort
@_sources
@click.option(
    "--format",
    "output_format",
    type=Choice(("text", "json", "html")),
    default="text",
    help="report format on standard output or --out",
)
@click.option("--out", type=OUTPUT_FILE, help="write the report here")
@click.option("--html", type=OUTPUT_FILE, metavar="OUT.html", help="also write the HTML report")
@click.option(
    "--bootstrap", type=WholeNumber(0), default=DEFAULT_REPLICATES, help="resamples (0: none)"
)
@click.option("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed")
@click.option(
    "--min-at-risk",
    type=WholeNumber(1),
    default=10,
    help="patients that must still be followed at the evaluation horizon",
)
@click.option("--groups", type=WholeNumber(1), default=3, help="risk groups")
@_lang
@_one_of("--cohort", "--fhir", "--ndjson", "--csv")
def validate_command(
    model: Path,
    compare: Path | None,
    output_format: str,
    out: Path | None,
    html: Path | None,
    bootstrap: int,
    seed: int,
    min_at_risk: int,
    groups: int,
    language: str,
    **source: Any,
) -> int:
    """C-index and calibration of model cards on a cohort, with intervals.

    At a named evaluation horizon: Harrell's and Uno's C, calibration slope, observed/expected
    and calibration by risk group (Kaplan-Meier observed vs predicted), with seeded bootstrap
    intervals and, for a refit validated on its own cohort, Harrell's optimism correction; for
    --model and, side by side, --compare. Text, JSON or HTML (JSON does not depend on --lang)."""
    locale = locale_of(language)
    words = catalogue(locale)
    _ = words.gettext
    card = load_model_card(model)
    published = load_model_card(None)
    if compare is not None:
        other: ModelCard | None = load_model_card(compare)
    else:
        other = published if published.sha256 != card.sha256 else None
    cohort = load_cohort(card, value_sets(), **source)
    print(cohort.report(words), file=sys.stderr)
    options = ValidationOptions(
        replicates=bootstrap, seed=seed, min_at_risk=min_at_risk, groups=groups
    )
    started = time.perf_counter()
    cards = [c for c in (other, card) if c is not None]  # the one to compare with first
    results = [validate(c, cohort, _label(c, published), options) for c in cards]
    done = _(
        "validated %(cards)s card(s) on %(patients)s patients in %(seconds).1f s (bootstrap "
        "%(replicates)s resamples, seed %(seed)s)"
    )
    seconds = time.perf_counter() - started
    print(
        done
        % {
            "cards": len(results),
            "patients": len(cohort),
            "seconds": seconds,
            "replicates": bootstrap,
            "seed": seed,
        },
        file=sys.stderr,
    )
    if output_format == "json":  # JSON is for machines: the same whatever --lang says
        report = json.dumps(report_json(results, cohort), indent=2, allow_nan=False) + "\n"
    elif output_format == "html":
        report = render_html(results, cohort, locale=locale)
    else:
        report = render_text(results, cohort, words) + "\n"
    if out:
        write_text(out, report)
        print(_("wrote %(path)s") % {"path": out}, file=sys.stderr)
    else:
        sys.stdout.write(report)
    if html:
        write_text(html, render_html(results, cohort, locale=locale))
        print(
            _("wrote %(path)s") % {"path": html},
            file=sys.stderr if output_format != "text" else sys.stdout,
        )
    return 0


def _label(card: ModelCard, published: ModelCard) -> Note:
    """``fei-2022-hfs-rfa-recurrence 1.1.0 (published)``, its kind said in the reader's language."""
    kind = "published" if card.sha256 == published.sha256 else str(card.fit.get("mode", "card"))
    return Note.of("card-label", card=f"{card.id} {card.version}", kind=fit_mode(kind))


def load_cohort(
    card: ModelCard,
    value_sets: ValueSets,
    *,
    cohort: str | None = None,
    fhir: str | None = None,
    ndjson: Path | None = None,
    csv: Path | None = None,
    token: str | None = None,
    max_pages: int = 1000,
    as_of: datetime | None = None,
    since: date | None = None,
    until: date | None = None,
) -> Cohort:
    """The cohort from whichever source was given (``cohort`` is auto-detected)."""
    if cohort is not None:
        if cohort.startswith(("http://", "https://")):
            fhir = cohort
        elif Path(cohort).is_dir():
            ndjson = Path(cohort)
        else:
            csv = Path(cohort)
    if fhir is None and ndjson is None:
        assert csv is not None  # the command line requires one source
        if since or until or as_of:
            raise RecalibrationError("--since, --until and --as-of need dates: use a FHIR source")
        return cohort_from_csv(csv, card)
    rules = follow_up_rules(value_sets, load_settings().valuesets_file or None)
    if fhir is not None:
        with progress("fetching patients") as step:
            data = fetch_fhir_resources(
                fhir,
                value_sets,
                token or None,
                max_pages=max_pages,
                since=since,
                until=until,
                progress=step,
            )
    else:
        assert ndjson is not None
        data = read_ndjson_dir(ndjson)
    return cohort_from_source(
        data, card, value_sets, as_of=as_of, follow_up=rules, since=since, until=until
    )


COMMANDS = (fit, validate_command)
