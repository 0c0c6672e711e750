"""atomistic/active.py: selection against hand-worked cases, labels against ASE's EMT called
directly, a label never computed twice, exploration's bookkeeping, warm starts."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from atoms_factory import cu_images, make_data

from atomistic.active import (
    LabelStore,
    calibrate_threshold,
    explore,
    farthest_point_order,
    force_calibration,
    label_structures,
    reference_calculator,
    select,
    stop_reason,
    structure_key,
    structure_uncertainty,
    variance_reduction_order,
)
from atomistic.calculator import AtompipeCalculator
from atomistic.models import GaussianProcess


def _cu(seed: int, rattle: float = 0.05):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


# -- uncertainty and thresholds -------------------------------------------------------------------
def test_structure_uncertainty_is_the_largest_atomic_std_norm():
    std = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    # structure 0: atoms 0, 1 (norms 5, 1); structure 1: atom 2 (norm 1)
    np.testing.assert_allclose(structure_uncertainty(std, np.array([0, 2, 3])), [5.0, 1.0])
    mean = structure_uncertainty(std, np.array([0, 2, 3]), reduce="mean")
    np.testing.assert_allclose(mean, [3.0, 1.0])
    with pytest.raises(ValueError, match="reduce"):
        structure_uncertainty(std, np.array([0, 2, 3]), reduce="median")


def test_calibrated_threshold_is_a_quantile_of_validation_uncertainties():
    u = np.arange(11.0)  # 0..10: the 0.9 quantile (linear) is 9
    assert calibrate_threshold(u, 0.9) == pytest.approx(9.0)
    assert calibrate_threshold(u, 0.5, factor=2.0) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        calibrate_threshold(np.array([]), 0.9)


# -- selection ------------------------------------------------------------------------------------
def test_threshold_and_cap_pick_the_most_uncertain():
    u = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    assert select(u, 0.25, 2).tolist() == [1, 3]  # 0.9 and 0.5
    assert select(u, 0.25, 10).tolist() == [1, 2, 3]  # everything above 0.25
    assert select(u, 0.5, 10).tolist() == [3]  # strictly above the threshold
    assert select(u, 1.0, 10).tolist() == []  # nothing uncertain
    assert select(u, 0.0, 0).tolist() == []


def test_nothing_above_the_upper_bound_is_picked():
    u = np.array([0.1, 0.5, 3.0, 0.9, 2.5])
    assert select(u, 0.25, 10, upper=2.0).tolist() == [1, 3]
    assert select(u, 0.25, 1, upper=2.0).tolist() == [3]
    for seed in range(5):
        r = select(u, 0.0, 3, method="random", upper=2.0, seed=seed)
        assert sorted(r.tolist()) == [0, 1, 3]


def test_the_trust_window_keeps_the_moderately_uncertain():
    u = np.array([0.1, 0.5, 3.0, 0.9, 2.5, 0.7])
    # threshold 0.25, window 3 x 0.25 = 0.75: candidates 0.5 and 0.7 only
    assert select(u, 0.25, 10, upper_factor=3.0).tolist() == [1, 5]
    assert select(u, 0.25, 1, upper_factor=3.0).tolist() == [5]
    assert select(u, 0.25, 10, upper_factor=3.0, upper=0.6).tolist() == [1]
    # random selection ignores the window (it is the baseline)
    assert sorted(select(u, 0.25, 6, method="random", upper_factor=3.0).tolist()) == list(range(6))
    with pytest.raises(ValueError, match="upper_factor must be > 1"):
        select(u, 0.25, 10, upper_factor=1.0)


def test_farthest_point_diversity_skips_near_duplicates():
    u = np.array([0.9, 0.85, 0.8, 0.3])
    X = np.array([[0.0, 0.0], [0.01, 0.0], [5.0, 5.0], [1.0, 1.0]])
    # without diversity: the two most uncertain, near copies of each other
    assert select(u, 0.5, 2).tolist() == [0, 1]
    # farthest point: start at the most uncertain (0), then the candidate farthest from it (2);
    # row 3 is below the threshold and never a candidate
    assert select(u, 0.5, 2, diversity="fps", descriptors=X).tolist() == [0, 2]
    assert select(u, 0.5, 3, diversity="fps", descriptors=X).tolist() == [0, 1, 2]


def test_farthest_point_pool_keeps_the_picks_uncertain():
    """With nearly everything above the threshold, fps over all candidates reaches for the far,
    barely uncertain snapshot; a pool of 2 x 2 keeps the four most uncertain (0, 1, 2, 4)."""
    u = np.array([0.9, 0.85, 0.8, 0.31, 0.7, 0.32])
    X = np.array([[0.0], [0.1], [1.0], [100.0], [2.0], [50.0]])
    assert select(u, 0.3, 2, diversity="fps", descriptors=X).tolist() == [0, 3]
    # pool 2: candidates 0, 1, 2, 4 (u 0.9, 0.85, 0.8, 0.7); from 0 the farthest is 4 (x = 2)
    assert select(u, 0.3, 2, diversity="fps", descriptors=X, pool=2).tolist() == [0, 4]
    # pool 1: the most uncertain only, in order
    assert select(u, 0.3, 2, diversity="fps", descriptors=X, pool=1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="pool"):
        select(u, 0.3, 2, diversity="fps", descriptors=X, pool=0.5)


def test_farthest_point_order_by_hand():
    X = np.array([[0.0], [1.0], [10.0], [4.0]])
    # from 0: distances 0, 1, 10, 4 -> 2; then min(d, |x - 10|) = 0, 1, 0, 4 -> 3; then 1
    assert farthest_point_order(X, 0, 4).tolist() == [0, 2, 3, 1]
    assert farthest_point_order(X, 1, 2).tolist() == [1, 2]
    # duplicates of chosen rows are never picked
    assert farthest_point_order(np.zeros((3, 2)), 0, 3).tolist() == [0]


def test_time_separation_within_a_trajectory():
    u = np.array([0.9, 0.8, 0.7, 0.6])
    t = np.array([10, 15, 50, 20])
    g = np.array([0, 0, 0, 1])
    # 0 first; 1 is 5 steps from 0 in the same trajectory: skipped; 2 is 40 away; 3 is another
    # trajectory
    assert select(u, 0.0, 3, diversity="time", times=t, groups=g, min_separation=10).tolist() == [
        0,
        2,
        3,
    ]
    assert select(u, 0.0, 2, diversity="time", times=t, groups=g, min_separation=10).tolist() == [
        0,
        2,
    ]


def test_random_selection_is_seeded_and_ignores_uncertainty():
    u = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 9.0])
    a = select(u, 1.0, 3, method="random", seed=4)
    assert a.tolist() == select(u, 1.0, 3, method="random", seed=4).tolist()
    assert len(set(a.tolist())) == 3 and a.max() < 6
    assert len(select(u, 1.0, 10, method="random")) == 6
    with pytest.raises(ValueError):
        select(u, 1.0, 3, method="greedy")


# -- labelling ------------------------------------------------------------------------------------
def test_emt_labels_equal_ase_emt_directly():
    images = [_cu(s) for s in range(3)]
    labelled, computed = label_structures(images, lambda: reference_calculator("emt"))
    assert computed == 3
    for atoms, lab in zip(images, labelled, strict=True):
        ref = atoms.copy()
        ref.calc = EMT()
        assert lab.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(lab.get_forces(), ref.get_forces(), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(lab.positions, atoms.positions)


def test_tblite_labels_equal_tblite_directly(shipped):
    pytest.importorskip("tblite")
    import ase.io
    from tblite.ase import TBLite

    atoms = ase.io.read(shipped["ethanol"], 0)
    (lab,), computed = label_structures([atoms], lambda: reference_calculator("tblite"))
    ref = atoms.copy()
    ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert computed == 1
    assert lab.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(lab.get_forces(), ref.get_forces(), rtol=0, atol=1e-8)


def test_a_structure_is_never_labelled_twice(tmp_path):
    calls = []

    class Counting(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=None):
            calls.append(structure_key(atoms))
            super().calculate(atoms, properties, system_changes or ["positions"])

    a, b = _cu(0), _cu(1)
    store = LabelStore(tmp_path / "labels")
    out, computed = label_structures([a, b, a.copy()], Counting, store)
    assert computed == 2 and len(calls) == len(set(calls)) == 2
    assert out[0].get_potential_energy() == out[2].get_potential_energy()
    assert sorted(store.keys()) == sorted({structure_key(a), structure_key(b)})

    # a rerun (after a kill, or a later iteration) finds every label and computes none
    made = []
    out2, computed2 = label_structures([b, a], lambda: made.append(1) or Counting(), store)
    assert computed2 == 0 and made == [] and len(calls) == 2
    ref = b.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(out2[0].get_forces(), ref.get_forces(), rtol=0, atol=1e-12)

    # a moved atom is another structure
    c = a.copy()
    c.positions[0, 0] += 1e-6
    assert structure_key(c) != structure_key(a)
    _, computed3 = label_structures([c], Counting, store)
    assert computed3 == 1


def test_a_failed_reference_raises_or_is_left_out(tmp_path):
    class FailsOnSecond(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=None):
            if atoms.positions[0, 0] > 0.5:
                raise RuntimeError("SCF not converged")
            super().calculate(atoms, properties, system_changes or ["positions"])

    good, bad = _cu(0), _cu(1)
    bad.positions[0, 0] = 1.0
    with pytest.raises(RuntimeError, match="SCF"):
        label_structures([good, bad], FailsOnSecond)
    failed: list = []
    store = LabelStore(tmp_path)
    out, computed = label_structures([bad, good], FailsOnSecond, store, failed=failed)
    assert computed == 1 and len(out) == 1 and [i for i, _ in failed] == [0]
    np.testing.assert_array_equal(out[0].positions, good.positions)
    assert store.keys() == [structure_key(good)]  # nothing stored for the failure


def test_calculators_outside_the_allow_list_are_refused():
    with pytest.raises(ValueError, match="allow-list"):
        reference_calculator("ase.calculators.lj:LennardJones")
    calc = reference_calculator(
        "ase.calculators.lj:LennardJones",
        {"sigma": 2.3},
        allowed=["ase.calculators.lj:LennardJones"],
    )
    assert isinstance(calc, LennardJones) and calc.parameters.sigma == 2.3
    with pytest.raises(ValueError, match="not an ASE Calculator"):
        reference_calculator("collections.OrderedDict", allowed=["collections.OrderedDict"])


# -- calibration and stopping ---------------------------------------------------------------------
def test_force_calibration_by_hand():
    true = np.zeros((2, 3))
    pred = np.array([[0.5, 1.5, 2.5], [3.5, 0.1, 0.2]])
    std = np.ones((2, 3))
    cal = force_calibration(true, pred, std)
    # |error| / σ = 0.5, 1.5, 2.5, 3.5, 0.1, 0.2: within 1σ 3/6, 2σ 4/6, 3σ 5/6
    assert cal["within_1sigma"] == pytest.approx(3 / 6)
    assert cal["within_2sigma"] == pytest.approx(4 / 6)
    assert cal["within_3sigma"] == pytest.approx(5 / 6)
    # σ growing with the error: rank correlation 1
    assert force_calibration(true, pred, np.abs(pred) * 2)["spearman"] == pytest.approx(1.0)


def test_stop_reasons():
    assert stop_reason(100, budget=100) == "budget"
    assert stop_reason(90, budget=100) is None
    assert stop_reason(0, test_error=0.05, target_error=0.06) == "target"
    assert stop_reason(0, test_error=0.07, target_error=0.06) is None
    assert stop_reason(0, n_uncertain=0) == "converged"
    assert stop_reason(0, n_uncertain=0, n_picked=0) == "converged"
    assert stop_reason(0, n_uncertain=5, n_picked=0) == "untrusted"  # all beyond the trust bound
    assert stop_reason(0, n_uncertain=5, n_picked=2) is None
    assert stop_reason(0) is None


# -- exploration ----------------------------------------------------------------------------------
class _EMTWithStd(EMT):
    """EMT reporting a fixed force std per atom, as a committee would (norm of row i: 0.1 i)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or ["positions"])
        std = np.zeros((len(self.atoms), 3))
        std[:, 0] = 0.1 * np.arange(len(self.atoms))
        self.results["forces_std"] = std


