"""SCOPE's APGR per seed (six digits) for FitParams overrides, to compare predictor variants.

Q7_PARAMS: JSON of FitParams fields (e.g. '{"head_options": true}'); Q7_SETS: comma-separated data
set folders under SCOPE_DATA_DIR (default routellm-mmlu); Q7_SEEDS: default 0,1,2. Prompt features
are extracted once per process and reused across seeds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import django

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")
django.setup()

from django.conf import settings  # noqa: E402

from routing.predictor import evaluation  # noqa: E402
from routing.predictor.dataset import load_models, load_records  # noqa: E402
from routing.predictor.fit import FitParams  # noqa: E402

evaluation.extract_prompt_features = lru_cache(maxsize=None)(evaluation.extract_prompt_features)

sets = os.environ.get("Q7_SETS", "routellm-mmlu").split(",")
seeds = [int(s) for s in os.environ.get("Q7_SEEDS", "0,1,2").split(",")]
over: dict[str, Any] = json.loads(os.environ.get("Q7_PARAMS", "{}"))
params = FitParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in over.items()})  # type: ignore[arg-type]
root = Path(settings.SCOPE_DATA_DIR)
print("params", over, flush=True)
for name in sets:
    records = load_records(root / name / "outcomes.jsonl")
    models = load_models(root / name / "models.json")
    vals: list[float] = []
    knns: list[float] = []
    for seed in seeds:
        t = time.perf_counter()
        r = evaluation.evaluate_split(records, models, seed=seed, params=params)
        scope_apgr, knn_apgr = r.results["scope"]["apgr"], r.results["knn"]["apgr"]
        if scope_apgr is None or knn_apgr is None:
            raise SystemExit(f"{name} seed {seed}: no APGR")
        vals.append(float(scope_apgr))
        knns.append(float(knn_apgr))
        print(
            f"{name} seed {seed}: {vals[-1]:.6f} knn {knns[-1]:.6f} ({time.perf_counter() - t:.0f}s, train {r.train_seconds:.0f}s)",
            flush=True,
        )
    print(
        f"RESULT {name} mean {sum(vals) / len(vals):.6f} per-seed {' '.join(f'{v:.6f}' for v in vals)} knn-mean {sum(knns) / len(knns):.6f}",
        flush=True,
    )
