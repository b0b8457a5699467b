"""Weight-only quantization: int8 (per-channel, symmetric) or int4 (per-group, min-max) codes, float activations.

Code layout (what `WeightOnlyLinear.from_codes` takes; GPTQ/AWQ results build their layers with it):

    codes: (out, in) integer tensor. int8: signed, in [-127, 127]; int4: unsigned, in [0, 15]
    scale: (out, groups) float, groups = 1 for int8 (one per output row), in / group_size for int4
    zero:  (out, groups) float. int8: all 0 (symmetric); int4: the code of w = 0 (any float: integer for GPTQ/AWQ
           zero points, fractional for the min-max groups `minmax_int4` makes)
    w[o, i] = (codes[o, i] - zero[o, g]) * scale[o, g],  g = i // group_size   (int8: g = 0)

Kernels (`kernel=`): "packed" runs the fastest integer kernels here: for int8 and up to 16 activation rows (a
decode step, a speculative verification) effml's own GEMV (effml.native: fp32 activations, each weight
read once at close to the memory bandwidth; 2-3x torch's kernel on SmolLM2's shapes), and otherwise torch's
weight-only CPU kernels, `torch._weight_int8pack_mm` and `aten._weight_int4pack_mm_for_cpu`; "torch" runs only
torch's kernels (the A/B reference); "dequant" dequantizes on every call and runs F.linear (a reference: slow);
"a8" runs every row through effml.native's gemv_a8 (AVX-512 VNNI or AVX2): the activations rounded to int8 per
block of 32 (as llama.cpp does for every quantized format), codes x activations as integer dot products (a
SmolLM2 int4 decode step 1.3-1.6x "packed"'s, a prefill ~3x torch's int4 kernel, measured here); "packed"
where the build has neither.
The packed kernels are fast only with bf16 activations: measured here on one thread (AMD EPYC, AVX-512 VNNI+BF16,
and the same machine restricted to AVX2 with ATEN_CPU_CAPABILITY=avx2), against an fp32 F.linear of the same
shape — int8: 2.5-3.3x with bf16 activations but 0.4x with fp32; int4 (g32): 4-6x with bf16, 0.2x with fp32
(AVX2: int8 2.1-3.9x, int4 2.8-3.1x with bf16). So `act_dtype="auto"` feeds bf16 wherever torch has a vectorized
kernel (CPU capability AVX2 or AVX512*) and, elsewhere, keeps the codes but says in the notes that the layer runs
the slow path. Scales, zero points and the int4 packing are prepared once (first call), never per call.

    layer = WeightOnlyLinear(nn.Linear(576, 1536), bits=4, group_size=32)
    layer = WeightOnlyLinear.from_codes(codes, scale, zero, bits=4, group_size=128, bias=None)
    model, names, notes = weight_only(model, bits=8, group_size=128, kernel="packed")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effml.compress.qlinear import QSpec, dequantize, qparams, quantize
from effml.errors import ConfigError
from effml.native import MAX_ROWS

WEIGHT_KERNELS = ("packed", "a8", "torch", "dequant")
INT_KERNELS = ("packed", "a8", "torch")  # the integer kernels (not "dequant")
ACT_DTYPES = ("auto", "fp32", "bf16")
FP16_TINY, FP16_MAX = 2.0 ** -14, 65504.0  # fp16's normal range: gemv_a8 stores int4 scales and zero terms in fp16
FAST_CAPABILITIES = ("AVX2", "AVX512", "AMX")  # prefixes of get_cpu_capability() with vectorized int8/int4 kernels


def cpu_capability() -> str:
    """torch's dispatch level on this CPU: 'AVX512', 'AVX2', 'DEFAULT', ... (what its kernels were built for)."""
    return torch.backends.cpu.get_cpu_capability()


def fast_act_dtype(capability: str | None = None) -> torch.dtype | None:
    """The activation dtype torch's weight-only kernels are fast with on this CPU, or None (no fast kernel)."""
    cap = (capability or cpu_capability()).upper()
    return torch.bfloat16 if cap.startswith(FAST_CAPABILITIES) else None


