"""``hfs-cds``: serve the CDS Hooks service, score one patient's FHIR Bundle from a file, and the
commands of the store, the recalibration and the sandbox, as one Click group."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import click

from cds_service.assessment import Assessment, Status
from cds_service.cli_support import (
    INPUT_FILE,
    Choice,
    CliError,
    IsoMoment,
    assessor,
    language_option,
    locale_of,
    read_json,
)
from cds_service.config import ConfigError, load_settings
from cds_service.examples.command import examples
from cds_service.i18n import DEFAULT as DEFAULT_LOCALE
from cds_service.i18n import Locale
from cds_service.model import ModelCardError
from cds_service.presentation import present
from cds_service.presentation.problems import problem_texts
from cds_service.preview.command import preview
from cds_service.recalibration.commands import COMMANDS as RECALIBRATION_COMMANDS
from cds_service.recalibration.errors import RecalibrationError
from cds_service.sandbox.bundles import stored_resources
from cds_service.sandbox.commands import COMMANDS as SANDBOX_COMMANDS
from cds_service.sandbox.fhir_http import SandboxError
from cds_service.store import StoreError
from cds_service.store.commands import COMMANDS as STORE_COMMANDS
from fhir_mappings import Resource, ValueSetError, infer_patient_id, resources_from_bundle, roman
from fhir_mappings.subjects import subject_patient_id

#: Errors a user can fix: one line on stderr and exit status 2, never a traceback.
_ERRORS = (
    CliError,
    ConfigError,
    ModelCardError,
    ValueSetError,
    StoreError,
    RecalibrationError,
    SandboxError,
)
#: Commands whose error lines name them (``hfs-cds load: …``), as they always have.
_NAMED = {command.name for command in (*SANDBOX_COMMANDS, examples, preview)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hfs-cds ARGV`` and return its exit status: 2 with one line ``hfs-cds: …`` for a known
    error, 130 on Ctrl-C, 141 quietly when stdout is a closed pipe (``hfs-cds score … | head -1``).
    As with argparse before, ``--help`` and ``--version`` exit 0 and a usage error exits 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with hfs_cds.make_context("hfs-cds", args) as ctx:  # ctx: which command failed, below
            code = int(hfs_cds.invoke(ctx))
        sys.stdout.flush()  # a closed pipe shows here rather than at interpreter exit
        return code
    except click.exceptions.Exit as exc:  # --help, --version
        raise SystemExit(exc.exit_code) from None
    except click.UsageError as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except _ERRORS as exc:
        named = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand in _NAMED else ""
        print(f"hfs-cds{named}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hfs-cds: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away: nothing more to say, to anyone
        with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the pipe


@click.group(
    "hfs-cds", context_settings={"show_default": True, "help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="hfs-cds", prog_name="hfs-cds", message="%(prog)s %(version)s")
def hfs_cds() -> None:
    """Recurrence risk after radiofrequency ablation for hemifacial spasm: the CDS Hooks service,
    one patient's assessment from a file, the feedback store, recalibration and test patients."""


@hfs_cds.command()
@click.option("--host", envvar="HOST", show_envvar=True, default="127.0.0.1", help="interface")
@click.option("--port", envvar="PORT", show_envvar=True, type=int, default=8080, help="TCP port")
def serve(host: str, port: int) -> int:
    """Run the CDS Hooks service (development server)."""
    from cds_service.app import create_app
    from cds_service.logging_setup import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    print(f"CDS Hooks discovery: http://{host}:{port}/cds-services", file=sys.stderr)
    app.run(host=host, port=port, threaded=True, use_reloader=False)
    return 0


@hfs_cds.command("dev-token")
@click.option(
    "--url", show_default="discovery on CDS_PUBLIC_BASE_URL or HOST:PORT", help="token audience"
)
@click.option("--alg", type=Choice(("ES384", "RS384")), default="ES384", help="signing algorithm")
def dev_token(url: str | None, alg: Literal["ES384", "RS384"]) -> int:
    """Print a JWT from the development issuer (development mode only)."""
    from cds_service.security.trusted_issuers import mint_development_token

    if url is None:
        base = load_settings().public_base_url or (
            f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
        )
        url = base.rstrip("/") + "/cds-services"
    print(mint_development_token(url, alg=alg))
    return 0


@hfs_cds.command(
    epilog="Exit status: 0 when the assessment was printed; 1 with --format fhir when the patient "
    "is not scored or not applicable (the reason goes to stderr: there is no RiskAssessment to "
    "print); 2 for a bad command line or input file."
)
@click.argument("bundle", type=INPUT_FILE, help="FHIR R4 Bundle (or a JSON array of resources)")
@click.option("--patient", show_default="inferred from the bundle", help="patient id")
@click.option("--at", type=IsoMoment(), show_default="now", help="assess as of this date-time")
@click.option(
    "--format",
    "output_format",
    type=Choice(("text", "json", "fhir")),
    default="text",
    help="text: a report; json: the assessment (as in the card extension); fhir: a FHIR R4 "
    "RiskAssessment, for a scored patient only",
)
@click.option("--json", "output_format", flag_value="json", help="the same as --format json")
@language_option("the text report (json and fhir do not depend on it)")
def score(
    bundle: Path, patient: str | None, at: datetime | None, output_format: str, language: str
) -> int:
    """Assess one patient from a FHIR Bundle JSON file.

    A file with several patients (``hfs-cds synth`` writes one) needs --patient."""
    locale = locale_of(language)
    resources = _resources(bundle)
    assessment = assessor().assess(resources, _patient(bundle, resources, patient), as_of=at)
    if output_format == "fhir":
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
    elif output_format == "json":
        print(json.dumps(assessment.to_json(), indent=2))
    else:
        print(render_text(assessment, locale))
    return 0


