"""Per-request cost of the trained predictor: predict() at 5/20/50/200 candidates and contributions().

Trains a ScopePredictor on generated outcomes (topics with their own words, models with random
skills; default fit parameters: a 3-member quality ensemble + length model, depth 5), adds
anchor-only models so that every candidate is a known model, then times one request at a time on
the CPU (process time, gc off while timing). The script only calls predict()/contributions(), so
the same file times an older checkout too (copy it into an exported tree and run it there).

With `--data NAME` the predictor is trained instead on a real data set of SCOPE_DATA_DIR
(default /work/shared/data, e.g. alpacaeval2-gpt4turbo: 56 models) with the default FitParams;
anchor-only models built from its prompts (scores of a trained model, shuffled) fill the
candidate list up to 200 known models.

    .venv/bin/python bench/predictor_speed.py --runs 2000
    .venv/bin/python bench/predictor_speed.py --runs 2000 --data alpacaeval2-gpt4turbo
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORDS = (
    "solve equation polynomial root variable coefficient quadratic factor empire war treaty king "
    "revolution century dynasty battle cell protein enzyme gene organism membrane species evolution "
    "contract court statute plaintiff liability tort appeal judge loop array pointer compile function "
    "recursion stack heap poem rhyme metaphor stanza verse novel plot character"
).split()
FILLER = "the a of to and which what is how explain why please".split()


def _train(*, prompts: int, trained: int, anchor_only: int, seed: int) -> tuple[Any, list[Any]]:
    from routing.engine.types import ModelSpec
    from routing.features import extract_prompt_features
    from routing.predictor.fit import FitParams, TrainingExample, fit_predictor
    from routing.predictor.model import ModelInfo

    rng = np.random.default_rng(seed)
    n_topics = 8
    topic_words = [WORDS[i::n_topics] for i in range(n_topics)]
    names = [f"model-{j:03d}" for j in range(trained + anchor_only)]
    skill = rng.uniform(0.1, 0.95, size=(len(names), n_topics))
    texts = []
    for i in range(prompts):
        t = i % n_topics
        words = list(rng.choice(topic_words[t], size=8)) + list(rng.choice(FILLER, size=5))
        texts.append((t, f"Question {i}: " + " ".join(words) + "?"))
    feats = [(t, extract_prompt_features(text)) for t, text in texts]
    examples = []
    for i, (t, f) in enumerate(feats):
        for j in range(trained):
            score = float(rng.random() < skill[j, t])
            tokens = 50.0 + 30.0 * j * float(rng.uniform(0.8, 1.2))
            examples.append(TrainingExample(f"p{i}", f, names[j], score, output_tokens=tokens))
    specs = [
        ModelSpec(
            name=n,
            provider="sim",
            provider_kind="simulated",
            input_usd_per_mtok=0.1 * (1 + j % 13),
            output_usd_per_mtok=0.3 * (1 + j % 11),
            context_window=8192 * (1 + j % 4),
            tier=1 + j % 5,
        )
        for j, n in enumerate(names)
    ]
    infos = [ModelInfo.from_spec(s) for s in specs[:trained]]
    result = fit_predictor(examples, infos, seed=seed, params=FitParams(max_rounds=300))
    predictor = result.predictor
    for j in range(trained, trained + anchor_only):
        anchors = [(f, float(rng.random() < skill[j, t]), 100.0) for t, f in feats[j % 7 :: 9][:120]]
        predictor = predictor.with_anchor_model(names[j], anchors)
    return predictor, specs


def _train_real(*, data: str, anchor_models: int, seed: int) -> tuple[Any, list[Any]]:
    from routing.features import extract_prompt_features
    from routing.predictor.dataset import load_models, load_records
    from routing.predictor.evaluation import examples_from_records
    from routing.predictor.fit import fit_predictor
    from routing.predictor.model import ModelInfo

    root = Path(os.environ.get("SCOPE_DATA_DIR", "/work/shared/data")) / data
    records = load_records(root / "outcomes.jsonl")
    infos = load_models(root / "models.json")
    feats = [extract_prompt_features(r.prompt) for r in records]
    names = sorted({m for r in records for m in r.outcomes})
    result = fit_predictor(
        examples_from_records(records, feats, source=data),
        [infos.get(n) or ModelInfo(n) for n in names],
        seed=seed,
    )
    predictor = result.predictor
    rng = np.random.default_rng(seed)
    extra = [f"anchor-{j:03d}" for j in range(max(0, anchor_models - len(names)))]
    for j, name in enumerate(extra):
        donor = names[j % len(names)]
        picked = rng.permutation(len(records))[:120]
        anchors = [
            (feats[i], records[i].outcomes[donor].score, 100.0)
            for i in picked
            if donor in records[i].outcomes
        ]
        predictor = predictor.with_anchor_model(name, anchors)
    return predictor, _real_specs(predictor, infos)


def _real_specs(predictor: Any, infos: dict[str, Any]) -> list[Any]:
    from routing.engine.types import ModelSpec

    specs = []
    for j, name in enumerate(predictor.anchors.models):
        info = infos.get(name)
        specs.append(
            ModelSpec(
                name=name,
                provider="sim",
                provider_kind="simulated",
                input_usd_per_mtok=(info.input_usd_per_mtok if info else None) or 0.1 * (1 + j % 13),
                output_usd_per_mtok=(info.output_usd_per_mtok if info else None) or 0.3 * (1 + j % 11),
                context_window=8192 * (1 + j % 4),
                tier=1 + j % 5,
            )
        )
    return specs


def _time(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    for _ in range(50):
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(runs):
            started = time.process_time()
            fn()
            samples.append((time.process_time() - started) * 1000.0)
    finally:
        gc.enable()
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--trained", type=int, default=12, help="models in the training outcomes")
    parser.add_argument("--anchor-only", type=int, default=188, help="models added from anchors only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="", help="train on this data set of SCOPE_DATA_DIR instead")
    parser.add_argument(
        "--artifact", default="", help="with --data: save the trained predictor here, or load it if present"
    )
    parser.add_argument("--numpy", action="store_true", help="time the numpy tree evaluator, not compiled")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")

    from routing.features import extract_features

    started = time.perf_counter()
    if args.artifact and os.path.exists(args.artifact):
        from routing.predictor.artifact import unpack
        from routing.predictor.dataset import load_models

        with open(args.artifact, "rb") as fh:
            predictor = unpack(fh.read(), version="bench")
        root = Path(os.environ.get("SCOPE_DATA_DIR", "/work/shared/data")) / args.data
        specs = _real_specs(predictor, load_models(root / "models.json"))
    elif args.data:
        predictor, specs = _train_real(data=args.data, anchor_models=200, seed=args.seed)
        if args.artifact:
            from routing.predictor.artifact import pack

            with open(args.artifact, "wb") as sink:
                sink.write(pack(predictor))
    else:
        predictor, specs = _train(
            prompts=args.prompts, trained=args.trained, anchor_only=args.anchor_only, seed=args.seed
        )
    evaluator = "numpy"
    if not args.numpy:
        try:  # as the registry serves it (checkouts before compiled.py have numpy only)
            from routing.predictor.compiled import compile_forest
        except ImportError:
            pass
        else:
            cache = Path(os.environ.get("SCOPE_VAR_DIR", "var")) / "forests"
            compiled = compile_forest(predictor.evaluator, cache)
            predictor.evaluator.use_compiled(compiled)
            evaluator = "compiled" if compiled is not None else "numpy (compilation failed)"
            try:  # the one-request path's rows and predictions in C (checkouts before it: numpy)
                from routing.predictor.serving_kernel import serving_kernel_install
            except ImportError:
                pass
            else:
                serving_kernel_install(cache)
                served = predictor.plan.fast() is not None
                evaluator += "; rows: " + ("serving kernel" if served else "numpy (kernel not used)")
    counts = [e.n_trees for e in predictor.evaluator.ensembles]
    print(
        f"ready in {time.perf_counter() - started:.1f} s: {len(predictor.anchors.models)} known models, "
        f"{len(predictor.roles)} boosters, {sum(counts)} trees "
        f"({', '.join(f'{r} {n}' for r, n in zip(predictor.roles, counts, strict=True))}); trees: {evaluator}"
    )
    prompt = "Explain why this recursion overflows the stack and rewrite the function with a loop, please. "
    features = extract_features([{"role": "user", "content": prompt * 8}], {})
    print(
        f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; CPU time per call, {args.runs} calls"
    )
    # a different request per call, as in traffic (64 prompts of the data set, or generated ones)
    if args.data:
        from routing.predictor.dataset import load_records

        root = Path(os.environ.get("SCOPE_DATA_DIR", "/work/shared/data")) / args.data
        texts = [r.prompt for r in load_records(root / "outcomes.jsonl")[:64]]
    else:
        texts = [f"{prompt} Case {i}: {' '.join(WORDS[i % 40 : i % 40 + 12])}?" for i in range(64)]
    varied = [extract_features([{"role": "user", "content": t}], {}) for t in texts]
    turn = iter(range(10**9))

    def varying(chosen: list[Any]) -> Any:
        return predictor.predict(varied[next(turn) % len(varied)], chosen)

    for count in (5, 20, 50, 200):
        chosen = specs[:count]
        med, p99 = _time(lambda c=chosen: predictor.predict(features, c), args.runs)  # type: ignore[misc]
        vmed, vp99 = _time(lambda c=chosen: varying(c), args.runs)  # type: ignore[misc]
        print(
            f"predict {count:3d} candidates: median {med:.3f} ms  p99 {p99:.3f} ms"
            f"  | a different prompt per call: median {vmed:.3f} ms  p99 {vp99:.3f} ms"
        )
    med, p99 = _time(lambda: predictor.contributions(features, specs[0]), args.runs)
    print(f"contributions (1 model): median {med:.3f} ms  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
