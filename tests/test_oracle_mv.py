"""The joint 4-view oracle (prior.kind=oracle-mv): its denoiser against a brute-force float64
posterior mean over explicitly built joint samples, its fixed points, why it cannot be two-faced
where the single-view hard oracle can, its SDS and group checks, the CLI/info/bench wiring and a
short stage-1 run."""

import math

import numpy as np
import pytest
import torch

from dreamgs.cameras import make_cameras
from dreamgs.config import load_config
from dreamgs.errors import InputError
from dreamgs.gaussians import save_ply
from dreamgs.priors import PRIOR_KINDS, load_prior
from dreamgs.priors.oracle import OraclePrior, alphas_cumprod, camera_angle, gaussians_rgba_fn, render_references
from dreamgs.priors.oracle_mv import MultiViewOraclePrior, joint_sample_indices

from test_oracle import blob, brute_force_x0

RES = 16


@pytest.fixture(scope="module")
def library():
    kw = dict(elevations=(-15.0, 0.0), n_azimuth=8, radius=2.0, fovy=49.1, resolution=RES)
    return [render_references("red", gaussians_rgba_fn(blob((1.0, 0.0, 0.0))), **kw),
            render_references("blue", gaussians_rgba_fn(blob((0.0, 0.0, 1.0), seed=1)), **kw)]


def group_cams(el, az0):
    return make_cameras([el] * 4, [((az0 + 90 * k + 180) % 360) - 180 for k in range(4)], 2.0, 49.1, RES)


def explicit_joint_samples(library):
    """Every joint sample spelt out: for each reference (asset, elevation, azimuth a, background),
    the 4 views at a, a+90, a+180, a+270 of the same asset, elevation and background, concatenated
    (float64), with the asset index and the first view's camera. Backgrounds alternate white,
    black per camera in render_references."""
    samples, info = [], []
    for k, a in enumerate(library):
        n = len(a.images)
        for i in range(n):
            views = []
            for v in range(4):
                want = (float(a.azimuth[i]) + 90.0 * v) % 360.0
                (j,) = [j for j in range(n) if j % 2 == i % 2 and float(a.elevation[j]) == float(a.elevation[i])
                        and abs((float(a.azimuth[j]) % 360.0) - want) < 1e-6]
                views.append(a.images[j].double().reshape(-1))
            samples.append(torch.cat(views))
            info.append((k, float(a.elevation[i]), float(a.azimuth[i])))
    return torch.stack(samples).numpy(), info


def test_joint_denoiser_matches_brute_force_over_explicit_joint_samples(library):
    samples, info = explicit_joint_samples(library)
    assert len(samples) == 64 and len(joint_sample_indices(library)) == 64
    cams = make_cameras([-10.0] * 4 + [5.0] * 4, [20.0, 110.0, -160.0, -70.0, 170.0, -100.0, -10.0, 80.0],
                        2.0, 49.1, RES)
    g = torch.Generator().manual_seed(0)
    for view_dependent, sigma in ((False, 0.35), (True, 0.35)):
        prior = MultiViewOraclePrior(library, "red", guidance_scale=1.0, view_dependent=view_dependent,
                                     camera_sigma=sigma)
        for t in (50, 400, 750, 950):
            x_t = torch.randn(8, 3, RES, RES, generator=g, dtype=torch.float64) * 0.7
            cond, uncond = prior.log_weights(cams)
            assert cond.shape == uncond.shape == (2, 64)
            x0_c, x0_u = prior.denoise(x_t, t, cond, uncond)
            for gi in range(2):
                el0, az0 = float(cams.elevation[4 * gi]), float(cams.azimuth[4 * gi])
                if view_dependent:
                    ang = [float(camera_angle(torch.tensor(e), torch.tensor(a), torch.tensor(el0), torch.tensor(az0)))
                           for _, e, a in info]
                    lp_c = [(-0.5 * (x / sigma) ** 2 if k == 0 else -math.inf) for (k, _, _), x in zip(info, ang)]
                else:
                    lp_c = [0.0 if k == 0 else -math.inf for k, _, _ in info]
                torch.testing.assert_close(cond[gi], torch.tensor(lp_c, dtype=torch.float64))
                group = x_t[4 * gi:4 * gi + 4]
                for x0, lp in ((x0_c, lp_c), (x0_u, [0.0] * len(info))):
                    want = brute_force_x0(group, t, samples, lp)
                    np.testing.assert_allclose(x0[4 * gi:4 * gi + 4].reshape(-1).numpy(), want, atol=2e-4)


