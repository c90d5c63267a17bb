"""3DGS .ply writing and reading: layout, exact round trips, viewer padding, corrupt files, fuzzing."""

import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamgs.cameras import make_cameras
from dreamgs.errors import InputError
from dreamgs.gaussians import GaussianModel, load_ply, num_sh_bases, ply_property_names, save_ply
from dreamgs.render import render

REST = {0: 0, 1: 9, 2: 24, 3: 45}


def random_model(n: int, degree: int, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.randn(n, 3, generator=g) * 0.3,
        "scales": torch.randn(n, 3, generator=g) * 0.3 - 3.0,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, num_sh_bases(degree) - 1, 3, generator=g) * 0.2,
    }
    params["means"][0, 0] = -0.0  # signed zero must survive too
    return GaussianModel(params)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def header_of(path) -> list[str]:
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    return raw[:end].decode("ascii").split("\n")[:-1]


def padded_shN(model: GaussianModel, degree: int) -> torch.Tensor:
    shN = model.params["shN"]
    extra = num_sh_bases(degree) - 1 - shN.shape[1]
    return torch.cat([shN, torch.zeros(len(model), max(extra, 0), 3)], dim=1)


# --- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("pad", [3, None])
def test_header_order_and_float32_little_endian_payload(tmp_path, degree, pad):
    model = random_model(7, degree, seed=degree)
    path = save_ply(model, tmp_path / "m.ply", pad_sh_degree=pad)
    n_rest = 45 if pad == 3 else REST[degree]
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
             + [f"f_rest_{i}" for i in range(n_rest)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert ply_property_names(n_rest) == names
    expected_header = (["ply", "format binary_little_endian 1.0", "element vertex 7"]
                       + [f"property float {n}" for n in names] + ["end_header"])
    assert header_of(path) == expected_header
    raw = path.read_bytes()
    body = raw[len("\n".join(expected_header)) + 1:]
    assert len(body) == 7 * len(names) * 4  # exactly N rows of float32, nothing else
    rows = np.frombuffer(body, dtype="<f4").reshape(7, len(names))
    # Independent decoding of the reference layout from the model's tensors.
    p = model.params
    k1 = n_rest // 3
    shN = padded_shN(model, 3 if pad == 3 else degree)
    for i in range(7):
        expect = ([*p["means"][i].tolist(), 0.0, 0.0, 0.0, *p["sh0"][i, 0].tolist()]
                  + [shN[i, j, c].item() for c in range(3) for j in range(k1)]  # channel-major
                  + [p["opacities"][i].item(), *p["scales"][i].tolist(), *p["quats"][i].tolist()])
        np.testing.assert_array_equal(rows[i], np.array(expect, dtype=np.float32))
    # The first float of the payload is -0.0 written little-endian.
    assert body[:4] == struct.pack("<f", -0.0)


def test_plyfile_reads_our_files_like_we_wrote_them(tmp_path):
    import plyfile
    model = random_model(5, 2, seed=3)
    path = save_ply(model, tmp_path / "m.ply")
    v = plyfile.PlyData.read(str(path))["vertex"]
    assert [p.name for p in v.properties] == ply_property_names(45)
    assert all(v.data.dtype[name] == np.dtype("<f4") for name in v.data.dtype.names)
    shN = padded_shN(model, 3)
    np.testing.assert_array_equal(v.data["f_rest_16"], shN[:, 1, 1].numpy())  # G channel, coefficient 1
    np.testing.assert_array_equal(v.data["rot_3"], model.params["quats"][:, 3].numpy())


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("pad", [3, None])
def test_round_trip_is_bit_exact(tmp_path, degree, pad):
    model = random_model(11, degree, seed=10 + degree)
    a = save_ply(model, tmp_path / "a.ply", pad_sh_degree=pad)
    loaded = load_ply(a)
    stored = 3 if pad == 3 else degree
    for name in ("means", "scales", "quats", "opacities", "sh0"):
        assert same_bits(loaded.params[name], model.params[name]), name
    assert same_bits(loaded.params["shN"], padded_shN(model, stored))
    assert loaded.sh_degree == degree  # active degree: the highest nonzero band
    b = save_ply(loaded, tmp_path / "b.ply", pad_sh_degree=pad)
    assert a.read_bytes() == b.read_bytes()
    c = save_ply(load_ply(b), tmp_path / "c.ply", pad_sh_degree=None)  # no re-padding needed
    assert c.read_bytes() == a.read_bytes()


@pytest.mark.parametrize("degree", [0, 1])
def test_padded_file_renders_exactly_like_the_original(tmp_path, degree):
    g = torch.Generator().manual_seed(7)
    model = GaussianModel.random_ball(120, 0.4, opacity=0.5, sh_degree=degree, generator=g)
    model.params["sh0"] += 0.5 * torch.randn(model.params["sh0"].shape, generator=g)
    model.params["shN"] += 0.3 * torch.randn(model.params["shN"].shape, generator=g)
    loaded = load_ply(save_ply(model, tmp_path / "m.ply"))
    assert loaded.params["shN"].shape[1] == 15 and loaded.sh_degree == degree
    cams = make_cameras([0.0, -30.0], [20.0, 150.0], 1.5, 49.1, 24)
    ref = render(model, cams, background=(1.0, 1.0, 1.0), backend="torch").rgb
    out = render(loaded, cams, background=(1.0, 1.0, 1.0), backend="torch").rgb
    assert ref.std() > 0.05  # something is drawn
    assert torch.equal(ref, out)


def test_reads_files_from_another_writer(tmp_path):
    """gsplat's exporter writes no normals and no f_rest for degree 0; both load correctly."""
    from gsplat.exporter import export_splats

    for degree in (0, 3):
        model = random_model(6, degree, seed=20 + degree)
        p = model.params
        path = tmp_path / f"gsplat{degree}.ply"
        export_splats(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"], p["shN"],
                      format="ply", save_to=str(path))
        loaded = load_ply(path)
        for name in p:
            assert same_bits(loaded.params[name], p[name]), name


def test_big_endian_and_double_properties_are_read(tmp_path):
    import plyfile
    model = random_model(4, 1, seed=5)
    names = ply_property_names(9)
    ref = load_ply(save_ply(model, tmp_path / "ref.ply", pad_sh_degree=None))
    arr = np.empty(4, dtype=[(n, ">f8" if n.startswith("scale") else ">f4") for n in names])
    src = plyfile.PlyData.read(str(tmp_path / "ref.ply"))["vertex"].data
    for n in names:
        arr[n] = src[n]
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], byte_order=">").write(str(tmp_path / "be.ply"))
    loaded = load_ply(tmp_path / "be.ply")
    for name in ref.params:
        assert same_bits(loaded.params[name], ref.params[name]), name


