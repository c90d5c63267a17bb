"""Write two mesh files the project has never seen, for the bench's ``--assets PATH`` check
(docs/quality.md): ``lamp.glb``, nearly symmetric about its vertical axis, and ``kettle.glb``,
clearly asymmetric. Vertex-coloured primitives, y up, built with trimesh.

``--set dev`` writes three other meshes built the same way (``cart.glb``, ``robot.glb``,
``can.glb``) to tune on: the procedural dev split does not show how a setting fares on such
meshes, and the kettle and the lamp must stay held out.

    python benchmarks/unseen_meshes.py --out /tmp
    dreamgs bench --assets /tmp/kettle.glb --seeds 1 --out bench-kettle
"""

import argparse
from pathlib import Path

import numpy as np
import trimesh
from trimesh.transformations import rotation_matrix


def _coloured(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    mesh.visual.vertex_colors = np.tile(np.array([*rgb, 255], np.uint8), (len(mesh.vertices), 1))
    return mesh


def _moved(mesh: trimesh.Trimesh, offset) -> trimesh.Trimesh:
    mesh.apply_translation(offset)
    return mesh


def lamp() -> trimesh.Trimesh:
    c = trimesh.creation
    parts = [
        _coloured(_moved(c.cylinder(radius=0.35, height=0.15, sections=48), [0, 0, -0.45]), (40, 60, 160)),
        _coloured(_moved(c.cylinder(radius=0.06, height=0.7, sections=24), [0.1, 0, -0.05]), (200, 200, 210)),
        _coloured(_moved(c.cone(radius=0.4, height=0.4, sections=48), [0.1, 0, 0.2]), (230, 120, 30)),
        _coloured(_moved(c.icosphere(subdivisions=2, radius=0.09), [0.3, 0.25, -0.35]), (220, 30, 40)),
    ]
    return trimesh.util.concatenate(parts)


def kettle() -> trimesh.Trimesh:
    c = trimesh.creation
    spout = c.cylinder(radius=0.06, height=0.45, sections=24)
    spout.apply_transform(rotation_matrix(np.pi / 3, [0, 1, 0]))
    handle = c.torus(major_radius=0.16, minor_radius=0.04)
    handle.apply_transform(rotation_matrix(np.pi / 2, [1, 0, 0]))
    parts = [
        _coloured(c.box(extents=[0.7, 0.45, 0.5]), (40, 110, 60)),
        _coloured(_moved(c.cylinder(radius=0.15, height=0.12, sections=32), [-0.12, 0, 0.3]), (240, 220, 40)),
        _coloured(_moved(spout, [0.5, 0, 0.12]), (200, 40, 40)),
        _coloured(_moved(handle, [-0.4, 0, 0.02]), (30, 30, 200)),
        _coloured(_moved(c.box(extents=[0.2, 0.5, 0.08]), [0.15, 0.0, -0.29]), (250, 250, 250)),
    ]
    return trimesh.util.concatenate(parts)


def cart() -> trimesh.Trimesh:
    c = trimesh.creation
    parts = [_coloured(c.box(extents=[0.75, 0.3, 0.45]), (170, 90, 40))]
    for x in (-0.25, 0.25):
        for y in (-0.25, 0.25):  # four flat discs under the body's corners
            wheel = c.cylinder(radius=0.11, height=0.06, sections=24)
            parts.append(_coloured(_moved(wheel, [x, y, -0.2]), (30, 30, 30)))
    bar = c.cylinder(radius=0.025, height=0.5, sections=12)
    bar.apply_transform(rotation_matrix(-np.pi / 5, [0, 1, 0]))
    parts.append(_coloured(_moved(bar, [-0.5, 0, 0.3]), (200, 200, 210)))
    return trimesh.util.concatenate(parts)


def robot() -> trimesh.Trimesh:
    c = trimesh.creation
    arm = c.cylinder(radius=0.05, height=0.4, sections=16)
    arm.apply_transform(rotation_matrix(np.pi / 2, [0, 1, 0]))
    parts = [
        _coloured(c.box(extents=[0.4, 0.3, 0.5]), (150, 150, 160)),
        _coloured(_moved(c.box(extents=[0.25, 0.22, 0.2]), [0.05, 0, 0.36]), (60, 140, 200)),
        _coloured(_moved(arm, [0.38, 0, 0.1]), (220, 60, 40)),
        _coloured(_moved(c.icosphere(subdivisions=2, radius=0.05), [0.12, 0.12, 0.38]), (250, 220, 30)),
        _coloured(_moved(c.box(extents=[0.12, 0.12, 0.25]), [-0.1, 0, -0.36]), (40, 40, 40)),
    ]
    return trimesh.util.concatenate(parts)


def can() -> trimesh.Trimesh:
    c = trimesh.creation
    spout = c.cylinder(radius=0.04, height=0.5, sections=16)
    spout.apply_transform(rotation_matrix(-np.pi / 4, [0, 1, 0]))
    handle = c.torus(major_radius=0.18, minor_radius=0.035)
    handle.apply_transform(rotation_matrix(np.pi / 2, [0, 1, 0]))
    parts = [
        _coloured(c.cylinder(radius=0.25, height=0.45, sections=48), (60, 160, 170)),
        _coloured(_moved(spout, [-0.35, 0, 0.05]), (240, 200, 40)),
        _coloured(_moved(handle, [0.0, 0, 0.25]), (120, 40, 140)),
    ]
    return trimesh.util.concatenate(parts)


SETS = {"unseen": (("lamp", lamp), ("kettle", kettle)), "dev": (("cart", cart), ("robot", robot), ("can", can))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="folder for the .glb files")
    ap.add_argument("--set", choices=sorted(SETS), default="unseen",
                    help="unseen: lamp and kettle (held out); dev: cart, robot and can (to tune on)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in SETS[args.set]:
        mesh = make()
        mesh.apply_transform(rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z up -> y up
        mesh.export(out / f"{name}.glb")
        print(out / f"{name}.glb", len(mesh.faces), "faces")


if __name__ == "__main__":
    main()
