"""Preemption signals: flags inside the stage, restored handlers, training stops after a
checkpoint and resumes to the weights of an uninterrupted run."""

import os
import signal

import pytest
import torch

from galmock import preempt
from galmock.config import FlowsConfig
from galmock.flows.training import fit_density_flow, new_flow
from galmock.parallel.mpi import SerialComm


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config() -> FlowsConfig:
    return FlowsConfig.from_defaults(
        hidden_features=8, hidden_layers=1, cnf={"rk4_steps": 2}, checkpoint_every_epochs=3,
        training={"patience_epochs": 2, "max_epochs": 4, "batches_per_epoch": 2,
                  "ensemble_size": 1},
        device="cpu",
    )


def fit(flow, x, cfg: FlowsConfig, checkpoint_dir=None):
    return fit_density_flow(flow, x, None, cfg.training, seed=5, checkpoint_dir=checkpoint_dir,
                            label="position", runtime=cfg.runtime())


def test_signals_only_set_the_flag_inside_handling() -> None:
    before = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    with preempt.handling():
        assert not preempt.requested() and preempt.reason() is None
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process outside handling()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.requested() and preempt.reason() == "SIGUSR1"
        assert preempt.anywhere(SerialComm())
    assert (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)) == before
    assert not preempt.requested()
    with preempt.handling():  # a new stage starts unflagged
        assert not preempt.requested() and not preempt.anywhere(SerialComm())
    with pytest.raises(SystemExit) as stop:
        preempt.exit_preempted("upsample", "test")
    assert stop.value.code == preempt.EXIT_PREEMPTED == 75


def test_training_checkpoints_and_stops_then_resumes_identically(tmp_path) -> None:
    cfg = small_config()
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(3))
    reference = new_flow(cfg.spec(), 3, 0, seed=5)
    ref_report = fit(reference, x, cfg)

    ckpt = tmp_path / "position.ckpt"
    flow = new_flow(cfg.spec(), 3, 0, seed=5)
    with preempt.handling():
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(preempt.Preempted, match="checkpointed at epoch 1"):
            fit(flow, x, cfg, ckpt)
    # The checkpoint is from the epoch the signal interrupted, not the periodic one (every 3).
    assert (ckpt / "state.json").is_file()
    assert '"epoch": 1' in (ckpt / "state.json").read_text()

    resumed = new_flow(cfg.spec(), 3, 0, seed=5)
    report = fit(resumed, x, cfg, ckpt)
    assert report.resumed_from_epoch == [1]
    assert report.history == ref_report.history
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
