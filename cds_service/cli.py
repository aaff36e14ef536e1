"""``hfs-cds``: serve the CDS Hooks service, or score one patient's FHIR Bundle from a file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service.assessment import Assessment, Assessor, Status
from cds_service.config import ConfigError, Settings
from cds_service.model import ModelCardError, load_model_card
from cds_service.presentation import present
from cds_service.recalibration.commands import register as register_recalibration
from cds_service.sandbox.commands import register as register_sandbox
from cds_service.store import StoreError
from cds_service.store.commands import register as register_store
from fhir_mappings import ValueSetError, load_value_sets, resources_from_bundle, roman


class CliError(Exception):
    """A problem with the command line or an input file; printed without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except (CliError, ConfigError, ModelCardError, ValueSetError, StoreError) as exc:
        print(f"hfs-cds: {exc}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfs-cds", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the CDS Hooks service (development server)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.set_defaults(run=_serve)

    token = sub.add_parser(
        "dev-token", help="print a JWT from the development issuer (development mode only)"
    )
    token.add_argument(
        "--url",
        default=None,
        help="endpoint URL the token is for (default: discovery on CDS_PUBLIC_BASE_URL or HOST:PORT)",
    )
    token.add_argument("--alg", choices=("ES384", "RS384"), default="ES384")
    token.set_defaults(run=_dev_token)

    score = sub.add_parser(
        "score",
        help="assess one patient from a FHIR Bundle JSON file",
        epilog=(
            "Exit status: 0 when the assessment was printed; 1 with --format fhir when the "
            "patient is not scored or not applicable (the reason goes to stderr: there is no "
            "RiskAssessment to print); 2 for a bad command line or input file."
        ),
    )
    score.add_argument("bundle", type=Path, help="FHIR R4 Bundle (or a JSON array of resources)")
    score.add_argument("--patient", help="patient id (default: inferred from the bundle)")
    score.add_argument("--at", help="assess as of this ISO 8601 date-time (default: now)")
    score.add_argument(
        "--format",
        choices=("text", "json", "fhir"),
        default="text",
        help="text: a report (default); json: the assessment (as in the card extension); "
        "fhir: a FHIR R4 RiskAssessment, for a scored patient only",
    )
    # Kept for existing scripts and docs; the first action's default ("text") applies.
    score.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        default=argparse.SUPPRESS,
        help="the same as --format json",
    )
    score.set_defaults(run=_score)

    register_recalibration(sub)
    register_store(sub)
    register_sandbox(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from cds_service.app import create_app
    from cds_service.logging_setup import configure_logging

    configure_logging(os.environ.get("CDS_LOG_LEVEL", "INFO"))
    app = create_app()
    print(f"CDS Hooks discovery: http://{args.host}:{args.port}/cds-services", file=sys.stderr)
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    return 0


def _dev_token(args: argparse.Namespace) -> int:
    from cds_service.security.trusted_issuers import mint_development_token

    url = args.url
    if url is None:
        base = os.environ.get("CDS_PUBLIC_BASE_URL") or (
            f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
        )
        url = base.rstrip("/") + "/cds-services"
    print(mint_development_token(url, alg=args.alg))
    return 0


def _score(args: argparse.Namespace) -> int:
    resources = _read_resources(args.bundle)
    as_of = _parse_at(args.at) if args.at else None
    settings = Settings.from_env(os.environ)
    assessor = Assessor(
        load_model_card(settings.model_card or None),
        load_value_sets(settings.valuesets_file or None),
    )
    assessment = assessor.assess(resources, args.patient, as_of=as_of)
    if args.format == "fhir":
        from cds_service.presentation import present
        from cds_service.presentation.risk_assessment import risk_assessment

        statement = present(assessment)
        if not statement.scored:
            # No resource to print: a RiskAssessment without a prediction would read as "no risk".
            print(f"hfs-cds: no RiskAssessment: {statement.headline}", file=sys.stderr)
            for p in statement.problems:
                print(f"  - {p.message} To fix: {p.action}", file=sys.stderr)
            return 1
        try:
            resource = risk_assessment(statement, assessment.inputs.patient_id)
        except ValueError as exc:  # no patient id anywhere: the subject is required
            raise CliError(f"{exc}; give --patient") from exc
        print(json.dumps(resource, indent=2))
    elif args.format == "json":
        print(json.dumps(assessment.to_json(), indent=2))
    else:
        print(render_text(assessment))
    return 0


def _read_resources(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return resources_from_bundle(data)
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    raise CliError(f"{path} must hold a FHIR Bundle or a JSON array of FHIR resources")


def _parse_at(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CliError(f"--at {value!r} is not an ISO 8601 date or date-time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render_text(a: Assessment) -> str:
    """A plain-text report of an assessment, for terminals and batch logs (the presentation
    layer's statement, laid out as lines; nothing is formatted here that the card says otherwise)."""
    st = present(a)
    model = a.model
    lines = [f"Model: {model.id} {model.version} ({model.citation.url})"]
    if a.inputs.patient_id:
        lines.append(f"Patient: Patient/{a.inputs.patient_id}")
    if a.inputs.ablation:
        since = (
            f" ({a.months_since_procedure:.1f} months before {a.as_of:%Y-%m-%d})"
            if (a.months_since_procedure is not None)
            else ""
        )
        lines.append(
            f"Ablation: {a.inputs.ablation.provenance.reference} ended "
            f"{a.inputs.ablation.ended_at.isoformat()}{since}"
        )
    if a.status is Status.NOT_APPLICABLE:
        lines.append(f"Not applicable: {a.not_applicable_because}.")
        return "\n".join(lines)
    if a.operation_time:
        ot = a.operation_time
        lines.append(
            f"Operation time: {ot.minutes:.0f} min from {ot.provenance.reference} ({ot.source})"
        )
    if a.hb_grade:
        hb = a.hb_grade
        lines.append(
            f"House-Brackmann grade: {roman(hb.grade)} from {hb.provenance.reference}, "
            f"{hb.hours_after_procedure:.0f} h after the ablation"
        )
    if not st.scored:
        lines.append(f"Not scored: {st.headline}.")
        lines += [f"  - {p.message} To fix: {p.action}" for p in st.problems]
        lines.append(st.caveat)
        return "\n".join(lines)
    lines.append("Risk of recurrence (range over the plausible codings):")
    for r in st.risks:
        ci = f"; 95% CI {r.ci_text}" if r.ci_text else ""
        lines.append(f"  by {r.label:>9}: {r.text:>5}  ({r.range_text}{ci})")
    if st.conditional:
        lines.append(f"  {st.conditional.sentence}")
    lines.append(f"{st.tier_text}: {st.risk_sentence}")
    lines += [note for note in (st.coding_note, st.schedule_note) if note]
    lines.append(f"Follow-up: {st.schedule_text} {st.advice}")
    lines += [st.uncertainty_note, st.caveat]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
