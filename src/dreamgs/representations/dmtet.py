"""DMTet: a deformable tetrahedral grid with a signed distance per vertex, meshed by marching tetrahedra.

Grid. The box [-b, b]^3 is cut into R^3 cubes of side ``cell = 2b / R``; each cube into the six
tetrahedra of the Freudenthal (Kuhn) split, the paths 0 -> e_i -> e_i + e_j -> (1, 1, 1) over the
six orders of the axes. Neighbouring cubes then share their faces' triangles (the split is
conforming), and every tetrahedron is stored positively oriented (``det[v1-v0, v2-v0, v3-v0] > 0``).
Each of the (R + 1)^3 grid vertices carries a signed distance ``sdf`` (in cells; negative inside)
and a deformation ``deform_scale * cell * tanh(d)`` per axis, the bound at most half a cell
(threestudio and nvdiffrec allow about one). A large enough deformation can turn a tetrahedron
inside out: an adversarial search (gradient descent on the determinant of the six Kuhn
tetrahedra, per-axis bound) found none at 0.15 cells and inverted ones from 0.175. The surface
then folds there, but it stays closed and consistently wound, since the winding comes from the
tetrahedra's combinatorial orientation, not from their deformed shape.

Marching tetrahedra. A tetrahedron whose four signs are not all equal holds one triangle (one or
three vertices inside) or two (two inside). The surface vertex on a crossing edge (a, b) is the zero
of the SDF interpolated linearly along the edge, ``p = p_a + (p_b - p_a) s_a / (s_a - s_b)``:
differentiable in both SDF values and both (deformed) end points. The triangle table is built
here from one reference tetrahedron (:func:`case_table`) and oriented so that faces are
counter-clockwise seen from outside; it is valid for every positively oriented tetrahedron,
because the orientation of a triangle spanned by points on fixed edges does not change under
orientation-preserving maps. Every grid vertex on the box's border counts as outside, so the
surface is closed.

Regularisers on the extracted mesh: :func:`normal_consistency` (mean of ``1 - cos`` of the normals
of the two faces at each edge) and :func:`laplacian_loss` (mean squared distance of a vertex from
the centroid of its neighbours, the uniform Laplacian).

Start from a coarse field (Magic3D's coarse-to-fine): ``sdf = threshold - density`` at the grid
vertices (:func:`sdf_from_density`), from the NeRF (:func:`sdf_from_nerf`) or from a sampled
density grid such as the Gaussians' (:func:`sdf_from_grid`), scaled to cells by the density's
gradient across the surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

# The six edges of a tetrahedron (local vertex pairs) and the 16 sign cases' triangles.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
MAX_DEFORM_SCALE = 0.5


@dataclass
class TetGrid:
    """The fixed part of DMTet: grid vertices (N, 3), positively oriented tetrahedra (T, 4)."""

    vertices: Tensor  # (N, 3) float32 undeformed positions
    tets: Tensor  # (T, 4) int64
    boundary: Tensor  # (N,) bool: on the border of the box
    resolution: int  # cubes per axis
    bound: float  # half-size of the box

    @property
    def cell(self) -> float:
        return 2.0 * self.bound / self.resolution

    @property
    def device(self) -> torch.device:
        return self.vertices.device


def _kuhn_tets() -> list[tuple[tuple[int, int, int], ...]]:
    """The six tetrahedra of the unit cube (corner offsets), each positively oriented."""
    import itertools

    out = []
    for perm in itertools.permutations(range(3)):
        path = [(0, 0, 0)]
        for axis in perm:
            p = list(path[-1])
            p[axis] = 1
            path.append(tuple(p))
        a, b, c, d = (torch.tensor(x, dtype=torch.float64) for x in path)
        if torch.linalg.det(torch.stack([b - a, c - a, d - a])) < 0:
            path[2], path[3] = path[3], path[2]
        out.append(tuple(path))
    return out


def tet_grid(resolution: int, bound: float = 0.75, device="cpu") -> TetGrid:
    """The Freudenthal tetrahedral grid of ``resolution``^3 cubes over [-bound, bound]^3."""
    if resolution < 1:
        raise ValueError(f"resolution must be at least 1, got {resolution}")
    R = resolution
    n = R + 1
    c = torch.linspace(-bound, bound, n, dtype=torch.float64)
    verts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3).float()
    idx = torch.arange(R)
    i, j, k = (t.reshape(-1) for t in torch.meshgrid(idx, idx, idx, indexing="ij"))
    tets = []
    for corners in _kuhn_tets():
        tets.append(torch.stack([(i + dx) * n * n + (j + dy) * n + (k + dz) for dx, dy, dz in corners], -1))
    tets = torch.stack(tets, 1).reshape(-1, 4)
    ijk = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), torch.arange(n), indexing="ij"), -1)
    boundary = ((ijk == 0) | (ijk == R)).any(-1).reshape(-1)
    return TetGrid(verts.to(device), tets.to(device), boundary.to(device), R, float(bound))


@lru_cache(maxsize=None)
def _case_table_cpu() -> tuple[Tensor, Tensor]:
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)  # det = +1
    mid = torch.stack([(ref[a] + ref[b]) / 2 for a, b in TET_EDGES])
    table = torch.full((16, 2, 3), -1, dtype=torch.int64)
    count = torch.zeros(16, dtype=torch.int64)
    for code in range(16):
        inside = [bool(code >> v & 1) for v in range(4)]
        if all(inside) or not any(inside):
            continue
        ins = [v for v in range(4) if inside[v]]
        outs = [v for v in range(4) if not inside[v]]
        outward = ref[outs].mean(0) - ref[ins].mean(0)

        def edge(a, b):
            return TET_EDGES.index((min(a, b), max(a, b)))

        if len(ins) == 2 or len(outs) == 2:
            (a, b), (c, d) = ins, outs
            tris = [(edge(a, c), edge(a, d), edge(b, d)), (edge(a, c), edge(b, d), edge(b, c))]
        else:
            lone = ins[0] if len(ins) == 1 else outs[0]
            tris = [tuple(edge(lone, v) for v in range(4) if v != lone)]
        for t, tri in enumerate(tris):
            p = mid[list(tri)]
            if torch.dot(torch.linalg.cross(p[1] - p[0], p[2] - p[0]), outward) < 0:
                tri = (tri[0], tri[2], tri[1])
            table[code, t] = torch.tensor(tri)
        count[code] = len(tris)
    return table, count


def case_table(device="cpu") -> tuple[Tensor, Tensor]:
    """(16, 2, 3) local edge indices (into :data:`TET_EDGES`) of the triangles of each sign case
    (bit v set: vertex v inside), -1 where unused, and (16,) the triangle counts."""
    table, count = _case_table_cpu()
    return table.to(device), count.to(device)


def marching_tets(pos: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """The surface ``sdf = 0`` of a tetrahedral mesh: vertices (M, 3) and faces (F, 3) int64,
    counter-clockwise seen from the positive side (outside).

    ``pos`` (N, 3) vertex positions, ``sdf`` (N,) signed values (negative inside; zero counts as
    outside), ``tets`` (T, 4) positively oriented. Differentiable in ``pos`` and ``sdf``. Each
    crossing edge gives one surface vertex (shared by the faces around it), so the mesh is
    indexed and, away from the grid border, closed.
    """
    dev = pos.device
    inside = sdf.detach() < 0
    it = inside[tets].to(torch.uint8)  # (T, 4): one byte per corner, not eight (128^3 grids: 12.6M tets)
    code = it[:, 0] | (it[:, 1] << 1) | (it[:, 2] << 2) | (it[:, 3] << 3)
    valid = (code > 0) & (code < 15)
    vt, vcode = tets[valid], code[valid].long()
    if vt.numel() == 0:
        return pos.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64, device=dev)
    ends = vt[:, torch.tensor(TET_EDGES, device=dev)]  # (K, 6, 2)
    a, b = ends.amin(-1), ends.amax(-1)
    crossing = inside[a] != inside[b]
    n = pos.shape[0]
    keys = a * n + b
    uniq, inverse = torch.unique(keys[crossing], return_inverse=True)
    ea, eb = uniq // n, uniq % n
    sa, sb = sdf[ea], sdf[eb]
    w = (sa / (sa - sb))[:, None]
    verts = pos[ea] + w * (pos[eb] - pos[ea])
    local = torch.full(crossing.shape, -1, dtype=torch.int64, device=dev)
    local[crossing] = inverse
    table, count = case_table(dev)
    tri = table[vcode]  # (K, 2, 3) local edges
    rows = torch.arange(len(vt), device=dev)[:, None, None]
    faces = local[rows, tri.clamp_min(0)]  # (K, 2, 3)
    second = count[vcode] == 2
    faces = torch.cat([faces[:, 0], faces[second, 1]])
    return verts, faces


# ------------------------------------------------------------------------------------------------
# Regularisers


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Unit face normals (F, 3) (zero for degenerate faces)."""
    v = verts[faces]
    return F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1, eps=1e-20)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (V, 3), differentiable in ``verts``."""
    v = verts[faces]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    acc = torch.zeros_like(verts).index_add(0, faces.reshape(-1), n.repeat_interleave(3, 0))
    return F.normalize(acc, dim=-1, eps=1e-20)


# ------------------------------------------------------------------------------------------------
# Starting from a coarse field


def sdf_from_density(grid: TetGrid, density: Tensor, threshold: float, clamp: float = 3.0) -> Tensor:
    """SDF (N,) in cells from a density sampled at the grid vertices: ``threshold - density``
    divided by the median gradient norm of its linear interpolant over the tetrahedra that the
    surface crosses (times the cell), so that it is about a distance in cells near the surface,
    then clamped to [-clamp, clamp] cells. One global scale: every crossing of an edge whose two
    values lie within the clamp is exactly the density's linear crossing. A density that never
    reaches ``threshold`` gives an all-positive (empty) SDF."""
    s = float(threshold) - density.double()
    st = s[grid.tets]  # (T, 4)
    cross = (st < 0).any(-1) & (st >= 0).any(-1)
    scale = 1.0
    if bool(cross.any()):
        p = grid.vertices.double()[grid.tets[cross]]  # (K, 4, 3)
        a = p[:, 1:] - p[:, :1]
        ds = (st[cross, 1:] - st[cross, :1])[..., None]
        grad = torch.linalg.solve(a, ds)[..., 0]  # the interpolant's gradient in each tet
        scale = float(grad.norm(dim=-1).median()) * grid.cell
    return (s / max(scale, 1e-12)).clamp(-clamp, clamp).float()


@torch.no_grad()
def sdf_from_nerf(grid: TetGrid, nerf, threshold: float, chunk: int = 1 << 16, clamp: float = 3.0) -> Tensor:
    """:func:`sdf_from_density` of a NeRF's density (``nerf.density``) at the grid vertices."""
    pts = grid.vertices.to(nerf.device)
    dens = torch.cat([nerf.density(pts[i:i + chunk]) for i in range(0, len(pts), chunk)])
    return sdf_from_density(grid, dens.to(grid.device), threshold, clamp)


