"""Loading triangle meshes from .obj (with .mtl and texture), .glb/.gltf and .ply files.

Files are read with trimesh and converted to :class:`~dreamgs.mesh.core.Mesh`:

- Positions are used as stored (glTF and the usual OBJ exports are +y up, like dreamgs).
- A base-colour texture (OBJ ``map_Kd``, glTF ``baseColorTexture`` times ``baseColorFactor``)
  becomes ``texture`` + ``uvs`` + ``face_uvs``; trimesh gives UVs with ``v = 0`` at the bottom of
  the image (it flips glTF's convention on load), which is dreamgs's convention. Vertices that
  trimesh split along UV seams are welded again (identical positions), so a closed surface stays
  closed while the seams keep their own UVs.
- Otherwise vertex colours (or face colours, averaged to the vertices) become ``vertex_colors``.
- Colour values are taken as stored (8-bit values / 255); no sRGB/linear conversion.
- A file holding several meshes (a glTF scene) is flattened with its node transforms; their
  textures are packed side by side into one image. If only some parts are textured, all parts
  fall back to vertex colours (textures sampled at the vertices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .core import Mesh

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply")


def _image_to_array(img) -> np.ndarray:
    """A PIL image as float (H, W, 3) in [0, 1], row 0 at the top."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return arr


def _material_texture(material) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(texture image or None, uniform RGB colour or None) of a trimesh material."""
    image = getattr(material, "image", None)  # SimpleMaterial (OBJ)
    factor = None
    if image is None and hasattr(material, "baseColorTexture"):  # PBRMaterial (glTF)
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = np.asarray(material.baseColorFactor, np.float32)[:3]
            factor = factor / 255.0 if factor.max() > 1.0 else factor
    if image is not None:
        tex = _image_to_array(image)
        return (tex * factor if factor is not None else tex), None
    main = getattr(material, "main_color", None)
    return None, (None if main is None else np.asarray(main, np.float32)[:3] / 255.0)


def _piece(tm) -> dict:
    """One trimesh.Trimesh as arrays: vertices, faces and either texture+uv or vertex colours."""
    verts = np.asarray(tm.vertices, np.float64)
    faces = np.asarray(tm.faces, np.int64)
    out = {"vertices": verts, "faces": faces}
    visual = tm.visual
    if visual is not None and visual.kind == "texture":
        uv = getattr(visual, "uv", None)
        tex, colour = _material_texture(visual.material)
        if tex is not None and uv is not None and len(uv) == len(verts):
            out["texture"], out["uv"] = tex, np.asarray(uv, np.float64)
        elif colour is not None:
            out["vertex_colors"] = np.broadcast_to(colour, verts.shape).copy()
    elif visual is not None and visual.kind in ("vertex", "face"):
        out["vertex_colors"] = np.asarray(visual.vertex_colors, np.float32)[:, :3] / 255.0
    return out


def _weld(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with identical positions: (unique vertices, faces re-indexed)."""
    uniq, inverse = np.unique(verts, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1)[faces]


