"""DreamFusion's representation: a NeRF of density and albedo, volume-rendered with shading.

Field. A point x in the box [-b, b]^3 is encoded by a multiresolution grid (instant-NGP style):
at each level a table of feature vectors on a lattice of R^3 points, read trilinearly. A level
whose lattice fits in the table size is dense (index i + R (j + R k)); finer levels hash their
corners into the table (the spatial hash with primes 1, 2654435761, 805459861). A small MLP
maps the concatenated features to a raw density and a raw albedo:

    density(x) = softplus(raw(x) + blob(x)),  blob(x) = blob_scale * (1 - |x| / blob_std)
    albedo(x)  = sigmoid(raw_rgb(x))

(with ``density_activation="exp"``, density(x) = exp(min(raw(x) + blob(x), 11)), stable-dreamfusion's
choice: the density can grow far higher, so the surface gets sharper).

The blob is DreamFusion's centre bias (threestudio's ``blob_magic3d``): at the start the field is a
soft ball that score distillation carves. Normals are the negative normalised density gradient,
taken by autograd through the trilinear reads (exact, and differentiable for the orientation loss).

Rendering. Each ray is clipped to the box and sampled at ``samples`` stratified points (one
uniform draw per bin). An occupancy grid (``occ_resolution``^3 cells, refreshed from the density
every few steps, with an exponential decay of old values) skips samples in empty cells. With
alpha_i = 1 - exp(-sigma_i delta_i) and T_i = prod_{j<i} (1 - alpha_j), the weights are
w_i = T_i alpha_i; colour, opacity, depth and normal are their w-weighted sums.

Shading (DreamFusion): ``albedo`` (the colour itself), ``lambertian``
(albedo * (ambient + diffuse * max(0, n . l)), l towards a point light) and ``textureless`` (the
same with a white albedo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras

PRIMES = (1, 2654435761, 805459861)
EXP_CLAMP = 11.0  # density_activation="exp": exp(min(z, 11)), so a density stays below ~6e4
SHADINGS = ("albedo", "lambertian", "textureless")


@dataclass
class NerfSpec:
    """The field's shape (saved with it): box half-size, grid levels, MLP width, blob."""

    bound: float = 0.75
    levels: int = 6
    base_resolution: int = 16
    max_resolution: int = 96
    features: int = 2
    log2_table: int = 19
    hidden: int = 32
    blob_scale: float = 10.0
    blob_std: float = 0.5
    occ_resolution: int = 32
    density_activation: str = "softplus"  # softplus | exp (clamped at 11: density at most ~6e4)

    def resolutions(self) -> list[int]:
        if self.levels == 1:
            return [self.max_resolution]
        g = math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.levels - 1))
        return [int(math.floor(self.base_resolution * g**i + 1e-6)) for i in range(self.levels)]


@dataclass
class NerfRender:
    """Per-camera images (C, H, W, k) and, for the losses, the per-sample terms of the rays."""

    rgb: Tensor  # (C, H, W, 3) shaded colour over the background
    alpha: Tensor  # (C, H, W, 1) opacity
    depth: Tensor  # (C, H, W, 1) expected depth along the ray (0 where empty)
    normal: Tensor  # (C, H, W, 3) weighted world normal (zeros where not computed)
    orient: Tensor  # () orientation loss: sum_i w_i max(0, n_i . d)^2, averaged over rays
    facing_away: Tensor  # () fraction of the normal weight on normals with n . d > 0
    albedo: Tensor | None = None  # (C, H, W, 3) premultiplied albedo (no background)
    distortion: Tensor | None = None  # () the rays' distortion loss, averaged over rays (render's ``distortion``)

    def images(self) -> Tensor:
        return self.rgb.permute(0, 3, 1, 2)


