"""`scripts/benchmark.py` / `mscvision bench`: figures measured side by side, as ratios (training layer)."""
