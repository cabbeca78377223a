"""Streamed chat completions (SSE), with the stream-failure rules.

The upstream is opened and its first event read *before* the response starts, so an upstream
that fails before its first chunk is simply passed over for the next model (the client sees
nothing of it but X-Scope-Fallbacks). Once chunks have been relayed, a failure cannot be hidden:
the stream ends with an OpenAI-shaped error event and without `data: [DONE]` (so no client can
mistake a cut answer for a complete one), and the outcome is recorded as partial.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from providers.adapters import adapter_for
from providers.adapters.base import StreamEvent, Target, Usage
from providers.balancing import deployment_record_failure
from providers.chat_request import chat_body_parse
from providers.circuit import circuit_record_failure
from providers.execution import Plan, chat_plan, count_tokens, plan_fail, plan_finish, run_attempts
from providers.http import ProviderError
from providers.openai_format import chunk, error_body, sse
from routing.models import ApiKey
from scope_site import metrics
from scope_site.errors import ApplicationError, ServiceUnavailable


@dataclass(frozen=True, slots=True)
class ChatStream:
    decision_id: str
    model: str
    fallbacks: tuple[str, ...]
    events: Iterator[bytes]  # SSE frames, ready to send


def chat_stream(*, api_key: ApiKey | None, body: Any) -> ChatStream:
    """Decide, open the first upstream that starts answering, and return its relayed SSE frames."""
    parsed = chat_body_parse(body)
    plan = chat_plan(api_key=api_key, parsed=parsed)

    def call(target: Target) -> tuple[StreamEvent, Iterator[StreamEvent]]:
        events = adapter_for(target.kind).stream(target, plan.request)
        try:
            first = next(events)
        except StopIteration:
            raise ProviderError(
                "upstream stream ended before any chunk", permanent=False, error_class="stream_cut"
            ) from None
        return first, events

    try:
        (first, events), target, begun = run_attempts(plan, call)
    except ApplicationError as exc:
        plan_fail(plan, exc, endpoint="chat_stream")
        raise
    except BaseException:
        plan_fail(plan, ServiceUnavailable("interrupted"), endpoint="chat_stream")
        raise
    fallbacks = tuple(plan.failed_models(answered=target.model))
    frames = _relay(plan, target, begun, itertools.chain([first], events), upstream=events)
    return ChatStream(decision_id=plan.decision_id, model=target.model, fallbacks=fallbacks, events=frames)


def _relay(
    plan: Plan,
    target: Target,
    begun: float,
    events: Iterator[StreamEvent],
    *,
    upstream: Iterator[StreamEvent],
) -> Iterator[bytes]:
    simulated = adapter_for(target.kind).simulated
    created = int(time.time())
    frame: dict[str, Any] = {
        "decision_id": plan.decision_id,
        "model": target.model,
        "created": created,
        "simulated": simulated,
    }
    text: list[str] = []
    usage: Usage | None = None
    ttft: float | None = None
    finished = False
    status, error_class = "partial", "client_disconnected"
    try:
        try:
            for event in events:
                if event.system_fingerprint:  # the upstream's, on every chunk relayed after it
                    frame["system_fingerprint"] = event.system_fingerprint
                if event.usage is not None:
                    usage = event.usage
                if event.text:
                    if ttft is None:
                        ttft = time.monotonic() - begun
                        metrics.UPSTREAM_TTFT_SECONDS.labels(target.model, target.provider).observe(ttft)
                    text.append(event.text)
                if event.delta or event.finish_reason or event.logprobs:
                    finished = finished or event.finish_reason is not None
                    yield sse(
                        chunk(
                            **frame,
                            delta=event.delta,
                            finish_reason=event.finish_reason,
                            logprobs=event.logprobs,
                        )
                    )
        except ProviderError as err:
            status, error_class = "partial", err.error_class
            _stream_failed(target, err, begun)
            yield sse(
                error_body(
                    status=502,
                    message=f"{target.model} failed mid-stream ({err.error_class}): {err.message}. "
                    "The answer above is incomplete.",
                    code=err.error_class,
                    decision_id=plan.decision_id,
                )
            )
            return
        if not finished:
            yield sse(chunk(**frame, delta={}, finish_reason="stop"))
        tokens = count_tokens(plan, usage, "".join(text))
        status, error_class = "ok", ""
        metrics.UPSTREAM_CALLS.labels(target.model, target.provider, "ok").inc()
        metrics.UPSTREAM_SECONDS.labels(target.model, target.provider).observe(time.monotonic() - begun)
        if plan.parsed.include_usage:
            yield sse(chunk(**frame, usage=tokens))
        yield sse("[DONE]")
    finally:
        close = getattr(upstream, "close", None)
        if close is not None:
            close()  # release the upstream connection (also when the client went away)
        plan_finish(
            plan,
            status=status,
            target=target,
            tokens=count_tokens(plan, usage, "".join(text)),
            latency_s=time.monotonic() - begun,
            ttft_s=ttft,
            error_class=error_class,
            endpoint="chat_stream",
        )


def _stream_failed(target: Target, err: ProviderError, begun: float) -> None:
    metrics.UPSTREAM_CALLS.labels(target.model, target.provider, err.error_class).inc()
    metrics.UPSTREAM_SECONDS.labels(target.model, target.provider).observe(time.monotonic() - begun)
    # as for a failed attempt: the deployment's circuit counts it; the model's only when no healthy
    # sibling deployment is left to serve it
    if deployment_record_failure(target, error_class=err.error_class):
        circuit_record_failure(target.model, error_class=err.error_class)
