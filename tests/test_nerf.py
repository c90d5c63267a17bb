"""DreamFusion's NeRF (representations/nerf.py) against independent references: closed-form
volume rendering, analytic and finite-difference normals, brute-force ray/box chords, and the
shading and camera/light draws' frequencies."""

import math

import pytest
import torch

from dreamgs.cameras import make_cameras
from dreamgs.errors import InputError
from dreamgs.representations.nerf import (PRIMES, BackgroundMLP, NerfModel, NerfSpec, camera_rays, choose_shading,
                                          distortion_loss, load_nerf, opaque_loss, orientation_loss, ray_box,
                                          sample_lights, save_nerf, sparsity_loss, spread_loss, volume_weights)

torch.set_num_threads(1)
SMALL = dict(levels=3, base_resolution=4, max_resolution=12, features=2, log2_table=10, hidden=8, occ_resolution=8)


def constant_field(sigma: float, spec=None) -> NerfModel:
    """Density ``sigma`` everywhere in the box, albedo 0.5: no blob, zero MLP weights, bias softplus^-1(sigma)."""
    spec = spec or NerfSpec(blob_scale=0.0, **SMALL)
    m = NerfModel.create(spec)
    with torch.no_grad():
        for k, v in m.params.items():
            v.zero_()
        m.params["mlp.b1"][0] = math.log(math.expm1(sigma))
    return m


def blob_field(scale=10.0, std=0.3) -> NerfModel:
    """Only the centre blob: density softplus(scale (1 - |x| / std)), radially symmetric."""
    m = NerfModel.create(NerfSpec(blob_scale=scale, blob_std=std, **SMALL))
    with torch.no_grad():
        for k, v in m.params.items():
            v.zero_()
    return m


def random_field(seed=0, activation="softplus") -> NerfModel:
    m = NerfModel.create(NerfSpec(**SMALL, density_activation=activation), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for k, v in m.params.items():
            if k.startswith("grid"):
                v.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    return m


def test_volume_weights_match_the_closed_form_for_a_constant_slab():
    sigma, L, n = 3.0, 1.2, 4000
    delta = torch.full((1, n), L / n, dtype=torch.float64)
    w = volume_weights(torch.full((1, n), sigma, dtype=torch.float64), delta)
    assert float(w.sum()) == pytest.approx(1 - math.exp(-sigma * L), abs=1e-12)  # telescoping: exact
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * (L / n)
    depth = float((w * t).sum())  # integral of t sigma exp(-sigma t) over [0, L]
    exact = (1 / sigma) * (1 - math.exp(-sigma * L)) - L * math.exp(-sigma * L)
    assert depth == pytest.approx(exact, rel=1e-3)


def test_render_opacity_and_depth_of_a_constant_box_match_brute_force_chords():
    sigma = 2.0
    m = constant_field(sigma)
    cams = make_cameras(-20.0, 35.0, 2.5, 49.1, 24)
    out = m.render(cams, torch.zeros(3), samples=512, generator=None)
    o, d = camera_rays(cams)
    o, d = o.reshape(-1, 3).double(), d.reshape(-1, 3).double()
    # brute force: march each ray in tiny steps, find where it is inside the box
    ts = torch.linspace(0, 5, 20001, dtype=torch.float64)
    pts = o[:, None, :] + ts[None, :, None] * d[:, None, :]
    inside = (pts.abs() <= m.spec.bound).all(-1)
    dt = ts[1] - ts[0]
    chord = inside.double().sum(-1) * dt
    entry = torch.where(inside.any(-1), ts[inside.double().argmax(-1)], torch.zeros(()))
    alpha = 1 - torch.exp(-sigma * chord)
    assert torch.allclose(out.alpha.reshape(-1).double(), alpha, atol=3e-3)
    depth = torch.where(chord > 0, entry * alpha + (1 / sigma) * alpha - chord * torch.exp(-sigma * chord), 0.0)
    assert torch.allclose(out.depth.reshape(-1).double(), depth, atol=5e-3)
    assert float(alpha.max()) > 0.9 and float((chord == 0).sum()) > 0  # the view has both cases


def test_ray_box_against_brute_force():
    g = torch.Generator().manual_seed(3)
    o = torch.randn(200, 3, generator=g, dtype=torch.float64) * 2
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=g, dtype=torch.float64), dim=-1)
    near, far, hit = ray_box(o, d, 0.75)
    ts = torch.linspace(0, 8, 40001, dtype=torch.float64)
    inside = ((o[:, None] + ts[None, :, None] * d[:, None]).abs() <= 0.75).all(-1)
    assert torch.equal(hit, inside.any(-1))
    length = inside.double().sum(-1) * (ts[1] - ts[0])
    assert torch.allclose((far - near).clamp_min(0) * hit, length, atol=1e-3)


