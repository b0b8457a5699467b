"""The engine: fused projections are exact, every weight format decodes, the roofline counts the right bytes."""

import copy

import pytest
import torch

from effml import native as gemv
from effml.compress.weight_only import WeightOnlyLinear, fast_act_dtype, weight_only
from effml.errors import ConfigError
from effml.llm import fastpath
from effml.llm.engine import FormatConfig, prepare, to_format, weights_format
from effml.llm.generate import GenerateConfig, generate
from effml.llm.model import compute_dtype, fuse_projections
from effml.llm.roofline import decode_roofline, read_bandwidth, weight_bytes_per_token


def test_fusing_qkv_and_gate_up_is_exact_and_idempotent(model):
    m = copy.deepcopy(model)
    ids = torch.tensor([[5, 17, 42, 8, 64, 3]])
    with torch.no_grad():
        ref = m(ids)
        names = fuse_projections(m)
        assert len(names) == 2 * m.args.n_layers and fuse_projections(m) == []
        assert m.layers[0].attention.wqkv.weight.shape == (m.args.dim + 2 * m.args.n_kv_heads * m.args.head_dim,
                                                           m.args.dim)
        torch.testing.assert_close(m(ids), ref, atol=1e-5, rtol=1e-5)  # the same products, other kernel calls
    assert generate(m, [5, 17, 42], GenerateConfig(max_new_tokens=12)).tokens == \
        generate(model, [5, 17, 42], GenerateConfig(max_new_tokens=12)).tokens


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int4"])
def test_every_format_decodes_and_says_its_kernel(model, fmt):
    m = copy.deepcopy(model)
    notes = to_format(m, FormatConfig(fmt))
    plan = prepare(m)
    assert weights_format(m) == fmt and plan.format == fmt
    res = generate(m, [5, 17, 42], GenerateConfig(max_new_tokens=8, kv="paged"))
    assert len(res.tokens) == 8
    wol = [q for q in m.modules() if isinstance(q, WeightOnlyLinear)]
    if fmt in ("int8", "int4"):
        # each layer names its kernel: effml's gemv_a8 (VNNI CPUs, shapes of 16 rows x 32 inputs), else torch's op
        torch_op = "_weight_int8pack_mm" if fmt == "int8" else "_weight_int4pack_mm_for_cpu"
        for q in wol:
            op = "gemv_a8" if q.a8() is not None else torch_op if q.bits == int(fmt[3]) else "_weight_int8pack_mm"
            assert op in q.kernel_used() and any(op in k for k in plan.kernels) and any(op in n for n in notes)
        assert any(q.a8() is not None for q in wol) == bool(gemv.load() is not None and gemv.load().a8_isa())
        if fmt == "int4":  # the tiny head has 97 rows: not a multiple of 16 -> the int8 head; nothing is silent
            assert any("LM head" in n for n in notes)
    # effml's own kernels take fp32 activations; torch's int kernels want bf16
    native = fmt == "int8" and all(q.native() or q.a8() is not None for q in wol)
    # effml's fp32-activation kernels (where built) run every decode row: gemv_tiles for fp32/bf16 weights, the
    # int8 GEMV for int8 codes that gemv_a8 does not take (int4's 97-row int8 head)
    built = gemv.load() is not None
    assert any("effml gemv_tiles" in k for k in plan.kernels) == (built and fmt in ("fp32", "bf16"))
    assert any("effml native GEMV" in k for k in plan.kernels) == (built and any(q.native() for q in wol))
    # with effml's fused decode ops the step stays fp32 (bf16 weights are widened in the GEMV; int4 projections
    # convert their rows inside the call); without them, bf16 where the CPU has bf16 arithmetic
    fused = fastpath.available()
    assert m.fast_decode == fused
    assert compute_dtype(m) == (torch.float32 if fused or fmt == "fp32" or native or
                                (fmt != "bf16" and not plan.native_bf16) else torch.bfloat16)


