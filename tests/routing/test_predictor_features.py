from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from routing.features import (
    FEATURE_SCHEMA_VERSION,
    NGRAM_BUCKETS,
    NGRAM_MAX_WORDS,
    FeatureLogError,
    extract_features,
    pack_ngrams,
    request_features_from_log,
    text_ngrams,
    unpack_ngrams,
)
from routing.models import DecisionLog
from tests.factories import make_api_key, make_catalog, make_policy

GOLDEN = "Explain why the sky is blue. Explain it!"


def test_it_produces_the_golden_hashed_ngrams() -> None:
    f = extract_features([{"role": "user", "content": GOLDEN}])
    # 6 distinct words ("explain" twice) + 7 bigrams, hashed with crc32: stable across processes
    assert f.ngram_ids == (
        108098, 167920, 355814, 371282, 423151, 445108, 508883,
        563478, 610966, 706281, 713367, 826422, 930472, 948020,
    )  # fmt: skip
    assert f.ngram_counts == (2,) + (1,) * 13
    assert all(0 <= i < NGRAM_BUCKETS for i in f.ngram_ids)


def test_the_logged_features_rebuild_the_same_request_features_without_the_text() -> None:
    f = extract_features([{"role": "system", "content": "Be terse."}, {"role": "user", "content": GOLDEN}])
    logged = json.loads(json.dumps(f.as_dict()))  # as stored in the decision row
    assert set(logged["ngrams"]) == {"packed"} and isinstance(logged["ngrams"]["packed"], str)
    rebuilt = request_features_from_log(logged, FEATURE_SCHEMA_VERSION)
    assert rebuilt.values == f.values
    assert rebuilt.ngram_ids == f.ngram_ids and rebuilt.ngram_counts == f.ngram_counts
    assert rebuilt.input_tokens == f.input_tokens
    assert rebuilt.text == ""


def test_a_row_that_stores_the_prompt_rebuilds_the_ngrams_from_it() -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": GOLDEN}]
    f = extract_features(messages)
    logged = json.loads(json.dumps(f.as_dict(ngrams=False)))
    assert "ngrams" not in logged
    rebuilt = request_features_from_log(logged, FEATURE_SCHEMA_VERSION, f.text)
    assert rebuilt.values == f.values
    assert (rebuilt.ngram_ids, rebuilt.ngram_counts) == (f.ngram_ids, f.ngram_counts)
    assert text_ngrams(f.text) == (f.ngram_ids, f.ngram_counts)
    # the character n-grams and the text (the multiple-choice block's input) come from the stored
    # prompt too; a redacted row has neither
    assert f.char_ids and (rebuilt.char_ids, rebuilt.char_counts) == (f.char_ids, f.char_counts)
    assert rebuilt.text == f.text
    redacted = request_features_from_log(json.loads(json.dumps(f.as_dict())), FEATURE_SCHEMA_VERSION)
    assert redacted.char_ids == b"" and redacted.char_counts == b"" and redacted.text == ""


@pytest.mark.django_db
@pytest.mark.parametrize("storage", ["full", "redacted"])
def test_routed_rows_rebuild_their_request_features(storage: str, settings: Any, client: Client) -> None:
    settings.SCOPE_PROMPT_STORAGE = storage
    make_catalog()
    make_policy("default")
    _, key = make_api_key("rebuild")
    messages = [{"role": "user", "content": GOLDEN + " with a table of results, please?"}]
    response = client.post(
        "/api/v1/route",
        data=json.dumps({"messages": messages}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 200, response.content
    row = DecisionLog.objects.get(id=response.json()["decision_id"])
    assert ("ngrams" in row.features) == (storage == "redacted")
    assert row.prompt == ("" if storage == "redacted" else extract_features(messages).text)
    rebuilt = request_features_from_log(row.features, row.feature_schema, row.prompt)
    f = extract_features(messages)
    assert (rebuilt.values, rebuilt.ngram_ids, rebuilt.ngram_counts) == (
        f.values,
        f.ngram_ids,
        f.ngram_counts,
    )


def test_rows_logged_before_the_packed_form_still_rebuild() -> None:
    f = extract_features([{"role": "user", "content": GOLDEN}])
    older = {**f.as_dict(), "ngrams": {"ids": list(f.ngram_ids), "counts": list(f.ngram_counts)}}
    rebuilt = request_features_from_log(older, FEATURE_SCHEMA_VERSION)
    assert rebuilt.ngram_ids == f.ngram_ids and rebuilt.ngram_counts == f.ngram_counts


def test_packed_ngrams_round_trip_at_the_edges_and_refuse_a_torn_string() -> None:
    ids, counts = (0, 5, NGRAM_BUCKETS - 1), (1, NGRAM_MAX_WORDS, 7)
    assert unpack_ngrams(pack_ngrams(ids, counts)) == (ids, counts)
    assert unpack_ngrams(pack_ngrams((), ())) == ((), ())
    packed = extract_features([{"role": "user", "content": GOLDEN}]).as_dict()["ngrams"]["packed"]
    for broken in (
        packed[:-3],
        packed[:-8],
        pack_ngrams((5, 3), (1, 1)),
        pack_ngrams((1,), (0,)),
        "not base64!",
    ):
        logged = extract_features([{"role": "user", "content": GOLDEN}]).as_dict()
        logged["ngrams"] = {"packed": broken}
        with pytest.raises(FeatureLogError):
            request_features_from_log(logged, FEATURE_SCHEMA_VERSION)


def test_it_refuses_logged_features_of_another_schema_or_incomplete() -> None:
    logged = extract_features([{"role": "user", "content": GOLDEN}]).as_dict()
    with pytest.raises(FeatureLogError):
        request_features_from_log(logged, FEATURE_SCHEMA_VERSION - 1)
    del logged["log_chars"]
    with pytest.raises(FeatureLogError):
        request_features_from_log(logged, FEATURE_SCHEMA_VERSION)


def test_long_prompts_hash_a_bounded_number_of_words() -> None:
    f = extract_features([{"role": "user", "content": " ".join(f"w{i}" for i in range(5000))}])
    assert len(f.ngram_ids) <= 2 * 1024
