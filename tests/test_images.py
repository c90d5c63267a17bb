"""Input images: defensive loading, masks, rembg detection, preprocessing geometry, `dreamgs prep`."""

import importlib.machinery
import os
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamgs import images
from dreamgs.cli import main
from dreamgs.errors import InputError
from dreamgs.images import load_mask, load_rgba, preprocess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
SHIPPED = sorted(EXAMPLES.glob("*_rgba.png"))
# The shared example set beside the project (CI has it at ../shared), which holds more images.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "examples" / "images"
EXAMPLE_SET = SHIPPED + sorted(p for p in SHARED.glob("*_rgba.png") if not (EXAMPLES / p.name).exists())


@pytest.fixture(autouse=True)
def no_rembg_model(tmp_path, monkeypatch):
    """Point rembg's model lookup at an empty folder, so tests never see a real install."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-empty"))


def bbox(alpha, threshold=0.5):
    ys, xs = np.nonzero(alpha >= threshold)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def write_png(path, arr):
    Image.fromarray(arr).save(path)
    return path


# --- preprocess geometry ---------------------------------------------------------------------------


def test_examples_are_shipped_small_and_licensed():
    assert len(SHIPPED) >= 2
    assert (EXAMPLES / "LICENSE-images.txt").read_text().startswith("MIT License")
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir()) < 2_000_000


@pytest.mark.parametrize("path", EXAMPLE_SET, ids=lambda p: p.stem)
@pytest.mark.parametrize("size,border", [(256, 0.2), (128, 0.1), (512, 0.3), (200, 0.0)])
def test_example_images_are_centred_and_scaled(path, size, border):
    out = preprocess(path, size=size, border_ratio=border)
    assert out.shape == (size, size, 4) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    x0, y0, x1, y1 = bbox(out[..., 3])
    assert abs((x0 + x1) / 2 - size / 2) <= 1.0
    assert abs((y0 + y1) / 2 - size / 2) <= 1.0
    assert abs(max(x1 - x0, y1 - y0) - (1 - border) * size) <= 1.0


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
@pytest.mark.parametrize("size,border,min_psnr", [(256, 0.2, 40.0), (512, 0.3, 40.0), (128, 0.1, 30.0)])
def test_shipped_examples_match_an_independent_resampler(path, size, border, min_psnr):
    """Premultiplied output vs scipy's cubic spline warp of the input with the same mapping."""
    from scipy.ndimage import map_coordinates

    src = load_rgba(path)
    out = preprocess(path, size=size, border_ratio=border)
    x0, y0, x1, y1 = bbox(src[..., 3])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = (1 - border) * size / max(x1 - x0, y1 - y0)
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    coords = [cy + (ii - size / 2) / s - 0.5, cx + (jj - size / 2) / s - 0.5]  # source pixel indices
    pre = np.concatenate([src[..., :3] * src[..., 3:], src[..., 3:]], -1)
    ref = np.stack([map_coordinates(pre[..., c], coords, order=3, mode="constant") for c in range(4)], -1)
    got = np.concatenate([out[..., :3] * out[..., 3:], out[..., 3:]], -1)
    psnr = 10 * np.log10(1.0 / np.mean((got - ref) ** 2))
    assert psnr > min_psnr  # measured: 46-54 dB at 256/512, 35-40 dB at 128 (downscaling filters differ)


def coverage(lo: float, hi: float, n: int) -> np.ndarray:
    """Fraction of each unit pixel [i, i+1], i < n, inside the interval [lo, hi]."""
    i = np.arange(n)
    return np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0.0, 1.0)


