"""Stage 1's starting Gaussians: ``gaussians.init``.

- ``ball`` (DreamGaussian, the default): ``gaussians.num_points`` points uniform in a ball of
  radius ``gaussians.init_radius``, grey.
- ``points:FILE``: a point cloud, e.g. what a 3D prior such as Point-E or Shap-E produced. FILE is
  a point-cloud ``.ply`` (binary or ASCII, with or without colours), a 3DGS ``.ply`` (its centres
  and base colours) or a ``.npy`` array (N, 3) or (N, 6) of xyz (and rgb in [0, 1]).
- ``mesh:FILE``: a mesh (.obj/.glb/.gltf/.ply, or a built-in/generated asset name such as ``mug``
  or ``gen:3``), sampled uniformly by area, coloured from its texture or vertex colours.

  Points and meshes are moved and scaled so that their bounding-box centre is at the origin and
  the farthest point is at ``gaussians.init_radius``, as the oracle does with user files. Then, as
  GaussianDreamer does, the cloud is *grown*: ``gaussians.init_grow_samples`` points uniform in its
  bounding box are kept when within ``gaussians.init_grow_distance`` of a cloud point, and take
  that point's colour plus a jitter uniform in [0, ``gaussians.init_color_jitter``) per channel
  (GaussianDreamer: 10^6 samples, 0.01, 0.2, in Shap-E's unit-sized frame). The union is
  subsampled to ``gaussians.num_points`` when larger. ``gaussians.init_noise`` adds Gaussian noise
  (std, world units) to the final positions (a noisy 3D prior); ``gaussians.init_colors`` =
  ``random`` replaces the colours by uniform random ones (GSGen) and ``grey`` by
  ``gaussians.init_color``.
- ``silhouette`` (image mode): the input's mask lifted into a slab. Each of ``num_points`` points
  takes a random pixel inside the mask (alpha > 0.5) at the input camera, a random position
  along that pixel's ray where it crosses the ball of radius ``init_radius`` (the depth range
  in which the object can lie), and the pixel's colour.
- ``depth:FILE`` (image mode): as ``silhouette`` but each point sits exactly at the depth the
  file gives for its pixel: a ``.npy`` float array (H, W) of camera-space depth (distance along
  the input camera's optical axis, world units) for the input image; pixels with a depth that is
  not finite or not positive are not used. A map of another size is resampled (nearest) to the
  input's.

Scales are the RMS distance to the 3 nearest neighbours (as for the ball) unless
``gaussians.init_scale`` > 0 (GSGen: 0.02); opacity is ``gaussians.init_opacity``.

Points and meshes are *trained* differently (:func:`start_learning_rates`,
:func:`start_timestep_range`): their Gaussians already lie on the surface, so they are refined rather
than re-noised (docs/quality.md, "Point starts refined"). Their distillation draws diffusion times of
at most ``gaussians.cloud_t_max`` (0.5) of T instead of ``prior.t_max`` (at 0.98 T the denoiser's
estimate keeps almost nothing of the start), and their position learning rates are
``gaussians.cloud_position_lr_scale`` (0.1, GaussianDreamer-like) times the ball's (DreamGaussian's
rate moves a surface start as far off the surface as the ball's within ~50 steps). With
``gaussians.cloud_color_lr_scale`` > 1 their colour learning rate starts at that many times the
configured one and decays to it with the position schedule (5: far ahead for the first third, 0.32
dB lower at the end on the test split; so 1, off, by default).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import CLOUD_STARTS, parse_init
from .errors import ConfigError, InputError
from .gaussians import GaussianModel, sh_to_rgb

# ------------------------------------------------------------------------------------------------
# Reading point clouds and meshes


def load_point_cloud(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """Points (N, 3) float64 and colours (N, 3) in [0, 1] or None from a .ply or .npy file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: point cloud file not found")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InputError(f"{p}: cannot read .npy array ({e})") from None
        if a.ndim != 2 or a.shape[1] not in (3, 6) or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.number):
            raise InputError(f"{p}: expected a numeric (N, 3) or (N, 6) array of xyz[rgb], got {a.dtype} {a.shape}")
        a = torch.from_numpy(a.astype(np.float64))
        pts, cols = a[:, :3], (a[:, 3:6].clamp(0, 1) if a.shape[1] == 6 else None)
    elif suffix == ".ply":
        pts, cols = _ply_points(p)
    else:
        raise InputError(f"{p}: unsupported point cloud format '{suffix}' (expected .ply or .npy)")
    if not torch.isfinite(pts).all() or (cols is not None and not torch.isfinite(cols).all()):
        raise InputError(f"{p}: non-finite point positions or colours")
    return pts, cols


