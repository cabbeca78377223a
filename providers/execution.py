"""Execute a chat completion: decide, then call the chosen model and its ranked fallbacks.

The one layer that retries. For each model in decision order:
  * an open circuit (or a deployment at its limit) skips the model: it counts as a fallback;
  * a half-open circuit lets one call through as its probe; with deployments, that call tries the
    model's deployments in turn until one answers (closing the circuit) or none is left (the last
    failure re-opens it); a probe that ends without a verdict is released for the next call;
  * a transient error with an HTTP status (429, 5xx) is retried on the same model up to
    SCOPE_RETRIES_PER_MODEL times, waiting max(Retry-After, exponential backoff) — unless the wait
    is over SCOPE_RETRY_MAX_WAIT_S or past the SCOPE_EXECUTION_BUDGET_S deadline: then we move on;
  * timeouts and connection errors move straight to the next model (waiting again rarely helps);
  * a permanent provider error (401/403/404: key, model id or URL wrong) moves to the next model,
    never retried; a request the upstream refused as bad (400/413/422) ends the call with a 400,
    since no other model would take it either;
  * a request an adapter cannot express for its provider (an unsupported tool type) moves to the
    next model without counting against any circuit; when every model tried refused it so, the
    request is the problem: a 400 naming the field, not a 503.
No database transaction is open while any provider is called. Every call ends in exactly one
Outcome row linked to its decision.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings

from feedback.models import Outcome
from feedback.services.outcomes import TokenCount, outcome_cost_usd, outcome_record
from providers.adapters import adapter_for
from providers.adapters.base import ChatRequest, Completion, Target, Usage
from providers.balancing import (
    DeploymentsUnavailable,
    deployment_acquire,
    deployment_record_failure,
    deployment_release,
)
from providers.chat_request import ParsedChat, chat_body_parse
from providers.circuit import (
    CircuitState,
    circuit_enter,
    circuit_probe_release,
    circuit_record_failure,
    circuit_record_success,
    circuit_status,
)
from providers.decisions import chat_decide
from providers.http import ProviderError
from providers.models import LLMModel
from providers.openai_format import completion_body, completion_id
from routing.engine.types import ModelSpec
from routing.features import estimate_tokens, message_text
from routing.models import ApiKey, DecisionKind
from routing.response_cache import ResponseCacheProbe, request_fingerprint
from routing.services.limits import (
    BudgetReservation,
    budget_raise,
    budget_reserve,
    budget_settle,
    rpm_admit,
)
from scope_site import metrics
from scope_site.db_pool import db_connection_release
from scope_site.errors import ApplicationError, InvalidRequest, RateLimited, ServiceUnavailable

T = TypeVar("T")
_RETRY_ON_SAME_MODEL = frozenset({429, 500, 502, 503, 504, 520, 522, 524, 529})


class TargetUnavailable(Exception):
    """Raised by the deployment hook when every deployment of a model is at its limit (like an open circuit)."""

    def __init__(self, reason: str, *, error_class: str = "deployment_limit"):
        super().__init__(reason)
        self.reason = reason
        self.error_class = error_class


@dataclass(slots=True)
class Attempt:
    model: str
    provider: str
    result: str  # ok | error | skipped
    error_class: str = ""
    status: int | None = None
    message: str = ""
    latency_ms: float | None = None
    retry_after_s: float | None = None
    deployment: str = ""
    param: str = ""  # the request field the error names, if any

    def as_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "model": self.model,
                "provider": self.provider,
                "deployment": self.deployment or None,
                "result": self.result,
                "error_class": self.error_class or None,
                "status": self.status,
                "message": self.message or None,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
                "retry_after_s": self.retry_after_s,
                "param": self.param or None,
            }.items()
            if v is not None
        }

    def why(self) -> str:
        if self.result == "skipped":
            return self.error_class
        return f"{self.error_class} {self.status}" if self.status else self.error_class


@dataclass(slots=True)
class Plan:
    """A logged decision about to be executed, with what the attempts need."""

    parsed: ParsedChat
    api_key: ApiKey | None
    decision_id: str
    policy_slug: str
    strategy: str
    order: tuple[str, ...]
    specs: Mapping[str, ModelSpec]
    rows: Mapping[str, LLMModel]
    input_tokens: int
    reservation: BudgetReservation | None = None
    costs: Mapping[str, float] = field(default_factory=dict)  # predicted cost per model (budget top-ups)
    cache: ResponseCacheProbe | None = None  # the response cache's view of this request (not for streams)
    started: float = field(default_factory=time.monotonic)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def request(self) -> ChatRequest:
        return self.parsed.request

    def failed_models(self, *, answered: str = "") -> list[str]:
        """Models tried or skipped before the answering one, in order, each with why (X-Scope-Fallbacks).

        The answering model is not among them even if one of its tries failed before a retry worked.
        """
        seen: dict[str, str] = {}
        for a in self.attempts:
            if a.result != "ok" and a.model != answered:
                seen[a.model] = a.why()
        return [f"{model} ({why})" for model, why in seen.items()]


@dataclass(frozen=True, slots=True)
class ChatResult:
    decision_id: str
    model: str
    fallbacks: tuple[str, ...]
    body: dict[str, Any]
    outcome_id: int
    cache_hit: bool = False


class ExecutionFailed(ServiceUnavailable):
    code = "all_models_failed"


# --- hooks -----------------------------------------------------------------------------------


def target_acquire(row: LLMModel, *, estimated_tokens: int, exclude: Collection[str] = ()) -> Target:
    """Where the next call to `row` goes (not to the deployments in `exclude`).

    HOOK(balancing): providers/balancing.py picks one of the model's healthy deployments under
    its RPM/TPM limits (weighted, least-busy or latency, per model) and raises TargetUnavailable
    when all are at their limit. Without deployments the model's own provider serves it.
    """
    try:
        return deployment_acquire(row, estimated_tokens=estimated_tokens, exclude=exclude)
    except DeploymentsUnavailable as exc:
        raise TargetUnavailable(exc.reason) from None


def target_release(target: Target, *, ok: bool, tokens: int, latency_s: float) -> None:
    """HOOK(balancing): the call to `target` ended; deployments count in-flight calls, TPM and latency."""
    deployment_release(target, ok=ok, tokens=tokens, latency_s=latency_s)


# --- planning --------------------------------------------------------------------------------


def chat_plan(*, api_key: ApiKey | None, parsed: ParsedChat, kind: str = DecisionKind.CHAT) -> Plan:
    """Admit, decide (one logged decision row), and reserve the predicted cost."""
    if kind != DecisionKind.JOB:  # a job was admitted (and counted) when it was submitted
        rpm_admit(api_key=api_key)  # HOOK(limits): per-key requests per minute → 429 with Retry-After
    # HOOK(response cache): looked up once the decision is known, before its row is written
    probe = None
    if not parsed.stream:
        probe = ResponseCacheProbe(
            api_key_id=api_key.pk if api_key is not None else None,
            fingerprint=request_fingerprint(
                messages=parsed.request.messages,
                params=parsed.request.params,
                max_tokens=parsed.request.max_tokens,
                requested_model=parsed.model,
            ),
        )
    decided = chat_decide(api_key=api_key, parsed=parsed, kind=kind, cache_probe=probe)
    order = decided.order
    rows = {r.name: r for r in LLMModel.objects.select_related("provider").filter(name__in=order)}
    plan = Plan(
        parsed=parsed,
        api_key=api_key,
        decision_id=decided.decision_id,
        policy_slug=decided.policy_slug,
        strategy=decided.strategy,
        order=order,
        specs=decided.specs,
        rows=rows,
        input_tokens=decided.input_tokens,
        costs=decided.costs,
        cache=probe,
    )
    if api_key is not None and (probe is None or probe.hit is None):  # a cache hit costs nothing
        # HOOK(limits): reserve the predicted cost now, settle with the actual cost after the call,
        # so concurrent calls of one key cannot overshoot its daily / monthly budget
        try:
            plan.reservation = budget_reserve(api_key=api_key, predicted_cost_usd=decided.predicted_cost_usd)
        except RateLimited as exc:
            # the decision row exists: the answer names it (X-Scope-Decision-Id and the error body),
            # and a "refused" outcome says why it was never executed (kept out of the error rates)
            endpoint = "job" if kind == DecisionKind.JOB else "chat_stream" if parsed.stream else "chat"
            plan_refuse(plan, exc, endpoint=endpoint)
            exc.extra.setdefault("decision_id", str(decided.decision_id))
            raise
    return plan


def plan_refuse(plan: Plan, exc: ApplicationError, *, endpoint: str) -> None:
    """The call was refused before any attempt (budget): an unbilled "refused" outcome."""
    model_name = plan.order[0] if plan.order else ""
    outcome_record(
        decision_id=plan.decision_id,
        model=plan.specs.get(model_name),
        model_name=model_name,
        status=Outcome.Status.REFUSED,
        tokens=TokenCount(plan.input_tokens, 0, estimated=True),
        latency_ms=None,
        error_class=exc.code,
    )
    metrics.REQUESTS.labels(endpoint, plan.policy_slug, model_name, Outcome.Status.REFUSED).inc()


# --- the attempt loop ------------------------------------------------------------------------


def _deadline_left(plan: Plan) -> float:
    return float(settings.SCOPE_EXECUTION_BUDGET_S) - (time.monotonic() - plan.started)


def _retry_wait(plan: Plan, err: ProviderError, tries: int) -> float | None:
    """Seconds to wait before trying the same model again, or None to move on to the next model."""
    if (
        err.permanent
        or err.status not in _RETRY_ON_SAME_MODEL
        or tries > int(settings.SCOPE_RETRIES_PER_MODEL)
    ):
        return None
    wait = float(settings.SCOPE_RETRY_BACKOFF_S) * (2 ** (tries - 1))
    if err.retry_after is not None:
        wait = max(wait, err.retry_after)
    if wait > float(settings.SCOPE_RETRY_MAX_WAIT_S) or wait >= _deadline_left(plan):
        return None
    return wait


def _skip(plan: Plan, model: str, provider: str, error_class: str, message: str) -> None:
    plan.attempts.append(
        Attempt(model=model, provider=provider, result="skipped", error_class=error_class, message=message)
    )
    metrics.FALLBACKS.labels(plan.policy_slug, model, error_class).inc()


def _reserve_for(plan: Plan, model: str) -> str:
    """A fallback predicted to cost more than what admission reserved raises the reservation first
    (HOOK(limits)): "" when it fits the key's budget, else why not (the fallback is skipped)."""
    cost = plan.costs.get(model)
    if plan.reservation is None or cost is None:
        return ""
    try:
        plan.reservation = budget_raise(reservation=plan.reservation, predicted_cost_usd=cost)
    except RateLimited as exc:
        return exc.message
    return ""


