"""The channel dependency graph of a CNN/MLP, from an FX trace with shapes.

Every tensor in the traced graph gets a channel *space*: the dimension that holds channels (1 for
(B, C, H, W), the last for (B, ..., F)) and the block of indices per channel (H*W after a flatten). A conv
or linear starts a new space (its output channels) and consumes its input's space; BatchNorm, activations,
pooling, dropout and a depthwise conv carry the space through; an elementwise add/mul of two tensors joins
their spaces (union-find), which is how residual connections end up in one group. Anything the graph does
not understand (cat, a reshape that is not a flatten, LayerNorm, a grouped conv, an op on a parameter)
*freezes* the spaces it touches: they are never pruned. The model input and output spaces are frozen too.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from effml.compress.structured import Group, Member
from effml.errors import ConfigError, ModelError

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                nn.Tanh, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.hardswish, F.dropout, torch.relu, torch.sigmoid,
                  torch.tanh, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float"}
JOIN_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
JOIN_METHODS = {"add", "add_", "sub", "mul", "mul_"}
REDUCE = {torch.mean, torch.sum, torch.amax}
REDUCE_METHODS = {"mean", "sum", "amax"}


class _Spaces:
    """Union-find over channel spaces, each with a size and a frozen flag."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[bool] = []

    def new(self, size: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.frozen.append(frozen)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.frozen[ra] = self.frozen[ra] or self.frozen[rb] or self.size[ra] != self.size[rb]

    def freeze(self, s: int) -> None:
        self.frozen[self.find(s)] = True


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Builder:
    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.model, self.gm = model, gm
        self.modules = dict(model.named_modules())
        self.sp = _Spaces()
        self.info: dict[fx.Node, tuple[int, int, int]] = {}  # node -> (space, channel dim, block)
        self.members: dict[int, list[Member]] = {}  # space -> members (resolved to roots at the end)
        self.kinds: dict[int, str] = {}

    def add(self, space: int, member: Member) -> None:
        self.members.setdefault(space, []).append(member)

    def freeze_inputs(self, node: fx.Node) -> None:
        for a in node.all_input_nodes:
            if a in self.info:
                self.sp.freeze(self.info[a][0])

    def fresh(self, node: fx.Node, frozen: bool = True) -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.info[node] = (self.sp.new(shape[1], frozen), 1, 1)

    def through(self, node: fx.Node, src: fx.Node) -> None:
        if src in self.info:
            s, d, b = self.info[src]
            out = _shape(node)
            if out is None or len(out) <= d or out[d] != self.sp.size[s] * b:
                self.sp.freeze(s)
                return self.fresh(node)
            self.info[node] = (s, d, b)

    def run(self) -> list[Group]:
        for node in self.gm.graph.nodes:
            getattr(self, f"_{node.op}")(node)
        groups = {}
        for s, mems in self.members.items():
            root = self.sp.find(s)
            groups.setdefault(root, []).extend(mems)
        out = []
        for root, mems in groups.items():
            if self.sp.frozen[root] or not any(m.role == "out" for m in mems):
                continue
            first = next(m for m in mems if m.role == "out")
            out.append(Group(first.module, self.kinds.get(root, "conv"), self.sp.size[root], mems))
        return sorted(out, key=lambda g: list(self.modules).index(g.name))

    # ---- node kinds ----------------------------------------------------------------------------------
    def _placeholder(self, node):
        self.fresh(node, frozen=True)

    def _get_attr(self, node):
        self.fresh(node, frozen=True)

    def _output(self, node):
        self.freeze_inputs(node)

    def _call_module(self, node):
        m = self.modules[node.target]
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self._conv(node, node.target, m, src)
        if isinstance(m, nn.Linear):
            return self._linear(node, node.target, m, src)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and src in self.info:
            s, d, b = self.info[src]
            if d != 1 or b != 1:
                return self._unknown(node)
            for p in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, p, None) is not None:
                    self.add(s, Member(node.target, p, 0, "through"))
            return self.through(node, src)
        if isinstance(m, PASS_MODULES) and src is not None:
            return self.through(node, src)
        if isinstance(m, nn.Flatten) and src is not None:
            return self._flatten(node, src, m.start_dim, m.end_dim)
        return self._unknown(node)

    def _conv(self, node, name, m, src):
        s, d, b = self.info.get(src, (None, 1, 1))
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels and s is not None and b == 1:
            self.add(s, Member(name, "weight", 0, "through"))
            if m.bias is not None:
                self.add(s, Member(name, "bias", 0, "through"))
            return self.through(node, src)
        if m.groups > 1 or s is None or d != 1 or b != 1:
            self.freeze_inputs(node)
            return self.fresh(node)
        self.add(s, Member(name, "weight", 1, "in"))
        out = self.sp.new(m.out_channels)
        self.kinds[out] = "conv"
        self.add(out, Member(name, "weight", 0, "out"))
        if m.bias is not None:
            self.add(out, Member(name, "bias", 0, "out"))
        self.info[node] = (out, 1, 1)

    def _linear(self, node, name, m, src):
        shape_in = _shape(src)
        s, d, b = self.info.get(src, (None, -1, 1))
        if s is None or shape_in is None or d != len(shape_in) - 1:
            self.freeze_inputs(node)
        else:
            self.add(s, Member(name, "weight", 1, "in", block=b))
        out = self.sp.new(m.out_features)
        self.kinds[out] = "linear"
        self.add(out, Member(name, "weight", 0, "out"))
        if m.bias is not None:
            self.add(out, Member(name, "bias", 0, "out"))
        shape = _shape(node)
        self.info[node] = (out, len(shape) - 1 if shape else 1, 1)

    def _flatten(self, node, src, start, end):
        shape_in, shape_out = _shape(src), _shape(node)
        if src not in self.info or shape_in is None or shape_out is None:
            return self._unknown(node)
        s, d, b = self.info[src]
        end = end % len(shape_in)
        if start != 1 or end != len(shape_in) - 1 or d != 1 or len(shape_out) != 2:
            return self._unknown(node)
        spatial = 1
        for n in shape_in[2:]:
            spatial *= n
        self.info[node] = (s, 1, b * spatial)

    def _unknown(self, node):
        self.freeze_inputs(node)
        self.fresh(node)

    def _call_function(self, node):
        t = node.target
        tensors = [a for a in node.args if isinstance(a, fx.Node) and a in self.info]
        if t in JOIN_FUNCTIONS:
            return self._join(node, tensors)
        if t in PASS_FUNCTIONS and tensors:
            return self.through(node, node.args[0])
        if t is torch.flatten and tensors:
            return self._flatten(node, node.args[0], *(list(node.args[1:]) + [0, -1][len(node.args) - 1:]))
        if t in REDUCE and tensors:
            return self._reduce(node, node.args[0])
        if t in (getattr, operator.getitem) and not tensors:
            return None
        return self._unknown(node)

    def _call_method(self, node):
        name = node.target
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        tensors = [a for a in node.args if isinstance(a, fx.Node) and a in self.info]
        if name in JOIN_METHODS:
            return self._join(node, tensors)
        if name in PASS_METHODS and src is not None:
            return self.through(node, src)
        if name in REDUCE_METHODS and src is not None:
            return self._reduce(node, src)
        if name in ("view", "reshape", "flatten") and src is not None:
            shape_in, shape_out = _shape(src), _shape(node)
            if shape_in and shape_out and len(shape_out) == 2 and shape_out[0] == shape_in[0]:
                return self._flatten(node, src, 1, -1)
        if name == "size":
            return None
        return self._unknown(node)

    def _join(self, node, tensors):
        if not tensors:
            return self._unknown(node)
        shapes = {_shape(a) for a in tensors}
        first = self.info[tensors[0]]
        if len(shapes) != 1 or any(self.info[a][1:] != first[1:] for a in tensors):
            return self._unknown(node)
        for a in tensors[1:]:
            self.sp.union(first[0], self.info[a][0])
        other = [a for a in node.args if isinstance(a, fx.Node) and a not in self.info]
        for a in other:  # a tensor we know nothing about (a parameter, a mask): freeze
            self.sp.freeze(first[0])
        self.info[node] = first

    def _reduce(self, node, src):
        if src not in self.info:
            return self._unknown(node)
        s, d, b = self.info[src]
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        shape_in = _shape(src)
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is None or shape_in is None or d in {x % len(shape_in) for x in dims}:
            return self._unknown(node)
        if any(x % len(shape_in) < d for x in dims):
            return self._unknown(node)
        self.info[node] = (s, d, b)  # the reduced dims are after the channel dim, which stays at d


def trace_groups(model: nn.Module, example_inputs: tuple) -> list[Group]:
    """Channel groups of an FX-traceable model, run once on `example_inputs` for the shapes."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - FX raises many types
        raise ModelError(f"channel pruning could not trace {type(model).__name__} with torch.fx "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); supported: FX-traceable "
                         "CNNs/MLPs, HF BERT-style encoders and the effml GPT") from None
    if not example_inputs:
        raise ConfigError("channel pruning of a CNN/MLP needs example inputs (or data) to trace shapes")
    was = model.training
    model.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    model.train(was)
    return _Builder(model, gm).run()
