"""Stage 1's starts (dreamgs/init.py): ball, points, mesh, silhouette, depth."""

import numpy as np
import pytest
import torch

from dreamgs import assets
from dreamgs.cameras import make_cameras, project_points
from dreamgs.config import load_config
from dreamgs.errors import ConfigError, InputError
from dreamgs.gaussians import GaussianModel
from dreamgs.init import grow_points, initial_gaussians, lift_pixels
from dreamgs.stage1 import ReferenceView


def _cfg(mode="text", *ov):
    return load_config(mode, overrides=["device=cpu", "gaussians.num_points=500", *ov])


def test_ball_is_unchanged():
    cfg = _cfg()
    a = initial_gaussians(cfg, seed=3)
    g = cfg.gaussians
    b = GaussianModel.random_ball(g.num_points, g.init_radius, opacity=g.init_opacity, color=g.init_color,
                                  generator=torch.Generator().manual_seed(3))
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


def _triangle_distance(p, tri):
    """Brute-force distance of points p (n, 3) to triangles (F, 3, 3): min over faces (float64)."""
    from dreamgs.init import _barycentric

    best = torch.full((len(p),), float("inf"), dtype=torch.float64)
    for f in range(len(tri)):
        t = tri[f].expand(len(p), 3, 3)
        b = _barycentric(p, t)
        inside = (b >= -1e-9).all(-1)
        proj = (b[..., None] * t).sum(1)
        d = torch.where(inside, (p - proj).norm(dim=-1), torch.full_like(best, float("inf")))
        # outside the triangle the nearest point is on an edge
        for i, j in ((0, 1), (1, 2), (2, 0)):
            a, e = t[:, i], t[:, j] - t[:, i]
            s = (((p - a) * e).sum(-1) / (e * e).sum(-1)).clamp(0, 1)
            d = torch.minimum(d, (p - (a + s[:, None] * e)).norm(dim=-1))
        best = torch.minimum(best, d)
    return best


def test_mesh_init_points_lie_on_the_surface_with_texture_colours():
    cfg = _cfg("text", "gaussians.init=mesh:die", "gaussians.init_grow_samples=0")
    model = initial_gaussians(cfg, seed=0)
    assert len(model) == 500
    mesh = assets.make_asset("die")  # already normalised to radius 0.5 = init_radius
    tri = mesh.vertices.double()[mesh.faces]
    d = _triangle_distance(model.means.double()[:100], tri)
    assert d.max() < 1e-5
    # the die's faces are saturated colours: the start is not grey
    assert (model.colors() - 0.5).abs().amax() > 0.3


def test_points_init_from_ply_and_npy_with_growing(tmp_path):
    import trimesh

    g = torch.Generator().manual_seed(0)
    pts = torch.randn(300, 3, generator=g, dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True) * 2.0  # a sphere of radius 2, normalised to 0.5
    cols = np.tile(np.array([[255, 0, 0, 255]], np.uint8), (300, 1))
    trimesh.PointCloud(pts.numpy(), colors=cols).export(tmp_path / "c.ply")
    np.save(tmp_path / "c.npy", np.concatenate([pts.numpy(), cols[:, :3] / 255.0], 1))
    for name in ("c.ply", "c.npy"):
        cfg = _cfg("text", f"gaussians.init=points:{tmp_path / name}", "gaussians.init_grow_samples=200000")
        m = initial_gaussians(cfg, seed=0)
        r = m.means.double().norm(dim=-1)
        assert len(m) == 500  # cloud + grown points, subsampled to num_points
        assert (r - 0.5).abs().max() < 0.02  # grown points stay within the grow distance of the shell
        rgb = m.colors()
        assert (rgb[:, 0] > 0.99).all() and (rgb[:, 1:] < 0.2 + 1e-6).all()  # red plus a jitter below 0.2


def test_grow_points_brute_force():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(50, 3, generator=g, dtype=torch.float64)
    cols = torch.rand(50, 3, generator=g, dtype=torch.float64) * 0.5
    out, oc = grow_points(pts, cols, 5000, 0.05, 0.2, torch.Generator().manual_seed(2))
    new, nc = out[50:], oc[50:]
    d = torch.cdist(new, pts)
    assert len(new) > 0 and (d.amin(1) < 0.05).all()
    src = cols[d.argmin(1)]
    assert ((nc - src) >= 0).all() and ((nc - src) < 0.2).all()
    # and every candidate it dropped was farther: re-draw the same candidates
    cand = pts.amin(0) + (pts.amax(0) - pts.amin(0)) * torch.rand(5000, 3, generator=torch.Generator().manual_seed(2),
                                                                   dtype=torch.float64)
    assert int((torch.cdist(cand, pts).amin(1) < 0.05).sum()) == len(new)


