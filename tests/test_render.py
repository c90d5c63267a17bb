"""The torch rasteriser against an independent per-pixel float64 reference."""

import math

import numpy as np
import pytest
import torch

from dreamgs.cameras import make_cameras, orbit_views
from dreamgs.gaussians import GaussianModel
from dreamgs.render import composite, render


def reference_render(means, quats, scales, opac, colors, viewmat, K, W, H, bg):
    """Brute force: project each Gaussian, then walk every pixel front to back (gsplat's loop)."""
    means, quats, scales = (np.asarray(a, np.float64) for a in (means, quats, scales))
    opac, colors = np.asarray(opac, np.float64), np.asarray(colors, np.float64)
    Rv, tv = np.asarray(viewmat, np.float64)[:3, :3], np.asarray(viewmat, np.float64)[:3, 3]
    fx, fy, cx, cy = K[0][0], K[1][1], K[0][2], K[1][2]
    proj = []
    for i in range(len(means)):
        w, x, y, z = quats[i] / np.linalg.norm(quats[i])
        Rq = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                       [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                       [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        cov = Rq @ np.diag(scales[i] ** 2) @ Rq.T
        p = Rv @ means[i] + tv
        if p[2] <= 0.01:
            continue
        limx = (W - cx) / fx + 0.3 * 0.5 * W / fx, cx / fx + 0.3 * 0.5 * W / fx
        limy = (H - cy) / fy + 0.3 * 0.5 * H / fy, cy / fy + 0.3 * 0.5 * H / fy
        tx = p[2] * min(limx[0], max(-limx[1], p[0] / p[2]))
        ty = p[2] * min(limy[0], max(-limy[1], p[1] / p[2]))
        J = np.array([[fx / p[2], 0, -fx * tx / p[2] ** 2], [0, fy / p[2], -fy * ty / p[2] ** 2]])
        c2 = J @ Rv @ cov @ Rv.T @ J.T + 0.3 * np.eye(2)
        proj.append((p[2], np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy]), np.linalg.inv(c2), i))
    proj.sort(key=lambda t: t[0])
    img, alpha_img, depth_img = np.zeros((H, W, 3)), np.zeros((H, W)), np.zeros((H, W))
    for r in range(H):
        for c in range(W):
            T, acc, dep = 1.0, np.zeros(3), 0.0
            pix = np.array([c + 0.5, r + 0.5])
            for z, m2, conic, i in proj:
                d = m2 - pix
                a = min(0.999, opac[i] * math.exp(-0.5 * d @ conic @ d))
                if a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    break
                acc += colors[i] * a * T
                dep += z * a * T
                T *= 1 - a
            img[r, c] = acc + T * bg
            alpha_img[r, c], depth_img[r, c] = 1 - T, dep
    return img, alpha_img, depth_img


def random_scene(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 0.8
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=dtype) * 2.0 - 4.0)
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.98 + 0.01
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors


@pytest.mark.parametrize("seed,tile_size", [(0, 8), (1, 8), (0, 16), (1, 16)])
def test_torch_rasterizer_matches_bruteforce_float64(seed, tile_size):
    from dreamgs.render import rasterize_torch

    means, quats, scales, opac, colors = random_scene(60, seed)
    cams = make_cameras([-20.0, 10.0], [30.0, -120.0], 2.0, 49.1, 24, 20)  # 24 x 20: partial tiles
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    out = rasterize_torch(means, quats, scales, opac, colors, cams.viewmats.double(), cams.Ks.double(),
                          24, 20, bg, tile_size=tile_size)
    for c in range(2):
        ref_rgb, ref_a, ref_d = reference_render(means, quats, scales, opac, colors, cams.viewmats[c].double(),
                                                 cams.Ks[c].double().tolist(), 24, 20, bg[c].numpy())
        assert ref_a.max() > 0.5  # the scene is visible, so the comparison means something
        np.testing.assert_allclose(out.rgb[c].numpy(), ref_rgb, atol=1e-5)
        np.testing.assert_allclose(out.alpha[c, ..., 0].numpy(), ref_a, atol=1e-5)
        np.testing.assert_allclose(out.depth[c, ..., 0].numpy(), ref_d, atol=1e-5)