def test_exploration_snapshots_and_their_bookkeeping():
    starts = [_cu(0), _cu(1)]
    frames = explore(_EMTWithStd(), starts, [300.0, 600.0], steps=6, interval=3, seed=1)
    assert len(frames) == 2 * 2 * 2  # starts x temperatures x (6 / 3)
    assert [f.info["trajectory"] for f in frames] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [f.info["step"] for f in frames] == [3, 6] * 4
    assert [f.info["temperature"] for f in frames] == [300.0, 300.0, 600.0, 600.0] * 2
    assert all(f.info["uncertainty"] == pytest.approx(0.3) for f in frames)  # 4 atoms: 0.1 * 3
    assert all(f.info["uncertainty_mean"] == pytest.approx(0.15) for f in frames)  # 0.1 * 1.5
    assert all(f.calc is None for f in frames)
    # seeded: the same snapshots again
    again = explore(_EMTWithStd(), starts, [300.0, 600.0], steps=6, interval=3, seed=1)
    for f, g in zip(frames, again, strict=True):
        np.testing.assert_array_equal(f.positions, g.positions)
    # a trajectory ends at its first step above max_uncertainty (u is checked at every step)
    short = explore(_EMTWithStd(), starts, [300.0], steps=30, interval=3, max_uncertainty=0.2)
    assert [f.info["step"] for f in short] == [1, 1]


