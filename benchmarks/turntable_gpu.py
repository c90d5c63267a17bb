"""GPU check for turntable videos: gsplat backend speed and fidelity against the torch backend.

Usage (on a CUDA machine): python benchmarks/turntable_gpu.py [--out OUT_DIR] [--gaussians N]

Renders a random 3D Gaussian scene as a 90-frame 512x512 turntable with the gsplat backend, reports
the wall time and frames per second, and compares frame 0 of the video (after H.264) with a
direct torch-backend render of the same camera (PSNR). Writes the .mp4, a 2x3 grid PNG of six
views and a round-tripped .ply into OUT_DIR.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dreamgs.cameras import orbit_views  # noqa: E402
from dreamgs.gaussians import GaussianModel, load_ply, save_ply  # noqa: E402
from dreamgs.media import gaussian_render_fn, save_grid, turntable  # noqa: E402
from dreamgs.render import render  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/bench_turntable")
    ap.add_argument("--gaussians", type=int, default=50_000)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda", help="cuda (gsplat backend); cpu only for a smoke run")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA device (or --device cpu for a smoke run)")
    n, size = args.frames, args.size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    model = GaussianModel.random_ball(args.gaussians, 0.5, opacity=0.5, generator=g)
    model.params["sh0"] += 0.8 * torch.randn(model.params["sh0"].shape, generator=g)
    model.params["scales"] -= 0.5
    ply = save_ply(model, out / "scene.ply")
    model = load_ply(ply, device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    render_fn = gaussian_render_fn(model)
    render_fn(orbit_views(8, 0.0, 2.5, 49.1, size))  # warm-up (CUDA kernels, allocator)
    sync()
    t0 = time.perf_counter()
    path = turntable(render_fn, out / "turntable.mp4", frames=n, size=size, batch=8, progress=True)
    seconds = time.perf_counter() - t0
    print(f"turntable: {n} frames {size}x{size}, {len(model)} Gaussians, in {seconds:.2f} s "
          f"({n / seconds:.1f} frames/s, encoding included)")

    import imageio

    reader = imageio.get_reader(str(path), "ffmpeg")
    frame0 = reader.get_data(0).astype(np.float32) / 255
    reader.close()
    cams = orbit_views(n, 0.0, 2.5, 49.1, size)
    with torch.no_grad():
        ref = render(model, cams[0], background=(1.0, 1.0, 1.0), backend="torch").rgb[0].clamp(0, 1).cpu().numpy()
    mse = float(np.mean((frame0 - ref) ** 2))
    print(f"frame 0 vs torch-backend render: PSNR {10 * np.log10(1 / mse):.2f} dB (expect >= 30)")
    views = render_fn(orbit_views(6, -20.0, 2.5, 49.1, 256))
    print("grid:", save_grid(out / "views.png", views, ncols=3, pad=2))


if __name__ == "__main__":
    main()