def run_attempts(plan: Plan, call: Callable[[Target], T]) -> tuple[T, Target, float]:
    """Call `call(target)` down the decision's order; returns (result, target, start of the good attempt)."""
    for model in plan.order:
        row = plan.rows.get(model)
        if row is None:
            _skip(plan, model, "", "model_removed", "the model left the catalog after the decision")
            continue
        over_budget = _reserve_for(plan, model)
        if over_budget:
            _skip(plan, model, row.provider.name, "budget_exceeded", over_budget)
            continue
        entry = circuit_enter(model)
        if entry.blocked is not None:
            _skip(plan, model, row.provider.name, "circuit_open", entry.blocked.reason)
            continue
        try:
            answered = _model_attempts(plan, row, call, probing=entry.probe)
        finally:
            if entry.probe:
                # a success closed the circuit and a failure that counts re-opened it; anything else
                # (a bad request, no deployment left with room, the time budget, an interruption)
                # ends the probe without a verdict, and the next call probes again
                circuit_probe_release(model)
        if answered is not None:
            return answered
    refused = [a for a in plan.attempts if a.result != "ok"]
    if refused and all(a.error_class == "unsupported" for a in refused):
        # no model failed: none can express the request, so retrying later would not help
        raise InvalidRequest(
            "No model in the decision can serve this request: "
            + "; ".join(f"{a.model}: {a.message}" for a in refused),
            extra={"decision_id": plan.decision_id, "param": refused[0].param or None},
        )
    raise _give_up(plan, "every model in the decision failed or was unavailable")