def test_compressed_models_from_effml_compress_run_in_generate(model):
    """Issue 14: int8 weight-only and dynamic int8 used to crash in generate (they have no .weight tensor)."""
    m = copy.deepcopy(model)
    weight_only(m, 8, 128, "packed")
    assert len(generate(m, [1, 2, 3], GenerateConfig(max_new_tokens=4)).tokens) == 4
    d = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    assert len(generate(d, [1, 2, 3], GenerateConfig(max_new_tokens=4)).tokens) == 4
    assert weights_format(d) == "int8-dynamic"


def test_roofline_counts_stored_bytes(model):
    a = model.args
    # fp32, tied head: every parameter once, 4 bytes each (the table is read whole as the head)
    assert weight_bytes_per_token(model) == a.params() * 4
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("int8"))
    act = torch.empty(0, dtype=fast_act_dtype() or torch.float32).element_size()
    linears = [(q.out_features, q.in_features, q.a8() is not None) for q in m.modules() if hasattr(q, "codes")]
    # int8: a byte per weight + one scale per output row (fp32 in gemv_a8's packing, else in the activation
    # dtype); the embedding: one row; the 2 norms per layer + the final norm in fp32
    expect = sum(o * i + o * (4 if a8 else act) for o, i, a8 in linears) + a.dim * 4 + (2 * a.n_layers + 1) * a.dim * 4
    assert weight_bytes_per_token(m) == expect
    m4 = copy.deepcopy(model)
    to_format(m4, FormatConfig("int4", group_size=32))
    linears = [(q.out_features, q.in_features, q.bits, q.a8() is not None) for q in m4.modules() if hasattr(q, "codes")]
    assert {b for *_, b, _ in linears} == {4, 8}  # int4 projections, the int8 head
    # int4 g32: half a byte per weight + per group of 32 a scale and a zero term, 2 bytes each (fp16 in gemv_a8's
    # packing; torch's kernel reads them in the activation dtype); the int8 head as above
    expect = sum(o * i // 2 + o * i // 32 * 2 * (2 if a8 else act) if b == 4 else o * i + o * (4 if a8 else act)
                 for o, i, b, a8 in linears) + a.dim * 4 + (2 * a.n_layers + 1) * a.dim * 4
    assert weight_bytes_per_token(m4) == expect
    r = decode_roofline(model, tokens_per_s=10.0, context=100, bandwidth=1e9)
    kv = 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4 * 100
    assert r.kv_bytes == kv and r.bound_tokens_per_s == pytest.approx(1e9 / (a.params() * 4 + kv))
    assert r.fraction == pytest.approx(10.0 / r.bound_tokens_per_s)
    assert read_bandwidth(mib=64, repeats=1) > 1e8  # any machine reads faster than 100 MB/s
    from effml.llm import roofline

    key = (64, torch.get_num_threads())
    roofline._BW_CACHE[key] = 1.0  # a cached reading no machine gives: returned as cached, replaced when fresh
    assert read_bandwidth(mib=64, repeats=1) == 1.0 and read_bandwidth(mib=64, repeats=1, fresh=True) > 1e8
    with pytest.raises(ConfigError, match="context and tokens_per_s must be >= 0"):
        decode_roofline(model, -1, 10)


def test_format_config_is_validated():
    with pytest.raises(ConfigError, match="weight format 'int3' unknown"):
        FormatConfig("int3")
    with pytest.raises(ConfigError, match="group_size must be 32, 64, 128 or 256"):
        FormatConfig("int4", group_size=48)


def test_a_prepared_float_model_holds_its_projections_once(model):
    """gemv_tiles' packed copy serves every row count, so the row-major weights go (the model's memory once, not
    twice); a head tied to the embedding keeps its tensor (the embedding reads it), and the logits stay."""
    from effml.llm.engine import PackedLinear

    m = copy.deepcopy(model)
    prepare(m)
    packed = [p for p in m.modules() if isinstance(p, PackedLinear)]
    if not any(p._tiles is not None for p in packed):
        pytest.skip("effml's kernels are not built here: the library paths read the row-major weights")
    assert m.output.weight is m.tok_embeddings.weight  # tied (the tiny preset): kept
    assert all(p.weight is None for p in packed if p is not m.output)
    ids = [5, 17, 42, 7]
    assert generate(m, ids, GenerateConfig(max_new_tokens=6)).tokens == \
        generate(model, ids, GenerateConfig(max_new_tokens=6)).tokens


