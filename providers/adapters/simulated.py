"""The built-in demo provider: no network, answers derived deterministically from the request.

Latency and success follow the model's `sim_profile`:
  latency_ms     time to the first token (default 300)
  tokens_per_s   generation speed (default 80)
  failure_rate   share of calls that fail with `fail_status` (default 0; 1 = always fails)
  fail_status    HTTP status a failure imitates (default 503; 429 adds Retry-After 1 s)
  cut_rate       share of streams cut midway (default 0)
  quality        the profile's answer quality (0–1), reported in the answer
Real sleeps are divided by SCOPE_SIMULATED_SPEEDUP so tests stay fast. Every answer says it is
simulated (`scope_simulated: true`, `system_fingerprint: "scope-simulated"`, and in its text).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from providers.adapters.base import ChatRequest, Completion, StreamEvent, Target, Usage
from providers.http import PERMANENT_STATUSES, ProviderError
from routing.features import estimate_tokens, message_text

SIMULATED_FINGERPRINT = "scope-simulated"
_SENTENCES = (
    "A real provider would answer the question itself at this point.",
    "This text comes from SCOPE's built-in demo provider: no model was called and no key was needed.",
    "Routing, fallbacks, retries, streaming, budgets and metrics behave exactly as with real traffic.",
    "The decision behind this answer is in the decision log, with every candidate and its predicted "
    "quality, cost and latency.",
    "Its length, speed and failures follow the model's sim_profile in the catalog.",
    "Give a provider the kind openai_compatible or anthropic and a base_url to route real requests.",
    "The usage block counts the words of this answer as its tokens.",
)
_random = random.Random()


def _speedup() -> float:
    return max(float(getattr(settings, "SCOPE_SIMULATED_SPEEDUP", 1.0)), 1e-6)


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds / _speedup())


def _profile_float(target: Target, key: str, default: float) -> float:
    value = target.sim_profile.get(key, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _prompt(request: ChatRequest) -> str:
    return "\n".join(message_text(m.get("content")) for m in request.messages)


def _answer_words(target: Target, request: ChatRequest) -> list[str]:
    prompt = _prompt(request)
    seed = int.from_bytes(hashlib.sha256(f"{target.model}\n{prompt}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    last_user = next(
        (message_text(m.get("content")) for m in reversed(request.messages) if m.get("role") == "user"), ""
    )
    topic = " ".join(last_user.split()[:12]) or "your message"
    quality = _profile_float(target, "quality", 0.7)
    words = f"[simulated {target.model}, quality {quality:.2f}] You asked: “{topic}”.".split()
    wanted = 24 + seed % 72
    if request.max_tokens is not None:
        wanted = min(wanted, max(request.max_tokens, 1))
    order = list(_SENTENCES)
    rng.shuffle(order)
    while len(words) < wanted:
        words.extend(" ".join(order).split())
    words = words[:wanted]
    words[-1] = words[-1].rstrip(".,:;") + "."
    return words


def _maybe_fail(target: Target) -> None:
    if _random.random() >= _profile_float(target, "failure_rate", 0.0):
        return
    status = int(_profile_float(target, "fail_status", 503))
    message = f"simulated failure of {target.model} (sim_profile.failure_rate)"
    if status == 429:
        raise ProviderError(message, permanent=False, error_class="rate_limited", status=429, retry_after=1.0)
    if status in PERMANENT_STATUSES:
        error_class = {401: "auth", 403: "auth", 404: "not_found"}.get(status, "bad_request")
        raise ProviderError(message, permanent=True, error_class=error_class, status=status)
    raise ProviderError(message, permanent=False, error_class="upstream_error", status=status)


class SimulatedAdapter:
    kind = "simulated"
    simulated = True

    def _timing(self, target: Target) -> tuple[float, float]:
        ttft = max(_profile_float(target, "latency_ms", 300.0), 0.0) / 1000.0
        per_token = 1.0 / max(_profile_float(target, "tokens_per_s", 80.0), 1e-3)
        return ttft, per_token

    def complete(self, target: Target, request: ChatRequest) -> Completion:
        ttft, per_token = self._timing(target)
        _maybe_fail(target)
        words = _answer_words(target, request)
        _sleep(ttft + per_token * len(words))
        finish = "length" if request.max_tokens is not None and len(words) >= request.max_tokens else "stop"
        return Completion(
            message={"role": "assistant", "content": " ".join(words)},
            finish_reason=finish,
            usage=Usage(input_tokens=estimate_tokens(_prompt(request)), output_tokens=len(words)),
            simulated=True,
        )

    def stream(self, target: Target, request: ChatRequest) -> Iterator[StreamEvent]:
        ttft, per_token = self._timing(target)
        _maybe_fail(target)  # before the first chunk: the caller can still fall back
        words = _answer_words(target, request)
        cut_at = len(words) // 2 if _random.random() < _profile_float(target, "cut_rate", 0.0) else None
        return self._events(target, request, words, ttft, per_token, cut_at)

    def _events(
        self,
        target: Target,
        request: ChatRequest,
        words: list[str],
        ttft: float,
        per_token: float,
        cut_at: int | None,
    ) -> Iterator[StreamEvent]:
        _sleep(ttft)
        yield StreamEvent(delta={"role": "assistant", "content": ""})
        step = 4
        for start in range(0, len(words), step):
            if cut_at is not None and start >= cut_at:
                raise ProviderError(
                    "simulated stream cut (sim_profile.cut_rate)", permanent=False, error_class="stream_cut"
                )
            piece = words[start : start + step]
            _sleep(per_token * len(piece))
            yield StreamEvent(delta={"content": ("" if start == 0 else " ") + " ".join(piece)})
        finish = "length" if request.max_tokens is not None and len(words) >= request.max_tokens else "stop"
        yield StreamEvent(
            finish_reason=finish,
            usage=Usage(input_tokens=estimate_tokens(_prompt(request)), output_tokens=len(words)),
        )


def simulated_marker() -> dict[str, Any]:
    """Fields every simulated response carries (also used in tests and the UI)."""
    return {"scope_simulated": True, "system_fingerprint": SIMULATED_FINGERPRINT}
