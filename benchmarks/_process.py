"""Run a galmock command in its own single-threaded process and time it (benchmark helper)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(cmd: Sequence[str], label: str) -> tuple[subprocess.CompletedProcess, float]:
    """(result, wall seconds) of ``cmd`` with ``OMP_NUM_THREADS=1`` in the repository root;
    exits with the tail of its stderr, naming ``label``, if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stderr[-4000:]}")
    return result, wall