def minmax_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 over each group's own [min, max] (llama.cpp's Q4_1 layout: a float zero point, so a
    group that does not straddle 0 keeps all 16 levels). w (out, in) -> scale, zero (out, groups), codes (out, in).
    Weights that already are Q4_1 values on the same groups (the shipped SmolLM2 GGUF) come back exactly."""
    out, inp = w.shape
    g = w.reshape(out, inp // group_size, group_size)  # (out, groups, gs)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)  # (out, groups, 1)
    scale = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(hi))
    zero = -lo / scale  # the (fractional) code of w = 0
    codes = torch.clamp(torch.round((g - lo) / scale), 0, 15).to(torch.int32).reshape(out, inp)
    return scale[..., 0], zero[..., 0], codes


class WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W stored as int8 (per-channel) or int4 (per-group) codes (layout: module docstring)."""

    def __init__(self, lin: nn.Linear | None = None, bits: int = 8, group_size: int = 128, kernel: str = "packed",
                 name: str = "linear", act_dtype: str = "auto"):
        super().__init__()
        if lin is None:
            raise ConfigError(f"{name}: WeightOnlyLinear needs an nn.Linear (or use WeightOnlyLinear.from_codes)")
        w = lin.weight.detach().float()  # (out, in)
        spec = self._spec(bits, group_size, lin.in_features, kernel, act_dtype, name)
        if bits == 8:
            scale, zero = qparams(w, spec, name)  # (out, 1, 1); zero = 0
            codes = quantize(w, spec, scale, zero, name)  # (out, in) int32
        else:
            scale, zero, codes = minmax_int4(w, group_size)
        bias = None if lin.bias is None else lin.bias.detach()
        self._setup(codes, scale.reshape(lin.out_features, -1), zero.reshape(lin.out_features, -1), spec, bias,
                    kernel, act_dtype, name)

    # ---- construction -------------------------------------------------------------------------------------
    @staticmethod
    def _spec(bits, group_size, in_features, kernel, act_dtype, name) -> QSpec:
        if bits not in (4, 8):
            raise ConfigError(f"{name}: weight-only quantization supports 4 or 8 bits, got {bits}")
        if kernel not in WEIGHT_KERNELS:
            raise ConfigError(f"{name}: weight-only kernel {kernel!r} unknown; expected one of {WEIGHT_KERNELS}")
        if act_dtype not in ACT_DTYPES:
            raise ConfigError(f"{name}: act_dtype {act_dtype!r} unknown; expected one of {ACT_DTYPES}")
        if bits == 8:
            return QSpec(8, True, "channel")
        if not isinstance(group_size, int) or group_size <= 0 or in_features % group_size:
            raise ConfigError(f"{name}: in_features {in_features} is not a multiple of group_size {group_size}; "
                              f"pick a group size that divides it (32, 64, 128)")
        return QSpec(4, False, "group", group_size)

    def _setup(self, codes, scale, zero, spec: QSpec, bias, kernel: str, act_dtype: str, name: str) -> None:
        out, inp = codes.shape
        self.in_features, self.out_features, self.bits, self.spec, self.name = inp, out, spec.bits, spec, name
        self.register_buffer("codes", codes.to(torch.int8 if spec.bits == 8 else torch.uint8))  # (out, in)
        self.register_buffer("scale", scale.float().reshape(out, -1).contiguous())  # (out, groups)
        self.register_buffer("zero", zero.float().reshape(out, -1).contiguous())  # (out, groups)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.kernel, self.act_dtype_name = kernel, act_dtype
        self.note = ""
        if kernel in INT_KERNELS and spec.bits == 4 and (out % 16 or inp % 32):
            self.kernel = "dequant"
            self.note = "int4-shape"  # weight_only() lists these layers in one note
        fast = fast_act_dtype()
        if act_dtype == "auto":
            self.act_dtype = fast or torch.float32
            if fast is None and self.kernel in INT_KERNELS:
                self.note = (f"{name}: no vectorized int{spec.bits} weight-only kernel for CPU capability "
                             f"{cpu_capability()}: the packed kernel runs scalar (slower than fp32)")
        else:
            self.act_dtype = torch.bfloat16 if act_dtype == "bf16" else torch.float32
            if self.kernel in INT_KERNELS and self.act_dtype == torch.float32:
                self.note = (f"{name}: int{spec.bits} with fp32 activations runs torch's slow path (0.2-0.4x an "
                             f"fp32 F.linear here); act_dtype='auto' picks bf16")
        if self.kernel in INT_KERNELS and spec.bits == 8 and self.act_dtype == torch.bfloat16 and inp % 16:
            # torch 2.13's bf16 _weight_int8pack_mm segfaults (AVX-512 BF16 EPYC, seen here) when in_features % 16
            # and more than one row: (2, 300) x (100, 300) crashes, (2, 304) runs. Such layers take fp32 rows.
            self.act_dtype = torch.float32
            self.note = (f"{name}: in_features {inp} is not a multiple of 16, which torch's bf16 int8 kernel "
                         f"needs; fp32 activations (slower) for this layer")
        self._prepared = None  # (codes or int4 pack, scales in act dtype) built on the first call
        self._gemv = None  # (effml's compiled GEMV module, fp32 scales) for int8 "packed", loaded in _prepare
        self._a8 = None  # gemv_a8's arguments for kernel "a8" (an AVX-512 VNNI or AVX2 build), built in _prepare

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                   group_size: int = 128, bias: torch.Tensor | None = None, kernel: str = "packed",
                   act_dtype: str = "auto", name: str = "linear") -> WeightOnlyLinear:
        """A layer from codes already computed elsewhere (GPTQ, AWQ): the layout is the module docstring's."""
        if codes.ndim != 2:
            raise ConfigError(f"{name}: codes must be (out, in), got shape {tuple(codes.shape)}")
        out, inp = codes.shape
        spec = cls._spec(bits, group_size, inp, kernel, act_dtype, name)
        groups = 1 if bits == 8 else inp // group_size
        zero = torch.zeros(out, groups) if zero is None else zero
        for what, t in (("scale", scale), ("zero", zero)):
            if t.numel() != out * groups:
                raise ConfigError(f"{name}: {what} must have out x groups = {out} x {groups} entries, got "
                                  f"shape {tuple(t.shape)}")
        lo, hi = (-127, 127) if bits == 8 else (0, 15)
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise ConfigError(f"{name}: int{bits} codes must lie in [{lo}, {hi}], got [{int(codes.min())}, "
                              f"{int(codes.max())}]")
        if bits == 8 and bool((zero != 0).any()):
            raise ConfigError(f"{name}: int8 weight-only is symmetric (zero = 0); got non-zero zero points")
        if bias is not None and bias.shape != (out,):
            raise ConfigError(f"{name}: bias must have shape ({out},), got {tuple(bias.shape)}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(codes, scale.reshape(out, groups), zero.reshape(out, groups), spec, bias, kernel, act_dtype,
                    name)
        return self

    @classmethod
    def cat(cls, layers: list[WeightOnlyLinear], name: str = "fused") -> WeightOnlyLinear:
        """One layer computing [l(x) for l in layers] concatenated on the last axis (fused QKV, gate/up): exact."""
        a = layers[0]
        same = all(lay.bits == a.bits and lay.spec == a.spec and lay.in_features == a.in_features and
                   lay.kernel == a.kernel and lay.act_dtype == a.act_dtype and (lay.bias is None) == (a.bias is None)
                   for lay in layers)
        if not same:
            raise ConfigError(f"{name}: only weight-only layers with the same bits, groups, input width, kernel "
                              f"and bias presence can be fused")
        bias = None if a.bias is None else torch.cat([lay.bias for lay in layers])
        return cls.from_codes(torch.cat([lay.codes for lay in layers]), torch.cat([lay.scale for lay in layers]),
                              torch.cat([lay.zero for lay in layers]), a.bits, a.spec.group_size or 128, bias,
                              a.kernel, a.act_dtype_name, name)

    def use_kernel(self, kernel: str) -> WeightOnlyLinear:
        """Run the same codes on another kernel (e.g. "a8" vs "packed": the activation rounding's cost in quality);
        the packing is redone on the next call."""
        if kernel not in WEIGHT_KERNELS:
            raise ConfigError(f"{self.name}: weight-only kernel {kernel!r} unknown; expected one of {WEIGHT_KERNELS}")
        self.kernel = kernel
        self._prepared = self._gemv = self._a8 = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._prepared = self._gemv = self._a8 = None  # new codes: pack again on the next call

    # ---- compute ------------------------------------------------------------------------------------------
    def dequantized(self) -> torch.Tensor:
        return dequantize(self.codes.to(torch.int32), self.scale[..., None].float(), self.zero[..., None].float(),
                          self.spec)  # (out, in) fp32

    def native(self) -> bool:
        """Does this layer run effml's own fp32-activation GEMV for decode rows (int8, kernel "packed", or "a8"
        where gemv_a8 cannot take it, the module built)?"""
        if self.bits != 8 or self.kernel not in ("packed", "a8"):
            return False
        self._prepare()
        return self._gemv is not None

    def a8(self) -> tuple | None:
        """gemv_a8's arguments (ext, packed codes with their scales, group) when this layer runs effml's
        int8-activation kernel (kernel "a8", an AVX-512 VNNI or AVX2 build, out % 16 == 0, in % 32 == 0,
        group % 32 == 0)."""
        self._prepare()
        return self._a8

    def _prepare_a8(self, ext) -> None:
        group = self.in_features if self.bits == 8 else self.spec.group_size
        if not (ext.a8_isa() and self.out_features % 16 == 0 and self.in_features % 32 == 0 and group % 32 == 0):
            return
        scale = self.scale.float().contiguous()  # (out, groups)
        zterm = None if self.bits == 8 else (-self.scale.float() * self.zero.float()).contiguous()
        if zterm is not None and not (scale.min() >= FP16_TINY and scale.max() <= FP16_MAX
                                      and zterm.abs().max() <= FP16_MAX):  # gemv_a8 holds them in fp16
            self.note = (f"{self.name}: int4 scales in [{scale.min():.3g}, {scale.max():.3g}] (zero terms up to "
                         f"{zterm.abs().max():.3g}) are outside fp16's normal range, which gemv_a8 stores them in: "
                         "torch's int4 kernel runs this layer")
            return
        packed = ext.pack_a8(self.codes.contiguous(), self.bits, scale, zterm, group)  # int4: fp16 scale, zero term
        # in memory advised for 2 MiB pages (effml/native/tiles.cpp): the weight stream reads faster without a TLB
        # miss and a prefetcher restart every 4 KiB
        self._a8 = (ext, ext.huge(packed), group)

    def _prepare(self):
        if self._prepared is None:
            if self.kernel in ("packed", "a8"):
                from effml import native as gemv

                ext = gemv.load()  # compiled once per machine (about 35 s), then loaded from the cache
                if ext is not None and self.kernel == "a8":
                    self._prepare_a8(ext)
                if ext is not None and self.bits == 8 and self._a8 is None:
                    self._gemv = (ext, self.scale.reshape(-1).float().contiguous())
            if self._a8 is not None:  # gemv_a8 takes every row: torch's packing would be a second copy of the codes
                self._prepared = (None, None)
                return self._prepared
            dt = self.act_dtype
            if self.bits == 8:
                self._prepared = (self.codes.contiguous(), self.scale.reshape(-1).to(dt).contiguous())
            else:
                # kernel convention: w = (q - 8) * scale + z_float, so z_float = (8 - zero) * scale
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes.to(torch.int32), 2)
                zf = (8 - self.zero.float()) * self.scale.float()  # (out, groups)
                sz = torch.stack([self.scale.float(), zf], -1).transpose(0, 1).contiguous().to(dt)  # (groups, out, 2)
                self._prepared = (packed, sz)
        return self._prepared

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        if self.kernel == "dequant":
            return F.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        w, s = self._prepare()
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        if self._a8 is not None:  # every row count: up to 8 rows per pass, 3x torch's int4 kernel at a prefill here
            ext, packed, group = self._a8
            bias = None if self.bias is None else self.bias.float()
            y = ext.gemv_a8(x2.float().contiguous(), packed, self.bits, group, bias)  # (N, out) fp32
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        if self._gemv is not None and x2.shape[0] <= MAX_ROWS:
            ext, s32 = self._gemv
            bias = None if self.bias is None else self.bias.float()
            y = ext.gemv(x2.float().contiguous(), w, s32, bias)  # (N, out) fp32
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        if x2.dtype != self.act_dtype or not x2.is_contiguous():
            x2 = x2.to(self.act_dtype).contiguous()  # the kernels need contiguous rows of the activation dtype
        if self.bits == 8:
            y = torch._weight_int8pack_mm(x2, w, s)  # (N, out)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, w, self.spec.group_size, s)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)  # (..., out)

    def kernel_used(self) -> str:
        if self.kernel == "dequant":
            return "dequantize + F.linear"
        op = "torch._weight_int8pack_mm" if self.bits == 8 else "aten._weight_int4pack_mm_for_cpu"
        torch_op = f"{op} ({str(self.act_dtype).removeprefix('torch.')} activations, CPU {cpu_capability()})"
        if self.a8() is not None:
            scales = "fp16 group scales" if self.bits == 4 else "fp32 row scales"
            return (f"effml gemv_a8 ({self._a8[0].a8_isa()}, int{self.bits} codes with {scales} x activations rounded "
                    "to int8 per 32)")
        if self.native():
            from effml import native as gemv

            return f"{gemv.status()} for <= {MAX_ROWS} rows; {torch_op} above"
        return torch_op

    def storage_bits(self) -> int:
        groups = self.scale.numel()
        return self.codes.numel() * self.bits + groups * 32 * (1 if self.bits == 8 else 2) + \
            (0 if self.bias is None else self.bias.numel() * 32)

    def extra_repr(self) -> str:
        g = f", group_size={self.spec.group_size}" if self.bits == 4 else ""
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}{g}, kernel={self.kernel_used()}"


