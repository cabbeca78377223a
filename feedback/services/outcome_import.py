"""Importing evaluation outcomes (BENCHMARK.md format) into EvalPrompt/EvalOutcome, in bulk."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from feedback.models import EvalOutcome, EvalPrompt
from routing.predictor.dataset import PromptRecord, RecordError, iter_records, record_input_tokens

CHUNK = 2000


@dataclass
class ImportSummary:
    lines: int = 0
    prompts_created: int = 0
    prompts_updated: int = 0
    outcomes: int = 0
    models: set[str] = field(default_factory=set)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def outcomes_import(
    *, path: Path, source: str, progress: Callable[[int], None] | None = None
) -> ImportSummary:
    """Upsert every valid line: the same (source, id) updates its prompt and outcomes; bad lines are skipped."""
    summary = ImportSummary()
    chunk: dict[str, PromptRecord] = {}
    for number, rec in iter_records(path):
        summary.lines += 1
        if isinstance(rec, RecordError):
            summary.skipped.append((number, str(rec)))
            continue
        chunk[rec.id] = rec  # a repeated id in one file: the last line wins
        if len(chunk) >= CHUNK:
            _write(chunk.values(), source, summary)
            if progress:
                progress(len(chunk))
            chunk = {}
    if chunk:
        _write(chunk.values(), source, summary)
        if progress:
            progress(len(chunk))
    return summary


def _write(records: Iterable[PromptRecord], source: str, summary: ImportSummary) -> None:
    records = list(records)
    ids = [r.id for r in records]
    with transaction.atomic(durable=True):
        existing = set(
            EvalPrompt.objects.filter(source=source, external_id__in=ids).values_list(
                "external_id", flat=True
            )
        )
        EvalPrompt.objects.bulk_create(
            [
                EvalPrompt(
                    source=source,
                    external_id=r.id,
                    prompt=r.prompt,
                    task=r.task[:200],
                    input_tokens=record_input_tokens(r),
                )
                for r in records
            ],
            update_conflicts=True,
            unique_fields=["source", "external_id"],
            update_fields=["prompt", "task", "input_tokens", "imported_at"],
        )
        pk_of = dict(
            EvalPrompt.objects.filter(source=source, external_id__in=ids).values_list("external_id", "pk")
        )
        outcomes = [
            EvalOutcome(
                prompt_id=pk_of[r.id],
                model_name=model[:200],
                score=o.score,
                output_tokens=o.output_tokens,
                latency_ms=o.latency_ms,
            )
            for r in records
            for model, o in r.outcomes.items()
        ]
        EvalOutcome.objects.bulk_create(
            outcomes,
            batch_size=5000,
            update_conflicts=True,
            unique_fields=["prompt", "model_name"],
            update_fields=["score", "output_tokens", "latency_ms"],
        )
    summary.prompts_updated += len(existing)
    summary.prompts_created += len(records) - len(existing)
    summary.outcomes += len(outcomes)
    summary.models.update(m for r in records for m in r.outcomes)