def test_normals_of_the_blob_point_outwards():
    m = blob_field()
    x = torch.nn.functional.normalize(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.4
    _, _, n = m.density_albedo_normal(x)
    assert torch.allclose(n, x / x.norm(dim=-1, keepdim=True), atol=1e-5)


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_written_out_normals_equal_autograd_and_finite_differences(activation):
    m = random_field(activation=activation)
    x = (torch.rand(300, 3, generator=torch.Generator().manual_seed(1)) * 1.4 - 0.7)
    _, _, n = m.density_albedo_normal(x)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.density(xg).sum(), xg)
    ref = -grad / grad.norm(dim=-1, keepdim=True)
    assert torch.allclose(n, ref, atol=1e-4)
    # central differences in float64 (the field is piecewise smooth: points near a lattice plane may differ)
    md = NerfModel(m.spec, {k: v.detach().double() for k, v in m.params.items()})
    eps = 1e-6
    fd = torch.stack([(md.density(x.double() + eps * e) - md.density(x.double() - eps * e)) / (2 * eps)
                      for e in torch.eye(3, dtype=torch.float64)], -1)
    fd_n = -fd / fd.norm(dim=-1, keepdim=True)
    close = (fd_n - n.double()).norm(dim=-1) < 1e-3
    assert close.float().mean() > 0.97


def test_normals_carry_gradients_to_the_field():
    m = random_field()
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(2)) - 0.5
    _, _, n = m.density_albedo_normal(x)
    n[:, 0].sum().backward()
    assert m.params["grid.0"].grad is not None and float(m.params["grid.0"].grad.abs().sum()) > 0
    assert float(m.params["mlp.w0"].grad.abs().sum()) > 0