def _resources(path: Path) -> list[Resource]:
    """The resources in a Bundle or a JSON array; a transaction whose resources have no ids yet
    (as ``hfs-cds synth`` writes) is read as a FHIR server would store it."""
    holds = "a FHIR Bundle or a JSON array of FHIR resources"
    data = read_json(path, holds, (dict, list))
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise CliError(f"{path} must hold {holds}")
    resources = resources_from_bundle(data)
    if data.get("type") == "transaction" and not any("id" in r for r in resources):
        with contextlib.suppress(KeyError, TypeError, ValueError):  # not our kind of transaction
            return stored_resources(data)
    return resources


def _patient(path: Path, resources: list[Resource], given: str | None) -> str | None:
    """``--patient`` when the file holds that patient; without it, the file's one patient."""
    ids = {r.get("id") for r in resources if r.get("resourceType") == "Patient"}
    ids |= {subject_patient_id(r) for r in resources}
    held = sorted(i for i in ids if isinstance(i, str))
    listed = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
    if given is not None and given.removeprefix("Patient/") not in held:
        raise CliError(f"{path} holds no patient {given!r} (it holds {listed or 'none'})")
    if given is None and len(held) > 1 and infer_patient_id(resources) is None:
        raise CliError(f"{path} holds {len(held)} patients ({listed}): choose one with --patient")
    return given


for _command in (*RECALIBRATION_COMMANDS, *STORE_COMMANDS, *SANDBOX_COMMANDS, examples, preview):
    hfs_cds.add_command(_command)


def render_text(a: Assessment, locale: Locale = DEFAULT_LOCALE) -> str:
    """A plain-text report of an assessment, for terminals and batch logs (the presentation
    layer's statement, laid out as lines; nothing is formatted here that the card says otherwise)."""
    st = present(a, locale)
    w, model = st.words, a.model
    lines = [
        w.gettext("Model: %(model)s %(version)s (%(url)s)")
        % {"model": model.id, "version": model.version, "url": model.citation.url}
    ]
    if a.inputs.patient_id:
        lines.append(w.gettext("Patient: %(ref)s") % {"ref": f"Patient/{a.inputs.patient_id}"})
    if a.inputs.ablation:
        since = ""
        if a.months_since_procedure is not None:
            since = w.gettext(" (%(months)s months before %(date)s)") % {
                "months": f"{a.months_since_procedure:.1f}",
                "date": w.date(a.as_of.date()),
            }
        lines.append(
            w.gettext("Ablation: %(ref)s ended %(at)s%(since)s")
            % {
                "ref": a.inputs.ablation.provenance.reference,
                "at": a.inputs.ablation.ended_at.isoformat(),
                "since": since,
            }
        )
    if a.status is Status.NOT_APPLICABLE:
        lines.append(w.gettext("Not applicable: %(reason)s.") % {"reason": st.headline})
        return "\n".join(lines)
    if a.operation_time:
        ot = a.operation_time
        lines.append(
            w.gettext("Operation time: %(minutes)s min from %(ref)s (%(source)s)")
            % {"minutes": f"{ot.minutes:.0f}", "ref": ot.provenance.reference, "source": ot.source}
        )
    if a.hb_grade:
        hb = a.hb_grade
        lines.append(
            w.gettext(
                "House-Brackmann grade: %(grade)s from %(ref)s, %(hours)s h after the ablation"
            )
            % {
                "grade": roman(hb.grade),
                "ref": hb.provenance.reference,
                "hours": f"{hb.hours_after_procedure:.0f}",
            }
        )
    if not st.scored:
        lines.append(w.gettext("Not scored: %(reason)s.") % {"reason": st.headline})
        for p in st.problems:
            message, action, detail = problem_texts(p, w)
            if detail:
                message = f"{message} ({detail})"
            lines.append(
                w.gettext("  - %(message)s To fix: %(action)s")
                % {"message": message, "action": action}
            )
        lines.append(st.caveat)
        return "\n".join(lines)
    lines.append(w.gettext("Risk of recurrence (range over the plausible codings):"))
    ci_label = w.gettext("95% CI")
    for r in st.risks:
        ci = f"; {ci_label} {r.ci_text}" if r.ci_text else ""
        lines.append(
            w.gettext("  by %(label)s: %(risk)s  (%(range)s%(ci)s)")
            % {"label": f"{r.label:>9}", "risk": f"{r.text:>5}", "range": r.range_text, "ci": ci}
        )
    if st.conditional:
        lines.append(f"  {st.conditional.sentence}")
    lines.append(
        w.gettext("%(tier)s: %(sentence)s") % {"tier": st.tier_text, "sentence": st.risk_sentence}
    )
    lines += [note for note in (st.coding_note, st.schedule_note) if note]
    lines.append(
        w.gettext("Follow-up: %(schedule)s %(advice)s")
        % {"schedule": st.schedule_text, "advice": st.advice}
    )
    lines += [st.uncertainty_note, st.caveat]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