def test_without_effml_kernels_prepare_keeps_the_weights_the_roofline_counts(model, monkeypatch):
    """Without effml's kernels the library packings (oneDNN, MKL) are opaque copies: the row-major weights stay,
    and the roofline counts them as for the unprepared model (it crashed on a released weight before)."""
    from effml.llm.engine import PackedLinear

    monkeypatch.setattr(gemv, "load", lambda: None)
    m = copy.deepcopy(model)
    prepare(m)
    assert all(p.weight is not None for p in m.modules() if isinstance(p, PackedLinear))
    assert weight_bytes_per_token(m) == model.args.params() * 4  # fp32, tied head: every parameter once


def test_converting_a_prepared_model_is_refused_not_silently_skipped(model):
    """prepare() packs fp32 projections into PackedLinear, which weight quantization does not see: to_format on
    it used to return no notes and leave every layer fp32. Now it (and a self-int4 draft of it) names the order."""
    from effml.llm.registry import LoadedModel, load_draft

    m = copy.deepcopy(model)
    prepare(m)
    with pytest.raises(ConfigError, match=r"to_format needs a model engine.prepare has not run on .* then prepare"):
        to_format(m, FormatConfig("int4"))
    assert weights_format(m) == "fp32"
    with pytest.raises(ConfigError, match=r"draft 'self-int4' \(a quantized copy of the target\) needs a model"):
        load_draft("self-int4", LoadedModel("tiny", m, None))
    fresh = copy.deepcopy(model)  # the order that works: convert, then prepare
    to_format(fresh, FormatConfig("int4"))
    prepare(fresh)
    assert weights_format(fresh) == "int4"


@pytest.mark.parametrize("dtype,kind", [(torch.float32, "mkl"), (torch.float32, "mkldnn"),
                                        (torch.bfloat16, "mkldnn")])
def test_packed_linear_equals_f_linear(dtype, kind):
    from effml.llm.engine import PackedLinear, native_bf16

    if dtype == torch.bfloat16 and not (native_bf16() and torch.backends.mkldnn.is_available()):
        pytest.skip("oneDNN bf16 packing is used only on CPUs with bf16 arithmetic")
    if not (torch.backends.mkl if kind == "mkl" else torch.backends.mkldnn).is_available():
        pytest.skip(f"no {kind} in this torch build")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=True).to(dtype)
    try:
        packs = (PackedLinear(lin, kind), PackedLinear(lin, kind, gemv.load()))  # library kernels; + effml's GEMV
    except RuntimeError as e:  # oneDNN held below its bf16 ISA (ONEDNN_MAX_CPU_ISA=AVX2): pack_linears' fallback
        pytest.skip(f"{kind} refuses this packing here: {str(e).splitlines()[0]}")
    for p in packs:
        for x in (torch.randn(1, 64, dtype=dtype), torch.randn(2, 9, 64, dtype=dtype)):  # a decode row, a prefill
            tol = 1e-5 if dtype == torch.float32 else 2e-2  # fp32: summation order; bf16: output rounding 2^-8
            torch.testing.assert_close(p(x), lin(x), atol=tol, rtol=tol)


