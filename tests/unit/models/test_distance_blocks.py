"""The distance cache of the GP's hyperparameter search (DistanceBlocks) against a brute-force
double loop over atom pairs, and its width derivative against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomistic.models.kernels import KERNELS, DistanceBlocks


def _brute(X, z, batch, n, kernel, sigma):
    K = np.zeros((n, n))
    for a in range(len(X)):
        for b in range(len(X)):
            if z[a] != z[b]:
                continue
            d = X[a] - X[b]
            if kernel == "rbf":
                k = np.exp(-(d @ d) / (2 * sigma**2))
            elif kernel == "laplacian":
                k = np.exp(-np.abs(d).sum() / sigma)
            elif kernel == "exponential":
                k = np.exp(-np.sqrt(d @ d) / sigma)
            else:
                k = X[a] @ X[b]
            K[batch[a], batch[b]] += k
    return K


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "chunk, max_bytes",
    [(7, 1 << 30), (1 << 17, 1 << 30), (7, 0), (30, 800)],  # many chunks (structures split),
)  # one chunk; nothing cached (distances recomputed per width); part cached, part recomputed
def test_distance_blocks_match_brute_force(kernel, chunk, max_bytes):
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, 9)
    batch = np.repeat(np.arange(9), sizes)
    X = rng.random((len(batch), 4))
    z = rng.choice([1, 8], len(batch))
    blocks = DistanceBlocks(
        torch.as_tensor(X), torch.as_tensor(z), torch.as_tensor(batch), 9, kernel, max_bytes, chunk
    )
    assert blocks.nbytes() <= max_bytes
    triangle = sum(m * (m + 1) // 2 for m in np.unique(z, return_counts=True)[1])
    assert triangle <= blocks.entries <= triangle + 2 * chunk  # the upper triangle, about
    for sigma in (0.4, 1.7, 0.4, 5.0):  # a width again: from the cache
        K, dK = blocks.evaluate(sigma, with_dlogsigma=True)
        np.testing.assert_allclose(K, _brute(X, z, batch, 9, kernel, sigma), rtol=1e-12, atol=1e-12)
        h = 1e-5
        fd = (
            _brute(X, z, batch, 9, kernel, sigma * np.exp(h))
            - _brute(X, z, batch, 9, kernel, sigma * np.exp(-h))
        ) / (2 * h)
        np.testing.assert_allclose(dK, fd, rtol=1e-6, atol=1e-8)
