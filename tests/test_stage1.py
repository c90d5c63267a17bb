"""Stage 1 end to end: real (tiny, random) priors through the real loading code, and the
oracle prior's measured quality against the true asset."""

import json
import math

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


def test_tiny_sd_sds_gradient_moves_the_render_toward_the_denoised_estimate(tiny_sd):
    """The SDS gradient of the real SD code path (tiny random model): through the VAE encoder it is
    exactly the gradient of the latent distance to the prior's denoised estimate x0_hat, scaled by
    (1 - abar) sqrt(abar / (1 - abar)) / B; so gradient descent on the image moves its latents
    toward x0_hat. A sign error, a detached encoder, or a t or noise other than the one x0_hat was
    computed with would fail this."""
    from dreamgs.cameras import make_cameras
    from dreamgs.priors import load_prior

    prior = load_prior(tiny_config("sd", tiny_sd), "cpu")
    cams = make_cameras([0.0, 0.0], [0.0, 180.0], 2.0, 49.1, 64)  # front and back prompts
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = 500
    abar = prior.alphas_cumprod[t]
    a, s = abar.sqrt(), (1 - abar).sqrt()
    with torch.no_grad():
        z = prior.encode_images(images)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
        x_t = a * z + s * noise
        x0_hat = (x_t - s * prior.guided_eps(x_t, t, prior.condition(cams, 2))) / a

    def dist(img):
        return 0.5 * (prior.encode_images(img) - x0_hat).square().sum()

    (g_sds,) = torch.autograd.grad(prior.sds(images, cams, 0.5, t=t, noise=noise), images)
    (g_dist,) = torch.autograd.grad(dist(images), images)
    torch.testing.assert_close(g_sds, (1 - abar) * a / s / 2 * g_dist, rtol=1e-4, atol=1e-5)
    x, dists = images.detach(), [float(dist(images.detach()))]
    for _ in range(3):  # measured: 55765, 54599, 53898, 53400
        x = x.requires_grad_(True)
        (g,) = torch.autograd.grad(prior.sds(x, cams, 0.5, t=t, noise=noise), x)
        x = (x - 0.01 * g).detach()
        dists.append(float(dist(x)))
    assert all(d1 < d0 for d0, d1 in zip(dists, dists[1:])) and dists[-1] < 0.98 * dists[0], dists


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


