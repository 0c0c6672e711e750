"""The featurizer base: element bookkeeping, neighbour lists, and the vectorized sums over pairs
and triplets that every symmetry-function featurizer shares.

A featurizer holds one radial term and (optionally) one angular term
(:mod:`atomistic.features.terms`). ``forward`` sums them over neighbours, resolved by the
neighbour's element (radial) and by the unordered pair of neighbour elements (angular), with
index tensors and ``index_add_``/``bmm``; no Python loop runs over atoms. Distances are recomputed
in torch from positions and cells, so gradients reach both (forces, stress).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor

from ..device import resolve_device
from ..neighbors import (
    NeighborList,
    batch_neighbor_list,
    cell_offsets,
    estimated_pairs,
    within_cutoff,
)
from .moments import angular_moments
from .moments import moments_pay as _moments_pay
from .terms import AngularTerm, RadialTerm
from .triplets import block_sums, padding_ratio, sparse_sums, tracks_derivatives

__all__ = ["Featurizer", "featurizer_from_params"]

_REGISTRY: dict[str, type[Featurizer]] = {}

# neighbour pairs per forward call in featurize_arrays, by a memory model rather than an atom
# count: a call holds ~60 float64 per pair (vectors, distances, radial terms, angular factors,
# monomials), so 2^17 pairs is ~64 MB; three-body temporaries are chunked separately
# (triplets.CHUNK_BYTES). Dense Cu at 6.5 Å (~100 neighbours): ~1300 atoms a call; ethanol
# (8 neighbours): ~16000. Structures are never split.
_PAIRS_PER_CALL = 1 << 17
# without gradients, padded triplet blocks (no gathers) beat sparse triplets up to this much padding
_MAX_PADDING = 1.25
# one copy of a featurizer per device is made at a time (featurize_arrays may run in threads)
_REPLICAS = threading.Lock()


def _normalize_elements(elements: Iterable[Any]) -> tuple[str, ...]:
    numbers = set()
    for e in elements:
        if isinstance(e, str):
            if e not in atomic_numbers:
                raise ValueError(f"unknown element {e!r}")
            numbers.add(atomic_numbers[e])
        else:
            numbers.add(int(e))
    return tuple(chemical_symbols[z] for z in sorted(numbers))


class Featurizer(torch.nn.Module):
    """Base class of atom-centred featurizers (subclasses: Gaussian, AEV).

    Subclasses set ``self.radial`` (a RadialTerm), ``self.angular`` (an AngularTerm or None),
    ``self.weighted`` and implement :meth:`get_params`.

    ``device`` (``cpu`` or ``cuda``) is where :meth:`featurize`, :meth:`featurize_arrays` and
    the feature Jacobians compute; their numpy results are the same on either, to rounding.
    ``cuda`` without a GPU falls back to the CPU with one message per process
    (:func:`atomistic.device.resolve_device`). Where a featurizer runs is not what it is: the
    device is not among :meth:`get_params` (nor in any content key). ``forward`` runs wherever
    its input tensors are (the module's buffers must be there too: ``featurizer.to(...)``).
    """

    name: ClassVar[str] = ""
    radial: RadialTerm
    angular: AngularTerm | None
    weighted: bool = False
    species_bin: Tensor  # buffer (119,): the element bin of each atomic number, -1 if absent
    pair_bin: Tensor  # buffer (n_bins, n_bins): the index of each unordered pair of bins

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __init__(
        self, elements: Iterable[Any] | None = None, weighted: bool = False, device: str = "cpu"
    ) -> None:
        super().__init__()
        self.weighted = bool(weighted)
        self.register_buffer("species_bin", torch.full((119,), -1, dtype=torch.long))
        self.register_buffer("pair_bin", torch.zeros((1, 1), dtype=torch.long))
        self.elements: tuple[str, ...] | None = None
        self._replicas: dict[str, Featurizer] = {}
        self.device = device
        if elements is not None:
            self._set_elements(_normalize_elements(elements))

    # -- device --------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where :meth:`featurize_arrays` computes: ``cpu`` or ``cuda[:N]`` (after fallback)."""
        return str(self.__dict__.get("_device", "cpu"))  # "cpu" for one unpickled from before

    @device.setter
    def device(self, requested: str) -> None:
        self._device = resolve_device(requested)

    def _compute_module(self, device: str | None = None) -> Featurizer:
        """This featurizer, or a copy of it on ``device`` (default :attr:`device`) when its
        buffers are elsewhere. The copy is kept: ``self`` is never moved, so callers running
        ``forward`` on CPU tensors (forces, stress, export) are unaffected."""
        target = self.device if device is None else resolve_device(device)
        want, have = torch.device(target), self.species_bin.device
        if want.type == have.type and want.index in (None, have.index):
            return self
        with _REPLICAS:
            replicas: dict[str, Featurizer] = self.__dict__.setdefault("_replicas", {})
            replica = replicas.get(target)
            if replica is None:
                replica = copy.deepcopy(self).to(target)
                replica.device = target
                replicas[target] = replica
        return replica

    def __getstate__(self) -> dict[str, Any]:
        """Pickles and deep copies leave out the device copies (rebuilt where needed)."""
        state = self.__dict__.copy()
        state["_replicas"] = {}
        return state

    # -- elements ------------------------------------------------------------------------------
    def _set_elements(self, elements: tuple[str, ...]) -> None:
        if not elements:
            raise ValueError("a featurizer needs at least one element")
        self.elements = elements
        species_bin = torch.full((119,), -1, dtype=torch.long)
        for b, e in enumerate(elements):
            species_bin[atomic_numbers[e]] = 0 if self.weighted else b
        n = self.n_bins
        pair_bin = torch.zeros((n, n), dtype=torch.long)
        a, b = torch.triu_indices(n, n)
        pair_bin[a, b] = pair_bin[b, a] = torch.arange(a.numel())
        device = self.species_bin.device
        self.species_bin, self.pair_bin = species_bin.to(device), pair_bin.to(device)
        self._replicas = {}  # copies made for other devices have the old elements

    def fit_elements(self, images_or_numbers: Any) -> Featurizer:
        """Fix the element list from structures (ase.Atoms or a list of them) or atomic numbers
        (an array, or a list of arrays). Returns ``self``."""
        data = images_or_numbers
        if hasattr(data, "get_atomic_numbers"):
            data = [data]
        numbers: set[int] = set()
        if isinstance(data, np.ndarray | torch.Tensor):
            numbers.update(int(z) for z in np.unique(np.asarray(data)))
        else:
            for item in data:
                if hasattr(item, "get_atomic_numbers"):
                    numbers.update(int(z) for z in np.unique(item.get_atomic_numbers()))
                elif isinstance(item, str):
                    numbers.add(atomic_numbers[item])
                else:
                    numbers.update(int(z) for z in np.unique(np.asarray(item)))
        self._set_elements(_normalize_elements(numbers))
        return self

    def _require_elements(self) -> tuple[str, ...]:
        if self.elements is None:
            raise RuntimeError(
                f"{type(self).__name__} has no elements yet: pass elements=... or call fit_elements"
            )
        return self.elements

    @property
    def n_bins(self) -> int:
        return 1 if self.weighted else len(self._require_elements())

    @property
    def n_pairs(self) -> int:
        return self.n_bins * (self.n_bins + 1) // 2

    # -- columns -------------------------------------------------------------------------------
    @property
    def cutoff(self) -> float:
        """The largest cutoff of all terms, Å (neighbour lists are built with it)."""
        return max(self.radial.cutoff, self.angular.cutoff if self.angular is not None else 0.0)

    @property
    def n_features(self) -> int:
        angular = self.angular.n_features * self.n_pairs if self.angular is not None else 0
        return self.radial.n_features * self.n_bins + angular

    @property
    def labels(self) -> list[dict]:
        """One dict per column: term, elements (neighbour element(s)), and the term's constants."""
        elements = self._require_elements()
        bins: list[tuple[str, ...]] = [()] if self.weighted else [(e,) for e in elements]
        extra = {"weighted": True} if self.weighted else {}
        out = [
            {"term": self.radial.term, "elements": b, **p, **extra}
            for b in bins
            for p in self.radial.label_params()
        ]
        if self.angular is not None:
            n = len(bins)
            pairs = [bins[a] + bins[b] for a in range(n) for b in range(a, n)]
            out += [
                {"term": self.angular.term, "elements": pr, **p, **extra}
                for pr in pairs
                for p in self.angular.label_params()
            ]
        return out

    def get_params(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- batches of structures -----------------------------------------------------------------
    def _check_numbers(self, numbers: np.ndarray, offsets: np.ndarray | None = None) -> None:
        bins = self.species_bin.cpu().numpy()[np.asarray(numbers)]
        if (bins < 0).any():
            k = int(np.flatnonzero(bins < 0)[0])
            z = int(numbers[k])
            where = ""
            if offsets is not None:
                where = f" in structure {int(np.searchsorted(offsets, k, side='right')) - 1}"
            raise ValueError(
                f"element {chemical_symbols[z]} (Z={z}){where} is not in this featurizer's "
                f"elements {self.elements}"
            )

    def neighbors(self, numbers, positions, cells, pbcs, offsets) -> NeighborList:
        """Full neighbour list of a flat ragged batch at :attr:`cutoff` (numpy, no gradients).

        Shapes: numbers (N,), positions (N, 3) Å, cells (S, 3, 3) Å, pbcs (S, 3), offsets (S+1,).
        """
        return batch_neighbor_list(positions, cells, pbcs, offsets, self.cutoff)

    def batch_arrays(self, numbers, positions, cells, pbcs, offsets) -> tuple[np.ndarray, ...]:
        """A flat ragged batch as contiguous numpy arrays of the expected dtypes and shapes
        (as :meth:`neighbors`), its elements checked (and fixed first if the featurizer has
        none yet)."""
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
        pbcs = np.asarray(pbcs, dtype=bool).reshape(-1, 3)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if self.elements is None:
            self.fit_elements(numbers)
        self._check_numbers(numbers, offsets)
        return numbers, positions, cells, pbcs, offsets

    def featurize_arrays(
        self, numbers, positions, cells, pbcs, offsets, device: str | None = None
    ) -> np.ndarray:
        """Features of a flat ragged batch: (N, n_features) float64 numpy array, unscaled.

        Shapes as :meth:`neighbors`. Structures are processed together, many per forward call,
        on ``device`` (default :attr:`device`); neighbour lists are built on the CPU.
        """
        numbers, positions, cells, pbcs, offsets = self.batch_arrays(
            numbers, positions, cells, pbcs, offsets
        )
        module = self._compute_module(device)
        on = module.species_bin.device
        fused = _fused_kernels(module) if on.type == "cpu" else None
        out = np.zeros((len(numbers), self.n_features), dtype=np.float64)
        cum = np.concatenate([[0.0], np.cumsum(estimated_pairs(offsets, cells, pbcs, self.cutoff))])
        s = 0
        while s < len(cells):
            e = int(np.searchsorted(cum, cum[s] + _PAIRS_PER_CALL, side="right")) - 1
            e = min(max(e, s + 1), len(cells))
            a, b = offsets[s], offsets[e]
            sub = offsets[s : e + 1] - a
            nl = self.neighbors(numbers[a:b], positions[a:b], cells[s:e], pbcs[s:e], sub)
            batch = np.repeat(np.arange(e - s), np.diff(sub))
            if fused is not None:
                out[a:b] = fused.features(
                    module, numbers[a:b], positions[a:b], cells[s:e], batch, nl
                )
                s = e
                continue
            with torch.no_grad():
                x = module.forward(
                    torch.from_numpy(numbers[a:b]).to(on),
                    torch.from_numpy(positions[a:b]).to(on),
                    torch.from_numpy(cells[s:e]).to(on),
                    torch.from_numpy(batch).to(on),
                    nl,
                )
            out[a:b] = x.cpu().numpy()
            s = e
        return out

    def featurize(self, images: Any, device: str | None = None) -> list[np.ndarray]:
        """Features of ase.Atoms structures: a list of (n_atoms_i, n_features) float64 arrays,
        computed on ``device`` (default :attr:`device`)."""
        if hasattr(images, "get_atomic_numbers"):
            images = [images]
        images = list(images)
        if not images:
            return []
        if self.elements is None:
            self.fit_elements(images)
        sizes = np.array([len(a) for a in images])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        x = self.featurize_arrays(
            np.concatenate([a.numbers for a in images]),
            np.concatenate([a.positions for a in images]),
            np.stack([a.cell.array for a in images]),
            np.stack([a.pbc for a in images]),
            offsets,
            device=device,
        )
        return np.split(x, offsets[1:-1])

    # -- the computation -----------------------------------------------------------------------
    def forward(
        self, numbers: Tensor, positions: Tensor, cells: Tensor, batch: Tensor, nl: NeighborList
    ) -> Tensor:
        """Features, shape (N, n_features), dtype of ``positions``.

        Parameters
        ----------
        numbers
            (N,) atomic numbers (long).
        positions
            (N, 3) Å.
        cells
            (S, 3, 3) Å, one cell per structure (rows are lattice vectors).
        batch
            (N,) structure index of each atom.
        nl
            neighbour list (from :meth:`neighbors`), indices into the N atoms.
        """
        self._require_elements()
        n_atoms, device = positions.shape[0], positions.device
        bins = self.species_bin[numbers]
        if bool((bins < 0).any()):
            k = int(torch.nonzero(bins < 0)[0, 0])
            z = int(numbers[k])
            raise ValueError(
                f"element {chemical_symbols[z]} (Z={z}) in structure {int(batch[k])} is not in "
                f"this featurizer's elements {self.elements}"
            )
        nl = nl.to_torch(device)
        i, j, shifts = nl.i, nl.j, nl.shifts
        if i.numel() > 1 and not bool((i[1:] >= i[:-1]).all()):
            order = torch.argsort(i, stable=True)
            i, j, shifts = i[order], j[order], shifts[order]
        offset = cell_offsets(shifts.to(positions.dtype), cells, batch, i)
        vectors = positions[j] - positions[i] + offset  # shape (pairs, 3)
        distances = vectors.norm(dim=-1)  # shape (pairs,)
        weights = numbers.to(positions.dtype) if self.weighted else None

        keep = within_cutoff(distances, self.radial.cutoff)
        ir, jr, rr = (i, j, distances) if keep is None else (i[keep], j[keep], distances[keep])
        terms = self.radial(rr)  # shape (pairs, F_r)
        if weights is not None:
            terms = terms * weights[jr].unsqueeze(-1)
        nb = self.n_bins
        radial = terms.new_zeros((n_atoms * nb, terms.shape[1]))
        radial = radial.index_add_(0, ir * nb + bins[jr], terms).reshape(n_atoms, -1)
        if self.angular is None:
            return radial

        keep = within_cutoff(distances, self.angular.cutoff)
        if keep is not None:
            i, j, vectors, distances = i[keep], j[keep], vectors[keep], distances[keep]
        factors = self.angular.pair_factor(distances)  # shape (pairs, a)
        if weights is not None:
            factors = factors * weights[j].unsqueeze(-1)
        args = (i, vectors, distances, factors, bins[j], n_atoms)
        if self.angular.separable and _moments_pay(self.angular, len(i), n_atoms, self.n_pairs):
            angular = angular_moments(self.angular, self.n_bins, *args)
        elif tracks_derivatives(vectors) or padding_ratio(i, n_atoms) > _MAX_PADDING:
            angular = sparse_sums(self.angular, self.pair_bin, *args)
        else:
            angular = block_sums(self.angular, self.pair_bin, *args)
        return torch.cat([radial, angular.reshape(n_atoms, -1)], dim=1)


def _fused_kernels(featurizer: Featurizer) -> Any:
    """The fused CPU kernels (:mod:`atomistic.features.fused`) when they cover ``featurizer``,
    else None (the torch path). Imported here, on first use: numba loads in ~0.3 s."""
    from . import fused

    return fused if fused.supports(featurizer) else None


def featurizer_from_params(name: str, params: dict) -> Featurizer:
    """Rebuild a featurizer from its ``name`` and :meth:`Featurizer.get_params`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown featurizer {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**params)