def test_fp32_prefill_kernel_follows_the_cpu(monkeypatch):
    """fp32 prefills: effml's gemv_tiles for every row count where its kernels load (no library copy of the weight);
    without them oneDNN's packed matmul on AVX-512 (measured faster there), MKL's on tall layers elsewhere."""
    import effml.llm.engine as engine

    if not (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available()):
        pytest.skip("needs both MKL and oneDNN in the torch build")
    if gemv.load() is not None:
        m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 32))
        w = m[0].weight.detach().clone()
        engine.pack_linears(m)
        assert all(p.kind == "plain" and p.packed is None for p in m)
        assert all(p.weight is None for p in m)  # nothing reads the row-major copy now: released, not kept twice
        x = torch.randn(40, 32)  # a prefill's rows: gemv_tiles' sums, not a library matmul's
        ref = x.double() @ w.double().T + m[0].bias.double()
        assert torch.allclose(m[0](x).double(), ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(gemv, "load", lambda: None)
    for cap, tall, wide in (("AVX512", "mkldnn", "mkldnn"), ("AVX2", "mkl", None)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=cap: c)
        m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 8))
        engine.pack_linears(m)
        assert (m[0].kind, getattr(m[1], "kind", None)) == (tall, wide), cap


def test_a_refused_library_packing_falls_back_to_gemv_tiles_and_says_so(model, monkeypatch):
    """oneDNN may refuse a bf16 packing the CPU flags promised (ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU:
    "bf16 path needs the cpu support avx_ne_convert or avx512bw..."). With effml's kernels the fused step feeds fp32
    rows, so a bare bf16 nn.Linear left behind would fail on the first prompt: gemv_tiles takes every row count,
    and the plan names the failure once for all layers."""
    import effml.llm.engine as engine

    if gemv.load() is None:
        pytest.skip(f"needs effml's kernels: {gemv.status()}")

    class Refused(engine.PackedLinear):
        def __init__(self, lin, kind, g=None):
            if kind != "plain":
                raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx512bw")
            super().__init__(lin, kind, g)

    monkeypatch.setattr(engine, "native_bf16", lambda: True)
    monkeypatch.setattr(engine, "PackedLinear", Refused)
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("bf16"))
    plan = prepare(m)
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert not linears and all(p.kind == "plain" for p in m.modules() if isinstance(p, Refused))
    failed = [n for n in plan.notes if n.startswith("packing for mkldnn failed")]
    assert len(failed) == 1 and "gemv_tiles takes every row count" in failed[0] and "avx512bw" in failed[0]
    # the engine a CPU without bf16 arithmetic gets (gemv_tiles for every row count): the same bits, on a 37-token
    # prompt (> 16 rows: the rows that went to oneDNN) and in generation
    monkeypatch.setattr(engine, "native_bf16", lambda: False)
    ref = copy.deepcopy(model)
    to_format(ref, FormatConfig("bf16"))
    prepare(ref)
    prompt = list(range(3, 40))
    with torch.no_grad():
        assert torch.equal(m(torch.tensor([prompt])), ref(torch.tensor([prompt])))
    cfg = GenerateConfig(max_new_tokens=4)
    assert generate(m, prompt, cfg).tokens == generate(ref, prompt, cfg).tokens


def test_without_bf16_arithmetic_int4_keeps_fp32_activations_and_says_so(model, monkeypatch):
    """An AVX2-only CPU (no avx512_bf16, no AMX): the step stays fp32, each quantized projection converts."""
    import effml.llm.engine as engine

    monkeypatch.setattr(engine, "native_bf16", lambda: False)
    monkeypatch.setattr(gemv, "load", lambda: None)  # and no compiler: torch's kernels, the generic step, the note
    m = copy.deepcopy(model)
    to_format(m, FormatConfig("int4"))
    plan = prepare(m)
    assert plan.act_dtype == "float32" and compute_dtype(m) == torch.float32
    assert any("activations stay fp32" in n and "no bf16 arithmetic" in n for n in plan.notes)
    assert len(generate(m, [4, 5, 6], GenerateConfig(max_new_tokens=4)).tokens) == 4
    b = copy.deepcopy(model)
    notes = to_format(b, FormatConfig("bf16"))
    assert any("emulated" in n for n in notes) and any("emulated" in n for n in prepare(b).notes)
