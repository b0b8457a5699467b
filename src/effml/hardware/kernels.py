"""Per-kernel latency models of the `local` CPU (nn-Meter style): features, a portable tree ensemble, apply.

The roofline with per-category efficiencies cannot tell a 3x3 conv from a 1x1 one of the same FLOPs and
bytes, nor a 16x768x3072 GEMM from a 16x3072x768 one. `effml calibrate` therefore times a few hundred
randomly sampled kernel configurations per family (kernelbench.py) and fits, per family, a gradient-boosted
tree ensemble on shape features. The target is the log of measured time over the calibrated roofline's
time for the call (roofline.op_cost: per-category overhead and efficiencies): the trees learn the
shape-dependent correction, and outside the sampled range they extrapolate that ratio flat, not the time.

Storage is data, not code: the trees' arrays (children, feature, threshold, value) and the training
samples go into the device JSON and are evaluated here with numpy (no pickle, no sklearn at predict time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# family -> the aten ops it models (their index is a feature: one model per family, op as a category)
FAMILIES: dict[str, tuple[str, ...]] = {
    "conv": ("aten.convolution",),
    "matmul": ("aten.addmm", "aten.mm", "aten.bmm"),
    "pool": ("aten.max_pool2d_with_indices", "aten.avg_pool2d", "aten.mean"),
    "norm": ("aten.native_batch_norm", "aten.native_layer_norm", "aten._native_batch_norm_legit_no_training"),
    "pointwise": ("aten.relu", "aten.gelu", "aten.hardtanh", "aten.add", "aten.mul", "aten.clamp_min",
                  "aten.relu_", "aten.hardtanh_", "aten.add_", "aten.tanh", "aten.silu", "aten.sigmoid",
                  "aten.div", "aten.sub"),
}
OP_FAMILY = {op: fam for fam, ops in FAMILIES.items() for op in ops}


def _l(x) -> float:
    return math.log2(max(float(x), 1.0))


def _numel(shape) -> float:
    return float(np.prod(shape)) if shape else 1.0


def _conv(a, flops, nbytes):
    x, w, stride, groups = a[0], a[1], a[3], a[8]
    if a[6] or len(x) != 4 or len(w) != 4:  # transposed or not 2-D: no model
        return None
    n, ci, h, wd = x
    co, cig, kh, kw = w
    s = stride[0] if isinstance(stride, (list, tuple)) else stride
    out_hw = flops / max(2.0 * n * co * cig * kh * kw, 1.0)
    return [_l(n), _l(ci), _l(co), _l(groups), _l(cig), _l(h * wd), _l(out_hw), kh * kw, s,
            float(groups == ci and groups > 1), _l(flops), _l(nbytes)]


def _matmul(op, a, flops, nbytes):
    if op == "aten.addmm":
        m1, m2, b = a[1], a[2], 1
    elif op == "aten.bmm":
        m1, m2, b = a[0][1:], a[1][1:], a[0][0]
    else:
        m1, m2, b = a[0], a[1], 1
    if m1 is None or m2 is None or len(m1) != 2 or len(m2) != 2:
        return None
    (m, k), n = m1, m2[1]
    return [_l(b), _l(m), _l(k), _l(n), _l(flops), _l(nbytes), _l(k * n), _l(m * n)]


def _pool(op, a, flops, nbytes):
    x = a[0]
    if x is None or len(x) < 3:
        return None
    k = a[1] if len(a) > 1 and isinstance(a[1], (list, tuple)) and op != "aten.mean" else (0,)
    s = a[2] if len(a) > 2 and isinstance(a[2], (list, tuple)) and a[2] and op != "aten.mean" else k
    hw = _numel(x[-2:])
    return [_l(_numel(x[:-2])), _l(hw), float(k[0]), float(s[0] if s else k[0]), _l(flops), _l(nbytes)]


def _norm(op, a, flops, nbytes):
    x = a[0]
    if x is None:
        return None
    inner = x[-1] if "layer_norm" in op else _numel(x[2:])
    return [_l(_numel(x)), _l(x[1] if len(x) > 1 else 1), _l(inner), _l(nbytes)]


def _pointwise(op, a, flops, nbytes):
    shapes = [s for s in a if isinstance(s, tuple) and all(isinstance(v, int) for v in s)]
    if not shapes:
        return None
    out = max(_numel(s) for s in shapes)
    return [_l(out), float(len(shapes)), float(any(_numel(s) < out for s in shapes)), _l(nbytes)]


def features(op: str, args, flops: float, nbytes: float) -> tuple[str, list[float]] | None:
    """(family, feature vector) of one op call, or None when no kernel model covers it."""
    fam = OP_FAMILY.get(op)
    if fam is None or not args:
        return None
    a = tuple(tuple(v) if isinstance(v, list) else v for v in args)  # JSON round trips give lists
    try:
        if fam == "conv":
            f = _conv(a, flops, nbytes)
        elif fam == "matmul":
            f = _matmul(op, a, flops, nbytes)
        else:
            f = {"pool": _pool, "norm": _norm, "pointwise": _pointwise}[fam](op, a, flops, nbytes)
    except (IndexError, TypeError, ValueError):
        return None
    return None if f is None else (fam, [float(FAMILIES[fam].index(op)), *f])


def roofline_base(flops: float, nbytes: float, peak: float, bw: float) -> float:
    """The plain roofline time max(FLOPs / peak, bytes / bw), at least 100 ns (sizes samples)."""
    return max(flops / peak, nbytes / bw, 1e-7)


# ---- the portable ensemble ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TreeEnsemble:
    """Sum of regression trees: y = init + rate * sum_t tree_t(x). Arrays as sklearn's `tree_` has them."""

    init: float
    rate: float
    trees: tuple[dict, ...]  # {"left", "right", "feature", "threshold", "value"}: lists, leaves have left = -1

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=float))
        y = np.full(len(x), self.init)
        rows = np.arange(len(x))
        for t in self.trees:
            left, right = np.asarray(t["left"]), np.asarray(t["right"])
            feat, thr, val = np.asarray(t["feature"]), np.asarray(t["threshold"]), np.asarray(t["value"])
            node = np.zeros(len(x), dtype=int)
            while True:
                inner = left[node] >= 0
                if not inner.any():
                    break
                go_left = x[rows, np.maximum(feat[node], 0)] <= thr[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            y += self.rate * val[node]
        return y

    def to_dict(self) -> dict:
        return {"init": self.init, "rate": self.rate, "trees": list(self.trees)}

    @classmethod
    def from_dict(cls, d: dict) -> TreeEnsemble:
        return cls(float(d["init"]), float(d["rate"]), tuple(d["trees"]))


def fit_ensemble(x, y, seed: int = 0, n_estimators: int = 200, max_depth: int = 4,
                 rate: float = 0.06) -> TreeEnsemble:
    """Gradient-boosted trees (sklearn, squared loss) on (features, log time ratio), exported as arrays."""
    from sklearn.ensemble import GradientBoostingRegressor

    gbr = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=max_depth, learning_rate=rate,
                                    subsample=0.8, min_samples_leaf=3, random_state=seed)
    gbr.fit(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    trees = []
    for est in gbr.estimators_[:, 0]:
        t = est.tree_
        trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                      "feature": t.feature.tolist(), "threshold": [round(v, 6) for v in t.threshold.tolist()],
                      "value": [round(v, 6) for v in t.value[:, 0, 0].tolist()]})
    return TreeEnsemble(float(np.mean(y)) if gbr.init == "zero" else float(gbr.init_.constant_[0][0]), rate,
                        tuple(trees))


