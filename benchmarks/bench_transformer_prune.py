"""Structured pruning of real transformers: MiniLM heads + FFN (speed, fidelity, vs Torch-Pruning) and SmolLM2 depth.

    flock /tmp/effml_bench.lock .venv/bin/python benchmarks/bench_transformer_prune.py
    ... --part minilm | --part depth

Part minilm: all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, FFN 1536) at batch --batch x seq 128. 50% of every
layer's heads + 50% of its FFN channels removed by effml (HeadPrune + FFNPrune, criteria magnitude and
activation on calibration sentences) and by Torch-Pruning 1.6.1's MetaPruner (L2 magnitude, the same ratios,
hidden size kept by ignoring the layers that write the residual stream), if installed. Latency: median of
interleaved rounds in one process, 1 thread. Fidelity: cosine between the pruned and the original mean-pooled
sentence embeddings on 64 held-out KJV verses, right after pruning and after a short fine-tune (--heal-steps
AdamW steps distilling the original's embeddings on other verses; the same for every pruned model).
Accuracy (after the heal): the labelled task of examples/user_encoder/verse_classifier.py (Old vs New Testament,
--train-verses / --test-verses held out, its `verses` and `Task` imported, not copied). Per model, the user's
recipe (a fresh linear head fit on that model's own mean-pooled features, --head-steps Adam steps) and, from
that head, a short end-to-end fine-tune (--task-steps AdamW steps of encoder + head, batches of 16 training
verses, lr --task-lr, the same seed for every model); held-out accuracy and its change vs the original under
the same recipe. Reported, not claimed.
Claim: effml's pruned MiniLM >= 1.8x faster than the original.

Part depth: SmolLM2-135M with k of its 30 blocks removed (BlockPrune, ShortGPT block influence on calibration
tokens), held-out perplexity (--tokens, ctx 512) and greedy decode tokens/s of effml's engine (32 new tokens,
interleaved rounds): the perplexity-vs-speed curve. No healing fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import claims_exit_code, print_table, write_results  # noqa: E402


def _time(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def interleaved(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of every fn, measured in alternating rounds (load changes hit all alike)."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_time(fn, reps))
    return {k: statistics.median(v) for k, v in times.items()}


def torch_pruning_minilm(model, ids, ratio: float):
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    num_heads = {}
    for mod in model.modules():
        if isinstance(mod, BertSelfAttention):
            for lin in (mod.query, mod.key, mod.value):
                num_heads[lin] = mod.num_attention_heads
    ignored = [model.pooler] + [lay.attention.output.dense for lay in model.encoder.layer] + \
              [lay.output.dense for lay in model.encoder.layer]  # keep the hidden (residual) size, like effml
    pruner = tp.pruner.MetaPruner(model, ids, global_pruning=False,
                                  importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
                                  pruning_ratio=ratio, ignored_layers=ignored,
                                  output_transform=lambda out: out.last_hidden_state.sum(), num_heads=num_heads,
                                  prune_head_dims=False, prune_num_heads=True, head_pruning_ratio=ratio)
    for g in pruner.step(interactive=True):
        g.prune()
    for mod in model.modules():
        if isinstance(mod, BertSelfAttention):
            mod.num_attention_heads = pruner.num_heads[mod.query]
            mod.all_head_size = mod.query.out_features
    return model


def heal(enc, model, steps: int, seed: int = 3) -> None:
    """A short fine-tune: the pruned encoder learns the original's mean-pooled embeddings (cosine loss) on KJV
    verses from other seeds than the held-out ones; AdamW lr 1e-4, batches of 16."""
    from effml.zoo.pretrained import mean_pool, sentences

    teach = enc.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(steps):
        tok = enc.tokens(sentences(16, seed=1000 + seed * steps + i))
        with torch.no_grad():
            target = mean_pool(teach(**tok).last_hidden_state, tok["attention_mask"])  # (16, 384)
        emb = mean_pool(model(**tok).last_hidden_state, tok["attention_mask"])
        loss = 1 - torch.nn.functional.cosine_similarity(emb, target, dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def verse_task(args):
    """The example's labelled verse task (its module imported from examples/user_encoder) and the module."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, os.pardir, "examples", "user_encoder"))
    import verse_classifier

    return verse_classifier, verse_classifier.Task(args.train_verses, args.test_verses, args.head_steps)


