"""Shared fixtures: the flow families, and a throwaway single-node Slurm for tests marked ``slurm``.

``flow_kind`` runs a test once per registered flow family (:func:`galmock.flows.family_names`),
so a new family is tested wherever the built-in ones are.

``slurm`` (session scope) uses a Slurm that already answers ``sinfo``, or else starts one with
``slurm/local-slurm.sh up`` (as root on Debian with apt: installs slurm-wlm + munge the first
time, ~20 s; ~3 s after that) in a temporary PREFIX, exports ``SLURM_CONF`` for this process and
stops the daemons at the end of the session. When it cannot, the tests that use it are skipped,
unless ``CI=true`` or ``GALMOCK_REQUIRE_SLURM=1``: then they fail, so CI always runs real Slurm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from galmock.flows import family_names

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "slurm" / "local-slurm.sh"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of small-tensor tests (extra OpenMP threads only add
    overhead, and stall badly when the cores are shared); the setting is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=family_names())
def flow_kind(request: pytest.FixtureRequest) -> str:
    """Each registered flow family's name in turn (``cnf``, ``maf``, ``nsf``, ...)."""
    return request.param


def _slurm_required() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true" or os.environ.get("GALMOCK_REQUIRE_SLURM") == "1"
    )


def _sinfo_works(env: dict[str, str]) -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def _why_not_startable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not Path("/etc/debian_version").exists():
        return "not Debian"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "no apt-get to install Slurm with"
    return None


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A working Slurm for this process; yields ``{"SLURM_CONF": ...}`` (may be empty)."""
    if _sinfo_works(dict(os.environ)):
        conf = os.environ.get("SLURM_CONF")
        yield {"SLURM_CONF": conf} if conf else {}
        return
    reason = _why_not_startable()
    prefix = tmp_path_factory.mktemp("slurm")
    # NODE_CPUS explicitly: local-slurm.sh defaults to `nproc`, which honours OMP_NUM_THREADS,
    # and a library imported earlier in the session (dask's nanny) may have set it to 1 here,
    # leaving a 1-CPU node that rejects the 2-task MPI stages.
    cpus = max(2, len(os.sched_getaffinity(0)))
    env = {**os.environ, "PREFIX": str(prefix), "SMOKE": "1", "WITH_PMIX": "0",
           "NODE_CPUS": str(cpus)}
    started = False
    if reason is None:
        try:
            done = subprocess.run(
                ["bash", str(LOCAL_SLURM), "up"],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            started = done.returncode == 0
            if not started:
                reason = f"local-slurm.sh up failed: {(done.stderr or done.stdout)[-1500:]}"
        except subprocess.TimeoutExpired:
            reason = "local-slurm.sh up timed out after 600 s"
    if not started:
        message = f"cannot start a local Slurm ({reason})"
        _stop(env)
        if _slurm_required():
            pytest.fail(f"{message}; CI=true / GALMOCK_REQUIRE_SLURM=1 require Slurm tests")
        pytest.skip(message)
    conf = str(prefix / "slurm.conf")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # SLURMCluster runs sbatch/squeue from this process
    try:
        yield {"SLURM_CONF": conf}
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        _stop(env)


def _stop(env: dict[str, str]) -> None:
    if Path(env["PREFIX"], "slurm.conf").exists():
        subprocess.run(
            ["bash", str(LOCAL_SLURM), "down"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
