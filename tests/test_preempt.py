"""Preemption signals: flags inside the stage, restored handlers, training stops after a
checkpoint and resumes to the weights of an uninterrupted run."""

import os
import signal

import pytest
import torch

from galmock import preempt
from galmock.config import FlowsConfig, default_config
from galmock.parallel.mpi import SerialComm
from galmock.train import fit_density_flow, new_flow


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config() -> FlowsConfig:
    data = default_config()["flows"]
    data.update(hidden_features=8, hidden_layers=1, rk4_steps=2, patience_epochs=2,
                max_epochs=4, batches_per_epoch=2, ensemble_size=1, checkpoint_every_epochs=3,
                device="cpu")  # fmt: skip
    return FlowsConfig(**data)


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
    reference = new_flow("cnf", 3, 0, cfg, seed=5)
    ref_report = fit_density_flow(reference, x, None, cfg, seed=5, label="position")

    ckpt = tmp_path / "position.ckpt"
    flow = new_flow("cnf", 3, 0, cfg, seed=5)
    with preempt.handling():
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(preempt.Preempted, match="checkpointed at epoch 1"):
            fit_density_flow(flow, x, None, cfg, seed=5, checkpoint_dir=ckpt, label="position")
    # The checkpoint is from the epoch the signal interrupted, not the periodic one (every 3).
    assert (ckpt / "state.json").is_file()
    assert '"epoch": 1' in (ckpt / "state.json").read_text()

    resumed = new_flow("cnf", 3, 0, cfg, seed=5)
    report = fit_density_flow(resumed, x, None, cfg, seed=5, checkpoint_dir=ckpt, label="position")
    assert report.resumed_from_epoch == [1]
    assert report.history == ref_report.history
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
