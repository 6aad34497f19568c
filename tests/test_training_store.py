"""training.zarr: each region's training particles, written by plan, read one region at a time.

A rank's memory must not depend on the galaxy (issue #15), so train and upsample read only the
region they work on, never particles.zarr; the rows must be exactly the ones the plan assigns
(owned plus margin, held-out removed, thinned margins weighted), and a store that belongs to
another plan or lost a chunk must be refused, never read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from galmock.config import load_job
from galmock.errors import InputError
from galmock.layout import RunLayout
from galmock.particles import read_particle_store
from galmock.plan import holdout_mask, owned_indices, read_plan
from galmock.regions import RegionParticles
from galmock.stages import stage

DEMO = "jobs/demo.yaml"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    run = tmp_path_factory.mktemp("store") / "run"
    job = load_job(DEMO, output=run, overrides=[
        "galaxy.demo.n_particles=6000", "plan.target_particles=1500",
        "plan.holdout_fraction=0.25", "plan.max_margin_ratio=0.2"])  # fmt: skip
    stage("ingest").run(job)
    stage("plan").run(job)
    return job, RunLayout(run)


def test_each_region_reads_exactly_the_rows_the_plan_assigns(planned) -> None:
    _, layout = planned
    plan = read_plan(layout.plan)
    store = read_particle_store(layout.particles)
    pos, vel, ids = store.positions(), store.velocities(), store["id"][:]
    owner = plan.owner(pos)
    members = owned_indices(owner, len(plan.regions))
    held = holdout_mask(ids, plan.holdout_fraction, plan.holdout_seed)
    data = RegionParticles(layout.training, plan)
    assert any(r.margin_keep < 1 for r in plan.regions)  # thinned regions are covered too
    for r in plan.regions:
        idx = plan.training_indices(r.id, pos, members, ids)
        idx = idx[~held[idx]]
        got = data.training_set(r.id)
        np.testing.assert_array_equal(got.pos, pos[idx])  # same rows, same order, float64
        np.testing.assert_array_equal(got.vel, vel[idx])
        assert len(idx) == r.training_particles
        want = plan.training_weights(r.id, owner[idx])
        assert (got.weight is None) == (want is None)
        if want is not None:
            np.testing.assert_array_equal(got.weight, want)
        np.testing.assert_array_equal(data.particles(r.id).id, ids[idx])


def test_train_and_upsample_never_need_the_whole_particle_store(planned, tmp_path) -> None:
    """With particles.zarr gone, every region's training set still loads: what a rank holds is
    one region's rows, whatever the galaxy's size."""
    _, layout = planned
    copy = tmp_path / "training.zarr"
    shutil.copytree(layout.training, copy)
    plan = read_plan(layout.plan)
    data = RegionParticles(copy, plan)
    assert sum(len(data.training_set(r.id).pos) for r in plan.regions) == \
        sum(r.training_particles for r in plan.regions)


def test_a_store_of_another_plan_is_refused(planned, tmp_path) -> None:
    _, layout = planned
    data = json.loads(layout.plan.read_text())
    data["regions"][0]["margin_kpc"] = [0.1, 0.1, 0.1]  # a plan rerun with other margins
    other = tmp_path / "plan.json"
    other.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"training\.zarr: written for another region plan"):
        RegionParticles(layout.training, read_plan(other))


def test_a_damaged_store_is_refused_and_verify_names_it(planned, tmp_path) -> None:
    _, layout = planned
    run = tmp_path / "run"
    shutil.copytree(layout.root, run)
    (run / "training.zarr" / "x" / "c" / "0").unlink()
    missing = r"1 of \d+ chunk\(s\) missing \(chunk 0\)"
    with pytest.raises(InputError, match=r"training\.zarr/x: " + missing):
        RegionParticles(run / "training.zarr", read_plan(run / "plan.json"))
    copy = load_job(DEMO, output=run, overrides=["galaxy.demo.n_particles=6000"])
    with pytest.raises(InputError, match=r"training\.zarr \(.*" + missing):
        stage("verify").run(copy)