def _model_attempts(
    plan: Plan, row: LLMModel, call: Callable[[Target], T], *, probing: bool
) -> tuple[T, Target, float] | None:
    """Try one model: its answer, or None to fall back to the next model.

    A failed deployment normally sends the call on to the next model. But while this call holds
    the model's half-open probe, a deployment failure that does not count against the model (a
    sibling deployment can still serve) leaves the probe without a verdict, so the model's other
    deployments are tried first: one answering closes the circuit, the last one failing re-opens it.
    """
    model = row.name
    tried: list[str] = []
    while True:
        try:
            target = target_acquire(
                row,
                estimated_tokens=plan.input_tokens + (plan.request.max_tokens or 0),
                exclude=tried,
            )
        except TargetUnavailable as exc:
            if not tried:  # after a failed deployment its error is what the fallback reports
                _skip(plan, model, row.provider.name, exc.error_class, exc.reason)
            return None
        tries = 0
        while True:
            tries += 1
            left = _deadline_left(plan)
            if left <= 0:
                target_release(target, ok=False, tokens=0, latency_s=0.0)
                raise _give_up(plan, "the execution time budget (SCOPE_EXECUTION_BUDGET_S) ran out")
            db_connection_release()  # the call may take seconds; other requests may need the connection
            begun = time.monotonic()
            try:
                # no attempt may outlive the budget: its timeouts shrink to what is left of it
                result = call(_within(target, left))
            except ProviderError as err:
                elapsed = time.monotonic() - begun
                counted = _attempt_failed(plan, target, err, elapsed)
                target_release(target, ok=False, tokens=0, latency_s=elapsed)
                if err.request_is_bad:
                    raise InvalidRequest(
                        f"{model} refused the request: {err.message}",
                        code="upstream_rejected_request",
                        # the upstream's `param` names the field at fault (OpenAI's error shape)
                        extra={"decision_id": plan.decision_id, "param": err.param},
                    ) from None
                wait = _retry_wait(plan, err, tries)
                # no retry into an open circuit: the model's, or this deployment's (the failure may
                # just have opened it)
                where = f"{model}@{target.deployment}" if target.deployment else model
                if (
                    wait is None
                    or circuit_status(model).state is not CircuitState.CLOSED
                    or circuit_status(where).state is not CircuitState.CLOSED
                ):
                    metrics.FALLBACKS.labels(plan.policy_slug, model, err.error_class).inc()
                    break
                time.sleep(wait)
                continue
            except BaseException:
                target_release(target, ok=False, tokens=0, latency_s=time.monotonic() - begun)
                raise
            circuit_record_success(model)
            return result, target, begun
        if not (probing and target.deployment and not counted):
            return None
        tried.append(target.deployment)