class _GrowingStd(EMT):
    """EMT whose force std grows by 0.01 eV/Å with every new configuration (one atom's)."""

    def __init__(self):
        super().__init__()
        self.configurations = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or ["positions"])
        self.configurations += 1
        std = np.zeros((len(self.atoms), 3))
        std[0, 0] = 0.01 * self.configurations
        self.results["forces_std"] = std


def test_a_trajectory_leaving_the_trust_bound_keeps_its_last_trusted_step():
    """u = 0.01 (k + 1) at MD step k (the start is configuration 1): past 0.075 from step 7 on.
    Snapshots every 5 steps: step 5 (u 0.06); then the edge, step 6 (u 0.07, the last within
    the bound, no snapshot step), and step 7 (u 0.08), where the trajectory ends."""
    frames = explore(_GrowingStd(), [_cu(0)], [300.0], steps=30, interval=5, max_uncertainty=0.075)
    assert [f.info["step"] for f in frames] == [5, 6, 7]
    assert [f.info["uncertainty"] for f in frames] == pytest.approx([0.06, 0.07, 0.08])
    # without a bound, every 5th step to the end and nothing else
    free = explore(_GrowingStd(), [_cu(0)], [300.0], steps=30, interval=5)
    assert [f.info["step"] for f in free] == [5, 10, 15, 20, 25, 30]
    # an edge that is a snapshot step already is kept once: bound crossed at step 6
    frames = explore(_GrowingStd(), [_cu(0)], [300.0], steps=30, interval=5, max_uncertainty=0.065)
    assert [f.info["step"] for f in frames] == [5, 6]


