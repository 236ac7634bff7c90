"""Make tests/rewards importable by name (custom verifiers are imported by `_target_`, also in the pool
workers, which inherit this sys.path) whatever pytest's import mode is."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
