"""Calibrating a new model: score it on anchor prompts, then let it explore a capped share of traffic.

`calibration_run` sends N anchor prompts to the model through the execution service (the same
path, logging and outcome recording as live chat completions), scores each answer (exact match
when the anchor has a reference, else a judge model rates it 1–10 → (s−1)/9), stores the scores
as EvalOutcome rows (what the predictor's anchor statistics and the next retraining read) and
marks the model `exploring` with its cap. `calibration_import` does the same from an outcomes
file (BENCHMARK.md format) that already scores the model. `calibration_graduate` lifts the cap
once enough live outcomes exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from feedback.models import CalibrationStatus, EvalOutcome, EvalPrompt, ModelCalibration, Outcome
from feedback.services.exploration import exploration_invalidate
from providers.models import LLMModel
from routing.models import ControlAction, DecisionLog
from routing.services.control_events import control_event_record
from scope_site.errors import ApplicationError, InvalidRequest, NotFound

ANCHOR_SOURCE = "anchors"
CALIBRATION_SCOPE = "calibration"  # metadata.scope of the decisions its anchor and judge calls log
JUDGE_PROMPT = (
    "Rate how well the answer below responds to the question, from 1 (useless or wrong) to 10 "
    "(fully correct and helpful). Reply with the number only.\n\nQuestion:\n{prompt}\n\nAnswer:\n{answer}"
)


@dataclass(frozen=True, slots=True)
class Anchor:
    source: str
    external_id: str
    prompt: str
    task: str = ""
    reference: str | None = None


Ask = Callable[
    [str, str], tuple[str, int, float | None]
]  # (model, prompt) -> (text, output tokens, latency ms)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().casefold()).strip(" .")


def exact_match(answer: str, reference: str) -> bool:
    """A multiple-choice letter, a final number, or the whole normalised text must match."""
    ref = _normalise(reference)
    got = _normalise(answer)
    if re.fullmatch(r"\(?[a-j]\)?", ref):
        letter = re.search(r"(?:answer\s*(?:is|:)?\s*)?\(?\b([a-j])\b\)?", got)
        return bool(letter) and letter.group(1) == ref.strip("()")  # type: ignore[union-attr]
    if re.fullmatch(r"-?[\d,]*\.?\d+", ref):
        numbers = re.findall(r"-?[\d,]*\.?\d+", got)
        return bool(numbers) and float(numbers[-1].replace(",", "")) == float(ref.replace(",", ""))
    return got == ref or got.endswith(ref)


_JUDGE_ALONE = re.compile(
    r"\W*(?:(?:score|rating)\s*[:=]?\s*)?\[*\s*(10|[1-9])(?:\s*/\s*10)?\s*\]*\W*", re.IGNORECASE
)
_JUDGE_BRACKETS = re.compile(r"\[\[\s*(10|[1-9])\s*\]\]")


def judge_score(reply: str) -> float:
    """The judge's 1–10 rating → (s−1)/9. The reply must be the rating alone ("8", "Score: 8/10")
    or hold it as [[8]]: a number picked out of free text (an echoed "1 to 10") would be a guess."""
    match = _JUDGE_ALONE.fullmatch(reply.strip()) or _JUDGE_BRACKETS.search(reply)
    if match is None:
        raise ValueError(f"the judge's reply is not a 1–10 rating: {reply[:80]!r}")
    return (int(match.group(1)) - 1) / 9


def anchors_from_file(path: Path) -> list[Anchor]:
    """Anchor prompts from JSONL: {"id", "prompt", optional "reference", "task"}."""
    anchors = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not item.get("id") or not isinstance(item.get("prompt"), str):
            raise InvalidRequest(f"{path}:{number}: needs 'id' and 'prompt'")
        ref = item.get("reference")
        anchors.append(
            Anchor(
                ANCHOR_SOURCE,
                str(item["id"]),
                item["prompt"],
                str(item.get("task") or ""),
                None if ref is None else str(ref),
            )
        )
    return anchors


def anchors_from_imported(n: int, *, source: str | None = None) -> list[Anchor]:
    """N imported prompts answered by the most models, spread round-robin over tasks (deterministic)."""
    rows = EvalPrompt.objects.annotate(n_models=Count("outcomes")).filter(n_models__gte=2)
    if source:
        rows = rows.filter(source=source)
    by_task: dict[str, list[EvalPrompt]] = {}
    for row in rows.order_by("-n_models", "source", "external_id")[: max(n * 20, 200)]:
        by_task.setdefault(row.task, []).append(row)
    picked: list[EvalPrompt] = []
    while len(picked) < n and any(by_task.values()):
        for task in sorted(by_task):
            if by_task[task] and len(picked) < n:
                picked.append(by_task[task].pop(0))
    return [Anchor(p.source, p.external_id, p.prompt, p.task) for p in picked]


def execution_ask(model: str, prompt: str) -> tuple[str, int, float | None]:
    """One call through the execution service (logged and recorded like any chat completion)."""
    import time

    from providers.execution import chat_complete

    begun = time.monotonic()
    result = chat_complete(
        api_key=None,
        body={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "metadata": {"scope": CALIBRATION_SCOPE},
        },
    )
    choice = result.body["choices"][0]["message"].get("content") or ""
    usage = result.body.get("usage") or {}
    return str(choice), int(usage.get("completion_tokens") or 0), (time.monotonic() - begun) * 1000.0


def calibration_run(
    *,
    model: str,
    anchors: Iterable[Anchor],
    judge: str | None = None,
    cap: float | None = None,
    min_live_outcomes: int | None = None,
    ask: Ask = execution_ask,
    progress: Callable[[int, int], None] | None = None,
    actor: str,
) -> ModelCalibration:
    """Run the model on each anchor, score the answers, store them and open exploration."""
    row = _routable(model)
    _check_exploration(cap, min_live_outcomes)  # before any anchor is paid for
    anchors = list(anchors)
    if not anchors:
        raise InvalidRequest(
            "no anchor prompts: import outcomes first (import_outcomes) or pass --anchors-file"
        )
    judge = judge or settings.SCOPE_JUDGE_MODEL or None
    if judge is None and any(a.reference is None for a in anchors):
        raise InvalidRequest(
            "some anchors have no reference answer: set SCOPE_JUDGE_MODEL or pass --judge MODEL"
        )
    if judge is not None and not LLMModel.objects.filter(name=judge).exists():
        # checked before any anchor is sent: else every answer is paid for and then left unscored
        raise NotFound(
            f"unknown judge model {judge!r} (--judge or SCOPE_JUDGE_MODEL): add it to the catalog first",
            code="unknown_model",
        )
    scored: list[tuple[Anchor, float, int, float | None]] = []
    failures: list[str] = []
    for index, anchor in enumerate(anchors, start=1):
        try:
            answer, tokens, latency = ask(row.name, anchor.prompt)
            if anchor.reference is not None:
                score = 1.0 if exact_match(answer, anchor.reference) else 0.0
            else:
                assert judge is not None
                verdict, _, _ = ask(judge, JUDGE_PROMPT.format(prompt=anchor.prompt, answer=answer))
                score = judge_score(verdict)
            scored.append((anchor, score, tokens, latency))
        except (ApplicationError, ValueError) as exc:
            failures.append(f"{anchor.external_id}: {exc}")
        if progress:
            progress(index, len(anchors))
    if not scored:
        raise InvalidRequest("every anchor call failed: " + "; ".join(failures[:3]))
    scoring = "exact_match" if judge is None else f"exact_match+judge:{judge}"
    return _store(
        row.name,
        scored,
        scoring=scoring,
        cap=cap,
        min_live_outcomes=min_live_outcomes,
        failures=failures,
        actor=actor,
    )


def calibration_import(
    *,
    model: str,
    path: Path,
    limit: int | None = None,
    cap: float | None = None,
    min_live_outcomes: int | None = None,
    actor: str,
) -> ModelCalibration:
    """The model's outcomes from an outcomes.jsonl file (BENCHMARK.md format) stand for the anchor run."""
    row = _routable(model)
    _check_exploration(cap, min_live_outcomes)
    source = path.parent.name or path.stem
    scored: list[tuple[Anchor, float, int, float | None]] = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if limit is not None and len(scored) >= limit:
                break
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                result = (item.get("outcomes") or {}).get(row.name)
            except (json.JSONDecodeError, AttributeError):
                raise InvalidRequest(f"{path}:{number}: not an outcomes line") from None
            if not result or result.get("score") is None:
                continue
            anchor = Anchor(source, str(item["id"]), str(item["prompt"]), str(item.get("task") or ""))
            tokens = result.get("output_tokens")
            scored.append((anchor, float(result["score"]), int(tokens) if tokens else 0, None))
    if not scored:
        raise InvalidRequest(f"{path} has no outcomes for model {row.name!r}")
    return _store(
        row.name,
        scored,
        scoring=f"imported:{path.name}",
        cap=cap,
        min_live_outcomes=min_live_outcomes,
        failures=[],
        actor=actor,
    )


