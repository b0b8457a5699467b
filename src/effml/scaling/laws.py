"""Chinchilla-style scaling laws as data: L(N, D) = E + A/N^α + B/D^β, and what follows from them.

N = parameters, D = training tokens, C ≈ 6·N·D training FLOPs (forward 2ND + backward 4ND).
Minimising L at fixed C = 6ND gives the closed form (Hoffmann et al. 2022, eq. 4 and appendix D.2):

    N_opt(C) = G · (C/6)^a,   D_opt(C) = G⁻¹ · (C/6)^b,   G = (αA / (βB))^(1/(α+β)),
    a = β/(α+β),  b = α/(α+β)  (a + b = 1, so 6·N_opt·D_opt = C exactly)

and the reverse, for a given N the D at which N is compute-optimal: D = (N/G)^(b/a) / G.

Laws are frozen, validated dataclasses kept in a registry (`LAWS`), looked up by name. Caveat that the
tests pin down: with the paper's own eq.-10 constants this closed form does NOT reproduce Chinchilla's
Table 3 (that table is approach 1, ≈ 20 tokens/param); it asks for ~3× more tokens per parameter at 67B.
Besiroglu et al. 2024 traced this to the approach-3 fit and refit it ("besiroglu" below), which is close
to 20 tokens/param. `tokens_per_param_allocation` is the approach-1 rule of thumb itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from effml.errors import ConfigError
from effml.registries import Registry

FLOPS_PER_PARAM_TOKEN = 6  # C ≈ 6ND: 2 FLOPs/param/token forward, 4 backward
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # approach-1 rule of thumb (Table 3: 20.0–22.4 tokens/param)


@dataclass(frozen=True)
class ScalingLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta (loss in nats/token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"
    source: str = ""

    def __post_init__(self):
        for field in ("E", "A", "B", "alpha", "beta"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"ScalingLaw.{field} must be a finite number, got {value!r}")
        for field in ("A", "B", "alpha", "beta"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"ScalingLaw.{field} must be > 0, got {getattr(self, field)!r}")
        if self.E < 0:
            raise ConfigError(f"ScalingLaw.E (irreducible loss) must be >= 0, got {self.E!r}")

    @classmethod
    def from_logs(cls, E: float, log_A: float, log_B: float, alpha: float, beta: float, **kw) -> ScalingLaw:
        return cls(E, math.exp(log_A), math.exp(log_B), alpha, beta, **kw)

    @classmethod
    def from_dict(cls, d: dict) -> ScalingLaw:
        d = d.get("law", d) if isinstance(d, dict) else d
        missing = [k for k in ("E", "A", "B", "alpha", "beta") if k not in d]
        if missing:
            raise ConfigError(f"a scaling law needs keys E, A, B, alpha, beta; missing {', '.join(missing)}")
        return cls(**{k: (float(d[k]) if k not in ("name", "source") else d[k])
                      for k in ("E", "A", "B", "alpha", "beta", "name", "source") if k in d})

    def to_dict(self) -> dict:
        return {**asdict(self), "a": self.a, "b": self.b, "G": self.G}

    # --- derived quantities -------------------------------------------------------------------------
    @property
    def a(self) -> float:
        """Exponent of N_opt ∝ C^a: β/(α+β)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ∝ C^b: α/(α+β)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def loss(self, N, D):
        """L(N, D); scalars give a float, arrays broadcast."""
        N, D = _positive(N, "N (parameters)"), _positive(D, "D (tokens)")
        out = self.E + self.A / N ** self.alpha + self.B / D ** self.beta
        return float(out) if np.ndim(out) == 0 else out

    def optimal_params(self, C):
        C = _positive(C, "compute (FLOPs)")
        return _out(self.G * (C / FLOPS_PER_PARAM_TOKEN) ** self.a)

    def optimal_tokens(self, C):
        C = _positive(C, "compute (FLOPs)")
        return _out((C / FLOPS_PER_PARAM_TOKEN) ** self.b / self.G)

    def tokens_for_params(self, N):
        """The D at which a model of N parameters is compute-optimal: invert N = G·(C/6)^a."""
        N = _positive(N, "N (parameters)")
        return _out((N / self.G) ** (self.b / self.a) / self.G)


def _positive(x, what: str):
    arr = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ConfigError(f"{what} must be finite and > 0, got {x!r}")
    return arr if arr.ndim else float(arr)


def _out(x):
    return float(x) if np.ndim(x) == 0 else x


