from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from routing.engine.prior import PriorPredictor
from routing.engine.types import ModelSpec
from routing.predictor import metrics
from routing.predictor.artifact import ArtifactError, pack, unpack
from routing.predictor.fit import FitResult, fit_predictor
from routing.predictor.model import ModelInfo
from routing.predictor.trees import ensemble_from_ubj
from tests.routing import predictor_data as data

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained() -> FitResult:
    train, _ = data.examples(160, seed=1)
    return fit_predictor(train, data.infos(), seed=0, params=data.FAST)


def _spec(name: str, tier: int = 3) -> ModelSpec:
    inp, out = data.PRICES.get(name, (1.0, 1.0))
    return ModelSpec(name, "p", "simulated", inp, out, 8192, tier)


def test_training_on_a_small_generated_set_beats_the_prior_predictor(trained: FitResult) -> None:
    test, feats = data.examples(120, seed=2)
    batch = trained.predictor.predict_batch([f for _, f in feats], data.infos())
    col = {m: j for j, m in enumerate(data.SKILLS)}
    row = {key: i for i, key in enumerate(dict.fromkeys(e.prompt_key for e in test))}
    ours = np.asarray([batch.quality[row[e.prompt_key], col[e.model]] for e in test])
    prior = PriorPredictor()
    tiers = {"small": 1, "medium": 3, "large": 5, "lawyer": 2}
    theirs = np.asarray(
        [prior.predict(e.features, [_spec(e.model, tiers[e.model])])[0].quality for e in test]
    )
    truth = np.asarray([e.score for e in test])
    assert metrics.brier(ours, truth) < metrics.brier(theirs, truth) - 0.02
    assert (metrics.auc(ours, truth) or 0) > 0.75
    # it learned the interaction: the lawyer model is predicted best on law, worst on algebra
    law = [i for i, (t, _) in enumerate(feats) if t == "law"]
    algebra = [i for i, (t, _) in enumerate(feats) if t == "algebra"]
    assert batch.quality[law, col["lawyer"]].mean() > batch.quality[law, col["medium"]].mean()
    assert batch.quality[algebra, col["lawyer"]].mean() < batch.quality[algebra, col["medium"]].mean()
    # and the length of each model's answers
    assert batch.output_tokens[:, col["large"]].mean() > 2 * batch.output_tokens[:, col["small"]].mean()


def test_the_artifact_round_trips_to_identical_predictions(trained: FitResult) -> None:
    raw = pack(trained.predictor, metadata={"metrics": {"brier": 0.1}})
    loaded = unpack(raw, version="v-test")
    _, feats = data.examples(10, seed=3)
    a = trained.predictor.predict_batch([f for _, f in feats], data.infos())
    b = loaded.predict_batch([f for _, f in feats], data.infos())
    np.testing.assert_array_equal(a.quality, b.quality)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    assert loaded.version == "v-test" and loaded.metadata["metrics"] == {"brier": 0.1}
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        assert all(not n.endswith(".pkl") for n in zf.namelist())
        assert any(n.endswith(".ubj") for n in zf.namelist())


def test_the_text_heads_read_character_ngrams_and_the_artifact_keeps_them(trained: FitResult) -> None:
    p = trained.predictor
    assert len(p.projection.char_vocab) and p.heads.char_coef.shape == (
        len(p.projection.char_vocab),
        len(p.heads.intercept),
    )
    raw = pack(p)
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        assert {"text/char_vocab.npy", "text/char_idf.npy", "heads/char_coef.npy"} <= set(zf.namelist())
    loaded = unpack(raw, version="v-chars")
    np.testing.assert_array_equal(loaded.projection.char_vocab, p.projection.char_vocab)
    np.testing.assert_array_equal(loaded.heads.char_coef, p.heads.char_coef)
    # the character block moves the heads: the same request without its character n-grams differs
    _, feats = data.examples(5, seed=4)
    with_chars = p.heads.predict(p.projection, [f for _, f in feats])
    without = p.heads.predict(
        p.projection, [dataclasses.replace(f, char_ids=b"", char_counts=b"") for _, f in feats]
    )
    assert not np.allclose(with_chars, without)