def _routable(model: str) -> LLMModel:
    row = LLMModel.objects.filter(name=model).first()
    if row is None:
        raise NotFound(
            f"unknown model {model!r}: add it to the catalog first (load_catalog)", code="unknown_model"
        )
    return row


def _check_exploration(cap: float | None, min_live_outcomes: int | None) -> None:
    if cap is not None and not 0.0 <= cap <= 1.0:  # also NaN
        raise InvalidRequest("the exploration cap must be in [0, 1]")
    if min_live_outcomes is not None and min_live_outcomes < 1:
        raise InvalidRequest("the live outcomes before the cap is lifted must be at least 1")


def _store(
    model: str,
    scored: list[tuple[Anchor, float, int, float | None]],
    *,
    scoring: str,
    cap: float | None,
    min_live_outcomes: int | None,
    failures: list[str],
    actor: str,
) -> ModelCalibration:
    _check_exploration(cap, min_live_outcomes)
    cap = settings.SCOPE_EXPLORATION_CAP if cap is None else cap
    with transaction.atomic():
        for anchor, score, tokens, latency in scored:
            prompt, _ = EvalPrompt.objects.get_or_create(
                source=anchor.source,
                external_id=anchor.external_id,
                defaults={"prompt": anchor.prompt, "task": anchor.task},
            )
            EvalOutcome.objects.update_or_create(
                prompt=prompt,
                model_name=model,
                defaults={
                    "score": min(max(score, 0.0), 1.0),
                    "output_tokens": tokens or None,
                    "latency_ms": latency,
                },
            )
        mean = sum(s for _, s, _, _ in scored) / len(scored)
        calibration, _ = ModelCalibration.objects.update_or_create(
            model_name=model,
            defaults={
                "status": CalibrationStatus.EXPLORING,
                "anchors": len(scored),
                "anchor_score": mean,
                "scoring": scoring[:200],
                "exploration_cap": cap,
                "min_live_outcomes": min_live_outcomes
                or settings.SCOPE_EXPLORATION_MIN_OUTCOMES,  # checked >= 1
                "details": {
                    "failures": failures[:50],
                    "tasks": sorted({a.task for a, *_ in scored if a.task})[:100],
                    # live outcomes count from here: a re-calibrated model starts exploring afresh
                    "exploring_since": timezone.now().isoformat(),
                },
                "graduated_at": None,
            },
        )
        enabled = LLMModel.objects.filter(name=model, enabled=False).update(enabled=True)
        control_event_record(
            actor=actor,
            action=ControlAction.CALIBRATION_STORE,
            target=f"model:{model}",
            detail={
                "anchors": len(scored),
                "anchor_score": round(mean, 4),
                "scoring": scoring[:200],
                "exploration_cap": cap,
                "min_live_outcomes": calibration.min_live_outcomes,
                "model_enabled": bool(enabled),  # calibrating a disabled model puts it back in routing
            },
        )
        transaction.on_commit(exploration_invalidate)
    return calibration