def _sample_nearest(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = tex.shape[:2]
    col = np.clip((uv[:, 0] * w).astype(np.int64), 0, w - 1)
    row = np.clip(((1.0 - uv[:, 1]) * h).astype(np.int64), 0, h - 1)
    return tex[row, col]


def _combine(pieces: list[dict]) -> Mesh:
    textured = [("texture" in p) for p in pieces]
    if all(textured):
        # Pack the textures side by side, top-aligned; remap each piece's uvs into its slot.
        W = sum(p["texture"].shape[1] for p in pieces)
        H = max(p["texture"].shape[0] for p in pieces)
        atlas = np.zeros((H, W, 3), np.float32)
        verts, faces, uvs, face_uvs = [], [], [], []
        nv, nt, x = 0, 0, 0
        for p in pieces:
            h, w = p["texture"].shape[:2]
            atlas[:h, x:x + w] = p["texture"]
            uv = p["uv"].copy()
            if len(pieces) > 1:
                uv[:, 0] = (x + np.clip(uv[:, 0], 0, 1) * w) / W
                uv[:, 1] = 1.0 - (1.0 - np.clip(uv[:, 1], 0, 1)) * h / H
            x += w
            v, f = _weld(p["vertices"], p["faces"])
            verts.append(v)
            faces.append(f + nv)
            uvs.append(uv)
            face_uvs.append(p["faces"] + nt)
            nv += len(v)
            nt += len(uv)
        return Mesh(
            vertices=torch.tensor(np.concatenate(verts), dtype=torch.float32),
            faces=torch.tensor(np.concatenate(faces), dtype=torch.int64),
            uvs=torch.tensor(np.concatenate(uvs), dtype=torch.float32),
            face_uvs=torch.tensor(np.concatenate(face_uvs), dtype=torch.int64),
            texture=torch.tensor(atlas),
        )
    verts, faces, colours, nv = [], [], [], 0
    any_colour = any(("vertex_colors" in p) or ("texture" in p) for p in pieces)
    for p in pieces:
        verts.append(p["vertices"])
        faces.append(p["faces"] + nv)
        nv += len(p["vertices"])
        if "texture" in p:
            colours.append(_sample_nearest(p["texture"], p["uv"]))
        elif "vertex_colors" in p:
            colours.append(p["vertex_colors"])
        else:
            colours.append(np.full((len(p["vertices"]), 3), 0.7, np.float32))
    return Mesh(
        vertices=torch.tensor(np.concatenate(verts), dtype=torch.float32),
        faces=torch.tensor(np.concatenate(faces), dtype=torch.int64),
        vertex_colors=torch.tensor(np.concatenate(colours), dtype=torch.float32) if any_colour else None,
    )


def load_mesh(path) -> Mesh:
    """Read a triangle mesh (.obj with its .mtl and texture, .glb, .gltf, or .ply).

    Raises :class:`InputError` naming the file when it is missing, has an unsupported suffix,
    cannot be parsed, is not a binary glTF despite a .glb suffix, or holds no triangle faces.
    """
    import trimesh

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: mesh file not found")
    suffix = p.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(f"{p}: unsupported mesh format '{suffix}' (expected one of {', '.join(MESH_SUFFIXES)})")
    if suffix == ".glb":
        with open(p, "rb") as fh:
            if fh.read(4) != b"glTF":
                raise InputError(f"{p}: not a binary glTF file (no 'glTF' header)")
    try:
        scene = trimesh.load(str(p), force="scene")
        geoms = scene.dump(concatenate=False) if len(scene.geometry) else []
    except Exception as exc:  # trimesh raises many types for malformed files
        raise InputError(f"{p}: cannot read mesh ({type(exc).__name__}: {exc})") from exc
    meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not meshes:
        raise InputError(f"{p}: contains no triangle faces (not a mesh)")
    pieces = [_piece(g) for g in meshes]
    for piece in pieces:
        _check_piece(p, piece)
    return _combine(pieces)


def _check_piece(path: Path, piece: dict) -> None:
    """Indices in range and finite values: trimesh passes damaged files' data through unchecked."""
    verts, faces = piece["vertices"], piece["faces"]
    if faces.min() < 0 or faces.max() >= len(verts):
        raise InputError(f"{path}: face indices outside 0..{len(verts) - 1} (damaged file)")
    if not np.isfinite(verts).all():
        raise InputError(f"{path}: non-finite vertex positions")
    for key in ("uv", "vertex_colors", "texture"):
        if key in piece and not np.isfinite(piece[key]).all():
            raise InputError(f"{path}: non-finite values in its {key.replace('_', ' ')}")


def normalize_mesh(mesh: Mesh, radius: float = 0.5) -> Mesh:
    """Translate the bounding-box centre to the origin and scale uniformly so that the farthest
    vertex is at distance ``radius``. Other fields are shared with the input."""
    lo, hi = mesh.bounds()
    v = mesh.vertices - (lo + hi) / 2
    extent = v.norm(dim=1).max()
    if not torch.isfinite(extent) or extent <= 0:
        raise InputError("normalize_mesh: the mesh has zero or non-finite extent")
    return Mesh(v * (radius / extent), mesh.faces, mesh.uvs, mesh.face_uvs, mesh.texture, mesh.vertex_colors)