class _RecordsUncertainty(AtompipeCalculator):
    """Records, for every calculation, whether the stds were asked for."""

    def __init__(self, model):
        super().__init__(model)
        self.asked: list[bool] = []

    def calculate(self, *args, **kwargs):
        self.asked.append(self.uncertainty)
        super().calculate(*args, **kwargs)


def test_checking_every_few_steps_keeps_the_snapshots():
    """A sparse GP on forces: u checked only at the snapshots (check_every=interval), the MD
    steps between on the means alone, gives the same trajectory as checking every step (the
    two force paths, reverse-mode means and forward-mode design rows, agree to rounding)."""
    gp = GaussianProcess(sigma=2.0, forces=True, n_sparse=20, optimize=False)
    gp.fit(make_data(cu_images(6, rattle=0.1), cutoff=4.0, angular_type="G4"))
    kw = {"steps": 12, "interval": 4, "seed": 2, "timestep_fs": 1.0}
    every = explore(gp, [_cu(0)], [600.0], **kw)
    calc = _RecordsUncertainty(gp)
    sparse = explore(calc, [_cu(0)], [600.0], check_every=4, **kw)
    assert [f.info["step"] for f in sparse] == [4, 8, 12] == [f.info["step"] for f in every]
    # forces at the start and at 12 steps; stds only at steps 4, 8, 12; switched back on after
    assert calc.asked == [False] * 4 + [True] + [False] * 3 + [True] + [False] * 3 + [True]
    assert calc.uncertainty
    for f, g in zip(every, sparse, strict=True):
        np.testing.assert_allclose(g.positions, f.positions, atol=1e-9)
        assert g.info["uncertainty"] == pytest.approx(f.info["uncertainty"], rel=1e-9)
    assert all(f.info["uncertainty"] > 0 for f in sparse)


