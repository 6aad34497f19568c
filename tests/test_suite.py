"""`galmock suite` and `galmock generate` on a real demo suite: the paper's MMD trend, resumable
training, the generated galaxy as a pipeline source, and clear refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from galmock.cli import main
from galmock.config import load_job
from galmock.flows.galaxy_training import fit_galaxy_model
from galmock.particles import read_particle_store
from galmock.suite import choose_leave_out, demo_suite

SEED = 5
SUITE = {
    # 10 galaxies over 1.5 dex; small flows for a few epochs (the paper: 14 x 3 x 128, 10 epochs
    # of 95 galaxies).
    "demo": {"n_galaxies": 10, "log_mass_min": 9.5, "log_mass_max": 11.0, "n_particles": 2000},
    "leave_out": 2,
    "layers": 4, "hidden_features": 48, "hidden_layers": 2, "spline_bins": 8,
    "batch_size": 512, "epochs": 6, "learning_rate": 3.0e-3, "threads": 1, "device": "cpu",
    "register_as": "suite-test",
    "report": {"mmd_rows": 2000, "corner_rows": 1000},
}  # fmt: skip


def write_job(tmp_path: Path, name: str = "suite", **sections) -> Path:
    data = {"name": name, "seed": SEED, "output": str(tmp_path / name), "suite": SUITE}
    data.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    registry = tmp / "models.json"
    mp = pytest.MonkeyPatch()
    mp.setenv("GALMOCK_MODEL_REGISTRY", str(registry))
    threads = torch.get_num_threads()
    assert main(["suite", str(write_job(tmp))]) == 0
    yield tmp
    torch.set_num_threads(threads)
    mp.undo()


@pytest.mark.slow
def test_generated_left_out_galaxies_are_closer_to_truth_than_to_mass_extremes(trained):
    report = trained / "suite" / "suite" / "report"
    data = json.loads((report / "mmd.json").read_text())
    assert data["left_out"] == ["demo-03", "demo-07"]  # ranks round(10/3), round(20/3)
    assert (report / "mmd_vs_dlogm.png").stat().st_size > 10_000
    for name in data["left_out"]:
        assert (report / f"corner-{name}.png").stat().st_size > 10_000
    for row in data["summary"]:
        assert abs(row["dlogm_furthest"]) >= 0.8
        # MMD² to the furthest galaxy exceeds that to the true one by > 5 combined standard
        # errors (locally: 13 sigma for seeds 0 and 5 at these sizes).
        assert row["separation_sigma"] > 5
        # And the generated galaxy is statistically close to its truth: MMD² within 4 SE of
        # a truth-vs-truth comparison one mass step away would be too strict for a 6-epoch
        # model; require it below a quarter of the furthest-galaxy MMD².
        assert row["mmd2_true"] < 0.25 * row["mmd2_furthest"]
    # The trend: MMD² of the generated galaxy grows with |Δlog M*| (rank correlation).
    model = [r for r in data["pairs"] if r["kind"] == "model"]
    for name in data["left_out"]:
        mine = sorted((abs(r["dlogm"]), r["mmd2"]) for r in model if r["galaxy"] == name)
        dl, mmd = np.array(mine).T
        rho = np.corrcoef(np.argsort(np.argsort(dl)), np.argsort(np.argsort(mmd)))[0, 1]
        assert rho > 0.7


@pytest.mark.slow
def test_generate_from_registered_model_feeds_the_pipeline(trained, monkeypatch):
    monkeypatch.setenv("GALMOCK_MODEL_REGISTRY", str(trained / "models.json"))
    params = {"stellar_mass_msun": 3.0e10, "tau50_gyr": 7.0, "tau10_gyr": 2.0, "mean_feh": -0.1}
    job = write_job(trained, "gen", galaxy={"source": "model", "model": "suite-test"},
                    generate={"parameters": params, "n_particles": 4000, "batch_rows": 1500})
    assert main(["generate", str(job)]) == 0
    store = read_particle_store(trained / "gen" / "particles.zarr")
    cols = store.load()
    assert len(store) == 4000 and store.attrs["source"] == "model"
    assert np.allclose(cols["mass"].sum(), 3.0e10, rtol=1e-12)
    assert cols["age"].min() >= 0 and cols["age"].max() <= 13.8
    # Deterministic: the ingest path (galaxy.source: model) gives the same particles.
    assert main(["ingest", str(job), "--output", str(trained / "gen2")]) == 0
    again = read_particle_store(trained / "gen2" / "particles.zarr").load()
    assert all(np.array_equal(cols[k], again[k]) for k in cols)
    # The plan stage runs on it.
    assert main(["plan", str(job), "--set", "plan.target_particles=1000"]) == 0
    assert (trained / "gen" / "plan.json").is_file()


def test_training_resumes_bit_for_bit(tmp_path):
    job = load_job(write_job(tmp_path), overrides=[
        "suite.demo.n_galaxies=3", "suite.demo.n_particles=300", "suite.layers=2",
        "suite.hidden_features=8", "suite.hidden_layers=1", "suite.batch_size=128",
    ])  # fmt: skip
    torch.set_num_threads(1)
    galaxies = demo_suite(job.suite.demo, SEED, dict(job.galaxy.demo.components))
    cfg2 = job.suite.model_copy(update={"epochs": 2})
    cfg3 = job.suite.model_copy(update={"epochs": 3})
    # The suite section is both the model's options and its training recipe.
    straight, rec = fit_galaxy_model(galaxies, cfg3, cfg3, SEED, device="cpu")
    work = tmp_path / "work"
    # Stops after epoch 2 (a "kill"), then a killed save's leftovers are tidied on resuming.
    fit_galaxy_model(galaxies, cfg2, cfg2, SEED, workdir=work, device="cpu")
    (work / ".checkpoint.tmp-123").mkdir()
    resumed, rec2 = fit_galaxy_model(galaxies, cfg3, cfg3, SEED, workdir=work, device="cpu")
    assert not (work / ".checkpoint.tmp-123").exists()
    assert rec2["resumed_from_epoch"] == [2] and rec2["steps"] == rec["steps"]
    for (k, a), b in zip(straight.flow.state_dict().items(), resumed.flow.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k


def test_leave_out_by_count_is_interior_and_deterministic(tmp_path):
    cfg = load_job(write_job(tmp_path)).suite.demo.model_copy(
        update={"n_galaxies": 4, "n_particles": 50})
    galaxies = demo_suite(cfg, 1, {"thin_disk": 1.0})
    assert choose_leave_out(galaxies, 2) == ["demo-01", "demo-02"]
    assert choose_leave_out(galaxies, ["demo-00"]) == ["demo-00"]
    masses = [g.parameters["stellar_mass_msun"] for g in galaxies]
    assert np.allclose(np.log10(masses), np.linspace(9.5, 11.0, 4))


@pytest.mark.parametrize(
    ("command", "sections", "message"),
    [
        ("suite", {"suite": {**SUITE, "galaxies": [
            {"name": "a", "source": "table", "path": "/no/such/galaxy.parquet"},
            {"name": "b", "source": "demo"}]}},
         "suite.galaxies[0].path = '/no/such/galaxy.parquet' (a): no such file"),
        ("suite", {"suite": {**SUITE, "leave_out": 9}},
         "suite.leave_out = 9: leaves fewer than 2"),
        ("suite", {"suite": {**SUITE, "leave_out": ["demo-00", "nope"]}},
         "no suite galaxy named ['nope']"),
        ("generate", {"generate": {"parameters": {"stellar_mass_msun": 1e10, "tau50_gyr": 5.0,
                                                  "tau10_gyr": 1.0}}},
         "generate.parameters: missing parameter(s) mean_feh"),
        ("generate", {"galaxy": {"source": "model", "model": "unregistered"},
                      "generate": {"parameters": {"stellar_mass_msun": 1e10, "tau50_gyr": 5.0,
                                                  "tau10_gyr": 1.0, "mean_feh": 0.0}}},
         "galaxy.model = 'unregistered': neither a registered model"),
    ],
)  # fmt: skip
def test_bad_input_exits_1_naming_key_and_leaves_nothing(tmp_path, monkeypatch, capsys, command,
                                                         sections, message):
    monkeypatch.setenv("GALMOCK_MODEL_REGISTRY", str(tmp_path / "models.json"))
    suite = sections.pop("suite", {**SUITE, "demo": {**SUITE["demo"], "n_particles": 50}})
    job = write_job(tmp_path, "bad", suite=suite, **sections)
    assert main([command, str(job)]) == 1
    assert message in capsys.readouterr().err
    run = tmp_path / "bad"
    assert not run.exists() or not any(run.rglob("*")), sorted(run.rglob("*"))
