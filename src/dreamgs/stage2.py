"""Stage 2: Gaussians -> textured mesh (DreamGaussian's second stage).

Extract a mesh from the Gaussians' density, unwrap it, bake colours from Gaussian renders taken
around the sphere, then refine the texture alone in UV space: at each step the textured mesh is
rendered from a random camera, the prior refines that render SDEdit-style (noise to a small
timestep, a few DDIM steps back), and the texture follows the refined image under an MSE loss.
The noise level falls over the steps, i.e. the refinement trusts the render more and more
(DreamGaussian's rising "strength" 0.8 -> 0.95 on a 50-step DDIM grid with ``stage2.sdedit=ddim``;
``noise_start`` -> ``noise_end`` with ``linear``). In image mode the reference view's colour is
added, where the rendered mesh faces the camera (or, with ``stage2.ref_mask=input``, where the
input shows the object).

With ``stage2.geometry=true`` (DreamGaussian's ``train_geo``) the vertices move too: learnable
offsets in their own Adam group, renders antialiased at silhouettes so that the image loss
reaches the vertices, and a Laplacian (of the offsets) and a normal-consistency regulariser. The
faces are kept, so the mesh stays as watertight as it was extracted and within the face budget.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from .cameras import sphere_views
from .config import Config
from .errors import TrainingError
from .gaussians import GaussianModel
from .mesh import Mesh
from .priors.base import Prior
from .progress import Progress, phase
from .render import render
from .train import finite_and_floats


@torch.no_grad()
def bake_from_gaussians(model: GaussianModel, mesh: Mesh, cfg: Config, batch: int = 4) -> torch.Tensor:
    """A texture for ``mesh`` (S, S, 3) baked from renders of ``model`` around the sphere (the
    Gaussians, or any representation with ``render_rgba``: the NeRF's albedo)."""
    from .mesh.texture import bake, mesh_depths
    from .representations.base import surface_renders

    tc = cfg.texture
    cams = sphere_views(tc.bake_views, cfg.camera.radius, cfg.camera.fovy, tc.bake_resolution, device=model.device)
    images = []
    for i in range(0, len(cams), batch):
        if isinstance(model, GaussianModel):
            out = render(model, cams[i:i + batch], background=torch.zeros(3, device=model.device),
                         backend=cfg.backend)
            rgb, alpha = out.rgb, out.alpha
        elif hasattr(model, "render_rgba") and hasattr(cfg, "nerf"):  # the NeRF: its albedo, cfg's sampling
            rgb, alpha = model.render_rgba(cams[i:i + batch].to(model.device), samples=cfg.nerf.bake_samples,
                                           occupancy_threshold=cfg.nerf.occ_threshold)
        else:
            rgb, alpha = surface_renders(model, cams[i:i + batch])
        # Un-premultiply: colours of the surface, not mixed with the background at soft edges.
        images.append(torch.where(alpha > 1e-3, rgb / alpha.clamp_min(1e-3), rgb).clamp(0, 1))
    images = torch.cat(images)
    depths = mesh_depths(mesh, cams)
    texture, _ = bake(mesh, cams, images, depths, tc.size, tc.cos_threshold)
    return texture


REF_VIEW_COS = 0.5  # DreamGaussian's stage-2 reference mask: rendered pixels facing the camera this much


def noise_level(cfg: Config, step: int) -> float:
    """The ``strength`` handed to ``prior.refine`` at ``step`` (0-based), for ``stage2.sdedit``."""
    s = cfg.stage2
    if s.sdedit == "ddim":  # DreamGaussian: step_ratio = (step + 1) / iters
        frac = min(1.0, (step + 1) / max(1, s.iters))
        return s.strength_start + (s.strength_end - s.strength_start) * frac
    frac = step / max(1, s.iters - 1)
    return s.noise_start + (s.noise_end - s.noise_start) * frac


def refine_steps(cfg: Config) -> int:
    """The ``steps`` handed to ``prior.refine``: the DDIM grid size, or the linear step count."""
    return cfg.stage2.ddim_steps if cfg.stage2.sdedit == "ddim" else cfg.stage2.refine_steps


def reference_view_loss(r, ref, cfg: Config) -> torch.Tensor:
    """Stage 2's image-mode loss: MSE of the mesh render ``r`` (a MeshRender of ``ref.cams``
    over white) against the input composited over white, inside a mask, times ``lambda_ref``.

    ``ref_mask=render`` (DreamGaussian): pixels the mesh covers whose face normal has a cosine
    > 0.5 with the camera's viewing axis; ``input``: the input's alpha (soft mask).
    """
    a = ref.rgba[..., 3:4]
    gt = ref.rgba[..., :3] * a + (1 - a)
    if cfg.stage2.ref_mask == "render":
        fwd = ref.cams.viewmats[0, 2, :3].to(r.normal)  # the camera's +z (viewing) axis in world space
        viewcos = -(r.normal[0] * fwd).sum(-1, keepdim=True)
        mask = ((r.alpha[0] > 0) & (viewcos > REF_VIEW_COS)).to(r.rgb.dtype).detach()
    else:
        mask = a
    return cfg.stage2.lambda_ref * F.mse_loss(r.rgb[0] * mask, gt * mask)


def refine_texture(mesh: Mesh, prior: Prior, cfg: Config, ref=None, generator: torch.Generator | None = None,
                   progress: bool = True, callback: Callable[[int, float], None] | None = None,
                   stats: dict | None = None) -> Mesh:
    """Optimise the texture of ``mesh`` against prior-refined renders; returns the new mesh.

    A step whose loss or texture gradient is not finite is skipped and counted in
    ``stats["bad_steps"]``; more than ``stage2.max_bad_steps`` of them raise :class:`TrainingError`.
    """
    from .mesh.raster import render_mesh
    from .stage1 import step_cameras

    s2 = cfg.stage2
    dev = mesh.device
    tex = mesh.texture.clamp(1e-4, 1 - 1e-4)
    logits = torch.logit(tex).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=s2.lr)
    offsets = None
    if s2.geometry:  # DreamGaussian's train_geo: vertex offsets in their own Adam group
        offsets = torch.zeros_like(mesh.vertices, requires_grad=True)
        opt.add_param_group({"params": [offsets], "lr": s2.geometry_lr})
    gen = generator or torch.Generator().manual_seed(int(cfg.seed or 0))
    stats = {} if stats is None else stats
    stats["bad_steps"] = 0
    bar = Progress("stage 2: texture", s2.iters, "steps", enabled=progress)
    for step in range(s2.iters):
        textured = mesh.with_texture(torch.sigmoid(logits))
        if offsets is not None:
            textured = replace(textured, vertices=mesh.vertices + offsets)
        # multi-view priors refine whole view groups (see stage1.step_cameras)
        cams = step_cameras(cfg, prior, s2.batch_size, s2.render_size, dev, gen, relative=ref is not None)
        views = len(cams) // s2.batch_size
        white = (torch.rand(s2.batch_size, generator=gen) < cfg.stage1.white_background_prob).repeat_interleave(views)
        bg = white.float()[:, None].expand(-1, 3).to(dev)
        out = render_mesh(textured, cams, background=bg, antialias=s2.geometry)
        images = out.rgb.permute(0, 3, 1, 2)
        target = prior.refine(images.detach(), cams, noise_level(cfg, step), refine_steps(cfg), schedule=s2.sdedit)
        loss = getattr(prior, "refine_weight", 1.0) * F.mse_loss(images, target)
        if ref is not None:
            white3 = torch.ones(3, device=dev)
            r = render_mesh(textured, ref.cams.to(dev), background=white3, antialias=s2.geometry)
            loss = loss + reference_view_loss(r, ref, cfg)
        if offsets is not None:
            loss = loss + geometry_regularizer(textured, offsets, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        checked = [loss, logits.grad] + ([offsets.grad] if offsets is not None else [])
        ok, (loss_value,) = finite_and_floats(checked, [loss])  # one wait for the device
        if not ok:
            opt.zero_grad(set_to_none=True)
            stats["bad_steps"] += 1
            if stats["bad_steps"] > s2.max_bad_steps:
                raise TrainingError(f"stage 2: {stats['bad_steps']} texture steps had a non-finite loss or gradient "
                                    f"(limit stage2.max_bad_steps={s2.max_bad_steps}); the refinement diverged")
        else:
            opt.step()
        if callback is not None:
            callback(step + 1, loss_value)
        bar.update(1, f"loss {loss_value:.4g}")
    bar.close()
    out = mesh.with_texture(torch.sigmoid(logits).detach())
    if offsets is not None:  # same faces, moved vertices: the topology (watertightness, face count) is kept
        out = replace(out, vertices=(mesh.vertices + offsets).detach())
    return out


def geometry_regularizer(mesh: Mesh, offsets: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``stage2.geometry``'s regularisers: the uniform Laplacian of the vertex offsets (smooth
    deformations; the starting mesh costs nothing) and the normal consistency of the moved mesh."""
    from .mesh.regularize import laplacian_loss, normal_consistency_loss

    s2 = cfg.stage2
    loss = offsets.sum() * 0
    if s2.lambda_laplacian > 0:
        loss = loss + s2.lambda_laplacian * laplacian_loss(offsets, mesh.faces)
    if s2.lambda_normal > 0:
        loss = loss + s2.lambda_normal * normal_consistency_loss(mesh.vertices, mesh.faces)
    return loss


def run_stage2(model: GaussianModel, prior: Prior | None, cfg: Config, ref=None, progress: bool = True,
               timings: dict[str, float] | None = None,
               callback: Callable[[int, float], None] | None = None, stats: dict | None = None) -> Mesh:
    """Gaussians -> extracted, unwrapped, baked and (if ``prior``) refined textured mesh.

    ``stats`` (optional) receives ``bad_steps``: skipped non-finite texture steps."""
    from .mesh.extract import extract_mesh
    from .mesh.texture import unwrap

    timings = {} if timings is None else timings
    t = time.perf_counter()
    source = getattr(model, "mesh_source", f"{cfg.mesh.grid_resolution}^3 density grid")
    with phase("stage 2: extracting the mesh", source, progress):
        if isinstance(model, GaussianModel):
            mesh = extract_mesh(model, cfg.mesh, timings=timings)
        else:  # another representation (the NeRF): its density through the same marching cubes
            mesh = model.to_mesh(cfg.mesh, cfg.nerf.mesh_threshold, timings)
        t = _lap(timings, "extract", t)
    with phase("stage 2: unwrapping UVs", f"{mesh.num_faces} faces", progress):
        mesh = unwrap(mesh, resolution=cfg.texture.size, max_piece_faces=cfg.texture.unwrap_piece_faces)
        t = _lap(timings, "unwrap", t)
    with phase("stage 2: baking the texture", f"{cfg.texture.bake_views} views", progress):
        mesh = mesh.with_texture(bake_from_gaussians(model, mesh, cfg))
        t = _lap(timings, "bake", t)
    if prior is not None and cfg.stage2.iters > 0:
        mesh = refine_texture(mesh, prior, cfg, ref, progress=progress, callback=callback, stats=stats)
        _lap(timings, "refine", t)
    return mesh


def _lap(timings: dict[str, float], name: str, start: float) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - start
    return now
