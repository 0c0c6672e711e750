"""Names of the fields of a batch of structures, defined once (as NequIP's ``_keys``).

A batch is a ``dict[str, Any]`` built by :meth:`NeighborCache.batch
<atomistic.models.onthefly.NeighborCache.batch>` (features computed on the fly) or by the
network's training batches (precomputed features), and read by the loss functions, the
predictions and :func:`~atomistic.models.onthefly.scaled_features_torch`. ``S`` is the number
of structures in the batch, ``n`` the number of their atoms.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BATCH_KEY",
    "CELLS_KEY",
    "FEATURES_KEY",
    "FORCES_KEY",
    "FORCE_MASK_KEY",
    "JACOBIAN_KEY",
    "NEIGHBORS_KEY",
    "NUMBERS_KEY",
    "N_ATOMS_KEY",
    "POSITIONS_KEY",
    "ROWS_KEY",
    "SIZES_KEY",
    "STRAIN_KEY",
    "TARGET_KEY",
]

ROWS_KEY: Final = "rows"
"""Rows (n,) of the batch's atoms in the dataset's flat per-atom arrays."""
NUMBERS_KEY: Final = "numbers"
"""Atomic numbers (n,)."""
POSITIONS_KEY: Final = "positions"
"""Positions (n, 3) Å; require grad (and are strained, with a strain)."""
CELLS_KEY: Final = "cells"
"""Cells (S, 3, 3) Å, rows are the lattice vectors."""
BATCH_KEY: Final = "batch"
"""Structure (n,) of each atom, 0 .. S - 1 within the batch."""
N_ATOMS_KEY: Final = "n_atoms"
"""Atoms (S,) per structure, as floats."""
NEIGHBORS_KEY: Final = "nl"
"""The featurizer's neighbour lists of the batch; present only for features on the fly."""
STRAIN_KEY: Final = "strain"
"""Zero strain leaf (S, 3, 3) requiring grad, for the stress."""
TARGET_KEY: Final = "target"
"""Energies (S,) eV to fit."""
FEATURES_KEY: Final = "X"
"""Precomputed scaled features (n, F), rows sorted by element."""
SIZES_KEY: Final = "sizes"
"""Atoms per element (a list of ints) of the element-sorted feature rows."""
JACOBIAN_KEY: Final = "J"
"""Feature Jacobians (n, F, n_max * 3) with respect to the structure's positions."""
FORCES_KEY: Final = "forces"
"""Reference forces eV/Å: (n, 3), or (S, n_max * 3) padded beside a Jacobian."""
FORCE_MASK_KEY: Final = "mask"
"""1 where a padded force component (S, n_max * 3) belongs to an atom, 0 elsewhere."""
