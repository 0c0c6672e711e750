"""Radial (two-body) and angular (three-body) terms of symmetry-function featurizers.

Terms only compute per-pair / per-triplet values; summing over neighbours and resolving by element
is done once, for every term, by :class:`atomistic.features.base.Featurizer` (three-body sums:
:mod:`atomistic.features.triplets`; a term sees a :class:`Triplets` whose attributes broadcast to a
triplet shape S, (T,) or (n, m, h)). A new term overrides
:meth:`RadialTerm.compute`, or :meth:`AngularTerm.forward` (and :meth:`AngularTerm.combine` when
its per-triplet output is a factorised basis rather than the final columns).

Units: distances in Å, eta in Å^-2 (or dimensionless when ``normalized``).
"""

from __future__ import annotations

import math
from itertools import product

import torch
from torch import Tensor

from .cutoff import CosineCutoff, Cutoff
from .triplets import Triplets

__all__ = [
    "Triplets",  # re-exported from .triplets
    "RadialTerm",
    "AngularTerm",
    "BehlerRadial",
    "BehlerAngular",
    "ANIRadial",
    "ANIAngular",
]


def _buffer(values, dtype=torch.float64) -> Tensor:
    return torch.as_tensor(values, dtype=dtype).reshape(-1)


def _ipow(x: Tensor, n: int) -> Tensor:
    """x**n for a non-negative integer n by repeated squaring (exact, cheap, autograd-friendly)."""
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return torch.ones_like(x) if result is None else result


