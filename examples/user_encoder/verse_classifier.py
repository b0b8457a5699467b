"""A user's text classifier on the shipped all-MiniLM-L6-v2 encoder, studied with the Python API.

Task (real, offline): is a King James verse from the Old or the New Testament? Labels come from each verse's
book (the New Testament starts at Matthew). The user's model is the pretrained encoder, mean-pooled, with a
linear head trained on its embeddings (seconds). The user's recipe after any change to the encoder is the
same: re-fit the head on the changed encoder's own features (`Task.train`); the study is given it as
`train` with `train_quantized=True`, so pruned and quantized variants alike get their head re-fit.

    python examples/user_encoder/verse_classifier.py [STORE] [TRIALS]   # fixed plans, then TRIALS searched
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

SEQ = 128  # latency is measured at sequence length 128 (padded)


def verses(n_train: int = 400, n_test: int = 300, seed: int = 0):
    """(train, test): lists of (verse text, label 0 = Old Testament, 1 = New Testament), balanced."""
    from effml.zoo.text import kjv_path

    old, new, in_new = [], [], False
    with kjv_path().open(encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            in_new = in_new or v["book"] == "Matthew"
            if len(v["text"]) >= 40:
                (new if in_new else old).append(v["text"])
    g = torch.Generator().manual_seed(seed)
    half = (n_train + n_test) // 2
    pick = [[texts[i] for i in torch.randperm(len(texts), generator=g)[:half].tolist()] for texts in (old, new)]
    data = [(t, 0) for t in pick[0]] + [(t, 1) for t in pick[1]]
    order = torch.randperm(len(data), generator=g).tolist()
    data = [data[i] for i in order]
    return data[:n_train], data[n_train:n_train + n_test]


class VerseClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int = 384):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):  # (B, T), (B, T) -> (B, 2)
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))


class Task:
    """What the user brings to effml.study: the trained model, evaluate, train, calibration and example inputs."""

    def __init__(self, n_train: int = 1200, n_test: int = 600, head_steps: int = 300, seed: int = 0):
        from effml.zoo.pretrained import minilm

        enc = minilm()
        self.tokenizer = enc.tokenizer
        self.seed = seed
        self.train_set, self.test_set = verses(n_train, n_test, seed)
        self.train_labels = torch.tensor([l for _, l in self.train_set])
        self.model = VerseClassifier(enc.model).eval()
        self.train(self.model, head_steps)
        # held-out verses in batches of 50 of similar length (padded to the longest in the batch)
        self.test_batches = self._batches([t for t, _ in self.test_set])
        self.test_labels = torch.tensor([l for _, l in self.test_set])

    def tokens(self, texts: list[str], pad_to: int | None = SEQ) -> dict:
        kw = dict(padding="max_length", max_length=pad_to) if pad_to else dict(padding=True)
        t = self.tokenizer(texts, truncation=True, return_tensors="pt", **kw)
        return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}

    def _batches(self, texts: list[str], size: int = 50) -> list[tuple[list[int], dict]]:
        """(positions, tokens) per batch, texts sorted by length so little padding is computed."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        return [(idx, self.tokens([texts[i] for i in idx], pad_to=None))
                for idx in (order[j:j + size] for j in range(0, len(order), size))]

    @torch.no_grad()
    def _features(self, encoder: nn.Module, texts: list[str]) -> torch.Tensor:  # (N, 384) mean-pooled
        out = torch.zeros(len(texts), 384)
        for idx, tok in self._batches(texts):
            h = encoder(**tok).last_hidden_state
            m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
            out[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).float()
        return out

    def train(self, model: VerseClassifier, steps: int) -> None:
        """The user's recipe: a fresh linear head fit (`steps` full-batch Adam steps) on the training verses'
        features from `model`'s own encoder, as it is now (pruned, quantized or not). Only the head trains;
        a head that was quantized with the encoder is replaced by this float one (384 x 2)."""
        model.eval()
        feats = self._features(model.encoder, [t for t, _ in self.train_set])
        torch.manual_seed(self.seed)
        head = nn.Linear(feats.shape[1], 2)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                nn.functional.cross_entropy(head(feats), self.train_labels).backward()
                opt.step()
        model.head = head

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        model.eval()
        preds = torch.zeros(len(self.test_labels), dtype=torch.long)
        for idx, tok in self.test_batches:
            preds[idx] = model(**tok).argmax(-1)
        return {"accuracy": (preds == self.test_labels).float().mean().item()}

    def calibration(self, n: int = 4) -> list[dict]:
        return [self.tokens([t for t, _ in self.train_set[i * 16:(i + 1) * 16]]) for i in range(n)]

    def example_inputs(self, batch: int = 8) -> dict:
        return self.tokens([t for t, _ in self.test_set[:batch]])


def run(task: Task, store: str, trials: int, measure_budget_s: float = 2.0, **kw):
    """The fixed plans that fit, then `trials` searched compositions (FFN-pruning ratio x format), every
    variant's head re-fit by the user's recipe."""
    from effml.study.search import search

    return search(task.model, task.evaluate, trials=trials, example_inputs=task.example_inputs(),
                  calibration=task.calibration(), train=task.train, train_steps=300, train_quantized=True,
                  store=store, name="verse-minilm", measure_budget_s=measure_budget_s, **kw)


def beyond_fixed(res) -> list[str]:
    """Searched variants on the accuracy-latency frontier (of all rows): points no fixed plan reaches."""
    return [n for n in res.frontier["latency"] if n.startswith("search:")]


def main(store: str = "encoder_runs.db", trials: str = "8") -> None:
    torch.set_num_threads(1)
    task = Task()
    res = run(task, store, int(trials))
    base = res.row("baseline")["metrics"]["accuracy"]
    for r in res.rows:
        acc = r["metrics"]["accuracy"]
        print(f"{r['name']:36s} acc {100 * acc:.1f}% ({100 * (acc - base):+.1f} pt)  {r['speedup_measured']:.2f}x  "
              f"{r['model_bytes'] / 1e6:.1f} MB  peak {r['peak_mem_bytes'] / 1e6:.1f} MB"
              f"{'  [frontier]' if r['name'] in res.frontier['latency'] else ''}")
    for name, why in res.skipped + res.failed:
        print(f"not run {name}: {why}")
    print("searched points on the frontier that no fixed plan reaches:", beyond_fixed(res) or "none")


if __name__ == "__main__":
    main(*sys.argv[1:])
