"""The NAS tests' helpers: nas_helpers (the fake proxy) importable by worker processes. The throwaway
PostgreSQL server (`postgres_url`) is tests/conftest.py's, shared with the study store tests."""

import sys
from pathlib import Path

# the fake proxy is named as a spec, "nas_helpers:fake_accuracy", and NAS workers import it in fresh processes:
# this directory must be importable whatever pytest's import mode (importlib mode adds nothing to sys.path)
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
