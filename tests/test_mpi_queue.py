"""The MPI region queue under a real mpiexec (the mpich wheel's)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")

SCRIPT = """
import json, sys, time
from galmock.parallel.mpi import local_rank, run_tasks, world
comm = world()
fail, out = int(sys.argv[1]), sys.argv[2]
def work(t):
    if t == fail:
        raise RuntimeError("corrupt model")
    time.sleep(0.02 * (12 - t))  # task 0 is the most expensive: handed out first
done = run_tasks(list(range(12)), work, comm, describe=lambda t: f"region {t}")
# one file per rank: ranks' stdout lines can interleave
with open(f"{out}/rank{comm.Get_rank()}.json", "w") as fh:
    json.dump({"rank": comm.Get_rank(), "local": local_rank(comm), "done": done}, fh)
"""

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install galmock[mpi])"),
]


def launch(n: int, out: Path, fail: int = -1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", SCRIPT, str(fail), str(out)]
    if n > 0:
        cmd = [MPIEXEC, "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ranks", [0, 2, 3])
def test_every_task_runs_exactly_once(ranks: int, tmp_path: Path) -> None:
    result = launch(ranks, tmp_path)
    assert result.returncode == 0, result.stderr
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert len(reports) == max(ranks, 1)
    done = sorted(t for r in reports for t in r["done"])
    assert done == list(range(12))
    if ranks > 1:
        assert all(r["done"] for r in reports)  # rank 0 works too: nobody idles
        assert sorted(r["local"] for r in reports) == list(range(ranks))


def test_a_failing_task_aborts_the_job_naming_it(tmp_path: Path) -> None:
    result = launch(2, tmp_path, fail=5)
    assert result.returncode != 0
    assert "region 5 failed: corrupt model" in result.stderr
