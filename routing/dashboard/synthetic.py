"""Synthetic decision-log history for the UI scale benchmark and the screenshots.

Every row is a real decision: a pool of prompts is run through the same extract_features() and
decide() as the route path (current catalog, policies and predictor); rows then sample from that
pool with their own id, time, key, user, experiment arm, outcome and feedback. Row hashes are
real (checked against routing.audit.decision_row_hash), so the audit chain verifies. PostgreSQL
gets COPY; SQLite gets bulk_create.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from feedback.models import Feedback, Outcome
from routing.audit import HASHED_FIELDS, canonical_text, decision_row_hash, row_hash_from_texts
from routing.engine.decide import decide
from routing.engine.types import RouteOptions
from routing.features import extract_features
from routing.models import DecisionLog
from routing.predictor.registry import active_predictor
from routing.selectors import model_specs, policy_spec
from routing.services.decision_log import decision_fields
from routing.services.route import strategies

_TOPICS = (
    "Write a Python function that {x} and explain the complexity",
    "What is {n} * {m}? Show the calculation step by step",
    "Summarize the following note in three bullets: {x}",
    "Translate to French: {x}",
    "Why does {x}? Compare two explanations and justify the better one",
    "Write a short poem about {x}",
    "Extract the names and dates as JSON from: {x}",
    "Prove that the sum of the first {n} odd numbers is a square",
    "hi! can you help me with {x}",
    "Refactor this SQL query to use a join: SELECT * FROM a WHERE id IN (SELECT a_id FROM b WHERE n > {n})",
)
_THINGS = (
    "parses a CSV file",
    "the sky looks blue",
    "the meeting moved to Tuesday at 10 with Ana and Luis",
    "a cat who learns to code",
    "merges two sorted lists",
    "interest rates rise in a recession",
    "my tax return",
    "the invoice dated 2024-03-01 from ACME to Bob",
)
KEYS = ("web-app", "batch-jobs", "support-bot", "analytics")


@dataclass(frozen=True, slots=True)
class _Pooled:
    fields: dict[str, Any]  # DecisionLog field values that do not vary per row
    canon: dict[str, str]  # canonical JSON of each hashed field that does not vary per row
    latency_ms: float | None


def _pool(size: int, policies: list[str], rng: random.Random) -> list[_Pooled]:
    specs = model_specs()
    predictor = active_predictor()
    known = strategies()
    pool = []
    for i in range(size):
        template = _TOPICS[i % len(_TOPICS)]
        text = template.format(x=rng.choice(_THINGS), n=rng.randint(3, 999), m=rng.randint(3, 99))
        plan = "premium" if rng.random() < 0.2 else "free"
        metadata = {"plan": plan}
        features = extract_features([{"role": "user", "content": text}], metadata)
        policy = policy_spec(policies[i % len(policies)])
        if policy is None:
            raise LookupError(f"policy {policies[i % len(policies)]!r} is not in the catalog")
        decision = decide(
            features=features,
            models=specs,
            policy=policy,
            options=RouteOptions(metadata=metadata),
            predictor=predictor,
            strategies=known,
        )
        chosen = decision.chosen
        fields = {
            "kind": "route",
            "api_key_name": "",
            # the prompt is stored, as on the live path by default
            **decision_fields(decision=decision, features=features, policy=policy, redacted=False),
            "prompt_sha256": hashlib.sha256(features.text.encode()).hexdigest(),
            "metadata": metadata,
            "cache_hit": False,
        }
        canon = {k: canonical_text(fields[k]) for k in HASHED_FIELDS if k in fields and k not in _PER_ROW}
        latency = chosen.prediction.latency_ms if chosen and chosen.prediction else None
        pool.append(_Pooled(fields=fields, canon=canon, latency_ms=latency))
    return pool


_PER_ROW = ("id", "created_at", "api_key_name", "user", "experiment", "arm")


def _row_hash(pooled: _Pooled, per_row: dict[str, Any]) -> str:
    """decision_row_hash, with the pooled fields' canonical JSON reused (byte-identical output)."""
    return row_hash_from_texts(
        {name: pooled.canon.get(name) or canonical_text(per_row[name]) for name in HASHED_FIELDS}
    )


@dataclass(frozen=True, slots=True)
class Generated:
    decisions: int
    outcomes: int
    feedback: int


def _times(n: int, days: float, end: datetime, rng: random.Random) -> list[datetime]:
    """n timestamps over `days`, with a daily cycle (busier in working hours), oldest first."""
    span = days * 86400.0
    out: list[datetime] = []
    while len(out) < n:
        t = rng.random() * span
        hour = ((end.timestamp() - span + t) / 3600.0) % 24
        if rng.random() < 0.35 + 0.65 * math.exp(-(((hour - 14) / 5.0) ** 2)):
            out.append(end - timedelta(seconds=span - t))
    out.sort()
    return out


