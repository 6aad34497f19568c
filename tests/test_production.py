"""`galmock train` and `galmock upsample` under a real mpiexec (the mpich wheel's).

One small demo run is trained once (MAF, `mpiexec -n 2`) and shared: the tests copy its
particles, plan and models and upsample them again with other rank counts, a kill, a corrupt
model. The demo here is a 4 kpc patch around the Sun (13k particles, 4 regions): smooth
densities, so tiny flows train in seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from scipy.stats import ks_2samp

from galmock.config import load_job
from galmock.demo import DemoGalaxy
from galmock.imf import kroupa2001
from galmock.observables import build_observatory, true_photometry
from galmock.plan import read_plan
from galmock.regions import RegionParticles
from galmock.sampling import expected_stars, support_radius
from galmock.stages import run_pipeline, run_stage
from galmock.stages.validate import _stars
from galmock.store import BlockCatalog, columns_sha256, open_catalog
from galmock.validate.upsamplers import FlowUpsampler, Selection, load_flows

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
SUN = (-8.122, 0.0, 0.0)

JOB = {
    "name": "production-test",
    "seed": 3,
    "galaxy": {
        "source": "demo",
        "demo": {"n_particles": 300_000},
        # A solar-neighbourhood patch: recentre on the Sun, keep 4 kpc around it.
        "centre": list(SUN),
        "centre_velocity": [0.0, 0.0, 0.0],
        "select_radius_kpc": 4.0,
    },
    "plan": {"kind": "kdtree", "target_particles": 3500, "margin_kpc": 1.0},
    "flows": {
        "kind": "maf", "hidden_features": 32, "hidden_layers": 2, "maf": {"transforms": 4},
        "training": {"max_epochs": 40, "patience_epochs": 15, "ensemble_size": 1,
                     "learning_rate": 3e-3},
        "threads": 1,
    },
    "upsample": {"mode": "imf", "sampling_fraction": 8e-5, "chunk_rows": 16384,
                 "batch_rows": 5000},
}  # fmt: skip

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (install galmock[mpi])"),
]


def galmock(ranks: int, stage: str, job: Path, run: Path, *sets: str, timeout: float = 240):
    """Run a stage as users do: ``mpiexec -n ranks galmock stage job`` (no mpiexec for 0)."""
    cmd = [sys.executable, "-m", "galmock", stage, str(job), "--output", str(run)]
    for item in sets:
        cmd += ["--set", item]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def clone(base: Path, dest: Path) -> Path:
    """A new run directory with the base run's particles, plan and models (no stars)."""
    dest.mkdir(parents=True)
    shutil.copytree(base / "particles.zarr", dest / "particles.zarr")
    shutil.copy(base / "plan.json", dest / "plan.json")
    shutil.copytree(base / "training.zarr", dest / "training.zarr")
    shutil.copytree(base / "models", dest / "models")
    return dest


def tree_bytes(path: Path) -> dict[str, bytes]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """The shared run: ingest + plan in-process, then train and upsample with mpiexec -n 2."""
    root = tmp_path_factory.mktemp("production")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    run = root / "run"
    run_pipeline(load_job(job, output=run), "ingest", "plan")
    started = time.perf_counter()
    trained = galmock(2, "train", job, run)
    assert trained.returncode == 0, trained.stderr[-3000:]
    sampled = galmock(2, "upsample", job, run)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    print(f"train + upsample with 2 ranks: {time.perf_counter() - started:.1f} s")
    return {"root": root, "job": job, "run": run, "train_log": trained.stderr,
            "upsample_log": sampled.stderr}  # fmt: skip