# ---- apply -------------------------------------------------------------------------------------------
_CACHE: dict[int, tuple[dict, dict[str, TreeEnsemble]]] = {}  # id -> (the dict itself: keeps the id unique)


def ensembles(device) -> dict[str, TreeEnsemble]:
    """The device's fitted kernel models by family ({} for catalog devices), parsed once per device."""
    kern = getattr(device, "kernels", None) or {}
    if not kern:
        return {}
    if id(kern) not in _CACHE:
        _CACHE[id(kern)] = (kern, {fam: TreeEnsemble.from_dict(fig.value["model"]) for fam, fig in kern.items()})
    return _CACHE[id(kern)][1]


def predict_kernel_times(device, calls: list[tuple[str, object, float, float, float]]) -> list[float | None]:
    """Seconds per call [(op, args, flops, bytes, base seconds)], None where no kernel model applies.
    The base is the calibrated roofline's time of the call (op_cost without page faults): the models
    learn the shape-dependent correction to it. Batched per family."""
    models = ensembles(device)
    out: list[float | None] = [None] * len(calls)
    if not models:
        return out
    groups: dict[str, list[tuple[int, list[float], float]]] = {}
    for i, (op, args, flops, nbytes, base) in enumerate(calls):
        f = features(op, args, flops, nbytes)
        if f is not None and f[0] in models:
            groups.setdefault(f[0], []).append((i, f[1], max(base, 1e-7)))
    for fam, items in groups.items():
        ratio = np.exp(models[fam].predict(np.array([f for _, f, _ in items])))
        for (i, _, base), r in zip(items, ratio):
            out[i] = float(base * r)
    return out


def kernel_cost(roofline, seconds: float, extra_s: float = 0.0):
    """An OpCost of `seconds` (+ `extra_s` overhead) that keeps the roofline's bound: both terms scaled."""
    from effml.hardware.roofline import OpCost

    top = max(roofline.compute_s, roofline.memory_s)
    if top <= 0:
        return OpCost(0.0, 0.0, seconds + extra_s)
    k = seconds / top
    return OpCost(roofline.compute_s * k, roofline.memory_s * k, extra_s)
