"""Orbit-camera convention, checked against hand-computed projections."""

import math

import torch

from dreamgs.cameras import make_cameras, orbit_c2w, project_points, sample_cameras, sphere_views
from dreamgs.config import CameraConfig


def test_front_camera_projection_by_hand():
    # Elevation 0, azimuth 0: the camera sits on +z at distance 2 and looks at the origin.
    W = H = 100
    cams = make_cameras(0.0, 0.0, 2.0, 90.0, W, H)
    f = H / (2 * math.tan(math.radians(45)))  # = 50
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    uv, depth = project_points(pts, cams)
    expected = torch.tensor([[50.0, 50.0], [50 + f * 0.5 / 2, 50.0], [50.0, 50 - f * 0.5 / 2], [50.0, 50.0]])
    torch.testing.assert_close(uv[0], expected)
    torch.testing.assert_close(depth[0], torch.tensor([2.0, 2.0, 2.0, 1.0]))


def test_azimuth_90_looks_from_plus_x_and_negative_elevation_is_above():
    cams = make_cameras([0.0, -90.0, -30.0], [90.0, 0.0, 0.0], 2.0, 49.1, 64)
    centres = cams.centers
    torch.testing.assert_close(centres[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(centres[1], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6, rtol=0)  # straight above
    torch.testing.assert_close(centres[2], torch.tensor([0.0, 1.0, 2.0 * math.cos(math.radians(30))]),
                               atol=1e-6, rtol=0)
    # From +x, a point on -z appears on the right of the image; +y is up (smaller row index).
    uv, _ = project_points(torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.5, 0.0]]), cams[0])
    assert uv[0, 0, 0] > 32 and abs(uv[0, 0, 1] - 32) < 1e-4
    assert uv[0, 1, 1] < 32 and abs(uv[0, 1, 0] - 32) < 1e-4


def test_viewmat_is_inverse_of_gl_c2w_with_axis_flip():
    c2w = orbit_c2w([15.0], [40.0], [2.5])[0]
    cams = make_cameras(15.0, 40.0, 2.5, 49.1, 64)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cams.viewmats[0].double(), torch.linalg.inv(c2w @ flip), atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.c2w[0].double(), c2w, atol=1e-5, rtol=0)
    # The camera looks at the origin: the origin projects to the principal point.
    uv, depth = project_points(torch.zeros(1, 3), cams)
    torch.testing.assert_close(uv[0, 0], torch.tensor([32.0, 32.0]), atol=1e-4, rtol=0)
    assert abs(depth[0, 0].item() - 2.5) < 1e-5


def test_sampling_respects_ranges_and_seed():
    cfg = CameraConfig(elevation_range=(-30.0, 10.0), azimuth_range=(-90.0, 90.0), radius=2.0,
                       radius_range=(-0.1, 0.1))
    a = sample_cameras(500, cfg, 64, generator=torch.Generator().manual_seed(1))
    b = sample_cameras(500, cfg, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.viewmats, b.viewmats)
    assert a.elevation.min() >= -30 and a.elevation.max() <= 10 and a.elevation.max() - a.elevation.min() > 35
    assert a.azimuth.min() >= -90 and a.azimuth.max() <= 90
    assert a.radius.min() >= 1.9 and a.radius.max() <= 2.1
    torch.testing.assert_close(a.centers.norm(dim=-1), a.radius, atol=1e-5, rtol=0)


def test_sphere_views_cover_both_hemispheres():
    cams = sphere_views(26, 2.0, 49.1, 32)
    y = cams.centers[:, 1]
    assert (y > 1.0).any() and (y < -1.0).any()
    assert len(cams) == 26