def _ply_points(p: Path) -> tuple[Tensor, Tensor | None]:
    from .gaussians import load_ply

    try:  # a 3DGS splat file: its centres and base colours
        model = load_ply(p)
        return model.means.double(), sh_to_rgb(model.params["sh0"][:, 0].double()).clamp(0, 1)
    except InputError:
        pass
    import trimesh

    try:
        obj = trimesh.load(str(p), process=False)
    except Exception as e:  # trimesh raises many types for malformed files
        raise InputError(f"{p}: cannot read .ply ({type(e).__name__}: {e})") from None
    verts = getattr(obj, "vertices", None)
    if verts is None or len(verts) == 0:
        raise InputError(f"{p}: the .ply holds no points")
    pts = torch.tensor(np.asarray(verts, dtype=np.float64))
    cols = None
    if isinstance(obj, trimesh.PointCloud):
        c = getattr(obj, "colors", None)
        if c is not None and len(c) == len(pts):
            cols = torch.tensor(np.asarray(c, dtype=np.float64)[:, :3] / 255.0)
    else:
        vis = getattr(obj, "visual", None)
        c = getattr(vis, "vertex_colors", None) if getattr(vis, "kind", None) == "vertex" else None
        if c is not None and len(c) == len(pts):
            cols = torch.tensor(np.asarray(c, dtype=np.float64)[:, :3] / 255.0)
    return pts, cols


def sample_mesh_points(mesh, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """``n`` points uniform (by area) on ``mesh`` (float64) with their texture or vertex colours."""
    from .metrics import sample_surface

    pts, face = sample_surface(mesh, n, generator, return_faces=True)
    pts = pts.double()
    v = mesh.vertices.double()[mesh.faces[face]]  # (n, 3, 3)
    bary = _barycentric(pts, v)
    if mesh.texture is not None and mesh.uvs is not None and mesh.face_uvs is not None:
        uv = (bary[..., None] * mesh.uvs.double()[mesh.face_uvs[face]]).sum(1)
        h, w = mesh.texture.shape[:2]
        col = (uv[:, 0] * w).floor().long().clamp(0, w - 1)
        row = ((1.0 - uv[:, 1]) * h).floor().long().clamp(0, h - 1)
        return pts, mesh.texture[row, col].double().clamp(0, 1)
    if mesh.vertex_colors is not None:
        return pts, (bary[..., None] * mesh.vertex_colors.double()[mesh.faces[face]]).sum(1).clamp(0, 1)
    return pts, None


def _barycentric(p: Tensor, tri: Tensor) -> Tensor:
    """Barycentric coordinates (n, 3) of points p (n, 3) in triangles tri (n, 3, 3)."""
    e1, e2, d = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], p - tri[:, 0]
    d11, d12, d22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
    dp1, dp2 = (d * e1).sum(-1), (d * e2).sum(-1)
    den = (d11 * d22 - d12 * d12).clamp_min(1e-30)
    b1 = (d22 * dp1 - d12 * dp2) / den
    b2 = (d11 * dp2 - d12 * dp1) / den
    return torch.stack([1 - b1 - b2, b1, b2], -1)


def _load_mesh_spec(arg: str):
    from . import assets

    if arg in assets.ASSET_NAMES or assets.generated_seed(arg) is not None:
        return assets.make_asset(arg)
    from .mesh.io import load_mesh

    return load_mesh(arg)


def normalize_points(pts: Tensor, radius: float) -> Tensor:
    """Bounding-box centre to the origin, farthest point at ``radius``."""
    lo, hi = pts.amin(0), pts.amax(0)
    v = pts - (lo + hi) / 2
    extent = v.norm(dim=1).max()
    if not torch.isfinite(extent) or extent <= 0:
        raise InputError("gaussians.init: the point cloud has zero extent (all points coincide)")
    return v * (radius / extent)


