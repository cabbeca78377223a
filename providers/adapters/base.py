"""What every adapter takes and gives: one request shape in, OpenAI chat-format pieces out."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from providers.http import ProviderError


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: a model at a provider (or at one of its deployments)."""

    model: str  # SCOPE's model name (what the client sees)
    upstream_model: str  # the model id the provider expects
    provider: str
    kind: str
    base_url: str = ""
    api_key_env: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0
    sim_profile: Mapping[str, Any] = field(default_factory=dict)
    deployment: str = ""  # set when a load balancer picked one of the model's deployments

    def api_key(self) -> str:
        """The provider key, read from the environment at call time; never stored or logged."""
        if not self.api_key_env:
            return ""
        value = os.environ.get(self.api_key_env, "")
        if not value:
            raise ProviderError(
                f"provider {self.provider!r}: environment variable {self.api_key_env} is not set",
                permanent=True,
                error_class="config",
                status=401,
            )
        return value


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat-completions request. `params` are the OpenAI sampling/tool options to forward."""

    messages: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    # the field the client set it in: OpenAI's reasoning models refuse `max_tokens`, so an
    # OpenAI-compatible upstream gets the one the client used
    max_tokens_param: str = "max_tokens"

    @property
    def temperature(self) -> float | None:
        value = self.params.get("temperature")
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer: the assistant message in OpenAI shape, why it stopped, usage if reported."""

    message: Mapping[str, Any]
    finish_reason: str
    usage: Usage | None
    simulated: bool = False
    logprobs: Any = None  # choices[0].logprobs as the upstream sent it (OpenAI-compatible only)
    system_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One piece of a streamed answer: a delta (OpenAI shape), and/or the finish reason, and/or usage."""

    delta: Mapping[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: Any = None  # the chunk's choices[0].logprobs (OpenAI-compatible only)
    system_fingerprint: str | None = None

    @property
    def text(self) -> str:
        content = self.delta.get("content")
        return content if isinstance(content, str) else ""


class Adapter(Protocol):
    """One provider kind. Both calls raise ProviderError; `stream` raises it before or between events.

    `stream` must end normally only when the upstream signalled a complete answer; an upstream
    that stops early makes it raise ProviderError(error_class="stream_cut").
    """

    kind: str
    simulated: bool

    def complete(self, target: Target, request: ChatRequest) -> Completion: ...

    def stream(self, target: Target, request: ChatRequest) -> Iterator[StreamEvent]: ...


def usage_from(prompt: Any, completion: Any) -> Usage | None:
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        return Usage(input_tokens=prompt, output_tokens=completion)
    return None


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def bad_body(what: str) -> ProviderError:
    """The upstream answered something that is not the protocol's shape (transient: try elsewhere)."""
    return ProviderError(
        f"upstream sent an unexpected body: {what}", permanent=False, error_class="bad_response"
    )
