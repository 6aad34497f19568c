"""Training: the recipe's phases, determinism, resumable checkpoints, errors, fit_ensemble."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from galmock import preempt
from galmock.config import FlowsConfig
from galmock.errors import InputError
from galmock.flows.base import resolve_device
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.training import (
    TrainingError,
    fit_density_flow,
    fit_ensemble,
    fit_phase_space_flow,
    new_flow,
)
from galmock.seeds import derive_seed

REPO = Path(__file__).resolve().parents[1]


# Small tensors: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(kind: str = "cnf", **training) -> FlowsConfig:
    # The paper's likelihood loop (two phases); flow matching has tests of its own below.
    recipe = dict(method="likelihood", patience_epochs=3, max_epochs=12, batches_per_epoch=4,
                  ensemble_size=1, learning_rate=1e-2, finetune_learning_rate=1e-3)
    recipe.update(training)
    return FlowsConfig.from_defaults(
        kind=kind, hidden_features=8, hidden_layers=2, cnf={"rk4_steps": 3},
        maf={"transforms": 2}, nsf={"transforms": 2, "spline_bins": 4}, training=recipe,
        checkpoint_every_epochs=2, device="cpu",
    )


def fit(flow, x, context, cfg: FlowsConfig, seed, checkpoint_dir=None, label="flow"):
    return fit_density_flow(flow, x, context, cfg.training, seed, checkpoint_dir, label,
                            runtime=cfg.runtime())


def particles(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.normal(0, 1.0, (3 * n, 3))
    pos = pos[np.linalg.norm(pos, axis=1) < 2.5][:n] + np.array([4.0, 0.0, 0.0])
    vel = rng.normal(0, 20, (n, 3)) + 50 * (pos - [4.0, 0, 0])[:, [1, 0, 2]]
    return pos, vel


def test_phases_and_early_stopping() -> None:
    cfg = small_config(patience_epochs=2, max_epochs=40)
    x = torch.randn(400, 3) * torch.tensor([1.0, 2.0, 0.5])
    flow = new_flow(cfg.spec(), 3, 0, seed=1)
    report = fit(flow, x, None, cfg, seed=1, label="position")
    main, finetune = report.epochs["main"], report.epochs["finetune"]
    assert 1 <= main <= 40 and 1 <= finetune <= 40
    assert len(report.history) == main + finetune
    assert report.best_validation_loss == min(report.history)
    # The main phase ends `patience` epochs after its best epoch (unless it hit max_epochs).
    best_main = int(np.argmin(report.history[:main]))
    assert main == 40 or main == best_main + 1 + cfg.training.patience_epochs
    # The model keeps the best state: its validation loss is the best one recorded.
    n_val = round(cfg.training.validation_fraction * len(x))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(derive_seed(1, "split")))
    with torch.no_grad():
        val = -flow.log_prob(x[order[:n_val]]).double().mean().item()
    assert val == pytest.approx(report.best_validation_loss, rel=1e-6)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    cfg = small_config(max_epochs=3)
    x = torch.randn(200, 3)
    flows = []
    for seed in (7, 7, 8):
        flow = new_flow(cfg.spec(), 3, 0, seed)
        fit(flow, x, None, cfg, seed)
        flows.append(flow.state_dict())
    assert all(torch.equal(flows[0][k], flows[1][k]) for k in flows[0])
    assert not all(torch.equal(flows[0][k], flows[2][k]) for k in flows[0])
    # The global RNG is not consumed by training.
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    fit(new_flow(cfg.spec(), 3, 0, 1), x, None, cfg, 1)
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("kind", ["cnf", "maf"])
def test_divergent_learning_rate_is_reported_with_the_epoch(kind) -> None:
    # Not every family diverges: nsf trains on (badly) with finite losses at this rate.
    cfg = small_config(kind, learning_rate=1e6)
    flow = new_flow(cfg.spec(), 3, 0, 0)
    with pytest.raises(TrainingError, match=r"non-finite training loss .* at epoch \d+ \(main"):
        fit(flow, torch.randn(200, 3), None, cfg, 0, label="position")


def test_extreme_input_is_reported_with_the_epoch(flow_kind) -> None:
    cfg = small_config(flow_kind)
    flow = new_flow(cfg.spec(), 3, 0, 0)
    x = torch.randn(200, 3)
    x[::7] = 1e20  # finite in float32, but its Gaussian log-density is not
    with pytest.raises(TrainingError, match=r"velocity: non-finite training loss .* at epoch 1 "):
        fit(flow, x, None, cfg, 0, label="velocity")


def test_bad_particles_are_refused() -> None:
    pos, vel = particles(100)
    cfg = small_config()
    bad = vel.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match=r"velocities: 1 rows are not finite \(first: row 3\)"):
        fit_phase_space_flow(pos, bad, cfg.spec(), cfg.training, 0, (4.0, 0.0, 0.0), 2.5)
    with pytest.raises(InputError, match="outside the region's radius"):
        fit_phase_space_flow(pos, vel, cfg.spec(), cfg.training, 0, (4.0, 0.0, 0.0), 1.0)
    with pytest.raises(InputError, match=r"flows\.training\.batches_per_epoch"):
        fit_phase_space_flow(pos[:4], vel[:4], cfg.spec(), cfg.training, 0, (4.0, 0.0, 0.0),
                             2.5)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="not a torch device"):
        resolve_device("tpu-please")


def test_checkpoints_resume_and_mismatches_start_afresh(tmp_path, caplog) -> None:
    cfg = small_config(max_epochs=4, patience_epochs=2)
    x = torch.randn(200, 3)
    ckpt = tmp_path / "position.ckpt"
    first = fit(new_flow(cfg.spec(), 3, 0, 0), x, None, cfg, 0, ckpt)
    meta = json.loads((ckpt / "state.json").read_text())
    assert meta["state"]["phase"] == "done"
    # A finished checkpoint is simply reloaded: same weights, no training.
    flow = new_flow(cfg.spec(), 3, 0, 99)
    again = fit(flow, x, None, cfg, 0, ckpt)
    assert again.resumed_from_epoch == [first.epochs["main"] + first.epochs["finetune"]]
    assert again.history == first.history
    stored = safetensors.torch.load_file(str(ckpt / "state.safetensors"))
    assert all(torch.equal(v, stored[f"best.{k}"]) for k, v in flow.state_dict().items())
    # Other settings (or data, or seed) do not resume someone else's checkpoint.
    with caplog.at_level(logging.WARNING, logger="galmock.flows.checkpoint"):
        other = fit(new_flow(cfg.spec(), 3, 0, 0), x, None,
                    small_config(max_epochs=4, patience_epochs=2, learning_rate=5e-3), 0, ckpt)
    assert other.resumed_from_epoch == []
    assert "starting afresh" in caplog.text


def test_fit_ensemble_end_to_end(tmp_path) -> None:
    pos, vel = particles(400)
    cfg = small_config(ensemble_size=2, max_epochs=3)
    ensemble = fit_ensemble(pos, vel, cfg.spec(), cfg.training, 11, (4.0, 0.0, 0.0), 2.5,
                            tmp_path / "work", tmp_path / "model", runtime=cfg.runtime())
    assert len(ensemble) == 2 and ensemble.kind == "cnf"
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    training = manifest["training"]
    assert training["particles"] == len(pos)
    assert training["config"] == cfg.recipe() and cfg.stale_keys(training["config"]) == []
    assert len(manifest["members"]) == 2
    seeds = {derive_seed(11, "member", k) for k in (0, 1)}
    assert {m["seed"] for m in manifest["members"]} == seeds
    assert manifest["region"]["v_max"] == pytest.approx(np.linalg.norm(vel, axis=1).max())
    # Positions are float64 after the inverse preprocessing and respect the region.
    sample_pos, _, _ = ensemble.sample(2000, torch.Generator().manual_seed(0))
    assert sample_pos.dtype == torch.float64
    offsets = sample_pos - torch.tensor([4.0, 0, 0], dtype=torch.float64)
    assert float(torch.linalg.vector_norm(offsets, dim=1).max()) <= 2.5
    # Trained beats untrained: held-out particles are likelier than under the initial weights.
    test_pos, test_vel = particles(300, seed=9)
    trained = float(ensemble.log_prob(test_pos, test_vel).mean())
    first = ensemble.members[0]
    initial = PhaseSpaceFlow(
        new_flow(cfg.spec(), 3, 0, derive_seed(seeds.pop(), "position", "init")),
        new_flow(cfg.spec(), 3, 3, 0), first.position_pre, first.velocity_pre, first.v_max
    )
    assert trained > float(initial.log_prob(test_pos, test_vel).mean()) + 0.2
    # A repeated run reuses the finished members' checkpoints and gives the same model.
    t0 = time.perf_counter()
    again = fit_ensemble(pos, vel, cfg.spec(), cfg.training, 11, (4.0, 0.0, 0.0), 2.5,
                         tmp_path / "work", runtime=cfg.runtime())
    assert time.perf_counter() - t0 < 20
    assert torch.equal(again.log_prob(test_pos, test_vel), ensemble.log_prob(test_pos, test_vel))


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from galmock.config import FlowsConfig
    from galmock.flows.training import fit_ensemble

    rng = np.random.default_rng(0)
    pos = rng.normal(0, 1.0, (3000, 3))
    pos = pos[np.linalg.norm(pos, axis=1) < 2.5][:800]
    vel = rng.normal(0, 20, (800, 3)) + 50 * pos[:, [1, 0, 2]]
    cfg = FlowsConfig.from_defaults(
        hidden_features=8, hidden_layers=2, cnf={"rk4_steps": 3}, checkpoint_every_epochs=2,
        training={"patience_epochs": 3, "max_epochs": 10, "batches_per_epoch": 4,
                  "ensemble_size": 1, "learning_rate": 1e-2, "finetune_learning_rate": 1e-3},
        device="cpu",
    )
    fit_ensemble(pos, vel, cfg.spec(), cfg.training, 5, (0.0, 0.0, 0.0), 2.5, sys.argv[1],
                 sys.argv[2], runtime=cfg.runtime())
    """
)