def true_group(library, asset, el, az0, bg=0):
    """A true joint sample: the 4 reference views at az0, az0+90, az0+180, az0+270, float64."""
    a = library[asset]
    idx = []
    for v in range(4):
        want = (az0 + 90.0 * v) % 360.0
        (j,) = [j for j in range(len(a.images)) if j % 2 == bg and float(a.elevation[j]) == el
                and abs(float(a.azimuth[j]) % 360.0 - want) < 1e-6]
        idx.append(j)
    return a.images[idx].double()


@pytest.mark.parametrize("view_dependent", [False, True])
def test_small_t_denoises_a_true_group_to_itself_view_by_view(library, view_dependent):
    prior = MultiViewOraclePrior(library, "blue", view_dependent=view_dependent)
    truth = true_group(library, 1, -15.0, 135.0, bg=1)
    # the four views differ: the group is not one view copied
    assert min(float((truth[i] - truth[j]).abs().max()) for i in range(4) for j in range(i + 1, 4)) > 0.1
    t = 20
    abar = alphas_cumprod()[t]
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_t = abar.sqrt() * truth + (1 - abar).sqrt() * noise
    (x0,) = prior.denoise(x_t, t, prior.log_weights(group_cams(-15.0, 135.0))[0])
    assert float((x0 - truth).abs().max()) < 1e-3


def test_hard_text_joint_prior_is_not_two_faced_where_the_single_view_one_is(library):
    """No view words and no camera (the single-view oracle's prior.view_dependent_prompt=false, the
    joint one's prior.oracle_mv_camera=false): a true group that starts at the back (azimuths 180, 270,
    0, 90), noised at t = 700 (20 noise draws). The joint oracle's denoised views are each nearer
    their own true view than the opposite one (view k+2 is the back of view k), and its posterior
    puts (almost) all weight on joint samples that start at the back. The single-view hard
    oracle, denoising each view alone over every view of the asset, returns a front for a back
    (or the reverse) in some draws: a two-faced group. Measured (16 px, 8 azimuths): joint
    margins >= 270 (sum of squares), single-view 3 of 20 draws two-faced."""
    joint = MultiViewOraclePrior(library, "red", view_dependent=False)
    single = OraclePrior(library, "red", view_dependent=False)
    truth = true_group(library, 0, 0.0, 180.0)
    opposite = truth[[2, 3, 0, 1]]
    cams = group_cams(0.0, 180.0)
    t = 700
    abar = alphas_cumprod()[t]
    joint_margins, single_margins, back_weight = [], [], []
    starts_at_back = ((joint.joint_az + 180.0) % 360.0 - 180.0).abs() > 135.0
    for seed in range(20):
        noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        x_t = abar.sqrt() * truth + (1 - abar).sqrt() * noise
        (xj,) = joint.denoise(x_t, t, joint.log_weights(cams)[0])
        (xs,) = single.denoise(x_t, t, single.log_weights(cams)[0])
        for x0, margins in ((xj, joint_margins), (xs, single_margins)):
            own = ((x0 - truth) ** 2).sum((1, 2, 3))
            other = ((x0 - opposite) ** 2).sum((1, 2, 3))
            margins.append(float((other - own).min()))
        back_weight.append(float(joint.posterior(x_t, t, joint.log_weights(cams)[0])[0][starts_at_back].sum()))
    assert min(joint_margins) > 0, joint_margins
    assert min(back_weight) > 0.99, back_weight
    assert sum(m < 0 for m in single_margins) >= 1, single_margins


