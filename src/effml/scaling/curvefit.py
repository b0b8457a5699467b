"""Fit L(N, D) = E + A/N^α + B/D^β to a user's own runs: Chinchilla approach 3 (Hoffmann et al. 2022, §3.3).

With a = ln A, b = ln B, e = ln E the prediction is log-sum-exp: ln L̂ = LSE(a − α ln N, b − β ln D, e), and we
minimise the mean Huber loss (δ = 1e-3) of ln L̂ − ln L with L-BFGS from a grid of initialisations (the
paper's grid: α, β ∈ {0, .5, …, 2}, e ∈ {−1, −.5, …, 1}, a, b ∈ {0, 5, …, 25}: 4500 points). Every grid point's
objective is evaluated at once (vectorised); L-BFGS then runs from the `n_starts` best of them (all 4500
when n_starts is None). Tolerances are tight on purpose: Besiroglu et al. 2024 traced the paper's
inconsistent approach-3 estimates to an optimiser that stopped early.

Uncertainty: a bootstrap over runs (resample with replacement, refit from the point estimate and the
best few grid points of the resample), percentile intervals on α, β, a = β/(α+β) and E, A, B. Seeded.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from effml.errors import ConfigError, EffmlError
from effml.scaling.laws import ScalingLaw

N_FIT_PARAMS = 5  # E, A, B, alpha, beta
PAPER_GRID = {
    "alpha": tuple(np.arange(0.0, 2.01, 0.5)), "beta": tuple(np.arange(0.0, 2.01, 0.5)),
    "e": tuple(np.arange(-1.0, 1.01, 0.5)), "a": tuple(np.arange(0.0, 25.1, 5.0)),
    "b": tuple(np.arange(0.0, 25.1, 5.0)),
}
# θ = (a, b, e, alpha, beta); the box only keeps exponents >= 0-ish and exp() finite.
_BOUNDS = [(-50.0, 100.0), (-50.0, 100.0), (-20.0, 5.0), (1e-4, 10.0), (1e-4, 10.0)]
COLUMN_ALIASES = {
    "params": ("params", "n", "n_params", "parameters", "N"),
    "tokens": ("tokens", "d", "n_tokens", "D"),
    "loss": ("loss", "final_loss", "val_loss", "l", "L"),
}


class CurveFitError(EffmlError, ValueError):
    """The runs cannot support a fit (too few, non-positive values, a bad CSV)."""


@dataclass(frozen=True)
class Runs:
    """(N, D, final loss) of training runs: parallel float arrays, each (n,)."""

    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray

    def __post_init__(self):
        arrays = [np.asarray(getattr(self, k), dtype=float).ravel() for k in ("params", "tokens", "loss")]
        if len({a.size for a in arrays}) != 1:
            raise CurveFitError("params, tokens and loss must have the same length, got "
                                f"{[a.size for a in arrays]}")
        for name, arr in zip(("params", "tokens", "loss"), arrays):
            bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
            if bad.size:
                raise CurveFitError(f"run {int(bad[0])}: {name} must be finite and > 0, got {arr[bad[0]]!r}")
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.params.size)

    def subset(self, idx: np.ndarray) -> Runs:
        return Runs(self.params[idx], self.tokens[idx], self.loss[idx])


def read_runs(path: str | Path) -> Runs:
    """CSV with a header naming params/N, tokens/D and loss columns (aliases in COLUMN_ALIASES)."""
    path = Path(path)
    if not path.is_file():
        raise CurveFitError(f"runs file {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        columns, missing = {}, []
        for key, aliases in COLUMN_ALIASES.items():
            found = next((h for h in header if h in aliases or h.lower() in aliases), None)
            columns[key] = found
            if found is None:
                missing.append(f"{key} (one of: {', '.join(dict.fromkeys(a.lower() for a in aliases))})")
        if missing:
            raise CurveFitError(f"{path}: missing column(s) {'; '.join(missing)}; header is {header}")
        values = {k: [] for k in columns}
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            for key, col in columns.items():
                try:
                    values[key].append(float(row[col]))
                except (TypeError, ValueError):
                    raise CurveFitError(f"{path} line {lineno}: column {col!r} is {row.get(col)!r}, "
                                        "not a number") from None
    return Runs(*(np.array(values[k]) for k in ("params", "tokens", "loss")))


@dataclass(frozen=True)
class CurveFitConfig:
    delta: float = 1e-3  # Huber threshold on log-loss residuals
    n_starts: int | None = 64  # L-BFGS from the best n grid points; None = from every grid point
    n_bootstrap: int = 200
    bootstrap_starts: int = 1  # per resample: warm start at the point estimate + this many best grid points
    ci: float = 0.95
    seed: int = 0
    grid: dict = field(default_factory=lambda: dict(PAPER_GRID))

    def __post_init__(self):
        if not self.delta > 0:
            raise ConfigError(f"CurveFitConfig.delta must be > 0, got {self.delta!r}")
        if self.n_starts is not None and self.n_starts < 1:
            raise ConfigError(f"CurveFitConfig.n_starts must be >= 1 or None, got {self.n_starts!r}")
        if self.n_bootstrap < 0 or self.bootstrap_starts < 0:
            raise ConfigError("CurveFitConfig.n_bootstrap and bootstrap_starts must be >= 0")
        if not 0 < self.ci < 1:
            raise ConfigError(f"CurveFitConfig.ci must be in (0, 1), got {self.ci!r}")
        missing = {"a", "b", "e", "alpha", "beta"} - set(self.grid)
        if missing:
            raise ConfigError(f"CurveFitConfig.grid is missing axes {sorted(missing)}")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CurveFitResult:
    law: ScalingLaw
    objective: float  # mean Huber loss at the optimum
    n_runs: int
    n_starts: int
    starts_at_best: int  # how many L-BFGS starts ended within 1e-9 (relative) of the best objective
    rms_log_residual: float
    intervals: dict[str, Interval]  # alpha, beta, a, E, A, B; empty without bootstrap
    n_bootstrap: int
    ci: float
    undetermined: tuple[str, ...] = ()  # parameters the runs do not pin down (a term ≈ 0 everywhere, an exponent at the box edge)

    def to_dict(self) -> dict:
        return {"law": self.law.to_dict(), "objective": self.objective, "n_runs": self.n_runs,
                "n_starts": self.n_starts, "starts_at_best": self.starts_at_best,
                "rms_log_residual": self.rms_log_residual, "n_bootstrap": self.n_bootstrap, "ci": self.ci,
                "intervals": {k: v.to_dict() for k, v in self.intervals.items()}, "undetermined": list(self.undetermined)}


# ---- objective -------------------------------------------------------------------------------------
def _objective(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray, lnL: np.ndarray, delta: float):
    """Mean Huber(LSE(a − α lnN, b − β lnD, e) − lnL) and its gradient; theta (5,), data (n,).

    Written with few numpy calls (it runs ~10⁵ times per bootstrap): Huber'(r) = clip(r, −δ, δ) = h and
    Huber(r) = h·(r − h/2) in both branches."""
    a, b, e, alpha, beta = theta
    t1 = a - alpha * lnN  # (n,)
    t2 = b - beta * lnD  # (n,)
    m = np.maximum(np.maximum(t1, t2), e)  # (n,) for a stable log-sum-exp
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)  # (n,) each
    s = w1 + w2 + w3
    r = m + np.log(s) - lnL  # (n,) residual of log-loss
    h = np.clip(r, -delta, delta)
    g = h / (s * r.size)  # d(mean Huber)/d(LSE) / softmax denominator
    g1, g2 = g * w1, g * w2
    grad = np.array([g1.sum(), g2.sum(), g @ w3, -(g1 @ lnN), -(g2 @ lnD)])
    return float(h @ (r - 0.5 * h)) / r.size, grad


def _grid_points(grid: dict) -> np.ndarray:
    return np.array(list(itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])),
                    dtype=float)  # (G, 5)


def _grid_objectives(points: np.ndarray, lnN, lnD, lnL, delta: float) -> np.ndarray:
    a, b, e, alpha, beta = (points[:, i:i + 1] for i in range(5))  # each (G, 1)
    terms = np.stack([a - alpha * lnN, b - beta * lnD, np.broadcast_to(e, (len(points), lnN.size))])  # (3, G, n)
    r = np.logaddexp.reduce(terms, axis=0) - lnL  # (G, n)
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).mean(axis=1)  # (G,)


@contextlib.contextmanager
def single_threaded_blas():
    """Pin BLAS to one thread while fitting: on a 5-parameter problem OpenBLAS's thread wake-ups make
    scipy's L-BFGS-B ~15x slower (measured here: 3 ms vs 0.2 ms per iteration on a loaded 2-core machine)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def _minimise(starts: np.ndarray, data: tuple, delta: float) -> tuple[np.ndarray, float, np.ndarray]:
    from scipy.optimize import minimize

    finals, values = [], []
    for x0 in starts:
        x0 = np.clip(x0, [lo for lo, _ in _BOUNDS], [hi for _, hi in _BOUNDS])
        res = minimize(_objective, x0, args=(*data, delta), jac=True, method="L-BFGS-B", bounds=_BOUNDS,
                       options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
        finals.append(res.x)
        values.append(res.fun)
    values = np.array(values)
    best = int(np.argmin(values))
    return finals[best], float(values[best]), values


def _best_grid(points: np.ndarray, data: tuple, delta: float, k: int | None) -> np.ndarray:
    if k is None or k >= len(points):
        return points
    obj = _grid_objectives(points, *data, delta)
    return points[np.argsort(obj, kind="stable")[:k]]


def _theta_to_law(theta: np.ndarray, name: str) -> ScalingLaw:
    a, b, e, alpha, beta = map(float, theta)
    return ScalingLaw(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), alpha, beta, name=name,
                      source="fitted: Huber(δ) on log-loss, L-BFGS from a grid (Chinchilla approach 3)")


