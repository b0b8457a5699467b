"""Suite-wide setting, applied before any test module imports torch."""

import os

import pytest

# OpenMP threads sleep when idle instead of spinning (what the `effml` CLI sets too): on a shared 2-core CI box
# a spinning runtime makes every parallel op wait for descheduled threads (tiny models ran 25x slower here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models gain
    nothing from a second thread, and on a busy machine each parallel op can wait for a descheduled one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
