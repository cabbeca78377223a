"""The outcome data format of BENCHMARK.md: reading outcomes.jsonl / models.json (pure, no Django)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routing.predictor.model import ModelInfo
from routing.storable import unstorable_text

DEFAULT_OUTPUT_TOKENS = 256.0


class RecordError(ValueError):
    """A line that does not follow the format; the message says why."""


@dataclass(frozen=True)
class ModelOutcome:
    score: float
    output_tokens: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    task: str = ""
    outcomes: dict[str, ModelOutcome] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # TEST lines: candidate names without outcomes
    input_tokens: int | None = None


def _number(value: Any, what: str, *, low: float | None = None, high: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise RecordError(f"{what} must be a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RecordError(f"{what} must be in [{low}, {high if high is not None else '∞'}]")
    return float(value)


def parse_record(line: str, *, require_outcomes: bool = True) -> PromptRecord:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise RecordError("a line must be a JSON object")
    pid, prompt = doc.get("id"), doc.get("prompt")
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid) == "":
        raise RecordError("'id' must be a non-empty string")
    if not isinstance(prompt, str):
        raise RecordError("'prompt' must be a string")
    if unstorable_text(prompt):
        raise RecordError("'prompt' holds a NUL character or a lone surrogate")
    outcomes: dict[str, ModelOutcome] = {}
    raw = doc.get("outcomes")
    if raw is not None:
        if not isinstance(raw, dict):
            raise RecordError("'outcomes' must be an object of model → outcome")
        for model, out in raw.items():
            if not isinstance(out, dict):
                raise RecordError(f"outcome of {model!r} must be an object")
            score = _number(out.get("score"), f"{model}.score", low=0.0, high=1.0)
            if score is None:
                continue  # a null score: this model was not scored on this prompt
            outcomes[str(model)] = ModelOutcome(
                score=score,
                output_tokens=_number(out.get("output_tokens"), f"{model}.output_tokens", low=0.0),
                latency_ms=_number(out.get("latency_ms"), f"{model}.latency_ms", low=0.0),
            )
    if require_outcomes and not outcomes:
        raise RecordError("'outcomes' is missing or empty")
    models = doc.get("models") or ()
    if not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
        raise RecordError("'models' must be a list of model names")
    tokens = _number(doc.get("input_tokens"), "input_tokens", low=0.0)
    task = doc.get("task")
    return PromptRecord(
        id=str(pid),
        prompt=prompt,
        task=task if isinstance(task, str) else "",
        outcomes=outcomes,
        models=tuple(models),
        input_tokens=None if tokens is None else int(tokens),
    )


def iter_records(
    path: Path, *, require_outcomes: bool = True
) -> Iterator[tuple[int, PromptRecord | RecordError]]:
    """(line number, record or the error of that line); blank lines are skipped."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, RecordError("not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                yield number, parse_record(line, require_outcomes=require_outcomes)
            except RecordError as exc:
                yield number, exc


def load_records(path: Path, *, require_outcomes: bool = True) -> list[PromptRecord]:
    """Every valid record of a file (bad lines are skipped)."""
    return [
        r for _, r in iter_records(path, require_outcomes=require_outcomes) if isinstance(r, PromptRecord)
    ]


def load_models(path: Path | None) -> dict[str, ModelInfo]:
    """models.json → ModelInfo by name (null prices stay unknown); no path, no models. A path that
    cannot be read raises OSError; one that is not a JSON object, RecordError."""
    if path is None:
        return {}
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is not a JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise RecordError("models.json must be an object of model → prices")
    out = {}
    for name, row in doc.items():
        row = row if isinstance(row, dict) else {}
        inp, outp = row.get("input_usd_per_mtok"), row.get("output_usd_per_mtok")
        ctx, tier = row.get("context_window"), row.get("tier")
        out[str(name)] = ModelInfo(
            name=str(name),
            input_usd_per_mtok=float(inp) if isinstance(inp, int | float) else None,
            output_usd_per_mtok=float(outp) if isinstance(outp, int | float) else None,
            context_window=int(ctx) if isinstance(ctx, int) else None,
            tier=int(tier) if isinstance(tier, int) else None,
        )
    return out


def record_input_tokens(record: PromptRecord) -> int:
    return record.input_tokens if record.input_tokens is not None else math.ceil(len(record.prompt) / 4)