class RadialTerm(torch.nn.Module):
    """Base of two-body terms: ``forward(r) = compute(r) * f_c(r)``, shape (pairs, n_features)."""

    term = "radial"

    def __init__(self, cutoff: float, cutoff_fn: Cutoff | None = None) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.cutoff_fn = cutoff_fn if cutoff_fn is not None else CosineCutoff(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        """r: (pairs,) Å -> (pairs, n_features)."""
        return self.compute(r) * self.cutoff_fn(r).unsqueeze(-1)

    def compute(self, r: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def n_features(self) -> int:
        return len(self.label_params())

    def label_params(self) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError


class BehlerRadial(RadialTerm):
    """G2 (Behler, JCP 134, 074106 (2011), eq. 6): exp(-eta (R_ij - R_s)^2 / R_c^2) f_c(R_ij),
    the / R_c^2 only when ``normalized``. Columns: eta outer, R_s inner."""

    term = "G2"
    exponent: Tensor  # buffer (F,): eta, divided by R_c^2 when normalized
    shift: Tensor  # buffer (F,): R_s, Å

    def __init__(self, cutoff: float, etas, shifts, normalized: bool = True) -> None:
        super().__init__(cutoff)
        self.etas, self.shifts = [float(e) for e in etas], [float(s) for s in shifts]
        scale = 1.0 / self.cutoff**2 if normalized else 1.0
        grid = list(product(self.etas, self.shifts))
        self.register_buffer("exponent", _buffer([e * scale for e, _ in grid]))
        self.register_buffer("shift", _buffer([s for _, s in grid]))

    def compute(self, r: Tensor) -> Tensor:
        d = r.unsqueeze(-1) - self.shift.to(r.dtype)  # shape (pairs, F)
        return torch.exp(-self.exponent.to(r.dtype) * d * d)

    def label_params(self) -> list[dict]:
        return [{"eta": e, "Rs": s} for e, s in product(self.etas, self.shifts)]


class ANIRadial(RadialTerm):
    """ANI radial term (Smith et al., Chem. Sci. 8, 3192 (2017), eq. 3) with TorchANI's 0.25:
    0.25 exp(-eta (R_ij - R_s)^2) f_c(R_ij). Columns: one per shift R_s."""

    term = "radial"
    shift: Tensor  # buffer (F,): R_s, Å

    def __init__(self, cutoff: float, eta: float, shifts) -> None:
        super().__init__(cutoff)
        self.eta, self.shifts = float(eta), [float(s) for s in shifts]
        self.register_buffer("shift", _buffer(self.shifts))

    def compute(self, r: Tensor) -> Tensor:
        d = r.unsqueeze(-1) - self.shift.to(r.dtype)  # shape (pairs, F)
        return 0.25 * torch.exp(-self.eta * d * d)

    def label_params(self) -> list[dict]:
        return [{"eta": self.eta, "Rs": s} for s in self.shifts]


class AngularTerm(torch.nn.Module):
    """Base of three-body terms over unordered neighbour pairs {j, k} of a centre i.

    The summand of column (alpha, beta) factorises as ``R[t, alpha] * A[t, beta]``; the featurizer
    sums ``sum_t R A`` per element pair, then :meth:`combine` maps the (a, b) block to the columns.
    """

    term = "angular"
    separable = False
    #: triplets with R_jk >= jk_cutoff contribute nothing (a cutoff function of R_jk) and are
    #: dropped before the term is evaluated; None: no such factor
    jk_cutoff: float | None = None

    def __init__(self, cutoff: float, cutoff_fn: Cutoff | None = None) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.cutoff_fn = cutoff_fn if cutoff_fn is not None else CosineCutoff(cutoff)

    def pair_factor(self, r: Tensor) -> Tensor:
        """Per-neighbour factor g(R_ij), shape (pairs, a); default f_c(R_ij)."""
        return self.cutoff_fn(r).unsqueeze(-1)

    def forward(self, tri: Triplets) -> tuple[Tensor, Tensor | list]:  # pragma: no cover
        """-> R (S, a) and A (S, b), or A as a list of b tensors (S,) (None for a constant 1:
        saves a multiplication); both symmetric in (j, k). S is the triplet shape of ``tri``."""
        raise NotImplementedError

    def combine(self, sums: Tensor) -> Tensor:
        """(..., a, b) sums -> (..., n_features) columns; default: flatten a outer, b inner."""
        return sums.flatten(-2)

    # -- what a ``separable`` term adds (per-atom tensor moments; BehlerAngular's G4) ----------
    #: (M, P) buffer: the weight of each of M monomials in (u . v)^p, by degree p
    mono_degree: Tensor

    def pair_monomials(self, unit: Tensor) -> Tensor:  # pragma: no cover - separable only
        """unit vectors (pairs, 3) -> monomials (pairs, M)."""
        raise NotImplementedError

    def moment_products(self, left: Tensor, right: Tensor) -> Tensor:  # pragma: no cover
        """(..., M), (..., M) moments -> (..., P) sums by degree (separable terms only)."""
        raise NotImplementedError

    @property
    def n_features(self) -> int:
        return len(self.label_params())

    def label_params(self) -> list[dict]:  # pragma: no cover - abstract
        raise NotImplementedError


class BehlerAngular(AngularTerm):
    """Behler's angular functions (JCP 134, 074106 (2011), eqs. 8-9), columns eta, zeta, lambda:

    * ``include_jk=True``  (our G3): 2^(1-zeta) sum_{j<k} (1 + lambda cos)^zeta
      exp(-eta (R_ij^2 + R_ik^2 + R_jk^2) / R_c^2) f_c(R_ij) f_c(R_ik) f_c(R_jk);
    * ``include_jk=False`` (our G4): without the R_jk^2 term and without f_c(R_jk).

    For integer zetas the angular factor is expanded in powers of cos theta,
    (1 + lambda c)^zeta = sum_p binom(zeta, p) lambda^p c^p, so the triplet sums are the moments
    sum_t R_t c_t^p, mapped to the columns by the ``coef`` buffer. G4 with integer zetas is
    ``separable``: the moments come from per-atom tensor moments in O(neighbours)
    (:meth:`pair_monomials`, :meth:`moment_products`).
    """

    exponent: Tensor  # buffer (n_eta,): eta, divided by R_c^2 when normalized
    coef: Tensor  # buffer (P, columns) for integer zetas, else (columns, columns)
    zeta: Tensor  # buffer (columns,)
    lam: Tensor  # buffer (columns,)
    mono_exps: Tensor  # buffer (M, 3), separable terms only
    max_power: int  # the largest zeta, integer zetas only

    def __init__(
        self, cutoff: float, etas, zetas, lambdas, normalized: bool = True, include_jk: bool = True
    ) -> None:
        super().__init__(cutoff)
        self.term = "G3" if include_jk else "G4"
        self.etas = [float(e) for e in etas]
        self.zetas = [int(z) if float(z).is_integer() else float(z) for z in zetas]
        self.lambdas = [float(g) for g in lambdas]
        self.include_jk = include_jk
        self.integer = all(isinstance(z, int) and z >= 0 for z in self.zetas)
        self.separable = self.integer and not include_jk
        self.jk_cutoff = self.cutoff if include_jk else None
        scale = 1.0 / self.cutoff**2 if normalized else 1.0
        self.register_buffer("exponent", _buffer([e * scale for e in self.etas]))
        columns = list(product(self.zetas, self.lambdas))
        if self.integer:
            self.max_power = max(int(z) for z in self.zetas)
            coef = torch.zeros(self.max_power + 1, len(columns), dtype=torch.float64)
            for c, (zeta, lam) in enumerate(columns):
                z = int(zeta)  # every zeta is an integer here
                for p in range(z + 1):
                    coef[p, c] = 2.0 ** (1 - z) * math.comb(z, p) * lam**p
        else:
            coef = torch.diag(_buffer([2.0 ** (1 - z) for z, _ in columns]))
        self.register_buffer("coef", coef)
        self.register_buffer("zeta", _buffer([z for z, _ in columns]))
        self.register_buffer("lam", _buffer([lam for _, lam in columns]))
        if self.separable:
            self._init_monomials()

    def pair_factor(self, r: Tensor) -> Tensor:
        """exp(-eta R_ij^2 / R_c^2) f_c(R_ij), shape (pairs, n_eta)."""
        r2 = (r * r).unsqueeze(-1)
        return torch.exp(-self.exponent.to(r.dtype) * r2) * self.cutoff_fn(r).unsqueeze(-1)

    def forward(self, tri: Triplets) -> tuple[Tensor, Tensor | list]:
        radial = tri.gg  # shape (S, n_eta)
        if self.include_jk:
            # one clamp for the square root (>= 1e-12) and for the cutoff (<= R_c^2: f_c = 0
            # there, so the clamped exponential below is multiplied by zero)
            r_jk2 = tri.r_jk2.clamp(1e-12, self.cutoff_fn.cutoff**2)
            f_jk = self.cutoff_fn.compute(torch.sqrt(r_jk2))
            if radial.shape[-1] == 1:
                radial = radial * (
                    torch.exp(-self.exponent.to(r_jk2.dtype) * r_jk2) * f_jk
                ).unsqueeze(-1)
            else:
                decay = torch.exp(-self.exponent.to(r_jk2.dtype) * r_jk2.unsqueeze(-1))
                radial = radial * decay * f_jk.unsqueeze(-1)
        cos = tri.cos
        if self.integer:
            powers: list[Tensor | None] = [None, cos]  # None: the constant 1
            power = cos
            for _ in range(self.max_power - 1):
                power = power * cos
                powers.append(power)
            return radial, powers[: self.max_power + 1]
        base = 1.0 + self.lam.to(cos.dtype) * cos.unsqueeze(-1)
        return radial, base.clamp_min(0.0) ** self.zeta.to(cos.dtype)  # shape (S, columns)

    def combine(self, sums: Tensor) -> Tensor:
        return (sums @ self.coef.to(sums.dtype)).flatten(-2)

    # -- separable moments (G4, integer zeta) ----------------------------------------------------
    def _init_monomials(self) -> None:
        exps, degree, weight = [], [], []
        for p in range(self.max_power + 1):
            for a in range(p, -1, -1):
                for b in range(p - a, -1, -1):
                    c = p - a - b
                    exps.append((a, b, c))
                    degree.append(p)
                    weight.append(
                        math.factorial(p)
                        / (math.factorial(a) * math.factorial(b) * math.factorial(c))
                    )
        self.register_buffer("mono_exps", torch.tensor(exps, dtype=torch.long))
        # (monomials, P): multinomial weight of each monomial in (u . v)^p, by degree p
        deg = torch.zeros(len(exps), self.max_power + 1, dtype=torch.float64)
        weights = torch.tensor(weight, dtype=torch.float64)
        deg[torch.arange(len(exps)), torch.tensor(degree)] = weights
        self.register_buffer("mono_degree", deg)

    def pair_monomials(self, unit: Tensor) -> Tensor:
        """unit vectors (pairs, 3) -> monomials x^a y^b z^c, a + b + c <= max zeta, (pairs, M),
        degree by degree, each degree in the order of ``mono_exps`` (a, then b, descending)."""
        x, y, z = unit[:, 0:1], unit[:, 1:2], unit[:, 2:3]
        level = torch.ones_like(x)  # degree 0
        levels = [level]
        for p in range(1, self.max_power + 1):
            # x * (all of degree p-1), y * (those without x: last p), z * z^(p-1)
            level = torch.cat([x * level, y * level[:, -p:], z * level[:, -1:]], dim=1)
            levels.append(level)
        return torch.cat(levels, dim=1)

    def moment_products(self, left: Tensor, right: Tensor) -> Tensor:
        """sum_alpha w_alpha L_alpha R_alpha per degree p: (..., M), (..., M) -> (..., P)."""
        return (left * right) @ self.mono_degree.to(left.dtype)

    def label_params(self) -> list[dict]:
        return [
            {"eta": e, "zeta": z, "lambda": lam}
            for e, z, lam in product(self.etas, self.zetas, self.lambdas)
        ]


class ANIAngular(AngularTerm):
    """ANI angular term (Smith et al. 2017, eq. 4) as TorchANI computes it:
    2 ((1 + cos(theta' - theta_s)) / 2)^zeta exp(-eta ((R_ij + R_ik)/2 - R_s)^2)
    f_c(R_ij) f_c(R_ik), theta' = arccos(0.95 cos theta). Columns: R_s outer, theta_s inner."""

    shift: Tensor  # buffer (n_shifts,): R_s, Å
    cos_s: Tensor  # buffer (n_sections,): cos theta_s
    sin_s: Tensor  # buffer (n_sections,): sin theta_s

    def __init__(self, cutoff: float, eta: float, zeta: float, shifts, sections) -> None:
        super().__init__(cutoff)
        self.eta, self.zeta = float(eta), float(zeta)
        self.shifts, self.sections = [float(s) for s in shifts], [float(s) for s in sections]
        self.register_buffer("shift", _buffer(self.shifts))
        self.register_buffer("cos_s", _buffer([math.cos(s) for s in self.sections]))
        self.register_buffer("sin_s", _buffer([math.sin(s) for s in self.sections]))

    def forward(self, tri: Triplets) -> tuple[Tensor, Tensor]:
        # exp(-eta ((R_ij + R_ik) / 2 - R_s)^2) = exp(-eta / 4 (R_ij + R_ik - 2 R_s)^2); the
        # factor 2 of the angular part is carried by the radial one (fewer columns)
        d = (tri.r_j + tri.r_k).unsqueeze(-1) - 2.0 * self.shift.to(tri.distances.dtype)
        radial = (2.0 * tri.gg) * torch.exp((d * d) * (-0.25 * self.eta))  # shape (S, n_shifts)
        c = 0.95 * tri.cos
        s = torch.sqrt(1.0 - c * c)
        # (1 + cos(theta' - theta_s)) / 2 = 1/2 + c cos(theta_s) / 2 + s sin(theta_s) / 2
        half = torch.addcmul(
            c.unsqueeze(-1) * (0.5 * self.cos_s.to(c.dtype)),
            s.unsqueeze(-1),
            0.5 * self.sin_s.to(c.dtype),
        ).add_(0.5)  # shape (S, n_sections)
        if self.zeta.is_integer():
            angular = _ipow(half, int(self.zeta))
        else:
            angular = half**self.zeta
        return radial, angular

    def label_params(self) -> list[dict]:
        return [
            {"eta": self.eta, "zeta": self.zeta, "Rs": r, "theta_s": t}
            for r, t in product(self.shifts, self.sections)
        ]