def test_an_artifact_from_before_the_character_heads_still_loads_with_word_heads_only(
    trained: FitResult,
) -> None:
    src = zipfile.ZipFile(io.BytesIO(pack(trained.predictor)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            if name not in {"text/char_vocab.npy", "text/char_idf.npy", "heads/char_coef.npy"}:
                dst.writestr(name, src.read(name))
    loaded = unpack(buf.getvalue(), version="v-old")
    assert not len(loaded.projection.char_vocab) and not len(loaded.heads.char_coef)
    _, feats = data.examples(5, seed=5)
    batch = loaded.predict_batch([f for _, f in feats], data.infos())
    assert np.isfinite(batch.quality).all()


def test_it_refuses_character_heads_that_do_not_match_the_character_vocabulary(trained: FitResult) -> None:
    src = zipfile.ZipFile(io.BytesIO(pack(trained.predictor)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            body = src.read(name)
            if name == "heads/char_coef.npy":
                arr = np.load(io.BytesIO(body), allow_pickle=False)
                out = io.BytesIO()
                np.save(out, arr[:-1], allow_pickle=False)
                body = out.getvalue()
            dst.writestr(name, body)
    with pytest.raises(ArtifactError, match="character heads"):
        unpack(buf.getvalue(), version="x")


def _rewrite_meta(raw: bytes, **changes: object) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(raw))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            body = src.read(name)
            if name == "meta.json":
                meta = json.loads(body)
                meta.update(changes)
                body = json.dumps(meta).encode()
            dst.writestr(name, body)
    return buf.getvalue()


def test_it_refuses_an_artifact_of_another_schema_or_feature_list_or_corrupt(trained: FitResult) -> None:
    raw = pack(trained.predictor)
    with pytest.raises(ArtifactError, match="schema"):
        unpack(_rewrite_meta(raw, feature_schema=1), version="x")
    with pytest.raises(ArtifactError, match="feature names"):
        unpack(_rewrite_meta(raw, feature_names=["a", "b"]), version="x")
    with pytest.raises(ArtifactError):
        unpack(raw[: len(raw) // 2], version="x")
    with pytest.raises(ArtifactError):
        unpack(b"not a zip at all", version="x")


def test_boosters_are_read_without_xgboost_into_the_document_xgboost_writes(trained: FitResult) -> None:
    import xgboost as xgb

    from routing.predictor import ubjson

    assert trained.boosters
    for raw in trained.boosters:
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        # every key, tree array and float (float32 values as the JSON writer prints them) equal
        assert ubjson.loads(raw) == json.loads(booster.save_raw("json"))
    for broken in (raw[:-1], raw[: len(raw) // 3], b"{" + raw, raw + b"}", b""):
        with pytest.raises(ubjson.UBJSONError):
            ubjson.loads(broken)


def test_it_refuses_an_artifact_whose_booster_is_torn(trained: FitResult) -> None:
    src = zipfile.ZipFile(io.BytesIO(pack(trained.predictor)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            body = src.read(name)
            dst.writestr(name, body[: len(body) // 2] if name == "boosters/0.ubj" else body)
    with pytest.raises(ArtifactError, match="booster cannot be loaded"):
        unpack(buf.getvalue(), version="x")


def test_serving_a_predictor_does_not_import_xgboost(trained: FitResult, tmp_path: Path) -> None:
    """A gunicorn worker loads artifacts without xgboost (and the scikit-learn/SciPy it pulls in)."""
    path = tmp_path / "artifact.zip"
    path.write_bytes(pack(trained.predictor))
    _, feats = data.examples(3, seed=8)
    expected = trained.predictor.predict(feats[0][1], [_spec("large", 5)])[0].quality
    script = (
        "import sys, pathlib\n"
        "from routing.predictor.artifact import unpack\n"
        "from tests.routing import predictor_data as data\n"
        "from routing.engine.types import ModelSpec\n"
        f"p = unpack(pathlib.Path({str(path)!r}).read_bytes(), version='v')\n"
        "_, feats = data.examples(3, seed=8)\n"
        "spec = ModelSpec('large', 'p', 'simulated', *data.PRICES['large'], 8192, 5)\n"
        "print(repr(p.predict(feats[0][1], [spec])[0].quality))\n"
        "print(sorted(m for m in ('xgboost', 'sklearn', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    quality, imported = done.stdout.splitlines()
    assert float(quality) == expected and imported == "[]"


def test_a_model_held_out_of_training_is_scored_from_its_anchors_alone() -> None:
    train, _ = data.examples(200, seed=4, models=("small", "medium", "large"))
    fit = fit_predictor(train, data.infos(), seed=0, params=data.FAST)
    anchors, _ = data.examples(120, seed=5, models=("lawyer",))  # a 120-prompt anchor evaluation
    _, feats = data.examples(80, seed=6)
    infos = data.infos()
    lawyer = [i.name for i in infos].index("lawyer")
    before = fit.predictor.predict_batch([f for _, f in feats], infos)
    assert not before.known[lawyer]
    scored = fit.predictor.with_anchor_model(
        "lawyer", [(e.features, e.score, e.output_tokens) for e in anchors]
    )
    after = scored.predict_batch([f for _, f in feats], infos)
    assert after.known[lawyer]
    q = after.quality[:, lawyer]
    by_topic = {t: q[[i for i, (tt, _) in enumerate(feats) if tt == t]].mean() for t in data.TOPICS}
    # true skills: law 0.95, history 0.4, biology 0.3, algebra 0.1
    assert by_topic["law"] == max(by_topic.values()) and by_topic["algebra"] == min(by_topic.values())
    assert by_topic["law"] - by_topic["algebra"] > 0.25


def test_the_engine_protocol_marks_unknown_models_and_explains_the_choice(trained: FitResult) -> None:
    _, feats = data.examples(1, seed=7)
    specs = [_spec("large", 5), _spec("brand-new", 3)]
    preds = trained.predictor.predict(feats[0][1], specs)
    assert preds[0].known and not preds[1].known
    assert 0.0 <= preds[0].quality <= 1.0 and preds[0].uncertainty > 0 and preds[0].output_tokens > 1
    assert preds[0].latency_ms > 0
    contributions = trained.predictor.contributions(feats[0][1], specs[0], top=3)
    assert 0 < len(contributions) <= 3
    assert all({"feature", "value", "contribution"} <= set(c) for c in contributions)
    assert trained.predictor.contributions(feats[0][1], specs[1]) == []


def test_unpriced_models_are_scored_too(trained: FitResult) -> None:
    _, feats = data.examples(3, seed=8)
    batch = trained.predictor.predict_batch([f for _, f in feats], [ModelInfo("large")])
    assert batch.known[0] and np.all((batch.quality >= 0) & (batch.quality <= 1))


def test_quality_trees_are_shallower_than_the_length_trees() -> None:
    import dataclasses

    train, _ = data.examples(400, seed=3)
    params = dataclasses.replace(data.FAST, quality_max_depth=2, max_depth=4)
    fit = fit_predictor(train, data.infos(), seed=0, params=params)
    depths: dict[str, list[int]] = {}
    for role, raw in zip(fit.predictor.roles, fit.boosters, strict=True):
        depths.setdefault(role, []).append(ensemble_from_ubj(raw).depth)
    assert len(depths["quality"]) == params.ensemble
    assert max(depths["quality"]) <= 2
    assert 2 < max(depths["tokens"]) <= 4


def test_prompts_scored_for_several_models_train_the_decomposed_pair_and_one_model_each_does_not() -> None:
    import dataclasses

    shared, _ = data.examples(160, seed=9)
    fit = fit_predictor(shared, data.infos(), seed=0, params=data.FAST)
    assert fit.predictor.roles.count("prompt_mean") == fit.predictor.roles.count("relative") == 2
    assert fit.counts["decomposed_rows"] == len(shared)
    # a decision log: each request answered by one model only; nothing to decompose
    names = list(data.SKILLS)
    single = [e for i, e in enumerate(shared) if e.model == names[(i // len(names)) % len(names)]]
    alone = fit_predictor(single, data.infos(), seed=0, params=data.FAST).predictor
    assert "prompt_mean" not in alone.roles and "relative" not in alone.roles
    # and too few shared prompts: the quality ensemble alone
    few = dataclasses.replace(data.FAST, min_decomposed_prompts=len(shared) + 1)
    assert "relative" not in fit_predictor(shared, data.infos(), seed=0, params=few).predictor.roles


def test_the_decomposed_pair_moves_quality_but_never_with_the_other_candidates(trained: FitResult) -> None:
    from routing.predictor.model import DECOMPOSED_SHARE

    predictor = trained.predictor
    assert "relative" in predictor.roles
    assert predictor.decomposed_share == DECOMPOSED_SHARE  # every training prompt has several models
    _, feats = data.examples(40, seed=10)
    features = [f for _, f in feats]
    infos = data.infos()
    batch = predictor.predict_batch(features, infos)
    x, _ = predictor.design(features, infos)
    out = predictor.evaluator.predict(x)
    roles = np.asarray(predictor.roles)
    ensemble = out[:, roles == "quality"].mean(axis=1)
    decomposed = out[:, roles == "prompt_mean"].mean(axis=1) + out[:, roles == "relative"].mean(axis=1)
    share = predictor.decomposed_share
    expected = np.clip((1 - share) * ensemble + share * decomposed, 0, 1)
    np.testing.assert_allclose(batch.quality.ravel(), expected, atol=1e-6)
    assert np.abs(batch.quality.ravel() - ensemble).max() > 1e-3  # the pair does change predictions
    for j, info in enumerate(infos):
        alone = predictor.predict_batch(features, [info])
        np.testing.assert_allclose(alone.quality[:, 0], batch.quality[:, j], atol=1e-9)


def test_single_model_rows_shrink_the_decomposed_share_and_the_artifact_keeps_it() -> None:
    import dataclasses

    from routing.predictor.model import DECOMPOSED_SHARE

    shared, _ = data.examples(160, seed=9)
    names = list(data.SKILLS)
    # a decision log beside the evaluation data: each logged request answered by one model, weighted 3
    logged = [
        dataclasses.replace(e, prompt_key=f"log:{e.prompt_key}", weight=3.0)
        for i, e in enumerate(data.examples(160, seed=11)[0])
        if e.model == names[(i // len(names)) % len(names)]
    ]
    fit = fit_predictor(shared + logged, data.infos(), seed=0, params=data.FAST)
    weight_shared = float(len(shared))
    expected = DECOMPOSED_SHARE * weight_shared / (weight_shared + 3.0 * len(logged))
    assert fit.predictor.decomposed_share == pytest.approx(expected, abs=1e-6)
    assert 0 < fit.predictor.decomposed_share < DECOMPOSED_SHARE
    loaded = unpack(pack(fit.predictor), version="v-share")
    assert loaded.decomposed_share == pytest.approx(fit.predictor.decomposed_share)
    _, feats = data.examples(20, seed=12)
    features = [f for _, f in feats]
    np.testing.assert_allclose(
        loaded.predict_batch(features, data.infos()).quality,
        fit.predictor.predict_batch(features, data.infos()).quality,
        atol=1e-6,
    )
