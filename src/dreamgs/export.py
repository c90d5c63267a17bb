"""Mesh export: binary glTF 2.0 (``.glb``) and Wavefront ``.obj`` + ``.mtl`` + albedo ``.png``.

Both formats share the project's frame (+y up, front +z, metres-free units) and winding
(counter-clockwise seen from outside). glTF puts the UV origin at the *top-left* of the image,
so ``TEXCOORD_0 = (u, 1 - v)``; OBJ keeps the project's bottom-left origin. The texture's values
are written as they are (clamped to [0, 1], 8 bits per channel) and declared as base colour,
which glTF viewers read as sRGB-encoded, the encoding of the images the texture was baked from.

Every file is written atomically (:mod:`dreamgs.atomic`): to a temporary name in the target
folder, then renamed. An export that fails half-way leaves any earlier file of that name
untouched and no partial file.
"""

from __future__ import annotations

import io
import json
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from . import __version__
from .atomic import atomic_output
from .errors import InputError
from .mesh.core import Mesh

# glTF constants
_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071
_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def _target(path, suffix: str) -> Path:
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise InputError(f"{path}: expected a {suffix} file name")
    return path


# ------------------------------------------------------------------------------------------------
# Mesh data as numpy


def _check_mesh(mesh: Mesh) -> None:
    if mesh.num_faces == 0 or mesh.num_vertices == 0:
        raise InputError("mesh: nothing to export, the mesh has no faces")
    if not torch.isfinite(mesh.vertices).all():
        raise InputError("mesh: vertices contain NaN or infinity")
    if mesh.texture is not None and (mesh.uvs is None or mesh.face_uvs is None):
        raise InputError("mesh: has a texture but no UV coordinates")


def _unit_normals(mesh: Mesh) -> np.ndarray:
    n = mesh.vertex_normals().detach().double().cpu().numpy()
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 1e-12, n / np.maximum(length, 1e-300), np.array([0.0, 1.0, 0.0]))
    return n.astype(np.float32)


def _texture_png(texture: torch.Tensor) -> bytes:
    from PIL import Image

    img = (texture.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"mesh: texture must be (H, W, 3) or (H, W, 4), got {tuple(texture.shape)}")
    buf = io.BytesIO()
    Image.fromarray(img, "RGB" if img.shape[2] == 3 else "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _export_arrays(mesh: Mesh) -> dict[str, np.ndarray]:
    """Per-corner-unique vertex arrays for formats with one index per vertex (glTF).

    A vertex is split wherever it carries more than one UV. Returns positions, normals,
    optional texcoords (project convention, v up) and colours, and the (F, 3) indices.
    """
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    pos = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    normals = _unit_normals(mesh)
    colors = None
    if mesh.vertex_colors is not None and mesh.texture is None:
        colors = mesh.vertex_colors.detach().float().cpu().clamp(0.0, 1.0).numpy()
    if mesh.uvs is not None and mesh.face_uvs is not None:
        fuv = mesh.face_uvs.detach().cpu().numpy().astype(np.int64)
        keys = faces.reshape(-1) * (int(fuv.max()) + 1) + fuv.reshape(-1)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        vid, tid = faces.reshape(-1)[first], fuv.reshape(-1)[first]
        out = {"positions": pos[vid], "normals": normals[vid],
               "uvs": mesh.uvs.detach().float().cpu().numpy()[tid], "faces": inverse.reshape(-1, 3)}
        if colors is not None:
            out["colors"] = colors[vid]
        return out
    used = np.unique(faces)
    remap = np.full(len(pos), -1, np.int64)
    remap[used] = np.arange(len(used))
    out = {"positions": pos[used], "normals": normals[used], "faces": remap[faces]}
    if colors is not None:
        out["colors"] = colors[used]
    return out


# ------------------------------------------------------------------------------------------------
# glTF binary


def _pad4(data: bytes, fill: bytes = b"\x00") -> bytes:
    return data + fill * (-len(data) % 4)


def _glb_content(mesh: Mesh, name: str) -> tuple[bytes, bytes]:
    """The JSON and BIN chunk payloads (unpadded JSON, padded BIN) of a one-mesh glTF scene."""
    arrays = _export_arrays(mesh)
    n = len(arrays["positions"])
    index_type, index_dtype = (_USHORT, "<u2") if n < 65535 else (_UINT, "<u4")
    blobs: list[bytes] = []
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        offset = sum(len(b) for b in blobs)
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        blobs.append(_pad4(data))
        return len(views) - 1

    def add_accessor(arr: np.ndarray, component: int, kind: str, target: int, minmax: bool = False) -> int:
        acc = {"bufferView": add_view(arr.tobytes(), target), "componentType": component,
               "count": int(arr.shape[0]), "type": kind}
        if minmax:
            acc["min"] = [float(x) for x in arr.min(0)]
            acc["max"] = [float(x) for x in arr.max(0)]
        accessors.append(acc)
        return len(accessors) - 1

    indices = add_accessor(arrays["faces"].reshape(-1).astype(index_dtype), index_type, "SCALAR",
                           _ELEMENT_ARRAY_BUFFER)
    attributes = {
        "POSITION": add_accessor(np.ascontiguousarray(arrays["positions"], "<f4"), _FLOAT, "VEC3", _ARRAY_BUFFER,
                                 minmax=True),
        "NORMAL": add_accessor(np.ascontiguousarray(arrays["normals"], "<f4"), _FLOAT, "VEC3", _ARRAY_BUFFER),
    }
    material: dict = {"name": "albedo", "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0}}
    gltf: dict = {"asset": {"version": "2.0", "generator": f"dreamgs {__version__}"}}
    if mesh.texture is not None:
        uv = arrays["uvs"].astype(np.float64)
        texcoord = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # glTF: origin at the top-left
        attributes["TEXCOORD_0"] = add_accessor(np.ascontiguousarray(texcoord, "<f4"), _FLOAT, "VEC2", _ARRAY_BUFFER)
        image_view = add_view(_texture_png(mesh.texture), None)
        gltf["images"] = [{"bufferView": image_view, "mimeType": "image/png"}]
        gltf["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                             "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}]
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0, "texCoord": 0}
    elif "colors" in arrays:
        attributes["COLOR_0"] = add_accessor(np.ascontiguousarray(arrays["colors"], "<f4"), _FLOAT, "VEC3",
                                             _ARRAY_BUFFER)
    binary = b"".join(blobs)
    gltf.update({
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                                  "mode": 4}]}],
        "materials": [material],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    })
    return json.dumps(gltf, separators=(",", ":")).encode("utf-8"), binary


