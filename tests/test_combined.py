"""Text guidance added to an image prior (``prior.text_guidance``): the weighted sum of priors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_RESOLUTION, build_tiny_sd, build_tiny_zero123, tiny_config

from dreamgs.cameras import make_cameras
from dreamgs.checkpoint import prior_generators
from dreamgs.config import load_config
from dreamgs.errors import ConfigError
from dreamgs.pipeline import generate
from dreamgs.priors import load_prior
from dreamgs.priors.base import Prior
from dreamgs.priors.combined import WeightedPriors

R = TINY_RESOLUTION
IMAGE = Path(__file__).resolve().parents[1] / "examples" / "images" / "anya_rgba.png"


class _Fixed(Prior):
    """sds = <images, a>, refine = a fixed image: both in closed form."""

    def __init__(self, name: str, seed: int, views: int = 1):
        self.name, self.views_per_sample = name, views
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        self.r = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)

    def sds(self, images, cams, progress):
        return (images * self.a).sum() * (1 + progress)

    def refine(self, images, cams, strength, steps, *, schedule="linear"):
        return self.r.clone()


def test_sds_is_the_weighted_sum_of_the_parts():
    a, b = _Fixed("zero123", 1), _Fixed("sd", 2)
    both = WeightedPriors([("zero123", 1.0, a), ("sd", 0.3, b)])
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    both.sds(x, None, 0.5).backward()
    torch.testing.assert_close(x.grad, 1.5 * (a.a + 0.3 * b.a), rtol=1e-12, atol=0)
    assert both.refine_weight == pytest.approx(1.3)


def test_stage2_loss_has_the_gradient_of_the_sum_of_the_parts_losses():
    """refine_weight * mse(x, refine(x)) against sum_i w_i * mse(x, r_i), the reference's stage 2."""
    parts = [("zero123", 1.0, _Fixed("zero123", 1)), ("sd", 0.6, _Fixed("sd", 2))]
    both = WeightedPriors(parts)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    (both.refine_weight * F.mse_loss(x, both.refine(x.detach(), None, 0.8, 10))).backward()
    ours = x.grad.clone()
    x.grad = None
    sum(w * F.mse_loss(x, p.r) for _, w, p in parts).backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-12, atol=1e-15)


def test_groups_follow_a_multi_view_part_and_generators_are_named_by_part():
    both = WeightedPriors([("zero123", 1.0, _Fixed("zero123", 1)), ("mvdream", 1.0, _Fixed("mvdream", 2, views=4))])
    assert both.views_per_sample == 4
    assert set(prior_generators(both)) == {"zero123.gen", "mvdream.gen"}
    with pytest.raises(ConfigError, match="view groups of different sizes"):
        WeightedPriors([("a", 1.0, _Fixed("a", 1, views=4)), ("b", 1.0, _Fixed("b", 2, views=5))])


@pytest.mark.parametrize("overrides, message", [
    (["prior.text_guidance=clip", "prompt=a doll"], "expected sd, mvdream or empty"),
    (["prior.text_guidance=sd"], "needs a prompt"),
    (["prior.text_guidance=sd", "prompt=a doll", "prior.text_weight=-1"], "text_weight must be >= 0"),
])
def test_bad_text_guidance_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("image", overrides=["prior.kind=oracle", *overrides])


def test_text_guidance_is_refused_in_text_mode():
    with pytest.raises(ConfigError, match="adds text guidance to an image prior"):
        load_config("text", overrides=["prompt=a doll", "prior.text_guidance=sd"])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_zero123(root / "zero123"), build_tiny_sd(root / "sd")


def test_zero123_with_sd_guidance_loads_both_and_sums_their_losses(tiny_models):
    z, sd = tiny_models
    ref = torch.ones(1, 3, 48, 48)
    ref[:, :, 12:36, 12:36] = 0.3
    cfg = tiny_config("zero123", z, overrides=("seed=4", "prompt=a blue doll", "prior.text_guidance=sd",
                                              f"prior.text_model={sd}", "prior.text_weight=0.5"))
    both = load_prior(cfg, "cpu", ref_image=ref)
    assert isinstance(both, WeightedPriors)
    (_, w1, zero123), (_, w2, text) = both.parts
    assert (w1, w2) == (1.0, 0.5)
    assert (zero123.name, text.name) == ("zero123", "sd")
    assert text.view_dependent is False and text.prompt == "a blue doll"  # the plain prompt, as DreamGaussian
    assert text.guidance_scale == 100  # SD's own default, not Zero123's
    assert {"zero123._cpu_gen", "sd._cpu_gen"} <= set(prior_generators(both))
    cams = make_cameras([0.0, -10.0], [30.0, 200.0], 2.5, 49.1, R)
    x = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(0), requires_grad=True)
    states = [g.get_state() for g in prior_generators(both).values()]
    both.sds(x, cams, 0.3).backward()
    grad = x.grad.clone()
    for g, s in zip(prior_generators(both).values(), states):  # replay the parts alone with the same noise
        g.set_state(s)
    x.grad = None
    (zero123.sds(x, cams, 0.3) + 0.5 * text.sds(x, cams, 0.3)).backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-5, atol=1e-9)
    assert grad.abs().sum() > 0


def test_an_image_run_with_text_guidance_writes_its_outputs(tiny_models, tmp_path):
    z, sd = tiny_models
    ov = ["prior.kind=zero123", f"prior.model={z}", "prior.dtype=fp32", f"prior.resolution={R}",
          "prompt=a girl", "prior.text_guidance=sd", f"prior.text_model={sd}", "stage1.iters=4",
          f"stage1.render_sizes=[{R}]", "stage1.size_milestones=[]", f"stage1.ref_size={R}", "gaussians.num_points=200",
          "stage2.iters=2", f"stage2.render_size={R}", "mesh.grid_resolution=32", "texture.size=64",
          "texture.bake_views=4", f"texture.bake_resolution={R}", "export.video=false", "device=cpu"]
    res = generate(image=IMAGE, overrides=ov, seed=1, run_dir=tmp_path / "run", progress=False)
    assert "zero123" in res.summary["prior"] and "sd" in res.summary["prior"]
    assert (tmp_path / "run" / "model.glb").stat().st_size > 0
