"""Timings of Gaussians -> textured mesh, step by step (CPU, or CUDA with --device cuda).

    python benchmarks/bench_mesh.py [--ply MODEL.ply] [--device cpu|cuda] [--threads N]

Steps: density grid (128^3 by default), marching cubes (with cavity filling), clean-up,
decimation (to 100k faces), UV unwrap (xatlas), and texture baking from 26 views at 512x512
into a 1024^2 texture, split into: rendering the Gaussians from the bake views (the bake's
input), the mesh z-buffer of those views, the UV rasterisation (texel maps), and the
back-projection with inpainting. ``export`` times writing the .glb and the .obj triple.
``--refine PRIOR`` adds stage 2's texture refinement (``stage2.*`` defaults: 50 steps of 512 px
renders, 5 DDIM steps each) with ``oracle`` or a Stable Diffusion folder (e.g. the random
full-size one from ``full_size_models.py``); ``--refine-iters`` shortens it (per-step time is
printed too).

Without --ply the model is a representative synthetic one: ~30k flat Gaussians tangent to the
surface of the built-in "house" asset (coloured from its texture, the way a fit or score
distillation leaves them), ~3k blobs just inside it and ~300 faint floaters around it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from dreamgs.cameras import sphere_views
from dreamgs.config import MeshConfig, TextureConfig
from dreamgs.gaussians import GaussianModel, load_ply, rgb_to_sh
from dreamgs.mesh.core import Mesh
from dreamgs.mesh.extract import decimate, extract_mesh
from dreamgs.mesh.raster import sample_texture
from dreamgs.mesh.texture import bake, mesh_depths, texel_maps, unwrap
from dreamgs.render import render


def _rotation_to(normals: torch.Tensor) -> torch.Tensor:
    """Quaternions (w, x, y, z) turning +z onto each unit normal."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    axis = torch.linalg.cross(z, normals)
    s, c = axis.norm(dim=-1, keepdim=True), (z * normals).sum(-1, keepdim=True)
    half = torch.atan2(s, c) / 2
    axis = torch.where(s > 1e-9, axis / s.clamp_min(1e-12), torch.tensor([1.0, 0.0, 0.0]))
    return torch.cat([torch.cos(half), axis * torch.sin(half)], -1)