def calibration_live_outcomes(calibration: ModelCalibration) -> QuerySet[Outcome]:
    """The model's successful outcomes on live traffic since it started exploring: not the anchor
    calls of its own calibration (or a judge's), which also go through the execution service and
    would otherwise graduate it before it served a single real request."""
    since = parse_datetime(str((calibration.details or {}).get("exploring_since") or ""))
    since = since or calibration.created_at
    # (a positive lookup: excluding on a JSON key would also drop decisions without metadata.scope)
    calibration_calls = DecisionLog.objects.filter(
        chosen_model=calibration.model_name, created_at__gte=since, metadata__scope=CALIBRATION_SCOPE
    ).values("pk")
    return Outcome.objects.filter(
        model_name=calibration.model_name, status=Outcome.Status.OK, created_at__gte=since
    ).exclude(decision__in=calibration_calls)


def calibration_graduate(*, actor: str) -> list[str]:
    """Lift the cap of exploring models whose successful live outcomes reached their minimum."""
    graduated = []
    with transaction.atomic():
        for calibration in ModelCalibration.objects.select_for_update().filter(
            status=CalibrationStatus.EXPLORING
        ):
            live = calibration_live_outcomes(calibration).count()
            calibration.live_outcomes = live
            if live >= calibration.min_live_outcomes:
                calibration.status = CalibrationStatus.GRADUATED
                calibration.graduated_at = timezone.now()
                graduated.append(calibration.model_name)
                control_event_record(
                    actor=actor,
                    action=ControlAction.CALIBRATION_GRADUATE,
                    target=f"model:{calibration.model_name}",
                    detail={"live_outcomes": live, "exploration_cap": calibration.exploration_cap},
                )
            calibration.save(update_fields=["live_outcomes", "status", "graduated_at"])
        transaction.on_commit(exploration_invalidate)
    return graduated


def calibration_describe(calibration: ModelCalibration) -> dict[str, Any]:
    return {
        "model": calibration.model_name,
        "status": calibration.status,
        "anchors": calibration.anchors,
        "anchor_score": calibration.anchor_score,
        "scoring": calibration.scoring,
        "exploration_cap": calibration.exploration_cap,
        "min_live_outcomes": calibration.min_live_outcomes,
    }