def weight_only(model: nn.Module, bits: int, group_size: int, kernel: str, skip: tuple[str, ...] = (),
                act_dtype: str = "auto") -> tuple[nn.Module, list[str], list[str]]:
    """Replace every nn.Linear (not in skip) by a WeightOnlyLinear, in place: (model, names, notes).

    int4 needs in_features to be a multiple of group_size: other layers stay fp32 and the notes name them. The
    notes also say which kernel runs (and which layers fall back to a slow path, and why).
    """
    names, left, slow = [], [], []
    made = []
    for n in [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip]:
        parent, _, attr = n.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        lin = getattr(owner, attr)
        if bits == 4 and lin.in_features % group_size:
            left.append(f"{n} (in_features {lin.in_features})")
            continue
        q = WeightOnlyLinear(lin, bits, group_size, kernel, n, act_dtype)
        setattr(owner, attr, q)
        names.append(n)
        made.append(q)
        if q.note:
            slow.append(q.note)
    notes = [f"left in fp32, in_features not a multiple of group_size={group_size}: {', '.join(left)}"] if left else []
    fast = sorted({q.kernel_used() for q in made if q.kernel in INT_KERNELS})
    if fast:
        notes.append(f"int{bits} kernel: {'; '.join(fast)}")
    if any(q.kernel in ("packed", "a8") and not q.native() and q.a8() is None for q in made if q.bits == 8):
        from effml import native as gemv

        notes.append(gemv.status())
    shape = [q.name for q in made if q.note == "int4-shape"]
    if shape:
        notes.append(f"int4 kernel needs out % 16 == 0 and in % 32 == 0; dequantize + fp32 GEMM for {', '.join(shape)}")
    slow = [s for s in slow if s != "int4-shape"]
    dequant = [q.name for q in made if q.kernel == "dequant" and not q.note]
    if dequant:
        notes.append(f"kernel='dequant' (reference, slow): dequantize + F.linear on every call for "
                     f"{', '.join(dequant)}")
    if slow:
        notes.append("slow path: " + "; ".join(slow))
    return model, names, notes


