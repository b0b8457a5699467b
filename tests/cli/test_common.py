"""cli.common: the argparse validators, --hw parsing, refused options and --json without NaN/Infinity."""

import argparse
import json
import math

import numpy as np
import pytest

from effml.cli.common import (
    duration,
    fraction,
    nonneg_float,
    nonneg_int,
    one_hw,
    parse_hw,
    positive_float,
    positive_int,
    print_json,
    refuse_unless,
    to_plain,
    unit_fraction,
)
from effml.errors import ConfigError


@pytest.mark.parametrize("fn, good, value", [
    (positive_int, "3", 3), (nonneg_int, "0", 0), (positive_float, "1e-3", 1e-3), (nonneg_float, "0", 0.0),
    (fraction, "0", 0.0), (fraction, "1", 1.0), (unit_fraction, "1", 1.0), (unit_fraction, "0.4", 0.4),
])
def test_validators_accept(fn, good, value):
    assert fn(good) == value


@pytest.mark.parametrize("fn, bad, text", [
    (positive_int, "0", "must be an integer > 0, got '0'"),
    (positive_int, "-2", "must be an integer > 0"),
    (positive_int, "2.5", "'2.5' is not an integer"),
    (positive_int, "many", "'many' is not an integer"),
    (nonneg_int, "-1", "must be an integer >= 0"),
    (positive_float, "0", "must be a finite number > 0"),
    (positive_float, "-1e-3", "must be a finite number > 0"),
    (positive_float, "nan", "must be a finite number, got 'nan'"),
    (positive_float, "inf", "must be a finite number, got 'inf'"),
    (nonneg_float, "-0.5", "must be a finite number >= 0"),
    (nonneg_float, "-inf", "must be a finite number"),
    (fraction, "1.01", "must be a fraction in [0, 1]"),
    (fraction, "nan", "must be a finite number"),
    (unit_fraction, "0", "must be a fraction in (0, 1]"),
])
def test_validators_refuse_with_the_value(fn, bad, text):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        fn(bad)
    assert text in str(e.value)


def test_validator_errors_name_the_flag(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--lr", type=positive_float)
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "nan"])
    assert "argument --lr: must be a finite number, got 'nan'" in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("8m", 480.0), ("8 min", 480.0),
                                           ("1.5h", 5400.0), ("0.05", 0.05)])
def test_duration_is_seconds(text, seconds):
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["0", "-5m", "nan", "infh", "soon", "m"])
def test_duration_refuses(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(bad)


def test_parse_hw_splits_and_checks():
    assert parse_hw(["h100,a100", "t4"]) == ["h100", "a100", "t4"]
    assert parse_hw(["stm32f746:int8"], dtypes=True) == ["stm32f746:int8"]
    assert parse_hw(["local"]) == ["local"]  # known; calibrated or not is the command's to say
    assert parse_hw(None) == []
    with pytest.raises(ConfigError) as e:
        parse_hw(["h100", "tpu9"])
    msg = str(e.value)
    assert msg.startswith("--hw: unknown device 'tpu9'") and "h100-sxm" in msg and "stm32f746" in msg
    with pytest.raises(ConfigError, match="--hw needs at least one device"):
        parse_hw([" , "])


def test_one_hw():
    assert one_hw(["rpi5"]) == "rpi5" and one_hw(None) is None
    with pytest.raises(ConfigError, match="--hw takes one device here, got 2: h100, t4"):
        one_hw(["h100,t4"])


def test_refuse_unless_names_each_flag():
    refuse_unless(None, {"--mfu": 0.5}, True, "without --hw")  # applies: nothing said
    refuse_unless(None, {"--mfu": None, "--dtype": False}, False, "without --hw")  # not given: nothing said
    with pytest.raises(ConfigError, match="^--mfu, --dtype do not apply without --hw$"):
        refuse_unless(None, {"--mfu": 0.5, "--dtype": "fp8"}, False, "without --hw")


class _Result:
    def to_dict(self):
        return {"loss": float("nan"), "rows": [1.0, float("inf"), (2, -math.inf)], "n": np.float32(2.5)}


def test_print_json_never_prints_nan_or_infinity(capsys):
    print_json({"result": _Result(), "ok": 1})
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    d = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert d["result"] == {"loss": None, "rows": [1.0, None, [2, None]], "n": 2.5}
    assert d["non_finite"] == ["$.result.loss", "$.result.rows[1]", "$.result.rows[2][1]"]


def test_print_json_finite_has_no_note(capsys):
    print_json({"a": 1.5})
    assert json.loads(capsys.readouterr().out) == {"a": 1.5}


def test_to_plain_refuses_unknown_objects():
    with pytest.raises(TypeError, match=r"cannot serialise object to JSON \(at \$.x\)"):
        to_plain({"x": object()})
