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
- ``gen:<seed>`` (any non-negative integer): a generated asset, a deterministic function of the
  seed; a main body (box, cylinder, frustum or ellipsoid) with an off-centre marker on its front,
  its own colours and textures (solid, stripes, checker, dots) on the front, left, right (and back),
  and 1-3 parts attached to it (on a side, on top, a plinth under it, a handle); parts overlap the
  body, so the object is one piece.

:data:`SPLITS` names the benchmark splits: ``test`` is generated assets only (seeds below 1000, that
no default was tuned on), ``dev`` the built-ins and generated assets of seeds from 1000.

Surfaces are built from parametric patches ``(s, t) in [0, 1]^2 -> xyz``; each patch gets a cell of
one texture atlas, painted by a function of ``(s, t, xyz)``, with ``s`` to the right and ``t`` up
when the patch is seen from outside (texture images are not mirrored).
"""

from __future__ import annotations

import colorsys
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


# --- generated assets ---------------------------------------------------------------------------
#
# ``gen:<seed>``: a random composition of 2-4 primitives, a deterministic function of the seed.
# Built in arbitrary units (the main body about 1 tall, standing on y = 0), then centred and
# scaled by ``_build`` like the built-ins. Angles ``phi`` are measured from +z (the front) towards
# +x (the right seen from the front).

GEN_PREFIX = "gen:"
_TEX_KINDS = ("solid", "stripes", "checker", "dots")
_WHITE, _BLACK = np.array([0.96, 0.96, 0.96]), np.array([0.07, 0.07, 0.07])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _rot_y(a: float) -> np.ndarray:
    """Rotation about +y by ``a`` radians: +z goes to (sin a, 0, cos a)."""
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


_ROT_Y_TO_Z = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +y -> +z, +z -> -y


def _placed(patches: list[_Patch], rot: np.ndarray, offset) -> list[_Patch]:
    """Patches moved by a rotation (det +1, so the winding is kept) and an offset; their paint
    still sees the local (unmoved) coordinates."""
    offset = np.asarray(offset, np.float64)
    out = []
    for p in patches:
        def surface(s, t, p=p):
            x = p.surface(s, t)
            return x[:, :1] * rot[:, 0] + x[:, 1:2] * rot[:, 1] + x[:, 2:] * rot[:, 2] + offset

        def paint(s, t, xyz, p=p):
            return p.paint(s, t, p.surface(s, t))

        out.append(_Patch(surface, p.ns, p.nt, paint, p.flip))
    return out


def _texture(spec, la: float, lb: float, wrap: bool = False) -> Paint:
    """A pattern over a patch ``la`` long along s and ``lb`` along t (``wrap``: s is periodic)."""
    kind, c1, c2, period, orient = spec
    na, nb = max(1, round(la / period)), max(1, round(lb / period))
    if wrap and na % 2:
        na += 1  # checker and diagonal stripes continue across the seam

    def paint(s, t, p):
        a, b = s * na, t * nb  # in periods
        if kind == "stripes":
            m = ({"h": b, "v": a, "d": a + b}[orient] % 1.0) < 0.5
        elif kind == "checker":
            m = (np.floor(a) + np.floor(b)) % 2 == 1
        elif kind == "dots":
            m = (a % 1.0 - 0.5) ** 2 + (b % 1.0 - 0.5) ** 2 < 0.3 ** 2
        else:
            m = np.zeros(len(s), bool)
        return np.where(m[:, None], c2, c1)

    return paint


def _rand_colour(rng, hue: float) -> np.ndarray:
    return _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))


def _rand_spec(rng, hue: float, kinds=_TEX_KINDS):
    """A random texture: a saturated colour of ``hue`` and a second colour for the pattern."""
    c1 = _rand_colour(rng, hue)
    r = rng.random()
    c2 = (_WHITE if r < 0.3 else _BLACK if r < 0.5 else c1 * 0.4 if r < 0.7
          else _rand_colour(rng, hue + rng.uniform(0.35, 0.65)))
    return (str(rng.choice(kinds)), c1, c2, rng.uniform(0.16, 0.3), str(rng.choice(["h", "v", "d"])))


def _contrast(candidates, against) -> np.ndarray:
    """The candidate colour farthest (worst case) from every colour in ``against``."""
    return max(candidates, key=lambda c: min(np.abs(c - a).sum() for a in against))


def _marker(rng, base_colours, width: float, height: float):
    """A front marker: (paint layers over local (X, Y) coordinates), an off-centre shape of a
    colour that contrasts with ``base_colours``, outlined. The face spans ``width`` x ``height``."""
    kind = str(rng.choice(["disc", "rect", "diamond", "ring", "cross", "triangle"]))
    size = rng.uniform(0.22, 0.32) * min(width, height)
    x0 = rng.choice([-1, 1]) * rng.uniform(0.05, 0.22) * width
    y0 = rng.uniform(0.4, 0.6) * height
    colour = _contrast([_WHITE, _BLACK, _hsv(rng.random(), 1.0, 1.0)], base_colours)
    outline = _contrast([_WHITE, _BLACK], [colour])

    def mask(k):
        def fn(dx, dy):
            d = size * k
            r2 = dx ** 2 + dy ** 2
            if kind == "disc":
                return r2 < d ** 2
            if kind == "rect":
                return (np.abs(dx) < d) & (np.abs(dy) < 0.7 * d)
            if kind == "diamond":
                return np.abs(dx) + np.abs(dy) < 1.2 * d
            if kind == "ring":
                return (r2 < d ** 2) & (r2 > (0.55 * size) ** 2)
            if kind == "cross":
                return ((np.abs(dx) < 0.3 * d) & (np.abs(dy) < d)) | ((np.abs(dy) < 0.3 * d) & (np.abs(dx) < d))
            return (dy > -0.8 * d) & (np.abs(dx) < 0.6 * (d - dy))  # a triangle pointing up
        return lambda dx, dy: fn(dx - x0, dy - y0)

    return [(mask(1.18), outline), (mask(1.0), colour)]


def _overpaint(base: Paint, layers, xy: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Paint:
    """``base`` overpainted by marker layers evaluated at ``xy(local xyz)``."""
    def paint(s, t, p):
        out = base(s, t, p)
        X, Y = xy(p)
        for fn, rgb in layers:
            out[fn(X, Y)] = rgb
        return out

    return paint


def _frustum(r0: float, r1: float, y0: float, y1: float, n_theta: int, nt: int, side: Paint,
             top: Paint, bottom: Paint) -> list[_Patch]:
    """A closed frustum about +y (a cone when ``r1 == 0``, a cylinder when ``r0 == r1``)."""
    patches = [_revolve(lambda t: (r0 * (1 - t) + r1 * t, y0 * (1 - t) + y1 * t), n_theta, nt, side)]
    if r1 > 0:
        patches.append(_revolve(lambda t: (r1 * (1 - t), np.full_like(t, y1)), n_theta, 4, top))
    patches.append(_revolve(lambda t: (r0 * (1 - t), np.full_like(t, y0)), n_theta, 4, bottom, flip=True))
    return patches


def _ellipsoid(r: float, ry: float, yc: float, n_theta: int, nt: int, paint: Paint) -> list[_Patch]:
    return [_revolve(lambda t: (r * np.sin(np.pi * t), yc - ry * np.cos(np.pi * t)), n_theta, nt, paint)]


def _handle(e: float, yc: float, h: float, bulge: float, r: float, phi: float, paint: Paint) -> list[_Patch]:
    """A torus-arc handle in the vertical plane at angle ``phi``: both ends (with caps) at distance
    ``e`` from the y axis, at heights ``yc -+ h``; the arc reaches ``e + bulge``."""
    R = (h ** 2 + bulge ** 2) / (2 * bulge)
    cx, end = e + bulge - R, math.atan2(h, R - bulge)

    def tube_point(a, psi, rad):  # local frame: outwards +x, up +y, sideways +z (as the mug's)
        radial = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], -1)
        centre = np.array([cx, yc, 0.0]) + R * radial
        around = np.cos(psi)[..., None] * radial + np.sin(psi)[..., None] * np.array([0.0, 0.0, 1.0])
        return centre + rad[..., None] * around

    def cap(sign):
        return lambda s, t: tube_point(np.full_like(s, sign * end), 2 * np.pi * s, r * (1 - t))

    patches = [
        _Patch(lambda s, t: tube_point(end * (2 * s - 1), 2 * np.pi * t, np.full_like(s, r)), 32, 12, paint),
        _Patch(cap(1.0), 12, 3, paint, flip=True),
        _Patch(cap(-1.0), 12, 3, paint),
    ]
    return _placed(patches, _rot_y(phi - np.pi / 2), (0.0, 0.0, 0.0))


@dataclass
class _Body:
    """The main body in its local frame (standing on y = 0, axis y) and how to attach to it."""

    kind: str
    height: float
    yaw: float
    half: np.ndarray  # half sizes along local x and z
    radius: Callable[[float, float], float]  # (local angle, y) -> distance from the axis to the surface
    top: Callable[[float, float], float]  # local (x, z) offset -> height of the top surface there
    top_half: np.ndarray  # half sizes of the region a part may stand on


def _main_body(rng) -> tuple[list[_Patch], _Body]:
    """The main body: box, cylinder, frustum or ellipsoid; the front sector (+z) carries a marker,
    the left, right (and back) sectors have their own colours and textures."""
    kind = str(rng.choice(["box", "cylinder", "frustum", "ellipsoid"]))
    h0 = rng.random()
    hues = {"front": h0, "right": h0 + rng.uniform(0.25, 0.4), "left": h0 + rng.uniform(0.6, 0.75),
            "back": h0 + rng.uniform(0.45, 0.55), "top": rng.random(), "bottom": rng.random()}
    specs = {k: _rand_spec(rng, h) for k, h in hues.items()}
    front_colours = [specs["front"][1], specs["front"][2]]
    yaw = math.radians(rng.uniform(-20, 20))
    if kind == "box":
        w, d, H = rng.uniform(0.6, 1.2), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.1)
        a, c = w / 2, d / 2
        dims = {"+z": (w, H), "-z": (w, H), "+x": (d, H), "-x": (d, H), "+y": (w, d), "-y": (w, d)}
        names = {"+z": "front", "-z": "back", "+x": "right", "-x": "left", "+y": "top", "-y": "bottom"}
        paints = {f: _texture(specs[names[f]], *dims[f]) for f in dims}
        paints["+z"] = _overpaint(paints["+z"], _marker(rng, front_colours, w, H), lambda p: (p[:, 0], p[:, 1]))
        patches = _box((-a, 0.0, -c), (a, H, c), 24, paints)

        def radius(ang, y):
            s, co = abs(math.sin(ang)), abs(math.cos(ang))
            return min(a / s if s > 1e-9 else math.inf, c / co if co > 1e-9 else math.inf)

        body = _Body(kind, H, yaw, np.array([a, c]), radius, lambda x, z: H, np.array([a, c]))
        return patches, body

    if kind == "ellipsoid":
        r = rng.uniform(0.35, 0.55)
        ry = r * rng.uniform(0.75, 1.25)
        H, r0, r1, r_mid = 2 * ry, r, r, r
    else:
        H = rng.uniform(0.5, 1.2)
        r0 = rng.uniform(0.3, 0.55)
        r1 = r0 if kind == "cylinder" else r0 * rng.uniform(0.45, 0.8)
        if kind == "frustum" and rng.random() < 0.3:
            r0, r1 = r1, r0  # wider at the top
        r_mid = (r0 + r1) / 2
    sector = np.radians(60.0)
    circ, slant = 2 * np.pi * r_mid, (math.hypot(H, r1 - r0) if kind != "ellipsoid" else np.pi * r_mid * 1.2)
    tex = {k: _texture(specs[k], circ, slant, wrap=True) for k in ("front", "right", "left")}
    marker = _marker(rng, front_colours, 2 * sector * r_mid, H)

    def side(s, t, p):
        th = np.arctan2(p[:, 0], p[:, 2])
        out = np.where((th > sector)[:, None], tex["right"](s, t, p), tex["left"](s, t, p))
        front = np.abs(th) <= sector
        out[front] = tex["front"](s[front], t[front], p[front])
        for fn, rgb in marker:
            out[front & fn(th * r_mid, p[:, 1])] = rgb
        return out

    if kind == "ellipsoid":
        patches = _ellipsoid(r, ry, ry, 48, 28, side)

        def radius(ang, y):
            return r * math.sqrt(max(0.0, 1 - ((y - ry) / ry) ** 2))

        def top(x, z):
            return ry + ry * math.sqrt(max(0.0, 1 - (x * x + z * z) / r ** 2))

        body = _Body(kind, H, yaw, np.array([r, r]), radius, top, np.array([0.5 * r, 0.5 * r]))
        return patches, body
    patches = _frustum(r0, r1, 0.0, H, 48, 20, side, _texture(specs["top"], 2 * np.pi * r1, r1, wrap=True),
                       _texture(specs["bottom"], 2 * np.pi * r0, r0, wrap=True))
    t_half = 0.7 * r1 * np.ones(2)
    body = _Body(kind, H, yaw, np.array([max(r0, r1)] * 2), lambda ang, y: r0 + (r1 - r0) * y / H,
                 lambda x, z: H, t_half)
    return patches, body


def _rand_part_texture(rng):
    """Per-part colours: (hue, a function giving a random texture spec in those colours)."""
    hue = rng.random()
    base = _rand_spec(rng, hue)

    def spec():
        return (str(rng.choice(_TEX_KINDS)), *base[1:])

    return spec


def _secondary(rng, body: _Body, mode: str, phi: float) -> list[_Patch]:
    """One more part, attached to the main body: on its ``side`` at angle ``phi``, on ``top``,
    under it as a ``base``, or a ``handle``; it overlaps the body, so the object is one piece."""
    spec = _rand_part_texture(rng)
    H = body.height
    body_rot = _rot_y(body.yaw)
    if mode == "handle":
        y_c = rng.uniform(0.4, 0.6) * H
        r = rng.uniform(0.04, 0.07)
        h = rng.uniform(0.2, 0.32) * H
        d = body.radius(phi - body.yaw, y_c)
        return _handle(d - 2 * r, y_c, h, 2 * r + rng.uniform(0.1, 0.22), r, phi, _texture(spec(), 1.0, 0.3))
    if mode == "base":
        h = rng.uniform(0.08, 0.16)
        sink = 0.04 if body.kind != "ellipsoid" else 0.1 * H
        off = body_rot @ np.array([rng.uniform(-0.12, 0.12), 0.0, rng.uniform(-0.12, 0.12)])
        if rng.random() < 0.5:
            a, c = body.half * rng.uniform(1.15, 1.5, 2)
            sp = spec()
            paints = {"+z": _texture(sp, 2 * a, h), "-z": _texture(sp, 2 * a, h), "+x": _texture(sp, 2 * c, h),
                      "-x": _texture(sp, 2 * c, h), "+y": _texture(spec(), 2 * a, 2 * c),
                      "-y": _texture(sp, 2 * a, 2 * c)}
            return _placed(_box((-a, -h, -c), (a, 0.0, c), 24, paints), _rot_y(body.yaw + rng.uniform(-0.3, 0.3)),
                           off + np.array([0.0, sink, 0.0]))
        r = body.half.max() * rng.uniform(1.1, 1.4)
        sp = spec()
        return _placed(_frustum(r, r, -h, 0.0, 48, 2, _texture(sp, 2 * np.pi * r, h, wrap=True),
                                _texture(spec(), 2 * np.pi * r, r, wrap=True),
                                _texture(sp, 2 * np.pi * r, r, wrap=True)),
                       np.eye(3), off + np.array([0.0, sink, 0.0]))
    if mode == "top":
        x, z = rng.uniform(-1, 1, 2) * body.top_half * 0.6
        base_y = body.top(x, z)
        off = body_rot @ np.array([x, 0.0, z])
        kind = str(rng.choice(["box", "cylinder", "cone", "ellipsoid"]))
        size = max(0.15, float(rng.uniform(0.5, 0.9) * body.top_half.min()))
        ph = rng.uniform(0.25, 0.6)
        sink = 0.04 + (0.1 * H if body.kind == "ellipsoid" else 0.0)
        if kind == "ellipsoid":
            R = min(max(0.15, size), 0.35)
            return _placed(_ellipsoid(R, R, R, 32, 16, _texture(spec(), 2 * np.pi * R, np.pi * R, wrap=True)),
                           np.eye(3), off + np.array([0.0, base_y - 0.35 * R - sink, 0.0]))
        if kind == "box":
            a, c = size * rng.uniform(0.6, 1.0, 2)
            paints = {f: _texture(spec(), 2 * a, ph) for f in _BOX_FRAMES}
            return _placed(_box((-a, -sink, -c), (a, ph, c), 24, paints),
                           _rot_y(body.yaw + rng.uniform(-0.5, 0.5)), off + np.array([0.0, base_y, 0.0]))
        r1 = 0.0 if kind == "cone" else size * rng.uniform(0.6, 1.0)
        sp = spec()
        return _placed(_frustum(size, r1, -sink, ph, 32, 10, _texture(sp, 2 * np.pi * size, ph, wrap=True),
                                _texture(spec(), 2 * np.pi * max(r1, 1e-3), max(r1, 1e-3), wrap=True),
                                _texture(sp, 2 * np.pi * size, size, wrap=True)),
                       np.eye(3), off + np.array([0.0, base_y, 0.0]))
    # side
    kind = str(rng.choice(["box", "cylinder", "spike", "ellipsoid", "arm"]))
    out = np.array([math.sin(phi), 0.0, math.cos(phi)])
    y_c = rng.uniform(0.3, 0.7) * H
    d = body.radius(phi - body.yaw, y_c)
    if kind == "box":
        a, bh, c = rng.uniform(0.12, 0.28), rng.uniform(0.15, 0.35) * H + 0.05, rng.uniform(0.1, 0.25)
        y_c = min(max(y_c, bh), H - 0.3 * bh)
        d = body.radius(phi - body.yaw, y_c)
        paints = {f: _texture(spec(), 2 * a, 2 * bh) for f in _BOX_FRAMES}
        return _placed(_box((-a, -bh, -c), (a, bh, c), 24, paints), _rot_y(phi + rng.uniform(-0.35, 0.35)),
                       out * (d + c * rng.uniform(-0.1, 0.5)) + np.array([0.0, y_c, 0.0]))
    if kind == "ellipsoid":
        R = rng.uniform(0.14, 0.28)
        return _placed(_ellipsoid(R, R * rng.uniform(0.8, 1.2), 0.0, 32, 16,
                                  _texture(spec(), 2 * np.pi * R, np.pi * R, wrap=True)),
                       np.eye(3), out * (d + R * rng.uniform(0.1, 0.5)) + np.array([0.0, y_c, 0.0]))
    if kind == "cylinder":  # a vertical post beside the body
        r, ph = rng.uniform(0.1, 0.22), rng.uniform(0.5, 1.3) * H
        y0 = rng.uniform(0.0, 0.4) * (H - ph) if ph < H else 0.0
        d = body.radius(phi - body.yaw, min(y0 + ph / 2, 0.9 * H))
        sp = spec()
        return _placed(_frustum(r, r, y0, y0 + ph, 32, 8, _texture(sp, 2 * np.pi * r, ph, wrap=True),
                                _texture(spec(), 2 * np.pi * r, r, wrap=True),
                                _texture(sp, 2 * np.pi * r, r, wrap=True)),
                       np.eye(3), out * (d + r * rng.uniform(-0.2, 0.4)))
    # a horizontal arm (cylinder) or spike (cone) pointing outwards
    r = rng.uniform(0.08, 0.18)
    length = rng.uniform(0.35, 0.6)
    emb = 0.3 * length
    r1 = 0.0 if kind == "spike" else r * rng.uniform(0.8, 1.2)
    sp = spec()
    return _placed(_frustum(r, r1, -emb, length - emb, 32, 8, _texture(sp, 2 * np.pi * r, length, wrap=True),
                            _texture(spec(), 2 * np.pi * max(r1, 1e-3), max(r1, 1e-3), wrap=True),
                            _texture(sp, 2 * np.pi * r, r, wrap=True)),
                   _rot_y(phi) @ _ROT_Y_TO_Z, out * d + np.array([0.0, y_c, 0.0]))


def _generated(seed: int) -> Mesh:
    """The generated asset of ``seed``: a main body with a front marker and 1-3 attached parts.

    The first attached part is on the left or the right side (never symmetric), later ones on the
    sides or back, on top, under the body (a plinth) or a handle (box and cylinder bodies); no part
    stands in front of the marker."""
    rng = np.random.default_rng([seed, 0x6E6173])
    patches, body = _main_body(rng)
    parts = [_placed(patches, _rot_y(body.yaw), (0.0, 0.0, 0.0))]
    n_more = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    limit = {"side": 2, "top": 1, "base": 1, "handle": 1}
    used = dict.fromkeys(limit, 0)
    angles: list[float] = []
    for i in range(n_more):
        modes = ["side"] if i == 0 else ["side", "side", "top", "base"]
        if i > 0 and body.kind in ("box", "cylinder"):
            modes.append("handle")
        mode = str(rng.choice([m for m in modes if used[m] < limit[m]]))
        used[mode] += 1
        phi = 0.0
        if mode in ("side", "handle"):
            for _ in range(50):
                if mode == "handle" and body.kind == "box":  # through the middle of a face
                    phi = body.yaw + float(rng.choice([-np.pi / 2, np.pi / 2, np.pi]))
                elif i == 0:
                    phi = float(rng.choice([-1, 1]) * rng.uniform(np.radians(60), np.radians(120)))
                else:
                    phi = float(rng.uniform(np.radians(60), np.radians(300)))
                if all(abs((phi - a + np.pi) % (2 * np.pi) - np.pi) > np.radians(60) for a in angles):
                    break
            angles.append(phi)
        parts.append(_secondary(rng, body, mode, phi))
    return _build(parts)


_BUILDERS = {"mug": _mug, "house": _house, "die": _die}


# Benchmark splits: the test split is generated assets that no default was tuned on; dev seeds
# (>= 1000) never overlap test seeds (< 1000).
SPLITS: dict[str, tuple[str, ...]] = {
    "dev": ("mug", "house", "die", "gen:1000", "gen:1001", "gen:1002"),
    "test": tuple(f"gen:{i}" for i in range(8)),
}


def split_assets(name: str) -> tuple[str, ...]:
    """The asset names of benchmark split ``name`` (one of :data:`SPLITS`)."""
    if name not in SPLITS:
        raise InputError(f"unknown split '{name}' (splits: {', '.join(SPLITS)})")
    return SPLITS[name]


def generated_seed(name: str) -> int | None:
    """The seed of a generated asset name ``gen:<seed>`` (a non-negative integer), else None."""
    m = re.fullmatch(r"gen:(\d+)", name)
    return int(m.group(1)) if m else None


@lru_cache(maxsize=None)
def _cached(name: str) -> Mesh:
    seed = generated_seed(name)
    return _generated(seed) if seed is not None else _BUILDERS[name]()


def make_asset(name: str) -> Mesh:
    """The built-in asset ``name`` (one of :data:`ASSET_NAMES`) or the generated asset
    ``gen:<seed>`` (any non-negative integer seed) as a textured Mesh on the CPU.

    Built once and cached; every call returns fresh tensors, so callers may modify them.
    """
    seed = generated_seed(name)
    if name not in _BUILDERS and seed is None:
        raise InputError(f"unknown asset '{name}' (built-in assets: {', '.join(ASSET_NAMES)}; "
                         f"generated assets: {GEN_PREFIX}<seed>, a non-negative integer seed)")
    m = _cached(name if seed is None else f"{GEN_PREFIX}{seed}")
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
