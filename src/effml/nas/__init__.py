"""Hardware-aware NAS: search spaces as data, device budgets (SRAM, flash, latency), an Optuna search."""