# --- what save_ply refuses ------------------------------------------------------------------------


def test_save_refuses_non_finite_and_leaves_the_old_file(tmp_path):
    path = save_ply(random_model(3, 0), tmp_path / "m.ply")
    before = path.read_bytes()
    bad = random_model(3, 0, seed=1)
    bad.params["opacities"][1] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in 'opacities'"):
        save_ply(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ply"]  # no temporary file left


def test_save_atomic_on_write_failure(tmp_path, monkeypatch):
    path = save_ply(random_model(3, 0), tmp_path / "m.ply")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "ascontiguousarray", boom)
    with pytest.raises(OSError, match="disk full"):
        save_ply(random_model(3, 0, seed=2), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ply"]


# --- corrupt files ------------------------------------------------------------------------------


def _valid_bytes(n=3, degree=1) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return save_ply(random_model(n, degree, seed=99), Path(d) / "v.ply").read_bytes()


VALID = _valid_bytes()
HEADER_LEN = VALID.index(b"end_header\n") + len(b"end_header\n")


def _mesh_ply() -> bytes:
    """A binary triangle-mesh .ply (coloured vertices with normals, and a face list), as mesh tools write."""
    import io

    from plyfile import PlyData, PlyElement

    verts = np.array([(0, 0, 0, 0, 0, 1, 255, 0, 0), (1, 0, 0, 0, 0, 1, 0, 255, 0), (0, 1, 0, 0, 0, 1, 0, 0, 255)],
                     dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    buf = io.BytesIO()
    PlyData([PlyElement.describe(verts, "vertex"), PlyElement.describe(faces, "face")]).write(buf)
    return buf.getvalue()


CORRUPT = {
    "zero_bytes": (b"", "empty file"),
    "ascii_garbage": (b"hello, this is not a ply file at all\n" * 20, "not a PLY file"),
    "binary_garbage": (bytes(range(256)) * 4, "not a PLY file"),
    "truncated_data": (VALID[:-5], "truncated"),
    "truncated_header": (VALID[:HEADER_LEN - 30], "no 'end_header'"),
    "wrong_element_name": (VALID.replace(b"element vertex", b"element splats"), "no 'vertex' element"),
    "missing_property": (VALID.replace(b"property float rot_3\n", b""), "missing 3DGS vertex properties: rot_3"),
    "missing_many": (VALID.replace(b"property float opacity\n", b"").replace(b"property float f_dc_1\n", b""),
                     "f_dc_1, opacity"),
    "ascii_format": (VALID.replace(b"binary_little_endian", b"ascii"), "ASCII PLY is not supported"),
    "unknown_type": (VALID.replace(b"property float x\n", b"property half x\n"), "bad PLY property line"),
    "bad_count": (VALID.replace(b"element vertex 3", b"element vertex -3"), "bad PLY element line"),
    "zero_count": (VALID.replace(b"element vertex 3", b"element vertex 0"), "holds no Gaussians"),
    "huge_count": (VALID.replace(b"element vertex 3", b"element vertex 99999999999999"), "truncated"),
    "wrong_rest_count": (VALID.replace(b"property float f_rest_44\n", b""), "f_rest_\\* properties match no SH"),
    "rest_gap": (VALID.replace(b"f_rest_8\n", b"f_rest_80\n"), "not numbered"),
    "duplicate": (VALID.replace(b"property float nx\n", b"property float x\n"), "duplicate vertex properties: x"),
    "format_after_element": (VALID.replace(b"format binary_little_endian 1.0\nelement vertex 3\n",
                                           b"element vertex 3\nformat binary_little_endian 1.0\n"),
                             "'format' line must come before"),
    "unknown_keyword": (VALID.replace(b"element vertex 3\n", b"element vertex 3\nfoo bar\n"), "unknown PLY header"),
    "mesh": (_mesh_ply(), "missing 3DGS vertex properties"),
    "compressed": (b"ply\nformat binary_little_endian 1.0\nelement chunk 1\n"
                   + b"".join(b"property float %s\n" % n for n in (b"min_x", b"max_x"))
                   + b"element vertex 1\nproperty uint packed_position\nproperty uint packed_rotation\n"
                   + b"end_header\n" + bytes(12), "compressed splat"),
    "not_ascii_header": (VALID.replace(b"property float nx", b"property float n\xff"), "not ASCII"),
}


def _with_float(raw: bytes, row: int, col: int, value: float) -> bytes:
    off = HEADER_LEN + (row * 62 + col) * 4  # padded to degree 3: 62 properties
    return raw[:off] + struct.pack("<f", value) + raw[off + 4:]


CORRUPT["nan_value"] = (_with_float(VALID, 1, 2, float("nan")), "non-finite values in 'means'")
CORRUPT["inf_value"] = (_with_float(VALID, 2, 56, float("inf")), "non-finite values in 'scales'")
CORRUPT["zero_quat"] = (
    _with_float(_with_float(_with_float(_with_float(VALID, 0, 58, 0.0), 0, 59, 0.0), 0, 60, 0.0), 0, 61, 0.0),
    "zero rotation quaternion")


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_files_raise_input_error_naming_file_and_problem(tmp_path, case):
    raw, message = CORRUPT[case]
    path = tmp_path / f"{case}.ply"
    path.write_bytes(raw)
    with pytest.raises(InputError, match=message) as info:
        load_ply(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_ply(tmp_path / "nope.ply")
    with pytest.raises(InputError, match="is a directory"):
        load_ply(tmp_path)


def test_valid_sample_itself_loads():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.ply"
        p.write_bytes(VALID)
        assert len(load_ply(p)) == 3


# --- fuzzing ------------------------------------------------------------------------------------


@st.composite
def damaged(draw):
    raw = bytearray(VALID)
    kind = draw(st.sampled_from(["header_bytes", "any_bytes", "truncate", "header_lines"]))
    if kind == "truncate":
        return bytes(raw[:draw(st.integers(0, len(raw) - 1))])
    if kind == "header_lines":
        lines = bytes(raw[:HEADER_LEN]).split(b"\n")[:-1]
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(lines) - 1))
            op = draw(st.sampled_from(["drop", "dup", "swap"]))
            if op == "drop":
                del lines[i]
            elif op == "dup":
                lines.insert(i, lines[i])
            else:
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            if not lines:
                break
        return b"\n".join(lines) + b"\n" + bytes(raw[HEADER_LEN:])
    hi = HEADER_LEN if kind == "header_bytes" else len(raw)
    for _ in range(draw(st.integers(1, 6))):
        raw[draw(st.integers(0, hi - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        raw = raw[:draw(st.integers(0, len(raw)))]
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=damaged())
def test_fuzz_load_ply_only_raises_input_error_or_loads_correctly(tmp_path_factory, raw):
    path = tmp_path_factory.getbasetemp() / "fuzz.ply"
    path.write_bytes(raw)
    try:
        model = load_ply(path)
    except InputError as e:
        assert str(path) in str(e)
        return
    # A successful load must be a valid model that agrees with an independent reader.
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    assert len(model) == len(v) > 0
    for name, t in model.params.items():
        assert torch.isfinite(t).all(), name
    np.testing.assert_array_equal(model.params["means"][:, 1].numpy(), v["y"].astype(np.float32))
    np.testing.assert_array_equal(model.params["quats"][:, 0].numpy(), v["rot_0"].astype(np.float32))
    n_rest = model.params["shN"].shape[1]
    if n_rest:
        np.testing.assert_array_equal(model.params["shN"][:, n_rest - 1, 2].numpy(),
                                      v[f"f_rest_{3 * n_rest - 1}"].astype(np.float32))
