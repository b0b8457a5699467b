import json

import pytest
import torch

from effml.errors import ConfigError
from effml.nas.models import make_divisible
from effml.nas.spaces import get_space, list_spaces


def test_builtin_spaces_are_data():
    assert list_spaces() == ["mobilenetv2", "transformer"]
    mb = get_space("mobilenetv2")
    params = mb.searchable()
    # width, resolution, and per stage depth/kernel/expand where a stage offers more than one choice:
    # stage 0 is fixed (t=1, n=1, k=3); stages 1-5 search all three; stage 6 (n=1) searches kernel and expand
    assert len(params) == 2 + 5 * 3 + 2
    assert params["s3.kernel"] == (3, 5, 7) and params["s3.expand"] == (3, 4, 6)
    vit = get_space("vit")
    assert set(vit.searchable()) == {"depth", "width", "heads", "mlp_ratio"}


def test_smallest_is_the_first_choice_of_everything():
    mb = get_space("mobilenetv2")
    a = mb.smallest()
    assert a["width"] == 0.35 and a["resolution"] == 32 and a["s3.depth"] == 1 and a["s3.kernel"] == 3
    assert mb.describe(a).startswith("mbv2 w0.35 r32 1x3k1e-1x3k3e")


def test_build_runs_and_sample_is_seeded():
    mb = get_space("mobilenetv2")
    a1, a2 = mb.sample(torch.Generator().manual_seed(3)), mb.sample(torch.Generator().manual_seed(3))
    assert a1 == a2
    out = mb.build(mb.smallest()).eval()(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    vit = get_space("transformer")
    assert vit.build(vit.largest())(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_make_divisible_matches_mobilenetv2():
    # 32 x 0.35 = 11.2 -> 16 (8 would lose more than 10%); 24 x 0.5 = 12 -> 16; 320 x 0.75 = 240
    assert [make_divisible(32 * 0.35), make_divisible(24 * 0.5), make_divisible(320 * 0.75)] == [16, 16, 240]


def test_unknown_space_suggests_close_names():
    with pytest.raises(ConfigError, match="unknown search space 'mobilenet'.*did you mean 'mobilenetv2'"):
        get_space("mobilenet")


def test_bad_arch_names_the_field():
    mb = get_space("mobilenetv2")
    with pytest.raises(ConfigError, match="width=0.6 is not one of"):
        mb.check({**mb.smallest(), "width": 0.6})
    with pytest.raises(ConfigError, match="no parameter"):
        mb.check({**mb.smallest(), "colour": 1})


def test_space_from_json_file(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"family": "transformer", "input_channels": 1, "classes": 10, "patch": 4,
                             "resolution": [28], "depth": [1, 2], "width": [32], "heads": [2], "mlp_ratio": [2]}))
    assert get_space(str(p)).searchable() == {"depth": (1, 2)}
    p.write_text(json.dumps({"family": "resnet"}))
    with pytest.raises(ConfigError, match="family 'resnet' unknown"):
        get_space(str(p))
