"""calibrate_policy: set a policy's α from logged or imported traffic, publishing a new version."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from feedback.models import EvalOutcome, EvalPrompt
from routing.engine.prior import PriorPredictor
from routing.engine.types import ModelSpec, PolicySpec, Predictor
from routing.features import (
    FeatureLogError,
    RequestFeatures,
    extract_prompt_features,
    request_features_from_log,
)
from routing.models import DecisionLog, PolicyVersion
from routing.predictor.calibration import AlphaPoint, choose_for_cost, choose_for_share, sweep
from routing.predictor.registry import active_predictor
from routing.selectors import model_specs, policy_spec
from routing.services.policies import VERSIONED_FIELDS, policy_publish
from scope_site.errors import InvalidRequest, NotFound

_PRIOR = PriorPredictor()


@dataclass(frozen=True)
class Calibration:
    chosen: AlphaPoint
    models: list[str]
    requests: int
    traffic: str
    predictor_version: str
    version: PolicyVersion | None
    missed: str = ""  # why no alpha reaches the target ("" when one does); nothing is published then


SHARE_TOLERANCE = 0.05  # a share target counts as reached within 5 points


def _eligible(policy: PolicySpec, specs: tuple[ModelSpec, ...]) -> list[ModelSpec]:
    out = []
    for m in specs:
        if not m.enabled or (policy.allowed_models and m.name not in policy.allowed_models):
            continue
        if m.name in policy.denied_models or any(
            c not in m.capabilities for c in policy.required_capabilities
        ):
            continue
        out.append(m)
    return out


def _traffic(
    slug: str, source: str, limit: int, models: list[str]
) -> tuple[list[RequestFeatures], np.ndarray | None, str]:
    if source:
        prompts = list(EvalPrompt.objects.filter(source=source).order_by("pk")[:limit])
        feats = [extract_prompt_features(p.prompt) for p in prompts]
        truth = np.full((len(prompts), len(models)), np.nan)
        index = {p.pk: i for i, p in enumerate(prompts)}
        col = {m: j for j, m in enumerate(models)}
        for o in EvalOutcome.objects.filter(prompt_id__in=list(index), model_name__in=models):
            truth[index[o.prompt_id], col[o.model_name]] = o.score
        return feats, truth, f"{len(prompts)} imported prompts of {source!r}"
    rows = (
        DecisionLog.objects.filter(policy_slug=slug)
        .order_by("-created_at")
        .values("features", "feature_schema", "prompt")
    )
    feats = []
    for row in rows[:limit]:
        try:
            feats.append(request_features_from_log(row["features"], row["feature_schema"], row["prompt"]))
        except FeatureLogError:
            continue  # decisions logged under another feature schema
    return feats, None, f"the last {len(feats)} logged requests of policy {slug!r}"


def _predict(
    predictor: Predictor, feats: list[RequestFeatures], specs: list[ModelSpec]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, m = len(feats), len(specs)
    q, u, c = np.zeros((n, m)), np.zeros((n, m)), np.zeros((n, m))
    for i, f in enumerate(feats):
        preds = predictor.predict(f, specs)
        for j, (spec, p) in enumerate(zip(specs, preds, strict=True)):
            if not p.known:
                p = _PRIOR.predict(f, [spec])[0]  # as the engine does for a model without data
            q[i, j], u[i, j] = p.quality, p.uncertainty
            c[i, j] = spec.cost_usd(f.input_tokens, p.output_tokens)
    return q, u, c


def policy_calibrate(
    *,
    slug: str,
    target_share: tuple[str, float] | None = None,
    target_cost_usd: float | None = None,
    source: str = "",
    limit: int = 2000,
    dry_run: bool = False,
    actor: str,
) -> Calibration:
    """Replay traffic through the active predictor for a grid of α and publish the α that meets the target."""
    if (target_share is None) == (target_cost_usd is None):
        raise InvalidRequest("give exactly one of --target-share MODEL=SHARE or --target-cost-usd X")
    if target_share is not None and not 0.0 <= target_share[1] <= 1.0:
        raise InvalidRequest("the target share must be a number in [0, 1]")
    if target_cost_usd is not None and not 0.0 < target_cost_usd < math.inf:
        raise InvalidRequest("the target cost must be a positive number of USD per request")
    if limit < 1:
        raise InvalidRequest("the number of requests to replay must be at least 1")
    policy = policy_spec(slug)
    if policy is None:
        raise NotFound(f"policy {slug!r} does not exist")
    specs = _eligible(policy, model_specs())
    if len(specs) < 2:
        raise InvalidRequest(f"policy {slug!r} has fewer than two eligible models: nothing to calibrate")
    names = [s.name for s in specs]
    if target_share is not None and target_share[0] not in names:
        raise InvalidRequest(f"{target_share[0]!r} is not an eligible model of policy {slug!r}")
    feats, truth, traffic = _traffic(slug, source, limit, names)
    if not feats:
        raise InvalidRequest(
            "no traffic to calibrate on: route some requests or give --source of imported data"
        )
    predictor: Predictor = active_predictor() or _PRIOR
    q, u, c = _predict(predictor, feats, specs)
    aversion = float(policy.options.get("risk_aversion", 0.5))
    points = sweep(q, u, c, risk_aversion=aversion, truth=truth)
    if target_share is not None:
        model, share = names.index(target_share[0]), target_share[1]
        chosen = choose_for_share(points, model, share)
        reached = chosen.shares[model]
        missed = (
            f"no alpha gives {target_share[0]} a {share:.0%} share of this traffic; the closest is "
            f"{reached:.1%}"
            if abs(reached - share) > SHARE_TOLERANCE
            else ""
        )
    else:
        assert target_cost_usd is not None
        chosen = choose_for_cost(points, target_cost_usd)
        missed = (
            f"no alpha keeps the mean cost within ${target_cost_usd:.6f}; the cheapest is "
            f"${chosen.mean_cost:.6f} per request"
            if chosen.mean_cost > target_cost_usd * (1 + 1e-9)
            else ""
        )
    if missed and not dry_run:
        raise InvalidRequest(f"{missed}: nothing published (--dry-run prints the closest alpha)")
    version = None
    if not dry_run:
        current = PolicyVersion.objects.filter(policy__slug=slug).order_by("-version").first()
        if current is None:
            raise NotFound(f"policy {slug!r} has no version")
        values = {f: getattr(current, f) for f in VERSIONED_FIELDS}
        values["alpha"] = chosen.alpha
        version = policy_publish(slug=slug, created_by=actor, note=f"alpha calibrated on {traffic}", **values)
    return Calibration(chosen, names, len(feats), traffic, predictor.version, version, missed)


def describe(point: AlphaPoint, models: list[str], requests: int | None = None) -> str:
    shares = ", ".join(f"{m} {s:.1%}" for m, s in zip(models, point.shares, strict=True) if s > 0)
    true = ""
    if point.mean_true is not None and not math.isnan(point.mean_true):
        true = f", true score {point.mean_true:.3f}"
        if requests is not None and point.true_n < requests:  # a biased subset: say which
            true += f" (over the {point.true_n} of {requests} requests whose chosen model has an outcome)"
    return (
        f"alpha={point.alpha:.3f}: expected cost ${point.mean_cost:.6f}/request, "
        f"predicted quality {point.mean_quality:.3f}{true}; shares: {shares}"
    )
