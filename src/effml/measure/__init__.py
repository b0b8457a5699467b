"""Measurement: latency percentiles with CI-based stopping, throughput vs batch, peak memory, threads.

    from effml.measure import measure
    m = measure(model, x)            # Measurement: p50/p90/p99, throughput_per_s, memory, threads
    res = bench(make, [1, 8, 32])    # each row beside its `local` prediction and error %
"""

from effml.measure.memory import PeakMemory, PeakTracker
from effml.measure.sweep import BenchResult, attach_prediction, bench, parse_batches
from effml.measure.timing import MeasureConfig, Measurement, measure, median_ci, percentile

__all__ = ["BenchResult", "MeasureConfig", "Measurement", "PeakMemory", "PeakTracker", "attach_prediction", "bench",
           "measure", "median_ci", "parse_batches", "percentile"]
