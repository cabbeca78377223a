from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from routing.predictor import compiled
from routing.predictor.trees import ForestEvaluator, ensemble_from_json

needs_cc = pytest.mark.skipif(compiled._compiler() is None, reason="no C compiler")


def _boosters(seed: int) -> tuple[xgb.Booster, xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(800, 14)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    a, b, c = (np.nan_to_num(x[:, i]) for i in range(3))
    y = ((a + b * c) > 0).astype(float)
    quality = xgb.train(
        {"objective": "reg:logistic", "max_depth": 5, "eta": 0.2, "seed": seed}, xgb.DMatrix(x, label=y), 60
    )
    length = xgb.train(
        {"objective": "reg:squarederror", "max_depth": 3, "seed": seed},
        xgb.DMatrix(x, label=y * 4 + np.nan_to_num(x[:, 4])),
        35,
    )
    return quality, length, x


def _evaluator(*boosters: xgb.Booster) -> ForestEvaluator:
    return ForestEvaluator([ensemble_from_json(b.save_raw("json")) for b in boosters])


@needs_cc
def test_compiled_trees_equal_xgboost_inplace_predict_with_missing_values(tmp_path: Path) -> None:
    quality, length, _ = _boosters(3)
    evaluator = _evaluator(quality, length)
    forest = compiled.compile_forest(evaluator, tmp_path)
    assert forest is not None
    evaluator.use_compiled(forest)
    rng = np.random.default_rng(9)
    rows = rng.normal(size=(500, 14)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.3] = np.nan
    rows[:40] = compiled.probe_rows(evaluator, 40, seed=4)  # values on and beside the thresholds
    got = evaluator.predict(rows)
    np.testing.assert_allclose(got[:, 0], quality.inplace_predict(rows), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[:, 1], length.inplace_predict(rows), rtol=0, atol=1e-5)
    np.testing.assert_allclose(evaluator.margins(rows), evaluator.margins_numpy(rows), rtol=0, atol=1e-9)


@needs_cc
def test_a_few_rows_walk_their_trees_alone_to_the_same_margins(tmp_path: Path) -> None:
    quality, length, _ = _boosters(4)
    evaluator = _evaluator(quality, length)
    forest = compiled.compile_forest(evaluator, tmp_path)
    assert forest is not None
    rows = compiled.probe_rows(evaluator, 64, seed=6)
    everything = forest.margins(rows)
    for n in (1, 2, 5, 15, 16, 17):  # below 16 rows each row walks alone; from 16, level by level
        np.testing.assert_array_equal(forest.margins(rows[:n]), everything[:n])
        np.testing.assert_allclose(forest.margins(rows[:n]), evaluator.margins_numpy(rows[:n]), atol=1e-9)


@needs_cc
def test_a_compiled_library_is_reused_from_the_cache_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality, length, x = _boosters(5)
    assert compiled.compile_forest(_evaluator(quality, length), tmp_path) is not None
    assert len(list(tmp_path.glob("forest-kernel-*.so"))) == 1
    monkeypatch.setattr(compiled, "_compiler", lambda: None)
    again = _evaluator(quality, length)  # another process loading the same artifact
    forest = compiled.load_cached(again, tmp_path)
    assert forest is not None
    np.testing.assert_allclose(forest.margins(x[:50]), again.margins_numpy(x[:50]), atol=1e-9)


def test_without_a_compiler_the_numpy_evaluator_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality, _, x = _boosters(6)
    evaluator = _evaluator(quality)
    monkeypatch.setattr(compiled, "_compiler", lambda: None)
    assert compiled.compile_forest(evaluator, tmp_path) is None
    assert compiled.load_cached(evaluator, tmp_path) is None
    assert evaluator.compiled is None
    np.testing.assert_allclose(evaluator.predict(x[:20])[:, 0], quality.inplace_predict(x[:20]), atol=1e-5)


@needs_cc
def test_one_kernel_library_serves_every_forest(tmp_path: Path) -> None:
    quality, length, x = _boosters(10)
    other, _, _ = _boosters(11)
    first = compiled.compile_forest(_evaluator(quality, length), tmp_path)
    second_evaluator = _evaluator(other)
    second = compiled.compile_forest(second_evaluator, tmp_path)
    assert first is not None and second is not None and first.path == second.path
    assert len(list(tmp_path.glob("*.so"))) == 1
    np.testing.assert_allclose(
        second.margins(x[:30])[:, 0], other.inplace_predict(x[:30], predict_type="margin"), atol=1e-5
    )


@needs_cc
def test_a_library_that_disagrees_with_the_numpy_evaluator_is_refused(tmp_path: Path) -> None:
    quality, _, _ = _boosters(7)
    evaluator = _evaluator(quality)
    # a broken library under the kernel's name (e.g. a corrupted cache): it answers zeros
    source = tmp_path / "zero.c"
    source.write_text(
        "void scope_forest_margins(const float *x, long rows, long s, long nf, const int *a, const float *b,"
        " const float *c, long t, int d, const int *e, long nb, const double *base, float *buf, int *node,"
        " double *out) { for (long i = 0; i < rows * nb; ++i) out[i] = 0.0; }\n"
    )
    library = compiled._library(tmp_path)
    subprocess.run([str(compiled._compiler()), *compiled.CFLAGS, "-o", str(library), str(source)], check=True)
    assert compiled.load_cached(evaluator, tmp_path) is None
    assert compiled.compile_forest(evaluator, tmp_path) is None  # the cached library is not trusted either
    assert evaluator.compiled is None
