"""The risk model: the model card (data) and the Cox engine that scores it."""

from cds_service.model.card import (
    Alerting,
    ModelCard,
    ModelCardError,
    Tier,
    load_model_card,
    parse_model_card,
)
from cds_service.model.engine import RecurrenceModel, Scenario

__all__ = [
    "Alerting",
    "ModelCard",
    "ModelCardError",
    "RecurrenceModel",
    "Scenario",
    "Tier",
    "load_model_card",
    "parse_model_card",
]
