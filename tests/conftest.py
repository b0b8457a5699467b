"""Suite-wide setting, applied before any test module imports torch."""

import os

# OpenMP threads sleep when idle instead of spinning (what the `effml` CLI sets too): on a shared 2-core CI box
# a spinning runtime makes every parallel op wait for descheduled threads (tiny models ran 25x slower here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
