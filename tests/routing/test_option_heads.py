"""The multiple-choice block of the text heads (FitParams.head_options, on by default)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.engine.types import ModelSpec
from routing.features import extract_prompt_features
from routing.predictor.artifact import pack, unpack
from routing.predictor.fit import FitResult, TrainingExample, fit_predictor
from routing.predictor.text import option_ngrams
from tests.routing import predictor_data as data


def _mc(i: int, topic: str, words: str) -> str:
    w = words.split()
    return (
        f"Question {i} on {topic}: which {w[i % len(w)]} fits best?\n"
        f"A. {w[(i + 1) % len(w)]}\nB. {w[(i + 2) % len(w)]}\nC. {w[(i + 3) % len(w)]}\nD. none\nAnswer:"
    )


def _half_multiple_choice(n: int) -> list[TrainingExample]:
    """n prompts, every other one multiple-choice, scored for every model by its topic skill."""
    rng = np.random.default_rng(0)
    out = []
    for i, (topic, plain) in enumerate(data.prompts(n, seed=1)):
        text = _mc(i, topic, data.TOPICS[topic]) if i % 2 else plain
        f = extract_prompt_features(text)
        for m in data.SKILLS:
            score = float(rng.random() < data.SKILLS[m][topic])
            out.append(TrainingExample(f"p{i}", f, m, score, output_tokens=data.TOKENS[m], source="t"))
    return out


@pytest.fixture(scope="module")
def trained() -> FitResult:
    params = dataclasses.replace(data.FAST, head_options=True, min_option_prompts=50)
    return fit_predictor(_half_multiple_choice(200), data.infos(), seed=0, params=params)


def test_option_ngrams_split_the_stem_from_the_options_and_ignore_other_texts() -> None:
    ids, counts = option_ngrams("Which is a prime?\nA. 4\nB. 7\nAnswer:")
    assert len(ids) and (np.diff(ids) > 0).all() and (counts >= 1).all()
    # the same words as stem and as options land in different buckets
    stem_only, _ = option_ngrams("seven\nA. x\nB. y")
    option_only, _ = option_ngrams("x\nA. seven\nB. y")
    assert set(stem_only.tolist()) != set(option_only.tolist())
    for text in ("no options here", "A. one line only", "", "1. first\n2. second"):
        assert not len(option_ngrams(text)[0])


def test_the_option_block_is_fitted_served_alike_and_kept_by_the_artifact(trained: FitResult) -> None:
    p = trained.predictor
    assert len(p.heads.option_vocab) and p.heads.option_coef.shape == (
        len(p.heads.option_vocab),
        len(p.heads.intercept),
    )
    feats = [extract_prompt_features(_mc(1000 + i, "law", data.TOPICS["law"])) for i in range(6)]
    feats += [f for _, f in data.examples(4, seed=9)[1]]
    infos = data.infos()
    batch = p.predict_batch(feats, infos)
    specs = [
        ModelSpec(i.name, "p", "openai", i.input_usd_per_mtok or 0.0, i.output_usd_per_mtok or 0.0, 8192, 2)
        for i in infos
    ]
    single = np.asarray([[q.quality for q in p.predict(f, specs)] for f in feats])
    np.testing.assert_allclose(single, batch.quality, rtol=0, atol=1e-12)
    loaded = unpack(pack(p), version="v-options")
    np.testing.assert_array_equal(loaded.heads.option_vocab, p.heads.option_vocab)
    np.testing.assert_array_equal(loaded.predict_batch(feats, infos).quality, batch.quality)
    # the block moves the heads of multiple-choice prompts only
    plain = dataclasses.replace(p.heads, option_vocab=np.zeros(0, dtype=np.int64))
    assert not np.allclose(p.heads.predict(p.projection, feats[:6]), plain.predict(p.projection, feats[:6]))
    np.testing.assert_array_equal(
        p.heads.predict(p.projection, feats[6:]), plain.predict(p.projection, feats[6:])
    )


def test_heads_are_unchanged_without_the_setting() -> None:
    # enough multiple-choice prompts for the block (the fixture fits one on the same data), setting off
    params = dataclasses.replace(data.FAST, head_options=False, min_option_prompts=50)
    p = fit_predictor(_half_multiple_choice(200), data.infos(), seed=0, params=params).predictor
    assert not len(p.heads.option_vocab) and not len(p.heads.option_coef)


def test_too_few_multiple_choice_prompts_leave_the_heads_word_and_character_only() -> None:
    rng = np.random.default_rng(1)
    out = []
    for i, (topic, plain) in enumerate(data.prompts(120, seed=3)):
        text = _mc(i, topic, data.TOPICS[topic]) if i < 10 else plain
        f = extract_prompt_features(text)
        for m in data.SKILLS:
            out.append(TrainingExample(f"q{i}", f, m, float(rng.random() < 0.6), source="t"))
    params = dataclasses.replace(data.FAST, head_options=True, min_option_prompts=50)
    p = fit_predictor(out, data.infos(), seed=0, params=params).predictor
    assert not len(p.heads.option_vocab) and not len(p.heads.option_coef)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(["\n", "A", "b", "C", "d", "E", ".", ")", "(", " ", "\t", "x", "1"]),
        max_size=60,
    )
)
def test_option_marks_are_the_line_pattern_s_matches(text: str) -> None:
    from routing.predictor.text import _OPTION_LINE, option_marks

    assert option_marks(text) == [m.start() for m in _OPTION_LINE.finditer(text)]
