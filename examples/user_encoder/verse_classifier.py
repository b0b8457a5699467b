"""A user's text classifier on the shipped all-MiniLM-L6-v2 encoder, studied with the Python API.

Task (real, offline): is a King James verse from the Old or the New Testament? Labels come from each verse's
book (the New Testament starts at Matthew). The user's model is the pretrained encoder, mean-pooled, with a
linear head trained on frozen embeddings (seconds); `effml.study` then studies it as it is.

    python examples/user_encoder/verse_classifier.py          # train the head, study, print the rows
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
    """What the user brings to effml.study: the trained model, evaluate, calibration and example inputs."""

    def __init__(self, n_train: int = 400, n_test: int = 300, head_steps: int = 300, seed: int = 0):
        from effml.zoo.pretrained import minilm

        enc = minilm()
        self.tokenizer = enc.tokenizer
        self.train_set, self.test_set = verses(n_train, n_test, seed)
        torch.manual_seed(seed)
        self.model = VerseClassifier(enc.model).eval()
        feats = self._features(self.model, [t for t, _ in self.train_set])  # frozen encoder: embed once
        y = torch.tensor([l for _, l in self.train_set])
        opt = torch.optim.Adam(self.model.head.parameters(), lr=1e-2)
        for _ in range(head_steps):
            opt.zero_grad()
            nn.functional.cross_entropy(self.model.head(feats), y).backward()
            opt.step()
        self.test_tokens = self.tokens([t for t, _ in self.test_set], pad_to=None)
        self.test_labels = torch.tensor([l for _, l in self.test_set])

    def tokens(self, texts: list[str], pad_to: int | None = SEQ) -> dict:
        kw = dict(padding="max_length", max_length=pad_to) if pad_to else dict(padding=True)
        t = self.tokenizer(texts, truncation=True, return_tensors="pt", **kw)
        return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}

    @torch.no_grad()
    def _features(self, model, texts):
        tok = self.tokens(texts, pad_to=None)
        h = model.encoder(**tok).last_hidden_state
        m = tok["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        model.eval()
        preds = []
        for i in range(0, len(self.test_labels), 50):
            batch = {k: v[i:i + 50] for k, v in self.test_tokens.items()}
            preds.append(model(**batch).argmax(-1))
        return {"accuracy": (torch.cat(preds) == self.test_labels).float().mean().item()}

    def calibration(self, n: int = 4) -> list[dict]:
        return [self.tokens([t for t, _ in self.train_set[i * 16:(i + 1) * 16]]) for i in range(n)]

    def example_inputs(self, batch: int = 8) -> dict:
        return self.tokens([t for t, _ in self.test_set[:batch]])


def main(store: str = "encoder_runs.db") -> None:
    import effml

    torch.set_num_threads(1)
    task = Task()
    res = effml.study(task.model, task.evaluate, example_inputs=task.example_inputs(),
                      calibration=task.calibration(), store=store, name="verse-minilm", measure_budget_s=2.0)
    for r in res.rows:
        print(f"{r['name']:32s} acc {r['metrics']['accuracy']:.3f}  {r['speedup_measured']:.2f}x  "
              f"{r['model_bytes'] / 1e6:.1f} MB  peak {r['peak_mem_bytes'] / 1e6:.1f} MB")
    for name, why in res.skipped + res.failed:
        print(f"not run {name}: {why}")


if __name__ == "__main__":
    main(*sys.argv[1:])
