"""The triangle-mesh type shared by assets, mesh extraction, texturing and export.

Conventions: world frame as in :mod:`dreamgs.cameras` (+y up, front faces +z). Faces are
counter-clockwise seen from outside. UV coordinates follow OpenGL/glTF-neutral ``(u, v)`` with
``v = 0`` at the *bottom* of the texture image; ``texture`` is stored as an image, row 0 at the
top (so texel row = (1 - v) * H). Colours are linear floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Mesh:
    vertices: Tensor  # (V, 3) float32
    faces: Tensor  # (F, 3) int64, counter-clockwise from outside
    uvs: Tensor | None = None  # (Vt, 2) float32 in [0, 1]
    face_uvs: Tensor | None = None  # (F, 3) int64 indices into uvs
    texture: Tensor | None = None  # (H, W, 3) float32, row 0 = top (v = 1)
    vertex_colors: Tensor | None = None  # (V, 3) float32, used when there is no texture

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    def to(self, device) -> "Mesh":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Mesh(mv(self.vertices), mv(self.faces), mv(self.uvs), mv(self.face_uvs), mv(self.texture),
                    mv(self.vertex_colors))

    def with_texture(self, texture: Tensor) -> "Mesh":
        return replace(self, texture=texture)

    def face_normals(self) -> Tensor:
        v = self.vertices[self.faces]
        n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def vertex_normals(self) -> Tensor:
        """Area-weighted vertex normals (V, 3)."""
        v = self.vertices[self.faces]
        n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        acc = torch.zeros_like(self.vertices)
        for k in range(3):
            acc.index_add_(0, self.faces[:, k], n)
        return acc / acc.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def bounds(self) -> tuple[Tensor, Tensor]:
        return self.vertices.amin(0), self.vertices.amax(0)