def _run(script: Path, work: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(work), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _state(ckpt: Path, key: str):
    try:
        return json.loads((ckpt / "state.json").read_text())["state"][key]
    except (OSError, ValueError, KeyError):
        return None  # absent, or being swapped in right now


@pytest.mark.slow
def test_killed_training_resumes_to_identical_weights(tmp_path) -> None:
    script = tmp_path / "train_region.py"
    script.write_text(KILL_SCRIPT)
    reference = _run(script, tmp_path / "work-a", tmp_path / "model-a")
    output = reference.communicate(timeout=300)[0].decode()
    assert reference.returncode == 0, output

    # Kill (SIGKILL: no cleanup) once the position flow is in its fine-tuning phase.
    victim = _run(script, tmp_path / "work-b", tmp_path / "model-b")
    ckpt = tmp_path / "work-b" / "member-00" / "position.ckpt"
    deadline = time.monotonic() + 300
    while _state(ckpt, "phase") not in ("finetune", "done") and victim.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert victim.poll() is None, "training finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "model-b").exists()
    # None only if the kill landed between the checkpoint swap's two renames (then the resume
    # uses the copy moved aside).
    killed_at = _state(ckpt, "epoch")

    resumed = _run(script, tmp_path / "work-b", tmp_path / "model-b")
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output

    manifest_a = json.loads((tmp_path / "model-a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "model-b" / "manifest.json").read_text())
    resumed_at = manifest_b["members"][0]["resumed_from_epoch"]["position"]
    assert len(resumed_at) == 1 and resumed_at[0] > 0
    assert killed_at is None or resumed_at == [killed_at]
    assert manifest_a["members"][0]["resumed_from_epoch"]["position"] == []
    a = safetensors.torch.load_file(str(tmp_path / "model-a" / "member-00.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "model-b" / "member-00.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resuming"
    assert manifest_a["members"][0]["sha256"] == manifest_b["members"][0]["sha256"]
    assert manifest_a["members"][0]["best_validation_loss"] == (
        manifest_b["members"][0]["best_validation_loss"]
    )


def test_flow_matching_resumes_bit_identically(tmp_path) -> None:
    """A flow-matching run stopped part-way (a checkpoint at epoch 4 of 8) and resumed ends on
    exactly the weights and history of an uninterrupted run: the learning-rate schedule, the
    row draws and the noise all come from checkpointed state."""
    cfg = small_config(method="flow-matching", max_epochs=8, patience_epochs=8,
                       batches_per_epoch=5, batch_rows=64)
    x = torch.randn(300, 3) * torch.tensor([1.0, 2.0, 0.5])
    whole = new_flow(cfg.spec(), 3, 0, 3)
    report = fit(whole, x, None, cfg, 3, label="position")
    assert report.epochs == {"main": 8, "finetune": 0}  # one phase; lr decays to 0 by epoch 8
    half = small_config(method="flow-matching", max_epochs=8, patience_epochs=8,
                        batches_per_epoch=5, batch_rows=64)
    ckpt = tmp_path / "position.ckpt"
    first = new_flow(cfg.spec(), 3, 0, 3)
    with pytest.MonkeyPatch.context() as mp:
        calls = {"n": 0}

        def stop_after_four() -> bool:
            calls["n"] += 1
            return calls["n"] == 4

        mp.setattr("galmock.preempt.requested", stop_after_four)
        with pytest.raises(preempt.Preempted):
            fit(first, x, None, half, 3, ckpt, label="position")
    resumed = new_flow(cfg.spec(), 3, 0, 99)
    again = fit(resumed, x, None, half, 3, ckpt, label="position")
    assert again.resumed_from_epoch == [4]
    assert again.history == report.history
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(),
                                                  resumed.state_dict().values()))
