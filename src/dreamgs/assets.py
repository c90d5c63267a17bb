"""Built-in procedural 3D assets with known ground truth, for the "oracle" prior.

Each asset is a UV-textured :class:`~dreamgs.mesh.core.Mesh`, centred at the origin (bounding-box
centre) and scaled so that every vertex lies within radius 0.5. Every connected part is a closed,
consistently wound (counter-clockwise from outside) surface, so the mesh is watertight; parts may
interpenetrate (a mug's handle goes into its wall). The assets are deliberately asymmetric, with
saturated colours, so that the front (+z, seen from azimuth 0) and the back (-z) look clearly
different:

- ``mug``: a hollow mug; a red panel with a yellow logo on the front, blue elsewhere, a white
  band, and a yellow handle on the +x side (the right when seen from the front).
- ``house``: walls, a gable roof and a chimney; door and windows on the yellow front wall only,
  a green back wall, a red front roof slope and a purple back slope, a round window on +x.
- ``die``: a cube with a different colour on each face and standard pips (1 on the red front,
  6 on the blue back, 3 on +x, 4 on -x, 2 on top, 5 on the bottom).

Surfaces are built from parametric patches ``(s, t) in [0, 1]^2 -> xyz``; each patch gets a cell of
one texture atlas, painted by a function of ``(s, t, xyz)``, with ``s`` to the right and ``t`` up
when the patch is seen from outside (texture images are not mirrored).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .mesh.core import Mesh

ASSET_KEYWORDS: dict[str, tuple[str, ...]] = {
    "mug": ("mug", "mugs", "cup", "cups", "coffee", "tea", "teacup", "teacups"),
    "house": ("house", "houses", "home", "cottage", "cottages", "hut", "cabin", "building"),
    "die": ("die", "dice", "cube", "cubes", "d6"),
}
ASSET_NAMES: tuple[str, ...] = tuple(ASSET_KEYWORDS)

_TEX_SIZE = 1024
_MARGIN = 3  # texels of edge padding around each atlas cell (bilinear lookups never bleed)

Surface = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (s, t) -> (N, 3)
Paint = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (s, t, xyz) -> (N, 3) RGB


@dataclass
class _Patch:
    surface: Surface
    ns: int  # quads along s
    nt: int  # quads along t
    paint: Paint
    flip: bool = False  # reverse the winding (when ds x dt points inwards)


def _solid(rgb) -> Paint:
    col = np.asarray(rgb, np.float64)
    return lambda s, t, p: np.broadcast_to(col, (len(s), 3)).copy()


def _build(parts: list[list[_Patch]]) -> Mesh:
    """Triangulate patches, weld each part's coincident vertices, and paint the texture atlas."""
    n_patches = sum(len(p) for p in parts)
    grid = math.ceil(math.sqrt(n_patches))
    cell = _TEX_SIZE // grid
    inner = cell - 2 * _MARGIN
    texture = np.full((_TEX_SIZE, _TEX_SIZE, 3), 0.5)
    all_verts, all_faces, all_uvs, all_face_uvs = [], [], [], []
    n_verts, n_uvs, k = 0, 0, 0
    for part in parts:
        pos, faces, face_uvs = [], [], []
        n_local = 0
        for patch in part:
            ns, nt = patch.ns, patch.nt
            s, t = np.meshgrid(np.linspace(0, 1, ns + 1), np.linspace(0, 1, nt + 1), indexing="ij")
            s, t = s.reshape(-1), t.reshape(-1)
            pos.append(patch.surface(s, t))
            idx = np.arange((ns + 1) * (nt + 1)).reshape(ns + 1, nt + 1)
            v00, v10, v01, v11 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
            tri = np.concatenate([np.stack([v00, v10, v11], -1).reshape(-1, 3),
                                  np.stack([v00, v11, v01], -1).reshape(-1, 3)])
            if patch.flip:
                tri = tri[:, ::-1]
            faces.append(tri + n_local)
            face_uvs.append(tri + n_uvs)
            n_local += len(s)
            n_uvs += len(s)
            # Atlas cell k; t = 1 is the top of the cell.
            row, col = divmod(k, grid)
            k += 1
            u = (col * cell + _MARGIN + s * inner) / _TEX_SIZE
            v = 1.0 - (row * cell + _MARGIN + (1.0 - t) * inner) / _TEX_SIZE
            all_uvs.append(np.stack([u, v], -1))
            xl = (np.arange(cell) + 0.5 - _MARGIN) / inner
            ss, tt = np.meshgrid(np.clip(xl, 0, 1), 1.0 - np.clip(xl, 0, 1), indexing="xy")
            ss, tt = ss.reshape(-1), tt.reshape(-1)
            rgb = patch.paint(ss, tt, patch.surface(ss, tt))
            texture[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = rgb.reshape(cell, cell, 3)
        pos = np.concatenate(pos)
        faces = np.concatenate(faces)
        face_uvs = np.concatenate(face_uvs)
        # Weld coincident points (patch borders, seams, collapsed poles), drop collapsed triangles.
        _, first, inverse = np.unique(np.round(pos * 1e7).astype(np.int64), axis=0, return_index=True,
                                      return_inverse=True)
        faces = inverse.reshape(-1)[faces]
        keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
        all_verts.append(pos[first])
        all_faces.append(faces[keep] + n_verts)
        all_face_uvs.append(face_uvs[keep])
        n_verts += len(first)
    verts = np.concatenate(all_verts)
    centre = (verts.min(0) + verts.max(0)) / 2
    verts = verts - centre
    verts = verts * (0.5 / np.linalg.norm(verts, axis=1).max())
    return Mesh(
        vertices=torch.tensor(verts, dtype=torch.float32),
        faces=torch.tensor(np.concatenate(all_faces), dtype=torch.int64),
        uvs=torch.tensor(np.concatenate(all_uvs), dtype=torch.float32),
        face_uvs=torch.tensor(np.concatenate(all_face_uvs), dtype=torch.int64),
        texture=torch.tensor(np.clip(texture, 0, 1), dtype=torch.float32),
    )


# --- shape helpers ------------------------------------------------------------------------------

_AXES = np.eye(3)
# For each outward axis: (right, up) tangents seen from outside, so that right x up = outward.
_BOX_FRAMES = {
    "+x": (-_AXES[2], _AXES[1]), "-x": (_AXES[2], _AXES[1]),
    "+y": (_AXES[0], -_AXES[2]), "-y": (_AXES[0], _AXES[2]),
    "+z": (_AXES[0], _AXES[1]), "-z": (-_AXES[0], _AXES[1]),
}


def _box(lo, hi, density: float, paints: dict[str, Paint]) -> list[_Patch]:
    """A closed box [lo, hi] as six patches; ``density`` quads per unit length along each axis."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    ext = hi - lo
    n = np.maximum(1, np.round(ext * density)).astype(int)
    patches = []
    for name, (right, up) in _BOX_FRAMES.items():
        axis = "xyz".index(name[1])
        normal = _AXES[axis] * (1 if name[0] == "+" else -1)
        centre = (lo + hi) / 2 + normal * ext / 2
        r_len, u_len = np.abs(right) @ ext, np.abs(up) @ ext
        origin = centre - right * r_len / 2 - up * u_len / 2

        def surface(s, t, origin=origin, right=right, up=up, r_len=r_len, u_len=u_len):
            return origin + s[:, None] * right * r_len + t[:, None] * up * u_len

        ns = int(np.abs(right) @ n)
        nt = int(np.abs(up) @ n)
        patches.append(_Patch(surface, ns, nt, paints[name]))
    return patches


def _revolve(profile: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n_theta: int, nt: int,
             paint: Paint, flip: bool = False) -> _Patch:
    """A surface of revolution about +y: ``profile(t) -> (radius, y)``, angle ``theta = 2 pi s``
    measured from +z towards +x (s grows to the right seen from outside when y rises with t)."""
    def surface(s, t):
        r, y = profile(t)
        th = 2 * np.pi * s
        return np.stack([r * np.sin(th), np.broadcast_to(y, th.shape), r * np.cos(th)], -1)

    return _Patch(surface, n_theta, nt, paint, flip)


def _in_rect(s, t, s0, s1, t0, t1):
    return (s >= s0) & (s <= s1) & (t >= t0) & (t <= t1)


def _paint_where(base: Paint, layers: list[tuple[Callable, tuple]]) -> Paint:
    """``base`` overpainted by ``(mask_fn(s, t, p) -> bool, rgb)`` layers in order."""
    def paint(s, t, p):
        out = base(s, t, p)
        for mask_fn, rgb in layers:
            out[mask_fn(s, t, p)] = rgb
        return out

    return paint


# --- assets -------------------------------------------------------------------------------------

def _mug() -> Mesh:
    ro, ri, y0, y1, yi = 0.27, 0.21, -0.28, 0.28, -0.22
    n_theta = 72
    red, blue, yellow, white = (0.9, 0.08, 0.1), (0.1, 0.2, 0.85), (1.0, 0.85, 0.05), (1.0, 1.0, 1.0)

    def side_paint(s, t, p):
        th = np.arctan2(p[:, 0], p[:, 2])  # 0 at the front (+z), +pi/2 at the handle (+x)
        y = p[:, 1]
        out = np.empty((len(s), 3))
        out[:] = blue
        out[np.abs(th) < np.radians(70)] = red
        logo = (ro * th) ** 2 + (y + 0.02) ** 2 < 0.12 ** 2
        out[logo] = yellow
        out[logo & ((ro * th) ** 2 + (y + 0.02) ** 2 < 0.05 ** 2)] = red  # a ring logo
        out[(y > 0.17) & (y < 0.21)] = white
        return out

    body = [
        _revolve(lambda t: (np.full_like(t, ro), y0 + (y1 - y0) * t), n_theta, 40, side_paint),
        _revolve(lambda t: (ro + (ri - ro) * t, np.full_like(t, y1)), n_theta, 3, _solid(white)),
        _revolve(lambda t: (np.full_like(t, ri), y1 + (yi - y1) * t), n_theta, 34, _solid((0.93, 0.93, 0.88))),
        _revolve(lambda t: (ri * (1 - t), np.full_like(t, yi)), n_theta, 10, _solid((0.4, 0.2, 0.07))),
        _revolve(lambda t: (ro * (1 - t), np.full_like(t, y0)), n_theta, 12, _solid((0.5, 0.5, 0.5)), flip=True),
    ]
    # Handle: part of a torus in the xy-plane on the +x side; both ends end inside the wall,
    # closed by flat caps. phi runs along the arc (from -phi_end to +phi_end), psi around the tube.
    R, r = 0.16, 0.028
    phi_end = math.asin(0.14 / R)
    cx = (ro + ri) / 2 - R * math.cos(phi_end)

    def tube_point(phi, psi, rad):
        radial = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], -1)
        centre = np.array([cx, 0.0, 0.0]) + R * radial
        around = np.cos(psi)[..., None] * radial + np.sin(psi)[..., None] * np.array([0.0, 0.0, 1.0])
        return centre + rad[..., None] * around

    def tube(s, t):
        return tube_point(phi_end * (2 * s - 1), 2 * np.pi * t, np.full_like(s, r))

    def cap(sign):
        def surface(s, t):
            return tube_point(np.full_like(s, sign * phi_end), 2 * np.pi * s, r * (1 - t))
        return surface

    n_phi, n_psi = 40, 16
    handle = [
        _Patch(tube, n_phi, n_psi, _solid(yellow)),
        _Patch(cap(1.0), n_psi, 4, _solid(yellow), flip=True),
        _Patch(cap(-1.0), n_psi, 4, _solid(yellow)),
    ]
    return _build([body, handle])


def _house() -> Mesh:
    yellow, green, orange, grey = (1.0, 0.8, 0.15), (0.1, 0.55, 0.25), (0.95, 0.45, 0.1), (0.45, 0.45, 0.5)
    red_roof, purple_roof = (0.8, 0.08, 0.08), (0.4, 0.1, 0.5)
    glass, frame, door = (0.35, 0.65, 1.0), (1.0, 1.0, 1.0), (0.45, 0.15, 0.02)
    bx, by0, by1, bz = 0.34, -0.30, 0.06, 0.25

    def window(s0, s1, t0, t1):
        return [(lambda s, t, p: _in_rect(s, t, s0 - 0.02, s1 + 0.02, t0 - 0.03, t1 + 0.03), frame),
                (lambda s, t, p: _in_rect(s, t, s0, s1, t0, t1), glass),
                (lambda s, t, p: _in_rect(s, t, (s0 + s1) / 2 - 0.008, (s0 + s1) / 2 + 0.008, t0, t1), frame)]

    front = _paint_where(_solid(yellow), [
        *window(0.1, 0.3, 0.42, 0.8), *window(0.7, 0.9, 0.42, 0.8),
        (lambda s, t, p: _in_rect(s, t, 0.42, 0.58, 0.0, 0.65), door),
        (lambda s, t, p: (s - 0.55) ** 2 + (t - 0.32) ** 2 < 0.02 ** 2, (1.0, 0.85, 0.0)),
    ])
    side_window = _paint_where(_solid(orange), [
        (lambda s, t, p: (s - 0.5) ** 2 + (t - 0.55) ** 2 < 0.2 ** 2, frame),
        (lambda s, t, p: (s - 0.5) ** 2 + (t - 0.55) ** 2 < 0.16 ** 2, glass),
    ])
    body = _box((-bx, by0, -bz), (bx, by1, bz), 50, {
        "+z": front, "-z": _solid(green), "+x": side_window, "-x": _solid(orange),
        "+y": _solid(grey), "-y": _solid(grey),
    })

    # Gable roof, ridge along x. Cross-section: back eave A, front eave B, apex P (z, y).
    xr, yb, ya, zr = 0.38, 0.05, 0.32, 0.3
    A, B, P = np.array([-zr, yb]), np.array([zr, yb]), np.array([0.0, ya])
    n_x, n_slope, n_z = 38, 20, 30

    def xzy(x, zy):
        return np.stack([x, zy[..., 1], zy[..., 0]], -1)

    def stripes(base, dark):
        return lambda s, t, p: np.where((np.floor(t * 8) % 2 == 0)[:, None], np.asarray(base), np.asarray(dark) * 1.0)

    roof = [
        _Patch(lambda s, t: xzy(-xr + 2 * xr * s, B + t[:, None] * (P - B)), n_x, n_slope,
               stripes(red_roof, (0.6, 0.05, 0.05))),
        _Patch(lambda s, t: xzy(xr - 2 * xr * s, A + t[:, None] * (P - A)), n_x, n_slope, _solid(purple_roof)),
        _Patch(lambda s, t: xzy(-xr + 2 * xr * s, A + t[:, None] * (B - A)), n_x, n_z, _solid(grey)),
        # Gables: degenerate quads whose t = 1 edge collapses to the apex.
        _Patch(lambda s, t: xzy(np.full_like(s, xr), (1 - t)[:, None] * (B + s[:, None] * (A - B)) + t[:, None] * P),
               n_z, n_slope, _solid(orange)),
        _Patch(lambda s, t: xzy(np.full_like(s, -xr), (1 - t)[:, None] * (A + s[:, None] * (B - A)) + t[:, None] * P),
               n_z, n_slope, _solid(orange)),
    ]
    chimney = _box((0.14, 0.12, -0.2), (0.24, 0.4, -0.1), 60, {
        **{k: _solid((0.55, 0.25, 0.2)) for k in _BOX_FRAMES}, "+y": _solid((0.1, 0.1, 0.1)),
    })
    return _build([body, roof, chimney])


_PIPS = {
    1: [(0.5, 0.5)],
    2: [(0.27, 0.73), (0.73, 0.27)],
    3: [(0.27, 0.73), (0.5, 0.5), (0.73, 0.27)],
    4: [(0.27, 0.27), (0.27, 0.73), (0.73, 0.27), (0.73, 0.73)],
    5: [(0.27, 0.27), (0.27, 0.73), (0.5, 0.5), (0.73, 0.27), (0.73, 0.73)],
    6: [(0.27, 0.27), (0.27, 0.5), (0.27, 0.73), (0.73, 0.27), (0.73, 0.5), (0.73, 0.73)],
}


def _die() -> Mesh:
    def face(n, rgb, pip_rgb):
        def pips(s, t, p):
            return np.any([(s - a) ** 2 + (t - b) ** 2 < 0.09 ** 2 for a, b in _PIPS[n]], axis=0)
        return _paint_where(_solid(rgb), [(pips, pip_rgb)])

    white, black = (1.0, 1.0, 1.0), (0.05, 0.05, 0.05)
    return _build([_box((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3), 40, {
        "+z": face(1, (0.9, 0.05, 0.05), white),
        "-z": face(6, (0.05, 0.15, 0.9), white),
        "+x": face(3, (0.05, 0.7, 0.1), white),
        "-x": face(4, (1.0, 0.85, 0.0), black),
        "+y": face(2, (0.95, 0.95, 0.95), black),
        "-y": face(5, (0.8, 0.1, 0.8), white),
    })])


_BUILDERS = {"mug": _mug, "house": _house, "die": _die}


@lru_cache(maxsize=None)
def _cached(name: str) -> Mesh:
    return _BUILDERS[name]()


def make_asset(name: str) -> Mesh:
    """The built-in asset ``name`` (one of :data:`ASSET_NAMES`) as a textured Mesh on the CPU.

    Built once and cached; every call returns fresh tensors, so callers may modify them.
    """
    if name not in _BUILDERS:
        raise InputError(f"unknown asset '{name}' (built-in assets: {', '.join(ASSET_NAMES)})")
    m = _cached(name)
    return Mesh(m.vertices.clone(), m.faces.clone(), m.uvs.clone(), m.face_uvs.clone(), m.texture.clone())


def asset_for_prompt(prompt: str) -> str:
    """The built-in asset a text prompt names, by keyword (the earliest keyword in the prompt wins).

    Raises :class:`InputError` for an empty prompt or when no keyword matches.
    """
    words = re.findall(r"[a-z0-9]+", (prompt or "").lower())
    if not words:
        raise InputError("empty prompt: the oracle prior needs a prompt that names a built-in asset")
    for word in words:
        for name, keywords in ASSET_KEYWORDS.items():
            if word in keywords:
                return name
    known = "; ".join(f"{n} ({', '.join(k)})" for n, k in ASSET_KEYWORDS.items())
    raise InputError(f"prompt '{prompt}' names no built-in asset; assets and their keywords: {known}")
