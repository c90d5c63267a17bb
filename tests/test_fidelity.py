"""The eight settings where dreamgs had drifted from DreamGaussian's code (docs/fidelity.md): each
is a config key whose default is the reference's value; one test per item asserts the behaviour."""

import math

import pytest
import torch

from dreamgs.config import load_config
from dreamgs.errors import ConfigError
from dreamgs.gaussians import GaussianModel

SMALL = ["stage1.render_sizes=[8]", "stage1.size_milestones=[]", "stage1.ref_size=16", "seed=1"]


class _Prior:
    """Records what it is shown; zero SDS loss that still keeps the graph (so gradients flow)."""

    def __init__(self, name="recording"):
        self.name, self.images = name, []

    def sds(self, images, cams, progress):
        self.images.append(images)
        return (images * 0.0).sum()

    def refine(self, images, cams, strength, steps, schedule="linear"):
        return images


def _lr(opt, name="means"):
    return next(g["lr"] for g in opt.param_groups if g["name"] == name)


# 1 -- position learning rate (gaussians.spatial_lr_scale) ---------------------------------------

@pytest.mark.parametrize("mode", ["text", "image"])
def test_1_position_lr_is_scaled_by_ten(mode):
    from dreamgs.stage1 import Stage1

    cfg = load_config(mode, None, ["image=x.png", "prompt=x", *SMALL])
    assert cfg.gaussians.spatial_lr_scale == 10.0
    s1 = Stage1(cfg, _Prior(), device="cpu", init=GaussianModel.random_ball(20, 0.5))
    assert _lr(s1.trainer.optimizer) == pytest.approx(1e-2)  # step 0
    assert _lr(s1.trainer.optimizer, "sh0") == pytest.approx(0.01)  # only positions are scaled
    old = Stage1(load_config(mode, None, ["image=x.png", "prompt=x", "gaussians.spatial_lr_scale=1", *SMALL]),
                 _Prior(), device="cpu", init=GaussianModel.random_ball(20, 0.5))
    assert _lr(old.trainer.optimizer) == pytest.approx(1e-3)
    steps = cfg.gaussians.lr_position_steps
    s1.trainer.step_count = steps - 1
    s1.trainer.step(torch.tensor(0.0), [])
    assert _lr(s1.trainer.optimizer) == pytest.approx(2e-4)  # the end of the decay


# 2 -- image-mode elevations (camera.cover_elevation_range) -------------------------------------

@pytest.mark.parametrize("elevation, lo, hi", [(-30.0, -60.0, 30.0), (0.0, -30.0, 30.0), (60.0, -30.0, 80.0)])
def test_2_image_elevations_cover_the_training_range(elevation, lo, hi):
    from dreamgs.stage1 import sample_training_cameras

    cfg = load_config("image", None, ["image=x.png", f"elevation={elevation}"])
    cams = sample_training_cameras(cfg, 4000, 8, "cpu", torch.Generator().manual_seed(0), relative=True)
    el = cams.elevation
    # absolute elevations cover [-30, 30] (and reach out to the input's side, within +-80)
    assert el.min() >= lo - 1e-6 and el.max() <= hi + 1e-6
    assert el.min() < lo + 1.0 and el.max() > hi - 1.0
    from dreamgs.priors.oracle import oracle_elevations

    rings = oracle_elevations(cfg)  # the image oracle's reference rings span the same range
    assert min(rings) == lo and max(rings) == hi
    cfg.camera.cover_elevation_range = False  # the old range: input +- 30
    el = sample_training_cameras(cfg, 4000, 8, "cpu", torch.Generator().manual_seed(0), relative=True).elevation
    assert el.min() >= max(elevation - 30, -80) - 1e-6 and el.max() <= min(elevation + 30, 80) + 1e-6


# 3 -- densification statistics of the reference view (densify.reference_view_stats) -------------

