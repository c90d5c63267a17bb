"""The 3D point prior (priors/points.py): the exact per-point oracle and GSGen's auxiliary SDS."""

import math

import pytest
import yaml
import torch

from dreamgs.config import load_config
from dreamgs.errors import ConfigError
from dreamgs.priors.points import PointOracle, build_point_prior, cosine_alphas_cumprod, farthest_point_sample


def test_cosine_schedule_is_point_e_s():
    abar = cosine_alphas_cumprod()
    assert abar.shape == (1024,)
    f = lambda t: math.cos((t / 1024 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(float(abar[511]) - f(512) / f(0)) < 1e-9  # unclipped region: the closed form
    assert (abar[1:] < abar[:-1]).all() and 0 < float(abar[-1]) < 1e-4


def test_oracle_matches_brute_force_posterior_mean():
    g = torch.Generator().manual_seed(0)
    surface = torch.rand(300, 3, generator=g, dtype=torch.float64) - 0.5
    oracle = PointOracle(surface, coord_scale=2.0, chunk=7)  # odd chunks exercise the chunking
    y = surface * 2.0
    for t in (20, 300, 700, 1000):
        abar = float(cosine_alphas_cumprod()[t])
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        x_t = a * y[:25] + s * torch.randn(25, 3, generator=g, dtype=torch.float64)
        exact, fast = oracle.denoise(x_t, t, exact=True), oracle.denoise(x_t, t)
        # brute force: Bayes' rule, point by point, with an explicit Gaussian likelihood (float64)
        want = torch.empty(25, 3, dtype=torch.float64)
        for n in range(25):
            logw = torch.tensor([-((x_t[n] - a * y[j]) ** 2).sum() / (2 * s * s) for j in range(len(y))])
            w = torch.exp(logw - logw.max())
            want[n] = (w[:, None] * y).sum(0) / w.sum()
        assert torch.allclose(exact, want, atol=1e-10), t
        assert torch.allclose(fast, want, atol=2e-5), t  # float32 distances: the default


def test_oracle_pulls_points_onto_the_surface():
    # a sphere of radius 0.4: the oracle's x0_hat at small t is a point of the sphere
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    s = 0.4 * s / s.norm(dim=-1, keepdim=True)
    oracle = PointOracle(s, coord_scale=1.0)
    x = 0.3 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    x0 = oracle.denoise(x, 5)
    assert ((x0.norm(dim=-1) - 0.4).abs() < 0.02).all()


def test_farthest_point_sample_brute_force():
    g = torch.Generator().manual_seed(2)
    p = torch.rand(60, 3, generator=g)
    idx = farthest_point_sample(p, 10, torch.tensor([5, 17]))
    for b, start in enumerate((5, 17)):
        chosen = [start]
        for _ in range(9):
            d = torch.cdist(p, p[chosen]).amin(1)
            chosen.append(int(d.argmax()))
        assert idx[b].tolist() == chosen
    assert farthest_point_sample(p[:4], 10, torch.tensor([0])).shape == (1, 4)


@pytest.mark.parametrize("num_points", [16, 0])
def test_sds_gradient_is_w_times_eps_difference(num_points):
    """d loss / d means equals the mean over draws of coord_scale * (1 - abar) (eps_hat - eps),
    recomputed independently from the same random draws (num_points 0: every centre in each draw)."""
    g = torch.Generator().manual_seed(3)
    surface = torch.rand(200, 3, generator=g, dtype=torch.float64) - 0.5
    oracle = PointOracle(surface, coord_scale=2.0, batch_size=3, num_points=num_points)
    means = (torch.rand(40, 3, generator=g) - 0.5).requires_grad_(True)
    oracle.sds(means, torch.Generator().manual_seed(9)).backward()
    # replay the draws
    gen = torch.Generator().manual_seed(9)
    if num_points:
        idx = farthest_point_sample(means, num_points, torch.randint(40, (3,), generator=gen))
    else:
        idx = torch.arange(40).repeat(3, 1)
    ts = oracle.timesteps(3, gen)
    noise = torch.randn(3, idx.shape[1], 3, generator=gen, dtype=torch.float64)
    want = torch.zeros(40, 3, dtype=torch.float64)
    for b in range(3):
        abar = float(oracle.alphas_cumprod[int(ts[b])])
        x = means.detach().double()[idx[b]] * 2.0
        x_t = math.sqrt(abar) * x + math.sqrt(1 - abar) * noise[b]
        eps_hat = (x_t - math.sqrt(abar) * oracle.denoise(x_t, int(ts[b]))) / math.sqrt(1 - abar)  # as sds
        want.index_add_(0, idx[b], 2.0 * (1 - abar) * (eps_hat - noise[b]) / 3)
    assert torch.allclose(means.grad.double(), want, atol=1e-5)


def test_config_keys_and_stage1_wiring():
    with pytest.raises(ConfigError, match="oracle"):
        load_config("text", overrides=["points_prior.use=on", "prior.kind=sd"])
    cfg = load_config("text", overrides=["device=cpu", "prompt=a mug", "prior.kind=oracle",
                                         "points_prior.use=on", "points_prior.surface_samples=500"])
    assert cfg.points_prior.weight == 0.1 and cfg.points_prior.num_points == 1024
    oracle = build_point_prior(cfg)
    assert oracle.y.shape == (500, 3) and oracle.y.norm(dim=-1).max() <= 2 * 0.5 + 1e-6


def test_gsgen_preset_loads_and_auto_follows_the_prior():
    from dreamgs.stage1 import points_prior_active

    sd = load_config("text", None, ["prompt=a mug", "method=gsgen"])
    assert sd.points_prior.use == "auto" and not points_prior_active(sd)  # no Point-E: off with SD
    assert sd.densify.mode == "both" and not sd.stage2.enabled and sd.stage1.geometry_fraction > 0
    oracle = load_config("text", None, ["prompt=a mug", "prior.kind=oracle", "method=gsgen"])
    assert points_prior_active(oracle)
    # The user's own values win over the method's; --mesh turns stage 2 on.
    mine = load_config("text", None, ["prompt=a mug", "method=gsgen", "densify.mode=grad", "stage2.enabled=true"])
    assert mine.densify.mode == "grad" and mine.stage2.enabled and mine.stage1.geometry_fraction > 0


def test_stage1_geometry_stage_runs_the_point_prior_then_densifies():
    from dreamgs.priors import load_prior
    from dreamgs.stage1 import Stage1

    cfg = load_config("text", overrides=[
        "stage1.iters=6", "stage1.batch_size=1", "stage1.render_sizes=[32]", "stage1.size_milestones=[]",
        "gaussians.num_points=200", "gaussians.init_scale=0.005", "densify.start=0", "densify.interval=1",
        "densify.mode=compactness",
        "stage1.geometry_fraction=0.5", "points_prior.use=on", "points_prior.num_points=64",
        "points_prior.surface_samples=500", "prior.kind=oracle", "prior.oracle_azimuths=8",
        "prior.oracle_resolution=32", "prompt=a mug", "device=cpu", "seed=1"])
    st = Stage1(cfg, load_prior(cfg, "cpu"))
    assert st.geometry_end == 3 and st.trainer.densify_from == 3
    seen = []
    for _ in range(6):
        n = len(st.model)
        st.step()
        seen.append(("points" in st.last, len(st.model) > n))
    assert [p for p, _ in seen] == [True] * 3 + [False] * 3  # the point prior: geometry stage only
    assert not any(grew for _, grew in seen[:2]) and any(grew for _, grew in seen[2:])  # densify from step 3


def test_method_gsgen_runs_and_exports_the_gaussians_and_the_mesh_only_when_asked(tmp_path):
    from dreamgs.bench import METHODS
    from dreamgs.cli import main

    tiny = ["prior.oracle_azimuths=8", "prior.oracle_elevations=[0]", "prior.oracle_resolution=32",
            "stage1.iters=8", "stage1.render_sizes=[32]", "stage1.size_milestones=[]", "gaussians.num_points=300",
            "points_prior.surface_samples=256", "points_prior.num_points=64", "densify.interval=4",
            "export.video=false", "stage2.iters=1", "mesh.grid_resolution=32", "device=cpu", "seed=0"]
    plain, meshed = tmp_path / "plain", tmp_path / "meshed"
    assert main(["text", "a mug", "--method", "gsgen", "--prior", "oracle:mug", "--quiet", "--out", str(plain),
                 *tiny]) == 0
    assert main(["text", "a mug", "--method", "gsgen", "--mesh", "--prior", "oracle:mug", "--quiet", "--out",
                 str(meshed), *tiny]) == 0
    (run,), (run_m,) = list(plain.iterdir()), list(meshed.iterdir())
    assert (run / "model.ply").is_file() and not (run / "model.glb").exists()
    assert (run_m / "model.ply").is_file() and (run_m / "model.glb").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == "gsgen" and cfg["points_prior"]["use"] == "auto" and cfg["densify"]["mode"] == "both"
    assert "gsgen" in METHODS
