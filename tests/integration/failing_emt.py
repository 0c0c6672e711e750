"""A reference calculator for tests whose calculation fails on some structures, as an SCF that
does not converge would: ASE's EMT that raises on every second structure it has not seen
before (the first, the third, ...), and again on a structure it raised on before. Its decisions
are kept in a JSON file, by structure content, so a rerun meets the same failures and the test
can count them without asking the loop. Allow-listed by a campaign as
``tests.integration.failing_emt:FailingEMT``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ase.calculators.emt import EMT


class ReferenceFailed(RuntimeError):
    """The reference calculation did not converge (on purpose)."""


class FailingEMT(EMT):
    """EMT that fails on every second new structure.

    Parameters
    ----------
    state : str
        A JSON file mapping structure keys to "failed" or "labelled" (created when missing).
    **kwargs
        EMT's own keyword arguments.
    """

    def __init__(self, state: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = Path(state)

    def calculate(self, atoms=None, properties=None, system_changes=None):  # noqa: ANN001
        from atomistic.active import structure_key

        assert atoms is not None
        seen = json.loads(self.state.read_text()) if self.state.exists() else {}
        key = structure_key(atoms)
        if key not in seen:
            seen[key] = "failed" if len(seen) % 2 == 0 else "labelled"
            self.state.write_text(json.dumps(seen))
        if seen[key] == "failed":
            raise ReferenceFailed(f"SCF did not converge on structure {key}")
        if properties is None:
            super().calculate(atoms)
        else:
            super().calculate(atoms, properties, system_changes)