def _ref(size=32, elevation=-20.0, rows=(8, 24), cols=(10, 20)):
    cams = make_cameras(elevation, 0.0, 2.5, 49.1, size)
    rgba = torch.zeros(size, size, 4)
    rgba[rows[0]:rows[1], cols[0]:cols[1]] = torch.tensor([0.2, 0.6, 0.9, 1.0])
    return ReferenceView(rgba, cams)


def test_depth_init_from_a_known_plane_reprojects_exactly(tmp_path):
    ref = _ref()
    depth = np.full((32, 32), 2.3, np.float32)
    depth[:, :12] = np.nan  # no surface there: those mask pixels are not used
    np.save(tmp_path / "d.npy", depth)
    cfg = _cfg("image", f"gaussians.init=depth:{tmp_path / 'd.npy'}")
    m = initial_gaussians(cfg, ref, seed=0)
    uv, z = project_points(m.means.double(), ref.cams)
    assert torch.allclose(z[0], torch.full_like(z[0], 2.3), atol=1e-5)
    col, row = uv[0, :, 0] - 0.5, uv[0, :, 1] - 0.5
    assert torch.allclose(col, col.round(), atol=1e-3) and torch.allclose(row, row.round(), atol=1e-3)
    assert (row.round() >= 8).all() and (row.round() < 24).all()
    assert (col.round() >= 12).all() and (col.round() < 20).all()
    assert torch.allclose(m.colors(), torch.tensor([0.2, 0.6, 0.9]).expand(len(m), 3), atol=1e-5)


def test_lift_pixels_inverts_project_points():
    cams = make_cameras(-30.0, 40.0, 2.5, 49.1, 64)
    pts = torch.rand(20, 3, dtype=torch.float64) - 0.5
    uv, z = project_points(pts, cams)
    assert torch.allclose(lift_pixels(cams, uv[0], z[0]), pts, atol=1e-5)


def test_silhouette_init_projects_into_the_mask_within_the_ball():
    ref = _ref(rows=(12, 20), cols=(13, 19))  # every masked pixel's ray crosses the ball of radius 0.5
    cfg = _cfg("image", "gaussians.init=silhouette")
    m = initial_gaussians(cfg, ref, seed=0)
    uv, _ = project_points(m.means.double(), ref.cams)
    px = uv[0].floor().long()
    assert (ref.rgba[px[:, 1], px[:, 0], 3] > 0.5).all()
    r = m.means.double().norm(dim=-1)
    assert r.max() <= 0.5 + 1e-5
    assert r.std() > 0.05  # a slab in depth, not a sheet


def test_bad_starts_get_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown start"):
        _cfg("text", "gaussians.init=cloud")
    with pytest.raises(ConfigError, match="needs a file"):
        _cfg("text", "gaussians.init=points:")
    with pytest.raises(ConfigError, match="image mode"):
        _cfg("text", "gaussians.init=silhouette")
    cfg = _cfg("text", f"gaussians.init=points:{tmp_path / 'none.ply'}")
    with pytest.raises(InputError, match="not found"):
        initial_gaussians(cfg)
    (tmp_path / "bad.ply").write_bytes(b"not a ply at all")
    with pytest.raises(InputError) as e:
        initial_gaussians(_cfg("text", f"gaussians.init=points:{tmp_path / 'bad.ply'}"))
    assert "\n" not in str(e.value)
    np.save(tmp_path / "bad.npy", np.zeros((4, 2)))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        initial_gaussians(_cfg("text", f"gaussians.init=points:{tmp_path / 'bad.npy'}"))
    np.save(tmp_path / "d.npy", np.full((16, 8), 2.0))
    with pytest.raises(InputError, match="aspect"):
        initial_gaussians(_cfg("image", f"gaussians.init=depth:{tmp_path / 'd.npy'}"), _ref())
    np.save(tmp_path / "d2.npy", np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="mask is empty"):
        initial_gaussians(_cfg("image", f"gaussians.init=depth:{tmp_path / 'd2.npy'}"), _ref())


