"""Names the doctests of galmock's module docstrings may use without importing them.

Module docstrings are specifications whose examples run (``--doctest-modules``); these fixtures
give them a job loader, a fresh temporary directory per docstring, and the run layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from galmock.config import load_job
from galmock.layout import RunLayout
from galmock.stages.ingest import run as run_ingest

ROOT = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest, doctest_namespace: dict[str, Any],
                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if type(request.node).__name__ != "DoctestItem":
        return
    monkeypatch.chdir(ROOT)  # job files are named relative to the checkout
    doctest_namespace.update(
        np=np, load_job=load_job, RunLayout=RunLayout, run_ingest=run_ingest, tmp_path=tmp_path
    )
