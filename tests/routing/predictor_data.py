"""Small generated outcome data for predictor tests: topics with their own words, models with skills."""

from __future__ import annotations

import numpy as np

from routing.features import RequestFeatures, extract_prompt_features
from routing.predictor.fit import FitParams, TrainingExample
from routing.predictor.model import ModelInfo, ScopePredictor

TOPICS = {
    "algebra": "solve equation polynomial root variable coefficient quadratic factor",
    "history": "empire war treaty king revolution century dynasty battle",
    "biology": "cell protein enzyme gene organism membrane species evolution",
    "law": "contract court statute plaintiff liability tort appeal judge",
}
# skill[model][topic]: chance of a right answer
SKILLS = {
    "small": {"algebra": 0.2, "history": 0.8, "biology": 0.5, "law": 0.3},
    "medium": {"algebra": 0.5, "history": 0.85, "biology": 0.7, "law": 0.6},
    "large": {"algebra": 0.9, "history": 0.9, "biology": 0.9, "law": 0.85},
    "lawyer": {"algebra": 0.1, "history": 0.4, "biology": 0.3, "law": 0.95},
}
PRICES = {"small": (0.1, 0.2), "medium": (1.0, 2.0), "large": (10.0, 30.0), "lawyer": (2.0, 4.0)}
TOKENS = {"small": 80.0, "medium": 150.0, "large": 300.0, "lawyer": 200.0}
FAST = FitParams(text_dim=8, coarse_centroids=4, fine_centroids=8, folds=3, ensemble=2, max_rounds=60)


def prompts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    out = []
    for i in range(n):
        topic = names[i % len(names)]
        words = rng.choice(TOPICS[topic].split(), size=6)
        filler = rng.choice("the a of to and which what is how".split(), size=4)
        out.append((topic, f"Question {i}: " + " ".join(np.concatenate([words, filler])) + "?"))
    return out


def examples(
    n: int, seed: int, models: tuple[str, ...] = tuple(SKILLS)
) -> tuple[list[TrainingExample], list[tuple[str, RequestFeatures]]]:
    rng = np.random.default_rng(seed + 1)
    out = []
    feats = []
    for i, (topic, text) in enumerate(prompts(n, seed)):
        f = extract_prompt_features(text)
        feats.append((topic, f))
        for m in models:
            score = float(rng.random() < SKILLS[m][topic])
            tokens = TOKENS[m] * float(rng.uniform(0.8, 1.2))
            out.append(TrainingExample(f"{seed}:{i}", f, m, score, output_tokens=tokens, source="generated"))
    return out, feats


def infos() -> list[ModelInfo]:
    return [ModelInfo(m, PRICES[m][0], PRICES[m][1], 8192, None) for m in SKILLS]


def served_predictor() -> ScopePredictor:
    """A FAST predictor with every serving part: a latency booster (part of the single pass) and a
    model known only from a small anchor evaluation ("anchor-only": no text head, NaN features)."""
    from dataclasses import replace

    from routing.predictor.fit import fit_predictor

    train, feats = examples(160, seed=3)
    rng = np.random.default_rng(5)
    train = [replace(ex, latency_ms=float(rng.uniform(200, 900))) for ex in train]
    p = fit_predictor(train, infos(), seed=1, params=FAST).predictor
    anchors = [(f, float(topic == "law"), None) for topic, f in feats[:60]]
    return p.with_anchor_model("anchor-only", anchors)
