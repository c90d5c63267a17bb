"""One stage-2 geometry step of the torch mesh rasteriser: render + backward at 512², with and
without the analytic antialiasing (issue 17), on a textured torus with learnable vertices.

    python benchmarks/antialias_speed.py [--device cuda] [--size 512] [--faces 20000 100000] [--batch 1 4]

Prints, per case, the median wall time of forward + backward (ms), the antialiasing pass's share
and peak memory on CUDA. ``benchmarks/device.sh antialias`` runs it on the GPU.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from dreamgs.cameras import sphere_views
from dreamgs.mesh.core import Mesh
from dreamgs.mesh.raster import antialias, edge_neighbors, project_vertices, rasterize, render_mesh

from bench_mesh_raster import timeit, torus


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--faces", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device), "torch", torch.__version__)
    print(f"| faces | views | size | render + backward (ms) | antialiased (ms) | antialias pass alone, fwd + bwd (ms) "
          f"| neighbour pairs seeing different faces | peak memory antialiased (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for nf in args.faces:
        n = max(4, int(round(math.sqrt(nf / 2))))
        base = torus(n * 2, n // 2 if n > 8 else n).to(device)
        verts = base.vertices.clone().requires_grad_(True)
        tex = base.texture.clone().requires_grad_(True)
        for b in args.batch:
            cams = sphere_views(b, 2.5, 49.1, args.size, device=device)

            def step(aa: bool):
                mesh = Mesh(verts, base.faces, base.uvs, base.face_uvs, tex)
                out = render_mesh(mesh, cams, background=torch.ones(3, device=device), antialias=aa)
                out.rgb.square().mean().backward()

            plain = timeit(lambda: step(False), device, args.repeat, statistics.median)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            aa = timeit(lambda: step(True), device, args.repeat, statistics.median)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            # The pass alone, on a fixed raster.
            frags = rasterize(verts.detach(), base.faces, cams)
            img = torch.rand(*frags.face_id.shape, 4, device=device, requires_grad=True)
            nb = edge_neighbors(base.faces)

            def pass_only():
                out = antialias(img, frags, project_vertices(verts, cams), base.faces, nb)
                out.square().mean().backward()

            alone = timeit(pass_only, device, args.repeat, statistics.median)
            fid = frags.face_id
            pairs = int((fid[:, :, 1:] != fid[:, :, :-1]).sum() + (fid[:, 1:] != fid[:, :-1]).sum())
            print(f"| {base.num_faces} | {b} | {args.size} | {1000 * plain:.1f} | {1000 * aa:.1f} | {1000 * alone:.1f} "
                  f"| {pairs} | {peak:.2f} |")


if __name__ == "__main__":
    main()
