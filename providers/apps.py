from __future__ import annotations

from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = "Providers and models"

    def ready(self) -> None:
        from providers.deployments import deployments_load
        from routing.services.catalog import SECTION_LOADERS

        SECTION_LOADERS.setdefault("deployments", deployments_load)  # the catalog's `deployments:` section