def grow_points(pts: Tensor, colors: Tensor, samples: int, distance: float, jitter: float,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """GaussianDreamer's noisy point growing and colour perturbation: ``samples`` points uniform
    in the bounding box of ``pts``, kept when within ``distance`` of a point (k-d tree), coloured
    as that point plus uniform [0, ``jitter``) per channel; returned after the original points."""
    if samples <= 0:
        return pts, colors
    from scipy.spatial import cKDTree

    lo, hi = pts.amin(0), pts.amax(0)
    cand = lo + (hi - lo) * torch.rand(samples, 3, generator=generator, dtype=torch.float64)
    dist, idx = cKDTree(pts.numpy()).query(cand.numpy(), k=1)
    keep = torch.from_numpy(dist < distance)
    idx = torch.from_numpy(idx)[keep]
    new_cols = colors[idx] + jitter * torch.rand(len(idx), 3, generator=generator, dtype=torch.float64)
    return torch.cat([pts, cand[keep]]), torch.cat([colors, new_cols.clamp(0, 1)])


# ------------------------------------------------------------------------------------------------
# Lifting the input view


def lift_pixels(cams, pix: Tensor, depth: Tensor) -> Tensor:
    """World points (n, 3) at pixel coordinates ``pix`` (n, 2; pixel centres at +0.5) and
    camera-space depths (n,) of the first camera of ``cams``."""
    K = cams.Ks[0].double().cpu()
    x = (pix[:, 0] - K[0, 2]) / K[0, 0] * depth
    y = (pix[:, 1] - K[1, 2]) / K[1, 1] * depth
    pc = torch.stack([x, y, depth, torch.ones_like(depth)], -1)
    c2w = torch.linalg.inv(cams.viewmats[0].double().cpu())
    return (pc @ c2w.T)[:, :3]


def _mask_pixels(rgba: Tensor, n: int, generator: torch.Generator, valid: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` random pixels (with repetition) inside the mask: (row, col) indices and colours."""
    a = rgba[..., 3].cpu() > 0.5
    if valid is not None:
        a = a & valid
    idx = a.reshape(-1).nonzero(as_tuple=True)[0]
    if len(idx) == 0:
        raise InputError("gaussians.init: the input's mask is empty" + (" where the depth map is valid"
                                                                        if valid is not None else ""))
    pick = idx[torch.randint(len(idx), (n,), generator=generator)]
    w = rgba.shape[1]
    row, col = pick // w, pick % w
    return row, col, rgba[..., :3].cpu().double()[row, col]


def silhouette_points(ref, radius: float, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The input mask lifted into a slab: each point on a masked pixel's ray, uniform over the
    part of the ray inside the ball of ``radius`` about the origin (pixels whose ray misses the
    ball are placed at the ray's closest approach)."""
    row, col, colors = _mask_pixels(ref.rgba, n, generator)
    pix = torch.stack([col + 0.5, row + 0.5], -1).double()
    near = lift_pixels(ref.cams, pix, torch.ones(n, dtype=torch.float64))  # points at depth 1
    origin = torch.linalg.inv(ref.cams.viewmats[0].double().cpu())[:3, 3]
    d = near - origin
    d = d / d.norm(dim=-1, keepdim=True)
    tc = -(origin[None] * d).sum(-1)  # ray parameter of the closest approach to the origin
    miss2 = (origin[None] + tc[:, None] * d).square().sum(-1)
    half = (radius**2 - miss2).clamp_min(0).sqrt()
    t = tc - half + 2 * half * torch.rand(n, generator=generator, dtype=torch.float64)
    return origin[None] + t[:, None] * d, colors


def load_depth(path: str | Path, height: int, width: int) -> Tensor:
    """A depth map (.npy, (H, W)) resampled (nearest) to height x width, float64; invalid = NaN."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: depth map not found")
    if p.suffix.lower() != ".npy":
        raise InputError(f"{p}: unsupported depth map format '{p.suffix}' (expected a .npy float array (H, W))")
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{p}: cannot read .npy array ({e})") from None
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{p}: expected a numeric (H, W) depth array, got {a.dtype} {a.shape}")
    d = torch.from_numpy(a.astype(np.float64))
    if tuple(d.shape) != (height, width):
        if abs(d.shape[0] / d.shape[1] - height / width) > 1e-6:
            raise InputError(f"{p}: depth map {d.shape[1]}x{d.shape[0]} does not have the input's aspect ratio "
                             f"({width}x{height})")
        r = (torch.arange(height) * d.shape[0] // height)
        c = (torch.arange(width) * d.shape[1] // width)
        d = d[r][:, c]
    return torch.where(torch.isfinite(d) & (d > 0), d, torch.full_like(d, math.nan))


def depth_points(ref, path: str, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    h, w = ref.rgba.shape[:2]
    depth = load_depth(path, h, w)
    row, col, colors = _mask_pixels(ref.rgba, n, generator, valid=~torch.isnan(depth))
    pix = torch.stack([col + 0.5, row + 0.5], -1).double()
    return lift_pixels(ref.cams, pix, depth[row, col]), colors


# ------------------------------------------------------------------------------------------------
# The entry points

def start_learning_rates(g):
    """The GaussianConfig and spatial learning-rate scale that stage 1 trains ``g.init``'s start with:
    for points and meshes the colour rate starts at ``g.cloud_color_lr_scale`` times ``g.lr_color``
    and decays to ``g.lr_color`` (or ``g.lr_color_final`` if set) with the position schedule, and the
    spatial scale (so both position rates) is times ``g.cloud_position_lr_scale``; for the other
    starts, and with both factors at 1, ``g`` itself and ``g.spatial_lr_scale``, untouched (the ball's
    training is DreamGaussian's, exactly)."""
    kind, _ = parse_init(g.init)
    if kind not in CLOUD_STARTS or (g.cloud_color_lr_scale == 1 and g.cloud_position_lr_scale == 1):
        return g, g.spatial_lr_scale
    return (dataclasses.replace(g, lr_color=g.lr_color * g.cloud_color_lr_scale,
                                lr_color_final=g.lr_color_final or g.lr_color),
            g.spatial_lr_scale * g.cloud_position_lr_scale)


def start_timestep_range(cfg) -> tuple[float, float] | None:
    """The diffusion-time range stage 1 distils ``cfg.gaussians.init``'s start with, when it is not the
    prior's own: ``(prior.t_min, gaussians.cloud_t_max)`` for points and meshes with cloud_t_max > 0."""
    g = cfg.gaussians
    if g.cloud_t_max <= 0 or parse_init(g.init)[0] not in CLOUD_STARTS:
        return None
    return cfg.prior.t_min, g.cloud_t_max


def initial_gaussians(cfg, ref=None, seed: int = 0) -> GaussianModel:
    """Stage 1's starting Gaussians for ``cfg.gaussians`` (see the module docstring)."""
    g = cfg.gaussians
    kind, arg = parse_init(g.init)
    gen = torch.Generator().manual_seed(seed)
    if kind == "ball":
        ball = GaussianModel.random_ball(g.num_points, g.init_radius, opacity=g.init_opacity, color=g.init_color,
                                         sh_degree=g.sh_degree, generator=gen)
        if g.init_scale <= 0 and g.init_noise <= 0 and g.init_colors != "random":
            return ball  # DreamGaussian's start, exactly
        pts, cols = ball.means.double(), torch.full((len(ball), 3), float(g.init_color), dtype=torch.float64)
    elif kind in ("silhouette", "depth"):
        if ref is None:
            raise ConfigError(f"gaussians.init={kind} lifts the input image: it needs image mode")
        if kind == "silhouette":
            pts, cols = silhouette_points(ref, g.init_radius, g.num_points, gen)
        else:
            pts, cols = depth_points(ref, arg, g.num_points, gen)
    else:
        if kind == "points":
            pts, cols = load_point_cloud(arg)
            pts = normalize_points(pts, g.init_radius)
        else:
            from .mesh.io import normalize_mesh

            pts, cols = sample_mesh_points(normalize_mesh(_load_mesh_spec(arg), g.init_radius), g.num_points, gen)
        if cols is None:
            cols = torch.full_like(pts, float(g.init_color))
        pts, cols = grow_points(pts, cols, g.init_grow_samples, g.init_grow_distance, g.init_color_jitter, gen)
        if len(pts) > g.num_points:
            keep = torch.randperm(len(pts), generator=gen)[:g.num_points]
            pts, cols = pts[keep], cols[keep]
    if g.init_noise > 0:
        pts = pts + g.init_noise * torch.randn(pts.shape, generator=gen, dtype=torch.float64)
    if g.init_colors == "random":
        cols = torch.rand(pts.shape, generator=gen, dtype=torch.float64)
    elif g.init_colors == "grey":
        cols = torch.full_like(pts, float(g.init_color))
    scales = torch.full((len(pts), 3), g.init_scale) if g.init_scale > 0 else None
    return GaussianModel.from_points(pts.float(), cols.float(), opacity=g.init_opacity, sh_degree=g.sh_degree,
                                     scales=scales)
