"""Building blocks shared by every network of the package: the activation functions a
configuration may name, and the fully connected stack (multilayer perceptron) built from them.

The configuration's allowed activation names are derived from :data:`ACTIVATIONS`, so a name that
validates is a name that builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "ACTIVATION_NAMES", "activation", "mlp"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "celu": nn.CELU,  # alpha = 1
    "celu0.1": lambda: nn.CELU(alpha=0.1),  # ANI's choice (Smith et al. 2017)
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "linear": nn.Identity,
}

ACTIVATION_NAMES = tuple(ACTIVATIONS)


def activation(name: str) -> nn.Module:
    """A new activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], activation_name: str, last: bool = False) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with the activation after each hidden layer
    (and after the last one too when ``last``)."""
    if any(int(s) < 1 for s in sizes):
        raise ValueError(f"layer widths must be >= 1, got {list(sizes)}")
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(int(a), int(b)))
        if last or k < len(sizes) - 2:
            layers.append(activation(activation_name))
    return nn.Sequential(*layers)
