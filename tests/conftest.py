"""Shared fixtures: the case catalogue lives in cases.py (imported here to register fixtures)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cases import case, csr_case, int_weight_case, small_case  # noqa: E402,F401