def test_dense_levels_read_lattice_values_and_hashed_levels_use_the_spatial_hash():
    spec = NerfSpec(levels=2, base_resolution=4, max_resolution=16, features=1, log2_table=8, hidden=4)
    m = NerfModel.create(spec)
    res = spec.resolutions()
    assert res == [4, 16] and res[0] ** 3 <= 256 < res[1] ** 3  # level 0 dense, level 1 hashed
    with torch.no_grad():
        m.params["grid.0"].copy_(torch.arange(64, dtype=torch.float32)[:, None])
        m.params["grid.1"].copy_(torch.arange(256, dtype=torch.float32)[:, None])
    i, j, k = 1, 2, 3
    x0 = (torch.tensor([[i, j, k]], dtype=torch.float32) / (res[0] - 1) * 2 - 1) * spec.bound
    feat, _ = m.encode(x0)
    feat = feat.detach()
    assert float(feat[0, 0]) == pytest.approx(i + 4 * (j + 4 * k), abs=1e-4)
    i, j, k = 5, 9, 2
    x1 = (torch.tensor([[i, j, k]], dtype=torch.float64) / (res[1] - 1) * 2 - 1) * spec.bound
    feat, _ = m.encode(x1.float())
    feat = feat.detach()
    assert float(feat[0, 1]) == pytest.approx(((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) % 256, abs=1e-2)


def test_occupancy_skipping_leaves_the_render_unchanged():
    m = blob_field(scale=20.0, std=0.3)
    m.update_occupancy(torch.Generator().manual_seed(0))
    cams = make_cameras(-10.0, 20.0, 2.5, 49.1, 32)
    full = m.render(cams, torch.ones(3), samples=96, prune_transmittance=0.0)
    fast = m.render(cams, torch.ones(3), samples=96, occupancy_threshold=0.2)
    assert torch.allclose(full.rgb, fast.rgb, atol=2e-3) and torch.allclose(full.alpha, fast.alpha, atol=2e-3)
    assert float(full.alpha.detach().max()) > 0.99


def test_pruning_behind_opaque_fronts_keeps_every_weight_above_the_threshold():
    """A sharp blob, its surface inside one occupancy cell: pruned and unpruned renders agree to the
    threshold, and so do their facing-away shares. (Pruning by the cells' maximum density, as
    before, skipped the front of the surface: alpha off by 0.27, facing away 4.8 against 5.3 %.)"""
    m = blob_field(scale=100.0, std=0.4)
    m.update_occupancy(torch.Generator().manual_seed(0))
    cams = make_cameras(-15.0, [0.0, 90.0], 2.5, 49.1, 24)
    kw = dict(shading="textureless", light=cams.centers, samples=48, occupancy_threshold=0.2)
    with torch.no_grad():
        full = m.render(cams, torch.ones(3), prune_transmittance=0.0, **kw)
        fast = m.render(cams, torch.ones(3), **kw)
    assert float(full.alpha.max()) > 0.999  # rays reach the pruning threshold
    assert torch.allclose(full.alpha, fast.alpha, atol=1e-3) and torch.allclose(full.rgb, fast.rgb, atol=1e-3)
    assert float(fast.facing_away) == pytest.approx(float(full.facing_away), abs=1e-3)


def test_empty_space_alpha_counts_only_cells_the_renders_skip_and_pulls_their_density_down():
    sigma, count, samples = 2.0, 3000, 64
    m = constant_field(sigma)
    r, b = m.spec.occ_resolution, m.spec.bound
    assert float(m.empty_space_alpha(count, 0.2, samples, torch.Generator().manual_seed(0)).abs().max()) == 0.0
    occ = torch.zeros(r, r, r)
    occ[2, 5, 3] = occ[6, 1, 1] = 10.0  # two occupied cells; renders also keep their 26 neighbours
    m.occupancy = occ
    alpha = m.empty_space_alpha(count, 0.2, samples, torch.Generator().manual_seed(1))
    # Brute force in float64: the same draws, each point's cell against every occupied cell.
    x = ((torch.rand(count, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * b).double()
    cell = ((x + b) / (2 * b) * r).floor().clamp(0, r - 1)
    kept = torch.zeros(count, dtype=torch.bool)
    for c in torch.tensor([[2, 5, 3], [6, 1, 1]], dtype=torch.float64):
        kept |= ((cell - c).abs().amax(-1) <= 1)
    expected = torch.where(kept, 0.0, 1 - math.exp(-sigma * 2 * b / samples)).double()
    assert 0 < int(kept.sum()) < count
    assert torch.allclose(alpha.double(), expected, atol=1e-6)
    alpha.mean().backward()
    assert float(m.params["mlp.b1"].grad[0]) > 0  # descent lowers the density there


def test_lambertian_and_textureless_shading_of_a_sphere_lit_from_the_camera():
    m = blob_field(scale=60.0, std=0.3)  # a near-hard sphere of radius 0.3, albedo 0.5
    cams = make_cameras(0.0, 0.0, 2.5, 30.0, 33)
    light = cams.centers.clone() * 10  # far along the viewing axis: n . l = cos of the normal to the axis
    tl = m.render(cams, torch.zeros(3), shading="textureless", light=light, samples=256)
    lam = m.render(cams, torch.zeros(3), shading="lambertian", light=light, samples=256)
    alb = m.render(cams, torch.zeros(3), shading="albedo", samples=256)
    c = 16
    assert float(tl.rgb[0, c, c, 0]) == pytest.approx(1.0, abs=0.02)  # ambient 0.1 + diffuse 0.9 * 1
    assert float(lam.rgb[0, c, c, 0]) == pytest.approx(0.5, abs=0.01)
    assert float(alb.rgb[0, c, c, 0]) == pytest.approx(0.5, abs=0.01)
    # towards the silhouette the surface turns away from the light: darker, never below ambient * alpha
    row = tl.rgb[0, c, :, 0] / tl.alpha[0, c, :, 0].clamp_min(1e-6)
    inside = tl.alpha[0, c, :, 0] > 0.99
    assert float(row[inside].min()) < 0.8 and float(row[inside].min()) >= 0.1 - 1e-3
    # visible normals face the camera: almost no weight on normals facing away
    assert float(tl.orient) < 1e-2
    # a harder sphere (a thinner shell of rising density): almost no weight on normals facing away
    hard = blob_field(scale=600.0, std=0.3).render(cams, torch.zeros(3), shading="textureless", light=light,
                                                    samples=512)
    assert float(hard.facing_away) < 0.05 < float(tl.facing_away)


def test_shading_draws_have_dreamfusions_frequencies():
    g = torch.Generator().manual_seed(0)
    draws = [choose_shading(100, 10, 0.25, 0.5, g) for _ in range(8000)]
    freq = {s: draws.count(s) / len(draws) for s in ("albedo", "textureless", "lambertian")}
    assert freq["albedo"] == pytest.approx(0.25, abs=0.02)
    assert freq["textureless"] == pytest.approx(0.375, abs=0.02)
    assert freq["lambertian"] == pytest.approx(0.375, abs=0.02)
    assert {choose_shading(5, 10, 0.25, 0.5, g) for _ in range(200)} == {"albedo"}  # ambient only at first


def test_lights_sit_near_the_camera_at_the_drawn_distance():
    cams = make_cameras(torch.zeros(500), torch.linspace(-180, 179, 500), 2.5, 49.1, 8)
    light = sample_lights(cams, (1.6, 3.0), 1.0, torch.Generator().manual_seed(0))
    dist = light.norm(dim=-1)
    assert float(dist.min()) >= 1.6 - 1e-5 and float(dist.max()) <= 3.0 + 1e-5
    cos = (torch.nn.functional.normalize(light, dim=-1) * torch.nn.functional.normalize(cams.centers, dim=-1)).sum(-1)
    assert float(cos.mean()) > 0.8 and float(cos.min()) > -0.5


def test_losses_values():
    a = torch.tensor([0.0, 1.0, 0.5])
    assert float(sparsity_loss(a)) == pytest.approx((0.1 + math.sqrt(1.01) + math.sqrt(0.26)) / 3, rel=1e-6)
    assert float(opaque_loss(torch.tensor([0.5]))) == pytest.approx(math.log(2), rel=1e-6)
    assert float(opaque_loss(torch.tensor([0.0, 1.0]))) < 1e-3
    bg = BackgroundMLP()
    d = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    c = bg(d)
    assert c.shape == (10, 3) and bool(((c > 0) & (c < 1)).all())
    c.sum().backward()
    assert bg.params["bg.w0"].grad is not None


def distortion_brute_force(w, edges):
    """The O(N^2) double sum of mip-NeRF 360's distortion loss over every pair of intervals."""
    s = 0.5 * (edges[..., 1:] + edges[..., :-1])
    delta = edges[..., 1:] - edges[..., :-1]
    pairs = (w[..., :, None] * w[..., None, :] * (s[..., :, None] - s[..., None, :]).abs()).sum((-1, -2))
    return pairs + (w**2 * delta).sum(-1) / 3


def test_distortion_loss_equals_the_brute_force_double_sum_in_float64():
    g = torch.Generator().manual_seed(3)
    w = torch.rand(7, 33, generator=g, dtype=torch.float64)
    w = w / w.sum(-1, keepdim=True) * torch.rand(7, 1, generator=g, dtype=torch.float64)  # opacity below 1
    edges = torch.cumsum(torch.rand(7, 34, generator=g, dtype=torch.float64), -1)  # uneven intervals
    fast = distortion_loss(w, edges)
    assert fast.shape == (7,)
    assert torch.allclose(fast, distortion_brute_force(w, edges), rtol=1e-12, atol=1e-14)
    # the gradients agree too
    wa, wb = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    distortion_loss(wa, edges).sum().backward()
    distortion_brute_force(wb, edges).sum().backward()
    assert torch.allclose(wa.grad, wb.grad, rtol=1e-12, atol=1e-14)


def test_distortion_loss_prefers_one_thin_interval_and_can_tell_spread_weight_apart():
    edges = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)[None]
    one = torch.zeros(1, 10, dtype=torch.float64)
    one[0, 4] = 1.0
    spread = torch.full((1, 10), 0.1, dtype=torch.float64)
    two = torch.zeros(1, 10, dtype=torch.float64)
    two[0, 1] = two[0, 8] = 0.5
    # a single interval of width 0.1: only its own spread, 0.1 / 3
    assert float(distortion_loss(one, edges)) == pytest.approx(0.1 / 3, rel=1e-12)
    # two halves 0.7 apart: 2 * 0.25 * 0.7 + 2 * 0.25 * 0.1 / 3
    assert float(distortion_loss(two, edges)) == pytest.approx(0.35 + 0.05 / 3, rel=1e-12)
    # uniform weight over [0, 1]: sum_ij 0.01 |i - j| / 10 = 0.33, plus 10 * 0.01 * 0.1 / 3: 1/3 (the
    # continuous value: the mean distance of two uniform draws)
    assert float(distortion_loss(spread, edges)) == pytest.approx(1 / 3, rel=1e-12)
    # one thin interval < uniform spread < two far-apart halves (a thin wall seen twice)
    d_one, d_spread, d_two = (float(distortion_loss(v, edges)) for v in (one, spread, two))
    assert d_one < d_spread < d_two
    # the brute-force comparison can fail: the pair sum over unordered pairs (no factor 2) is another value
    s = 0.5 * (edges[..., 1:] + edges[..., :-1])
    w = torch.rand(1, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 10
    halved = (w * (s * (w.cumsum(-1) - w) - ((w * s).cumsum(-1) - w * s))).sum(-1) + (w**2 * 0.1).sum(-1) / 3
    assert float(halved) != pytest.approx(float(distortion_brute_force(w, edges)), rel=1e-3)
    assert float(distortion_loss(w, edges)) == pytest.approx(float(distortion_brute_force(w, edges)), rel=1e-12)


def test_spread_loss_is_the_distortion_of_the_normalised_weights_and_does_not_pull_opacity_down():
    g = torch.Generator().manual_seed(5)
    w = torch.rand(4, 20, generator=g, dtype=torch.float64) / 40
    edges = torch.cumsum(torch.rand(4, 21, generator=g, dtype=torch.float64), -1)
    acc = w.sum(-1)
    assert torch.allclose(spread_loss(w, edges), acc * distortion_brute_force(w / acc[:, None], edges), rtol=1e-12)
    # the plain distortion's gradient points towards less weight everywhere (w . grad > 0); the spread's is
    # orthogonal to scaling all the weights of a ray
    wa, wb = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    distortion_loss(wa, edges).sum().backward()
    spread_loss(wb, edges).sum().backward()
    assert bool(((wa.grad * w).sum(-1) > 1e-6).all())
    assert torch.allclose((wb.grad * w).sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_orientation_loss_through_the_weight_share_has_the_detached_value_and_the_share_gradient():
    g = torch.Generator().manual_seed(7)
    w = torch.rand(3, 12, generator=g, dtype=torch.float64) / 15
    cos = torch.rand(3, 12, generator=g, dtype=torch.float64) * 2 - 1
    f = cos.clamp_min(0) ** 2
    detached, share = orientation_loss(w, cos, "detached"), orientation_loss(w, cos, "share")
    assert torch.allclose(detached, (w * f).sum(-1), rtol=1e-12) and torch.allclose(share, detached, rtol=1e-12)
    ws = w.clone().requires_grad_(True)
    assert not orientation_loss(ws, cos, "detached").requires_grad  # DreamFusion's: the weights are held fixed
    orientation_loss(ws, cos, "share").sum().backward()
    # d/dw_k of A sum_i (w_i / sum_j w_j) f_i with A held fixed: (f_k - sum_i w_i f_i / A), by central differences
    fd = torch.zeros_like(w)
    for r in range(3):
        for k in range(12):
            e = torch.zeros_like(w)
            e[r, k] = 1e-6
            acc = w[r].sum()
            val = lambda v: float(acc * (v[r] / v[r].sum() * f[r]).sum())  # noqa: E731
            fd[r, k] = (val(w + e) - val(w - e)) / 2e-6
    torch.testing.assert_close(ws.grad, fd, rtol=1e-6, atol=1e-9)
    # it moves weight from the samples facing away to those facing the camera, and not towards an empty ray
    assert bool((ws.grad[f > (w * f).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)] > 0).all())
    assert torch.allclose((ws.grad * w).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="orientation weights"):
        orientation_loss(w, cos, "through")


def test_render_reports_the_distortion_of_its_rays_and_a_sharper_field_has_less():
    cams = make_cameras(0.0, 0.0, 2.5, 49.1, 8)
    soft_field, sharp_field = blob_field(scale=2.0, std=0.4), blob_field(scale=60.0, std=0.4)
    assert soft_field.render(cams, samples=32).distortion is None  # not asked for: not computed
    soft, sharp = (f.render(cams, samples=32, distortion="plain") for f in (soft_field, sharp_field))
    assert soft.distortion is not None and float(soft.distortion) > 0
    assert float(sharp.distortion) < float(soft.distortion)
    soft_n, sharp_n = (f.render(cams, samples=32, distortion="normalised") for f in (soft_field, sharp_field))
    assert float(sharp_n.distortion) < float(soft_n.distortion)
    m = random_field()
    out = m.render(cams, samples=16, distortion="plain")
    out.distortion.backward()
    assert m.params["grid.0"].grad is not None and float(m.params["grid.0"].grad.abs().sum()) > 0


def test_background_mlp_fills_empty_rays():
    m = blob_field(scale=20.0, std=0.2)
    cams = make_cameras(0.0, 0.0, 2.5, 49.1, 16)
    out = m.render(cams, bg_fn=lambda d: torch.ones_like(d) * torch.tensor([0.2, 0.4, 0.6]))
    assert torch.allclose(out.rgb[0, 0, 0], torch.tensor([0.2, 0.4, 0.6]), atol=1e-5)


def test_save_and_load_roundtrip(tmp_path):
    m = random_field()
    m.update_occupancy(torch.Generator().manual_seed(0))
    p = save_nerf(m, tmp_path / "nerf.safetensors")
    m2 = load_nerf(p)
    x = torch.rand(20, 3) - 0.5
    assert torch.equal(m.density(x), m2.density(x)) and torch.equal(m.occupancy, m2.occupancy)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a dreamgs NeRF file"):
        load_nerf(bad)


def test_blob_nerf_meshes_to_a_sphere_through_the_shared_extraction():
    from dreamgs.config import MeshConfig

    m = blob_field(scale=10.0, std=0.3)
    # softplus(10 (1 - r / 0.3)) = 5 at r = 0.3 (1 - softplus^-1(5) / 10)
    r_exact = 0.3 * (1 - math.log(math.expm1(5.0)) / 10.0)
    mesh = m.to_mesh(MeshConfig(grid_resolution=48, target_faces=0), 5.0)
    r = mesh.vertices.norm(dim=-1)
    assert float((r - r_exact).abs().max()) < 0.01


def test_lit_oracle_references_shade_the_albedo_and_a_white_surface():
    from dreamgs import assets
    from dreamgs.priors.oracle import mesh_normal_fn, mesh_rgba_fn, render_references

    mesh = assets.make_asset("mug")
    fn = mesh_rgba_fn(mesh)
    plain = render_references("mug", fn, (0.0,), 4, 2.5, 49.1, 24)
    lit = render_references("mug", fn, (0.0,), 4, 2.5, 49.1, 24, shading="lit", normal_fn=mesh_normal_fn(mesh))
    assert len(lit.images) == 3 * len(plain.images)
    assert torch.equal(lit.images[0::6], plain.images[0::2]) and torch.equal(lit.images[1::6], plain.images[1::2])
    over_black = (lit.images + 1) / 2
    alb, lam, tl = over_black[1::6], over_black[3::6], over_black[5::6]
    fg = alb.sum(1, keepdim=True) > 0.05
    # Lambertian = albedo * shade with shade in [0.1, 1]: never brighter, never below a tenth
    assert bool((lam <= alb + 1e-4).all()) and bool((lam[fg.expand_as(lam)] >= 0.1 * alb[fg.expand_as(alb)] - 1e-3).all())
    # textureless is grey (equal channels) inside the silhouette
    assert float((tl[:, 0] - tl[:, 1]).abs().max()) < 1e-5 and float(tl.max()) > 0.5
    assert lit.elevation.shape[0] == len(lit.images) and lit.buckets[:6] == [plain.buckets[0]] * 6


def test_both_representations_satisfy_the_seam():
    from dreamgs.config import GaussianConfig, MeshConfig
    from dreamgs.gaussians import GaussianModel, make_optimizer
    from dreamgs.representations.base import Representation, surface_renders

    gs = GaussianModel.random_ball(200, 0.4, opacity=0.5, generator=torch.Generator().manual_seed(0))
    nerf = blob_field()
    assert isinstance(gs, Representation) and isinstance(nerf, Representation)
    # the Gaussians' groups are make_optimizer's (same names and learning rates)
    opt = make_optimizer(gs, GaussianConfig(), 10.0, fused=False)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        (g["name"], g["lr"]) for g in gs.param_groups(GaussianConfig(), 10.0)]
    cams = make_cameras(0.0, 0.0, 2.5, 49.1, 16)
    for model in (gs, nerf):
        rgb, alpha = surface_renders(model, cams)
        assert rgb.shape == (1, 16, 16, 3) and alpha.shape == (1, 16, 16, 1) and float(alpha.max()) > 0.5
    assert nerf.to_mesh(MeshConfig(grid_resolution=24, target_faces=0), 5.0).num_faces > 0
    assert gs.to_mesh(MeshConfig(grid_resolution=24, target_faces=0), 0.5).num_faces > 0


def test_exp_activation_is_the_clamped_exponential_and_is_saved_with_the_field(tmp_path):
    """density_activation="exp": exp(min(raw + blob, 11)), the same field otherwise; the choice is
    part of the saved spec, and a file saved without it (before the option) loads as softplus."""
    import json

    from safetensors.torch import load_file, save_file

    soft, ex = random_field(3), random_field(3, activation="exp")
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(4)) * 1.4 - 0.7
    with torch.no_grad():
        z = soft.raw(x)[:, 0] + soft.blob(x)
        assert torch.allclose(soft.density(x), torch.nn.functional.softplus(z))
        assert torch.allclose(ex.density(x), torch.exp(z.clamp(max=11.0)))
        assert torch.allclose(ex.density_albedo(x)[1], soft.density_albedo(x)[1])
    assert load_nerf(save_nerf(ex, tmp_path / "exp.safetensors")).spec.density_activation == "exp"
    p = save_nerf(soft, tmp_path / "old.safetensors")
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()["dreamgs-nerf"])
    meta.pop("density_activation")
    save_file(load_file(str(p)), str(p), metadata={"dreamgs-nerf": json.dumps(meta)})
    assert load_nerf(p).spec.density_activation == "softplus"


def test_an_unknown_density_activation_is_refused_by_name():
    from dreamgs.config import load_config
    from dreamgs.errors import ConfigError

    with pytest.raises(ConfigError, match="nerf.density_activation: expected softplus or exp, got 'cube'"):
        load_config("text", overrides=["method=dreamfusion", "nerf.density_activation=cube"])
    assert load_config("text", overrides=["nerf.density_activation=exp"]).nerf.density_activation == "exp"
