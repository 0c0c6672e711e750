"""Cache keys hash what a stage makes from, not how its inputs were made."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.config import AutoEncoderSettings
from tasks.caching import content_cache_key

REF = {"store": "s.zarr", "kind": "features", "key": "a" * 64, "dataset": "d" * 64}


def test_run_reports_of_an_upstream_stage_do_not_change_the_key():
    key = content_cache_key("fit-scaler")
    first = key(None, {"features": {**REF, "computed_chunks": 32, "written": True}, "seed": 0})
    again = key(None, {"features": {**REF, "computed_chunks": 0, "written": False}, "seed": 0})
    assert first == again
    other = key(None, {"features": {**REF, "key": "b" * 64, "computed_chunks": 0}, "seed": 0})
    assert other != first
    assert key(None, {"features": REF, "seed": 1}) != key(None, {"features": REF, "seed": 0})


def test_encoder_settings_that_change_nothing_do_not_change_the_key():
    a = AutoEncoderSettings(kind="vae", annealing={"kind": "monotonic", "cycles": 2})
    b = AutoEncoderSettings(kind="vae", annealing={"kind": "monotonic", "cycles": 7})
    assert a.canonical() == b.canonical()
    c = AutoEncoderSettings(kind="vae", annealing={"kind": "cyclical", "cycles": 7})
    assert c.canonical() != AutoEncoderSettings(kind="vae", annealing={"cycles": 2}).canonical()
    assert "beta" not in AutoEncoderSettings().canonical()


@pytest.mark.parametrize("extra", [{"beta": 0.5}, {"annealing": {}}, {"variant": "bernoulli"}])
def test_vae_settings_on_an_autoencoder_are_an_error(extra):
    with pytest.raises(ValidationError, match="only for kind: vae"):
        AutoEncoderSettings(kind="autoencoder", **extra)


def test_settings_survive_a_dump_and_validate_round_trip():
    for s in (AutoEncoderSettings(), AutoEncoderSettings(kind="vae", beta=0.1)):
        assert AutoEncoderSettings.model_validate(s.model_dump(mode="json")) == s
