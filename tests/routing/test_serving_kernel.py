"""The compiled serving kernel gives exactly the numpy path's design rows and predictions, or is not used."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from routing.engine.types import ModelSpec
from routing.features import extract_prompt_features
from routing.predictor import serving_kernel
from routing.predictor.fit import fit_predictor
from routing.predictor.model import ScopePredictor
from routing.predictor.serving_kernel import probe_requests, serving_kernel_install
from tests.routing.predictor_data import FAST, PRICES, SKILLS, examples, infos, prompts


@pytest.fixture
def clean_kernel() -> Iterator[None]:
    before = serving_kernel.serving_kernel()
    serving_kernel.use_serving_kernel(None)
    yield
    serving_kernel.use_serving_kernel(before)


@pytest.fixture(scope="module")
def predictor() -> ScopePredictor:
    train, feats = examples(160, seed=3)
    rng = np.random.default_rng(5)
    train = [replace(ex, latency_ms=float(rng.uniform(200, 900))) for ex in train]
    p = fit_predictor(train, infos(), seed=1, params=FAST).predictor
    anchors = [(f, float(topic == "law"), None) for topic, f in feats[:60]]
    return p.with_anchor_model("anchor-only", anchors)


def _specs() -> list[ModelSpec]:
    names = [*SKILLS, "anchor-only", "brand-new"]
    return [
        ModelSpec(
            name=name,
            provider="sim",
            provider_kind="simulated",
            input_usd_per_mtok=PRICES.get(name, (1.5, 3.0))[0],
            output_usd_per_mtok=PRICES.get(name, (1.5, 3.0))[1],
            context_window=8192,
            tier=1 + i % 4,
        )
        for i, name in enumerate(names)
    ]


def _requests(predictor: ScopePredictor) -> list:
    texts = [text for _, text in prompts(40, seed=11)]
    texts += ["Explain the court appeal of a contract " * 20, "Which?\nA. cell\nB. gene\nC. war\nD. king\n"]
    return [extract_prompt_features(t) for t in texts] + probe_requests(predictor, n=40, seed=3)


def test_rows_and_predictions_are_the_numpy_paths_to_the_bit(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor
) -> None:
    specs = _specs()
    numpy_rows, numpy_predictions = [], []
    requests = _requests(predictor)
    for features in requests:
        numpy_rows.append(predictor.plan.rows(features, predictor.plan.layout(specs)))
        numpy_predictions.append(predictor.predict(features, specs))
    assert predictor.plan.fast() is None
    assert serving_kernel_install(tmp_path)
    assert predictor.plan.fast() is not None, "the plan's probe check passed"
    served = 0
    for features, rows, made in zip(requests, numpy_rows, numpy_predictions, strict=True):
        layout = predictor.plan.layout(specs)
        fast = predictor.plan.fast().rows(features, layout)
        if fast is not None:
            served += 1
            np.testing.assert_array_equal(fast, rows)
        assert predictor.predict(features, specs) == made
    assert served >= len(requests) - 3  # only ties for the last top centroid go to numpy


def test_the_batched_path_still_agrees_with_the_kernel(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor
) -> None:
    assert serving_kernel_install(tmp_path)
    specs = _specs()
    for features in _requests(predictor)[:20]:
        batch = predictor.predict_batch([features], [predictor._info(s) for s in specs])
        fast = predictor.predict(features, specs)
        for j, p in enumerate(fast[:-1]):
            assert p.quality == pytest.approx(batch.quality[0, j], abs=1e-9)
            assert p.uncertainty == pytest.approx(batch.uncertainty[0, j], abs=1e-9)
            assert p.output_tokens == pytest.approx(batch.output_tokens[0, j], rel=1e-9)


def test_a_kernel_that_disagrees_is_not_used(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert serving_kernel_install(tmp_path)
    kernel = serving_kernel.serving_kernel()
    assert kernel is not None
    real_rows = kernel.rows

    def off_by_one_ulp(*args: object) -> int:
        result = int(real_rows(*args))
        out = np.ctypeslib.as_array(
            (np.ctypeslib.ctypes.c_float * 1).from_address(int(args[-1]))  # type: ignore[call-overload]
        )
        out[0] = np.nextafter(out[0], np.float32(np.inf))
        return result

    monkeypatch.setattr(kernel, "rows", off_by_one_ulp)
    plan = ScopePredictor(
        predictor.version,
        predictor.projection,
        predictor.anchors,
        predictor.heads,
        predictor.evaluator,
        predictor.roles,
        predictor.boosters,
        predictor.metadata,
    ).plan
    assert plan.fast() is None


def test_without_a_compiler_numpy_keeps_serving(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert serving_kernel_install(tmp_path) is False
    assert predictor.plan.fast() is None
    assert predictor.predict(_requests(predictor)[0], _specs())[0].known
