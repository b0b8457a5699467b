"""Save and load compressed models as safetensors (no pickle: nothing runs on load).

    save_compressed(model, "m.safetensors", codes=freeze(model), info=result.to_dict())
    model = load_compressed("m.safetensors", build_the_same_architecture())

The file holds the float tensors of the model, integer codes in place of quantized weights, and JSON
metadata ("effml"): the structure that differs from a freshly built model (modules replaced by
`HeadPrunedAttention`, `WeightOnlyLinear`, a dynamic int8 Linear, or the nn.Linear that replaced an HF Conv1D;
head counts) plus how each quantized
weight is coded. A channel-pruned model needs no extra description: every tensor's shape is in the file,
and loading resizes the matching module (its in/out sizes follow its tensors). Linear/k-means codes are
stored one per byte (int8/uint8); `stored_bytes` in the results is the bit-packed size.
Static int8 FX models hold a traced graph, which safetensors cannot store: save the float model and its
calibration recipe instead (an error says so).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from effml.compress.weight_only import WeightOnlyLinear
from effml.compress.hf_layers import replace_module
from effml.compress.qlinear import QSpec, dequantize
from effml.compress.smooth import SmoothInt8Linear
from effml.compress.structured import resizer_for
from effml.compress.transformer import HeadPrunedAttention
from effml.errors import EffmlError

FORMAT = "effml-compressed/1"
HEAD_ATTRS = ("num_attention_heads", "all_head_size", "attention_head_size", "n_head", "head_dim")


class CheckpointError(EffmlError, RuntimeError):
    """A compressed checkpoint cannot be written or does not fit the model it is loaded into."""


def _dynamic_linear_type():
    return torch.ao.nn.quantized.dynamic.Linear


def _structure(model: nn.Module) -> dict:
    out: dict[str, dict] = {}
    for name, m in model.named_modules():
        entry: dict = {}
        if isinstance(m, HeadPrunedAttention):
            entry["class"] = {"type": "HeadPrunedAttention", "n_embd": m.qkv.in_features, "n_head": m.n_head,
                              "head_dim": m.head_dim, "bias": m.qkv.bias is not None, "dropout": m.dropout}
        elif isinstance(m, WeightOnlyLinear):
            entry["class"] = {"type": "WeightOnlyLinear", "in": m.in_features, "out": m.out_features, "bits": m.bits,
                              "group_size": m.spec.group_size or 128, "kernel": m.kernel, "bias": m.bias is not None}
        elif isinstance(m, SmoothInt8Linear):
            entry["class"] = {"type": "SmoothInt8Linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, _dynamic_linear_type()):
            per_channel = m.weight().qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            entry["class"] = {"type": "DynamicInt8Linear", "in": m.in_features, "out": m.out_features,
                              "per_channel": per_channel}
        elif isinstance(m, nn.Linear) and getattr(m, "converted_from", None) == "Conv1D":
            entry["class"] = {"type": "Linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
        attrs = {a: getattr(m, a) for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)}
        if attrs:
            entry["attrs"] = attrs
        if entry:
            out[name] = entry
    return out


def save_compressed(model: nn.Module, path: str | Path, codes: dict[str, dict] | None = None,
                    info: dict | None = None, specs: dict[str, QSpec] | None = None) -> Path:
    """Write model (+ the codes of its quantized weights, from `freeze`) to a safetensors file."""
    from safetensors.torch import save_file

    if isinstance(model, torch.fx.GraphModule):
        raise CheckpointError("a static int8 FX model holds a traced graph that safetensors cannot store; save the "
                              "float model and re-run quantize(model, StaticInt8Config(), calibration=...)")
    tensors, quant = {}, {}
    dyn = _dynamic_linear_type()
    for name, m in model.named_modules():
        if isinstance(m, dyn):
            w, b = m._weight_bias()
            tensors[f"{name}.weight.codes"] = w.int_repr().contiguous()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                tensors[f"{name}.weight.scale"] = w.q_per_channel_scales().contiguous()
                tensors[f"{name}.weight.zero"] = w.q_per_channel_zero_points().contiguous()
            else:
                tensors[f"{name}.weight.scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
                tensors[f"{name}.weight.zero"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            if b is not None:
                tensors[f"{name}.bias"] = b.detach().contiguous()
    dyn_prefixes = tuple(n + "." for n, m in model.named_modules() if isinstance(m, dyn))
    for key, t in model.state_dict().items():
        if key.startswith(dyn_prefixes) or not isinstance(t, torch.Tensor):
            continue  # dynamic int8 layers are written above as codes + scale
        tensors[key] = t.detach().contiguous()
    for name, c in (codes or {}).items():
        tensors.pop(f"{name}.weight", None)
        if c["kind"] == "KMeansQuant":
            for k in ("codebook", "index", "mask"):
                tensors[f"{name}.weight.{k}"] = c[k].contiguous()
            quant[name] = {"kind": "kmeans"}
        else:
            spec = (specs or {}).get(name) or c.get("spec")
            if spec is None:
                raise CheckpointError(f"linear codes of {name!r} need their QSpec (pass specs=...)")
            small = torch.int8 if spec.symmetric else torch.uint8
            tensors[f"{name}.weight.codes"] = c["codes"].to(small if spec.bits <= 8 else torch.int32).contiguous()
            tensors[f"{name}.weight.scale"] = c["scale"].contiguous()
            tensors[f"{name}.weight.zero"] = c["zero"].contiguous()
            quant[name] = {"kind": "linear", "bits": spec.bits, "symmetric": spec.symmetric,
                           "granularity": spec.granularity, "group_size": spec.group_size}
    tied, seen = {}, {}
    for key in list(tensors):  # a tied weight (GPT wte/lm_head) is stored once, the alias in the metadata
        ptr = (tensors[key].data_ptr(), tensors[key].shape, tensors[key].dtype)
        if tensors[key].numel() and ptr in seen:
            tied[key] = seen[ptr]
            del tensors[key]
        else:
            seen[ptr] = key
    meta = {"format": FORMAT, "structure": _structure(model), "quant": quant, "tied": tied, "info": info or {}}
    path = Path(path)
    save_file(tensors, str(path), metadata={"effml": json.dumps(meta, default=str)})
    return path


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("effml")
    if raw is None:
        raise CheckpointError(f"{path} is not an effml compressed checkpoint (no 'effml' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def _rebuild(model: nn.Module, name: str, cls: dict, tensors: dict) -> None:
    kind = cls["type"]
    if kind == "HeadPrunedAttention":
        replace_module(model, name, HeadPrunedAttention(cls["n_embd"], cls["n_head"], cls["head_dim"], cls["bias"],
                                                        cls["dropout"]))
    elif kind == "WeightOnlyLinear":
        lin = nn.Linear(cls["in"], cls["out"], bias=cls["bias"])
        replace_module(model, name, WeightOnlyLinear(lin, cls["bits"], cls["group_size"], cls["kernel"], name))
    elif kind == "DynamicInt8Linear":
        codes = tensors.pop(f"{name}.weight.codes")
        scale, zero = tensors.pop(f"{name}.weight.scale"), tensors.pop(f"{name}.weight.zero")
        if cls.get("per_channel"):  # one scale per output row
            qw = torch._make_per_channel_quantized_tensor(codes, scale.double(), zero.long(), 0)
        else:
            qw = torch._make_per_tensor_quantized_tensor(codes, float(scale[0]), int(zero[0]))
        q = _dynamic_linear_type()(cls["in"], cls["out"])
        q.set_weight_bias(qw, tensors.pop(f"{name}.bias", None))
        replace_module(model, name, q)
    elif kind == "SmoothInt8Linear":
        replace_module(model, name, SmoothInt8Linear.empty(cls["in"], cls["out"]))
    elif kind == "Linear":  # an nn.Linear that replaced transformers' Conv1D (same function, W transposed)
        lin = nn.Linear(cls["in"], cls["out"], bias=cls["bias"])
        lin.converted_from = "Conv1D"
        replace_module(model, name, lin)
    else:
        raise CheckpointError(f"{name}: unknown module class {kind!r} in the checkpoint")


@torch.no_grad()
def load_compressed(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a checkpoint into `model` (the same architecture, freshly built): resized, replaced, loaded."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    tensors = load_file(str(path))
    for alias, src in meta.get("tied", {}).items():
        tensors[alias] = tensors[src]
    for name, entry in meta["structure"].items():
        if "class" in entry:
            _rebuild(model, name, entry["class"], tensors)
    for name, q in meta["quant"].items():
        if q["kind"] == "kmeans":
            book, index, mask = (tensors.pop(f"{name}.weight.{k}") for k in ("codebook", "index", "mask"))
            tensors[f"{name}.weight"] = book[index.long()] * mask
        else:
            spec = QSpec(q["bits"], q["symmetric"], q["granularity"], q["group_size"])
            codes, scale, zero = (tensors.pop(f"{name}.weight.{k}") for k in ("codes", "scale", "zero"))
            tensors[f"{name}.weight"] = dequantize(codes.to(torch.int32), scale, zero, spec)
    own = model.state_dict()
    touched = set()
    for key, t in tensors.items():
        if key in own and own[key].shape != t.shape:  # a channel-pruned tensor: resize its module
            mod_name, _, pname = key.rpartition(".")
            mod = model.get_submodule(mod_name)
            old = getattr(mod, pname)
            new = torch.empty(t.shape, dtype=t.dtype)
            setattr(mod, pname, nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) else new)
            touched.add(mod_name)
    for mod_name in touched:
        fn = resizer_for(model.get_submodule(mod_name))
        if fn is not None:
            fn(model.get_submodule(mod_name))
    for name, entry in meta["structure"].items():
        for a, v in entry.get("attrs", {}).items():
            setattr(model.get_submodule(name), a, v)
    # dynamic int8 Linears were rebuilt with their codes already: set aside while the rest loads strictly
    dyn = {n: m for n, m in model.named_modules() if isinstance(m, _dynamic_linear_type())}
    for n in dyn:
        replace_module(model, n, nn.Identity())
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        for n, m in dyn.items():
            replace_module(model, n, m)
    return model.eval()