def test_tile_size_does_not_change_the_image():
    from dreamgs.render import rasterize_torch

    means, quats, scales, opac, colors = random_scene(300, 3, torch.float32)
    cams = orbit_views(2, -10.0, 2.0, 49.1, 40)
    args = (means, quats, scales, opac, colors, cams.viewmats, cams.Ks, 40, 40, torch.zeros(2, 3))
    a = rasterize_torch(*args, tile_size=16).rgb
    b = rasterize_torch(*args, tile_size=4).rgb
    c = rasterize_torch(*args, tile_size=8, max_elements=1000).rgb  # many small chunks
    assert a.abs().max() > 0.1
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def _composite_autograd(xy, conic, op, feat, px, py):
    """Plain-autograd compositing, the reference for the hand-written backward pass."""
    B, X, Y = px.shape[0], px.shape[1], py.shape[1]
    px = px[:, None, :].expand(B, Y, X).reshape(B, Y * X)  # the grid's pixels in row-major order
    py = py[:, :, None].expand(B, Y, X).reshape(B, Y * X)
    dx = xy[:, None, :, 0] - px[:, :, None]
    dy = xy[:, None, :, 1] - py[:, :, None]
    q = 0.5 * (conic[:, None, :, 0] * dx**2 + conic[:, None, :, 2] * dy**2) + conic[:, None, :, 1] * dx * dy
    a = (op[:, None, :] * torch.exp(-q)).clamp_max(0.999)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    with torch.no_grad():
        keep = torch.cumprod(1 - a, -1) > 1e-4
    a = a * keep
    t = torch.cumprod(1 - a, -1)
    w = a * torch.cat([torch.ones_like(t[..., :1]), t[..., :-1]], -1)
    return torch.bmm(w, feat), t[..., -1]


def test_composite_backward_matches_autograd_and_finite_differences():
    g = torch.Generator().manual_seed(0)
    B, X, Y, K, D = 3, 4, 3, 9, 4
    xy = (torch.rand(B, K, 2, generator=g, dtype=torch.float64) * 6).requires_grad_()
    conic = (torch.tensor([0.8, 0.1, 0.6], dtype=torch.float64)
             + 0.2 * torch.rand(B, K, 3, generator=g, dtype=torch.float64)).requires_grad_()
    op = (torch.rand(B, K, generator=g, dtype=torch.float64) * 0.95 + 0.04).requires_grad_()
    op.data[0, :4] = 1.0  # saturate some alphas so termination and clamping happen
    feat = torch.rand(B, K, D, generator=g, dtype=torch.float64).requires_grad_()
    px = torch.rand(B, X, generator=g, dtype=torch.float64) * 6
    py = torch.rand(B, Y, generator=g, dtype=torch.float64) * 6
    inputs = (xy, conic, op, feat)
    # fast mode (random projections of the Jacobian): the full comparison is against autograd below
    assert torch.autograd.gradcheck(lambda *a: composite(*a, px, py), inputs, fast_mode=True)
    go, gt = torch.randn(B, Y * X, D, dtype=torch.float64), torch.randn(B, Y * X, dtype=torch.float64)
    ours = torch.autograd.grad([(composite(*inputs, px, py)[0] * go).sum() + (composite(*inputs, px, py)[1] * gt).sum()], inputs)
    ref_out, ref_t = _composite_autograd(*inputs, px, py)
    ref = torch.autograd.grad([(ref_out * go).sum() + (ref_t * gt).sum()], inputs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def _dense_autograd_render(means, quats, scales, opac, colors, viewmats, Ks, W, H, bg):
    """Every Gaussian at every pixel, plain autograd through ``_composite_autograd``, no tiles."""
    from dreamgs.render import project_gaussians

    m2d, conics, depths, _, valid = project_gaussians(means, quats, scales, opac, viewmats, Ks, W, H)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=means.dtype), torch.arange(W, dtype=means.dtype), indexing="ij")
    rgb, alpha, depth = [], [], []
    for c in range(len(viewmats)):
        idx = torch.nonzero(valid[c]).squeeze(1)
        idx = idx[torch.argsort(depths[c, idx].detach())]
        feat = torch.cat([colors[idx], depths[c, idx, None]], dim=-1)
        out, t = _composite_autograd(m2d[c, idx][None], conics[c, idx][None], opac[idx][None], feat[None],
                                     xs[:1] + 0.5, ys[:, :1].T + 0.5)
        out, t = out[0].reshape(H, W, -1), t[0].reshape(H, W, 1)
        rgb.append(out[..., :3] + t * bg[c])
        alpha.append(1 - t)
        depth.append(out[..., 3:])
    return torch.stack(rgb), torch.stack(alpha), torch.stack(depth)


