"""The compiled serving kernel gives exactly the numpy path's design rows and predictions, or is not used."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from routing.engine.types import ModelSpec
from routing.features import extract_prompt_features
from routing.predictor import compiled, serving_kernel
from routing.predictor.model import ScopePredictor
from routing.predictor.serving_kernel import probe_requests, serving_kernel_install
from routing.predictor.serving_source import VOCAB_MIX, char_table, vocab_table
from tests.routing.predictor_data import PRICES, SKILLS, prompts, served_predictor


@pytest.fixture
def clean_kernel() -> Iterator[None]:
    before = serving_kernel.serving_kernel()
    serving_kernel.use_serving_kernel(None)
    yield
    serving_kernel.use_serving_kernel(before)


@pytest.fixture(scope="module")
def trained() -> ScopePredictor:
    return served_predictor()


@pytest.fixture
def predictor(trained: ScopePredictor, tmp_path: Path) -> Iterator[ScopePredictor]:
    """The trained predictor with its trees compiled (the kernel's predictions need them), as a
    fresh object (a fresh serving plan)."""
    forest = compiled.compile_forest(trained.evaluator, tmp_path)
    assert forest is not None
    trained.evaluator.use_compiled(forest)
    yield _copy(trained)
    trained.evaluator.use_compiled(None)


def _copy(p: ScopePredictor) -> ScopePredictor:
    return ScopePredictor(
        p.version, p.projection, p.anchors, p.heads, p.evaluator, p.roles, p.boosters, p.metadata
    )


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
        bound = predictor.plan.fast()
        assert bound is not None
        fast = bound.rows(features, layout)
        if fast is not None:
            served += 1
            np.testing.assert_array_equal(fast, rows)
        assert predictor.predict(features, specs) == made
    assert served >= len(requests) - 3  # only ties for the last top centroid go to numpy
    bound = predictor.plan.fast()
    assert bound is not None
    assert bound.predict(requests[0], predictor.plan.layout(specs)) is not None


def test_without_compiled_trees_the_kernel_still_makes_the_rows(
    tmp_path: Path, clean_kernel: None, trained: ScopePredictor
) -> None:
    p = _copy(trained)
    specs = _specs()
    features = _requests(p)[0]
    expected = p.predict(features, specs)
    assert serving_kernel_install(tmp_path)
    fast = p.plan.fast()
    assert fast is not None
    assert fast.predict(features, p.plan.layout(specs)) is None
    assert fast.rows(features, p.plan.layout(specs)) is not None
    assert p.predict(features, specs) == expected


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


def _one_ulp_up(fn: Callable[..., int], at: int) -> Callable[..., int]:
    """`fn` with the first float of the output at args[at] (an address) one ulp higher."""

    def changed(*args: int) -> int:
        result = fn(*args)
        out = (ctypes.c_float if at == -1 else ctypes.c_double).from_address(args[at])
        out.value = float(np.nextafter(np.float32(out.value) if at == -1 else out.value, np.inf))
        return result

    return changed


def test_rows_that_disagree_are_not_used(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert serving_kernel_install(tmp_path)
    kernel = serving_kernel.serving_kernel()
    assert kernel is not None
    monkeypatch.setattr(kernel, "rows", _one_ulp_up(kernel.rows, -1))
    assert predictor.plan.fast() is None


def test_predictions_that_disagree_are_not_used(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert serving_kernel_install(tmp_path)
    kernel = serving_kernel.serving_kernel()
    assert kernel is not None
    monkeypatch.setattr(kernel, "post", _one_ulp_up(kernel.post, 9))  # the first quality
    specs = _specs()
    features = _requests(predictor)[0]
    fast = predictor.plan.fast()
    assert fast is not None, "the rows agree"
    assert fast.predict(features, predictor.plan.layout(specs)) is None
    monkeypatch.undo()
    assert predictor.predict(features, specs) == _copy(predictor).predict(features, specs)


def test_without_a_compiler_numpy_keeps_serving(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert serving_kernel_install(tmp_path) is False
    assert predictor.plan.fast() is None
    assert predictor.predict(_requests(predictor)[0], _specs())[0].known


def test_contributions_are_the_numpy_paths_after_predict_and_for_other_requests(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor
) -> None:
    specs = _specs()
    requests = _requests(predictor)[:12]
    expected = [[predictor.contributions(f, s, top=8) for s in specs] for f in requests]
    assert serving_kernel_install(tmp_path)
    assert predictor.plan.fast() is not None
    for features, wanted in zip(requests, expected, strict=True):
        predictor.predict(features, specs)  # the text side the chosen model's contributions reuse
        assert [predictor.contributions(features, s, top=8) for s in specs] == wanted
    # another request's contributions without predict() first: nothing of the last request is reused
    assert [predictor.contributions(requests[3], s, top=8) for s in specs] == expected[3]
    assert any(wanted[0] for wanted in expected) and expected[0][-1] == []  # brand-new: none


def test_a_candidate_list_with_more_rows_than_known_models_is_served_alike(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor
) -> None:
    specs = _specs() * 3  # every model three times: more rows than the kernel's first buffers hold
    features = _requests(predictor)[1]
    expected = predictor.predict(features, specs)
    assert serving_kernel_install(tmp_path)
    bound = predictor.plan.fast()
    assert bound is not None
    assert bound.predict(features, predictor.plan.layout(specs)) is not None
    assert predictor.predict(features, specs) == expected


def test_the_kernels_math_is_numpys_own_loops(tmp_path: Path, clean_kernel: None) -> None:
    """exp, expm1 and log1p come from numpy's ufuncs (on AVX-512 CPUs they are not libm's), and the
    install check compares them with numpy: a loop of the wrong function is refused."""
    assert serving_kernel_install(tmp_path)
    kernel = serving_kernel.serving_kernel()
    assert kernel is not None
    x = np.linspace(-30.0, 30.0, 1001)
    np.testing.assert_array_equal(kernel.numpy_each(1, x), np.expm1(x))
    np.testing.assert_array_equal(kernel.numpy_each(3, x), np.exp(x.astype(np.float32)))
    with pytest.raises(OSError):
        serving_kernel.numpy_loop(np.add, np.float64)  # two inputs
    with pytest.raises(OSError):
        serving_kernel.numpy_loop(np.exp, np.int64)  # no integer loop


def test_a_kernel_given_the_wrong_loop_is_not_installed(
    tmp_path: Path, clean_kernel: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = serving_kernel.numpy_loop

    def exp_for_expm1(ufunc: np.ufunc, dtype: type) -> tuple[int, int]:
        return real(np.exp if ufunc is np.expm1 else ufunc, dtype)

    monkeypatch.setattr(serving_kernel, "numpy_loop", exp_for_expm1)
    assert serving_kernel_install(tmp_path) is False
    assert serving_kernel.serving_kernel() is None


def test_the_process_says_which_parts_serve_compiled(
    tmp_path: Path, clean_kernel: None, predictor: ScopePredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """registry.acceleration() (shown by /healthz): a refused serving kernel shows as not compiled."""
    from routing.predictor import registry

    monkeypatch.setattr(registry._state, "predictor", None)
    assert set(registry.acceleration()) == {"character_ngrams", "text_counts"}
    monkeypatch.setattr(registry._state, "predictor", predictor)
    assert registry.acceleration()["predictor_trees"] is True  # the fixture compiled them
    assert registry.acceleration()["predictor_rows"] is False  # no serving kernel installed
    assert serving_kernel_install(tmp_path)
    assert registry.acceleration()["predictor_rows"] is True
    kernel = serving_kernel.serving_kernel()
    assert kernel is not None
    monkeypatch.setattr(kernel, "rows", _one_ulp_up(kernel.rows, -1))  # refused by the plan's check
    monkeypatch.setattr(predictor.plan, "_kernel", None)
    assert registry.acceleration()["predictor_rows"] is False


def _home(word: int, bits: int) -> int:
    """A word's first slot, as tfidf_words computes it."""
    return ((word & (2**64 - 1)) * VOCAB_MIX & (2**64 - 1)) >> (64 - bits)


