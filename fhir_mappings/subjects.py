"""Which patient a resource is about, and which patient a set of resources is about.

**Another server's patient is not this patient.** A literal reference names a patient on one FHIR
server: ``Patient/p1`` on the server the resources came from, ``https://other.example/fhir/
Patient/p1`` on that other server, where ``p1`` may well be someone else (an exchange or a
registry holds records from many sources). :class:`HomeServer` says which references name the
EHR's own server:

- a relative reference always does (it is relative to the server that served the resource);
- with the hook's ``fhirServer``, an absolute reference does when its base is that server
  (compared as FHIR compares base URLs: ``http``/``https``, host case and default ports aside,
  see :func:`~fhir_mappings.references.same_base`);
- without one (prefetch only, a file on the command line), the service cannot know which server
  is "its" server, so it decides conservatively: an absolute reference counts only when every
  patient subject among the resources is an absolute reference to one and the same server (a
  self-consistent export from that server). Any relative subject, or a second server, and no
  absolute reference counts: the resource is set aside with a note, as another patient's would be.
  Scoring another person's procedure or grade is worse than not scoring.
"""

from __future__ import annotations

from collections.abc import Iterable

from .collect import ResourceInput, collect_resources
from .json_access import get_str
from .references import FHIR_ID, normalise_base, reference_base, referenced, same_base
from .types import Resource


class HomeServer:
    """The server whose patients the resources are about (see the module docstring).

    ``HomeServer(fhir_server)`` for the hook's ``fhirServer``; ``HomeServer(None, resources)`` to
    find it from the resources' subjects, which is done only if an absolute reference is met (the
    usual relative references cost a string test). ``HomeServer()``: relative references only.
    """

    __slots__ = ("_base", "_resources")

    def __init__(
        self, fhir_server: str | None = None, resources: Iterable[Resource] | None = None
    ) -> None:
        self._base = fhir_server or None
        # Read only if an absolute reference is met; a list is kept as it is, not copied.
        self._resources: list[Resource] | None = None
        if not fhir_server and resources is not None:
            self._resources = resources if isinstance(resources, list) else list(resources)

    @property
    def base(self) -> str | None:
        """The server's base URL as written; None when only relative references name it."""
        if self._resources is not None:
            self._base = _one_server(self._resources)
            self._resources = None
        return self._base

    def owns(self, reference: object) -> bool:
        """Whether a Reference element's literal reference points at this server (relative, or
        absolute on :attr:`base`). False when it is not a literal reference at all."""
        text = _reference_text(reference)
        return text is not None and referenced(reference) is not None and self.owns_text(text)

    def owns_text(self, text: str) -> bool:
        """:meth:`owns` for the text of a reference already known to parse."""
        if not text.startswith(("http://", "https://")):
            return True
        return same_base(reference_base(text), self.base)


def home_server(resources: Iterable[Resource], fhir_server: str | None) -> HomeServer:
    """The EHR's server: ``fhir_server`` when the hook named one, else the one server every patient
    subject names absolutely (found when first needed), else relative references only."""
    return HomeServer(fhir_server) if fhir_server else HomeServer(None, resources)


def _one_server(resources: Iterable[Resource]) -> str | None:
    """The base every patient subject names absolutely; None if one is relative, or two differ."""
    bases: dict[str | None, str] = {}
    for resource in resources:
        subject = resource.get("subject")
        target = referenced(subject)
        if target is None or target[0] != "Patient":
            continue
        base = reference_base(_reference_text(subject) or "")
        if base is None:
            return None  # a relative subject: an absolute one may be anyone
        bases.setdefault(normalise_base(base), base)
        if len(bases) > 1:
            return None
    return next(iter(bases.values())) if len(bases) == 1 else None


def subject_patient_id(resource: Resource) -> str | None:
    """The Patient id in ``subject.reference`` (relative, versioned or absolute), else None.

    Any server's: :func:`foreign_subject` and :func:`infer_from_json` also check the server."""
    target = referenced(resource.get("subject"))
    return target[1] if target is not None and target[0] == "Patient" else None


def foreign_subject(resource: Resource, patient_id: str | None, home: HomeServer) -> str | None:
    """Why the resource is not about ``patient_id`` on the ``home`` server, or None when it is."""
    if patient_id is None:
        return "the patient could not be determined"
    subject = resource.get("subject")
    if subject is None:
        return "no subject"
    target = referenced(subject)  # parsed once: the patient id, then its server
    if target is None or target[0] != "Patient":
        return "subject is not a Patient reference"
    # referenced() read a non-empty string there; a relative reference is always the home one.
    text: str = subject["reference"]
    if text.startswith(("http://", "https://")) and not home.owns_text(text):
        return "subject is a patient on another FHIR server"
    return None if target[1] == patient_id else "subject is another patient"


def infer_patient_id(resources: Iterable[ResourceInput] | ResourceInput) -> str | None:
    """The single Patient resource's id, else the one patient every subject names, else None."""
    return infer_from_json(collect_resources(resources)[0])


def infer_from_json(resources: Iterable[Resource], home: HomeServer | None = None) -> str | None:
    """As :func:`infer_patient_id`; subjects on another server than ``home`` (default: the one
    :func:`home_server` finds without a ``fhirServer``) are not counted."""
    resources = list(resources)
    if home is None:
        home = HomeServer(None, resources)
    patients: set[str] = set()
    subjects: set[str] = set()
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            rid = get_str(resource, "id")
            if rid is not None and FHIR_ID.fullmatch(rid):
                patients.add(rid)
        subject = subject_patient_id(resource)
        if subject is not None and home.owns_text(_reference_text(resource.get("subject")) or ""):
            subjects.add(subject)
    if len(patients) == 1:
        return next(iter(patients))
    return next(iter(subjects)) if len(subjects) == 1 else None


def _reference_text(reference: object) -> str | None:
    return get_str(reference, "reference") if isinstance(reference, dict) else None