@pytest.mark.parametrize("tile_size", [8, 16])
def test_tile_renderer_gradients_match_dense_autograd_float64(tile_size):
    """The tiled, hand-differentiated renderer against plain autograd over every (pixel, Gaussian)."""
    from dreamgs.render import rasterize_torch

    inputs = [t.requires_grad_() for t in random_scene(60, 4)]
    cams = make_cameras([-20.0, 10.0], [30.0, -120.0], 2.0, 49.1, 24, 20)
    vm, Ks = cams.viewmats.double(), cams.Ks.double()
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    w = [torch.randn(2, 20, 24, k, generator=g, dtype=torch.float64) for k in (3, 1, 1)]
    out = rasterize_torch(*inputs, vm, Ks, 24, 20, bg, tile_size=tile_size)
    ours = (out.rgb, out.alpha, out.depth)
    ref = _dense_autograd_render(*inputs, vm, Ks, 24, 20, bg)
    assert ref[1].max() > 0.5
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    loss = lambda imgs: sum((x * wx).sum() for x, wx in zip(imgs, w))  # noqa: E731
    g_ours = torch.autograd.grad(loss(ours), inputs)
    g_ref = torch.autograd.grad(loss(ref), inputs)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g_ours, g_ref):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-5, msg=name)


def test_render_gradients_reach_every_parameter_and_densification_input():
    g = torch.Generator().manual_seed(0)
    model = GaussianModel.random_ball(200, 0.4, opacity=0.3, generator=g)
    model.params["scales"] += torch.rand(200, 3, generator=g)  # anisotropic, so rotation matters
    model.requires_grad_(True)
    cams = orbit_views(3, -10.0, 2.0, 49.1, 32)
    out = render(model, cams, background=torch.ones(3))
    ((out.rgb - 0.2) ** 2).mean().backward()
    for name, p in model.params.items():
        if name == "shN":
            continue  # degree 0: no higher bands
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert out.means2d.grad is not None
    assert out.means2d.grad[out.visible].abs().sum() > 0
    assert out.means2d.grad[~out.visible].abs().sum() == 0


def test_background_shows_where_transparent_and_expected_depth():
    model = GaussianModel.from_points(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]),
                                      opacity=0.99, scales=torch.full((1, 3), 0.05))
    cams = make_cameras(0.0, 0.0, 2.0, 49.1, 33)
    out = render(model, cams, background=torch.tensor([0.0, 0.0, 1.0]), expected_depth=True)
    corner, centre = out.rgb[0, 0, 0], out.rgb[0, 16, 16]
    torch.testing.assert_close(corner, torch.tensor([0.0, 0.0, 1.0]))
    assert centre[0] > 0.9 and centre[2] < 0.1
    assert abs(out.depth[0, 16, 16, 0].item() - 2.0) < 1e-4  # expected depth of the centre Gaussian
