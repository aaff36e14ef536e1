"""CDS Hooks service: hemifacial spasm recurrence risk after radiofrequency ablation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from cds_service.config import Settings

__version__ = "0.1.0"


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app (imported lazily so the model and mappings load without Flask)."""
    from cds_service.app import create_app as _create_app

    return _create_app(config)
