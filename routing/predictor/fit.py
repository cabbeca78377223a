"""Training a ScopePredictor from examples (pure: no Django, no I/O).

Steps: fit the text projection on the training prompts; fit coarse and fine centroids; compute
every training row's anchor statistics out of fold (the prompt's own outcomes never describe
it); train the quality ensemble (reg:logistic, each member early-stopped on its own held-out
prompts), the decomposed quality pair where prompts have several scored models (model.py), the
log-length model and, where the data has latencies, the log-latency model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from routing.features import FEATURE_NAMES, RequestFeatures
from routing.predictor.anchors import build_table, fit_centroids
from routing.predictor.model import (
    DECOMPOSED_SHARE,
    PAIR_FEATURES,
    ModelInfo,
    ScopePredictor,
    design_names,
    design_rows,
    request_means,
)
from routing.predictor.text import TextHeads, fit_heads, fit_projection, tfidf_matrix
from routing.predictor.trees import ForestEvaluator, ensemble_from_ubj

Progress = Callable[[float, str], None]


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """One (request, model) outcome. Examples sharing `prompt_key` are the same request."""

    prompt_key: str
    features: RequestFeatures
    model: str
    score: float  # in [0, 1]
    output_tokens: float | None = None
    latency_ms: float | None = None
    weight: float = 1.0
    source: str = ""


@dataclass(frozen=True)
class FitParams:
    text_dim: int = 48
    coarse_centroids: int = 12
    fine_centroids: int = 64
    folds: int = 5
    ensemble: int = 3
    max_rounds: int = 300
    learning_rate: float = 0.08
    max_depth: int = 5  # the length and latency models
    # quality trees are kept shallow: depth 3 routed better than 5 on all five shared sets (3 seeds on
    # mmlu, 6 on the small sets; mmlu APGR +0.004, alpacaeval2 +0.005, gsm8k +0.015, alpacaeval1 +0.003,
    # mt-bench ±0)
    quality_max_depth: int = 3
    min_latency_rows: int = 50
    min_token_rows: int = 20
    # the text heads' ridge penalty: the one of these with the lowest out-of-fold error (per group of
    # models scored on the same prompts). Word n-grams alone picked 3.0; with the character block
    # beside them the inputs carry twice the squared norm and mmlu picks 10.0 on every seed.
    head_alphas: tuple[float, ...] = (3.0, 10.0, 30.0)
    # at most this many hashed character 2-4-gram buckets (seen in ≥ 2 prompts) beside the word
    # n-grams in the text heads' input; 0 = words only. bench-quality against a same-day baseline:
    # routellm-mmlu APGR 0.684 -> 0.693 on seeds 0-2, 0.683 -> 0.691 on seeds 0-5 (higher on every
    # seed); seeds 0-9 on the other sets: gsm8k 0.599 -> 0.609 (higher on all 10), alpacaeval1
    # 0.922 -> 0.921, alpacaeval2 0.587 -> 0.588, mt-bench 0.774 -> 0.777
    char_vocab: int = 100_000
    # NBSVM-style heads: each model's ridge reads the input with every column scaled by |its naive-Bayes
    # log-count ratio for that model|^head_nb_beta (0 = plain ridge; text.fit_heads). bench-quality
    # against a same-day baseline: routellm-mmlu APGR 0.693 -> 0.698 on seeds 0-2 (higher on each),
    # 0.691 -> 0.695 on seeds 0-5 (higher on all six); seeds 0-2 on the other sets: gsm8k 0.601 ->
    # 0.604, mt-bench 0.808 -> 0.819, alpacaeval1 0.900 -> 0.920, alpacaeval2 0.587 -> 0.588. Picked
    # out of fold from 0.25 / 0.5 / 1.0, every mmlu head of seed 0 chose 0.5.
    head_nb_beta: float = 0.5
    # a third block in the text heads' input, for multiple-choice prompts only: the word n-grams of the
    # question stem and of the answer options, hashed apart (text.option_ngrams). Alone it gave
    # routellm-mmlu 0.6983 -> 0.6998 on seeds 0-2, 0.6915 -> 0.6942 over seeds 0-9 (seventh session, first helper);
    # on since the same session together with head_platt below (docs/predictor-research.md)
    head_options: bool = True
    # ... and only when at least this many training prompts have option lines: a block fitted on a
    # handful of prompts (mt-bench has 4 in 80) only moves those prompts' heads at random
    min_option_prompts: int = 200
    # per-model Platt calibration of the text heads: sigmoid(a * head + b), (a, b) a logistic regression
    # of the model's score on its out-of-fold head (text.fit_platt); the boosters read the calibrated
    # head (training: the calibrated out-of-fold heads; serving: the artifact's a, b). With head_options,
    # bench-quality against the same-day baseline: routellm-mmlu 0.6983 -> 0.7020 on seeds 0-2,
    # 0.6915 -> 0.6957 over seeds 0-9 (higher on 9 of 10); seeds 0-2 on the other sets: gsm8k
    # 0.6039 -> 0.6015, mt-bench 0.8191 -> 0.8191 (no model has 200 prompts), alpacaeval1 0.9202 ->
    # 0.9325, alpacaeval2 0.5883 -> 0.5897, each above kNN on every seed (seventh session)
    head_platt: bool = True
    # ... only for a model scored on at least this many training prompts (others keep the raw head):
    # without the guard mt-bench fell below kNN (sixth session)
    min_platt_prompts: int = 200
    small_data_rows: int = 5000
    min_validation_rows: int = 300
    # each booster trains on at most this many (prompt, model) rows, a different random draw per
    # ensemble member: 15,000 prompts × 56 models (840,000 rows) trained ten boosters for over ten
    # minutes. The shared data sets have at most 45,000 rows, so the cap never applies to them.
    max_booster_rows: int = 300_000
    small_data_rounds: int = 120
    hide_head_share: float = 0.15
    # prompts scored for two or more models needed to train the decomposed pair (prompt mean and
    # each model's deviation from it); below that the quality ensemble alone predicts
    min_decomposed_prompts: int = 20


@dataclass
class FitResult:
    predictor: ScopePredictor
    boosters: list[bytes]  # UBJSON, in predictor.roles order
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def _noop(fraction: float, message: str) -> None:
    return None


def fit_predictor(
    examples: Sequence[TrainingExample],
    models: Sequence[ModelInfo],
    *,
    seed: int = 0,
    version: str = "unsaved",
    params: FitParams | None = None,
    progress: Progress | None = None,
) -> FitResult:
    import xgboost as xgb

    params = params or FitParams()
    said = progress or _noop
    stage: list[Any] = [0.0, ""]  # what was said last: per-round reports keep its fraction and message

    def step(fraction: float, message: str) -> None:
        stage[:] = [fraction, message]
        said(fraction, message)

    class Rounds(xgb.callback.TrainingCallback):
        """Says how far a booster is every round: a long fit stays visibly alive (the retraining
        run's heartbeat) instead of silent for minutes."""

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            said(float(stage[0]), f"{stage[1]}, round {epoch + 1}")
            return False

    started = time.perf_counter()
    if not examples:
        raise ValueError("no training examples")
    info_by_name = {m.name: m for m in models}
    keys: dict[str, int] = {}
    prompt_features: list[RequestFeatures] = []
    for ex in examples:
        if ex.prompt_key not in keys:
            keys[ex.prompt_key] = len(prompt_features)
            prompt_features.append(ex.features)
    model_names = sorted({ex.model for ex in examples})
    col = {m: j for j, m in enumerate(model_names)}
    n_p, n_m = len(prompt_features), len(model_names)
    scores = np.full((n_p, n_m), np.nan)
    log_tokens = np.full((n_p, n_m), np.nan)
    for ex in examples:
        i, j = keys[ex.prompt_key], col[ex.model]
        scores[i, j] = min(max(float(ex.score), 0.0), 1.0)
        if ex.output_tokens is not None and ex.output_tokens >= 0:
            log_tokens[i, j] = math.log1p(ex.output_tokens)

    step(0.05, f"text projection over {n_p} prompts")
    projection = fit_projection(prompt_features, dim=params.text_dim, seed=seed, char_vocab=params.char_vocab)
    emb = projection.transform(prompt_features)
    coarse = fit_centroids(emb, params.coarse_centroids, seed)
    fine = fit_centroids(emb, params.fine_centroids, seed + 1)

    step(0.2, "out-of-fold anchor statistics and text heads")
    rng = np.random.default_rng(seed)
    n_folds = max(2, params.folds)
    fold = rng.integers(0, n_folds, size=n_p)
    all_cols = np.arange(n_m)
    pair = np.empty((n_p, n_m, len(PAIR_FEATURES)))
    for f in range(n_folds):
        inside = fold == f
        if not inside.any():
            continue
        table = build_table(model_names, emb[~inside], scores[~inside], log_tokens[~inside], coarse, fine)
        pair[inside, :, :-1] = table.features(emb[inside], all_cols)
    matrix = tfidf_matrix(prompt_features, projection.vocab, projection.idf)
    n_words = matrix.shape[1]
    if len(projection.char_vocab):
        from scipy import sparse

        chars = tfidf_matrix(prompt_features, projection.char_vocab, projection.char_idf, chars=True)
        matrix = sparse.hstack([matrix, chars], format="csr")
    n_wc = matrix.shape[1]
    option_vocab = np.zeros(0, dtype=np.int64)
    option_idf = np.zeros(0, dtype=np.float32)
    if params.head_options:
        from scipy import sparse

        from routing.predictor.text import option_matrix

        options, option_vocab, option_idf = option_matrix([f.text for f in prompt_features])
        if options.shape[1] and options.getnnz(axis=1).astype(bool).sum() >= params.min_option_prompts:
            matrix = sparse.hstack([matrix, options], format="csr")
        else:
            option_vocab, option_idf = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    oof_heads, heads = fit_heads(
        matrix,
        scores,
        fold,
        n_folds,
        alpha=params.head_alphas,
        nb_beta=params.head_nb_beta,
        progress=lambda done: said(round(0.2 + 0.1 * done, 4), f"text heads {done:.0%}"),
    )
    if len(projection.char_vocab) or len(option_vocab):
        heads = TextHeads(
            coef=np.ascontiguousarray(heads.coef[:n_words]),
            intercept=heads.intercept,
            char_coef=np.ascontiguousarray(heads.coef[n_words:n_wc]),
            option_vocab=option_vocab,
            option_idf=option_idf,
            option_coef=np.ascontiguousarray(heads.coef[n_wc:]),
        )
    if params.head_platt:
        from routing.predictor.text import fit_platt

        platt_a, platt_b = fit_platt(oof_heads, scores, params.min_platt_prompts)
        heads = dataclasses.replace(heads, platt_a=platt_a, platt_b=platt_b)
        oof_heads = heads.calibrate(oof_heads)
    pair[:, :, -1] = oof_heads
    means = request_means(pair)
    req = np.asarray([f.values for f in prompt_features], dtype=np.float64).reshape(n_p, len(FEATURE_NAMES))
    vectors = np.asarray(
        [(info_by_name.get(m) or ModelInfo(m)).vector() for m in model_names], dtype=np.float64
    ).reshape(n_m, 4)

    prompt_of_row = np.asarray([keys[ex.prompt_key] for ex in examples])
    model_of_row = np.asarray([col[ex.model] for ex in examples])
    x = design_rows(
        req[prompt_of_row],
        emb[prompt_of_row],
        vectors[model_of_row][:, None, :],
        pair[prompt_of_row, model_of_row][:, None, :],
        means[prompt_of_row],
    )
    # some rows without a text head, as for a model known only from anchors
    names = list(design_names(projection.dim))
    hide = rng.random(len(x)) < params.hide_head_share
    head_cols = np.asarray([names.index("text_head"), names.index("head_minus_all")])
    x[np.ix_(hide, head_cols)] = np.nan
    y_q = np.asarray([min(max(float(ex.score), 0.0), 1.0) for ex in examples])
    w = np.asarray([max(float(ex.weight), 0.0) for ex in examples])

    boosters: list[bytes] = []
    roles: list[str] = []
    base = {
        "tree_method": "hist",
        "max_depth": params.max_depth,
        "eta": params.learning_rate,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        # a hessian floor of 4 stops any split on a few hundred rows (logistic hessians are ≤ 0.25)
        "min_child_weight": 4 if len(examples) >= params.small_data_rows else 1,
        "lambda": 2.0,
        "nthread": 2,
    }

    def train(
        objective: str, mask: np.ndarray, target: np.ndarray, member: int, depth: int | None = None
    ) -> xgb.Booster:
        rows = np.flatnonzero(mask)
        if len(rows) > params.max_booster_rows:
            draw = np.random.default_rng(seed * 131 + member)
            picked = np.sort(draw.choice(len(rows), params.max_booster_rows, replace=False))
            rows, target = rows[picked], target[picked]
        sub_prompts = prompt_of_row[rows]
        holdout_draw = np.random.default_rng(seed * 97 + member).random(n_p) < 0.15
        val = holdout_draw[sub_prompts]
        rounds = params.max_rounds
        if val.sum() < params.min_validation_rows or (~val).sum() < 10:
            # too little to early-stop on: a fixed, shorter run on every row
            val = np.zeros(len(sub_prompts), dtype=bool)
            rounds = min(params.max_rounds, params.small_data_rounds)
        xm, ym, wm = x[rows], target, w[rows]
        dtrain = xgb.DMatrix(xm[~val], label=ym[~val], weight=wm[~val], feature_names=names)
        evals = []
        if val.any():
            evals = [(xgb.DMatrix(xm[val], label=ym[val], weight=wm[val], feature_names=names), "val")]
        booster = xgb.train(
            {
                **base,
                "objective": objective,
                "seed": seed * 31 + member,
                "max_depth": depth or params.max_depth,
            },
            dtrain,
            num_boost_round=rounds,
            evals=evals,
            early_stopping_rounds=30 if evals else None,
            verbose_eval=False,
            callbacks=[Rounds()],
        )
        if evals:
            booster = booster[: booster.best_iteration + 1]
        return booster

    everything = np.ones(len(examples), dtype=bool)
    for member in range(params.ensemble):
        step(0.3 + 0.5 * member / params.ensemble, f"quality model {member + 1}/{params.ensemble}")
        b = train("reg:logistic", everything, y_q, member, params.quality_max_depth)
        boosters.append(bytes(b.save_raw("ubj")))
        roles.append("quality")
    # the decomposed pair, on the prompts with several scored models: their mean score, and each
    # model's deviation from it (the relative trees spend every split on differences between models)
    per_prompt = np.bincount(prompt_of_row, minlength=n_p)
    shared = per_prompt[prompt_of_row] >= 2
    # its say in the blend: the (weighted) share of the training rows it could learn from
    decomposed_share = DECOMPOSED_SHARE * float(w[shared].sum() / max(w.sum(), 1e-12))
    if (per_prompt >= 2).sum() >= params.min_decomposed_prompts:
        total = np.bincount(prompt_of_row, weights=y_q, minlength=n_p)
        prompt_mean = (total / np.maximum(per_prompt, 1))[prompt_of_row]
        for role, objective, target, first in (
            ("prompt_mean", "reg:logistic", prompt_mean, 200),
            ("relative", "reg:squarederror", y_q - prompt_mean, 300),
        ):
            for member in range(params.ensemble):
                step(0.8, f"{role} model {member + 1}/{params.ensemble}")
                b = train(objective, shared, target[shared], first + member, params.quality_max_depth)
                boosters.append(bytes(b.save_raw("ubj")))
                roles.append(role)
    tok = np.asarray([ex.output_tokens is not None and ex.output_tokens >= 0 for ex in examples])
    if tok.sum() >= params.min_token_rows:
        step(0.85, "output length model")
        y_t = np.log1p(np.asarray([ex.output_tokens for ex in examples], dtype=object)[tok].astype(float))
        boosters.append(bytes(train("reg:squarederror", tok, y_t, 100).save_raw("ubj")))
        roles.append("tokens")
    lat = np.asarray([ex.latency_ms is not None and ex.latency_ms >= 0 for ex in examples])
    if lat.sum() >= params.min_latency_rows:
        step(0.92, "latency model")
        y_l = np.log1p(np.asarray([ex.latency_ms for ex in examples], dtype=object)[lat].astype(float))
        boosters.append(bytes(train("reg:squarederror", lat, y_l, 200).save_raw("ubj")))
        roles.append("latency")

    table = build_table(model_names, emb, scores, log_tokens, coarse, fine)
    evaluator = ForestEvaluator([ensemble_from_ubj(b) for b in boosters])
    predictor = ScopePredictor(
        version=version,
        projection=projection,
        anchors=table,
        heads=heads,
        evaluator=evaluator,
        roles=roles,
        boosters=boosters,
        metadata={"decomposed_share": round(decomposed_share, 6)} if "relative" in roles else {},
    )
    step(1.0, "trained")
    counts = {
        "examples": len(examples),
        "prompts": n_p,
        "models": n_m,
        "with_output_tokens": int(tok.sum()),
        "with_latency": int(lat.sum()),
        "decomposed_rows": int(shared.sum()) if "relative" in roles else 0,
    }
    return FitResult(
        predictor=predictor, boosters=boosters, seconds=time.perf_counter() - started, counts=counts
    )
