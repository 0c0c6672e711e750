"""A slow reference calculator for the active-learning resume tests
(``tests/reliability/test_active_resume.py``): ASE's EMT that sleeps before each calculation,
so that a loop can be killed while it labels. A campaign names it by import path,
``tests.reliability.slow_emt:SlowEMT``, and lists it in ``active.labelling.allow``; the
``atompipe`` process and its Dask workers import it from the repository root on PYTHONPATH.
"""

from __future__ import annotations

import time
from typing import Any

from ase.calculators.emt import EMT

__all__ = ["SlowEMT"]


class SlowEMT(EMT):
    """EMT, ``delay`` seconds slower per calculation (default 0.3 s)."""

    def __init__(self, delay: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = float(delay)

    def calculate(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.delay)
        super().calculate(*args, **kwargs)
