"""Compactness densification (GSGen): a Gaussian fills the gap between two that do not touch."""

import math

import torch

from dreamgs.config import DensifyConfig, load_config
from dreamgs.gaussians import GaussianModel, compactness_gaps, densify_compactness, ellipsoid_radius, \
    make_optimizer, quat_to_rotmat


def _model(means, scales, quats=None):
    n = len(means)
    m = GaussianModel.from_points(torch.tensor(means, dtype=torch.float32),
                                  scales=torch.tensor(scales, dtype=torch.float32))
    if quats is not None:
        m.params["quats"] = torch.tensor(quats, dtype=torch.float32)
    assert len(m) == n
    return m


def test_two_separated_gaussians_get_one_between():
    m = _model([[0, 0, 0], [1, 0, 0]], [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]])
    opt = make_optimizer(m, load_config("text").gaussians)
    out = densify_compactness(m, opt, DensifyConfig(compactness_k=3, compactness_sigmas=1.0))
    assert out == {"filled": 1, "total": 3}
    # the gap is [0.1, 0.8]: its middle, std gap / 6
    assert torch.allclose(m.means[2], torch.tensor([0.45, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(m.scales[2], torch.full((3,), 0.7 / 6), atol=1e-6)
    assert torch.allclose(m.opacities[2], m.opacities[0])
    assert all(p.shape[0] == 3 for p in m.params.values())
    # the optimizer follows the new tensors
    assert all(g["params"][0] is m.params[g["name"]] for g in opt.param_groups)


def test_touching_gaussians_get_none_and_sigmas_matter():
    m = _model([[0, 0, 0], [1, 0, 0]], [[0.5, 0.1, 0.1], [0.6, 0.1, 0.1]])  # long along x: they overlap
    assert densify_compactness(m, None, DensifyConfig())["filled"] == 0
    # at 1 sigma these two are 0.2 apart; at 2 sigmas they overlap
    m = _model([[0, 0, 0], [1, 0, 0]], [[0.4, 0.1, 0.1], [0.4, 0.1, 0.1]])
    assert len(compactness_gaps(m, 3, 1.0)["i"]) == 1
    assert len(compactness_gaps(m, 3, 2.0)["i"]) == 0


def test_rotated_ellipsoid_radius_is_exact():
    # an ellipsoid long along x, turned 90 degrees about z: long along y
    q = torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]], dtype=torch.float64)
    s = torch.tensor([[0.5, 0.1, 0.2]], dtype=torch.float64)
    for u, r in (([0, 1, 0], 0.5), ([1, 0, 0], 0.1), ([0, 0, 1], 0.2)):
        got = ellipsoid_radius(s, q, torch.tensor([u], dtype=torch.float64), 1.0)
        assert abs(float(got) - r) < 1e-9


def test_criterion_against_brute_force_along_the_segment():
    """For random pairs, a gap is reported exactly when some point of the segment between the centres
    lies outside both ellipsoids (Mahalanobis distance > sigmas with explicit inverse covariances),
    and the gap's length matches the measure of that set."""
    g = torch.Generator().manual_seed(0)
    n = 40
    means = torch.rand(n, 3, generator=g) * 2
    scales = 0.02 + 0.25 * torch.rand(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    m = GaussianModel.from_points(means, scales=scales)
    m.params["quats"] = quats
    sig = 1.5
    got = compactness_gaps(m, k=3, sigmas=sig)
    gaps = {(int(i), int(j)): float(d) for i, j, d in zip(got["i"], got["j"], got["gap"])}
    from scipy.spatial import cKDTree

    _, nn = cKDTree(means.double().numpy()).query(means.double().numpy(), k=4)
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in nn[i, 1:]}
    R = quat_to_rotmat(quats.double())
    cov_inv = torch.linalg.inv(R @ torch.diag_embed(scales.double() ** 2) @ R.transpose(-1, -2))
    s = torch.linspace(0, 1, 20001, dtype=torch.float64)
    checked = 0
    for i, j in pairs:
        a, b = means[i].double(), means[j].double()
        p = a + s[:, None] * (b - a)
        mi = ((p - a) @ cov_inv[i] * (p - a)).sum(-1).sqrt()
        mj = ((p - b) @ cov_inv[j] * (p - b)).sum(-1).sqrt()
        outside = (mi > sig) & (mj > sig)
        length = float(outside.double().mean() * (b - a).norm())
        if (i, j) in gaps:
            assert abs(gaps[(i, j)] - length) < 2e-4 * float((b - a).norm()) + 1e-9
            checked += 1
        else:
            assert length < 2e-4 * float((b - a).norm()) + 1e-9
    assert 0 < checked < len(pairs)  # the random set has both kinds


def test_budget_keeps_the_largest_gaps():
    m = _model([[0, 0, 0], [1, 0, 0], [0, 3, 0]], [[0.1] * 3] * 3)
    out = densify_compactness(m, None, DensifyConfig(max_gaussians=4))
    assert out["filled"] == 1
    assert m.means[3, 1] > 1.0  # the gap to the far Gaussian, the largest, was filled


def test_trainer_modes_and_grad_default():
    from dreamgs.train import GaussianTrainer

    cfg = load_config("text", overrides=["densify.interval=1", "densify.mode=compactness"])
    assert load_config("text").densify.mode == "grad"
    m = _model([[0, 0, 0], [1, 0, 0]], [[0.1] * 3, [0.1] * 3])
    t = GaussianTrainer(m, cfg.gaussians, cfg.densify, seed=0)
    loss = (t.model.means ** 2).sum() * 0
    t.step(loss, [])
    assert len(t.model) == 3 and t.last_densify["filled"] == 1
    t2 = GaussianTrainer(_model([[0, 0, 0], [1, 0, 0]], [[0.1] * 3, [0.1] * 3]), cfg.gaussians, cfg.densify, seed=0)
    t2.densify_from = 5  # stage 1's geometry stage: no densification before its end
    t2.step((t2.model.means ** 2).sum() * 0, [])
    assert len(t2.model) == 2
