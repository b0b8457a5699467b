"""Accuracy proxies: how good a candidate is, cheaply. A registry: `@PROXIES.register("name")` adds one.

    acc = get_proxy("train")(space, arch, ProxyConfig(train_images=2000, epochs=1))   # ProxyResult

The built-in "train" proxy trains the candidate (training form, with BN) from scratch for a short schedule
on a seeded subset of the real data set (Fashion-MNIST from Debian, sklearn digits if it is missing; the
result says which) resized to the candidate's input resolution, and returns top-1 accuracy on a seeded
test subset. A better proxy (longer training, a zero-cost score, a supernet) is a function
`fn(space, arch, config) -> ProxyResult | float` registered in `PROXIES`, or passed to NasConfig directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

from effml.errors import ConfigError, EffmlError, ModelError
from effml.nas.spaces import Arch, Space
from effml.registries import Registry


@dataclass(frozen=True)
class ProxyConfig:
    dataset: str = "fashion-mnist"
    train_images: int = 2000
    test_images: int = 1000
    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    bn_batches: int = 10  # training batches to re-estimate BN statistics with after training
    threads: int = 1  # torch threads per worker process (workers share the machine's cores)

    def __post_init__(self):
        for name in ("train_images", "test_images", "batch_size", "threads"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"ProxyConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.epochs > 0 or not self.lr > 0:
            raise ConfigError(f"ProxyConfig.epochs and lr must be > 0, got {self.epochs}, {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProxyResult:
    accuracy: float  # in [0, 1]
    seconds: float = 0.0
    dataset: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


ProxyFn = Callable[[Space, Arch, ProxyConfig], "ProxyResult | float"]
PROXIES: Registry[ProxyFn] = Registry("NAS accuracy proxy")


def get_proxy(p: str | ProxyFn) -> ProxyFn:
    """A registered proxy by name, a `package.module:function`, or the callable itself."""
    if callable(p):
        return p
    if isinstance(p, str) and ":" in p and p not in PROXIES:  # package.module:function
        from effml.models import load_callable

        return load_callable(p)
    try:
        return PROXIES.get(p)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or package.module:function)") from None


def run_proxy(p: str | ProxyFn, space: Space, arch: Arch, config: ProxyConfig) -> ProxyResult:
    fn = get_proxy(p)
    try:
        out = fn(space, arch, config)
    except EffmlError:
        raise
    except Exception as e:  # a user's proxy: named by flag and spec, as a raising --model is
        name = p if isinstance(p, str) else getattr(p, "__name__", repr(p))
        raise ModelError(f"--proxy {name} raised {type(e).__name__}: {e}") from e
    res = out if isinstance(out, ProxyResult) else ProxyResult(float(out))
    if not 0.0 <= res.accuracy <= 1.0:
        raise ConfigError(f"proxy {p!r} returned accuracy {res.accuracy}, expected a fraction in [0, 1]")
    return res


@lru_cache(maxsize=2)
def _base_data(dataset: str, train_images: int, test_images: int, seed: int):
    from effml.zoo.data import load

    return load(dataset, seed=seed, train_limit=train_images, test_limit=test_images)


@lru_cache(maxsize=8)
def _resized(dataset: str, train_images: int, test_images: int, seed: int, size: int, batch_size: int):
    import torch.nn.functional as F

    from effml.zoo.data import BatchLoader, DataBundle

    base = _base_data(dataset, train_images, test_images, seed)

    def rs(x):  # (N, 1, 28, 28) -> (N, 1, size, size)
        return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear",
                                                           align_corners=False)

    return DataBundle(base.name, BatchLoader(rs(base.train.x), base.train.y, batch_size, shuffle=True, seed=seed),
                      BatchLoader(rs(base.test.x), base.test.y, 256), base.num_classes, (1, 1, size, size),
                      base.note)


@PROXIES.register("train")
def train_proxy(space: Space, arch: Arch, config: ProxyConfig) -> ProxyResult:
    """Short training from scratch (Adam, cosine schedule), top-1 on the test subset."""
    import torch

    from effml.train.classifier import TrainLoopConfig, evaluate, train_classifier

    torch.set_num_threads(config.threads)
    data = _resized(config.dataset, config.train_images, config.test_images, config.seed,
                    space.resolution(arch), config.batch_size)
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    model = space.build(arch)
    train_classifier(model, data, TrainLoopConfig(epochs=config.epochs, lr=config.lr, seed=config.seed),
                     evaluate_after=False)
    recalibrate_bn(model, data.train, config.bn_batches)
    acc = evaluate(model, data.test)
    return ProxyResult(float(acc), time.perf_counter() - t0, data.name, data.note)


def recalibrate_bn(model, loader, batches: int) -> None:
    """Re-estimate BN running statistics with the final weights (a cumulative average over `batches`
    training batches, forward only). After a few dozen steps the running averages still mix in the early
    weights' statistics, and eval-mode accuracy falls to chance (measured: 8.8% with 46% train accuracy
    after one 2000-image epoch of a MobileNetV2; NAS supernets recalibrate for the same reason)."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    model.eval()
