"""Fuzzing the loaders of user files: 3DGS .ply (structured headers), images of every format
Pillow reads, checkpoints and .glb meshes. The only allowed outcomes are a clean
:class:`~dreamgs.errors.DreamGSError` naming the file, or a load that agrees with an independent
reader. (``tests/test_ply.py`` fuzzes byte-level damage of one valid .ply.)

Example counts are sized for CI: about 3,000 cheap cases in total.
"""

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from dreamgs.errors import DreamGSError, InputError
from dreamgs.gaussians import GaussianModel, load_ply

FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                  HealthCheck.data_too_large])


def _path(tmp_path_factory, name: str):
    return tmp_path_factory.getbasetemp() / name


# ------------------------------------------------------------------------------------------------
# .ply: random but plausible headers


GS_PROPS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
            "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
TYPES = ["float", "float32", "double", "float64", "uchar", "uint8", "char", "short", "ushort", "int", "uint",
         "int32", "half", "string"]


def _often(draw, p_in_8: int) -> bool:
    """True with probability p_in_8 / 8."""
    return draw(st.integers(0, 7)) < p_in_8


@st.composite
def ply_files(draw):
    """Mostly valid 3DGS headers with a few mutations each, so that loads and rejections both occur."""
    fmt = "binary_little_endian" if _often(draw, 5) else draw(st.sampled_from(
        ["binary_big_endian", "ascii", "binary_middle_endian"]))
    lines = ["ply", f"format {fmt} {'1.0' if _often(draw, 7) else draw(st.sampled_from(['2.0', 'x']))}"]
    if _often(draw, 2):
        lines.append("comment made by a fuzzer")
    n_rest = draw(st.sampled_from([0, 0, 9, 24, 45, 3, 10]))
    props = GS_PROPS + [f"f_rest_{i}" for i in range(n_rest)]
    if _often(draw, 3):  # drop, duplicate or rename a few properties
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(props) - 1))
            op = draw(st.sampled_from(["drop", "dup", "rename"]))
            if op == "drop":
                props.pop(i)
            elif op == "dup":
                props.insert(i, props[i])
            else:
                props[i] = draw(st.sampled_from(["packed_position", "red", "f_rest_99", "f_rest_x", "w"]))
            if not props:
                break
    count = draw(st.integers(1, 4)) if _often(draw, 6) else draw(st.sampled_from([0, -1, 2**31, 2**64, "n", "1e3"]))
    if _often(draw, 1):
        lines += ["element face 1", "property list uchar int vertex_indices"]
    elif _often(draw, 1):
        lines += [f"element extra {draw(st.integers(0, 3))}", f"property {draw(st.sampled_from(TYPES))} a"]
    lines.append(f"element vertex {count}")
    main_type = "float" if _often(draw, 5) else draw(st.sampled_from(["double", "uchar", "half"]))
    odd = draw(st.integers(0, len(props) - 1)) if props and _often(draw, 2) else -1
    for i, p in enumerate(props):
        t = draw(st.sampled_from(TYPES)) if i == odd else main_type
        lines.append(f"property {t} {p}")
    if _often(draw, 1):
        lines.append("property list uchar float extra_list")
    header = ("\n".join(lines) + "\nend_header\n").encode()
    if _often(draw, 2):
        return header + draw(st.binary(min_size=0, max_size=600))
    # Data of the size a float32 file would need, values from a menu (mostly finite).
    n = count if isinstance(count, int) and 0 <= count <= 4 else 1
    values = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, -0.0, 1e-40, 1e30] * 4 + [float("nan"), float("inf")])
    body = struct.pack(f"<{n * len(props)}f", *draw(st.lists(values, min_size=n * len(props),
                                                          max_size=n * len(props))))
    if _often(draw, 2):
        body = body[:draw(st.integers(0, len(body)))]
    return header + body


@settings(max_examples=1000, **FUZZ)
@given(raw=ply_files())
def test_fuzz_structured_ply_headers(tmp_path_factory, raw):
    path = _path(tmp_path_factory, "structured.ply")
    path.write_bytes(raw)
    try:
        model = load_ply(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        event("rejected")
        return
    event("loaded")
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    assert isinstance(model, GaussianModel) and len(model) == len(v) > 0
    assert all(torch.isfinite(t).all() for t in model.params.values())
    np.testing.assert_array_equal(model.params["means"][:, 2].numpy(), v["z"].astype(np.float32))
    np.testing.assert_array_equal(model.params["opacities"].numpy(), v["opacity"].astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Images


def _image_bytes(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(sum(size) + len(mode))
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1}[mode]
        arr = rng.integers(0, 255, (h, w, channels), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if channels == 1 else arr, {"P": "L"}.get(mode, mode))
        if mode == "P":
            img = img.convert("P")
            img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {}
for fmt, modes in {"PNG": ["RGBA", "RGB", "L", "LA", "P", "I;16"], "JPEG": ["RGB", "L"], "GIF": ["P", "L"],
                   "BMP": ["RGB", "L"], "WEBP": ["RGBA", "RGB"], "TIFF": ["RGBA", "L", "I;16"]}.items():
    for mode in modes:
        SEEDS[f"{fmt}-{mode}"] = _image_bytes(fmt, mode, (7, 5))


@st.composite
def damaged_images(draw):
    raw = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["flip", "flip", "flip_head", "insert", "delete", "size"]))
        if not raw:
            break
        if op == "flip":
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif op == "flip_head":
            raw[draw(st.integers(0, min(40, len(raw) - 1)))] = draw(st.integers(0, 255))
        elif op == "insert":
            i = draw(st.integers(0, len(raw)))
            raw[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            i = draw(st.integers(0, len(raw) - 1))
            del raw[i:i + draw(st.integers(1, 16))]
        else:  # overwrite 4 bytes with a big number: a plausible width/height field
            i = draw(st.integers(0, max(0, min(30, len(raw) - 4))))
            raw[i:i + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), draw(st.sampled_from([0, 9000, 2**31])))
    if draw(st.integers(0, 3)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return bytes(raw)


def _independent_rgba(path) -> np.ndarray | None:
    """Pillow's own decode as RGBA floats, for 8-bit modes without an EXIF rotation; else None."""
    with Image.open(path) as img:
        if img.mode not in ("L", "LA", "RGB", "RGBA", "P", "PA") or img.getexif().get(0x0112, 1) != 1:
            return None
        img.load()
        if img.mode in ("LA", "RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
            return np.asarray(img.convert("RGBA"), np.float32) / 255.0
        rgb = np.asarray(img.convert("RGB"), np.float32) / 255.0
        return np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,), np.float32)], -1)


