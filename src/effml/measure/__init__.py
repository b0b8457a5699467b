"""Measurement: latency percentiles with CI-based stopping, throughput, peak memory, threads.

    from effml.measure import measure
    m = measure(model, x)            # Measurement: p50/p90/p99, throughput_per_s, memory, threads

The lowest layer of the hardware story: it imports neither `effml.hardware` nor `effml.cost`. The sweep that puts
each measurement beside its prediction is `effml.hardware.sweep.bench`.
"""

from effml.measure.memory import PeakMemory, PeakTracker
from effml.measure.timing import MeasureConfig, Measurement, measure, median_ci, percentile

__all__ = ["MeasureConfig", "Measurement", "PeakMemory", "PeakTracker", "measure", "median_ci", "percentile"]
