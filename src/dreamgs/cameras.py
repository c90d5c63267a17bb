"""Orbit cameras in DreamGaussian's convention.

World frame: OpenGL style, +y up. A camera at elevation ``e`` and azimuth ``a`` (degrees) on a
sphere of radius ``r`` around ``target`` sits at::

    target + r * (cos(e) sin(a), -sin(e), cos(e) cos(a))

so a *negative* elevation is *above* the object, azimuth 0 looks from +z, and azimuth 90 looks
from +x. The camera looks at the target with +y up.

Renderers take world-to-camera matrices in the OpenCV camera frame (x right, y down, z forward),
``viewmat = inv(c2w_gl @ diag(1, -1, -1, 1))``, and pinhole intrinsics
``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` with ``f = H / (2 tan(fovy / 2))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _as_tensor(x, dtype=torch.float64) -> Tensor:
    return torch.as_tensor(x, dtype=dtype).reshape(-1)


def orbit_c2w(elevation, azimuth, radius, target=(0.0, 0.0, 0.0)) -> Tensor:
    """Camera-to-world matrices (OpenGL camera frame) for orbit cameras, float64, shape (C, 4, 4).

    ``elevation``, ``azimuth`` in degrees, broadcast against ``radius``.
    """
    el, az, r = torch.broadcast_tensors(_as_tensor(elevation), _as_tensor(azimuth), _as_tensor(radius))
    el_r, az_r = torch.deg2rad(el), torch.deg2rad(az)
    tgt = torch.as_tensor(target, dtype=torch.float64).reshape(1, 3)
    campos = torch.stack(
        [r * torch.cos(el_r) * torch.sin(az_r), -r * torch.sin(el_r), r * torch.cos(el_r) * torch.cos(az_r)],
        dim=-1,
    ) + tgt
    z_axis = campos - tgt
    z_axis = z_axis / z_axis.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(z_axis)
    x_axis = torch.linalg.cross(up, z_axis)
    # Looking straight down or up: pick azimuth's right vector so the frame stays defined.
    degenerate = x_axis.norm(dim=-1) < 1e-9
    if degenerate.any():
        fallback = torch.stack([torch.cos(az_r), torch.zeros_like(az_r), -torch.sin(az_r)], dim=-1)
        x_axis = torch.where(degenerate[:, None], fallback, x_axis)
    x_axis = x_axis / x_axis.norm(dim=-1, keepdim=True)
    y_axis = torch.linalg.cross(z_axis, x_axis)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(campos), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x_axis, y_axis, z_axis, campos
    return c2w


def focal_from_fovy(fovy_deg: float, height: int) -> float:
    return height / (2.0 * math.tan(math.radians(fovy_deg) / 2.0))


def intrinsics(fovy_deg: float, width: int, height: int) -> Tensor:
    """Pinhole intrinsics (3, 3), float64, square pixels, principal point at the image centre."""
    f = focal_from_fovy(fovy_deg, height)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    ``viewmats`` are world-to-camera (OpenCV frame), ``Ks`` intrinsics; the orbit parameters
    (degrees) travel along for priors that condition on them (view-dependent prompts, Zero123).
    """

    viewmats: Tensor  # (C, 4, 4) float32
    Ks: Tensor  # (C, 3, 3) float32
    width: int
    height: int
    elevation: Tensor  # (C,) degrees
    azimuth: Tensor  # (C,) degrees
    radius: Tensor  # (C,)
    fovy: float

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device) -> "Cameras":
        return Cameras(
            self.viewmats.to(device), self.Ks.to(device), self.width, self.height,
            self.elevation.to(device), self.azimuth.to(device), self.radius.to(device), self.fovy,
        )

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(
            self.viewmats[idx], self.Ks[idx], self.width, self.height,
            self.elevation[idx], self.azimuth[idx], self.radius[idx], self.fovy,
        )

    def resized(self, width: int, height: int | None = None) -> "Cameras":
        """The same poses at another image size (same field of view)."""
        height = width if height is None else height
        return make_cameras(self.elevation, self.azimuth, self.radius, self.fovy, width, height,
                            device=self.device)

    @property
    def c2w(self) -> Tensor:
        """Camera-to-world matrices in the OpenGL camera frame (C, 4, 4)."""
        return torch.linalg.inv(self.viewmats.double()).matmul(_GL_TO_CV.to(self.device)).float()

    @property
    def centers(self) -> Tensor:
        """Camera positions in world space (C, 3)."""
        return torch.linalg.inv(self.viewmats.double())[:, :3, 3].float()


def make_cameras(elevation, azimuth, radius, fovy: float, width: int, height: int | None = None,
                 device="cpu", target=(0.0, 0.0, 0.0)) -> Cameras:
    """Build orbit cameras. Angles in degrees; scalars and 1-D sequences broadcast together."""
    height = width if height is None else height
    c2w = orbit_c2w(elevation, azimuth, radius, target)
    viewmats = torch.linalg.inv(c2w @ _GL_TO_CV)
    n = c2w.shape[0]
    el, az, r = torch.broadcast_tensors(_as_tensor(elevation), _as_tensor(azimuth), _as_tensor(radius))
    K = intrinsics(fovy, width, height).expand(n, 3, 3)
    return Cameras(
        viewmats=viewmats.float().to(device), Ks=K.float().to(device), width=int(width), height=int(height),
        elevation=el.float().to(device), azimuth=az.float().to(device), radius=r.float().to(device),
        fovy=float(fovy),
    )


