"""Every value a campaign file may choose is one the science can build.

The configuration (flows/config*.py) writes some allowed values out so that reading a campaign
imports neither torch nor the models; these tests hold them to the definitions in atomistic/ and
build every choice (a value the configuration accepts but the code cannot build would fail only
after featurization, in the middle of a campaign).
"""

from __future__ import annotations

import types
import typing

import numpy as np
import pytest
import torch
from atoms_factory import cu_images, make_data

from atomistic.data import DEFAULT_SPLIT
from atomistic.features import scaling
from atomistic.features.scaling import Scaler
from atomistic.models import KernelRidge
from atomistic.models.kernels import KERNELS
from atomistic.models.layers import ACTIVATION_NAMES, mlp
from atomistic.models.optimization import make_optimizer
from atomistic.models.training_config import TrainingConfig
from flows import config as cfg


def _choices(model: type, field: str) -> tuple:
    """The values a Literal field (or an optional one) admits, None left out."""
    annotation = model.model_fields[field].annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_args(annotation)


def test_written_out_values_equal_the_definitions():
    assert _choices(cfg.NeuralNetworkConfig, "activation") == ACTIVATION_NAMES
    assert _choices(cfg.AutoEncoderSettings, "activation") == ACTIVATION_NAMES
    assert _choices(cfg.KernelRidgeConfig, "kernel") == KERNELS
    assert _choices(cfg.GaussianProcessConfig, "kernel") == KERNELS
    assert tuple(cfg.SplitConfig().fractions) == DEFAULT_SPLIT
    assert _choices(cfg.ScalerConfig, "kind") == scaling._KINDS


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_every_activation_builds_and_is_finite(name):
    torch.manual_seed(0)
    net = mlp((5, 7, 1), name).double()
    x = torch.linspace(-3, 3, 20, dtype=torch.float64).reshape(4, 5)
    y = net(x)
    assert y.shape == (4, 1) and torch.isfinite(y).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_fits(kernel):
    data = make_data(cu_images(6, seed=3))
    model = KernelRidge(kernel=kernel, sigma=1.0).fit(data)
    energy = model.predict(data)["energy"]
    assert np.isfinite(energy).all() and energy.shape == (6,)


@pytest.mark.parametrize("kind", _choices(cfg.ScalerConfig, "kind"))
def test_every_scaler_kind_fits(kind):
    x = np.random.default_rng(0).normal(size=(50, 3)) * [1.0, 5.0, 0.1] + [0.0, 2.0, -1.0]
    y = Scaler(kind=kind).fit(x).transform(x)
    if kind == "minmax":
        assert np.allclose(y.min(0), -1.0) and np.allclose(y.max(0), 1.0)
    else:
        assert np.allclose(y.mean(0), 0.0) and np.allclose(y.std(0), 1.0)


@pytest.mark.parametrize("settings", [cfg.TrainingSettings, cfg.NetworkTrainingSettings])
def test_every_optimizer_builds(settings):
    net = mlp((3, 4, 1), "tanh")
    for name in _choices(settings, "optimizer"):
        optimizer = make_optimizer(net, TrainingConfig(optimizer=name))
        assert isinstance(optimizer, torch.optim.Optimizer)