def generate(
    *,
    decisions: int,
    days: float = 30.0,
    policies: list[str] | None = None,
    experiment: tuple[str, dict[str, str]] | None = None,
    outcome_share: float = 0.3,
    feedback_share: float = 0.05,
    pool_size: int = 400,
    seed: int = 7,
    end: datetime | None = None,
    batch: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> Generated:
    """`experiment` = (name, {arm: policy slug}): rows of an arm's policy are tagged with that arm."""
    rng = random.Random(seed)
    arms_by_policy = {policy: arm for arm, policy in (experiment[1] if experiment else {}).items()}
    end = end or timezone.now() - timedelta(seconds=10)
    pool = _pool(pool_size, policies or ["default"], rng)
    check = pool[0]
    sample = {
        "id": uuid.uuid4(),
        "created_at": end,
        "api_key_name": "k",
        "user": "u",
        "experiment": "",
        "arm": "",
    }
    if _row_hash(check, sample) != decision_row_hash({**check.fields, **sample}):
        raise AssertionError("synthetic row hash differs from routing.audit.decision_row_hash")
    totals = [0, 0, 0]
    times = _times(decisions, days, end, rng)
    for start in range(0, decisions, batch):
        rows, outcomes, feedback = [], [], []
        canon: dict[uuid.UUID, dict[str, str]] = {}  # the pooled JSON text, reused by COPY
        for created_at in times[start : start + batch]:
            pooled = pool[rng.randrange(len(pool))]
            user = f"user-{rng.randrange(5000)}"
            per_row: dict[str, Any] = {
                "id": uuid.uuid4(),
                "created_at": created_at,
                "api_key_name": KEYS[rng.randrange(len(KEYS))],
                "user": user,
                "experiment": "",
                "arm": "",
            }
            arm = arms_by_policy.get(pooled.fields["policy_slug"])
            if arm and experiment and rng.random() < 0.5:
                per_row["experiment"], per_row["arm"] = experiment[0], arm
            row = {**pooled.fields, **per_row, "row_hash": _row_hash(pooled, per_row)}
            rows.append(row)
            canon[row["id"]] = pooled.canon
            model = row["chosen_model"]
            if model and rng.random() < outcome_share:
                error = rng.random() < 0.02
                latency = (pooled.latency_ms or 800.0) * rng.lognormvariate(0, 0.35)
                outcomes.append(
                    {
                        "decision_id": row["id"],
                        "model_name": model,
                        "status": "error" if error else "ok",
                        "latency_ms": latency,
                        "cost_usd": Decimal("0")
                        if error
                        else Decimal(str(round(row["predicted_cost_usd"] or 0, 8))),
                        "created_at": created_at + timedelta(milliseconds=latency),
                    }
                )
            if model and rng.random() < feedback_share:
                q = row["predicted_quality"] or 0.5
                feedback.append(
                    {
                        "decision_id": row["id"],
                        "score": 1.0 if rng.random() < q else 0.0,
                        "created_at": created_at + timedelta(seconds=rng.randint(5, 600)),
                    }
                )
        _insert(rows, outcomes, feedback, canon)
        totals[0] += len(rows)
        totals[1] += len(outcomes)
        totals[2] += len(feedback)
        if progress is not None:
            progress(len(rows))
    return Generated(*totals)


_DECISION_COLUMNS = (
    "id created_at kind api_key_name policy_slug policy_version strategy predictor_version alpha chosen_model "
    "chosen_provider fallbacks candidates explanation features feature_schema prompt prompt_sha256 user metadata "
    "experiment arm cache_hit predicted_cost_usd predicted_quality row_hash"
).split()
_JSON = {"fallbacks", "candidates", "explanation", "features", "metadata"}


def _insert(
    rows: list[dict[str, Any]],
    outcomes: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    canon: dict[uuid.UUID, dict[str, str]],
) -> None:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _copy(rows, outcomes, feedback, canon)
        else:
            DecisionLog.objects.bulk_create((DecisionLog(**r) for r in rows), batch_size=500)
            _bulk_with_times(Outcome, outcomes)
            _bulk_with_times(Feedback, feedback)


def _bulk_with_times(model: Any, items: list[dict[str, Any]]) -> None:
    created = model.objects.bulk_create([model(**item) for item in items], batch_size=500)
    for obj, item in zip(created, items, strict=True):  # auto_now_add overrode the times
        obj.created_at = item["created_at"]
    model.objects.bulk_update(created, ["created_at"], batch_size=500)


def _copy(
    rows: list[dict[str, Any]],
    outcomes: list[dict[str, Any]],
    feedback: list[dict[str, Any]],
    canon: dict[uuid.UUID, dict[str, str]],
) -> None:
    raw = connection.connection
    with raw.cursor() as cursor:
        columns = ", ".join(f'"{c}"' for c in _DECISION_COLUMNS)
        with cursor.copy(f"COPY routing_decisionlog ({columns}) FROM STDIN") as copy:
            for r in rows:
                texts = canon[r["id"]]
                copy.write_row(
                    [
                        (texts.get(c) or canonical_text(r[c])) if c in _JSON else r[c]
                        for c in _DECISION_COLUMNS
                    ]
                )
        outcome_cols = (
            "decision_id",
            "model_name",
            "status",
            "input_tokens",
            "output_tokens",
            "tokens_estimated",
            "latency_ms",
            "cost_usd",
            "error_class",
            "attempts",
            "created_at",
        )
        with cursor.copy(f"COPY feedback_outcome ({', '.join(outcome_cols)}) FROM STDIN") as copy:
            for o in outcomes:
                copy.write_row(
                    [
                        o["decision_id"],
                        o["model_name"],
                        o["status"],
                        0,
                        0,
                        True,
                        o["latency_ms"],
                        o["cost_usd"],
                        "",
                        "[]",
                        o["created_at"],
                    ]
                )
        with cursor.copy(
            "COPY feedback_feedback (decision_id, score, label, comment, created_at) FROM STDIN"
        ) as copy:
            for f in feedback:
                copy.write_row([f["decision_id"], f["score"], "", "", f["created_at"]])
