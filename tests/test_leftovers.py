"""What a killed writer leaves beside a product is cleaned by the next write of it (#16)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from galmock.atomic import atomic_directory, remove_leftovers

REPO = Path(__file__).resolve().parent.parent
DEAD = 999_999_999  # above any pid_max: no such process


def test_a_killed_ingest_leaves_nothing_after_the_rerun(tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "galmock", "ingest", str(REPO / "jobs" / "demo.yaml"),
           "--output", str(run), "--set", "galaxy.demo.n_particles=2000000"]  # fmt: skip
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as p:
        deadline = time.monotonic() + 120
        while not list(run.glob(".particles.zarr.tmp-*")):  # writing its temporary copy
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert list(run.glob(".particles.zarr.tmp-*"))  # the leftover, before the rerun
    rerun = subprocess.run([*cmd[:-1], "galaxy.demo.n_particles=20000"], cwd=REPO,
                           capture_output=True, text=True)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".particles")) == []
    assert (run / "particles.zarr" / "zarr.json").is_file()


def test_killed_between_the_two_renames_the_old_product_comes_back(tmp_path) -> None:
    target = tmp_path / "particles.zarr"
    host = socket.gethostname()
    aside = tmp_path / f".particles.zarr.old-{host}-{DEAD}"
    aside.mkdir()
    (aside / "zarr.json").write_text("{}")  # the previous product, moved aside
    new = tmp_path / f".particles.zarr.tmp-{host}-{DEAD}-abc"
    new.mkdir()
    assert remove_leftovers(target) == [new]
    assert (target / "zarr.json").read_text() == "{}" and not aside.exists()


def test_leftovers_of_live_or_foreign_writers_are_left_alone(tmp_path) -> None:
    target = tmp_path / "plan.json"
    live = tmp_path / f".plan.json.tmp-{socket.gethostname()}-{os.getpid()}-x"
    foreign = tmp_path / f".plan.json.tmp-other-node-{DEAD}-x"
    live.write_text("")
    foreign.write_text("")
    with atomic_directory(tmp_path / "report"):
        pass
    assert remove_leftovers(target) == []
    assert live.exists() and foreign.exists()
