"""Timings of the torch mesh rasteriser (CPU, and CUDA when available).

    python benchmarks/bench_mesh_raster.py [--quick]

Cases: the oracle prior's reference views (100 views at 64x64 of a ~20k-face mesh) and texture
baking (26 views at 512x512 of a ~100k-face textured mesh, one view at a time and all at once).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from dreamgs.cameras import orbit_views, sphere_views
from dreamgs.mesh.core import Mesh
from dreamgs.mesh.raster import rasterize, render_mesh


def torus(n_major: int, n_minor: int, R: float = 0.35, r: float = 0.15) -> Mesh:
    """A closed torus with 2 * n_major * n_minor faces, UV-mapped, with a random texture."""
    i = torch.arange(n_major).repeat_interleave(n_minor)
    j = torch.arange(n_minor).repeat(n_major)
    a = i * (2 * math.pi / n_major)
    b = j * (2 * math.pi / n_minor)
    verts = torch.stack([(R + r * torch.cos(b)) * torch.cos(a), r * torch.sin(b),
                         (R + r * torch.cos(b)) * torch.sin(a)], -1).float()
    i1, j1 = (i + 1) % n_major, (j + 1) % n_minor
    v00, v10, v01, v11 = i * n_minor + j, i1 * n_minor + j, i * n_minor + j1, i1 * n_minor + j1
    faces = torch.cat([torch.stack([v00, v01, v11], -1), torch.stack([v00, v11, v10], -1)])
    # Per-corner uvs on an unwrapped grid (a seam at the wrap-around).
    uu = torch.arange(n_major + 1) / n_major
    vv = torch.arange(n_minor + 1) / n_minor
    uvs = torch.stack([uu.repeat_interleave(n_minor + 1), vv.repeat(n_major + 1)], -1).float()
    g = lambda ii, jj: ii * (n_minor + 1) + jj  # noqa: E731
    t00, t10, t01, t11 = g(i, j), g(i + 1, j), g(i, j + 1), g(i + 1, j + 1)
    face_uvs = torch.cat([torch.stack([t00, t01, t11], -1), torch.stack([t00, t11, t10], -1)])
    tex = torch.rand(1024, 1024, 3, generator=torch.Generator().manual_seed(0))
    return Mesh(verts, faces, uvs=uvs, face_uvs=face_uvs, texture=tex)


def timeit(fn, device, repeat=3, reduce=min):
    """``reduce`` (min: the best) of ``repeat`` timed calls after a warm-up."""
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return reduce(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one repeat per case")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else 3
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    small = torus(128, 80)  # 20,480 faces
    big = torus(320, 160)  # 102,400 faces
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for dev in devices:
        ms, mb = small.to(dev), big.to(dev)
        views64 = orbit_views(100, -15.0, 2.5, 49.1, 64, device=dev)
        views512 = sphere_views(26, 2.5, 49.1, 512, device=dev)
        one512 = views512[0]
        cases = [
            ("rasterize 100 x 64^2, 20k faces", lambda: rasterize(ms.vertices, ms.faces, views64)),
            ("render_mesh 100 x 64^2, 20k faces", lambda: render_mesh(ms, views64)),
            ("rasterize 1 x 512^2, 100k faces", lambda: rasterize(mb.vertices, mb.faces, one512)),
            ("render_mesh 1 x 512^2, 100k faces", lambda: render_mesh(mb, one512)),
            ("render_mesh 26 x 512^2, 100k faces", lambda: render_mesh(mb, views512)),
        ]
        for name, fn in cases:
            print(f"[{dev.type}] {name}: {timeit(fn, dev, repeat) * 1000:.0f} ms", flush=True)
        tex = mb.texture.clone().requires_grad_(True)
        mt = mb.with_texture(tex)

        def step():
            render_mesh(mt, views512[:4]).rgb.square().mean().backward()

        print(f"[{dev.type}] render_mesh + texture backward 4 x 512^2, 100k faces: "
              f"{timeit(step, dev, repeat) * 1000:.0f} ms", flush=True)


if __name__ == "__main__":
    main()
