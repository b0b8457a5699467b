"""A deterministic stand-in proxy for the search tests (no training): bigger models score higher.

Each call appends the architecture's name to $NAS_TEST_CALLS (if set), so a test can see, across worker
processes, exactly which candidates reached the proxy.
"""

import math
import os

from effml.nas.budgets import cost_of
from effml.nas.proxy import ProxyResult


def fake_accuracy(space, arch, config):
    path = os.environ.get("NAS_TEST_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(space.describe(arch) + "\n")
    macs = cost_of(space, arch, "stm32f746").macs
    return ProxyResult(0.5 + 0.4 * (1 - math.exp(-macs / 5e6)), 0.0, "none", "fake proxy (tests)")
