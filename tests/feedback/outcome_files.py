"""Writing generated outcome data in the BENCHMARK.md format for command tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.routing import predictor_data as data


def write_outcomes(path: Path, n: int, seed: int, *, start: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = []
    with open(path, "w", encoding="utf-8") as fh:
        for i, (topic, text) in enumerate(data.prompts(n, seed)):
            pid = f"gen-{start + i}"
            ids.append(pid)
            outcomes = {
                m: {"score": float(rng.random() < data.SKILLS[m][topic]), "output_tokens": data.TOKENS[m]}
                for m in ("small", "medium", "large")
            }
            fh.write(json.dumps({"id": pid, "prompt": text, "task": topic, "outcomes": outcomes}) + "\n")
    return ids


def write_models(path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                m: {"input_usd_per_mtok": data.PRICES[m][0], "output_usd_per_mtok": data.PRICES[m][1]}
                for m in data.PRICES
            }
        )
    )
