"""make bench-quality: every data set in SCOPE_DATA_DIR, 3 seeds, one table (mean ± half-range).

Each run trains SCOPE on a random half of the prompts and routes the other half; the baselines
(random mixing, always-cheapest, always-best, oracle, kNN on TF-IDF) are measured on the same
split. Curves of seed 0 are written to var/bench-quality/.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import django

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any OpenMP runtime starts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")
django.setup()

from django.conf import settings  # noqa: E402

from feedback.services.router_report import aggregate, plot_curves  # noqa: E402
from routing.predictor.dataset import load_models, load_records  # noqa: E402
from routing.predictor.evaluation import ROUTERS, SplitResult, evaluate_split  # noqa: E402

SEEDS = tuple(int(s) for s in os.environ.get("SCOPE_BENCH_SEEDS", "0,1,2").split(","))


def fmt(agg: tuple[float, float] | None) -> str:
    return "—" if agg is None else f"{agg[0]:.3f} ± {agg[1]:.3f}"


def main() -> int:
    root = Path(settings.SCOPE_DATA_DIR)
    sets = sorted(p for p in root.iterdir() if (p / "outcomes.jsonl").exists()) if root.exists() else []
    only = os.environ.get("SCOPE_BENCH_SETS")
    if only:
        sets = [p for p in sets if p.name in only.split(",")]
    if not sets:
        print(f"no data sets under {root}")
        return 1
    out_dir = Path("var/bench-quality")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in sets:
        records = load_records(data / "outcomes.jsonl")
        models = load_models(data / "models.json")
        results: list[SplitResult] = []
        for seed in SEEDS:
            started = time.perf_counter()
            r = evaluate_split(records, models, seed=seed)
            results.append(r)
            scope, knn = r.results["scope"], r.results["knn"]
            print(
                f"{data.name} seed {seed}: scope APGR {scope['apgr']} kNN {knn['apgr']} "
                f"({time.perf_counter() - started:.0f} s, train {r.train_seconds:.0f} s)",
                flush=True,
            )
            if seed == SEEDS[0]:
                plot_curves(r, out_dir / f"{data.name}.png", f"{data.name} (seed {seed})")
        rows.append((data.name, len(records), results))
    print()
    print(f"seeds {SEEDS}; 50/50 split; mean ± half-range; cost-aware metrics over priced models only")
    header = (
        "| set | router | APGR | CPT(50%) | CPT(80%) | Savings@95 | peak | q_best | oracle | AUC | Brier |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n, results in rows:
        priced = len(results[0].priced_models)
        for router in ROUTERS:
            cols = [
                aggregate(results, router, c)
                for c in ("apgr", "cpt50", "cpt80", "savings95", "peak", "q_best", "oracle")
            ]
            extra = (
                [aggregate(results, router, c) for c in ("auc", "brier")]
                if router == "scope"
                else [None, None]
            )
            print(
                f"| {name} ({n}, {priced} priced) | {router} | "
                + " | ".join(fmt(c) for c in cols + extra)
                + " |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