class NerfModel:
    """A grid-encoded NeRF (see the module docstring); ``params`` are its trainable tensors."""

    def __init__(self, spec: NerfSpec, params: dict[str, Tensor], occupancy: Tensor | None = None):
        self.spec = spec
        self.params = params
        r = spec.occ_resolution
        dev = params["mlp.w0"].device
        self.occupancy = occupancy if occupancy is not None else torch.full((r, r, r), -1.0, device=dev)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: NerfSpec, generator: torch.Generator | None = None, device="cpu") -> "NerfModel":
        g = generator or torch.Generator().manual_seed(0)
        params = {}
        for i, res in enumerate(spec.resolutions()):
            size = min(res**3, 2**spec.log2_table)
            params[f"grid.{i}"] = (torch.rand(size, spec.features, generator=g) * 2 - 1) * 1e-4
        n_in = spec.levels * spec.features
        params["mlp.w0"] = torch.randn(n_in, spec.hidden, generator=g) * math.sqrt(2.0 / n_in)
        params["mlp.b0"] = torch.zeros(spec.hidden)
        params["mlp.w1"] = torch.randn(spec.hidden, 4, generator=g) * math.sqrt(1.0 / spec.hidden)
        params["mlp.b1"] = torch.zeros(4)
        params = {k: v.to(device).requires_grad_(True) for k, v in params.items()}
        return cls(spec, params)

    @property
    def device(self) -> torch.device:
        return self.params["mlp.w0"].device

    def detach(self) -> "NerfModel":
        return NerfModel(self.spec, {k: v.detach() for k, v in self.params.items()}, self.occupancy.clone())

    def to(self, device) -> "NerfModel":
        return NerfModel(self.spec, {k: v.detach().to(device).requires_grad_(True) for k, v in self.params.items()},
                         self.occupancy.to(device))

    def __len__(self) -> int:  # parameter count (the Gaussian model's len is its Gaussian count)
        return sum(v.numel() for v in self.params.values())

    # -- representation seam ---------------------------------------------------------------------

    def param_groups(self, lr_grid: float, lr_mlp: float) -> list[dict]:
        """One Adam group per tensor (named, as the checkpoint format wants)."""
        return [{"params": [p], "name": k, "lr": lr_grid if k.startswith("grid") else lr_mlp}
                for k, p in self.params.items()]

    # -- the field --------------------------------------------------------------------------------

    def encode(self, x: Tensor, with_jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
        """Grid features (N, levels * features) of world points (N, 3) in the box and, with
        ``with_jacobian``, their derivatives with respect to x (N, levels * features, 3), written
        out from the trilinear weights (first-order in the parameters, so the orientation loss
        needs no double backward)."""
        s = self.spec
        u = ((x / s.bound) * 0.5 + 0.5).clamp(0.0, 1.0)
        inside = ((x.abs() < s.bound).all(-1, keepdim=True)).to(x.dtype)  # clamped outside: no x-derivative
        corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], device=x.device).bool()
        feats, jacs = [], []
        for i, res in enumerate(s.resolutions()):
            table = self.params[f"grid.{i}"]
            pos = u * (res - 1)
            p0 = pos.detach().floor().clamp(0, res - 2)
            f = pos - p0  # (N, 3)
            idx = p0.long()[:, None, :] + corners[None].long()  # (N, 8, 3)
            g = torch.where(corners[None], f[:, None, :], 1.0 - f[:, None, :])  # (N, 8, 3)
            w = g.prod(-1)  # (N, 8)
            if res**3 <= table.shape[0]:
                flat = idx[..., 0] + res * (idx[..., 1] + res * idx[..., 2])
            else:
                flat = (idx[..., 0] * PRIMES[0]) ^ (idx[..., 1] * PRIMES[1]) ^ (idx[..., 2] * PRIMES[2])
                flat = flat % table.shape[0]
            vals = F.embedding(flat, table)  # (N, 8, F)
            feats.append((vals * w[..., None]).sum(1))
            if with_jacobian:
                sign = corners[None].to(x.dtype) * 2 - 1  # d g / d f
                dw = torch.stack([sign[..., 0] * g[..., 1] * g[..., 2], sign[..., 1] * g[..., 0] * g[..., 2],
                                  sign[..., 2] * g[..., 0] * g[..., 1]], -1)  # (N, 8, 3)
                scale = (res - 1) / (2.0 * s.bound)
                jacs.append(torch.einsum("ncf,nck->nfk", vals, dw) * (scale * inside[..., None]))
        return torch.cat(feats, -1), (torch.cat(jacs, 1) if with_jacobian else None)

    def blob(self, x: Tensor) -> Tensor:
        s = self.spec
        return s.blob_scale * (1.0 - x.norm(dim=-1) / s.blob_std)

    def raw(self, x: Tensor) -> Tensor:
        p = self.params
        h = F.relu(self.encode(x)[0] @ p["mlp.w0"] + p["mlp.b0"])
        return h @ p["mlp.w1"] + p["mlp.b1"]

    def activate(self, z: Tensor) -> Tensor:
        """Raw density (with the blob) -> density, by ``spec.density_activation``."""
        return torch.exp(z.clamp(max=EXP_CLAMP)) if self.spec.density_activation == "exp" else F.softplus(z)

    def density(self, x: Tensor) -> Tensor:
        return self.activate(self.raw(x)[:, 0] + self.blob(x))

    def density_albedo(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.raw(x)
        return self.activate(out[:, 0] + self.blob(x)), torch.sigmoid(out[:, 1:])

    def density_albedo_normal(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Density, albedo and normal -grad(density)/|grad(density)| at ``x``; the gradient is
        written out (chain rule through the MLP and the trilinear reads), differentiable in the
        parameters."""
        p, s = self.params, self.spec
        feat, jac = self.encode(x, with_jacobian=True)
        pre = feat @ p["mlp.w0"] + p["mlp.b0"]
        out = F.relu(pre) @ p["mlp.w1"] + p["mlp.b1"]
        z = out[:, 0] + self.blob(x)
        # d raw0 / d feat = W0 diag(relu'(pre)) w1[:, 0]
        dfeat = ((pre > 0).to(x.dtype) * p["mlp.w1"][:, 0]) @ p["mlp.w0"].T  # (N, Ftot)
        r = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        dz = torch.einsum("nf,nfk->nk", dfeat, jac) - (s.blob_scale / s.blob_std) * x / r
        # -grad(density) / |grad(density)| = -dz / |dz|: both activations are increasing, so their
        # derivative (sigmoid(z) or exp(z)) scales the gradient without turning it
        normal = -dz / dz.norm(dim=-1, keepdim=True).clamp_min(1e-10)
        return self.activate(z), torch.sigmoid(out[:, 1:]), normal

    # -- occupancy -------------------------------------------------------------------------------

    def cell_centres(self) -> Tensor:
        r, b = self.spec.occ_resolution, self.spec.bound
        c = (torch.arange(r, device=self.device, dtype=torch.float32) + 0.5) / r * 2 * b - b
        return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)

    @torch.no_grad()
    def update_occupancy(self, generator: torch.Generator, decay: float = 0.95, chunk: int = 65536) -> None:
        """Refresh the occupancy values: max(decay * old, density at a jittered point of each cell)."""
        r, b = self.spec.occ_resolution, self.spec.bound
        jitter = (torch.rand(r**3, 3, generator=generator) - 0.5).to(self.device) * (2 * b / r)
        x = self.cell_centres() + jitter
        sigma = torch.cat([self.density(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        fresh = sigma.reshape(r, r, r)
        self.occupancy = fresh if bool((self.occupancy < 0).all()) else torch.maximum(self.occupancy * decay, fresh)

    def occupied(self, x: Tensor, threshold: float) -> Tensor:
        """Whether the occupancy cell of each point (N, 3) is above ``threshold``, dilated by one cell."""
        r, b = self.spec.occ_resolution, self.spec.bound
        if bool((self.occupancy < 0).all()):  # never refreshed: everything counts as occupied
            return torch.ones(len(x), dtype=torch.bool, device=x.device)
        occ = F.max_pool3d((self.occupancy > threshold).float()[None, None], 3, 1, 1)[0, 0] > 0
        ijk = ((x + b) / (2 * b) * r).long().clamp(0, r - 1)
        return occ[ijk[:, 0], ijk[:, 1], ijk[:, 2]]

    def empty_space_alpha(self, count: int, threshold: float, samples: int, generator: torch.Generator) -> Tensor:
        """Opacity over one ray step (the box's side / ``samples``) at ``count`` uniform points of the
        box, zero at those whose cell :meth:`occupied` keeps: renders skip these cells, so density
        left in them shows only in the bare field (``nerf.lambda_empty``). Zeros before the first
        refresh."""
        b = self.spec.bound
        x = ((torch.rand(count, 3, generator=generator) * 2 - 1) * b).to(self.device)
        empty = ~self.occupied(x, threshold)
        alpha = torch.zeros(count, device=self.device)
        if bool(empty.any()):
            alpha[empty] = 1 - torch.exp(-self.density(x[empty]) * (2 * b / samples))
        return alpha

    # -- export ----------------------------------------------------------------------------------

    @torch.no_grad()
    def density_grid(self, resolution: int, chunk: int = 65536):
        """Density on a ``resolution``^3 grid spanning the box (a :class:`~dreamgs.mesh.extract.DensityGrid`)."""
        from ..mesh.extract import DensityGrid

        b = self.spec.bound
        c = torch.linspace(-b, b, resolution, device=self.device)
        pts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
        vals = torch.cat([self.density(pts[i:i + chunk]) for i in range(0, len(pts), chunk)])
        return DensityGrid(vals.reshape(resolution, resolution, resolution).float(),
                           torch.full((3,), -b, device=self.device), 2 * b / (resolution - 1))

    def to_mesh(self, cfg, threshold: float, timings: dict | None = None):
        """Marching cubes of the density at ``threshold`` through the shared clean-up (mesh.extract)."""
        from ..mesh.extract import mesh_from_grid

        return mesh_from_grid(self.density_grid(cfg.grid_resolution), cfg, threshold, timings, "nerf.mesh_threshold")

    # -- rendering -------------------------------------------------------------------------------

    def render(self, cams: Cameras, background: Tensor | None = None, shading: str = "albedo",
               light: Tensor | None = None, samples: int = 64, generator: torch.Generator | None = None,
               occupancy_threshold: float = 0.0, ambient: float = 0.1, diffuse: float = 0.9,
               normals: bool | None = None, prune_transmittance: float = 1e-3, chunk: int = 1 << 18,
               bg_fn=None, distortion: str | None = None, orient: str = "detached") -> NerfRender:
        """Volume-render ``cams``. ``background``: (C, 3) or (3,) colour (default black) unless
        ``bg_fn`` (ray directions (N, 3) -> colours (N, 3)) is given; ``light``: (C, 3) point-light
        positions for the shaded modes; ``generator`` jitters the stratified samples (None: bin
        centres); ``occupancy_threshold`` > 0 skips samples in empty occupancy cells;
        ``prune_transmittance`` > 0 skips samples whose transmittance is at most that (a first pass
        of the density without gradients finds them). ``distortion``: "plain"
        (:func:`distortion_loss`) or "normalised" (:func:`spread_loss`) of the rays' weights is
        returned in ``distortion``; None skips it.
        ``orient``: how :func:`orientation_loss` treats the weights ("detached" or "share")."""
        if shading not in SHADINGS:
            raise ValueError(f"shading: expected one of {SHADINGS}, got '{shading}'")
        C, H, W = len(cams), cams.height, cams.width
        dev = self.device
        origins, dirs = camera_rays(cams)
        origins, dirs = origins.to(dev).reshape(-1, 3), dirs.to(dev).reshape(-1, 3)
        near, far, hit = ray_box(origins, dirs, self.spec.bound)
        ray_ids = torch.nonzero(hit).squeeze(1)
        n_rays = C * H * W
        cam_of_ray = torch.arange(C, device=dev).repeat_interleave(H * W)
        want_normals = shading != "albedo" if normals is None else normals
        # stratified samples in [near, far]
        o, d = origins[ray_ids], dirs[ray_ids]
        t0, t1 = near[ray_ids], far[ray_ids]
        if generator is not None:
            u = torch.rand(len(ray_ids), samples, generator=generator).to(dev)
        else:
            u = torch.full((len(ray_ids), samples), 0.5, device=dev)
        step = (t1 - t0) / samples
        t = t0[:, None] + (torch.arange(samples, device=dev)[None] + u) * step[:, None]
        x = o[:, None, :] + t[..., None] * d[:, None, :]
        flat = x.reshape(-1, 3)
        keep = self.occupied(flat, occupancy_threshold) if occupancy_threshold > 0 else torch.ones(
            len(flat), dtype=torch.bool, device=dev)
        if prune_transmittance > 0:
            # samples whose transmittance is at most prune_transmittance are skipped: found from the field's own
            # density in a first pass without gradients, so every sample in front of a kept one is kept and
            # the kept weights are exact
            with torch.no_grad():
                kid = torch.nonzero(keep).squeeze(1)
                sd = torch.zeros(len(flat), device=dev)
                if len(kid):
                    sd = sd.index_put((kid,), torch.cat([self.density(flat[kid[i:i + chunk]])
                                                         for i in range(0, len(kid), chunk)]))
                sd = sd.reshape(-1, samples) * step[:, None]
                keep = keep & (torch.exp(-(sd.cumsum(-1) - sd)).reshape(-1) > prune_transmittance)
        kid = torch.nonzero(keep).squeeze(1)
        sigma = torch.zeros(len(flat), device=dev)
        albedo = torch.zeros(len(flat), 3, device=dev)
        normal = torch.zeros(len(flat), 3, device=dev)
        parts_s, parts_a, parts_n = [], [], []
        for i in range(0, len(kid), chunk):
            xs = flat[kid[i:i + chunk]]
            if want_normals:
                s_, a_, n_ = self.density_albedo_normal(xs)
                parts_n.append(n_)
            else:
                s_, a_ = self.density_albedo(xs)
            parts_s.append(s_)
            parts_a.append(a_)
        if len(kid):
            sigma = sigma.index_put((kid,), torch.cat(parts_s))
            albedo = albedo.index_put((kid,), torch.cat(parts_a))
            if want_normals:
                normal = normal.index_put((kid,), torch.cat(parts_n))
        sigma = sigma.reshape(-1, samples)
        albedo = albedo.reshape(-1, samples, 3)
        normal = normal.reshape(-1, samples, 3)
        w = volume_weights(sigma, step[:, None].expand(-1, samples))
        # shading
        if shading == "albedo":
            colour = albedo
        else:
            light_pos = light.to(dev)[cam_of_ray[ray_ids]]  # (R, 3)
            ldir = F.normalize(light_pos[:, None, :] - x, dim=-1)
            lam = (normal * ldir).sum(-1, keepdim=True).clamp_min(0.0)
            shade = ambient + diffuse * lam
            colour = shade.expand(-1, -1, 3) if shading == "textureless" else albedo * shade
        acc = w.sum(-1, keepdim=True)
        dist = None
        if distortion is not None:
            # over the sample bins, in units of the box side (the same scale on every ray); "normalised" is
            # its opacity-free form: the weights' distribution along the ray only (no pull towards empty rays)
            edges = (t0[:, None] + torch.arange(samples + 1, device=dev)[None] * step[:, None]) / (2 * self.spec.bound)
            loss_fn = {"plain": distortion_loss, "normalised": spread_loss}[distortion]
            dist = loss_fn(w, edges).sum() / max(1, len(ray_ids))

        def scatter(v: Tensor, k: int) -> Tensor:
            full = torch.zeros(n_rays, k, device=dev, dtype=v.dtype)
            return full.index_put((ray_ids,), v)
        rgb = scatter((w[..., None] * colour).sum(1), 3)
        alpha = scatter(acc, 1)
        depth = scatter((w * t).sum(-1, keepdim=True), 1)
        nrm = scatter((w[..., None] * normal).sum(1), 3)
        alb = scatter((w[..., None] * albedo).sum(1), 3)
        if bg_fn is not None:
            bg = bg_fn(dirs)
        else:
            bg = torch.zeros(C, 3, device=dev) if background is None else torch.as_tensor(background).to(dev)
            bg = bg.expand(C, 3)[cam_of_ray] if bg.dim() == 2 else bg.expand(n_rays, 3)
        rgb = rgb + (1.0 - alpha) * bg
        if want_normals:
            cos = (normal * d[:, None, :]).sum(-1)
            orient = orientation_loss(w, cos, orient).sum() / max(1, len(ray_ids))
            away = (w.detach() * (cos > 0).float()).sum() / w.detach().sum().clamp_min(1e-12)
        else:
            orient = away = torch.zeros((), device=dev)

        def img(v: Tensor) -> Tensor:
            return v.reshape(C, H, W, -1)
        return NerfRender(img(rgb), img(alpha), img(depth), img(nrm), orient, away, img(alb), dist)

    def render_rgba(self, cams: Cameras, samples: int = 128, occupancy_threshold: float = 0.01
                    ) -> tuple[Tensor, Tensor]:
        """Premultiplied albedo (C, H, W, 3) and alpha (C, H, W, 1), no gradient: stage 2's bake,
        videos and previews."""
        with torch.no_grad():
            rgbs, alphas = [], []
            for i in range(len(cams)):
                r = self.render(cams[i:i + 1].to(self.device), shading="albedo", samples=samples,
                                occupancy_threshold=occupancy_threshold)
                rgbs.append(r.rgb)
                alphas.append(r.alpha)
        return torch.cat(rgbs), torch.cat(alphas)


# ------------------------------------------------------------------------------------------------
# Rays and compositing


def camera_rays(cams: Cameras) -> tuple[Tensor, Tensor]:
    """World ray origins and unit directions (C, H, W, 3) through the pixel centres."""
    H, W = cams.height, cams.width
    dev = cams.viewmats.device
    c2w = torch.linalg.inv(cams.viewmats.double())  # OpenCV camera frame -> world
    ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float64) + 0.5,
                            torch.arange(W, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    K = cams.Ks.double()
    xc = (xs[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    yc = (ys[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    d_cam = torch.stack([xc, yc, torch.ones_like(xc)], -1)  # (C, H, W, 3)
    d = torch.einsum("cij,chwj->chwi", c2w[:, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:, None, None, :3, 3].expand_as(d)
    return o.float(), d.float()


def ray_box(o: Tensor, d: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of rays (N, 3) through the box [-bound, bound]^3, and whether they hit."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    a, b = (-bound - o) * inv, (bound - o) * inv
    near = torch.minimum(a, b).amax(-1).clamp_min(0.0)
    far = torch.maximum(a, b).amin(-1)
    return near, far, far > near


def volume_weights(sigma: Tensor, delta: Tensor) -> Tensor:
    """w_i = T_i (1 - exp(-sigma_i delta_i)), T_i = exp(-sum_{j<i} sigma_j delta_j), along the last axis."""
    sd = sigma * delta
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(sd[..., :1]), sd[..., :-1]], -1), -1))
    return trans * (1.0 - torch.exp(-sd))


# ------------------------------------------------------------------------------------------------
# Losses (DreamFusion / threestudio)


def distortion_loss(w: Tensor, edges: Tensor) -> Tensor:
    """mip-NeRF 360's distortion loss of each ray's weights (..., N) over sorted intervals with
    ``edges`` (..., N + 1): the weighted mean distance between two draws from the ray's weight
    distribution, sum_ij w_i w_j |s_i - s_j| (s the interval midpoints), plus each interval's own
    spread (1/3) sum_i w_i^2 delta_i. Small when the weight sits in one short stretch of the ray.

    O(N) with prefix sums: over ordered pairs, sum_ij w_i w_j |s_i - s_j| = 2 sum_i w_i (s_i W_i - S_i),
    W_i = sum_{j<i} w_j and S_i = sum_{j<i} w_j s_j (s ascending). Returns one value per ray (...)."""
    s = 0.5 * (edges[..., 1:] + edges[..., :-1])
    delta = edges[..., 1:] - edges[..., :-1]
    ws = w * s
    w_before = torch.cumsum(w, -1) - w
    ws_before = torch.cumsum(ws, -1) - ws
    between = 2.0 * (w * (s * w_before - ws_before)).sum(-1)
    within = (w**2 * delta).sum(-1) / 3.0
    return between + within


def weight_share(w: Tensor) -> tuple[Tensor, Tensor]:
    """Each ray's weights (..., N) as its opacity, held fixed, (...) times their share w / opacity
    (..., N), differentiated: a loss of the form opacity * f(share) depends only on where along the
    ray the weight sits, so its gradient along w itself is zero and it does not pull rays towards
    empty. Rays with less than 1e-6 opacity count as empty."""
    acc = w.sum(-1, keepdim=True)
    return acc.detach()[..., 0], w / acc.clamp_min(1e-6)


def spread_loss(w: Tensor, edges: Tensor) -> Tensor:
    """The distortion loss of each ray's weight distribution (:func:`weight_share`), times its
    opacity held fixed (per ray, (...)): unlike :func:`distortion_loss` (quadratic in the weights)
    it does not pull rays towards empty."""
    opacity, share = weight_share(w)
    return opacity * distortion_loss(share, edges)


ORIENT_WEIGHTS = ("detached", "share")


def orientation_loss(w: Tensor, cos: Tensor, weights: str = "detached") -> Tensor:
    """DreamFusion's orientation loss per ray (...): sum_i w_i max(0, cos_i)^2 over the samples
    (last axis), ``cos_i`` the cosine between the normal and the ray direction (> 0: facing away).

    ``detached`` (DreamFusion's) holds the weights fixed: only the normals move. ``share`` has the
    same value, with the weights written as :func:`weight_share` and the share differentiated: the
    loss also moves a ray's weight from samples facing away to samples facing the camera (a more
    opaque front), without pulling rays towards empty."""
    f = cos.clamp_min(0.0) ** 2
    if weights == "detached":
        return (w.detach() * f).sum(-1)
    if weights != "share":
        raise ValueError(f"orientation weights: expected one of {ORIENT_WEIGHTS}, got '{weights}'")
    opacity, share = weight_share(w)
    return opacity * (share * f).sum(-1)


def sparsity_loss(alpha: Tensor) -> Tensor:
    """mean sqrt(alpha^2 + 0.01): pulls opacity towards 0 where the prior does not ask for it."""
    return torch.sqrt(alpha**2 + 0.01).mean()


def opaque_loss(alpha: Tensor) -> Tensor:
    """Binary entropy of the clamped opacity, BCE(a, a): pushes each pixel to fully opaque or empty."""
    a = alpha.clamp(1e-5, 1 - 1e-5)
    return -(a * torch.log(a) + (1 - a) * torch.log(1 - a)).mean()


class BackgroundMLP:
    """DreamFusion's background: a small MLP of the ray direction -> sigmoid colour."""

    def __init__(self, hidden: int = 16, generator: torch.Generator | None = None, device="cpu"):
        g = generator or torch.Generator().manual_seed(1)
        self.params = {"bg.w0": torch.randn(3, hidden, generator=g) * math.sqrt(2 / 3),
                       "bg.b0": torch.zeros(hidden),
                       "bg.w1": torch.randn(hidden, 3, generator=g) * math.sqrt(1 / hidden),
                       "bg.b1": torch.zeros(3)}
        self.params = {k: v.to(device).requires_grad_(True) for k, v in self.params.items()}

    def __call__(self, dirs: Tensor) -> Tensor:
        p = self.params
        return torch.sigmoid(F.relu(dirs @ p["bg.w0"] + p["bg.b0"]) @ p["bg.w1"] + p["bg.b1"])


# ------------------------------------------------------------------------------------------------
# Camera-relative lights and the shading draw


def sample_lights(cams: Cameras, distance_range: tuple[float, float], perturb: float,
                  generator: torch.Generator) -> Tensor:
    """DreamFusion's point lights (C, 3): direction = normalise(camera position + N(0, perturb^2)),
    at a distance drawn uniformly from ``distance_range`` from the origin."""
    pos = cams.centers.cpu().double()
    n = len(pos)
    dirs = F.normalize(pos + perturb * torch.randn(n, 3, generator=generator, dtype=torch.float64), dim=-1)
    lo, hi = distance_range
    dist = lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    return (dirs * dist).float()


def choose_shading(step: int, ambient_only_steps: int, albedo_prob: float, textureless_prob: float,
                   generator: torch.Generator) -> str:
    """``albedo`` for the first ``ambient_only_steps`` steps; then albedo with ``albedo_prob``, else
    textureless with ``textureless_prob`` and Lambertian otherwise (DreamFusion: 0.25, then 0.5)."""
    u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    if step < ambient_only_steps or u[0] < albedo_prob:
        return "albedo"
    return "textureless" if u[1] < textureless_prob else "lambertian"


# ------------------------------------------------------------------------------------------------
# nerf.safetensors


def save_nerf(model: NerfModel, path) -> "object":
    """The field and its spec in one safetensors file, written atomically."""
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from ..atomic import atomic_output

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.params.items()}
    tensors["occupancy"] = model.occupancy.detach().cpu().contiguous()
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"dreamgs-nerf": json.dumps(dataclasses.asdict(model.spec))})
    return path


def load_nerf(path, device="cpu") -> NerfModel:
    """Load a :func:`save_nerf` file (safetensors only); a malformed file raises InputError."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..errors import InputError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["dreamgs-nerf"])
        spec = NerfSpec(**meta)
        tensors = load_file(str(path))
        ref = NerfModel.create(spec, device="meta")
    except Exception as e:  # noqa: BLE001 - any damage is the file's
        raise InputError(f"{path}: not a dreamgs NeRF file ({type(e).__name__})") from None
    occ = tensors.pop("occupancy", None)
    if sorted(tensors) != sorted(ref.params) or any(tensors[k].shape != ref.params[k].shape for k in tensors):
        raise InputError(f"{path}: the NeRF's tensors do not match its spec")
    params = {k: v.to(device).requires_grad_(True) for k, v in tensors.items()}
    return NerfModel(spec, params, None if occ is None else occ.to(device))
