"""The user's side of `effml study --spec`: a small CNN trained on sklearn's digits (1797 real 8x8 scans of
handwritten digits), saved as a plain state dict, and the four functions a spec file names.

    python examples/user_cnn/digits_cnn.py           # train for a few seconds, save digits_cnn.pt here
    effml study --spec examples/user_cnn/study.toml  # study that saved model (the spec names this module)

Nothing here is effml: it is what a user already has (a model class, a saved checkpoint, an eval function).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "digits_cnn.pt"
SPLIT = 1297  # the first 1297 scans train, the last 500 are held out


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),  # (B, w, 8, 8)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, 4, 4)
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # (B, 2w, 2, 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):  # (B, 1, 8, 8) -> (B, 10)
        return self.head(self.features(x))


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def _batches(x, y, steps: int, batch: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=g)
        yield x[idx], y[idx]


def finetune(model: nn.Module, steps: int) -> None:
    """The user's training loop: `steps` Adam steps on the training split (also used to train from scratch)."""
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for xb, yb in _batches(x[:SPLIT], y[:SPLIT], steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module) -> dict:
    """Accuracy on the 500 held-out scans."""
    x, y = _data()
    model.eval()
    pred = model(x[SPLIT:]).argmax(-1)
    return {"accuracy": (pred == y[SPLIT:]).float().mean().item()}


def calibration() -> list[torch.Tensor]:
    """Four batches of 64 training scans for static int8."""
    x, _ = _data()
    return [x[i:i + 64] for i in range(0, 256, 64)]


def example_inputs(batch: int = 64) -> tuple[torch.Tensor]:
    x, _ = _data()
    return (x[SPLIT:SPLIT + batch],)


def load(path: str = str(WEIGHTS), width: int = 32) -> nn.Module:
    """The saved model, loaded the safe way (weights_only=True)."""
    model = DigitsCNN(width)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def train_and_save(path: str | Path = WEIGHTS, steps: int = 300, width: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = DigitsCNN(width)
    finetune(model, steps)
    torch.save(model.state_dict(), path)
    return Path(path)


if __name__ == "__main__":
    out = train_and_save(sys.argv[1] if len(sys.argv) > 1 else WEIGHTS)
    print(f"saved {out}: held-out accuracy {evaluate(load(str(out)))['accuracy']:.3f}")