def test_demo_end_to_end_with_two_ranks(demo) -> None:
    run = demo["run"]
    plan = read_plan(run / "plan.json")
    assert sorted(p.name for p in (run / "models").iterdir()) == [
        f"region-{i:04d}" for i in range(len(plan.regions))
    ]  # no checkpoint directories left once the artifacts exist
    assert "rank 0/2" in demo["train_log"] and "rank 1/2" in demo["train_log"]
    cat = open_catalog(run / "stars.zarr")
    attrs = cat.attrs
    records = attrs["blocks"]
    assert [r["region"] for r in records] == list(range(len(plan.regions)))
    # Magnitude-limited (the default G <= 20.7): a few percent of the ~400,000 owned draws.
    assert sum(r["rows"] for r in records) == len(cat) > 2000
    assert sum(r["owned_draws"] for r in records) > 300_000 and attrs["magnitude_limit"] == 20.7
    assert not BlockCatalog.staging_dir(run / "stars.zarr").exists()
    data = cat.read()
    for rec in records:  # the manifest's checksums describe the rows as stored
        a, b = rec["start"], rec["start"] + rec["rows"]
        assert rec["sha256"] == columns_sha256({c: v[a:b] for c, v in data.items()})
        assert (data["region"][a:b] == rec["region"]).all()
    # Every star lies in the region it is recorded in, and parents are particles.
    pos = np.column_stack([data["x"], data["y"], data["z"]])
    assert np.array_equal(plan.owner(pos), data["region"])
    ids = set(np.asarray(open_zarr_column(run / "particles.zarr", "id")).tolist())
    assert set(np.unique(data["parent_id"]).tolist()) <= ids
    assert np.isfinite(data["age"]).all() and np.isfinite(data["feh"]).all()
    assert cat.spec("x").unit == "kpc" and cat.array("vx").attrs["frame"].startswith("galacto")
    # Every star is visible: its photometry (as convert computes it) within the limit.
    job = load_job(demo["job"], output=run)
    true = true_photometry(build_observatory(job.observables, job.observer), pos, data["mass"],
                           data["age"], data["feh"])
    assert (true.g <= 20.7).all()


@pytest.fixture(scope="module")
def unlimited(demo, tmp_path_factory) -> Path:
    """The shared run's models upsampled again with every star (no magnitude limit), 2 ranks:
    the phase-space checks need the galaxy's density, not the visible stars'."""
    run = clone(demo["run"], tmp_path_factory.mktemp("unlimited") / "run")
    result = galmock(2, "upsample", demo["job"], run, "observables.magnitude_limit=null")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def open_zarr_column(path: Path, name: str) -> np.ndarray:
    import zarr

    return zarr.open_group(path, mode="r")[name][:]


def test_stellar_mass_per_region_matches_owned_mass_within_poisson_error(unlimited) -> None:
    run = unlimited
    plan = read_plan(run / "plan.json")
    data = open_catalog(run / "stars.zarr").read(columns=["mass", "region"])
    f = JOB["upsample"]["sampling_fraction"]
    imf = kroupa2001(0.08, 100.0)
    grid = np.geomspace(0.08, 100.0, 200_001)
    m2 = np.trapezoid(grid**2 * imf.pdf(grid), grid)  # <m^2> per star
    for r in plan.regions:
        total = float(data["mass"][data["region"] == r.id].astype(np.float64).sum())
        lam = f * r.owned_mass / imf.mean_mass()
        sigma = np.sqrt(lam * m2)  # compound Poisson: Var(sum m) = lambda <m^2>
        assert abs(total - f * r.owned_mass) < 5 * sigma, (r.id, total, f * r.owned_mass, sigma)


def test_catalogs_from_1_2_and_3_ranks_are_bitwise_identical(demo, tmp_path) -> None:
    reference = tree_bytes(demo["run"] / "stars.zarr")
    for ranks in (0, 3):  # 0: no mpiexec, a single rank
        run = clone(demo["run"], tmp_path / f"ranks-{ranks}")
        result = galmock(ranks, "upsample", demo["job"], run)
        assert result.returncode == 0, result.stderr[-3000:]
        assert tree_bytes(run / "stars.zarr") == reference, f"{ranks} rank(s) differ"


def test_rerun_skips_what_is_done(demo, tmp_path) -> None:
    run = clone(demo["run"], tmp_path / "rerun")
    shutil.copytree(demo["run"] / "stars.zarr", run / "stars.zarr")
    before = tree_bytes(run / "stars.zarr")
    trained = galmock(0, "train", demo["job"], run)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stderr.count("artifact up to date, skipped") == 4
    sampled = galmock(0, "upsample", demo["job"], run)
    assert sampled.returncode == 0 and "complete and up to date" in sampled.stderr
    assert tree_bytes(run / "stars.zarr") == before
    # Other settings: rebuilt (staged beside the old catalog, swapped in when complete).
    changed = galmock(0, "upsample", demo["job"], run, "upsample.sampling_fraction=2e-5")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert 0 < len(open_catalog(run / "stars.zarr")) < len(open_catalog(demo["run"] / "stars.zarr"))


