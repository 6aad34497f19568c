"""The shared checkpoint format: round trip, refusal of other inputs, and recovery from what a
kill during the atomic swap leaves behind."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from galmock.flows.checkpoint import (
    checkpoint_location,
    fingerprint,
    restore_checkpoint,
    save_checkpoint,
)

FMT = "test-checkpoint/1"


def parts(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return net, opt, torch.Generator().manual_seed(seed)


def test_round_trip_restores_weights_optimizer_generator_and_extras(tmp_path: Path) -> None:
    net, opt, gen = parts(0)
    best = {k: v + 1 for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "c", FMT, "key", net, opt, gen, {"epoch": 3, "history": [1.5]},
                    {"best": best})
    net2, opt2, gen2 = parts(1)
    found = restore_checkpoint(tmp_path / "c", FMT, "key", net2, opt2, gen2)
    assert found is not None and found.state == {"epoch": 3, "history": [1.5]}
    assert all(torch.equal(found.extra["best"][k], v) for k, v in best.items())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 net2.state_dict().values(), strict=True))
    assert torch.equal(torch.rand(5, generator=gen), torch.rand(5, generator=gen2))
    # Param groups go through JSON (betas come back as a list, as they always have).
    groups, groups2 = opt.state_dict()["param_groups"], opt2.state_dict()["param_groups"]
    assert [g["lr"] for g in groups2] == [g["lr"] for g in groups]
    assert all(torch.equal(opt.state_dict()["state"][0][k], opt2.state_dict()["state"][0][k])
               for k in ("exp_avg", "exp_avg_sq"))


def test_other_inputs_or_formats_start_afresh(tmp_path: Path, caplog) -> None:
    net, opt, gen = parts(0)
    key = fingerprint({"data": "a", "seed": 1})
    assert key == fingerprint({"seed": 1, "data": "a"})  # key order does not matter
    save_checkpoint(tmp_path / "c", FMT, key, net, opt, gen, {})
    with caplog.at_level(logging.WARNING, logger="galmock.flows.checkpoint"):
        assert restore_checkpoint(tmp_path / "c", FMT, fingerprint({}), net, opt, gen) is None
        assert restore_checkpoint(tmp_path / "c", "other/1", key, net, opt, gen) is None
        (tmp_path / "c" / "state.json").write_text("{broken")
        assert restore_checkpoint(tmp_path / "c", FMT, key, net, opt, gen) is None
    assert caplog.text.count("starting afresh") == 3
    assert restore_checkpoint(tmp_path / "none", FMT, key, net, opt, gen) is None


def test_leftovers_of_a_killed_save_are_tidied(tmp_path: Path) -> None:
    net, opt, gen = parts(0)
    save_checkpoint(tmp_path / "c", FMT, "key", net, opt, gen, {"epoch": 1})
    # Killed while writing the next one: a half-written temporary stays behind.
    (tmp_path / ".c.tmp-abc").mkdir()
    assert checkpoint_location(tmp_path / "c") == tmp_path / "c"
    assert not (tmp_path / ".c.tmp-abc").exists()
    # Killed between the swap's two renames: only the previous checkpoint, moved aside.
    os.replace(tmp_path / "c", tmp_path / ".c.old-1")
    shutil.copytree(tmp_path / ".c.old-1", tmp_path / ".c.old-0")  # an older one, too
    found = restore_checkpoint(tmp_path / "c", FMT, "key", *parts(2))
    assert found is not None and found.state == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize("name", ["galmock.flows.training", "galmock.flows.galaxy_training"])
def test_both_training_loops_use_this_module(name: str) -> None:
    module = __import__(name, fromlist=["save_checkpoint"])
    assert module.save_checkpoint is save_checkpoint
    assert module.restore_checkpoint is restore_checkpoint
