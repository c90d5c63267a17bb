"""UV unwrapping, UV-space rasterisation, texture baking from views, and texture inpainting.

Texture conventions (see :mod:`dreamgs.mesh.core`): ``uv = (u, v)`` with ``v = 0`` at the bottom
of the image; a texture of size S is an (S, S, C) image with row 0 at the top. Texel ``(row r,
column c)`` has its centre at ``u = (c + 0.5) / S``, ``v = 1 - (r + 0.5) / S``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, project_points
from ..errors import EmptyModelError, InputError
from .core import Mesh


def _face_areas(vertices: Tensor, faces: Tensor) -> Tensor:
    v = vertices.double()[faces]
    return 0.5 * torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=-1)


def unwrap(mesh: Mesh, resolution: int = 1024, padding: int = 2, max_piece_faces: int = 2000) -> Mesh:
    """UV-unwrap with xatlas: charts packed for an atlas of about ``resolution``^2 texels,
    ``padding`` texels apart (xatlas picks the scale; UVs are normalised to [0, 1]).

    xatlas's chart search grows faster than linearly with the face count and runs one mesh per
    thread, so a large mesh is first cut into spatially compact pieces of at most
    ``max_piece_faces`` faces (median splits of the face centres along the longest axis); the
    pieces are charted in parallel and packed into one atlas. The cuts only add chart seams
    (measured on a 100k-face mesh: 50 s -> 5.3 s on 2 cores, fewer charts, same utilisation;
    docs/benchmarks.md). ``max_piece_faces=0`` charts the mesh whole.

    Returns a mesh with the same ``vertices`` and ``faces`` (and colours), plus ``uvs`` (Vt, 2)
    and ``face_uvs`` (F, 3); Vt >= V since xatlas splits vertices along chart seams. Faces with
    zero area get no chart (their UVs collapse to a point). Raises :class:`InputError` for a
    mesh without faces, with non-finite vertices, or with no face of non-zero area.
    """
    import xatlas

    if mesh.num_faces == 0 or mesh.num_vertices == 0:
        raise InputError("mesh: cannot unwrap an empty mesh (no faces)")
    if not torch.isfinite(mesh.vertices).all():
        raise InputError("mesh: cannot unwrap, vertices contain NaN or infinity")
    faces = mesh.faces.detach().cpu()
    if faces.min() < 0 or faces.max() >= mesh.num_vertices:
        raise InputError("mesh: face indices out of range")
    verts = mesh.vertices.detach().cpu()
    if not float(_face_areas(verts, faces).max()) > 0.0:
        raise InputError("mesh: cannot unwrap, every face is degenerate (zero area)")
    v_np, f_np = verts.numpy().astype(np.float32), faces.numpy().astype(np.int64)
    pieces = _split_faces(v_np[f_np].mean(1), max_piece_faces)
    atlas = xatlas.Atlas()
    used = []
    for fi in pieces:
        u, local = np.unique(f_np[fi], return_inverse=True)
        used.append(u)
        atlas.add_mesh(v_np[u], local.reshape(-1, 3).astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(resolution)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    # Reassemble in the input's face order: per piece, xatlas's vertices map to input vertices.
    vmapping = np.empty(0, np.int64)
    indices = np.empty_like(f_np)
    uv_parts = []
    for i, fi in enumerate(pieces):
        vmap, idx, uv = atlas[i]
        if idx.shape != (len(fi), 3):
            raise InputError(f"mesh: xatlas returned {idx.shape[0]} faces for {len(fi)}; cannot unwrap this mesh")
        indices[fi] = idx.astype(np.int64) + len(vmapping)
        vmapping = np.concatenate([vmapping, used[i][vmap.astype(np.int64)]])
        uv_parts.append(uv)
    vmapping, indices = torch.from_numpy(vmapping), torch.from_numpy(indices)
    uvs = torch.from_numpy(np.nan_to_num(np.concatenate(uv_parts), nan=0.0)).float().clamp(0.0, 1.0)
    dev = mesh.device
    if torch.equal(vmapping[indices], faces):
        # xatlas kept each face's corners: keep the welded geometry, index UVs separately.
        return Mesh(mesh.vertices, mesh.faces, uvs.to(dev), indices.to(dev), mesh.texture, mesh.vertex_colors)
    # Otherwise use xatlas's split vertices for both (still consistent with the Mesh type).
    colors = None if mesh.vertex_colors is None else mesh.vertex_colors[vmapping.to(dev)]
    return Mesh(mesh.vertices[vmapping.to(dev)], indices.to(dev), uvs.to(dev), indices.to(dev), mesh.texture, colors)


def _split_faces(centres: np.ndarray, max_faces: int) -> list[np.ndarray]:
    """Face indices cut into spatially compact pieces of at most ``max_faces`` faces each
    (all faces in one piece when ``max_faces`` <= 0)."""
    pieces, todo = [], [np.arange(len(centres))]
    while todo:
        idx = todo.pop()
        if max_faces <= 0 or len(idx) <= max_faces:
            pieces.append(np.sort(idx))
            continue
        c = centres[idx]
        order = np.argsort(c[:, np.argmax(np.ptp(c, axis=0))], kind="stable")
        half = len(order) // 2
        todo += [idx[order[half:]], idx[order[:half]]]
    return pieces


def _require_uvs(mesh: Mesh, what: str) -> None:
    if mesh.uvs is None or mesh.face_uvs is None:
        raise InputError(f"mesh: {what} needs UV coordinates; call unwrap(mesh) first")


def rasterize_uv(mesh: Mesh, size: int, max_pairs: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Which face covers each texel centre, and where: face ids (S, S) int64 (-1 = none) and
    barycentric coordinates (S, S, 3).

    Every face's UV triangle is tested against the texel centres inside its bounding box, all
    faces at once in chunks of at most ``max_pairs`` (face, texel) pairs. A centre on an edge
    shared by two faces goes to the face with the larger index (deterministic).
    """
    _require_uvs(mesh, "UV rasterisation")
    dev = mesh.device
    S = int(size)
    uv = mesh.uvs.double()[mesh.face_uvs]  # (F, 3, 2)
    # Texel space: texel (r, c) centre sits at integer point (x, y) = (c, r).
    xy = torch.stack([uv[..., 0] * S - 0.5, (1.0 - uv[..., 1]) * S - 0.5], dim=-1)
    lo = torch.ceil(xy.amin(1) - 1e-9).long().clamp(0, S - 1)
    hi = torch.floor(xy.amax(1) + 1e-9).long().clamp(0, S - 1)
    a, b, c = xy[:, 0], xy[:, 1], xy[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    ok = (area2.abs() > 1e-12) & (hi >= lo).all(-1)
    fid = torch.nonzero(ok).squeeze(1)
    count = (hi[fid] - lo[fid] + 1)
    n = count.prod(-1)
    face_map = torch.full((S * S,), -1, dtype=torch.long, device=dev)
    bary_map = torch.zeros(S * S, 3, dtype=torch.float64, device=dev)
    if len(fid) == 0:
        return face_map.reshape(S, S), bary_map.reshape(S, S, 3).float()
    ends = torch.cumsum(n, 0).tolist()
    bounds, last = [0], 0
    for i, e in enumerate(ends):  # chunks of at most max_pairs pairs (at least one face each)
        if e - last > max_pairs and i > bounds[-1]:
            bounds.append(i)
            last = ends[i - 1]
    bounds.append(len(fid))
    hits = []
    for i0, i1 in zip(bounds[:-1], bounds[1:]):
        f = fid[i0:i1]
        cnt = count[i0:i1]
        m = cnt.prod(-1)
        owner = torch.repeat_interleave(torch.arange(len(f), device=dev), m)
        start = torch.cumsum(m, 0) - m
        local = torch.arange(int(m.sum()), device=dev) - start[owner]
        px = lo[f, 0][owner] + local % cnt[owner, 0]
        py = lo[f, 1][owner] + local // cnt[owner, 0]
        fo = f[owner]
        p = torch.stack([px, py], -1).double()
        A, B, C = a[fo], b[fo], c[fo]
        # Barycentric coordinates from signed areas, normalised by the face's signed area.
        w0 = ((B[:, 0] - p[:, 0]) * (C[:, 1] - p[:, 1]) - (B[:, 1] - p[:, 1]) * (C[:, 0] - p[:, 0])) / area2[fo]
        w1 = ((C[:, 0] - p[:, 0]) * (A[:, 1] - p[:, 1]) - (C[:, 1] - p[:, 1]) * (A[:, 0] - p[:, 0])) / area2[fo]
        w2 = 1.0 - w0 - w1
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
        texel = (py * S + px)[inside]
        hits.append((texel, fo[inside], torch.stack([w0, w1, w2], -1)[inside]))
        face_map.scatter_reduce_(0, texel, fo[inside], reduce="amax")
    for texel, fo, w in hits:
        win = face_map[texel] == fo
        bary_map[texel[win]] = w[win]
    return face_map.reshape(S, S), bary_map.clamp(0.0, 1.0).reshape(S, S, 3).float()


def texel_maps(mesh: Mesh, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The surface seen through the texture: for each texel centre covered by a UV triangle,
    its 3D point (S, S, 3) and unit normal (S, S, 3, interpolated area-weighted vertex normals),
    and the coverage mask (S, S) bool. Uncovered texels hold zeros.
    """
    face_map, bary = rasterize_uv(mesh, size)
    mask = face_map >= 0
    f = mesh.faces[face_map[mask]]  # (T, 3)
    w = bary[mask].to(mesh.vertices.dtype)  # (T, 3)
    S = int(size)
    position = torch.zeros(S, S, 3, dtype=mesh.vertices.dtype, device=mesh.device)
    normal = torch.zeros_like(position)
    position[mask] = (mesh.vertices[f] * w[..., None]).sum(1)
    n = (mesh.vertex_normals()[f] * w[..., None]).sum(1)
    normal[mask] = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return position, normal, mask


def inpaint(texture: Tensor, mask: Tensor) -> Tensor:
    """Fill every texel outside ``mask`` with the value of its nearest texel inside it.

    This fills unseen parts of charts and pads every chart across its border into the gutter,
    so bilinear (and mip-mapped) sampling near seams never picks up an unfilled colour.
    Texels inside ``mask`` are unchanged. Raises :class:`InputError` if ``mask`` is empty.
    """
    from scipy.ndimage import distance_transform_edt

    if texture.shape[:2] != mask.shape:
        raise InputError(f"inpaint: texture {tuple(texture.shape)} and mask {tuple(mask.shape)} differ in size")
    m = mask.detach().cpu().numpy().astype(bool)
    if not m.any():
        raise InputError("inpaint: no texel has a colour to fill from (empty mask)")
    if m.all():
        return texture.clone()
    _, (rows, cols) = distance_transform_edt(~m, return_distances=True, return_indices=True)
    rows = torch.from_numpy(rows).to(texture.device)
    cols = torch.from_numpy(cols).to(texture.device)
    return texture[rows, cols]


def _sample_image(image: Tensor, pix: Tensor) -> Tensor:
    """Bilinear sample of an (H, W, C) image at pixel coordinates (T, 2); pixel centres at +0.5."""
    H, W = image.shape[:2]
    grid = torch.stack([2.0 * pix[:, 0] / W - 1.0, 2.0 * pix[:, 1] / H - 1.0], -1)
    out = F.grid_sample(image.permute(2, 0, 1)[None].float(), grid[None, None].float(), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, 0].T  # (T, C)


def mesh_depths(mesh: Mesh, cams: Cameras) -> Tensor:
    """Camera-space depth (C, H, W) of the mesh seen from each view (z-buffer); 0 where empty."""
    from .raster import rasterize

    return rasterize(mesh.vertices, mesh.faces, cams.to(mesh.device)).depth


def bake(mesh: Mesh, cams: Cameras, images: Tensor, depths: Tensor | None, size: int,
         cos_threshold: float = 0.5, depth_tolerance: float = 2.0) -> tuple[Tensor, Tensor]:
    """Back-project views into the mesh's texture; returns the texture (S, S, 3), every texel
    filled, and the mask (S, S) of texels that took their colour from a view.

    For each texel covered by a UV triangle, its surface point is projected into every view. A
    view counts for the texel if

    - the view cosine (unit normal . unit direction to the camera) is >= ``cos_threshold``;
    - the point is visible: all four pixels that its bilinear colour sample reads are covered
      by the mesh in that view's depth map, and the point's depth is at most their smallest
      depth plus ``depth_tolerance * (z / f) * max(1, tan(angle))`` (that many pixel footprints,
      more for slanted surfaces, whose depth changes across a pixel). Texels next to an occluding
      edge or beyond the silhouette are thus not sampled from that view, so no colour from an
      occluder or from the background leaks in.

    The texel takes the bilinearly sampled colour of the best-facing such view. ``depths``
    (C, H, W) holds camera-space z (the distance along the optical axis) and 0 or +inf where
    the mesh does not cover a pixel; ``None`` renders them with :func:`mesh_depths`. Texels that
    no view saw are filled by :func:`inpaint`.
    """
    _require_uvs(mesh, "baking")
    C, H, W = len(cams), cams.height, cams.width
    if images.shape[:3] != (C, H, W):
        raise InputError(f"bake: images {tuple(images.shape)} do not match {C} cameras of {W}x{H}")
    if depths is None:
        depths = mesh_depths(mesh, cams)
    if depths.shape != (C, H, W):
        raise InputError(f"bake: depths {tuple(depths.shape)} do not match {C} cameras of {W}x{H}")
    dev = mesh.device
    cams = cams.to(dev)
    position, normal, mask = texel_maps(mesh, size)
    p, n = position[mask], normal[mask]
    nch = images.shape[-1]
    best_cos = torch.full((p.shape[0],), -2.0, device=dev)
    best_col = torch.zeros(p.shape[0], nch, device=dev)
    centers = cams.centers
    for i in range(C):
        pix, z = project_points(p, cams[i])
        pix, z = pix[0], z[0]
        to_cam = centers[i] - p
        cos = (n * to_cam).sum(-1) / to_cam.norm(dim=-1).clamp_min(1e-12)
        # The 2x2 pixels a bilinear sample reads (pixel centres at +0.5).
        x0 = torch.floor(pix[:, 0] - 0.5).long()
        y0 = torch.floor(pix[:, 1] - 0.5).long()
        inside = (z > 0) & (x0 >= 0) & (x0 + 1 < W) & (y0 >= 0) & (y0 + 1 < H)
        xc, yc = x0.clamp(0, W - 2), y0.clamp(0, H - 2)
        dmap = depths[i].to(device=dev, dtype=p.dtype)
        d = torch.stack([dmap[yc, xc], dmap[yc, xc + 1], dmap[yc + 1, xc], dmap[yc + 1, xc + 1]], -1)
        covered = (torch.isfinite(d) & (d > 0)).all(-1)
        c = cos.clamp(0.1, 1.0)
        slope = torch.clamp_min((1.0 - c * c).sqrt() / c, 1.0)
        focal = float(cams.Ks[i, 1, 1])
        seen = covered & (z <= d.amin(-1) + depth_tolerance * slope * z / focal)
        ok = inside & seen & (cos >= cos_threshold) & (cos > best_cos)
        if ok.any():
            best_col[ok] = _sample_image(images[i].to(dev), pix[ok]).to(best_col.dtype)
            best_cos[ok] = cos[ok]
    got = best_cos > -2.0
    if not got.any():
        raise EmptyModelError(f"bake: no texel of the mesh ({mesh.num_faces} faces) is seen by any of the {C} "
                              f"views at view cosine >= {cos_threshold:g}")
    S = int(size)
    texture = torch.zeros(S, S, nch, device=dev)
    filled = torch.zeros(S, S, dtype=torch.bool, device=dev)
    idx = torch.nonzero(mask)
    texture[idx[got, 0], idx[got, 1]] = best_col[got]
    filled[idx[got, 0], idx[got, 1]] = True
    return inpaint(texture, filled), filled
