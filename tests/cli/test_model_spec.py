"""One --model grammar in every command: a registry NAME or package.module:callable, plus --set KEY=VALUE
constructor arguments; bad specs list the known names; a builder that raises is named by flag and spec."""

import json

import pytest

from effml.cli import main
from effml.errors import ConfigError, ModelError
from effml.models import known_models, load_llm, model_builder, resolve


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_registry_name_and_its_callable_build_the_same_model():
    by_name = resolve(model="lenet5")
    by_path = resolve(model="effml.zoo:lenet5")
    assert (by_name.name, by_name.source) == ("lenet5", "zoo:lenet5")
    assert by_path.source == "callable:effml.zoo:lenet5"
    n = sum(p.numel() for p in by_name.model.parameters())
    assert n == sum(p.numel() for p in by_path.model.parameters()) == 61_706  # LeNet-5, the zoo docstring
    # seeded before building: the same spec gives the same initial weights
    assert all((a == b).all() for a, b in zip(by_name.model.parameters(), by_path.model.parameters()))


def test_constructor_args_reach_the_builder():
    spec = resolve(model="cli_user_models:small_net", input_shape=(2, 8), model_args=(("width", 5),))
    # Linear(8, 5) + Linear(5, 3): 8*5 + 5 + 5*3 + 3 = 63
    assert sum(p.numel() for p in spec.model.parameters()) == 63
    assert spec.name == "small_net" and spec.source == "callable:cli_user_models:small_net"


@pytest.mark.parametrize("args, text", [
    ({"width": 0}, "--set width=0 for --model cli_user_models:small_net: must be > 0 (the default is 4)"),
    ({"width": -3}, "--set width=-3 for --model cli_user_models:small_net: must be > 0"),
    ({"width": 2.5}, "--set width=2.5 for --model cli_user_models:small_net: must be an integer"),
    ({"width": "wide"}, "--set width='wide' for --model cli_user_models:small_net: must be a number"),
    ({"width": float("nan")}, "--set width=nan for --model cli_user_models:small_net: must be a finite number"),
    ({"depth": 3}, "--set depth=3 for --model cli_user_models:small_net: the builder takes no 'depth' "
                   "(it takes width, classes)"),
])
def test_bad_constructor_args_name_the_field(args, text):
    with pytest.raises(ConfigError) as e:
        model_builder("cli_user_models:small_net")(**args)
    assert str(e.value).startswith(text)


def test_a_config_name_given_as_model_points_to_config(capsys):
    err = one_line_error(capsys, ["profile", "--model", "llama-2-7b"])
    assert "--model 'llama-2-7b' is not a known zoo model name; 'llama-2-7b' is a bundled model config: use " \
           "--config llama-2-7b" in err


def test_set_does_not_apply_to_a_config():
    with pytest.raises(ConfigError, match="--set does not apply to --config 'gpt2'"):
        resolve(config="gpt2", model_args=(("width", 2),))


def test_unknown_name_lists_the_registry():
    with pytest.raises(ConfigError) as e:
        model_builder("lenet6")
    msg = str(e.value)
    assert msg.startswith("--model 'lenet6' is not a known zoo model name; did you mean lenet5")
    assert "known: lenet5, mlp, resnet, tiny_gpt, vgg" in msg and "package.module:callable" in msg
    assert known_models("llm")[:2] == ["smollm2-135m", "tiny"]
    with pytest.raises(ConfigError, match="--model 'gpt-9' is not a known LLM name"):
        load_llm("gpt-9")


def test_a_raising_builder_is_named_by_flag_and_spec():
    with pytest.raises(ModelError) as e:
        resolve(model="cli_user_models:broken_builder", input_shape=(1, 8))
    assert str(e.value) == "--model cli_user_models:broken_builder raised ValueError: no weights here"
    # an effml error inside a builder keeps its kind and says which model it came from
    with pytest.raises(ConfigError, match=r"^--model tiny_gpt: GPTConfig.n_embd=130 is not divisible by n_head=4"):
        model_builder("tiny_gpt")(n_embd=130)


def test_llm_spec_must_return_a_loaded_model():
    lm = load_llm("tiny")
    assert lm.name == "tiny" and lm.tokenizer.vocab_size > 0
    with pytest.raises(ConfigError, match="--model cli_user_models:small_net returned a Sequential; an LLM spec"):
        load_llm("cli_user_models:small_net")


RAISING = "cli_user_models:broken_builder"


@pytest.mark.parametrize("argv", [
    ["profile", "--model", RAISING, "--input-shape", "1,8"],
    ["predict", "--model", RAISING, "--input-shape", "1,8", "--hw", "h100"],
    ["train-mem", "--model", RAISING, "--input-shape", "1,8"],
    ["bench", "--model", RAISING, "--input-shape", "1,8", "--budget", "0.05"],
    ["prune", "--model", RAISING, "--input-shape", "1,8", "--hw", "none", "--no-measure"],
    ["quantize", "--model", RAISING, "--input-shape", "1,8", "--hw", "none", "--no-measure"],
    ["generate", "--model", RAISING, "--prompt", "hi"],
    ["serve-bench", "--model", RAISING],
])
def test_every_command_names_a_raising_builder(capsys, argv):
    err = one_line_error(capsys, argv)
    assert err == f"effml {argv[0]}: error: --model {RAISING} raised ValueError: no weights here"


def test_study_names_a_raising_builder_before_writing_anything(tmp_path, capsys):
    store, out = tmp_path / "s.db", tmp_path / "r.html"
    err = one_line_error(capsys, ["study", "--model", RAISING, "--store", str(store), "--out", str(out)])
    assert err.endswith(f"--model {RAISING} raised ValueError: no weights here")
    assert list(tmp_path.iterdir()) == []  # no store, no report


@pytest.mark.parametrize("argv, text", [
    (["profile", "--model", "lenet5", "--set", "width=0"], "--set width=0 for --model lenet5: must be > 0"),
    (["profile", "--model", "mlp", "--set", "hidden=(64,0)"], "--set hidden=(64, 0) for --model mlp: must be a tuple"),
    (["predict", "--model", "vgg", "--set", "widht=2", "--hw", "t4"], "--set widht=2 for --model vgg: the builder "
                                                                       "takes no 'widht'"),
    (["train", "--model", "resnet", "--set", "blocks_per_stage=0"], "--set blocks_per_stage=0 for --model resnet"),
    (["profile", "--model", "effml.zoo.lenet5"], "--model 'effml.zoo.lenet5' is not a known zoo model name"),
    (["profile", "--model", "nosuchpkg_h3:net"], "model spec 'nosuchpkg_h3:net': no module named 'nosuchpkg_h3'"),
    (["profile", "--model", "cli_user_models:not_a_module", "--input-shape", "1,8"],
     "model spec 'cli_user_models:not_a_module' returned a dict, not a torch.nn.Module"),
])
def test_bad_specs_one_line(capsys, argv, text):
    assert text in one_line_error(capsys, argv)


def test_profile_by_name_with_set(capsys):
    assert main(["profile", "--model", "lenet5", "--set", "width=2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    # LeNet-5 at width 2: conv(1->12, 5x5) 312, conv(12->32, 5x5) 9,632, fc 800->240 192,240, 240->168 40,488,
    # 168->10 1,690 = 244,362 parameters
    assert d["params"] == 244_362 and d["model"]["source"] == "zoo:lenet5"


def test_help_names_are_the_registries():
    from effml.cli.common import HELP_NAMES

    assert {source: list(names) for source, names in HELP_NAMES.items()} == \
        {"zoo": known_models("zoo"), "llm": known_models("llm")}