@pytest.mark.parametrize("size,border", [(256, 0.2), (96, 0.25), (300, 0.05)])
def test_rectangle_lands_where_the_closed_form_says(size, border):
    """A hard-edged rectangle: compare the output alpha with its exact box-filter coverage."""
    img = np.zeros((200, 300, 4), np.float32)
    x0, x1, y0, y1 = 40, 100, 50, 170  # 60 x 120 pixels
    color = np.array([0.2, 0.6, 0.9], np.float32)
    img[y0:y1, x0:x1, :3] = color
    img[y0:y1, x0:x1, 3] = 1.0
    img[:, :, :3] += 0.05 * (img[:, :, 3:] == 0)  # colour under transparent pixels must not leak
    out = preprocess(img, size=size, border_ratio=border)
    s = (1 - border) * size / 120
    u0, u1 = size / 2 - 30 * s, size / 2 + 30 * s
    v0, v1 = size / 2 - 60 * s, size / 2 + 60 * s
    expect = coverage(v0, v1, size)[:, None] * coverage(u0, u1, size)[None, :]
    err = np.abs(out[..., 3] - expect)
    assert err.max() < 0.2  # bicubic vs box filter, at the edges only
    a = out[..., 3].astype(np.float64)
    assert abs(a.sum() / expect.sum() - 1) < 5e-3  # the area is preserved
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    assert abs((a * jj).sum() / a.sum() - size / 2) < 0.02  # and centred to a small fraction of a pixel
    assert abs((a * ii).sum() / a.sum() - size / 2) < 0.02
    inside = expect == 1.0
    interior = inside.copy()
    for axis in (0, 1):  # two pixels away from the edges colour is exactly the rectangle's
        interior &= np.roll(inside, 2, axis) & np.roll(inside, -2, axis)
    np.testing.assert_allclose(out[interior][:, :3], np.broadcast_to(color, (interior.sum(), 3)), atol=1e-5)
    reach = 3 + int(np.ceil(2 * max(s, 1.0)))  # bicubic support in output pixels, plus one
    far = np.ones_like(inside)
    far[max(int(v0) - reach, 0):int(v1) + reach + 1, max(int(u0) - reach, 0):int(u1) + reach + 1] = False
    assert np.abs(out[far]).max() < 1e-6  # fully transparent and colourless away from the object


def test_array_inputs_uint8_and_float_agree():
    img = (np.asarray(Image.open(SHIPPED[0]).convert("RGBA"))).copy()
    a = preprocess(img, size=128)
    b = preprocess(img.astype(np.float32) / 255.0, size=128)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_preprocess_argument_errors(tmp_path):
    img = np.zeros((10, 10, 4), np.float32)
    img[3:6, 3:6] = 1.0
    with pytest.raises(InputError, match="border_ratio"):
        preprocess(img, border_ratio=1.0)
    with pytest.raises(InputError, match="size"):
        preprocess(img, size=0)
    with pytest.raises(InputError, match="within \\[0, 1\\]"):
        preprocess(img * 2.0)
    with pytest.raises(InputError, match="expected an \\(H, W, 3\\)"):
        preprocess(np.zeros((4, 4), np.float32))
    empty = np.zeros((10, 10, 4), np.float32)
    empty[..., 3] = 0.0
    with pytest.raises(InputError, match="empty"):
        preprocess(empty, mask=np.zeros((10, 10)))


# --- alpha sources ---------------------------------------------------------------------------------


def opaque_photo(tmp_path, name="photo.png"):
    """A 120x90 opaque RGB image: grey background with a red square at x 30..60, y 20..70."""
    arr = np.full((90, 120, 3), 128, np.uint8)
    arr[20:70, 30:60] = (220, 30, 30)
    return write_png(tmp_path / name, arr)


