"""How strongly does each distillation rule pull a render back towards the data? (issue 18, ISM)

For an oracle prior, a reference render ``r`` of the asset and a random unit direction ``d`` in
image space, the rule's gradient is taken at ``r`` and at ``r + a d`` with the same timestep and
noise; the restoring strength is ``<g(r + a d) - g(r), d> / a``, divided by the rule's own weight
(SDS ``1 - abar_t``; ISM ``grad_scale * sqrt((1 - abar_t) / abar_t)``) so that the rules compare in
units of their noise difference. SDS's term ``eps_hat(x_t) - eps`` moves with the render: about
``a_t / s_t`` per unit deviation. ISM's ``eps_cfg(x_t) - eps_u(x_s)``, with ``x_s`` and ``x_t`` the
DDIM inversion of the render, is for an exact denoiser ``a_t / s_t (x0_hat_u(x_s) - x0_hat(x_t))``:
it moves with the render only where the denoised estimate changes between ``s`` and ``t``.

    python benchmarks/ism_restoring.py --asset mug --sigmas 0 0.1 0.3 1.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--asset", default="mug")
    ap.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 0.1, 0.3, 1.0],
                    help="prior.oracle_data_sigma values (0: the exact oracle)")
    ap.add_argument("--timesteps", nargs="+", type=int, default=[100, 300, 500, 700, 900])
    ap.add_argument("--deviation", type=float, default=0.1, help="a: the size of the deviation (image units, [0, 1])")
    ap.add_argument("--directions", type=int, default=4)
    ap.add_argument("--views", type=int, default=4, help="reference views (spread over the library)")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "ci_size.yaml"))
    args = ap.parse_args(argv)

    from dreamgs.cameras import make_cameras
    from dreamgs.config import load_config
    from dreamgs.priors import distill as D
    from dreamgs.priors import load_prior

    print("| `prior.oracle_data_sigma` | t | SDS: restoring strength | ISM: restoring strength | ISM / SDS |")
    print("|---|---|---|---|---|")
    for sigma in args.sigmas:
        cfg = load_config("text", args.config, ["prior.kind=oracle", f"prior.asset={args.asset}", "prompt=an object",
                                               "prior.distill=ism", f"prior.oracle_data_sigma={sigma}"])
        prior = load_prior(cfg, torch.device("cpu"), None)
        ism = D.build_rule(cfg, prior)
        own = (prior.asset_id == prior.asset_index).nonzero(as_tuple=True)[0]
        picks = own[torch.linspace(0, len(own) - 1, args.views).round().long()]
        ac = prior.alphas_cumprod.double()
        g = torch.Generator().manual_seed(0)

        def grad(rule, x, cams, t, noise):
            x = x.clone().requires_grad_(True)
            rule(x, cams, 0.5, t=t, noise=noise).backward()
            return x.grad.double()

        for t in args.timesteps:
            strength = {"sds": [], "ism": []}
            for i in picks.tolist():
                cams = make_cameras(float(prior.el[i]), float(prior.az[i]), cfg.camera.radius, cfg.camera.fovy,
                                    prior.resolution)
                ref = (prior.Xc[i].double() + prior.mean).reshape(1, 3, prior.resolution, prior.resolution)
                img = (ref + 1) / 2
                for _ in range(args.directions):
                    d = torch.randn(img.shape, generator=g, dtype=torch.float64)
                    d /= d.norm()
                    noise = torch.randn(img.shape, generator=g, dtype=torch.float64)
                    for name, rule, w in (
                            ("sds", lambda x, c, p, t, noise: D.sds(prior, x, c, p, t=t, noise=noise), 1 - ac[t]),
                            ("ism", ism, ism.grad_scale * ((1 - ac[t]) / ac[t]).sqrt())):
                        g0 = grad(rule, img, cams, t, noise)
                        g1 = grad(rule, img + args.deviation * d, cams, t, noise)
                        # in the model's space ([-1, 1]: twice the image's), per unit of the rule's weight
                        strength[name].append(float(((g1 - g0) / 2 * d).sum() / (2 * args.deviation) / w))
            sds_s, ism_s = (sum(v) / len(v) for v in (strength["sds"], strength["ism"]))
            print(f"| {sigma:g} | {t} | {sds_s:.3f} | {ism_s:.2e} | {ism_s / sds_s:.1e} |", flush=True)
            print(json.dumps({"asset": args.asset, "sigma": sigma, "t": t, "sds": sds_s, "ism": ism_s}), flush=True)


if __name__ == "__main__":
    main()