def finetune(task, clf, steps: int, lr: float, batch: int = 16, seed: int = 0) -> None:
    """End-to-end: `steps` AdamW steps of encoder + head on the training verses (cross-entropy), shuffled
    epochs of `batch` verses padded to the longest; dropout on; seeded so every model sees the same batches."""
    texts = [t for t, _ in task.train_set]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr)
    order: list[int] = []
    clf.train()
    for _ in range(steps):
        if len(order) < batch:
            order += torch.randperm(len(texts), generator=g).tolist()
        idx, order = order[:batch], order[batch:]
        logits = clf(**task.tokens([texts[i] for i in idx], pad_to=None))
        loss = torch.nn.functional.cross_entropy(logits, task.train_labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()


def task_accuracy(vc, task, encoder, args) -> tuple[float, float | None]:
    """Held-out accuracy of `encoder` + a head fit by the user's recipe, and after --task-steps of end-to-end
    fine-tuning from there (on a copy: the measured model is left as it is)."""
    clf = vc.VerseClassifier(encoder)
    task.train(clf, args.head_steps)
    head = task.evaluate(clf)["accuracy"]
    if not args.task_steps:
        return head, None
    clf = copy.deepcopy(clf)
    finetune(task, clf, args.task_steps, args.task_lr)
    return head, task.evaluate(clf)["accuracy"]


def part_minilm(args) -> tuple[list[dict], dict]:
    from effml.compress.prune import prune
    from effml.compress.transformer_prune import FFNPrune, HeadPrune
    from effml.zoo.pretrained import minilm, sentences

    enc = minilm()
    base = enc.model
    x = enc.tokens(sentences(args.batch, seed=11), pad_to=128)  # (B, 128)
    calib = [enc.tokens(sentences(8, seed=s), pad_to=128) for s in (1, 2)]
    held = sentences(64, seed=7)
    ref = enc.embed(held)
    variants = {"original": base}
    for crit in ("magnitude", "activation"):
        m = copy.deepcopy(base)
        prune(m, HeadPrune(0.5, crit), data=calib)
        prune(m, FFNPrune(0.5, crit), data=calib)
        variants[f"effml {crit}"] = m
    tp_error = None
    try:
        variants["Torch-Pruning 1.6.1"] = torch_pruning_minilm(copy.deepcopy(base), x["input_ids"], 0.5)
    except Exception as e:  # not installed, or it fails on this model: say why
        tp_error = f"{type(e).__name__}: {e}"[:300]
    cos_before = {k: float((enc.embed(held, model=m) * ref).sum(-1).mean()) for k, m in variants.items()}
    if args.heal_steps:
        for k, m in variants.items():
            if k != "original":
                heal(enc, m, args.heal_steps)
    fns = {}
    for k, m in variants.items():
        m.eval()

        def run(m=m):
            with torch.no_grad():
                m(**x)

        fns[k] = run
    lat = interleaved(fns, args.rounds, 3)
    vc, task = verse_task(args)
    acc = {k: task_accuracy(vc, task, m, args) for k, m in variants.items()}
    rows = []
    for k, m in variants.items():
        cos = float((enc.embed(held, model=m) * ref).sum(-1).mean())
        row = {"model": k, "params_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
               "ms": round(lat[k] * 1e3, 1), "speedup": round(lat["original"] / lat[k], 2),
               "cos_no_finetune": round(cos_before[k], 4), f"cos_{args.heal_steps}_steps": round(cos, 4)}
        for i, name in enumerate(("head", f"ft{args.task_steps}")):
            if acc[k][i] is not None:  # held-out accuracy %, and points vs the original under the same recipe
                row[f"acc_{name}_%"] = round(100 * acc[k][i], 2)
                row[f"d_{name}_pt"] = round(100 * (acc[k][i] - acc["original"][i]), 2)
        rows.append(row)
    from importlib.metadata import PackageNotFoundError, version

    try:
        tp_version = version("torch-pruning")
    except PackageNotFoundError:
        tp_version = None
    task_info = {"name": "KJV verse: Old vs New Testament (examples/user_encoder/verse_classifier.py)",
                 "train": len(task.train_set), "test": len(task.test_set), "head_steps": args.head_steps,
                 "task_steps": args.task_steps, "task_lr": args.task_lr, "task_batch": 16}
    return rows, {"tp_error": tp_error, "torch_pruning": tp_version, "batch": args.batch, "seq": 128,
                  "task": task_info}


def part_depth(args) -> tuple[list[dict], dict]:
    from effml.compress.prune import prune
    from effml.compress.transformer_prune import BlockPrune
    from effml.eval import calibration_tokens, heldout_tokens, perplexity
    from effml.llm.generate import GenerateConfig, generate
    from effml.llm.weights import load_smollm2

    model, tok = load_smollm2()
    ev = heldout_tokens(tok, args.tokens)
    cal = calibration_tokens(tok, 8, 256, seed=0)
    models, removed = {}, {}
    for k in args.drop:
        m = copy.deepcopy(model)
        if k:
            res = prune(m, BlockPrune(n_blocks=k), data=cal)
            removed[k] = res.notes[0]
        models[k] = m
    prompt = tok.encode("In the beginning God created the heaven and the earth. And the earth was")
    cfg = GenerateConfig(max_new_tokens=32)
    tps = interleaved({k: (lambda m=m: generate(m, prompt, cfg)) for k, m in models.items()}, args.rounds, 1)
    rows = []
    for k, m in models.items():
        p = perplexity(m, ev, 512)
        rows.append({"blocks_removed": k, "blocks": len(m.layers), "perplexity": round(p.perplexity, 3),
                     "decode_tok_s": round(32 / tps[k], 2), "speedup": round(tps[0] / tps[k], 2) if 0 in tps else None})
        print(rows[-1], flush=True)
    return rows, {"removed": removed, "tokens": args.tokens}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "minilm", "depth"), default="all")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--heal-steps", type=int, default=40, help="MiniLM fine-tune steps after pruning (0: none)")
    ap.add_argument("--train-verses", type=int, default=1200, help="labelled task: training verses")
    ap.add_argument("--test-verses", type=int, default=600, help="labelled task: held-out verses")
    ap.add_argument("--head-steps", type=int, default=300, help="Adam steps fitting each model's linear head")
    ap.add_argument("--task-steps", type=int, default=75,
                    help="end-to-end fine-tune steps of encoder + head on the task (0: head fit only)")
    ap.add_argument("--task-lr", type=float, default=5e-5)
    ap.add_argument("--tokens", type=int, default=1024, help="held-out tokens for SmolLM2 perplexity")
    ap.add_argument("--drop", type=int, nargs="+", default=[0, 2, 4, 6, 8])
    ap.add_argument("--out", default="transformer_prune")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    payload, claims = {"config": vars(args), "loadavg": {"before": os.getloadavg()}}, {}
    if args.part in ("all", "minilm"):
        rows, info = part_minilm(args)
        print_table(f"all-MiniLM-L6-v2, 50% heads + 50% FFN, batch {args.batch} x seq 128, 1 thread", rows)
        payload["minilm"] = {"rows": rows, **info}
        best = max(r["speedup"] for r in rows if r["model"].startswith("effml"))
        claims["minilm_speedup_1.8x"] = {"value": best, "target": 1.8, "holds": best >= 1.8}
    if args.part in ("all", "depth"):
        rows, info = part_depth(args)
        print_table("SmolLM2-135M depth pruning (no healing)", rows)
        payload["depth"] = {"rows": rows, **info}
    payload["loadavg"]["after"] = os.getloadavg()
    payload["claims"] = claims
    print(f"wrote {write_results(args.out, payload)}")
    return claims_exit_code(claims)


if __name__ == "__main__":
    sys.exit(main())
