"""`predict_outcomes`: the live predictor with the database swapped for two files (BENCHMARK.md).

Trains a fresh predictor on TRAIN alone and scores every (prompt, model) pair of TEST. TEST lines
are read as id, prompt and models only: any outcomes they carry are never looked at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from routing.features import extract_prompt_features
from routing.predictor.dataset import RecordError, iter_records, load_models
from routing.predictor.evaluation import examples_from_records
from routing.predictor.fit import fit_predictor
from routing.predictor.model import ModelInfo

CHUNK = 512


@dataclass(frozen=True)
class OfflineResult:
    train_prompts: int
    test_prompts: int
    models: int
    skipped_lines: list[tuple[str, int, str]]
    train_seconds: float


def _test_line(line: str) -> tuple[str, str, list[str]]:
    doc = json.loads(line)
    if not isinstance(doc, dict) or not isinstance(doc.get("prompt"), str) or doc.get("id") in (None, ""):
        raise RecordError("a TEST line needs 'id' and 'prompt'")
    models = doc.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise RecordError("a TEST line needs 'models': a list of names")
    return str(doc["id"]), doc["prompt"], list(models)


def predict_outcomes_files(
    *,
    train: Path,
    test: Path,
    models: Path | None,
    out: Path,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    test_progress: Callable[[int], None] | None = None,
) -> OfflineResult:
    skipped: list[tuple[str, int, str]] = []
    records = []
    for number, rec in iter_records(train):
        if isinstance(rec, RecordError):
            skipped.append((str(train), number, str(rec)))
        else:
            records.append(rec)
    if not records:
        raise RecordError(f"{train}: no valid training lines")
    infos = load_models(models)
    feats = [extract_prompt_features(r.prompt) for r in records]
    names = sorted({m for r in records for m in r.outcomes})
    fit = fit_predictor(
        examples_from_records(records, feats, source=str(train)),
        [infos.get(n) or ModelInfo(n) for n in names],
        seed=seed,
        progress=progress,
    )
    predictor = fit.predictor
    n_test = 0
    with open(test, encoding="utf-8") as fh, open(out, "w", encoding="utf-8") as sink:
        batch: list[tuple[str, str, list[str]]] = []

        def flush() -> None:
            if not batch:
                return
            # one predict_batch per distinct candidate list (usually one)
            groups: dict[tuple[str, ...], list[int]] = {}
            for i, (_, _, cands) in enumerate(batch):
                groups.setdefault(tuple(cands), []).append(i)
            lines: dict[int, dict[str, object]] = {}
            for group, idx in groups.items():
                cand_infos = [infos.get(m) or ModelInfo(m) for m in group]
                pred = predictor.predict_batch(
                    [extract_prompt_features(batch[i][1]) for i in idx], cand_infos
                )
                for row, i in enumerate(idx):
                    lines[i] = {
                        m: {
                            "quality": round(float(pred.quality[row, j]), 6),
                            "output_tokens": None
                            if math.isnan(pred.output_tokens[row, j])
                            else round(float(pred.output_tokens[row, j]), 1),
                        }
                        for j, m in enumerate(group)
                    }
            for i, (pid, _, _) in enumerate(batch):
                sink.write(json.dumps({"id": pid, "predictions": lines[i]}) + "\n")
            if test_progress:
                test_progress(len(batch))
            batch.clear()

        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                batch.append(_test_line(line))
            except (RecordError, json.JSONDecodeError) as exc:
                skipped.append((str(test), number, str(exc)))
                continue
            n_test += 1
            if len(batch) >= CHUNK:
                flush()
        flush()
    return OfflineResult(len(records), n_test, len(names), skipped, fit.seconds)
