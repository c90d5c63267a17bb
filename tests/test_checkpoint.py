"""The trainer's non-finite guard and the checkpoint format, at unit level."""

import random

import numpy as np
import pytest
import torch

from dreamgs.checkpoint import (load_checkpoint, prior_generators, restore_prior_generators, save_checkpoint,
                                trainer_state)
from dreamgs.config import Config, to_dict
from dreamgs.errors import InputError, TrainingError
from dreamgs.gaussians import GaussianModel
from dreamgs.train import GaussianTrainer


def make_trainer(seed: int = 0, max_bad_steps: int = 20) -> GaussianTrainer:
    cfg = Config()
    model = GaussianModel.random_ball(50, generator=torch.Generator().manual_seed(seed))
    return GaussianTrainer(model, cfg.gaussians, cfg.densify, seed=seed, max_bad_steps=max_bad_steps)


def noisy_loss(trainer: GaussianTrainer) -> torch.Tensor:
    """A loss that draws from every RNG the checkpoint must restore."""
    p = trainer.model.params
    target = torch.randn(p["means"].shape, generator=trainer.generator)
    jitter = torch.rand(()) + float(np.random.rand()) + random.random()
    return ((p["means"] - target) ** 2).sum() * jitter + p["opacities"].square().sum() + p["sh0"].abs().sum()


def snapshot(trainer: GaussianTrainer) -> dict:
    state = trainer.state_dict()
    return {"params": state["params"], "optimizer": {k: {kk: vv.clone() for kk, vv in v.items()}
                                                     for k, v in state["optimizer"].items()},
            "stats": {k: v.clone() for k, v in state["stats"].items()}}


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b)


@pytest.mark.parametrize("kind", ["nan_loss", "inf_gradient"])
def test_a_non_finite_step_changes_nothing_and_is_counted(kind):
    trainer = make_trainer()
    assert trainer.step(noisy_loss(trainer), [])  # Adam has state now
    before, step = snapshot(trainer), trainer.step_count
    p = trainer.model.params
    if kind == "nan_loss":
        loss = noisy_loss(trainer) * float("nan")
    else:  # finite loss, infinite gradient: d sqrt(x)/dx at 0
        loss = (p["means"] - p["means"].detach()).abs().sqrt().sum()
        assert torch.isfinite(loss)
    assert trainer.step(loss, []) is False
    assert same(snapshot(trainer), before)
    assert trainer.bad_steps == 1 and trainer.step_count == step + 1
    assert all(v.grad is None for v in p.values())


def test_too_many_non_finite_steps_raise():
    trainer = make_trainer(max_bad_steps=2)
    for _ in range(2):
        assert trainer.step(torch.tensor(float("inf"), requires_grad=True), []) is False
    with pytest.raises(TrainingError, match="3 steps had a non-finite loss or gradient \\(limit 2\\)"):
        trainer.step(torch.tensor(float("nan"), requires_grad=True), [])


def test_checkpoint_restores_a_trainer_that_continues_identically(tmp_path):
    torch.manual_seed(0)
    a = make_trainer(seed=3)
    for _ in range(3):
        a.step(noisy_loss(a), [])
    a.step(noisy_loss(a) * float("nan"), [])
    path = save_checkpoint(tmp_path / "c.safetensors", stage="stage1", config=to_dict(Config()), trainer=a)
    for _ in range(3):
        a.step(noisy_loss(a), [])

    torch.manual_seed(123)  # a different process state: the checkpoint must override it
    np.random.seed(5)
    random.seed(5)
    b = make_trainer(seed=99)
    ckpt = load_checkpoint(path)
    assert ckpt.step == 4 and ckpt.stage == "stage1" and ckpt.meta["trainer"]["bad_steps"] == 1
    b.load_state_dict(trainer_state(ckpt))
    for _ in range(3):
        b.step(noisy_loss(b), [])
    assert same(snapshot(a), snapshot(b)) and a.step_count == b.step_count == 7 and b.bad_steps == 1
    assert [g["lr"] for g in a.optimizer.param_groups] == [g["lr"] for g in b.optimizer.param_groups]


class _Prior:
    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)
        self.alias = self.generator
        self._other = torch.Generator().manual_seed(seed + 1)
        self.not_a_generator = 3


def test_prior_generators_are_saved_by_name_and_restored(tmp_path):
    p = _Prior(1)
    assert sorted(prior_generators(p)) == ["_other", "alias", "generator"]
    torch.rand(5, generator=p.generator)
    path = save_checkpoint(tmp_path / "c.safetensors", stage="stage2", config={}, trainer=make_trainer(), prior=p)
    expected = [torch.rand(3, generator=p.generator), torch.rand(3, generator=p._other)]
    q = _Prior(7)
    restore_prior_generators(q, load_checkpoint(path))
    assert torch.equal(torch.rand(3, generator=q.generator), expected[0])
    assert torch.equal(torch.rand(3, generator=q._other), expected[1])


def test_checkpoint_file_is_replaced_atomically(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_checkpoint(tmp_path / "c.safetensors", stage="stage1", config={}, trainer=make_trainer())
    before = path.read_bytes()

    def fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, stage="stage1", config={}, trainer=make_trainer(seed=1))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "not a usable dreamgs checkpoint"),
    (lambda raw: b"", "not a usable dreamgs checkpoint"),
    (lambda raw: raw.replace(b"dreamgs-checkpoint", b"dreamgs-checkpoinX"), "wrong format marker"),
    (lambda raw: raw.replace(b'\\"version\\": 1', b'\\"version\\": 9'), "format version 9"),
])
def test_damaged_checkpoints_are_refused_with_one_line(tmp_path, damage, message):
    path = save_checkpoint(tmp_path / "c.safetensors", stage="stage1", config={}, trainer=make_trainer())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InputError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_inconsistent_tensors_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    trainer = make_trainer()
    trainer.step(noisy_loss(trainer), [])
    path = save_checkpoint(tmp_path / "c.safetensors", stage="stage1", config={}, trainer=trainer)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["optim.means.exp_avg"] = torch.zeros(7, 3)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(InputError, match="optimizer state 'means.exp_avg' does not match"):
        load_checkpoint(path)