def sample_density_grid(dgrid, points: Tensor) -> Tensor:
    """Trilinear samples (P,) of a :class:`~dreamgs.mesh.extract.DensityGrid` at world points;
    zero outside the grid."""
    R = dgrid.resolution
    idx = (points.to(dgrid.values.dtype) - dgrid.origin.to(points.device)) / dgrid.spacing
    g = (2.0 * idx / (R - 1) - 1.0).flip(-1)[None, :, None, None, :]  # (x, y, z) -> grid axes (2, 1, 0)
    vol = dgrid.values.to(points.device)[None, None]
    out = F.grid_sample(vol, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(-1)


@torch.no_grad()
def sdf_from_grid(grid: TetGrid, dgrid, threshold: float, clamp: float = 3.0) -> Tensor:
    """:func:`sdf_from_density` of a sampled density grid (e.g. the Gaussians' ``density_grid``)."""
    return sdf_from_density(grid, sample_density_grid(dgrid, grid.vertices), threshold, clamp)


# ------------------------------------------------------------------------------------------------
# The geometry


class DMTet:
    """A :class:`TetGrid` with trainable ``params`` ``dmtet.sdf`` (N,) and ``dmtet.deform`` (N, 3)."""

    SDF, DEFORM = "dmtet.sdf", "dmtet.deform"

    def __init__(self, grid: TetGrid, sdf: Tensor, deform: Tensor | None = None, deform_scale: float = 0.25):
        if not 0.0 <= deform_scale <= MAX_DEFORM_SCALE:
            raise ValueError(f"deform_scale must be within [0, {MAX_DEFORM_SCALE}] cells, got {deform_scale}")
        self.grid, self.deform_scale = grid, float(deform_scale)
        deform = torch.zeros_like(grid.vertices) if deform is None else deform
        self.params = {self.SDF: sdf.detach().clone().to(grid.device).requires_grad_(True),
                       self.DEFORM: deform.detach().clone().to(grid.device).requires_grad_(True)}

    @property
    def device(self) -> torch.device:
        return self.grid.device

    def positions(self) -> Tensor:
        """Deformed grid vertices (N, 3)."""
        return self.grid.vertices + (self.deform_scale * self.grid.cell) * torch.tanh(self.params[self.DEFORM])

    def signed(self) -> Tensor:
        """The SDF with the box's border forced outside (so the surface is closed)."""
        s = self.params[self.SDF]
        return torch.where(self.grid.boundary, s.clamp_min(1e-3), s)

    def surface(self) -> tuple[Tensor, Tensor]:
        """Marching tetrahedra of the current SDF: vertices (M, 3), faces (F, 3); differentiable."""
        return marching_tets(self.positions(), self.signed(), self.grid.tets)


def boundary_clearance(grid: TetGrid, sdf: Tensor) -> float:
    """Smallest distance (world units) from an inside grid vertex to the box's border; ``inf`` if
    none is inside. A surface that reaches the border is cut there."""
    inside = sdf < 0
    if not bool(inside.any()):
        return math.inf
    v = grid.vertices[inside]
    return float((grid.bound - v.abs()).amin())


# ------------------------------------------------------------------------------------------------
# The textured representation of Magic3D's fine stage: DMTet geometry + a colour field


@dataclass
class DMTetRender:
    """Renders (C, H, W, k) and the surface they were rendered from (for the regularisers)."""

    rgb: Tensor  # (C, H, W, 3) shaded colour over the background
    alpha: Tensor  # (C, H, W, 1)
    verts: Tensor  # (M, 3) the extracted surface
    faces: Tensor  # (F, 3)

    def images(self) -> Tensor:
        return self.rgb.permute(0, 3, 1, 2)


class DMTetModel:
    """DMTet geometry and a colour field: the albedo head of a
    :class:`~dreamgs.representations.nerf.NerfModel` (Magic3D keeps the coarse stage's colour
    network). ``params`` is one dict shared by both parts (``dmtet.sdf``, ``dmtet.deform`` and the
    field's ``grid.*``/``mlp.*``), so a trainer that replaces a tensor in it updates the model.
    Surface colours are the field's albedo at the surface vertices, interpolated over the faces."""

    mesh_source = "the DMTet's zero set"  # what to_mesh extracts, for stage 2's progress line

    def __init__(self, geometry: DMTet, color, lr_sdf: float = 0.01, lr_deform: float = 0.01,
                 lr_color: float = 0.001):
        self.geometry, self.color = geometry, color
        self.params = {**color.params, **geometry.params}
        geometry.params = color.params = self.params
        self.lrs = {DMTet.SDF: lr_sdf, DMTet.DEFORM: lr_deform}
        self.lr_color = lr_color

    # -- the representation seam ------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.geometry.device

    @property
    def occupancy(self) -> Tensor:  # the colour field's (kept so its checkpoint state is the NeRF's)
        return self.color.occupancy

    @occupancy.setter
    def occupancy(self, value: Tensor) -> None:
        self.color.occupancy = value

    def __len__(self) -> int:
        return sum(v.numel() for v in self.params.values())

    def param_groups(self, *_ignored) -> list[dict]:
        """One named Adam group per tensor: the SDF, the deformation, the colour field's tensors."""
        return [{"params": [p], "name": k, "lr": self.lrs.get(k, self.lr_color)} for k, p in self.params.items()]

    def detach(self) -> "DMTetModel":
        from .nerf import NerfModel

        geo = DMTet(self.geometry.grid, self.params[DMTet.SDF], self.params[DMTet.DEFORM], self.geometry.deform_scale)
        color = NerfModel(self.color.spec, {k: v for k, v in self.params.items() if not k.startswith("dmtet.")},
                          self.color.occupancy.clone())
        out = DMTetModel(geo, color, self.lrs[DMTet.SDF], self.lrs[DMTet.DEFORM], self.lr_color)
        out.params = {k: v.detach() for k, v in out.params.items()}
        geo.params = color.params = out.params
        return out

    def surface(self) -> tuple[Tensor, Tensor]:
        return self.geometry.surface()

    def albedo(self, points: Tensor, chunk: int = 1 << 18) -> Tensor:
        """The colour field's albedo (P, 3) at points (differentiable in both)."""
        if len(points) == 0:
            return points.new_zeros(0, 3)
        return torch.cat([self.color.density_albedo(points[i:i + chunk])[1] for i in range(0, len(points), chunk)])

    def render(self, cams, background: Tensor | None = None, shading: str = "albedo", light: Tensor | None = None,
               ambient: float = 0.1, diffuse: float = 0.9, antialias: bool = True, ssaa: int = 1) -> DMTetRender:
        """Rasterise the surface from ``cams``: ``albedo``, ``lambertian`` (albedo x (ambient + diffuse
        max(0, n . l)), l towards the camera's point light ``light`` (C, 3)) or ``textureless``
        (white albedo), per vertex with area-weighted normals. ``background``: (3,), (C, 3) or an
        image (C, H, W, 3). Differentiable in the SDF, the deformation and the colour field (at
        silhouettes only when the renderer antialiases)."""
        from ..mesh import Mesh
        from ..mesh.raster import render_mesh

        verts, faces = self.surface()
        kw = {"antialias": antialias}
        base = self.albedo(verts) if shading != "textureless" else torch.ones_like(verts)
        C = len(cams)
        if shading == "albedo":
            r = render_mesh(Mesh(verts, faces, vertex_colors=base), cams, background=background, ssaa=ssaa, **kw)
            return DMTetRender(r.rgb, r.alpha, verts, faces)
        normals = vertex_normals(verts, faces)
        bg = background
        rgbs, alphas = [], []
        for c in range(C):
            ldir = F.normalize(light[c].to(verts) - verts, dim=-1)
            shade = ambient + diffuse * (normals * ldir).sum(-1, keepdim=True).clamp_min(0.0)
            if bg is not None and torch.as_tensor(bg).dim() >= 2:
                bg_c = torch.as_tensor(bg)[c:c + 1]
            else:
                bg_c = bg
            r = render_mesh(Mesh(verts, faces, vertex_colors=base * shade), cams[c:c + 1], background=bg_c,
                            ssaa=ssaa, **kw)
            rgbs.append(r.rgb)
            alphas.append(r.alpha)
        return DMTetRender(torch.cat(rgbs), torch.cat(alphas), verts, faces)

    @torch.no_grad()
    def render_rgba(self, cams, **_ignored) -> tuple[Tensor, Tensor]:
        """Premultiplied albedo (C, H, W, 3) and alpha (C, H, W, 1), no gradient (bake, previews)."""
        r = self.render(cams.to(self.device), background=torch.zeros(3, device=self.device), antialias=False)
        return r.rgb, r.alpha

    @torch.no_grad()
    def to_mesh(self, cfg, threshold: float = 0.0, timings: dict | None = None):
        """The current surface through the shared clean-up and decimation (``cfg``: MeshConfig;
        ``threshold`` is unused: the surface is the SDF's zero set)."""
        import time

        from ..errors import EmptyModelError
        from ..mesh.core import Mesh
        from ..mesh.extract import clean_mesh, decimate

        t = time.perf_counter()
        verts, faces = self.surface()
        if len(faces) == 0:
            raise EmptyModelError("the model is empty: the DMTet's SDF has no zero crossing")
        v, f = verts.double().cpu().numpy(), faces.cpu().numpy()
        tol = 1e-3 * self.geometry.grid.cell
        v, f = clean_mesh(v, f, tol, cfg.min_component_fraction)
        if len(f) > cfg.target_faces > 0:
            v, f = decimate(v, f, cfg.target_faces)
            v, f = clean_mesh(v, f, tol, cfg.min_component_fraction)
        if timings is not None:
            timings["marching_tets"] = time.perf_counter() - t
        if len(f) == 0:
            raise EmptyModelError("the model is empty: no surface left after mesh clean-up")
        return Mesh(torch.as_tensor(v, dtype=torch.float32, device=self.device),
                    torch.as_tensor(f, dtype=torch.int64, device=self.device))


def dmtet_model(cfg, color, sdf: Tensor | None = None, device="cpu") -> DMTetModel:
    """A :class:`DMTetModel` on ``cfg.magic3d``'s grid over the box of ``cfg.nerf`` with the
    colour field ``color`` (a NerfModel) and the SDF ``sdf`` (zeros if None)."""
    m = cfg.magic3d
    grid = tet_grid(m.grid_resolution, cfg.nerf.bound, device)
    sdf = torch.zeros(len(grid.vertices), device=device) if sdf is None else sdf.to(device)
    return DMTetModel(DMTet(grid, sdf, deform_scale=m.deform_scale), color.to(device), m.lr_sdf, m.lr_deform,
                      m.lr_color)


# ------------------------------------------------------------------------------------------------
# dmtet.safetensors


def save_dmtet(model: DMTetModel, path):
    """The SDF, the deformation and the colour field, with their shapes, in one safetensors file
    (written atomically)."""
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from ..atomic import atomic_output

    path = Path(path)
    g = model.geometry.grid
    meta = {"nerf": dataclasses.asdict(model.color.spec), "resolution": g.resolution, "bound": g.bound,
            "deform_scale": model.geometry.deform_scale}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.params.items()}
    tensors["occupancy"] = model.occupancy.detach().cpu().contiguous()
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"dreamgs-dmtet": json.dumps(meta)})
    return path