def _write_chunk(f: BinaryIO, kind: int, payload: bytes) -> None:
    f.write(struct.pack("<II", len(payload), kind))
    f.write(payload)


def save_glb(mesh: Mesh, path) -> Path:
    """Write ``mesh`` as binary glTF 2.0: POSITION, NORMAL, indices, and either TEXCOORD_0 with an
    embedded PNG base-colour texture, or COLOR_0 from ``vertex_colors`` when there is no texture.
    The material is PBR with metallic 0 and roughness 1. Returns the path."""
    path = _target(path, ".glb")
    _check_mesh(mesh)
    json_bytes, binary = _glb_content(mesh, path.stem)
    json_chunk = _pad4(json_bytes, b" ")
    total = 12 + 8 + len(json_chunk) + 8 + len(binary)

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<III", _GLB_MAGIC, 2, total))
        _write_chunk(f, _CHUNK_JSON, json_chunk)
        _write_chunk(f, _CHUNK_BIN, binary)
    return path


# ------------------------------------------------------------------------------------------------
# Wavefront OBJ


def _obj_text(mesh: Mesh, mtl_name: str) -> bytes:
    v = mesh.vertices.detach().double().cpu().numpy()
    f = mesh.faces.detach().cpu().numpy().astype(np.int64) + 1
    buf = io.StringIO()
    buf.write(f"# dreamgs {__version__}\nmtllib {mtl_name}\no mesh\n")
    if mesh.vertex_colors is not None and mesh.texture is None:
        c = mesh.vertex_colors.detach().double().cpu().clamp(0.0, 1.0).numpy()
        np.savetxt(buf, np.concatenate([v, c], 1), fmt="v %.7g %.7g %.7g %.5g %.5g %.5g")
    else:
        np.savetxt(buf, v, fmt="v %.7g %.7g %.7g")
    has_uv = mesh.texture is not None or (mesh.uvs is not None and mesh.face_uvs is not None)
    if has_uv:
        np.savetxt(buf, mesh.uvs.detach().double().cpu().numpy(), fmt="vt %.7g %.7g")
    np.savetxt(buf, _unit_normals(mesh).astype(np.float64), fmt="vn %.6g %.6g %.6g")
    buf.write("usemtl material0\n")
    if has_uv:
        t = mesh.face_uvs.detach().cpu().numpy().astype(np.int64) + 1
        cols = np.stack([f[:, 0], t[:, 0], f[:, 0], f[:, 1], t[:, 1], f[:, 1], f[:, 2], t[:, 2], f[:, 2]], 1)
        np.savetxt(buf, cols, fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    else:
        cols = np.stack([f[:, 0], f[:, 0], f[:, 1], f[:, 1], f[:, 2], f[:, 2]], 1)
        np.savetxt(buf, cols, fmt="f %d//%d %d//%d %d//%d")
    return buf.getvalue().encode("utf-8")


def save_obj(mesh: Mesh, path) -> Path:
    """Write ``mesh`` as ``NAME.obj`` + ``NAME.mtl`` (+ ``NAME_albedo.png`` with a texture).

    The files reference each other by relative name (``mtllib``, ``usemtl``, ``map_Kd``). Without
    a texture, vertex colours (if any) are written as ``v x y z r g b``. All files are written to
    temporary names first and renamed only once every one is complete. Returns the .obj path.
    """
    path = _target(path, ".obj")
    _check_mesh(mesh)
    mtl_path = path.with_suffix(".mtl")
    png_path = path.with_name(f"{path.stem}_albedo.png")
    mtl = "# dreamgs\nnewmtl material0\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
    if mesh.texture is not None:
        mtl += f"map_Kd {png_path.name}\n"
    # Nested atomic outputs: all three are written before any is renamed (the innermost first,
    # the .obj that references the others last); a failure anywhere leaves none of them.
    with ExitStack() as stack:
        obj_tmp = stack.enter_context(atomic_output(path))
        mtl_tmp = stack.enter_context(atomic_output(mtl_path))
        if mesh.texture is not None:
            png_tmp = stack.enter_context(atomic_output(png_path))
            png_tmp.write_bytes(_texture_png(mesh.texture))
        mtl_tmp.write_text(mtl, encoding="utf-8")
        obj_tmp.write_bytes(_obj_text(mesh, mtl_path.name))
    return path