def test_a_rank_killed_mid_run_resumes_to_the_same_catalog(demo, tmp_path) -> None:
    run = clone(demo["run"], tmp_path / "killed")
    done_dir = BlockCatalog.staging_dir(run / "stars.zarr") / "done"
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "galmock", "upsample", str(demo["job"]),
           "--output", str(run)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        deadline = time.monotonic() + 120
        sampling = None  # when the staging area was ready, i.e. the regions started
        while not (done_dir.is_dir() and any(done_dir.glob("block-*.json"))):
            assert proc.poll() is None and time.monotonic() < deadline, "no region finished"
            if sampling is None and (done_dir.parent / "layout.json").is_file():
                sampling = time.monotonic()
            time.sleep(0.01)
        # A random point after the first region is recorded, well before the ranks' second
        # regions (about as long as their first ones) can finish.
        delay = random.uniform(0.0, 0.5) * (time.monotonic() - (sampling or deadline - 120))
        time.sleep(delay)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "galmock" in " ".join(p.cmdline())]  # fmt: skip
        assert len(ranks) == 2, ranks
        victim = random.choice(ranks)
        victim.kill()  # SIGKILL
        _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, f"the job survived a SIGKILL at +{delay:.2f} s: {err[-2000:]}"
    assert not (run / "stars.zarr").exists()
    finished = len(list(done_dir.glob("block-*.json")))
    assert 1 <= finished < 4, f"killed too late (+{delay:.2f} s): {finished} regions done"
    resumed = galmock(2, "upsample", demo["job"], run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {finished} of 4 region(s) already complete" in resumed.stderr
    assert tree_bytes(run / "stars.zarr") == tree_bytes(demo["run"] / "stars.zarr")


def test_a_killed_upsample_continues_each_region_from_its_last_batch(demo, tmp_path) -> None:
    """Batch-level resume (#16): regions checkpoint as they go; SIGKILL at a random point, then
    the rerun continues the unfinished regions from their checkpointed batch, and the catalog
    is byte-identical to an uninterrupted run's."""
    small = "upsample.batch_rows=2000"  # ~40 batches per region
    reference = clone(demo["run"], tmp_path / "whole")
    whole = galmock(0, "upsample", demo["job"], reference, small)
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = clone(demo["run"], tmp_path / "killed-mid-region")
    progress = BlockCatalog.staging_dir(run / "stars.zarr") / "progress"
    cmd = [sys.executable, "-m", "galmock", "upsample", str(demo["job"]), "--output", str(run),
           "--set", small, "--set", "upsample.checkpoint_seconds=0.05"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        deadline = time.monotonic() + 120
        while not (progress.is_dir() and any(progress.iterdir())):  # a region checkpointed
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        # A random point while the first region (~40 batches, seconds) is still being sampled.
        time.sleep(random.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
    assert not (run / "stars.zarr").exists()
    assert any(progress.iterdir())  # killed mid-region, after a checkpoint
    resumed = galmock(0, "upsample", demo["job"], run, small)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at batch" in resumed.stderr
    assert tree_bytes(run / "stars.zarr") == tree_bytes(reference / "stars.zarr")


def test_a_preempted_upsample_resumes_the_region_from_its_last_batch(demo, tmp_path) -> None:
    """SIGUSR1 (Slurm's warning before the time limit) mid-region: the stage checkpoints the
    region at the batch it finished and exits 75; the requeued job continues from there."""
    small = "upsample.batch_rows=2000"
    reference = clone(demo["run"], tmp_path / "whole")
    assert galmock(0, "upsample", demo["job"], reference, small).returncode == 0
    run = clone(demo["run"], tmp_path / "preempted")
    log = run / "logs" / "upsample.log"
    cmd = [sys.executable, "-m", "galmock", "upsample", str(demo["job"]), "--output", str(run),
           "--set", small]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        deadline = time.monotonic() + 120
        while not (log.is_file() and "stars (expected" in log.read_text()):  # sampling region 1
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.01)
        time.sleep(random.uniform(0.2, 0.6))  # a few of its ~40 batches in
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert "checkpointed for the rerun" in err
    progress = BlockCatalog.staging_dir(run / "stars.zarr") / "progress"
    assert len(list(progress.iterdir())) == 1
    resumed = galmock(0, "upsample", demo["job"], run, small)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at batch" in resumed.stderr
    assert tree_bytes(run / "stars.zarr") == tree_bytes(reference / "stars.zarr")


def test_a_second_upsample_on_the_same_run_directory_is_refused(demo, tmp_path) -> None:
    """Two jobs would share the staging area and could both exit 0 with a catalog mixing their
    rows (#16). While another process holds the run directory's upsample lock (taken exactly as
    galmock takes it), an MPI upsample exits non-zero naming the lock, on every rank, and writes
    nothing; once the holder is killed (SIGKILL: the kernel drops its lock, nothing stale) the
    same job runs and makes the catalog it makes alone."""
    run = clone(demo["run"], tmp_path / "twice")
    lock = run / ".upsample.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from galmock.locks import exclusive\n"
        f"with exclusive({str(lock)!r}, 'upsample'):\n"
        "    print('held', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        refused = galmock(2, "upsample", demo["job"], run, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode != 0
    assert "another `galmock upsample` is running on this run directory" in refused.stderr
    assert str(lock) in refused.stderr
    assert not (run / "stars.zarr").exists()
    assert not BlockCatalog.staging_dir(run / "stars.zarr").exists()
    alone = galmock(2, "upsample", demo["job"], run)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert tree_bytes(run / "stars.zarr") == tree_bytes(demo["run"] / "stars.zarr")


def test_models_trained_on_another_galaxy_are_refused(demo, tmp_path) -> None:
    """Ingest and plan rerun with other particles, then upsample without train: the models'
    manifests record a hash of their training particles, and it no longer matches (#16)."""
    run = clone(demo["run"], tmp_path / "stale")
    other = "galaxy.demo.n_particles=290000"
    run_pipeline(load_job(demo["job"], overrides=[other], output=run), "ingest", "plan")
    result = galmock(0, "upsample", demo["job"], run, other)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the model is stale for this job (trained on other particles): run `galmock train`" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "stars.zarr").exists()


def test_verify_checks_every_product_and_names_the_damaged_one(demo, tmp_path) -> None:
    run = clone(demo["run"], tmp_path / "verify")
    shutil.copytree(demo["run"] / "stars.zarr", run / "stars.zarr")
    result = galmock(0, "verify", demo["job"], run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "plan.json: ok (4 regions)" in result.stdout
    assert "models: ok (4 region model(s), trained on the current particles)" in result.stdout
    assert "4 region block(s) match their sha256" in result.stdout
    assert "catalog.zarr: not made yet" in result.stdout
    chunk = run / "stars.zarr" / "mass" / "c" / "0"  # the visible stars fill one chunk
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 3] ^= 0x01  # one flipped bit
    chunk.write_bytes(bytes(damaged))
    result = galmock(0, "verify", demo["job"], run)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "stars.zarr: failed (" in result.stdout
    assert "1 product(s) failed verification: stars.zarr" in result.stderr
    assert "Stored and computed checksum do not match" in result.stderr


def test_a_stale_catalog_is_refused_by_convert_and_verify(demo, tmp_path) -> None:
    """stars.zarr records what it was made from; after a change of upsample settings (or plan,
    models, seed) convert and verify refuse it rather than convert old stars (#16)."""
    run = clone(demo["run"], tmp_path / "stale-stars")
    shutil.copytree(demo["run"] / "stars.zarr", run / "stars.zarr")
    other = "upsample.sampling_fraction=2e-5"
    for command in ("convert", "verify"):
        result = galmock(0, command, demo["job"], run, other)
        assert result.returncode == 1, result.stderr[-2000:]
        assert "stars.zarr: stale: made from other inputs than this job's" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (run / "catalog.zarr").exists()


def test_a_corrupt_model_fails_the_job_naming_the_region(demo, tmp_path) -> None:
    run = clone(demo["run"], tmp_path / "corrupt")
    weights = run / "models" / "region-0002" / "member-00.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)  # the manifest's sha256 no longer matches
    weights.write_bytes(bytes(data))
    started = time.monotonic()
    result = galmock(2, "upsample", demo["job"], run, timeout=120)
    assert result.returncode != 0
    assert "region 2 failed" in result.stderr and "sha256" in result.stderr
    assert time.monotonic() - started < 60
    assert not (run / "stars.zarr").exists()


# -- seams -------------------------------------------------------------------------------------


def faces(plan):
    """(left region, right region, axis, value, window) for each face two boxes share; the
    window is the shared part of the face, clipped to ``limits`` per axis."""
    for a in plan.regions:
        for b in plan.regions:
            for axis in range(3):
                v = a.upper[axis]
                if v != b.lower[axis] or not np.isfinite(v):
                    continue
                window = {
                    i: (max(a.lower[i], b.lower[i]), min(a.upper[i], b.upper[i]))
                    for i in range(3) if i != axis
                }  # fmt: skip
                yield a.id, b.id, axis, v, window


def seam_statistics(pos, vel, axis, value, window, width, density, rng, mc_points=400_000):
    """Density step log((n_R/n_L) / (E_R/E_L)) with its Poisson sigma, and the velocity KS
    statistics between the slabs ``width`` either side of the face."""
    sel = np.ones(len(pos), dtype=bool)
    for i, (lo, hi) in window.items():
        sel &= (pos[:, i] >= lo) & (pos[:, i] < hi)
    left = sel & (pos[:, axis] >= value - width) & (pos[:, axis] < value)
    right = sel & (pos[:, axis] >= value) & (pos[:, axis] < value + width)
    # Expected ratio: the exact density integrated over both slabs (Monte Carlo).
    u = rng.random((mc_points, 3))
    pts = np.empty_like(u)
    for i, (lo, hi) in window.items():
        pts[:, i] = lo + (hi - lo) * u[:, i]
    pts[:, axis] = value - width + 2 * width * u[:, axis]
    rho = density(pts)
    is_left = pts[:, axis] < value
    expected = rho[~is_left].sum() / rho[is_left].sum()
    n_l, n_r = int(left.sum()), int(right.sum())
    step = float(np.log(n_r / n_l / expected))
    sigma = float(np.sqrt(1 / n_l + 1 / n_r))
    ks = [ks_2samp(vel[left, k], vel[right, k]).statistic for k in range(3)]
    return n_l, n_r, step, sigma, ks


def demo_density(fractions, offset):
    galaxy = DemoGalaxy.from_fractions(fractions)

    def rho(p):
        p = p + np.asarray(offset)
        return sum(w * np.exp(c.log_density(p)) for c, w in
                   zip(galaxy.components, galaxy.fractions) if w > 0)  # fmt: skip

    return rho


def test_no_seam_between_trained_regions(unlimited) -> None:
    """Trained flows: across every face inside the patch, the star density changes by less than
    STEP (|log ratio| against the exact demo density) and each velocity component's KS distance
    between 0.3 kpc slabs either side is below KS_MAX.

    The bounds are set by what 40-epoch, 13k-particle flows reproduce (about ±25% locally, as
    inside a region); a broken ownership cut or count (double counting, a region's stars in its
    neighbour) moves the step by log 2 or more. Stitching itself is tested exactly below.
    """
    step_max, ks_max, width = 0.35, 0.12, 0.3
    run = unlimited
    plan = read_plan(run / "plan.json")
    d = open_catalog(run / "stars.zarr").read()
    pos = np.column_stack([d["x"], d["y"], d["z"]])
    vel = np.column_stack([d["vx"], d["vy"], d["vz"]]).astype(np.float64)
    density = demo_density(None, SUN)
    rng = np.random.default_rng(0)
    checked = 0
    for a, b, axis, value, window in faces(plan):
        window = {i: (max(lo, -1.5), min(hi, 1.5)) if i < 2 else (max(lo, -0.3), min(hi, 0.3))
                  for i, (lo, hi) in window.items()}  # fmt: skip
        if any(lo >= hi for lo, hi in window.values()):
            continue
        n_l, n_r, step, sigma, ks = seam_statistics(pos, vel, axis, value, window, width,
                                                    density, rng)
        if min(n_l, n_r) < 1000:
            continue
        checked += 1
        print(f"face {a}|{b}: {n_l}|{n_r} stars, step {step:+.3f} ± {sigma:.3f}, KS {ks}")
        assert abs(step) < step_max + 3 * sigma, (a, b, n_l, n_r, step, sigma)
        assert max(ks) < ks_max, (a, b, ks)
    assert checked >= 2


class ExactModel:
    """A stand-in for a region's flow that samples the demo galaxy exactly (fresh particles)."""

    def configure(self, **_: object) -> None:
        return None

    def sample(self, n, generator):
        import torch

        from galmock.demo import demo_particles

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        c = demo_particles(n, seed).columns
        pos = np.column_stack([c["x"], c["y"], c["z"]])
        vel = np.column_stack([c["vx"], c["vy"], c["vz"]])
        return torch.from_numpy(pos), torch.from_numpy(vel), 0.0


def test_stitching_is_seamless_with_exact_region_models(tmp_path, monkeypatch) -> None:
    """With exact per-region samplers the catalog must be the galaxy itself: across every face
    the density step is within 4 Poisson sigma of zero (whole galaxy, faces through the bulge).
    This isolates the stage's part: counts from owned mass, the ownership cut, row placement.

    sigma includes the particles' own Poisson noise: a region's stars carry its owned particle
    mass, which scatters by 1/sqrt(owned particles) around the true mass in its box.
    """
    import torch

    import galmock.stages.upsample

    monkeypatch.setattr(galmock.stages.upsample, "load_artifact", lambda *a, **k: ExactModel())
    monkeypatch.setattr(galmock.stages.upsample, "model_identity", lambda location: {})
    monkeypatch.setattr(galmock.stages.upsample, "require_current", lambda *a: None)  # no files
    threads = torch.get_num_threads()
    job = load_job(write_job(tmp_path, {
        "name": "exact", "seed": 1, "galaxy": {"demo": {"n_particles": 20_000}},
        "plan": {"target_particles": 5_000, "margin_kpc": 0.5},
        "flows": {"threads": 1},
        "upsample": {"mode": "fixed", "stars_per_particle": 40, "chunk_rows": 50_000,
                     "batch_rows": 100_000},
        "observables": {"enabled": False},  # fixed-mode stars have no photometry
    }), output=tmp_path / "run")  # fmt: skip
    try:
        run_pipeline(job, "ingest", "plan")
        run_stage(job, "upsample")  # no train stage: the models are exact
    finally:
        torch.set_num_threads(threads)
    plan = read_plan(tmp_path / "run" / "plan.json")
    d = open_catalog(tmp_path / "run" / "stars.zarr").read()
    pos = np.column_stack([d["x"], d["y"], d["z"]])
    vel = np.column_stack([d["vx"], d["vy"], d["vz"]]).astype(np.float64)
    density = demo_density(None, (0.0, 0.0, 0.0))
    rng = np.random.default_rng(1)
    checked = 0
    for a, b, axis, value, window in faces(plan):
        window = {i: (max(lo, -3.0), min(hi, 3.0)) if i < 2 else (max(lo, -0.5), min(hi, 0.5))
                  for i, (lo, hi) in window.items()}  # fmt: skip
        if any(lo >= hi for lo, hi in window.values()):
            continue
        n_l, n_r, step, sigma, _ = seam_statistics(pos, vel, axis, value, window, 0.3, density,
                                                   rng, mc_points=2_000_000)
        if min(n_l, n_r) < 500:
            continue
        checked += 1
        owned = (plan.regions[a].owned_particles, plan.regions[b].owned_particles)
        sigma = float(np.sqrt(sigma**2 + 1 / owned[0] + 1 / owned[1]))
        print(f"face {a}|{b}: {n_l}|{n_r} stars, step {step:+.3f} ± {sigma:.3f}")
        assert abs(step) < 4 * sigma, (a, b, n_l, n_r, step, sigma)
    assert checked >= 2


def write_job(root: Path, data: dict) -> Path:
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cnf_trains_and_upsamples_end_to_end(tmp_path) -> None:
    """The paper's flow family through both stages, in-process and tiny."""
    import torch

    threads = torch.get_num_threads()
    job = load_job(write_job(tmp_path, {
        "name": "cnf", "seed": 2, "galaxy": {"demo": {"n_particles": 4000}},
        "plan": {"target_particles": 2500, "margin_kpc": 0.5},
        "flows": {"kind": "cnf", "hidden_features": 8, "hidden_layers": 2,
                  "cnf": {"rk4_steps": 4},
                  "training": {"max_epochs": 2, "patience_epochs": 2, "batches_per_epoch": 4,
                               "ensemble_size": 1},
                  "threads": 1, "device": "cpu"},
        "upsample": {"mode": "fixed", "stars_per_particle": 3, "chunk_rows": 4096},
        "observables": {"enabled": False},  # fixed-mode stars have no photometry
    }), output=tmp_path / "run")  # fmt: skip
    try:
        run_pipeline(job, "ingest", "upsample")
    finally:
        torch.set_num_threads(threads)
    plan = read_plan(tmp_path / "run" / "plan.json")
    assert len(plan.regions) == 2
    manifest = json.loads((tmp_path / "run/models/region-0001/manifest.json").read_text())
    assert manifest["kind"] == "cnf"
    cat = open_catalog(tmp_path / "run" / "stars.zarr")
    assert abs(len(cat) - 3 * 4000) < 5 * np.sqrt(3 * 4000)
    d = cat.read(columns=["mass", "region", "parent_id"])
    per_region = np.bincount(d["region"], weights=d["mass"].astype(np.float64))
    owned = np.array([r.owned_mass for r in plan.regions])
    assert np.allclose(per_region, owned, rtol=0.1)  # fixed mode: parent mass / 3 per star

    # flows.load: the same models as pretrained artifacts give the same stars, nothing trains.
    reuse = job.model_copy(update={
        "output": str(tmp_path / "reuse"),
        "flows": job.flows.model_copy(update={"load": str(tmp_path / "run" / "models")}),
    })  # fmt: skip
    try:
        run_pipeline(reuse, "ingest", "upsample")
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "reuse" / "models").exists()
    again = open_catalog(tmp_path / "reuse" / "stars.zarr").read()
    for name, values in cat.read().items():
        np.testing.assert_array_equal(again[name], values)


def test_validate_measures_a_limited_run_on_draws_sampled_as_upsample_samples(
        demo, unlimited) -> None:
    """stars.zarr of the (magnitude-limited) shared run holds only visible stars, so validate's
    seams and radial profile use draws of the models: shared among the regions as upsample's
    owned draws are, inside each region's owned box and support radius; an unlimited
    stars.zarr is read as it is."""
    job = load_job(demo["job"], output=demo["run"], overrides=["validate.seam_stars=20000",
                                                                "validate.figure_stars=3000"])
    plan = read_plan(demo["run"] / "plan.json")
    data = RegionParticles(demo["run"] / "training.zarr", plan)
    models = load_flows(job, plan, job.flows.kind, data)
    flows = {job.flows.kind: FlowUpsampler(job.flows.kind, models, plan,
                                           Selection.within(plan, None))}
    many, few, source = _stars(job, plan, flows, Selection.within(plan, None))
    assert "draws of the maf models" in source and len(few["vx"]) == 3000
    pos = np.column_stack([many["x"], many["y"], many["z"]])
    owner = plan.owner(pos)
    lam = expected_stars(plan.regions, job.upsample)
    np.testing.assert_array_equal(np.bincount(owner, minlength=len(lam)),
                                  np.round(20000 * lam / lam.sum()))
    for r in plan.regions:
        radius = support_radius(data.particles(r.id).pos)
        assert (np.linalg.norm(pos[owner == r.id], axis=1) <= radius).all()
    full = load_job(demo["job"], output=unlimited, overrides=["validate.seam_stars=20000",
                                                              "observables.magnitude_limit=null"])
    many, _, source = _stars(full, plan, flows, Selection.within(plan, None))
    assert source.startswith("stars.zarr") and len(many["x"]) <= 20000
