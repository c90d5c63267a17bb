"""Gaussian model: initialisation, schedules, SH colour, densification bookkeeping."""

import math

import pytest
import torch

from dreamgs.config import DensifyConfig, GaussianConfig
from dreamgs.gaussians import (DensifyStats, GaussianModel, densify_and_prune, eval_sh, log_linear,
                               make_optimizer, nearest_neighbor_scales, quat_to_rotmat, rgb_to_sh)


@pytest.mark.parametrize("method", ["kdtree", "brute", "auto"])
def test_nearest_neighbor_scales_match_brute_force(method):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(300, 3, generator=g, dtype=torch.float64)
    pts[7] = pts[3]  # a duplicate: its nearest neighbour is at distance 0, not itself
    ours = nearest_neighbor_scales(pts, k=3, chunk=64, method=method)
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    d.fill_diagonal_(float("inf"))
    ref = d.sort(dim=1).values[:, :3].mean(1).sqrt()
    torch.testing.assert_close(ours, ref)
    assert ours.dtype == pts.dtype


def test_nearest_neighbor_scales_of_many_points_on_the_cpu_are_fast():
    """The k-d tree makes a million-point initialisation a matter of seconds (brute force on the
    CPU would take hours); spot-check it against brute force for some of the points."""
    import time

    pts = torch.rand(1_000_000, 3, generator=torch.Generator().manual_seed(1))
    t = time.perf_counter()
    ours = nearest_neighbor_scales(pts)
    assert time.perf_counter() - t < 60
    idx = torch.arange(0, 1_000_000, 99_991)
    d = torch.cdist(pts[idx].double(), pts.double())
    d[torch.arange(len(idx)), idx] = float("inf")
    ref = d.topk(3, dim=1, largest=False).values.square().mean(1).sqrt()
    torch.testing.assert_close(ours[idx].double(), ref, rtol=1e-5, atol=1e-7)


def test_random_ball_init_is_inside_ball_grey_and_low_opacity():
    m = GaussianModel.random_ball(5000, 0.5, opacity=0.1, generator=torch.Generator().manual_seed(0))
    r = m.means.norm(dim=-1)
    assert r.max() <= 0.5 and r.median() > 0.35  # uniform in volume: median radius 0.5 * 0.5**(1/3)
    torch.testing.assert_close(m.colors(), torch.full((5000, 3), 0.5))
    torch.testing.assert_close(m.opacities, torch.full((5000,), 0.1))


def test_log_linear_schedule_closed_form():
    assert abs(log_linear(0, 1e-3, 2e-5, 300) - 1e-3) < 1e-15
    assert abs(log_linear(300, 1e-3, 2e-5, 300) - 2e-5) < 1e-12
    assert abs(log_linear(150, 1e-3, 2e-5, 300) - math.sqrt(1e-3 * 2e-5)) < 1e-12  # geometric mean
    assert abs(log_linear(1000, 1e-3, 2e-5, 300) - 2e-5) < 1e-12


def test_sh_degree1_matches_closed_form():
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 2, 0] = 1.0  # the z band of the red channel
    d = torch.tensor([[0.0, 0.0, 1.0]])
    assert abs(eval_sh(1, coeffs, d)[0, 0].item() - 0.4886025119029199) < 1e-7
    assert abs(eval_sh(1, coeffs, -d)[0, 0].item() + 0.4886025119029199) < 1e-7


def test_quaternion_rotation_matrix_is_orthonormal_and_right_handed():
    q = torch.randn(50, 4, dtype=torch.float64)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(50, dtype=torch.float64))
    # 90 degrees about z maps x to y.
    s = math.sqrt(0.5)
    Rz = quat_to_rotmat(torch.tensor([[s, 0.0, 0.0, s]], dtype=torch.float64))[0]
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


def test_densify_stats_count_every_view():
    stats = DensifyStats.zeros(3, "cpu")
    grad = torch.zeros(2, 3, 2)
    grad[0, 0] = torch.tensor([0.1, 0.0])  # Gaussian 0 seen with a gradient in view 0 only
    grad[1, 1] = torch.tensor([0.0, 0.2])  # Gaussian 1 in view 1 only
    visible = torch.tensor([[True, True, False], [True, True, False]])
    stats.add(grad, visible, width=10, height=20)
    # NDC conversion: x times W/2 = 5, y times H/2 = 10, times 2 views.
    torch.testing.assert_close(stats.count, torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(stats.mean(), torch.tensor([0.1 * 5 * 2 / 2, 0.2 * 10 * 2 / 2, 0.0]))


def test_clone_split_prune_keep_optimizer_state_aligned():
    means = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    scales = torch.tensor([[0.01] * 3, [0.1] * 3, [0.01] * 3, [0.01] * 3])
    m = GaussianModel.from_points(means, torch.rand(4, 3), opacity=0.5, scales=scales)
    m.params["opacities"][3] = -10.0  # nearly transparent: pruned
    opt = make_optimizer(m, GaussianConfig())
    loss = sum((p * (i + 1)).sum() for i, p in enumerate(m.params.values()))
    loss.backward()
    opt.step()
    before = {k: opt.state[p]["exp_avg"].clone() for k, p in m.params.items()}
    pos, sc = m.means.detach().clone(), m.scales.detach().clone()
    stats = DensifyStats(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.ones(4))  # 0 and 1 over threshold
    cfg = DensifyConfig(grad_threshold=0.5, split_scale=0.04, min_opacity=0.01, prune_scale=0.4)
    counts = densify_and_prune(m, opt, stats, cfg, torch.Generator().manual_seed(0))
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "total": 5}
    # Order: originals minus the split parent and the pruned one (0, 2), the clone of 0, two children of 1.
    torch.testing.assert_close(m.means[:3], pos[[0, 2, 0]])
    assert (m.means[3:, 0] - 1.0).abs().max() < 0.6  # children near their parent
    torch.testing.assert_close(m.scales[3:], sc[[1, 1]] / 1.6)
    for k, p in m.params.items():
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
        torch.testing.assert_close(st["exp_avg"][:2], before[k][[0, 2]])  # survivors keep their moments
        assert st["exp_avg"][2:].abs().sum() == 0  # new Gaussians start fresh
    # The optimiser still steps the new tensors.
    (m.means.sum() + m.scales.sum()).backward()
    opt.step()


def test_densify_respects_budget():
    m = GaussianModel.from_points(torch.rand(10, 3), scales=torch.full((10, 3), 0.01), opacity=0.5)
    opt = make_optimizer(m, GaussianConfig())
    stats = DensifyStats(torch.arange(10.0), torch.ones(10))
    cfg = DensifyConfig(grad_threshold=0.5, max_gaussians=13, min_opacity=0.0)
    counts = densify_and_prune(m, opt, stats, cfg)
    assert counts["cloned"] == 3 and len(m) == 13
    # The three highest-gradient Gaussians (7, 8, 9) were cloned.
    torch.testing.assert_close(m.means[10:], m.means[7:10])


def test_sh0_colour_round_trip():
    rgb = torch.rand(20, 3)
    m = GaussianModel.from_points(torch.rand(20, 3), rgb)
    torch.testing.assert_close(m.colors(), rgb)
    torch.testing.assert_close(m.params["sh0"][:, 0], rgb_to_sh(rgb))
