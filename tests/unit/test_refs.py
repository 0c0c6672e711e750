"""Typed references: their JSON form is the dict the stages passed before, and a reference
gives the same cache keys whether it travels typed or as JSON."""

from __future__ import annotations

import json

import pytest

from tasks.caching import content_cache_key
from tasks.models import encoder_key, model_key
from tasks.refs import DatasetRef, FeatureRef, ModelRef, ScalerRef

FEATURES = {
    "store": "s.zarr",
    "kind": "features",
    "key": "k1",
    "dataset": "d1",
    "featurizer": "gaussian",
    "params": {"cutoff": 6.5},
    "computed_chunks": 3,
    "n_chunks": 3,
}
LATENT = {
    **{k: v for k, v in FEATURES.items() if k not in ("computed_chunks", "n_chunks")},
    "kind": "latent",
    "featurizer": "latent",
    "params": {"encoder": "e1", "source": "k1"},
    "encoder_dir": "ws/models/e1",
    "source_featurizer": {"featurizer": "gaussian", "params": {}, "scaler": None},
    "reconstruction_mse_test": 0.1,
    "scaled_variance_test": 0.5,
    "artifacts": ["ws/models/e1/latent_map.png"],
}
SCALER = {"scaler": {"kind": "minmax"}, "key": "s1"}
DATASET = {"store": "s.zarr", "key": "d1", "summary": {"elements": ["H", "O"]}, "written": True}
MODEL = {
    "name": "m",
    "key": "mk",
    "dir": "ws/models/mk",
    "type": "kernelridge",
    "features": "k1",
    "dataset": "d1",
    "trained": True,
    "fit_time_s": 1.0,
}
SPLIT = {"fractions": [0.8, 0.1, 0.1], "seed": 0}


@pytest.mark.parametrize(
    ("cls", "form"),
    [
        (FeatureRef, FEATURES),
        (FeatureRef, LATENT),
        (ScalerRef, SCALER),
        (DatasetRef, DATASET),
        (ModelRef, MODEL),
        (ModelRef, {"key": "mk", "dir": "d", "dataset": "d1", "metrics": {"split": "test"}}),
    ],
)
def test_the_json_form_round_trips(cls, form):
    ref = cls.of(form)
    assert ref.to_dict() == form
    assert cls.of(ref) is ref
    assert json.loads(json.dumps(ref.to_dict())) == form


def test_an_unknown_field_is_an_error_that_names_it():
    with pytest.raises(TypeError, match="FeatureRef: unknown field.*'colour'"):
        FeatureRef.of({**FEATURES, "colour": "red"})


def test_a_typed_reference_has_the_cache_key_of_its_json_form():
    for stage, params in [
        ("fit-scaler", {"features": FEATURES, "kind": "minmax"}),
        ("evaluate", {"model": MODEL, "features": FEATURES, "scaler": SCALER}),
    ]:
        typed = {
            "features": FeatureRef.of(FEATURES),
            "model": ModelRef.of(MODEL),
            "scaler": ScalerRef.of(SCALER),
        }
        as_refs = {k: typed.get(k, v) for k, v in params.items()}
        key = content_cache_key(stage)
        assert key(None, as_refs) == key(None, params)


def test_keys_are_those_of_the_dicts_before_typed_references():
    """Values computed by the version before tasks/refs.py: workspaces keep their caches."""
    assert content_cache_key("fit-scaler")(None, {"features": FEATURES, "kind": "minmax"}) == (
        "atompipe-fit-scaler-8fadee323dca9451eaba3b23e1424d86d2ca05fe977d75cec3d71a570fea1c56"
    )
    config = {"type": "kernelridge", "device": "cpu"}
    assert model_key(FEATURES, SCALER, config, SPLIT) == (
        "d1a7f4dc0720cc68cd27b7ef38489bf14bc3c616db840f61f07fe6bc55a1dee2"
    )
    assert encoder_key(FeatureRef.of(FEATURES), SCALER, {"a": 1}, {"seed": 0}) == (
        "eba1de6bcd0322ebe59c0b428685b7ba080e970af00b29ff58ae99c78334362a"
    )