def _look_up(table: np.ndarray, bits: int, word: int) -> tuple[int, float] | None:
    """The kernel's probe of its word table (tfidf_words), step for step."""
    at = _home(word, bits)
    while table["col"][at] >= 0 and table["id"][at] != word:
        at = (at + 1) & ((1 << bits) - 1)
    return None if table["col"][at] < 0 else (int(table["col"][at]), float(table["idf"][at]))


def test_the_word_table_finds_each_word_at_its_column_and_nothing_else() -> None:
    rng = np.random.default_rng(7)
    words = np.concatenate([rng.integers(-(2**40), 2**40, 500), [-5, 123, 123]]).astype(np.int64)
    idf = rng.random(len(words)).astype(np.float32)
    table, bits = vocab_table(words, idf)
    assert len(table) == 1 << bits >= 2 * len(words)
    homes = [_home(word, bits) for word in words.tolist()]
    assert len(set(homes)) < len(homes) - 1  # words that share a first slot: probing is exercised
    first: dict[int, int] = {}  # numpy's searchsorted finds a repeated id's first column
    for col, word in enumerate(words.tolist()):
        first.setdefault(word, col)
    for word, col in first.items():
        assert _look_up(table, bits, word) == (col, float(idf[col]))
    for absent in (-1, 0, 1, 2**62 + 5, int(words.max()) + 1):
        assert absent not in first
        assert _look_up(table, bits, absent) is None


def test_the_character_table_holds_each_bucket_column_and_its_idf() -> None:
    columns = np.array([-1, 2, 0, -1, 1], dtype=np.int32)
    idf = np.array([1.5, 2.5, 3.5], dtype=np.float32)
    table = char_table(columns, idf)
    assert table["col"].tolist() == [-1, 2, 0, -1, 1]
    assert table["idf"].tolist() == [0.0, 3.5, 1.5, 0.0, 2.5]
