"""The per-region property flow p(age, [Fe/H] | x, v) on the demo galaxy (known chemistry), and
`upsample.properties: flow` through train and upsample."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from galmock.config import default_config, validate_job
from galmock.demo import demo_particles
from galmock.flows.property_flow import (
    fit_property_flow,
    load_property_flow,
    save_property_flow,
    train_property_flow,
)
from galmock.stages import run_stage
from galmock.store import open_catalog

TRAINING = {**default_config()["flows"]["training"], "learning_rate": 3e-3,
            "finetune_learning_rate": 3e-4, "batches_per_epoch": 8, "patience_epochs": 5,
            "max_epochs": 25}
FLOWS = {"training": TRAINING, "threads": 1, "device": "cpu"}
SIZE = {"transforms": 3, "hidden_features": 32, "hidden_layers": 2, "spline_bins": 8}


def job(**sections):
    data = default_config()
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return validate_job(data)


def disk_sample(seed: int, n: int = 40_000):
    cols = demo_particles(n, seed=seed).columns
    pos = np.column_stack([cols["x"], cols["y"], cols["z"]])
    vel = np.column_stack([cols["vx"], cols["vy"], cols["vz"]])
    R = np.hypot(pos[:, 0], pos[:, 1])
    keep = (R > 3) & (R < 13) & (np.abs(pos[:, 2]) < 1.5)
    return pos[keep], vel[keep], cols["age"][keep], cols["feh"][keep]


def slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """OLS slope and its standard error."""
    a = np.column_stack([np.ones_like(x), x])
    coef, res, *_ = np.linalg.lstsq(a, y, rcond=None)
    sigma2 = res[0] / (len(x) - 2)
    return float(coef[1]), float(np.sqrt(sigma2 / ((x - x.mean()) ** 2).sum()))


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pos, vel, age, feh = disk_sample(11)
    cfg = job(flows=FLOWS, upsample={"property_flow": SIZE})
    model = fit_property_flow(pos, vel, {"age": age, "feh": feh}, cfg.upsample.property_flow,
                              cfg.flows.training, cfg.flows.activation, seed=3,
                              runtime=cfg.flows.runtime())
    yield model
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_reproduces_feh_gradient_and_age_distribution(trained):
    pos, vel, age, feh = disk_sample(12)  # held-out particles: the truth to compare with
    props = trained.sample(pos, vel, torch.Generator().manual_seed(4))
    R = np.hypot(pos[:, 0], pos[:, 1])
    thin = (np.abs(pos[:, 2]) < 0.4) & (R > 4) & (R < 12)
    s_true, se_true = slope(R[thin], feh[thin])
    s_flow, se_flow = slope(R[thin], props["feh"][thin])
    # The demo's thin disk has -0.06 dex/kpc plus age and thick-disk mixing terms.
    assert s_true < -0.02
    assert abs(s_flow - s_true) < 4 * np.hypot(se_true, se_flow)
    # Age: mean and spread within 4 standard errors of the truth's.
    n = len(age)
    se_mean = np.hypot(age.std(), props["age"].std()) / np.sqrt(n)
    assert abs(props["age"].mean() - age.mean()) < 4 * se_mean
    se_std = np.hypot(age.std(), props["age"].std()) / np.sqrt(2 * n)
    assert abs(props["age"].std() - age.std()) < 4 * se_std + 0.02 * age.std()
    # The flow conditions on phase space: old thick-disk stars (high |z|) are older than the
    # thin disk in the flow's draws as in the truth.
    high = np.abs(pos[:, 2]) > 1.0
    assert props["age"][high].mean() - props["age"][thin].mean() > 1.0
    assert props["age"].min() >= 0


def test_sampling_is_deterministic_and_survives_save_load(trained, tmp_path):
    pos, vel, _, _ = disk_sample(13, n=3000)
    a = trained.sample(pos, vel, torch.Generator().manual_seed(9))
    b = trained.sample(pos, vel, torch.Generator().manual_seed(9))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    loaded = load_property_flow(save_property_flow(trained, tmp_path / "p"))
    c = loaded.sample(pos, vel, torch.Generator().manual_seed(9))
    assert all(np.array_equal(a[k], c[k]) for k in a)
    assert np.array_equal(loaded.log_prob(np.column_stack([a["age"], a["feh"]]), pos, vel),
                          trained.log_prob(np.column_stack([a["age"], a["feh"]]), pos, vel))


def test_a_current_property_flow_is_kept_and_a_stale_one_retrained(tmp_path):
    pos, vel, age, feh = disk_sample(14, n=3000)
    cfg = job(flows=FLOWS)
    size = cfg.upsample.property_flow.model_copy(update={"hidden_features": 8, "transforms": 1})
    recipe = cfg.flows.training.model_copy(update={"max_epochs": 2})
    target, work = tmp_path / "region-0000-properties", tmp_path / "region-0000-properties.work"

    def train(recipe=recipe):
        path = train_property_flow(target, work, pos, vel, {"age": age, "feh": feh}, size,
                                   recipe, "gelu", seed=5)
        assert path == target and not work.exists()
        return (target / "model.safetensors").stat().st_mtime_ns

    first = train()
    assert train() == first  # current: kept
    # An artifact written before flows.training existed records the flat flows settings.
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["training"]["config"] = {
        "flows": {"kind": "cnf", "activation": "gelu", "rk4_steps": 20, "radial_c": 1.000001,
                  **recipe.loop_settings()},
        "size": size.model_dump(mode="json"),
    }
    (target / "manifest.json").write_text(json.dumps(manifest))
    assert train() == first
    assert train(recipe.model_copy(update={"learning_rate": 1e-3})) != first  # stale: retrained


@pytest.mark.slow
def test_upsample_with_property_flow_is_deterministic(tmp_path):
    cfg = job(
        name="props", seed=2, output=str(tmp_path / "run"),
        galaxy={"demo": {"n_particles": 60_000, "components": {"thin_disk": 1.0}},
                "centre": [-8.122, 0.0, 0.0], "centre_velocity": [0.0, 0.0, 0.0],
                "select_radius_kpc": 2.0},
        plan={"kind": "sphere", "centre": [0.0, 0.0, 0.0], "radius_kpc": 2.0},
        flows={**FLOWS, "kind": "maf", "hidden_features": 16, "hidden_layers": 2,
               "maf": {"transforms": 3},
               "training": {**TRAINING, "ensemble_size": 1, "max_epochs": 10}},
        upsample={"properties": "flow", "property_flow": SIZE, "mode": "fixed",
                  "stars_per_particle": 2, "batch_rows": 4000, "chunk_rows": 8192},
        observables={"enabled": False},  # fixed-mode stars have no photometry
    )  # fmt: skip
    for stage in ("ingest", "plan", "train", "upsample"):
        run_stage(cfg, stage)
    run = tmp_path / "run"
    assert (run / "models" / "region-0000-properties" / "manifest.json").is_file()
    stars = open_catalog(run / "stars.zarr")
    first = {k: stars.array(k)[:] for k in ("age", "feh", "x", "parent_id")}
    # Properties are drawn, not inherited: (nearly) every star has its own [Fe/H].
    assert len(np.unique(first["feh"])) > 0.9 * len(first["feh"])
    shutil.rmtree(run / "stars.zarr")
    run_stage(cfg, "upsample")
    again = open_catalog(run / "stars.zarr")
    for k, v in first.items():
        assert np.array_equal(v, again.array(k)[:]), k
