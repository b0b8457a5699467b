"""`effml prune` / `effml quantize` build one per-method config from the flags; a flag the chosen method does not
take is refused in one stderr line naming the flag and the method (never silently ignored)."""

import pytest

from effml.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("argv, message", [
    (["prune", "--model", "effml.zoo:mlp", "--kind", "fine", "--nm", "2:4"], "--nm does not apply to --kind fine"),
    (["prune", "--model", "effml.zoo:mlp", "--kind", "n:m", "--sparsity", "0.5"],
     "--sparsity does not apply to --kind n:m"),
    (["prune", "--model", "effml.zoo:mlp", "--kind", "channel", "--scope", "layer"],
     "--scope does not apply to --kind channel"),
    (["prune", "--model", "effml.zoo:mlp", "--kind", "fine", "--criterion", "taylor"],
     "--criterion does not apply to --kind fine"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "int8-static", "--per-tensor"],
     "--per-tensor does not apply to --method int8-static"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "linear", "--smooth", "0.5"],
     "--smooth does not apply to --method linear"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "int8-dynamic", "--bits", "4"],
     "--bits does not apply to --method int8-dynamic"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "weight-only", "--group-size", "64"],
     "WeightOnlyConfig.group_size applies to bits=4 only"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "int8-dynamic", "--calibration", "64"],
     "--calibration applies to --method int8-static or --smooth"),
    (["quantize", "--model", "effml.zoo:mlp", "--method", "kmeans", "--finetune-epochs", "1", "--data", "digits"],
     "--finetune-epochs does not apply to effml quantize: use --qat-epochs"),
])
def test_flags_that_do_not_apply_are_refused(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_weight_only_int4_from_flags(capsys):
    import json

    rc = main(["quantize", "--model", "effml.zoo:mlp", "--method", "weight-only", "--bits", "4", "--group-size", "50",
               "--hw", "none", "--no-measure", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"] == {"method": "weight-only", "bits": 4, "group_size": 50, "kernel": "packed", "act_dtype": "auto", "layers": None,
                           "tied": "keep",
                           "exclude": []}
    # mlp: 784 -> 300 -> 100 -> 10; groups of 50 divide 300 and 100, not 784: layer "1" is listed, with the reason
    assert d["skipped"] == [["1", "weight-only: in_features 784 is not a multiple of group_size 50"]]
    assert d["result"]["layers"] == ["3", "5"]


def test_weight_only_a8_kernel_from_flags(capsys):
    """--kernel a8 on GPT-2 (config-built): its 48 Conv1D layers (768/3072 wide: 16-row tiles, groups of 64) run
    effml's gemv_a8 where the build has a vector ISA for it (AVX-512 VNNI, AVX2), and the notes say which; the
    exact kernels elsewhere."""
    import json

    from effml import native

    pytest.importorskip("transformers")
    rc = main(["quantize", "--config", "gpt2", "--seq", "8", "--method", "weight-only", "--bits", "4",
               "--group-size", "64", "--kernel", "a8", "--hw", "none", "--no-measure", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["kernel"] == "a8" and len(d["result"]["layers"]) == 48
    ext = native.load()
    isa = ext.a8_isa() if ext is not None else ""
    assert any(f"gemv_a8 ({isa}" in n for n in d["result"]["notes"]) == bool(isa)


def test_tied_head_quantized_when_named_on_the_command_line(capsys):
    """Without --layers the tied GPT-2 head is listed, with its reason (tests/compress/test_configs.py); naming it
    quantizes it, and every other layer is then listed as not in the config's layers."""
    import json

    pytest.importorskip("transformers")
    assert main(["quantize", "--config", "gpt2", "--seq", "8", "--method", "int8-dynamic", "--layers", "lm_head",
                 "--hw", "none", "--no-measure", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["result"]["layers"] == ["lm_head"] and d["config"]["layers"] == ["lm_head"]
    # GPT-2 (124M): 12 blocks x 4 Conv1D projections, each listed as left alone
    assert len(d["skipped"]) == 48 and all(why.endswith("not in the config's layers") for _, why in d["skipped"])
