"""Procedural assets (built-in and generated ``gen:<seed>``): closed, centred, small, asymmetric
front/back and left/right, deterministic; benchmark splits; prompt keywords."""

import pytest
import torch
import trimesh

from dreamgs import assets
from dreamgs.assets import ASSET_NAMES, SPLITS, asset_for_prompt, make_asset, split_assets
from dreamgs.cameras import make_cameras
from dreamgs.config import load_config
from dreamgs.errors import InputError
from dreamgs.mesh.raster import render_mesh
from dreamgs.metrics import psnr
from dreamgs.priors import load_prior
from dreamgs.priors.oracle import asset_render_fn

ALL_ASSETS = tuple(dict.fromkeys(ASSET_NAMES + SPLITS["dev"] + SPLITS["test"]))


def _each_edge_twice_opposite(faces: torch.Tensor) -> bool:
    """Every edge is shared by exactly two faces that traverse it in opposite directions: each
    directed edge occurs once, and so does its reverse."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = e[:, 0] * (int(faces.max()) + 1) + e[:, 1]
    rev = e[:, 1] * (int(faces.max()) + 1) + e[:, 0]
    return len(torch.unique(key)) == len(key) and bool(torch.isin(rev, key).all())


@pytest.mark.parametrize("name", ALL_ASSETS)
def test_asset_is_closed_centred_and_small(name):
    m = make_asset(name)
    assert _each_edge_twice_opposite(m.faces)
    tm = trimesh.Trimesh(m.vertices.numpy(), m.faces.numpy(), process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    parts = tm.split(only_watertight=False)
    for part in parts:
        assert part.volume > 0  # counter-clockwise seen from outside
    if name.startswith("gen:"):
        assert 2 <= len(parts) <= 4
    lo, hi = m.bounds()
    torch.testing.assert_close((lo + hi) / 2, torch.zeros(3), atol=1e-6, rtol=0)
    assert m.vertices.norm(dim=1).max() <= 0.5 + 1e-6
    assert 1000 < m.num_faces <= 20000
    assert m.texture.shape[-1] == 3 and 0 <= m.texture.min() and m.texture.max() <= 1
    assert m.uvs.min() >= 0 and m.uvs.max() <= 1 and m.face_uvs.shape == m.faces.shape


@pytest.mark.parametrize("name", ALL_ASSETS)
@pytest.mark.parametrize("bg", [0.0, 1.0])
def test_front_and_back_differ(name, bg):
    m = make_asset(name)
    out = render_mesh(m, make_cameras(0.0, [0.0, 180.0], 2.5, 49.1, 64), background=(bg, bg, bg))
    assert (out.alpha > 0).float().mean() > 0.03
    assert psnr(out.rgb[0], out.rgb[1]) < 20.0


@pytest.mark.parametrize("name", ALL_ASSETS)
def test_front_back_and_left_right_differ_clearly(name):
    # Mean absolute difference over the pixels that either view covers (at 64 px): the built-in
    # house differs left/right only by a round window; generated assets differ everywhere.
    out = render_mesh(make_asset(name), make_cameras(0.0, [0.0, 180.0, -90.0, 90.0], 2.5, 49.1, 64),
                      background=(1.0, 1.0, 1.0))
    seen = out.alpha[..., 0] > 0
    least = 0.2 if name.startswith("gen:") else 0.05
    for a, b in ((0, 1), (2, 3)):
        union = seen[a] | seen[b]
        assert (out.rgb[a] - out.rgb[b]).abs().mean(-1)[union].mean() > least


def test_orientation_conventions():
    # The die's red face with one pip is the front (+z, azimuth 0); blue is the back.
    out = render_mesh(make_asset("die"), make_cameras(0.0, [0.0, 180.0], 2.5, 49.1, 64))
    m = out.alpha[..., 0] > 0
    front, back = out.rgb[0][m[0]].mean(0), out.rgb[1][m[1]].mean(0)
    assert front[0] > 2 * front[2] and back[2] > 2 * back[0]
    # The mug's handle is on +x (right seen from the front, left from the back). The bounding
    # box is centred, so the body (alone in the lowest rows) sits on the other side.
    out = render_mesh(make_asset("mug"), make_cameras(0.0, [0.0, 180.0], 2.5, 49.1, 128))
    for c, body_side in ((0, -1), (1, 1)):
        rows = torch.nonzero(out.alpha[c, ..., 0].any(1)).squeeze(1)
        cols = torch.nonzero(out.alpha[c, rows.max() - 2, :, 0]).squeeze(1).float() + 0.5
        assert body_side * (cols.mean() - 64) > 1.5


def test_make_asset_returns_fresh_copies_and_rejects_unknown_names():
    a = make_asset("die")
    a.texture.zero_()
    assert make_asset("die").texture.max() > 0
    with pytest.raises(InputError, match="mug"):
        make_asset("teapot")
    for bad in ("gen:", "gen:-1", "gen:x", "gen:1.5", "gen1"):
        with pytest.raises(InputError, match="gen:<seed>"):
            make_asset(bad)


def test_generated_assets_are_deterministic_and_differ_by_seed():
    a = make_asset("gen:5")
    assets._cached.cache_clear()
    b = make_asset("gen:5")
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces)
    assert torch.equal(a.texture, b.texture) and torch.equal(a.uvs, b.uvs)
    assert torch.equal(make_asset("gen:05").vertices, a.vertices)  # one seed, one asset
    c = make_asset("gen:6")
    assert a.vertices.shape != c.vertices.shape or not torch.equal(a.vertices, c.vertices)
    assert not torch.equal(a.texture, c.texture)
    assert 1000 < a.num_faces <= 20000 and 1000 < c.num_faces <= 20000


def test_splits():
    assert split_assets("dev") == ("mug", "house", "die", "gen:1000", "gen:1001", "gen:1002")
    assert split_assets("test") == tuple(f"gen:{i}" for i in range(8))
    seeds = lambda split: {int(n[4:]) for n in SPLITS[split] if n.startswith("gen:")}  # noqa: E731
    assert min(seeds("dev")) >= 1000 > max(seeds("test"))
    assert ASSET_NAMES == ("mug", "house", "die")
    with pytest.raises(InputError, match="dev, test"):
        split_assets("train")


def test_oracle_prior_of_a_generated_asset():
    cfg = load_config("text", None, ["prior.kind=oracle", "prior.asset=gen:3", "prompt=anything",
                                     "prior.oracle_azimuths=4", "prior.oracle_resolution=16"])
    prior = load_prior(cfg, "cpu")
    assert prior.asset == "gen:3" and [a.name for a in prior.library] == ["gen:3"]
    assert asset_render_fn("gen:3")[0] == "gen:3"
    with pytest.raises(InputError, match="gen:<seed>"):
        asset_render_fn("gen:x")


@pytest.mark.parametrize("prompt,name", [
    ("a cup of coffee", "mug"), ("A MUG", "mug"), ("tea-cup!", "mug"),
    ("a small cottage in the woods", "house"), ("my home", "house"), ("Houses", "house"),
    ("a pair of dice", "die"), ("a red cube", "die"), ("die", "die"),
    ("a house shaped like a mug", "house"),  # the earliest keyword wins
])
def test_asset_for_prompt(prompt, name):
    assert asset_for_prompt(prompt) == name


def test_asset_for_prompt_errors():
    with pytest.raises(InputError, match="empty prompt"):
        asset_for_prompt("   ")
    with pytest.raises(InputError, match=r"mug \(mug.*house \(house.*die \(die"):
        asset_for_prompt("a dragon")
