"""The CDS Hooks response invariants (cds-hooks.md §12, S1-S5), checked on every card tests produce."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from fhir.resources.R4B import get_fhir_model_class

_HTML_TAG = re.compile(r"<\s*[A-Za-z!/]")
_REVERSE_DOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")


def assert_no_empty_members(value: Any, path: str = "$") -> None:
    """CDS Hooks forbids null, "", [] and {} anywhere except the top-level ``cards: []``."""
    assert value is not None, f"{path} is null"
    if isinstance(value, str):
        assert value != "", f"{path} is an empty string"
    elif isinstance(value, list):
        assert value, f"{path} is an empty array"
        for i, item in enumerate(value):
            assert_no_empty_members(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        assert value, f"{path} is an empty object"
        for key, item in value.items():
            assert_no_empty_members(item, f"{path}.{key}")


def _assert_absolute_url(url: Any, where: str) -> None:
    assert isinstance(url, str), where
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc, (
        f"{where}: {url!r} is not an absolute https URL"
    )


def assert_valid_fhir_r4(resource: dict[str, Any]) -> None:
    """Validate a resource the service emits with fhir.resources' R4B models (R4-compatible)."""
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)


def assert_valid_card(card: dict[str, Any]) -> None:
    assert_no_empty_members(card, "card")
    assert isinstance(card["summary"], str) and len(card["summary"]) < 140
    assert card["indicator"] in {"info", "warning", "critical"}
    assert isinstance(card["source"]["label"], str)
    if "url" in card["source"]:
        _assert_absolute_url(card["source"]["url"], "source.url")
    uuid.UUID(card["uuid"])
    if "detail" in card:
        assert isinstance(card["detail"], str)
        assert not _HTML_TAG.search(card["detail"]), "detail must not contain raw HTML"
    suggestions = card.get("suggestions")
    if suggestions is not None:
        assert card.get("selectionBehavior") in {"at-most-one", "any"}
        if card["selectionBehavior"] == "at-most-one":
            assert sum(1 for s in suggestions if s.get("isRecommended")) <= 1
        for s in suggestions:
            assert isinstance(s["label"], str)
            uuid.UUID(s["uuid"])
            assert "actionSelectionBehavior" not in s
            for action in s.get("actions", []):
                assert action["type"] in {"create", "update", "delete"}
                assert isinstance(action["description"], str)
                if action["type"] in {"create", "update"}:
                    assert isinstance(action["resource"], dict)
                    assert_valid_fhir_r4(action["resource"])
                else:
                    assert "resourceId" in action and "resource" not in action
    for reason in card.get("overrideReasons", []):
        assert {"code", "system", "display"} <= set(reason)
    for link in card.get("links", []):
        assert isinstance(link["label"], str)
        assert link["type"] in {"absolute", "smart"}
        _assert_absolute_url(link["url"], "link.url")
        if "appContext" in link:
            assert link["type"] == "smart"
    for key in card.get("extension", {}):
        assert _REVERSE_DOMAIN.match(key), f"extension key {key!r} is not reverse-domain"


def assert_valid_cds_response(body: Any) -> list[dict[str, Any]]:
    """Check a whole service response; returns its cards."""
    assert isinstance(body, dict) and isinstance(body.get("cards"), list)
    assert set(body) <= {"cards", "systemActions", "extension"}
    if "systemActions" in body:
        assert body["systemActions"], "systemActions must be absent or non-empty"
    cards: list[dict[str, Any]] = body["cards"]
    for card in cards:
        assert_valid_card(card)
    assert len({c["uuid"] for c in cards}) == len(cards), "card uuids must be unique"
    return cards