@pytest.mark.parametrize("with_ref", [False, True])
def test_3_densify_stats_ignore_the_reference_render(with_ref):
    from dreamgs.cameras import make_cameras
    from dreamgs.stage1 import ReferenceView, Stage1

    ov = ["image=x.png", "densify.start=1000", "densify.stats_before_start=true", "stage1.batch_size=1",
          f"densify.reference_view_stats={with_ref}", *SMALL]
    cfg = load_config("image", None, ov)
    rgba = torch.rand(16, 16, 4, generator=torch.Generator().manual_seed(0))
    ref = ReferenceView(rgba, make_cameras(0.0, 0.0, 2.0, 49.1, 16))
    model = GaussianModel.random_ball(200, 0.3, opacity=0.5, generator=torch.Generator().manual_seed(0))
    s1 = Stage1(cfg, _Prior(), ref=ref, device="cpu", init=model)
    s1.step()
    # The SDS loss is zero: only the reference render has screen gradients. Its statistics count
    # only when asked for; the novel view is always counted (its visibility), gradient or not.
    assert float(s1.trainer.stats.count.max()) == (2.0 if with_ref else 1.0)
    assert (float(s1.trainer.stats.grad_sum.sum()) > 0) == with_ref


# 4 -- reference-loss warm-up with Stable-Zero123 (stage1.ref_warmup) ----------------------------

@pytest.mark.parametrize("kind, warmup, warmed", [("zero123", "auto", True), ("stable-zero123", "auto", False),
                                                  ("stable-zero123", "on", True), ("zero123", "off", False)])
def test_4_stable_zero123_has_no_warmup(kind, warmup, warmed):
    from dreamgs.cameras import make_cameras
    from dreamgs.stage1 import ReferenceView, Stage1

    cfg = load_config("image", None, ["image=x.png", f"prior.kind={kind}", f"stage1.ref_warmup={warmup}",
                                      "stage1.iters=10", "densify.enabled=false", *SMALL])
    rgba = torch.rand(16, 16, 4, generator=torch.Generator().manual_seed(0))
    s1 = Stage1(cfg, _Prior(kind), ref=ReferenceView(rgba, make_cameras(0.0, 0.0, 2.0, 49.1, 16)), device="cpu")
    s1.step()
    s = cfg.stage1
    full = s.lambda_rgb * s1.last["rgb"] + s.lambda_mask * s1.last["mask"]
    assert s1.last["loss"] == pytest.approx(full * (0.1 if warmed else 1.0), rel=1e-5)
    with pytest.raises(ConfigError, match="ref_warmup"):
        load_config("image", None, ["stage1.ref_warmup=maybe"])


# 5 -- stage-2 reference view (stage2.lambda_ref, stage2.ref_mask) -------------------------------

def test_5_stage2_reference_mask_uses_rendered_alpha_and_view_cosine():
    from dreamgs.cameras import make_cameras
    from dreamgs.mesh.raster import MeshRender
    from dreamgs.stage1 import ReferenceView
    from dreamgs.stage2 import reference_view_loss

    cfg = load_config("image", None, ["image=x.png"])
    assert cfg.stage2.lambda_ref == 1.0 and cfg.stage2.ref_mask == "render"
    H = 4
    cams = make_cameras(0.0, 0.0, 2.0, 49.1, H)  # on the +z axis, looking at the origin
    toward = torch.tensor([0.0, 0.0, 1.0])  # a normal facing this camera
    slanted = torch.tensor([math.sin(math.radians(70)), 0.0, math.cos(math.radians(70))])  # cos 0.34
    normal = torch.zeros(1, H, H, 3)
    normal[0, 0] = toward      # row 0: covered, facing -> counted
    normal[0, 1] = slanted     # row 1: covered, grazing -> not counted
    normal[0, 2] = toward      # row 2: not covered (alpha 0) -> not counted
    alpha = torch.ones(1, H, H, 1)
    alpha[0, 2:] = 0.0
    rgb = torch.zeros(1, H, H, 3)  # black render
    r = MeshRender(rgb=rgb, alpha=alpha, depth=torch.zeros(1, H, H, 1), normal=normal,
                   uv=torch.zeros(1, H, H, 2), face_id=torch.zeros(1, H, H, dtype=torch.long))
    rgba = torch.ones(H, H, 4)  # a white, fully opaque input: the error is 1 wherever counted
    rgba[3:, :, 3] = 0.0  # the input's alpha excludes row 3 only
    ref = ReferenceView(rgba, cams)
    assert reference_view_loss(r, ref, cfg).item() == pytest.approx(H / (H * H))  # row 0 only
    cfg.stage2.ref_mask, cfg.stage2.lambda_ref = "input", 10.0  # the old loss: input alpha, weight 10
    assert reference_view_loss(r, ref, cfg).item() == pytest.approx(10.0 * 3 * H / (H * H))


# 6 -- renders clamped to [0, 1] before SDS (stage1.clamp_render) --------------------------------

