"""The dashboard's own writes (everything else goes through the owning app's services)."""

from __future__ import annotations

from django.db import transaction

from providers.models import LLMModel
from routing.models import ControlAction
from routing.selectors import catalog_invalidate
from routing.services.control_events import control_event_record
from scope_site.errors import NotFound


def llm_model_set_enabled(*, model_id: int, enabled: bool, actor: str) -> LLMModel:
    """Take a model out of (or back into) routing; every process sees it within the catalog TTL."""
    with transaction.atomic():
        model = LLMModel.objects.select_for_update().select_related("provider").filter(pk=model_id).first()
        if model is None:
            raise NotFound(f"no model {model_id}")
        if model.enabled != enabled:
            model.enabled = enabled
            model.save(update_fields=["enabled", "updated_at"])
            control_event_record(
                actor=actor,
                action=ControlAction.MODEL_ENABLE if enabled else ControlAction.MODEL_DISABLE,
                target=f"model:{model.name}",
                detail={"provider": model.provider.name},
            )
            transaction.on_commit(catalog_invalidate)
    return model