def _within(target: Target, seconds: float) -> Target:
    if target.read_timeout_s <= seconds and target.connect_timeout_s <= seconds:
        return target
    return dataclasses.replace(
        target,
        connect_timeout_s=min(target.connect_timeout_s, seconds),
        read_timeout_s=min(target.read_timeout_s, seconds),
    )


def _attempt_failed(plan: Plan, target: Target, err: ProviderError, elapsed_s: float) -> bool:
    """Record a failed attempt; returns whether it counted against the model's circuit."""
    plan.attempts.append(
        Attempt(
            model=target.model,
            provider=target.provider,
            deployment=target.deployment,
            result="error",
            error_class=err.error_class,
            status=err.status,
            message=err.message[:300],
            latency_ms=elapsed_s * 1000,
            retry_after_s=err.retry_after,
            param=err.param or "",
        )
    )
    metrics.UPSTREAM_CALLS.labels(target.model, target.provider, err.error_class).inc()
    metrics.UPSTREAM_SECONDS.labels(target.model, target.provider).observe(elapsed_s)
    # HOOK(balancing): a deployment's failure counts against its own circuit; the model's circuit
    # only counts it when no other deployment of the model is left to serve
    if (
        err.request_is_bad
        or err.unsupported  # the request, not the upstream: no circuit counts it
        or not deployment_record_failure(target, error_class=err.error_class)
    ):
        return False
    circuit_record_failure(target.model, error_class=err.error_class)
    return True


def _give_up(plan: Plan, summary: str) -> ExecutionFailed:
    tried = ", ".join(plan.failed_models()) or "none"
    return ExecutionFailed(
        f"{summary}. Tried: {tried}.",
        extra={
            "decision_id": plan.decision_id,
            "fallbacks": plan.failed_models(),
            "attempts": [a.as_dict() for a in plan.attempts],
        },
    )


# --- finishing -------------------------------------------------------------------------------


def count_tokens(plan: Plan, usage: Usage | None, output_text: str) -> TokenCount:
    if usage is not None:
        return TokenCount(usage.input_tokens, usage.output_tokens, estimated=False)
    return TokenCount(plan.input_tokens, estimate_tokens(output_text) if output_text else 0, estimated=True)


