"""What `effml study` says about its own local predictions."""

from effml.study.present import prediction_check
from effml.study.store import Run


def _runs(pred_s, meas_s):
    base = Run("s", "baseline@x", "baseline", [], {"local_pred_s": pred_s, "latency_p50_s": meas_s})
    variant = Run("s", "int8@x", "int8", [{"technique": "quantize", "config": {}}],
                  {"local_pred_s": 1.0, "latency_p50_s": 0.001})  # only the baseline is judged
    return [variant, base]


def test_a_prediction_far_off_the_measurement_is_pointed_out():
    # the stale calibration seen here: 666 ms predicted for LeNet-5 (width 2) at batch 256, 30.7 ms measured
    msg = prediction_check(_runs(0.666, 0.0307))
    assert msg and "21.7x its measured latency (666.0 vs 30.7 ms)" in msg
    assert "0.2x" in prediction_check(_runs(0.010, 0.050))  # 5x too fast is flagged too


def test_within_a_factor_of_three_or_without_a_prediction_says_nothing():
    assert prediction_check(_runs(0.090, 0.0307)) is None  # 2.9x
    assert prediction_check(_runs(0.0104, 0.0307)) is None  # 1/2.95
    assert prediction_check(_runs(None, 0.0307)) is None  # no local device: nothing to judge
    assert prediction_check([]) is None
