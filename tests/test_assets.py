"""Built-in procedural assets: closed, centred, small, asymmetric front/back, prompt keywords."""

import pytest
import torch
import trimesh

from dreamgs.assets import ASSET_NAMES, asset_for_prompt, make_asset
from dreamgs.cameras import make_cameras
from dreamgs.errors import InputError
from dreamgs.mesh.raster import render_mesh
from dreamgs.metrics import psnr


@pytest.mark.parametrize("name", ASSET_NAMES)
def test_asset_is_closed_centred_and_small(name):
    m = make_asset(name)
    tm = trimesh.Trimesh(m.vertices.numpy(), m.faces.numpy(), process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    for part in tm.split(only_watertight=False):
        assert part.volume > 0  # counter-clockwise seen from outside
    lo, hi = m.bounds()
    torch.testing.assert_close((lo + hi) / 2, torch.zeros(3), atol=1e-6, rtol=0)
    assert m.vertices.norm(dim=1).max() <= 0.55
    assert 1000 < m.num_faces <= 20000
    assert m.texture.shape[-1] == 3 and 0 <= m.texture.min() and m.texture.max() <= 1
    assert m.uvs.min() >= 0 and m.uvs.max() <= 1 and m.face_uvs.shape == m.faces.shape


@pytest.mark.parametrize("name", ASSET_NAMES)
@pytest.mark.parametrize("bg", [0.0, 1.0])
def test_front_and_back_differ(name, bg):
    m = make_asset(name)
    out = render_mesh(m, make_cameras(0.0, [0.0, 180.0], 2.5, 49.1, 64), background=(bg, bg, bg))
    assert (out.alpha > 0).float().mean() > 0.05
    assert psnr(out.rgb[0], out.rgb[1]) < 20.0


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