def test_trainer_accumulates_densify_stats_over_every_render_of_a_step():
    """A stage-1 step in image mode renders a batch of SDS views and the reference view: the
    densification statistics must take the screen gradients of all of them, computed here by hand."""
    from dreamgs.cameras import make_cameras
    from dreamgs.config import Config
    from dreamgs.gaussians import GaussianModel
    from dreamgs.render import render
    from dreamgs.train import GaussianTrainer

    cfg = Config()
    cfg.densify.start = 10**6  # no densification in this step: only the statistics
    cfg.densify.stats_before_start = True
    model = GaussianModel.random_ball(300, 0.5, opacity=0.5, generator=torch.Generator().manual_seed(0))
    trainer = GaussianTrainer(model, cfg.gaussians, cfg.densify, seed=0)
    batch = make_cameras([-10.0, 20.0, 0.0], [0.0, 120.0, -100.0], 2.0, 49.1, 32)
    ref = make_cameras(0.0, 0.0, 2.0, 49.1, 48)
    target = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    outs = [render(model, batch, background=torch.ones(3)), render(model, ref, background=torch.ones(3))]
    loss = ((outs[0].rgb - target) ** 2).mean() + outs[1].rgb.square().mean()
    assert trainer.step(loss, outs)
    expect_sum, expect_count = torch.zeros(len(model)), torch.zeros(len(model))
    for out in outs:
        views, height, width = out.rgb.shape[:3]
        g = out.means2d.grad
        for c in range(views):
            ndc = torch.stack([g[c, :, 0] * width / 2 * views, g[c, :, 1] * height / 2 * views], -1)
            expect_sum += ndc.norm(dim=-1) * out.visible[c]
            expect_count += out.visible[c].float()
    assert expect_count.max() == 4 and (expect_sum > 0).sum() > 100
    torch.testing.assert_close(trainer.stats.grad_sum, expect_sum, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(trainer.stats.count, expect_count)


class _RecordingPrior:
    """A stand-in prior: records what stage 1 shows it and returns a zero SDS loss."""

    name = "recording"

    def __init__(self):
        self.images, self.cams, self.progress = [], [], []

    def sds(self, images, cams, progress):
        self.images.append(images.detach().clone())
        self.cams.append(cams)
        self.progress.append(progress)
        return images.sum() * 0.0

    def refine(self, images, cams, strength, steps, schedule="linear"):
        return images


def test_render_size_steps_up_at_the_milestones():
    from dreamgs.config import Config
    from dreamgs.stage1 import render_size

    cfg = Config()  # 500 steps, 128 -> 256 -> 512 at 30% and 60% (DreamGaussian's schedule)
    sizes = {s: render_size(cfg, s) for s in (0, 149, 150, 299, 300, 499)}
    assert sizes == {0: 128, 149: 128, 150: 256, 299: 256, 300: 512, 499: 512}


def test_backgrounds_are_white_or_black_at_random_and_progress_is_step_over_iters():
    from dreamgs.config import load_config
    from dreamgs.gaussians import GaussianModel
    from dreamgs.stage1 import Stage1

    cfg = load_config("text", None, ["prompt=x", "stage1.iters=200", "stage1.render_sizes=[8]",
                                     "stage1.size_milestones=[]", "densify.enabled=false", "seed=5"])
    clear = GaussianModel.random_ball(20, 0.5, opacity=1e-6, generator=torch.Generator().manual_seed(0))
    prior = _RecordingPrior()
    s1 = Stage1(cfg, prior, device="cpu", init=clear)
    for _ in range(cfg.stage1.iters):
        s1.step()
    means = torch.stack([img.mean() for img in prior.images])
    white = means > 0.999
    assert bool((white | (means < 0.001)).all())  # each background is pure white or pure black
    assert 0.4 < float(white.float().mean()) < 0.6  # white_background_prob = 0.5
    # Progress is step / iters: from 0 up to (iters - 1) / iters, never 1 (the last step's
    # annealed timestep stays one step above t_min).
    assert prior.progress == [step / cfg.stage1.iters for step in range(cfg.stage1.iters)]


def test_image_mode_reference_camera_and_linear_loss_warmup():
    from dreamgs.config import load_config
    from dreamgs.stage1 import Stage1, make_reference

    cfg = load_config("image", None, ["image=x.png", "elevation=-15", "stage1.iters=10", "stage1.warmup_fraction=0.5",
                                      "stage1.ref_size=16", "stage1.render_sizes=[8]", "stage1.size_milestones=[]",
                                      "densify.enabled=false", "seed=2"])
    rgba = torch.rand(40, 40, 4, generator=torch.Generator().manual_seed(0))
    ref = make_reference(rgba, cfg, "cpu")
    assert ref.rgba.shape == (16, 16, 4)
    assert float(ref.cams.elevation) == -15.0 and float(ref.cams.azimuth) == 0.0
    assert float(ref.cams.radius) == cfg.camera.radius and ref.cams.width == 16
    s1 = Stage1(cfg, _RecordingPrior(), ref=ref, device="cpu")
    s = cfg.stage1
    for step in range(s.iters):
        s1.step()
        warm = min(1.0, (step + 1) / (s.warmup_fraction * s.iters))  # 0.2, 0.4, ... 1.0, then 1.0
        expect = warm * (s.lambda_rgb * s1.last["rgb"] + s.lambda_mask * s1.last["mask"])
        assert s1.last["loss"] == pytest.approx(expect, rel=1e-5), step


def test_finite_and_floats_checks_every_tensor_and_reads_values_exactly():
    from dreamgs.train import finite_and_floats

    loss = torch.tensor(0.25)
    grad = torch.ones(4, 3)
    assert finite_and_floats([loss, grad], [loss, torch.tensor([1.5])]) == (True, [0.25, 1.5])
    grad[2, 1] = float("inf")
    ok, vals = finite_and_floats([loss, grad], [torch.tensor(float("nan"))])
    assert ok is False and math.isnan(vals[0])
    assert finite_and_floats([torch.tensor(float("nan")), torch.ones(2)], []) == (False, [])
