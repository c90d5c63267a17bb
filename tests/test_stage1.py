"""Stage 1 end to end: real (tiny, random) priors through the real loading code, and the
oracle prior's measured quality against the true asset."""

import json

import pytest
import torch

from dreamgs.pipeline import generate
from tiny_models import build_tiny_sd, build_tiny_zero123, tiny_config

TINY_RUN = ("stage1.iters=6", "stage1.batch_size=2", "stage1.render_sizes=[32, 48]", "stage1.size_milestones=[0.5]",
            "stage1.ref_size=32", "gaussians.num_points=300", "densify.start=2", "densify.interval=2",
            "export.video=false", "stage2.enabled=false", "device=cpu")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory):
    return build_tiny_zero123(tmp_path_factory.mktemp("z123"))


def _losses(events):
    return [e["loss"] for e in events if e.get("stage") == "stage1"]


def test_text_run_with_tiny_stable_diffusion(tiny_sd, tmp_path):
    cfg = tiny_config("sd", tiny_sd, overrides=TINY_RUN + ("seed=3",))
    events = []
    res = generate(config=cfg, run_dir=tmp_path / "run", on_progress=events.append, progress=False)
    losses = _losses(events)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert res.summary["bad_steps"] == 0 and res.seed == 3
    assert (tmp_path / "run" / "model.ply").stat().st_size > 0
    assert (tmp_path / "run" / "seed.txt").read_text().strip() == "3"
    assert "Stable Diffusion" in res.summary["prior"] or "sd" in res.summary["prior"].lower()


@pytest.mark.parametrize("kind", ["zero123", "stable-zero123"])
def test_image_run_with_tiny_zero123(tiny_zero123, tmp_path, kind):
    cfg = tiny_config(kind, tiny_zero123, overrides=TINY_RUN + ("seed=4",))
    events = []
    res = generate(image="examples/images/anya_rgba.png", config=cfg, run_dir=tmp_path / "run",
                   on_progress=events.append, progress=False)
    losses = _losses(events)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert res.summary["bad_steps"] == 0
    assert (tmp_path / "run" / "input_rgba.png").is_file()


def test_same_seed_same_result_and_drawn_seed_recorded(tmp_path):
    ov = list(TINY_RUN) + ["prior.kind=oracle", "prior.oracle_azimuths=8", "prior.oracle_resolution=32"]
    a = generate("a mug", overrides=ov + ["seed=11"], run_dir=tmp_path / "a", progress=False)
    b = generate("a mug", overrides=ov + ["seed=11"], run_dir=tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.ply").read_bytes() == (tmp_path / "b" / "model.ply").read_bytes()
    c = generate("a mug", overrides=ov, run_dir=tmp_path / "c", progress=False)
    recorded = int((tmp_path / "c" / "seed.txt").read_text())
    assert recorded == c.seed
    cfg_text = (tmp_path / "c" / "config.yaml").read_text()
    assert f"seed: {recorded}" in cfg_text
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["seed"] == recorded