def plan_finish(
    plan: Plan,
    *,
    status: str,
    target: Target | None,
    tokens: TokenCount,
    latency_s: float | None,
    ttft_s: float | None = None,
    error_class: str = "",
    endpoint: str = "chat",
) -> int:
    """Release the deployment, settle the budget, record the outcome, count the metrics → outcome id."""
    model_name = target.model if target else (plan.attempts[-1].model if plan.attempts else "")
    spec = plan.specs.get(model_name)
    if target is not None and status != "error":
        plan.attempts.append(
            Attempt(
                model=target.model,
                provider=target.provider,
                deployment=target.deployment,
                result="ok" if status == "ok" else "error",
                error_class="" if status == "ok" else error_class,
                latency_ms=None if latency_s is None else latency_s * 1000,
            )
        )
    cost = 0.0 if status == "error" else float(outcome_cost_usd(model=spec, tokens=tokens))
    if target is not None and status != "error":
        target_release(
            target,
            ok=status == "ok",
            tokens=tokens.input_tokens + tokens.output_tokens,
            latency_s=latency_s or 0.0,
        )
    if plan.reservation is not None:
        budget_settle(reservation=plan.reservation, actual_cost_usd=cost)  # HOOK(limits)
    # written last: once the outcome row exists, all bookkeeping of the call is done
    outcome = outcome_record(
        decision_id=plan.decision_id,
        model=spec,
        model_name=model_name,
        status=status,
        tokens=tokens,
        latency_ms=None if latency_s is None else latency_s * 1000,
        ttft_ms=None if ttft_s is None else ttft_s * 1000,
        error_class=error_class,
        attempts=[a.as_dict() for a in plan.attempts],
        total_ms=(time.monotonic() - plan.started) * 1000,
    )
    metrics.REQUESTS.labels(endpoint, plan.policy_slug, model_name, status).inc()
    if target is not None and status != "error":
        metrics.SPEND.labels(plan.policy_slug, model_name).inc(cost)
        metrics.TOKENS.labels(model_name, "input").inc(tokens.input_tokens)
        metrics.TOKENS.labels(model_name, "output").inc(tokens.output_tokens)
    return outcome.id


def plan_fail(plan: Plan, exc: ApplicationError, *, endpoint: str) -> None:
    """Nothing answered: an error outcome (costs nothing; the reservation is released)."""
    plan_finish(
        plan,
        status="error",
        target=None,
        tokens=TokenCount(plan.input_tokens, 0, estimated=True),
        latency_s=time.monotonic() - plan.started,
        error_class=plan.attempts[-1].error_class if plan.attempts else exc.code,
        endpoint=endpoint,
    )


# --- the service -----------------------------------------------------------------------------


def chat_complete(*, api_key: ApiKey | None, body: Any, kind: str = DecisionKind.CHAT) -> ChatResult:
    """A whole (non-streamed) chat completion: the service behind /v1/chat/completions and async jobs."""
    parsed = chat_body_parse(body)
    plan = chat_plan(api_key=api_key, parsed=parsed, kind=kind)
    endpoint = "job" if kind == DecisionKind.JOB else "chat"
    if plan.cache is not None and plan.cache.hit is not None:  # HOOK(response cache): no call, no cost
        cached = plan.cache.replay(
            decision_id=plan.decision_id, completion_id=completion_id(plan.decision_id)
        )
        model_name = str(cached.get("model") or plan.order[0])
        metrics.REQUESTS.labels(endpoint, plan.policy_slug, model_name, "cache_hit").inc()
        return ChatResult(
            decision_id=plan.decision_id,
            model=model_name,
            fallbacks=(),
            body=cached,
            outcome_id=0,
            cache_hit=True,
        )

    def call(target: Target) -> Completion:
        return adapter_for(target.kind).complete(target, plan.request)

    try:
        completion, target, begun = run_attempts(plan, call)
    except ApplicationError as exc:
        plan_fail(plan, exc, endpoint=endpoint)
        raise
    except BaseException:
        plan_fail(plan, ServiceUnavailable("interrupted"), endpoint=endpoint)
        raise
    latency_s = time.monotonic() - begun
    metrics.UPSTREAM_CALLS.labels(target.model, target.provider, "ok").inc()
    metrics.UPSTREAM_SECONDS.labels(target.model, target.provider).observe(latency_s)
    tokens = count_tokens(plan, completion.usage, message_text(completion.message.get("content")))
    fallbacks = tuple(plan.failed_models(answered=target.model))
    outcome_id = plan_finish(
        plan, status="ok", target=target, tokens=tokens, latency_s=latency_s, endpoint=endpoint
    )
    spec = plan.specs.get(target.model)
    body_out = completion_body(
        plan=plan,
        model=target.model,
        completion=completion,
        tokens=tokens,
        simulated=adapter_for(target.kind).simulated,
        cost_usd=float(outcome_cost_usd(model=spec, tokens=tokens)),
        fallbacks=fallbacks,
    )
    if plan.cache is not None:
        plan.cache.store(body_out)  # HOOK(response cache): only when the policy caches
    return ChatResult(
        decision_id=plan.decision_id,
        model=target.model,
        fallbacks=fallbacks,
        body=body_out,
        outcome_id=outcome_id,
    )
