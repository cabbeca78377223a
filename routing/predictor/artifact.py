"""The predictor artifact: one zip holding boosters (XGBoost UBJSON), arrays (.npy) and meta.json.

This module is the only place that turns a ScopePredictor into bytes and back. Loading refuses
anything that does not match this code: another container format, another feature schema,
other design feature names, missing or corrupt members, boosters of another width. No pickle:
arrays load with allow_pickle=False and boosters through XGBoost's own model format.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from routing.features import FEATURE_SCHEMA_VERSION
from routing.predictor.anchors import AnchorTable
from routing.predictor.model import ScopePredictor, design_names
from routing.predictor.text import TextHeads, TextProjection
from routing.predictor.trees import ForestEvaluator, TreeModelError

ARTIFACT_FORMAT = "scope-predictor/1"
_TEXT = ("vocab", "idf", "components")
_HEADS = ("coef", "intercept")
# the character vocabulary and heads: absent from artifacts trained before them (word-only heads)
# the multiple-choice block and the heads' Platt calibration likewise (written empty when the heads
# were fitted without them; an artifact without a calibration serves its heads raw)
_OPTIONAL = {
    "text": ("char_vocab", "char_idf"),
    "heads": ("char_coef", "option_vocab", "option_idf", "option_coef", "platt_a", "platt_b"),
}
_ANCHOR = ("coarse", "fine", "coarse_sum", "coarse_n", "fine_sum", "fine_n", "fine_tok_sum", "fine_tok_n")


class ArtifactError(ValueError):
    """The bytes are not a predictor this code can serve; the message says why."""


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def pack(predictor: ScopePredictor, *, metadata: dict[str, Any] | None = None) -> bytes:
    meta = {
        **(metadata or {}),
        "format": ARTIFACT_FORMAT,
        "feature_schema": FEATURE_SCHEMA_VERSION,
        "feature_names": list(predictor.names),
        "roles": list(predictor.roles),
        "models": list(predictor.anchors.models),
    }
    if "relative" in predictor.roles:
        meta["decomposed_share"] = predictor.decomposed_share
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.json", json.dumps(meta, sort_keys=True))
        for name in _TEXT:
            zf.writestr(f"text/{name}.npy", _npy(getattr(predictor.projection, name)))
        for name in _ANCHOR:
            zf.writestr(f"anchors/{name}.npy", _npy(getattr(predictor.anchors, name)))
        for name in _HEADS:
            zf.writestr(f"heads/{name}.npy", _npy(getattr(predictor.heads, name)))
        for group, optional in _OPTIONAL.items():
            owner = predictor.projection if group == "text" else predictor.heads
            for name in optional:
                zf.writestr(f"{group}/{name}.npy", _npy(getattr(owner, name)))
        for i, raw in enumerate(predictor.boosters):
            zf.writestr(f"boosters/{i}.ubj", raw)
    return buf.getvalue()


def read_meta(raw: bytes) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            meta = json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ArtifactError(f"not a predictor artifact: {exc}") from None
    if not isinstance(meta, dict):
        raise ArtifactError("meta.json is not an object")
    return meta


def unpack(raw: bytes, *, version: str) -> ScopePredictor:
    """The servable predictor of an artifact; its boosters are read without importing xgboost (ubjson.py)."""
    from routing.predictor.trees import ensemble_from_ubj

    meta = read_meta(bytes(raw))
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"artifact format {meta.get('format')!r} is not {ARTIFACT_FORMAT!r}")
    if meta.get("feature_schema") != FEATURE_SCHEMA_VERSION:
        raise ArtifactError(
            f"artifact feature schema {meta.get('feature_schema')} does not match this code's {FEATURE_SCHEMA_VERSION}"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
            text = {n: np.load(io.BytesIO(zf.read(f"text/{n}.npy")), allow_pickle=False) for n in _TEXT}
            anchors = {
                n: np.load(io.BytesIO(zf.read(f"anchors/{n}.npy")), allow_pickle=False) for n in _ANCHOR
            }
            heads = {n: np.load(io.BytesIO(zf.read(f"heads/{n}.npy")), allow_pickle=False) for n in _HEADS}
            members = set(zf.namelist())
            for group, optional in _OPTIONAL.items():
                into = text if group == "text" else heads
                for n in optional:
                    if f"{group}/{n}.npy" in members:
                        into[n] = np.load(io.BytesIO(zf.read(f"{group}/{n}.npy")), allow_pickle=False)
            roles = list(meta["roles"])
            boosters = [zf.read(f"boosters/{i}.ubj") for i in range(len(roles))]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"artifact is corrupt: {exc}") from None
    projection = TextProjection(
        vocab=text["vocab"],
        idf=text["idf"],
        components=text["components"],
        char_vocab=text.get("char_vocab", np.zeros(0, dtype=np.int64)),
        char_idf=text.get("char_idf", np.zeros(0, dtype=np.float32)),
    )
    names = list(design_names(projection.dim))
    if meta.get("feature_names") != names:
        raise ArtifactError("artifact feature names do not match this code's design features")
    models = [str(m) for m in meta.get("models", [])]
    if anchors["fine_sum"].ndim != 2 or anchors["fine_sum"].shape[1] != len(models):
        raise ArtifactError("artifact anchor tables do not match its model list")
    if heads["coef"].shape != (len(projection.vocab), len(heads["intercept"])):
        raise ArtifactError("artifact text heads do not match its vocabulary")
    char_coef = heads.get("char_coef", np.zeros(0, dtype=np.float32))
    if projection.char_idf.shape != projection.char_vocab.shape or (
        char_coef.size and char_coef.shape != (len(projection.char_vocab), len(heads["intercept"]))
    ):
        raise ArtifactError("artifact character heads do not match its character vocabulary")
    option_vocab = heads.get("option_vocab", np.zeros(0, dtype=np.int64))
    option_idf = heads.get("option_idf", np.zeros(0, dtype=np.float32))
    option_coef = heads.get("option_coef", np.zeros(0, dtype=np.float32))
    if option_idf.shape != option_vocab.shape or (
        option_vocab.size and option_coef.shape != (len(option_vocab), len(heads["intercept"]))
    ):
        raise ArtifactError("artifact multiple-choice heads do not match their vocabulary")
    platt_a = heads.get("platt_a", np.zeros(0, dtype=np.float32))
    platt_b = heads.get("platt_b", np.zeros(0, dtype=np.float32))
    if platt_a.shape != platt_b.shape or (platt_a.size and platt_a.shape != heads["intercept"].shape):
        raise ArtifactError("artifact head calibration does not match its heads")
    ensembles = []
    for raw_booster in boosters:
        try:
            ensemble = ensemble_from_ubj(raw_booster)
        # ValueError covers ubjson.UBJSONError (torn or garbled bytes)
        except (TreeModelError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"booster cannot be loaded: {exc!r}") from None
        if ensemble.n_features != len(names):
            raise ArtifactError(
                f"a booster expects {ensemble.n_features} features, the design has {len(names)}"
            )
        ensembles.append(ensemble)
    return ScopePredictor(
        version=version,
        projection=projection,
        anchors=AnchorTable(models, *(anchors[n] for n in _ANCHOR)),
        heads=TextHeads(
            coef=heads["coef"],
            intercept=heads["intercept"],
            char_coef=char_coef,
            option_vocab=option_vocab,
            option_idf=option_idf,
            option_coef=option_coef,
            platt_a=platt_a,
            platt_b=platt_b,
        ),
        evaluator=ForestEvaluator(ensembles),
        roles=roles,
        boosters=boosters,
        metadata=meta,
    )
