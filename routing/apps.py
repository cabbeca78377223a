from __future__ import annotations

from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self) -> None:
        from routing import schema  # noqa: F401  (registers the OpenAPI auth extension)

        _check_extra_strategies()


def _check_extra_strategies() -> None:
    """Import SCOPE_EXTRA_STRATEGIES now: a bad entry stops the process at start, not every request."""
    from django.conf import settings

    from routing.engine.strategies import load_strategies
    from scope_site.env import ConfigurationError

    try:
        load_strategies(settings.SCOPE_EXTRA_STRATEGIES)
    except (ValueError, ImportError, AttributeError, TypeError) as exc:
        raise ConfigurationError(f"SCOPE_EXTRA_STRATEGIES: {exc}") from None
