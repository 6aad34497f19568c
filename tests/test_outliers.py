"""A whole galaxy with far-flung particles (zoom snapshots keep unbound and satellite stars out to
Mpc): no particle's mass is lost, and no handful of distant particles sets a region's scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from galmock.config import load_job
from galmock.demo import DEFAULT_FRACTIONS, demo_particles
from galmock.flows.preprocess import PositionPreprocessing
from galmock.imf import kroupa2001
from galmock.particles import read_particle_store
from galmock.plan import build_kdtree_plan, read_plan
from galmock.regions import RegionParticles
from galmock.sampling import support_radius
from galmock.stages import run_pipeline
from galmock.store import open_catalog


@pytest.fixture(scope="module")
def galaxy() -> tuple[np.ndarray, np.ndarray]:
    """The demo galaxy plus 0.3% of its mass as particles at 0.3-20 Mpc (log-uniform)."""
    source = demo_particles(40_000, seed=5)
    c = source.columns
    pos = np.column_stack([c["x"], c["y"], c["z"]])
    mass = np.asarray(c["mass"], dtype=np.float64)
    rng = np.random.default_rng(6)
    n_far = round(0.003 * len(pos))
    far = rng.normal(size=(n_far, 3))
    far *= (10 ** rng.uniform(np.log10(300), np.log10(20_000), n_far)
            / np.linalg.norm(far, axis=1))[:, None]
    return np.vstack([pos, far]), np.concatenate([mass, np.full(n_far, mass[0])])


def test_every_particle_mass_ends_in_exactly_one_region(galaxy) -> None:
    pos, mass = galaxy
    plan = build_kdtree_plan(pos, mass, np.arange(len(pos)), 10_000, 0.5)
    owner = plan.owner(pos)
    assert (owner >= 0).all()  # outliers included: the outer faces extend to infinity
    owned = np.array([r.owned_mass for r in plan.regions])
    assert owned.sum() == pytest.approx(mass.sum(), rel=1e-12)
    np.testing.assert_allclose(owned, np.bincount(owner, weights=mass), rtol=1e-12)


def test_no_region_scale_is_set_by_distant_particles(galaxy) -> None:
    """Every region's position map keeps its own particles spread over O(1) in the flows'
    space; the paper's ball map of the same region crushes them to a point."""
    pos, mass = galaxy
    plan = build_kdtree_plan(pos, mass, np.arange(len(pos)), 10_000, 0.5)
    owner = plan.owner(pos)
    crushed = 0
    for r in plan.regions:
        mine = pos[plan.training_mask(r.id, pos, owner)]
        inner = mine[np.linalg.norm(mine, axis=1) < 30]  # the galaxy proper
        centre, radius = plan.position_map(r.id)
        assert radius is None  # k-d regions use the log-radial map of the whole galaxy
        pre = PositionPreprocessing.fit_log_radial(mine, centre, scale=1.0)
        # The log-radial map: the inner galaxy spans more than a tenth of the unit scale on
        # every axis, whatever lies at 20 Mpc.
        assert float(pre.forward(inner).std(0).min()) > 0.1, r.id
        ball = PositionPreprocessing.fit(mine, r.centre, r.radius)
        crushed += float(ball.forward(inner).std(0).min()) < 0.05
    assert crushed >= 1  # the ball map does crush the regions that hold outliers
    assert (owner >= 0).all()


def test_stellar_mass_per_region_matches_particle_mass_outliers_included(tmp_path) -> None:
    """The far-field demo end to end (tiny CNFs): every region's stars, the regions reaching to
    20 Mpc included, carry its owned particle mass within the compound-Poisson error."""
    threads = torch.get_num_threads()
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump({
        "name": "far-field", "seed": 4,
        "galaxy": {"demo": {"n_particles": 20_000, "components": {**DEFAULT_FRACTIONS,
                                                                  "far_field": 0.003}}},
        "plan": {"target_particles": 5_000},
        "flows": {"kind": "cnf", "hidden_features": 16, "hidden_layers": 2,
                  "cnf": {"rk4_steps": 4},
                  "training": {"max_epochs": 2, "patience_epochs": 2, "batches_per_epoch": 5,
                               "ensemble_size": 1},
                  "threads": 1, "device": "cpu"},
        "upsample": {"mode": "imf", "sampling_fraction": 5e-6, "chunk_rows": 1 << 16},
        "observables": {"magnitude_limit": None},  # every star: the mass accounting
    }))  # fmt: skip
    job = load_job(job_path, output=tmp_path / "run")
    try:
        run_pipeline(job, "ingest", "upsample")
    finally:
        torch.set_num_threads(threads)
    plan = read_plan(tmp_path / "run" / "plan.json")
    particles = read_particle_store(tmp_path / "run" / "particles.zarr")
    far = np.linalg.norm(particles.positions(), axis=1) > 300
    assert far.sum() == round(0.003 / 1.003 * 20_000)  # the outliers are there
    far_regions = set(plan.owner(particles.positions()[far]).tolist())
    data = open_catalog(tmp_path / "run" / "stars.zarr").read(columns=["mass", "region"])
    imf = kroupa2001(0.08, 100.0)
    grid = np.geomspace(0.08, 100.0, 200_001)
    m2 = np.trapezoid(grid**2 * imf.pdf(grid), grid)  # <m^2> per star
    f = 5e-6
    for r in plan.regions:
        total = float(data["mass"][data["region"] == r.id].astype(np.float64).sum())
        lam = f * r.owned_mass / imf.mean_mass()
        sigma = np.sqrt(lam * m2)  # compound Poisson: Var(sum m) = lambda <m^2>
        assert abs(total - f * r.owned_mass) < 5 * sigma, (r.id, total, f * r.owned_mass, sigma)
    assert far_regions and sum(plan.regions[i].owned_mass for i in far_regions) > 0

    # No star lies beyond its region's farthest training particle: the outer regions' flows
    # reach to infinity in the log-radial map, and put stars out to Mpc before (#12).
    stars = open_catalog(tmp_path / "run" / "stars.zarr").read(columns=["x", "y", "z", "region"])
    radius = np.sqrt(stars["x"] ** 2 + stars["y"] ** 2 + stars["z"] ** 2)
    training = RegionParticles(tmp_path / "run" / "training.zarr", plan)
    for r in plan.regions:
        mine = stars["region"] == r.id
        if mine.any():
            assert radius[mine].max() <= support_radius(training.particles(r.id).pos), r.id
