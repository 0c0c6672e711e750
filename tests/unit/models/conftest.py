"""Fixtures of the model tests; the builders live in tests/atoms_factory.py (re-exported here for
the tests that import them from ``conftest``)."""

import pytest
from atoms_factory import (  # noqa: F401
    cu_images,
    finite_difference_forces,
    make_data,
    molecule_images,
)


@pytest.fixture(scope="session")
def cu_data():
    return make_data(cu_images(24))


@pytest.fixture(scope="session")
def mol_data():
    return make_data(molecule_images(24))