def load_dmtet(path, device="cpu") -> DMTetModel:
    """Load a :func:`save_dmtet` file (safetensors only); a malformed file raises InputError."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..errors import InputError
    from .nerf import NerfModel, NerfSpec

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["dreamgs-dmtet"])
        spec = NerfSpec(**meta["nerf"])
        grid = tet_grid(int(meta["resolution"]), float(meta["bound"]), device)
        tensors = load_file(str(path))
        ref = NerfModel.create(spec, device="meta")
    except Exception as e:  # noqa: BLE001 - any damage is the file's
        raise InputError(f"{path}: not a dreamgs DMTet file ({type(e).__name__})") from None
    occ = tensors.pop("occupancy", None)
    n = len(grid.vertices)
    want = {**{k: v.shape for k, v in ref.params.items()}, DMTet.SDF: (n,), DMTet.DEFORM: (n, 3)}
    if sorted(tensors) != sorted(want) or any(tuple(tensors[k].shape) != tuple(want[k]) for k in tensors):
        raise InputError(f"{path}: the DMTet's tensors do not match its grid and colour field")
    color = NerfModel(spec, {k: v.to(device) for k, v in tensors.items() if not k.startswith("dmtet.")},
                      None if occ is None else occ.to(device))
    geo = DMTet(grid, tensors[DMTet.SDF], tensors[DMTet.DEFORM], float(meta["deform_scale"]))
    return DMTetModel(geo, color)