def test_sds_gradient_shape_and_group_checks(library):
    prior = MultiViewOraclePrior(library, "red", guidance_scale=5.0, seed=2)
    cams = make_cameras([-10.0] * 4 + [0.0] * 4, [30.0, 120.0, -150.0, -60.0, -170.0, -80.0, 10.0, 100.0],
                        2.0, 49.1, 32)
    images = torch.rand(8, 3, 32, 32, requires_grad=True)
    loss = prior.sds(images, cams, progress=0.3)
    (grad,) = torch.autograd.grad(loss, images)
    assert grad.shape == (8, 3, 32, 32) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of 4"):
        prior.sds(torch.rand(6, 3, 32, 32), make_cameras([0.0] * 6, [0.0] * 6, 2.0, 49.1, 32), 0.3)
    with pytest.raises(ValueError, match="a, a\\+90, a\\+180, a\\+270"):  # not the fixed layout
        prior.sds(torch.rand(4, 3, 32, 32), make_cameras([0.0] * 4, [0.0, 10.0, 20.0, 30.0], 2.0, 49.1, 32), 0.3)
    out = prior.refine(torch.rand(4, 3, 32, 32), make_cameras([-10.0] * 4, [30.0, 120.0, -150.0, -60.0], 2.0, 49.1, 32),
                       0.5, 3)
    assert out.shape == (4, 3, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_refine_restores_a_perturbed_true_group(library):
    prior = MultiViewOraclePrior(library, "red", guidance_scale=1.0, view_dependent=False, seed=1)
    clean = (true_group(library, 0, -15.0, 90.0).float() + 1) / 2
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    out = prior.refine(noisy, group_cams(-15.0, 90.0), strength=0.3, steps=4)
    assert (out - clean).abs().max() < 1e-3


def test_image_mode_identifies_the_asset_and_weights_the_group_camera(library):
    cam = make_cameras(0.0, 0.0, 2.0, 49.1, RES)
    rgb, a = gaussians_rgba_fn(blob((0.0, 0.0, 1.0), seed=1))(cam)
    prior = MultiViewOraclePrior(library, "", ref_image=(rgb + (1 - a)).permute(0, 3, 1, 2), camera_sigma=0.3)
    assert prior.asset == "blue" and "image mode" in prior.describe()
    cond, uncond = prior.log_weights(group_cams(-15.0, 90.0))
    best = cond[0].argmax()
    assert prior.joint_asset[best] == 1 and float(prior.joint_el[best]) == -15.0 and float(prior.joint_az[best]) == 90.0
    assert torch.isinf(cond[0][prior.joint_asset == 0]).all() and torch.isfinite(uncond).all()
    with pytest.raises(InputError, match="family"):
        MultiViewOraclePrior(library, "red", ref_image=rgb.permute(0, 3, 1, 2), unseen="family")


def test_azimuth_grid_must_hold_the_group_layout():
    kw = dict(elevations=(0.0,), n_azimuth=6, radius=2.0, fovy=49.1, resolution=8)
    lib = [render_references("red", gaussians_rgba_fn(blob((1.0, 0.0, 0.0))), **kw)]
    with pytest.raises(InputError, match="multiple of 4"):
        MultiViewOraclePrior(lib, "red")


def tiny_cfg(path, *extra):
    return load_config("text", None, ["prior.kind=oracle-mv", f"prior.asset={path}", "prompt=a thing",
                                      "prior.oracle_azimuths=8", "prior.oracle_resolution=16",
                                      "prior.oracle_elevations=[-15, 0]", *extra])


def test_load_prior_cli_info_and_bench_wiring(tmp_path):
    from dreamgs.bench import Job, job_config
    from dreamgs.cli import build_parser
    from dreamgs.info import info_text, prior_status

    assert "oracle-mv" in PRIOR_KINDS
    path = tmp_path / "thing.ply"
    save_ply(blob((0.0, 1.0, 0.0)), path)
    prior = load_prior(tiny_cfg(path), "cpu")
    assert isinstance(prior, MultiViewOraclePrior) and prior.views_per_sample == 4 and prior.asset == "thing"
    assert prior_status("oracle-mv").found and "oracle-mv" in info_text(use_torch=False)
    assert "oracle-mv" in _text_help(build_parser())
    # the bench: the user's overrides come after its prior.kind=oracle, so prior.kind=oracle-mv wins
    cfg, ov = job_config(Job("dreamgaussian", "text", "hard", "gen:0", 0, ["prior.kind=oracle-mv"], tmp_path))
    assert cfg.prior.kind == "oracle-mv" and cfg.prior.asset == "gen:0" and not cfg.prior.view_dependent_prompt
    # the hard setting drops view words, not the camera: the joint prior still knows where its views are
    assert load_prior(tiny_cfg(path, "prior.view_dependent_prompt=false"), "cpu").view_dependent
    assert not load_prior(tiny_cfg(path, "prior.oracle_mv_camera=false"), "cpu").view_dependent
    with pytest.raises(InputError, match="family"):
        load_prior(load_config("image", None, ["image=x.png", "prior.kind=oracle-mv", f"prior.asset={path}",
                                               "prior.oracle_unseen=family"]), "cpu", torch.ones(1, 3, 16, 16))


def _text_help(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["text"].format_help()
    return ""


def test_short_stage1_run_with_the_joint_oracle(tmp_path):
    from dreamgs.stage1 import Stage1

    path = tmp_path / "thing.ply"
    save_ply(blob((0.0, 1.0, 0.0)), path)
    cfg = tiny_cfg(path, "seed=0", "stage1.iters=30", "stage1.render_sizes=[32]", "stage1.size_milestones=[]",
                   "gaussians.num_points=48", "stage1.batch_size=1", "prior.view_dependent_prompt=false")
    prior = load_prior(cfg, "cpu")
    seen = []
    original = prior.sds

    def spy(images, cams, progress):
        seen.append(images.shape)
        return original(images, cams, progress)

    prior.sds = spy
    s1 = Stage1(cfg, prior, device="cpu")
    model = s1.run(progress=False)
    assert s1.step_count == 30 and len(seen) == 30 and seen[0] == (4, 3, 32, 32)
    assert len(model) > 0 and math.isfinite(s1.last["loss"])