@settings(max_examples=1500, **FUZZ)
@given(raw=damaged_images())
def test_fuzz_image_loaders(tmp_path_factory, raw):
    from dreamgs.images import MAX_PIXELS, load_mask, load_rgba, read_image

    path = _path(tmp_path_factory, "fuzz_image")
    path.write_bytes(raw)
    try:
        rgba = load_rgba(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        event("rejected")
        for loader in (read_image, load_mask):  # the same file fails the same way in the other loaders
            with pytest.raises(InputError):
                loader(path)
        return
    event("loaded")
    assert rgba.dtype == np.float32 and rgba.ndim == 3 and rgba.shape[2] == 4
    assert 0 < rgba.shape[0] * rgba.shape[1] <= MAX_PIXELS
    assert np.isfinite(rgba).all() and rgba.min() >= 0.0 and rgba.max() <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _independent_rgba(path)
    if ref is not None:
        np.testing.assert_array_equal(rgba, ref)
    img = read_image(path)
    assert img.shape[:2] == rgba.shape[:2] and img.shape[2] in (3, 4)
    np.testing.assert_array_equal(img[..., :3], rgba[..., :3])
    mask = load_mask(path)
    assert mask.shape == rgba.shape[:2] and mask.min() >= 0.0 and mask.max() <= 1.0


# ------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    from dreamgs.checkpoint import save_checkpoint
    from dreamgs.config import Config, to_dict
    from dreamgs.train import GaussianTrainer

    cfg = Config()
    model = GaussianModel.random_ball(8, generator=torch.Generator().manual_seed(0))
    trainer = GaussianTrainer(model, cfg.gaussians, cfg.densify, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "c.safetensors"
    save_checkpoint(path, stage="stage1", config=to_dict(cfg), trainer=trainer)
    return path.read_bytes()


@settings(max_examples=300, **FUZZ)
@given(data=st.data())
def test_fuzz_checkpoint_loader(tmp_path_factory, checkpoint_bytes, data):
    from dreamgs.checkpoint import load_checkpoint

    raw = bytearray(checkpoint_bytes)
    header_len = 8 + struct.unpack("<Q", bytes(raw[:8]))[0]
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.sampled_from(["length", "header", "anywhere"]))
        hi = {"length": 8, "header": header_len, "anywhere": len(raw)}[where]
        raw[data.draw(st.integers(0, hi - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    path = _path(tmp_path_factory, "fuzz.safetensors")
    path.write_bytes(bytes(raw))
    try:
        ckpt = load_checkpoint(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        event("rejected")
        return
    event("loaded")
    assert ckpt.stage in ("stage1", "stage2") and ckpt.tensors["params.means"].shape[1] == 3


# ------------------------------------------------------------------------------------------------
# .glb meshes (the oracle prior's user assets)


@pytest.fixture(scope="module")
def glb_bytes():
    import trimesh

    return trimesh.creation.box().export(file_type="glb")


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_fuzz_glb_loader(tmp_path_factory, glb_bytes, data):
    from dreamgs.mesh.io import load_mesh, normalize_mesh

    raw = bytearray(glb_bytes)
    json_end = 20 + struct.unpack("<I", bytes(raw[12:16]))[0]  # 12-byte file header, 8-byte chunk header
    for _ in range(data.draw(st.integers(1, 4))):
        lo, hi = data.draw(st.sampled_from([(0, 20), (20, json_end), (json_end, len(raw)), (json_end, len(raw))]))
        raw[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    path = _path(tmp_path_factory, "fuzz.glb")
    path.write_bytes(bytes(raw))
    try:
        mesh = normalize_mesh(load_mesh(path))
    except DreamGSError as e:
        assert "\n" not in str(e).strip()
        event("rejected")
        return
    event("loaded")
    assume(mesh.num_faces > 0)
    assert torch.isfinite(mesh.vertices).all()
    assert int(mesh.faces.min()) >= 0 and int(mesh.faces.max()) < mesh.num_vertices
