"""Provider adapters by kind: one module each, all alike (see base.Adapter)."""

from __future__ import annotations

from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.base import Adapter
from providers.adapters.openai_compatible import OpenAICompatibleAdapter
from providers.adapters.simulated import SimulatedAdapter
from providers.http import ProviderError

ADAPTERS: dict[str, Adapter] = {
    adapter.kind: adapter for adapter in (OpenAICompatibleAdapter(), AnthropicAdapter(), SimulatedAdapter())
}


def adapter_for(kind: str) -> Adapter:
    adapter = ADAPTERS.get(kind)
    if adapter is None:
        raise ProviderError(f"no adapter for provider kind {kind!r}", permanent=True, error_class="config")
    return adapter