class TiedInt8Embedding(nn.Module):
    """An input embedding that reads its rows from the int8 LM head it is tied to (WeightOnlyLinear, bits=8): row i
    is codes[i] * scale[i], the head's own per-output-channel quantization, so the tied pair is stored once as
    (vocab x dim) int8 codes + vocab fp32 scales instead of one (vocab x dim) fp32 table."""

    def __init__(self, head: WeightOnlyLinear, emb: nn.Embedding):
        super().__init__()
        if head.bits != 8 or (head.out_features, head.in_features) != tuple(emb.weight.shape):
            raise ConfigError(f"{head.name}: a tied int8 embedding needs the int8 head of the embedding's shape "
                              f"{tuple(emb.weight.shape)}")
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self.padding_idx = emb.padding_idx
        self.dtype = emb.weight.dtype
        self.__dict__["head"] = head  # not a submodule: the head is registered where it sits; its codes are stored once

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids (...) int64 -> (..., dim)
        h = self.__dict__["head"]
        return (F.embedding(ids, h.codes).to(self.dtype) * F.embedding(ids, h.scale).to(self.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows of the tied head {self.__dict__['head'].name}"


def tie_int8(model: nn.Module, head_name: str, kernel: str = "packed", act_dtype: str = "auto") -> str | None:
    """Quantize a head tied to an input embedding to int8 and make the embedding read the same codes, in place.
    Returns the embedding's name, or None when `head_name` shares its weight with no nn.Embedding."""
    head = model.get_submodule(head_name)
    emb_name = next((n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.weight is head.weight),
                    None)
    if emb_name is None:
        return None
    emb = model.get_submodule(emb_name)
    from effml.compress.hf_layers import replace_module

    q = WeightOnlyLinear(head, 8, 128, kernel, head_name, act_dtype)
    replace_module(model, head_name, q)
    replace_module(model, emb_name, TiedInt8Embedding(q, emb))
    return emb_name