# ---- presets ---------------------------------------------------------------------------------------
LAWS: Registry[ScalingLaw] = Registry("scaling law")  # add yours: LAWS.add(law.name, law)
for _law in (ScalingLaw(1.69, 406.4, 410.7, 0.34, 0.28, name="chinchilla",
                        source="Hoffmann et al. 2022, eq. 10 (rounded constants)"),
             ScalingLaw.from_logs(1.6934, 6.00734, 6.01792, 0.33917, 0.28491, name="chinchilla-full",
                                  source="Hoffmann et al. 2022, approach 3 (full precision)"),
             ScalingLaw(1.8172, 482.01, 2085.43, 0.3478, 0.3658, name="besiroglu",
                        source="Besiroglu et al. 2024, 'Chinchilla scaling: a replication attempt'")):
    LAWS.add(_law.name, _law)


def get_law(law: str | ScalingLaw) -> ScalingLaw:
    """A preset by name (`LAWS`), or the ScalingLaw itself."""
    if isinstance(law, ScalingLaw):
        return law
    try:
        return LAWS.get(law)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or pass a ScalingLaw)") from None


def loss(N, D, law: str | ScalingLaw = "chinchilla"):
    """Predicted final loss (nats/token) of N parameters trained on D tokens."""
    return get_law(law).loss(N, D)


# ---- allocations -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Allocation:
    """A (parameters, tokens) split of a training compute budget and the loss the law predicts for it."""

    compute: float  # training FLOPs, 6·N·D
    params: float
    tokens: float
    loss: float
    law: str
    rule: str  # "closed-form" (eq. 10 minimised at fixed C) or "20-tokens-per-param" (approach-1 rule)

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_param": self.tokens_per_param}


def compute_optimal(C: float, law: str | ScalingLaw = "chinchilla") -> Allocation:
    """Minimise L(N, D) subject to 6ND = C (closed form above)."""
    law = get_law(law)
    N, D = law.optimal_params(C), law.optimal_tokens(C)
    return Allocation(float(C), N, D, law.loss(N, D), law.name, "closed-form")


def optimal_for_params(N: float, law: str | ScalingLaw = "chinchilla") -> Allocation:
    """Reverse: the tokens that make N compute-optimal, and the compute 6·N·D that costs."""
    law = get_law(law)
    D = law.tokens_for_params(N)
    return Allocation(FLOPS_PER_PARAM_TOKEN * N * D, float(N), D, law.loss(N, D), law.name, "closed-form")


def tokens_per_param_allocation(C: float | None = None, *, params: float | None = None,
                                ratio: float = CHINCHILLA_TOKENS_PER_PARAM,
                                law: str | ScalingLaw = "chinchilla") -> Allocation:
    """Approach-1 rule of thumb D = ratio·N: from C (N = √(C/(6·ratio))) or from N (C = 6·ratio·N²)."""
    law = get_law(law)
    if ratio <= 0:
        raise ConfigError(f"tokens-per-parameter ratio must be > 0, got {ratio!r}")
    if (C is None) == (params is None):
        raise ConfigError("tokens_per_param_allocation needs exactly one of C (FLOPs) or params")
    if params is None:
        N = math.sqrt(_positive(C, "compute (FLOPs)") / (FLOPS_PER_PARAM_TOKEN * ratio))
    else:
        N = _positive(params, "N (parameters)")
    D = ratio * N
    return Allocation(FLOPS_PER_PARAM_TOKEN * N * D, N, D, law.loss(N, D), law.name,
                      f"{ratio:g}-tokens-per-param")


@dataclass(frozen=True)
class IsoFlopCurve:
    """Loss vs N at one fixed compute C (D = C/6N along the curve); the minimum is the closed-form optimum."""

    compute: float
    params: tuple[float, ...]
    tokens: tuple[float, ...]
    losses: tuple[float, ...]
    optimum: Allocation

    def to_dict(self) -> dict:
        return {"compute": self.compute, "params": list(self.params), "tokens": list(self.tokens),
                "losses": list(self.losses), "optimum": self.optimum.to_dict()}


def isoflop(C: float, law: str | ScalingLaw = "chinchilla", params=None, points: int = 41,
            span: float = 30.0) -> IsoFlopCurve:
    """Loss along the isoFLOP line 6ND = C, by default N from N_opt/span to N_opt·span (log-spaced)."""
    law = get_law(law)
    opt = compute_optimal(C, law)
    if params is None:
        if points < 2 or span <= 1:
            raise ConfigError(f"isoflop needs points >= 2 and span > 1, got {points} and {span}")
        params = np.geomspace(opt.params / span, opt.params * span, points)  # (points,)
    N = np.atleast_1d(_positive(params, "isoflop params"))  # (points,)
    D = C / (FLOPS_PER_PARAM_TOKEN * N)  # (points,)
    L = law.loss(N, D)  # (points,)
    return IsoFlopCurve(float(C), tuple(map(float, N)), tuple(map(float, D)), tuple(map(float, L)), opt)
