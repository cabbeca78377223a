"""Per-model Platt calibration of the text heads (FitParams.head_platt, off by default)."""

from __future__ import annotations

import dataclasses
import io
import zipfile

import numpy as np
import pytest

from routing.engine.types import ModelSpec
from routing.predictor.artifact import ArtifactError, pack, unpack
from routing.predictor.fit import FitResult, fit_predictor
from routing.predictor.text import fit_platt
from tests.routing import predictor_data as data


@pytest.fixture(scope="module")
def trained() -> FitResult:
    train, _ = data.examples(160, seed=11)
    params = dataclasses.replace(data.FAST, head_platt=True, min_platt_prompts=50)
    return fit_predictor(train, data.infos(), seed=0, params=params)


def _specs() -> list[ModelSpec]:
    return [
        ModelSpec(i.name, "p", "openai", i.input_usd_per_mtok or 0.0, i.output_usd_per_mtok or 0.0, 8192, 2)
        for i in data.infos()
    ]


def test_fit_platt_recovers_a_logistic_link_and_skips_small_models() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    p = 1.0 / (1.0 + np.exp(-(2.0 * x - 0.5)))
    y = (rng.random(p.shape) < p).astype(float)
    y[100:, 1] = np.nan  # the second model: 100 scored prompts only
    a, b = fit_platt(x, y, min_prompts=200)
    assert abs(a[0] - 2.0) < 0.2 and abs(b[0] + 0.5) < 0.15
    assert np.isnan(a[1]) and np.isnan(b[1])
    # soft labels: the expected score itself is a valid target
    a_soft, b_soft = fit_platt(x[:, :1], p[:, :1], min_prompts=200)
    assert abs(a_soft[0] - 2.0) < 1e-3 and abs(b_soft[0] + 0.5) < 1e-3


def test_calibrate_maps_calibrated_models_through_the_sigmoid_and_leaves_the_rest() -> None:
    train, _ = data.examples(60, seed=2)
    params = dataclasses.replace(data.FAST, head_platt=False)
    heads = fit_predictor(train, data.infos(), seed=0, params=params).predictor.heads
    assert not len(heads.platt_a)  # off: no calibration stored
    raw = np.array([[0.2, 0.9, -0.3]])
    m = len(heads.intercept)
    a = np.full(m, np.nan, dtype=np.float32)
    b = np.full(m, np.nan, dtype=np.float32)
    a[0], b[0] = 3.0, -1.0
    on = dataclasses.replace(heads, platt_a=a, platt_b=b)
    out = on.calibrate(np.resize(raw, (1, m)))
    assert out[0, 0] == pytest.approx(1.0 / (1.0 + np.exp(-(3.0 * 0.2 - 1.0))))
    np.testing.assert_array_equal(out[0, 1:], np.resize(raw, (1, m))[0, 1:])
    np.testing.assert_array_equal(heads.calibrate(raw), raw)


def test_batched_and_one_request_predictions_agree_with_the_calibration(trained: FitResult) -> None:
    p = trained.predictor
    assert len(p.heads.platt_a) == len(p.heads.intercept) and np.isfinite(p.heads.platt_a).all()
    _, feats = data.examples(12, seed=13)
    fs = [f for _, f in feats]
    batch = p.predict_batch(fs, data.infos())
    single = np.asarray([[q.quality for q in p.predict(f, _specs())] for f in fs])
    np.testing.assert_allclose(single, batch.quality, rtol=0, atol=1e-12)
    # the design rows read the calibrated heads: in (0, 1), and unlike the raw ones
    x, _ = p.design(fs, data.infos())
    col = p.names.index("text_head")
    assert ((x[:, col] > 0) & (x[:, col] < 1)).all()
    raw = dataclasses.replace(
        p.heads, platt_a=np.zeros(0, dtype=np.float32), platt_b=np.zeros(0, dtype=np.float32)
    )
    assert not np.allclose(p.heads.predict(p.projection, fs), raw.predict(p.projection, fs))


def test_the_artifact_keeps_the_calibration_and_older_artifacts_load_uncalibrated(
    trained: FitResult,
) -> None:
    p = trained.predictor
    raw = pack(p)
    loaded = unpack(raw, version="v-platt")
    np.testing.assert_array_equal(loaded.heads.platt_a, p.heads.platt_a)
    np.testing.assert_array_equal(loaded.heads.platt_b, p.heads.platt_b)
    _, feats = data.examples(8, seed=14)
    fs = [f for _, f in feats]
    np.testing.assert_array_equal(
        loaded.predict_batch(fs, data.infos()).quality, p.predict_batch(fs, data.infos()).quality
    )
    single = np.asarray([[q.quality for q in loaded.predict(f, _specs())] for f in fs])
    np.testing.assert_allclose(single, p.predict_batch(fs, data.infos()).quality, rtol=0, atol=1e-12)

    src = zipfile.ZipFile(io.BytesIO(raw))

    def without(*dropped: str, extra: dict[str, np.ndarray] | None = None) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as dst:
            for name in src.namelist():
                if name not in dropped:
                    dst.writestr(name, src.read(name))
            for name, array in (extra or {}).items():
                out = io.BytesIO()
                np.save(out, array, allow_pickle=False)
                dst.writestr(name, out.getvalue())
        return buf.getvalue()

    old = unpack(without("heads/platt_a.npy", "heads/platt_b.npy"), version="v-old")
    assert not len(old.heads.platt_a) and not len(old.heads.platt_b)
    assert np.isfinite(old.predict_batch(fs, data.infos()).quality).all()
    with pytest.raises(ArtifactError):
        unpack(
            without("heads/platt_a.npy", extra={"heads/platt_a.npy": np.ones(2, dtype=np.float32)}),
            version="v-bad",
        )