def test_no_alpha_and_no_rembg_explains_what_to_do(tmp_path):
    path = opaque_photo(tmp_path)
    assert not images.rembg_available()
    with pytest.raises(InputError) as info:
        preprocess(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert "has no transparency" in msg
    assert "--mask mask.png" in msg
    assert "pip install rembg onnxruntime" in msg
    assert str(tmp_path / "u2net-empty" / "u2net.onnx") in msg and "U2NET_HOME" in msg
    assert "never downloads" in msg
    # A fully opaque RGBA image counts as having no transparency too.
    rgba = np.concatenate([np.asarray(Image.open(path)), np.full((90, 120, 1), 255, np.uint8)], -1)
    with pytest.raises(InputError, match="has no transparency"):
        preprocess(write_png(tmp_path / "opaque_rgba.png", rgba))


def test_rembg_model_lookup_follows_rembg(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    assert images.rembg_model_path() == tmp_path / "models" / "u2net.onnx"
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert images.rembg_model_path() == tmp_path / "xdg" / ".u2net" / "u2net.onnx"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert images.rembg_model_path() == Path(os.path.expanduser("~/.u2net/u2net.onnx"))


def test_rembg_is_used_only_with_package_and_model_file(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("rembg")
    fake.__spec__ = importlib.machinery.ModuleSpec("rembg", None)

    def new_session(name):
        calls.append(("session", name, os.environ.get("MODEL_CHECKSUM_DISABLED")))
        return "session"

    def remove(img, session):
        calls.append(("remove", img.size, session))
        a = np.asarray(img.convert("RGB")).copy()
        alpha = ((a[..., 0] > 200) * 255).astype(np.uint8)  # the red square
        return Image.fromarray(np.concatenate([a, alpha[..., None]], -1))

    fake.new_session, fake.remove = new_session, remove
    monkeypatch.setitem(sys.modules, "rembg", fake)
    path = opaque_photo(tmp_path)
    home = tmp_path / "models"
    monkeypatch.setenv("U2NET_HOME", str(home))
    with pytest.raises(InputError, match="has no transparency"):  # package but no model file
        preprocess(path)
    assert calls == []
    home.mkdir()
    (home / "u2net.onnx").write_bytes(b"weights")
    out = preprocess(path, size=100, border_ratio=0.2)
    assert calls == [("session", "u2net", "1"), ("remove", (120, 90), "session")]
    assert "MODEL_CHECKSUM_DISABLED" not in os.environ
    x0, y0, x1, y1 = bbox(out[..., 3])
    assert (x1 - x0, y1 - y0) == (48, 80) and (x0 + x1) / 2 == 50 and (y0 + y1) / 2 == 50


def test_mask_file_replaces_alpha(tmp_path):
    path = opaque_photo(tmp_path, "photo.jpg")  # JPEG: no alpha, lossy colours
    m = np.zeros((90, 120), np.uint8)
    m[20:70, 30:60] = 255
    mask = write_png(tmp_path / "mask.png", m)
    out = preprocess(path, size=128, border_ratio=0.2, mask=mask)
    x0, y0, x1, y1 = bbox(out[..., 3])
    assert abs((x0 + x1) / 2 - 64) <= 1 and abs((y0 + y1) / 2 - 64) <= 1
    assert abs(max(x1 - x0, y1 - y0) - 0.8 * 128) <= 1
    centre = out[60:68, 60:68]
    assert (centre[..., 3] > 0.99).all() and np.abs(centre[..., :3] - np.array([220, 30, 30]) / 255).max() < 0.06
    # A cut-out PNG works as a mask too (its alpha is used), and so does an array.
    cut = np.zeros((90, 120, 4), np.uint8)
    cut[20:70, 30:60] = (255, 255, 255, 255)
    np.testing.assert_array_equal(load_mask(write_png(tmp_path / "cut.png", cut)), m / 255.0)
    np.testing.assert_allclose(preprocess(path, size=128, mask=m / 255.0), out)
    with pytest.raises(InputError, match="the mask is 60x45 but the image is 120x90"):
        preprocess(path, mask=write_png(tmp_path / "small.png", m[::2, ::2]))


# --- loading errors ----------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR chunk claiming width x height, then a tiny IDAT and IEND."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (9000, 9000), (70_000_000, 1)])
def test_huge_images_rejected_before_decoding(tmp_path, w, h):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(w, h))
    assert path.stat().st_size < 200
    with pytest.raises(InputError, match="above the limit of 64 megapixels") as info:
        load_rgba(path)
    assert str(path) in str(info.value)


def test_loading_errors_name_the_file(tmp_path):
    cases = {
        "missing.png": (None, "file not found"),
        "empty.png": (b"", "empty file"),
        "text.png": (b"this is a text file, not a picture\n" * 10, "not an image file"),
        "truncated.png": (None, "corrupt or truncated"),
    }
    good = tmp_path / "good.png"
    write_png(good, (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    raw = good.read_bytes()
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if name == "truncated.png":
            path.write_bytes(raw[:len(raw) // 2])
        elif data is not None:
            path.write_bytes(data)
        with pytest.raises(InputError, match=message) as info:
            load_rgba(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="is a directory"):
        load_rgba(tmp_path)


def test_unsupported_mode(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.zeros((4, 4), np.float32)).save(path)
    with pytest.raises(InputError, match="unsupported image mode 'F'"):
        load_rgba(path)


def test_modes_convert_to_float_rgba(tmp_path):
    v16 = np.array([[0, 1000], [65535, 32768]], np.uint16)
    p16 = tmp_path / "g16.png"
    Image.fromarray(v16).save(p16)
    out = load_rgba(p16)
    np.testing.assert_allclose(out[..., 0], v16 / 65535.0, atol=1e-7)
    assert (out[..., 3] == 1).all()
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    out = load_rgba(tmp_path / "pal.png")
    np.testing.assert_array_equal(out[..., 3], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(out[0, 1, :3], [0, 0, 1])


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_rgba(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 4)
    assert out[:20, :, 0].mean() > 0.9 and out[20:, :, 0].mean() < 0.1  # the white half is now on top


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_prep_default_output_and_mask(tmp_path, capsys):
    photo = opaque_photo(tmp_path)
    m = np.zeros((90, 120), np.uint8)
    m[20:70, 30:60] = 255
    mask = write_png(tmp_path / "m.png", m)
    before = photo.read_bytes()
    assert main(["prep", str(photo), "--mask", str(mask), "--size", "64", "--border-ratio", "0.25"]) == 0
    out = tmp_path / "photo_rgba.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert photo.read_bytes() == before
    img = Image.open(out)
    assert img.mode == "RGBA" and img.size == (64, 64)
    x0, y0, x1, y1 = bbox(np.asarray(img)[..., 3] / 255.0)
    assert abs(max(x1 - x0, y1 - y0) - 48) <= 1


def test_cli_prep_errors(tmp_path, capsys):
    photo = opaque_photo(tmp_path)
    assert main(["prep", str(photo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamgs prep: error:") and "--mask mask.png" in err
    assert main(["prep", str(SHIPPED[0]), "--out", str(photo)]) == 0  # writing elsewhere is fine
    rgba = tmp_path / "in_rgba.png"
    rgba.write_bytes(SHIPPED[0].read_bytes())
    before = rgba.read_bytes()
    assert main(["prep", str(rgba), "--out", str(rgba)]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert rgba.read_bytes() == before
    assert main(["prep", str(rgba), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must be a .png" in capsys.readouterr().err
    assert main(["prep", str(tmp_path / "nope.png")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_input_view_keeps_the_framing_of_rgba_images_and_pads_to_square():
    from dreamgs.images import input_view

    img = np.zeros((100, 200, 4), np.float32)
    img[10:30, 150:190] = (0.2, 0.4, 0.8, 1.0)  # an object near the top right
    out = input_view(img, size=100)
    assert out.shape == (100, 100, 4)
    ys, xs = np.nonzero(out[..., 3] > 0.5)
    # Scale 0.5 (the long side 200 -> 100), the canvas centre stays the image centre.
    assert abs(xs.min() - 75) <= 1 and abs(xs.max() - 94) <= 1
    assert abs(ys.min() - (25 + 5)) <= 1 and abs(ys.max() - (25 + 14)) <= 1
    np.testing.assert_allclose(out[ys, xs, :3].mean(0), (0.2, 0.4, 0.8), atol=0.02)
    recentred = input_view(img, size=100, recenter=True)
    ys, xs = np.nonzero(recentred[..., 3] > 0.5)
    assert abs((xs.min() + xs.max()) / 2 - 49.5) <= 1  # prep behaviour on request