def cameras_from_c2w(c2w, fovy: float, width: int, height: int | None = None, device="cpu") -> Cameras:
    """Cameras from OpenGL camera-to-world matrices (C, 4, 4), e.g. from a NeRF-style dataset.

    The orbit parameters are recovered from the camera positions (relative to the origin).
    """
    height = width if height is None else height
    c2w = torch.as_tensor(c2w, dtype=torch.float64).reshape(-1, 4, 4)
    viewmats = torch.linalg.inv(c2w @ _GL_TO_CV)
    pos = c2w[:, :3, 3]
    r = pos.norm(dim=-1).clamp_min(1e-12)
    el = torch.rad2deg(torch.asin((-pos[:, 1] / r).clamp(-1, 1)))
    az = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2]))
    K = intrinsics(fovy, width, height).expand(len(c2w), 3, 3)
    return Cameras(viewmats.float().to(device), K.float().to(device), int(width), int(height),
                   el.float().to(device), az.float().to(device), r.float().to(device), float(fovy))


def cat_cameras(cams: list[Cameras]) -> Cameras:
    """Concatenate camera batches of the same image size and field of view."""
    first = cams[0]
    return Cameras(torch.cat([c.viewmats for c in cams]), torch.cat([c.Ks for c in cams]), first.width,
                   first.height, torch.cat([c.elevation for c in cams]), torch.cat([c.azimuth for c in cams]),
                   torch.cat([c.radius for c in cams]), first.fovy)


def sample_cameras(n: int, cfg, size: int, device="cpu", generator: torch.Generator | None = None) -> Cameras:
    """Draw ``n`` random training cameras from the ranges in a :class:`~dreamgs.config.CameraConfig`."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    lo_e, hi_e = cfg.elevation_range
    lo_a, hi_a = cfg.azimuth_range
    lo_r, hi_r = cfg.radius_range
    el = lo_e + (hi_e - lo_e) * u[:, 0]
    az = lo_a + (hi_a - lo_a) * u[:, 1]
    r = cfg.radius + lo_r + (hi_r - lo_r) * u[:, 2]
    return make_cameras(el, az, r, cfg.fovy, size, size, device=device)


def relative_elevation_range(elevation: float, elevation_range: tuple[float, float], cover: bool = True
                             ) -> tuple[float, float]:
    """Image mode's range of elevation offsets from the input view's ``elevation`` (degrees).

    ``cover`` (DreamGaussian, main.py's train_step): [max(min(lo, lo - e), -80 - e),
    min(max(hi, hi - e), 80 - e)], so absolute elevations always cover [lo, hi] and stay within
    [-80, 80]; otherwise ``elevation_range`` itself (callers clamp the absolute elevation)."""
    lo, hi = elevation_range
    if not cover:
        return float(lo), float(hi)
    e = float(elevation)
    return max(min(lo, lo - e), -80.0 - e), min(max(hi, hi - e), 80.0 - e)


def orbit_views(n: int, elevation: float, radius: float, fovy: float, size: int, device="cpu",
                start_azimuth: float = 0.0) -> Cameras:
    """``n`` cameras evenly spaced in azimuth at a fixed elevation (turntables, evaluation)."""
    az = start_azimuth + torch.arange(n, dtype=torch.float64) * (360.0 / n)
    az = (az + 180.0) % 360.0 - 180.0
    return make_cameras(elevation, az, radius, fovy, size, size, device=device)


def sphere_views(n: int, radius: float, fovy: float, size: int, device="cpu",
                 max_elevation: float = 89.0) -> Cameras:
    """``n`` cameras spread over the sphere (Fibonacci lattice), for baking and evaluation."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n  # -sin(elevation) in (-1, 1)
    el = torch.rad2deg(torch.asin(-y)).clamp(-max_elevation, max_elevation)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    az = torch.rad2deg(torch.remainder(i * golden, 2 * math.pi)) - 180.0
    return make_cameras(el, az, radius, fovy, size, size, device=device)


def project_points(points: Tensor, cams: Cameras) -> tuple[Tensor, Tensor]:
    """Project world points (N, 3) into every camera: pixel coordinates (C, N, 2), depths (C, N).

    Pixel (0, 0) is the top-left corner of the top-left pixel; pixel centres sit at +0.5.
    """
    p = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)
    pc = torch.einsum("cij,nj->cni", cams.viewmats.to(points.dtype), p)[..., :3]
    uvw = torch.einsum("cij,cnj->cni", cams.Ks.to(points.dtype), pc)
    return uvw[..., :2] / uvw[..., 2:3], pc[..., 2]
