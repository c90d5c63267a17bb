"""Metrics against closed forms and brute force."""

import math

import numpy as np
import pytest
import torch

from dreamgs.mesh.core import Mesh
from dreamgs.metrics import chamfer_distance, nearest_distances, psnr, sample_surface


def test_psnr_closed_form_and_mask():
    a = torch.zeros(2, 8, 8, 3)
    b = torch.full((2, 8, 8, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-5)  # mse 0.01 (0.1 is inexact in float32)
    assert psnr(a, a) == math.inf
    b2 = b.clone()
    b2[:, :4] = 0.5  # the top half differs by 0.5
    mask = torch.zeros(2, 8, 8, 1, dtype=torch.bool)
    mask[:, 4:] = True
    assert psnr(a, b2, mask) == pytest.approx(20.0, abs=1e-5)
    assert psnr(a, b2, ~mask) == pytest.approx(-10 * math.log10(0.25), abs=1e-9)
    assert psnr(a * 255, b * 255, max_val=255.0) == pytest.approx(20.0, abs=1e-5)


def _sphere_points(n, radius, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return p / p.norm(dim=1, keepdim=True) * radius


def test_chamfer_brute_force_and_concentric_spheres():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(300, 3, generator=g), torch.rand(170, 3, generator=g)
    A, B = a.double().numpy(), b.double().numpy()
    d = np.sqrt(((A[:, None] - B[None]) ** 2).sum(-1))
    ref = (d.min(1).mean() + d.min(0).mean()) / 2
    assert chamfer_distance(a, b, chunk=64) == pytest.approx(ref, rel=1e-9)
    np.testing.assert_allclose(nearest_distances(a, b, chunk=7).numpy(), d.min(1), rtol=1e-9)
    # Dense samplings of concentric spheres: nearest distances tend to the radius difference.
    s1, s2 = _sphere_points(8000, 0.5, 1), _sphere_points(8000, 0.6, 2)
    assert chamfer_distance(s1, s2) == pytest.approx(0.1, abs=0.004)
    assert chamfer_distance(s1, s1) < 1e-7


def _two_triangles():
    # Two triangles with areas 1/2 and 3/2.
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [8, 0, 0], [5, 0, 1]])
    return Mesh(v, torch.tensor([[0, 1, 2], [3, 4, 5]]))


def test_sample_surface_area_weighted_and_uniform():
    mesh = _two_triangles()
    pts, face = sample_surface(mesh, 40000, torch.Generator().manual_seed(0), return_faces=True)
    frac = (face == 1).double().mean().item()
    assert frac == pytest.approx(0.75, abs=0.01)
    # Points lie on their triangles and are uniform: the mean is the centroid.
    p0 = pts[face == 0].double()
    assert (p0[:, 2].abs() < 1e-6).all() and (p0[:, 0] >= -1e-6).all() and (p0[:, 1] >= -1e-6).all()
    assert (p0[:, 0] + p0[:, 1] <= 1 + 1e-6).all()
    torch.testing.assert_close(p0.mean(0), torch.tensor([1 / 3, 1 / 3, 0.0], dtype=torch.float64), atol=0.01,
                               rtol=0)
    p1 = pts[face == 1].double()
    torch.testing.assert_close(p1.mean(0), torch.tensor([6.0, 0.0, 1 / 3], dtype=torch.float64), atol=0.03,
                               rtol=0)
    # Uniform density: the fraction below the triangle's mid-line x + y < 1/2 is 1/4 of the area.
    assert ((p0[:, 0] + p0[:, 1]) < 0.5).double().mean().item() == pytest.approx(0.25, abs=0.015)
    # Same generator seed, same points.
    again = sample_surface(mesh, 40000, torch.Generator().manual_seed(0))
    assert torch.equal(pts, again)


def test_mean_saturation_is_the_alpha_weighted_hsv_saturation():
    import colorsys

    from dreamgs.metrics import mean_saturation

    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 5, 4, 3, generator=g)
    rgb[0, 0, 0] = 0.0  # black: saturation 0
    alpha = torch.rand(2, 5, 4, 1, generator=g)
    sats = torch.tensor([colorsys.rgb_to_hsv(*px.tolist())[1] for px in rgb.reshape(-1, 3)], dtype=torch.float64)
    w = alpha.reshape(-1).double()
    assert mean_saturation(rgb, alpha) == pytest.approx(float((sats * w).sum() / w.sum()), rel=1e-12)
    grey = torch.full((1, 3, 3, 3), 0.4)
    assert mean_saturation(grey, torch.ones(1, 3, 3, 1)) == 0.0
    vivid = torch.tensor([1.0, 0.0, 0.0]).expand(1, 3, 3, 3)
    assert mean_saturation(vivid, torch.ones(1, 3, 3, 1)) == 1.0
    assert math.isnan(mean_saturation(vivid, torch.zeros(1, 3, 3, 1)))


def test_bench_scores_saturation_against_the_truth(monkeypatch):
    from types import SimpleNamespace

    import dreamgs.evaluate as ev
    from dreamgs import bench

    monkeypatch.setattr(ev, "pose_offset", lambda *a, **k: 0.0)  # needs a mesh; not what is tested here
    g = torch.Generator().manual_seed(1)
    rgb, alpha = torch.rand(2, 8, 8, 3, generator=g), torch.ones(2, 8, 8, 1)
    truth = SimpleNamespace(rgb=rgb, alpha=alpha, mesh=None, cams=None, pose_cache={})
    same = bench.score_views(rgb, alpha, truth)
    paler = bench.score_views(0.5 + 0.5 * rgb, alpha, truth)  # mixed with white: less saturated
    assert same["saturation_delta"] == 0.0
    assert paler["saturation_delta"] < -0.05
    assert "saturation_delta" in dict(bench.METRICS)