def synthetic_model(n_surface: int = 30_000, seed: int = 0) -> GaussianModel:
    from dreamgs.assets import make_asset

    g = torch.Generator().manual_seed(seed)
    mesh = make_asset("house")
    tri = mesh.vertices[mesh.faces]
    cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = cross.norm(dim=-1) / 2
    normal = cross / cross.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    face = torch.multinomial(area, n_surface, replacement=True, generator=g)
    r1, r2 = torch.rand(n_surface, generator=g).sqrt(), torch.rand(n_surface, generator=g)
    w = torch.stack([1 - r1, r1 * (1 - r2), r1 * r2], -1)
    points = (tri[face] * w[..., None]).sum(1)
    uv = (mesh.uvs[mesh.face_uvs[face]] * w[..., None]).sum(1)
    colors = sample_texture(mesh.texture, uv)
    # Disks about as wide as their spacing, so they overlap into an opaque surface.
    tangent = 1.2 * math.sqrt(float(area.sum()) / n_surface)
    scales = torch.tensor([tangent, tangent, tangent / 10]) * (0.8 + 0.4 * torch.rand(n_surface, 1, generator=g))
    quats = _rotation_to(normal[face])
    opac = 0.5 + 0.5 * torch.rand(n_surface, generator=g)

    n_in = n_surface // 10
    pick = torch.randint(0, n_surface, (n_in,), generator=g)
    inner = points[pick] - normal[face[pick]] * 0.03 * torch.rand(n_in, 1, generator=g)
    n_far = n_surface // 100
    d = torch.randn(n_far, 3, generator=g)
    far = d / d.norm(dim=-1, keepdim=True) * (0.3 + 0.3 * torch.rand(n_far, 1, generator=g))

    means = torch.cat([points, inner, far])
    all_scales = torch.cat([scales, torch.full((n_in, 3), 0.02), torch.full((n_far, 3), 0.03)])
    all_quats = torch.cat([quats, torch.tensor([1.0, 0, 0, 0]).expand(n_in + n_far, 4)])
    all_opac = torch.cat([opac, torch.full((n_in,), 0.3), 0.02 + 0.08 * torch.rand(n_far, generator=g)])
    all_colors = torch.cat([colors, colors[pick], torch.rand(n_far, 3, generator=g)])
    n = len(means)
    params = {
        "means": means.float(),
        "scales": all_scales.float().log(),
        "quats": all_quats.float(),
        "opacities": torch.logit(all_opac.float()),
        "sh0": rgb_to_sh(all_colors.float())[:, None, :],
        "shN": torch.zeros(n, 0, 3),
    }
    return GaussianModel(params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ply", help="a 3DGS .ply to mesh instead of the synthetic model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--resolution", type=int, default=MeshConfig.grid_resolution)
    ap.add_argument("--faces", type=int, default=MeshConfig.target_faces)
    ap.add_argument("--texture", type=int, default=TextureConfig.size)
    ap.add_argument("--views", type=int, default=TextureConfig.bake_views)
    ap.add_argument("--unwrap-piece-faces", type=int, default=TextureConfig.unwrap_piece_faces,
                    help="xatlas piece size (0: chart the mesh whole)")
    ap.add_argument("--refine", metavar="PRIOR", help="also time the texture refinement: oracle or an SD folder")
    ap.add_argument("--refine-iters", type=int, default=0, help="refinement steps (0: the stage2.iters default)")
    ap.add_argument("--view-size", type=int, default=TextureConfig.bake_resolution)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows: list[tuple[str, float, str]] = []

    def timed(name: str, note: str, fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        rows.append((name, time.perf_counter() - t0, note))
        return out

    model = load_ply(args.ply) if args.ply else synthetic_model()
    model = model.to(device)

    steps: dict[str, float] = {}
    cfg = MeshConfig(grid_resolution=args.resolution, target_faces=args.faces)
    extract_mesh(model, MeshConfig(grid_resolution=32, target_faces=0))  # warm-up (imports, allocator)
    mesh = extract_mesh(model, cfg, timings=steps)
    r = args.resolution
    rows += [("density grid", steps["density_grid"], f"{r}^3, {len(model)} Gaussians"),
             ("marching cubes", steps["marching_cubes"], "incl. cavity filling"),
             ("clean-up", steps["cleanup"], "before and after decimation" if "decimate" in steps else "")]
    if "decimate" in steps:
        rows.append(("decimation", steps["decimate"], f"to <= {args.faces} faces -> {mesh.num_faces}"))
    else:  # the surface is already below the target: time halving it instead, keep the full mesh
        v, f = mesh.vertices.double().cpu().numpy(), mesh.faces.cpu().numpy()
        half = timed("decimation", "", lambda: decimate(v, f, len(f) // 2))
        rows[-1] = ("decimation", rows[-1][1], f"{len(f)} -> {len(half[1])} faces (mesh was below {args.faces})")

    mesh = timed("unwrap (xatlas)", f"{mesh.num_faces} faces",
                 lambda: unwrap(mesh, resolution=args.texture, max_piece_faces=args.unwrap_piece_faces))
    cams = sphere_views(args.views, radius=2.5, fovy=49.1, size=args.view_size, device=device)
    images = timed("render views (Gaussians)", f"{args.views} x {args.view_size}^2",
                   lambda: render(model, cams, background=torch.ones(3, device=device)).rgb)
    depths = timed("mesh z-buffer", f"{args.views} x {args.view_size}^2", lambda: mesh_depths(mesh, cams))
    _, _, covered = timed("texel maps (UV raster)", f"{args.texture}^2", lambda: texel_maps(mesh, args.texture))
    texture, filled = timed("bake (all: texel maps, project, inpaint)", f"{args.texture}^2 texture",
                            lambda: bake(mesh, cams, images, depths, args.texture, TextureConfig.cos_threshold))
    textured = Mesh(mesh.vertices, mesh.faces, mesh.uvs, mesh.face_uvs, texture).to("cpu")

    from dreamgs.export import save_glb, save_obj

    with tempfile.TemporaryDirectory() as tmp:
        timed("export .glb", "", lambda: save_glb(textured, Path(tmp) / "m.glb"))
        timed("export .obj/.mtl/.png", "", lambda: save_obj(textured, Path(tmp) / "m.obj"))

    if args.refine:
        from dreamgs.config import load_config
        from dreamgs.priors import load_prior
        from dreamgs.stage2 import refine_texture

        ov = [f"device={device}", "prompt=a house", "seed=0"]
        ov += ["prior.kind=oracle"] if args.refine == "oracle" else ["prior.kind=sd", f"prior.model={args.refine}"]
        if args.refine_iters:
            ov.append(f"stage2.iters={args.refine_iters}")
        cfg = load_config("text", None, ov)
        prior = timed("load prior", args.refine, lambda: load_prior(cfg, device))
        s2 = cfg.stage2
        timed(f"refine ({s2.iters} steps)", f"{s2.render_size}^2, {s2.refine_steps} DDIM steps each",
              lambda: refine_texture(textured.to(device), prior, cfg, progress=False))
        rows.append(("  per refinement step", rows[-1][1] / s2.iters, ""))

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device {device}, torch threads {threads}, model {len(model)} Gaussians, mesh {mesh.num_vertices} "
          f"vertices / {mesh.num_faces} faces; atlas covers {float(covered.float().mean()):.1%} of the texture, "
          f"{float(filled.sum() / covered.sum()):.1%} of those texels seen by a view")
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'seconds':>8}  notes")
    for name, sec, note in rows:
        print(f"{name:<{width}}  {sec:8.3f}  {note}")
    print(f"{'total':<{width}}  {sum(r[1] for r in rows if not r[0].startswith(' ')):8.3f}")


if __name__ == "__main__":
    main()