def test_points_and_meshes_train_with_their_own_position_and_colour_rates(tmp_path):
    """A surface start learns its colours faster (x cloud_color_lr_scale at first, decaying to
    lr_color) and moves at cloud_position_lr_scale times the position rates; the ball, silhouette and
    depth starts train as before."""
    from test_stage1 import _RecordingPrior

    from dreamgs.gaussians import param_lrs, update_learning_rate
    from dreamgs.init import start_learning_rates
    from dreamgs.stage1 import Stage1

    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(60, 3)))
    run = ["prompt=x", "stage1.iters=4", "stage1.render_sizes=[8]", "stage1.size_milestones=[]",
           "densify.enabled=false", "gaussians.num_points=40", "gaussians.init_grow_samples=0"]

    def trained(*ov):
        cfg = load_config("text", None, [*run, *ov])
        s1 = Stage1(cfg, _RecordingPrior(), device="cpu")
        opt = s1.trainer.optimizer
        first = {grp["name"]: grp["lr"] for grp in opt.param_groups}
        final = update_learning_rate(opt, 10**6, s1.trainer.gcfg, s1.trainer.spatial_scale)
        colour = {grp["name"]: grp["lr"] for grp in opt.param_groups if grp["name"] in ("sh0", "shN")}
        return cfg.gaussians, first, (final, colour)

    g, ball, ball_final = trained()
    assert start_learning_rates(g)[0] is g and start_learning_rates(g)[1] == g.spatial_lr_scale
    assert ball == pytest.approx(param_lrs(g, g.spatial_lr_scale))
    ball_final, ball_colour = ball_final
    assert ball_final == pytest.approx(g.lr_position_final * g.spatial_lr_scale)
    assert ball_colour == {"sh0": ball["sh0"], "shN": ball["shN"]}  # the ball's colour rate is constant
    faster = ["gaussians.cloud_color_lr_scale=5"]
    for start, ov in ((f"points:{tmp_path / 'c.npy'}", faster), ("mesh:die", faster),
                      (f"points:{tmp_path / 'c.npy'}", ["gaussians.cloud_position_lr_scale=0.1"])):
        g, lrs, final = trained(f"gaussians.init={start}", *ov)
        p, c = g.cloud_position_lr_scale, g.cloud_color_lr_scale
        assert lrs == pytest.approx({**ball, "means": ball["means"] * p, "sh0": ball["sh0"] * c,
                                     "shN": ball["shN"] * c}), start
        final, colour = final
        assert final == pytest.approx(ball_final * p)
        assert colour == pytest.approx(ball_colour)  # ... the colour rate decays back to lr_color
    # with both factors 1 a cloud trains at the ball's rates, with the very same config
    g, lrs, (final, colour) = trained(f"gaussians.init=points:{tmp_path / 'c.npy'}",
                                      "gaussians.cloud_position_lr_scale=1")
    assert (g.cloud_position_lr_scale, g.cloud_color_lr_scale) == (1.0, 1.0) and start_learning_rates(g)[0] is g
    assert lrs == ball and final == ball_final and colour == ball_colour
    assert _cfg().gaussians.cloud_position_lr_scale == 0.1  # the default: a tenth of the ball's position rates
    for ov in ("gaussians.init=silhouette", f"gaussians.init=depth:{tmp_path / 'd.npy'}"):
        g = _cfg("image", ov).gaussians
        assert start_learning_rates(g) == (g, g.spatial_lr_scale) and start_learning_rates(g)[0] is g
    with pytest.raises(ConfigError, match="positive"):
        _cfg("text", "gaussians.cloud_color_lr_scale=0")
    with pytest.raises(ConfigError, match="lr_color_final"):
        _cfg("text", "gaussians.lr_color_final=-1")


def test_cloud_t_max_limits_stage1_diffusion_times_for_points_and_meshes_only(tmp_path):
    """With gaussians.cloud_t_max > 0 a points or mesh start is distilled with t <= cloud_t_max (the
    prior's range is set for each distillation call and put back after it); the ball keeps the prior's
    range, and so does a cloud with cloud_t_max=0 (the default is 0.5)."""
    from test_stage1 import _RecordingPrior

    from dreamgs.stage1 import Stage1

    class RangePrior(_RecordingPrior):
        t_min, t_max = 0.02, 0.98

        def sds(self, images, cams, progress):
            self.ranges = [*getattr(self, "ranges", []), (self.t_min, self.t_max)]
            return super().sds(images, cams, progress)

    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(60, 3)))
    run = ["prompt=x", "stage1.iters=3", "stage1.render_sizes=[8]", "stage1.size_milestones=[]",
           "densify.enabled=false", "gaussians.num_points=40", "gaussians.init_grow_samples=0"]
    for start, t_max, expected in ((f"points:{tmp_path / 'c.npy'}", 0.5, 0.5), ("mesh:die", 0.3, 0.3),
                                   ("ball", 0.5, 0.98), (f"points:{tmp_path / 'c.npy'}", 0.0, 0.98)):
        prior = RangePrior()
        cfg = load_config("text", None, [*run, f"gaussians.init={start}", f"gaussians.cloud_t_max={t_max}"])
        Stage1(cfg, prior, device="cpu").run(progress=False)
        assert prior.ranges == [(0.02, expected)] * 3, start
        assert (prior.t_min, prior.t_max) == (0.02, 0.98)
    with pytest.raises(ConfigError, match="cloud_t_max"):
        _cfg("text", "gaussians.cloud_t_max=1.5")
    with pytest.raises(ConfigError, match="prior.t_min"):
        _cfg("text", "gaussians.init=mesh:die", "gaussians.cloud_t_max=0.01")
    assert _cfg("text", "prior.t_min=0.6").gaussians.cloud_t_max == 0.5  # the ball does not use it