def test_exploration_needs_an_uncertainty():
    with pytest.raises(ValueError, match="force uncertainty"):
        explore(EMT(), [_cu(0)], [300.0], steps=2, interval=1)


# -- warm start -----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::atomistic.models.TrainingWarning")
def test_warm_start_begins_from_the_previous_weights():
    import torch

    from atomistic.active import warm_start
    from atomistic.features import Gaussian
    from atomistic.models import AtomicData, NeuralNetwork

    torch.set_num_threads(1)
    images = []
    for s in range(6):
        a = _cu(s, 0.1)
        a.calc = EMT()
        a.get_forces()
        images.append(a)
    data = AtomicData.from_atoms(images, Gaussian(cutoff=3.0, angular_type="G4"))
    kw = {"hiddenlayers": (3,), "activation": "tanh", "ensemble": 2}
    first = NeuralNetwork(**kw, training={"epochs": 3, "batch_size": 3}).fit(data)
    fresh = NeuralNetwork(**kw, training={"epochs": 0, "seed": 7}).fit(data)
    warm = warm_start(NeuralNetwork(**kw, training={"epochs": 0, "seed": 7}), first).fit(data)
    for old, new in zip(first.members_, warm.members_, strict=True):
        theirs = new.nets.state_dict()
        for name, p in old.nets.state_dict().items():
            torch.testing.assert_close(theirs[name], p, rtol=0, atol=0, msg=name)
    a = first.predict(data)["energy"]
    np.testing.assert_allclose(warm.predict(data)["energy"], a, rtol=0, atol=1e-9)
    assert not np.allclose(fresh.predict(data)["energy"], a, rtol=0, atol=1e-6)


# -- batch selection by variance reduction (sparse GP) --------------------------------------------
def _dense_total_variance(v1, C, rows_added, a, sF):
    """Sum over all components of a^2 v1_r^T C'^-1 v1_r, C' = C + (a/sF)^2 sum v1 v1^T over the
    added components: the GP's latent weight variance by a dense inverse (no Woodbury)."""
    Cp = C + (a / sF) ** 2 * v1[:, rows_added] @ v1[:, rows_added].T
    return a**2 * np.einsum("mr,mr->", v1, np.linalg.solve(Cp, v1))


def test_variance_reduction_batch_equals_a_brute_force_greedy():
    data = make_data(cu_images(8, rattle=0.1), cutoff=4.0, angular_type="G4")
    gp = GaussianProcess(sigma=2.0, forces=True, n_sparse=20, optimize=False).fit(data)
    candidates = cu_images(5, seed=11, rattle=0.15)
    candidates.append(cu_images(5, seed=11, rattle=0.15)[2])  # a twin: worth little after it
    cand = make_data(candidates, cutoff=4.0, angular_type="G4")
    V, rest = gp.force_variance_terms(cand)
    # the terms give the model's own force stds
    std = np.sqrt(gp.amplitude_**2 * (V * V).sum(0) + rest) * gp.force_std_scale_
    np.testing.assert_allclose(std.reshape(-1, 3), gp.predict(cand, forces=True)["forces_std"])

    offsets = cand.dataset.offsets
    a, sF = gp.amplitude_, gp.force_noise_
    picks = variance_reduction_order(V, rest, offsets, 3, a, sF, sample_rows=10**6)
    # brute force: C = L_C L_C^T, v1 = L_C V (un-whitened rows), every candidate tried
    L = gp.cholesky_
    C, v1 = L @ L.T, L @ V
    chosen: list[int] = []
    for _ in range(3):
        before = _dense_total_variance(v1, C, _cols(chosen, offsets), a, sF)
        gain = [
            before - _dense_total_variance(v1, C, _cols([*chosen, s], offsets), a, sF)
            if s not in chosen
            else -np.inf
            for s in range(len(candidates))
        ]
        chosen.append(int(np.argmax(gain)))
    assert picks.tolist() == chosen
    assert {2, 5} - set(picks.tolist())  # never both twins in the batch
    # eligibility and the batch size are respected
    only = variance_reduction_order(V, rest, offsets, 10, a, sF, eligible=np.arange(6) < 2)
    assert sorted(only.tolist()) == [0, 1]


def _cols(structures: list[int], offsets: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.arange(3 * offsets[s], 3 * offsets[s + 1]) for s in structures] or [np.zeros(0, int)]
    ).astype(int)