def _law_values(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = map(float, theta)
    return {"alpha": alpha, "beta": beta, "a": beta / (alpha + beta), "E": np.exp(e), "A": np.exp(a),
            "B": np.exp(b)}


def fit_law(runs: Runs, config: CurveFitConfig = CurveFitConfig(), name: str = "fitted") -> CurveFitResult:
    """Fit E, A, B, α, β to the runs; bootstrap percentile intervals when config.n_bootstrap > 0."""
    if not isinstance(runs, Runs):
        raise CurveFitError(f"fit_law expects Runs (see read_runs), got {type(runs).__name__}")
    distinct = len({(n, d) for n, d in zip(runs.params, runs.tokens)})
    if distinct < N_FIT_PARAMS:
        raise CurveFitError(f"{len(runs)} runs at {distinct} distinct (N, D) points cannot determine the "
                       f"{N_FIT_PARAMS} parameters E, A, B, alpha, beta; give at least {N_FIT_PARAMS} "
                       f"(and in practice many more, spread over N and D)")
    import scipy.optimize  # noqa: F401  (load scipy's OpenBLAS before pinning its threads)

    with single_threaded_blas():
        return _fit(runs, config, name)


def _fit(runs: Runs, config: CurveFitConfig, name: str) -> CurveFitResult:
    data = (np.log(runs.params), np.log(runs.tokens), np.log(runs.loss))
    points = _grid_points(config.grid)
    starts = _best_grid(points, data, config.delta, config.n_starts)
    theta, best, values = _minimise(starts, data, config.delta)
    at_best = int(np.sum(values <= best + 1e-9 * max(abs(best), 1e-12)))
    lnL_hat = np.logaddexp.reduce(np.stack([theta[0] - theta[3] * data[0], theta[1] - theta[4] * data[1],
                                            np.full_like(data[0], theta[2])]), axis=0)
    rms = float(np.sqrt(np.mean((lnL_hat - data[2]) ** 2)))

    intervals: dict[str, Interval] = {}
    if config.n_bootstrap:
        rng = np.random.default_rng(config.seed)
        samples = []
        while len(samples) < config.n_bootstrap:
            idx = rng.integers(0, len(runs), len(runs))
            sub = runs.subset(idx)
            if len({(n, d) for n, d in zip(sub.params, sub.tokens)}) < N_FIT_PARAMS:
                continue  # a resample too degenerate to fit: redraw (counted by the seeded stream)
            sdata = (np.log(sub.params), np.log(sub.tokens), np.log(sub.loss))
            sstarts = np.vstack([theta[None], _best_grid(points, sdata, config.delta, config.bootstrap_starts)])
            samples.append(_law_values(_minimise(sstarts, sdata, config.delta)[0]))
        point = _law_values(theta)
        tail = 100 * (1 - config.ci) / 2
        for key in point:
            col = np.array([s[key] for s in samples])
            lo, hi = np.percentile(col, [tail, 100 - tail])
            intervals[key] = Interval(float(point[key]), float(lo), float(hi))
    return CurveFitResult(_theta_to_law(theta, name), best, len(runs), len(starts), at_best, rms, intervals,
                     config.n_bootstrap, config.ci, _undetermined(theta, data))


def _undetermined(theta: np.ndarray, data: tuple) -> tuple[str, ...]:
    """Parameters of a term that is < 0.1% of the predicted loss at every run, and exponents at the box edge."""
    a, b, e, alpha, beta = theta
    terms = np.exp(np.stack([a - alpha * data[0], b - beta * data[1], np.full_like(data[0], e)]))  # (3, n)
    share = (terms / terms.sum(axis=0)).max(axis=1)  # (3,) largest share of each term over the runs
    out = [name for s, names in zip(share, (("A", "alpha"), ("B", "beta"), ("E",))) if s < 1e-3 for name in names]
    for name, x, (lo, hi) in (("alpha", alpha, _BOUNDS[3]), ("beta", beta, _BOUNDS[4])):
        if (x < 10 * lo or x > 0.99 * hi) and name not in out:
            out.append(name)
    return tuple(out)