@pytest.mark.parametrize("clamp", [True, False])
def test_6_renders_are_clamped_before_sds(clamp):
    from dreamgs.stage1 import Stage1

    cfg = load_config("text", None, ["prompt=x", f"stage1.clamp_render={clamp}", "densify.enabled=false", *SMALL])
    bright = GaussianModel.random_ball(50, 0.3, opacity=0.99, color=3.0, generator=torch.Generator().manual_seed(0))
    prior = _Prior()
    Stage1(cfg, prior, device="cpu", init=bright).step()
    top = float(prior.images[0].detach().max())
    assert (top <= 1.0) if clamp else (top > 1.0)


# 7 -- densification start (densify.start, densify.stats_before_start) ----------------------------

def test_7_text_densifies_from_step_zero_first_round_at_50():
    from dreamgs.train import GaussianTrainer

    text, image = load_config("text"), load_config("image")
    assert (text.densify.start, text.densify.interval) == (0, 50)
    assert (image.densify.start, image.densify.interval) == (100, 100)
    assert not text.densify.stats_before_start and not image.densify.stats_before_start
    rounds = []
    trainer = GaussianTrainer(GaussianModel.random_ball(30, 0.5), text.gaussians, text.densify, seed=0)
    for _ in range(120):
        trainer.step(torch.tensor(0.0), [])
        if trainer.last_densify:
            rounds.append(trainer.step_count)
            trainer.last_densify = {}
    assert rounds == [50, 100]

    # Image mode: statistics are gathered only from step `start` on (the reference's step = ours + 1).
    from dreamgs.cameras import make_cameras
    from dreamgs.render import render

    model = GaussianModel.random_ball(100, 0.3, opacity=0.5, generator=torch.Generator().manual_seed(0))
    trainer = GaussianTrainer(model, image.gaussians, image.densify, seed=0)
    cams = make_cameras(0.0, 0.0, 2.0, 49.1, 16)
    for step_count, expect in ((98, 0.0), (100, 1.0)):  # the 99th step (none), then the 101st
        trainer.step_count = step_count
        out = render(model, cams, background=torch.ones(3))
        trainer.step(out.rgb.mean(), [out])
        assert float(trainer.stats.count.max()) == expect


# 8 -- stage-2 SDEdit schedule (stage2.sdedit) ---------------------------------------------------

def test_8_refine_schedule_calls_the_denoiser_10_then_3_times_and_never_at_zero():
    from dreamgs.cameras import make_cameras
    from dreamgs.priors.base import sdedit_timesteps
    from dreamgs.priors.oracle import OraclePrior
    from dreamgs.stage2 import noise_level, refine_steps

    cfg = load_config("text")
    s2 = cfg.stage2
    assert (s2.sdedit, s2.strength_start, s2.strength_end, s2.ddim_steps) == ("ddim", 0.8, 0.95, 50)
    assert sdedit_timesteps(0.8, 50, "ddim") == [181, 161, 141, 121, 101, 81, 61, 41, 21, 1]
    assert sdedit_timesteps(0.95, 50, "ddim") == [41, 21, 1]
    assert noise_level(cfg, 0) == pytest.approx(0.8 + 0.15 / 50) and noise_level(cfg, 49) == pytest.approx(0.95)
    assert refine_steps(cfg) == 50
    assert sdedit_timesteps(0.2, 5, "linear") == [200, 160, 120, 80, 40]  # the old schedule, without t = 0

    # Through a prior: count the denoiser calls and their timesteps.
    from dreamgs.priors.oracle import AssetReferences

    imgs = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lib = [AssetReferences("a", imgs, torch.zeros(4), torch.tensor([0.0, 90.0, 180.0, -90.0]), ["front"] * 4)]
    prior = OraclePrior(lib, "a", view_dependent=False)
    calls = []
    real = prior.eps_cfg
    prior.eps_cfg = lambda x, t, cams: calls.append(t) or real(x, t, cams)
    cam = make_cameras(0.0, 0.0, 2.0, 49.1, 8)
    for strength, n in ((0.8, 10), (0.95, 3)):
        calls.clear()
        out = prior.refine(torch.rand(1, 3, 8, 8), cam, strength, 50, schedule="ddim")
        assert len(calls) == n and min(calls) == 1 and 0 not in calls and out.shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match="sdedit"):
        load_config("text", None, ["stage2.sdedit=cosine"])
