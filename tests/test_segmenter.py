"""Cut-outs from a local salient-object ONNX model (`dreamgs prep --segmenter`, dreamgs.segment).

Fast tests run tiny ONNX models written here byte by byte (no `onnx` package needed). The
real-model tests run the IS-Net model that `.ci/run` reassembles from the npm package
@imgly/background-removal-data (scripts/fetch_isnet.py) and points DREAMGS_TEST_SEGMENTER at;
without it they skip locally and fail in CI.
"""

import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamgs.cli import main
from dreamgs.errors import DreamGSError, InputError
from dreamgs.images import load_rgba, no_alpha_message, preprocess

from optional import need

ort = need("onnxruntime")
from dreamgs import segment  # noqa: E402
from dreamgs.segment import Segmenter, largest_component, segment_alpha  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
SHIPPED = sorted(EXAMPLES.glob("*_rgba.png"))
REAL_ENV = "DREAMGS_TEST_SEGMENTER"


@pytest.fixture(autouse=True)
def no_configured_models(tmp_path, monkeypatch):
    """No segmenter from the environment and no rembg model, unless a test sets one."""
    monkeypatch.delenv(segment.ENV_VAR, raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-empty"))


# --- tiny ONNX models, encoded by hand (protobuf wire format of onnx.proto) -------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(num: int, v: int) -> bytes:
    return _varint(num << 3) + _varint(v)


def _len(num: int, payload) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _value_info(name: str, shape) -> bytes:
    dims = b"".join(_len(1, _int(1, d) if isinstance(d, int) else _len(2, d)) for d in shape)
    tensor_type = _int(1, 1) + _len(2, dims)  # elem_type FLOAT, shape
    return _len(1, name) + _len(2, _len(1, tensor_type))


def _node(op: str, inputs, outputs) -> bytes:
    return b"".join(_len(1, i) for i in inputs) + b"".join(_len(2, o) for o in outputs) + _len(4, op)


def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype="<f4")
    return b"".join(_int(1, d) for d in arr.shape) + _int(2, 1) + _len(8, name) + _len(9, arr.tobytes())


def onnx_model(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    """Write a model: ``nodes`` (op, [inputs], [outputs]); ``inputs``/``outputs`` (name, shape)."""
    graph = (b"".join(_len(1, _node(*n)) for n in nodes) + _len(2, "g")
             + b"".join(_len(5, _tensor(name, arr)) for name, arr in initializers)
             + b"".join(_len(11, _value_info(*v)) for v in inputs)
             + b"".join(_len(12, _value_info(*v)) for v in outputs))
    model = _int(1, 8) + _len(2, "dreamgs-tests") + _len(7, graph) + _len(8, _len(1, "") + _int(2, 13))
    path.write_bytes(model)
    return path


def brightness_model(path: Path, size: int = 64, names=("input", "output"), extra_inverted_output: bool = False):
    """IS-Net layout: 1x3xSxS -> 1x1xSxS, the map is the mean of the (normalised) channels, so
    bright pixels are the object. ``extra_inverted_output``: U²-Net-like, the map is the first of
    two outputs and the second is its negative (using it would invert the cut-out)."""
    inp, out = names
    nodes = [("Conv", [inp, "w"], [out])]
    outputs = [(out, [1, 1, size, size])]
    if extra_inverted_output:
        nodes.append(("Neg", [out], ["d1"]))
        outputs.append(("d1", [1, 1, size, size]))
    return onnx_model(path, nodes, [(inp, [1, 3, size, size])], outputs,
                      [("w", np.full((1, 3, 1, 1), 1 / 3, np.float32))])


@pytest.fixture
def bright_model(tmp_path):
    return brightness_model(tmp_path / "bright.onnx")


def object_photo(size=96, squares=((20, 20, 70, 60),), speck=None) -> np.ndarray:
    """Dark background, white rectangles (x0, y0, x1, y1); ``speck``: a small extra bright blob."""
    rgb = np.full((size, size, 3), 0.1, np.float32)
    for x0, y0, x1, y1 in squares:
        rgb[y0:y1, x0:x1] = 1.0
    if speck:
        x0, y0, x1, y1 = speck
        rgb[y0:y1, x0:x1] = 1.0
    return rgb


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max((a | b).sum(), 1))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --- fast tests with tiny models ------------------------------------------------------------------


def test_known_mask_model_gives_the_object_and_keeps_the_largest_one(bright_model):
    rgb = object_photo(squares=((20, 20, 70, 60),), speck=(80, 80, 88, 88))
    truth = np.zeros((96, 96), np.float32)
    truth[20:60, 20:70] = 1
    alpha = segment_alpha(rgb, bright_model, "isnet")
    assert alpha.shape == (96, 96) and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0  # min-max normalised
    assert iou(alpha, truth) > 0.9
    assert alpha[80:88, 80:88].max() == 0.0  # the smaller blob is dropped


def test_first_output_is_the_map_when_none_is_named_output(tmp_path):
    model = brightness_model(tmp_path / "u2.onnx", 32, names=("input.1", "d0"), extra_inverted_output=True)
    seg = Segmenter(model)
    assert (seg.input_name, seg.output_name, seg.size, seg.norm) == ("input.1", "d0", (32, 32), "imagenet")
    alpha = seg.alpha(object_photo())
    assert alpha[30:50, 30:60].min() > 0.9 and alpha[:10, :10].max() < 0.1


def test_normalisation_rule_and_values(tmp_path, bright_model):
    rgb = np.zeros((8, 8, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1.0, 0.5, 0.0
    x = Segmenter(bright_model, "isnet").model_input(rgb)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [0.5, 128 / 255 - 0.5, -0.5], atol=1e-6)
    x = Segmenter(bright_model, "imagenet").model_input(rgb)
    np.testing.assert_allclose(x[0, :, 0, 0], [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, -0.406 / 0.225],
                               atol=1e-5)
    assert Segmenter(bright_model).norm == "imagenet"  # auto: 64 px < 1024
    big = brightness_model(tmp_path / "big.onnx", 1024)
    assert Segmenter(big).norm == "isnet"
    dyn = onnx_model(tmp_path / "dyn.onnx", [("Conv", ["input", "w"], ["output"])],
                     [("input", [1, 3, "h", "w"])], [("output", [1, 1, "h", "w"])],
                     [("w", np.ones((1, 3, 1, 1), np.float32))])
    seg = Segmenter(dyn)
    assert seg.size == (1024, 1024) and seg.norm == "isnet"
    with pytest.raises(InputError, match="expected auto, isnet or imagenet"):
        Segmenter(bright_model, "zscore")


def test_models_that_fit_run_through_rembgs_sessions_and_agree_with_onnxruntime(tmp_path):
    need("rembg")
    model = brightness_model(tmp_path / "u2net-like.onnx", size=320)  # U²-Net's size: rembg's u2net_custom
    rgb = object_photo(size=200, squares=((40, 50, 150, 130),), speck=(170, 170, 180, 180))
    via_rembg = Segmenter(model, "imagenet")
    direct = Segmenter(model, "imagenet", use_rembg=False)
    assert via_rembg.engine == "u2net_custom" and direct.engine == "onnxruntime"
    a, b = via_rembg.alpha(rgb), direct.alpha(rgb)
    # Same object, speck dropped (rembg's Lanczos resize rings, so the soft levels differ a little).
    assert iou(a, b) >= 0.99 and a[170:180, 170:180].max() == 0.0
    # Sizes and normalisations rembg's sessions do not cover stay with onnxruntime.
    assert Segmenter(model, "isnet").engine == "onnxruntime"
    assert Segmenter(brightness_model(tmp_path / "b64.onnx"), "isnet").engine == "onnxruntime"


def test_largest_component_keeps_the_soft_edge_of_the_kept_object_only():
    a = np.zeros((20, 40), np.float32)
    a[5:15, 5:15] = 1.0
    a[5:15, 15] = 0.3  # soft edge of the big object
    a[8:11, 30:33] = 1.0  # a small object
    a[8:11, 29] = 0.3  # its soft edge
    out = largest_component(a)
    assert out[5:15, 5:16].tolist() == a[5:15, 5:16].tolist()
    assert out[:, 25:].max() == 0.0


@pytest.mark.parametrize("name,nodes,inputs,outputs,init,expect", [
    ("four-channels", [("Conv", ["input", "w"], ["output"])], [("input", [1, 4, 32, 32])],
     [("output", [1, 1, 32, 32])], [("w", np.ones((1, 4, 1, 1), np.float32))], "input 'input' is 1x4x32x32"),
    ("rgb-output", [("Identity", ["input"], ["output"])], [("input", [1, 3, 32, 32])],
     [("output", [1, 3, 32, 32])], [], "output 'output' is 1x3x32x32"),
    ("rank-3-input", [("Identity", ["input"], ["output"])], [("input", [3, 32, 32])],
     [("output", [3, 32, 32])], [], "input 'input' is 3x32x32"),
])
def test_wrong_model_shape_is_one_line_and_writes_nothing(tmp_path, capsys, name, nodes, inputs, outputs, init,
                                                         expect):
    model = onnx_model(tmp_path / f"{name}.onnx", nodes, inputs, outputs, init)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.round(object_photo() * 255).astype(np.uint8)).save(photo)
    with pytest.raises(InputError, match="1x3xHxW float image input and a 1x1xHxW saliency output"):
        Segmenter(model)
    out = tmp_path / "photo_rgba.png"
    assert main(["prep", str(photo), "--segmenter", str(model)]) == 2
    err = one_line_error(capsys)
    assert str(model) in err and expect in err and "expected a salient-object model" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    out.write_bytes(b"previous result")  # an earlier output stays as it was
    assert main(["prep", str(photo), "--segmenter", str(model)]) == 2
    assert out.read_bytes() == b"previous result"


def test_not_a_model_and_missing_model_are_one_line(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.round(object_photo() * 255).astype(np.uint8)).save(photo)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 10)
    assert main(["prep", str(photo), "--segmenter", str(junk)]) == 2
    assert "not an ONNX model onnxruntime can load" in one_line_error(capsys)
    assert main(["prep", str(photo), "--segmenter", str(tmp_path / "missing.onnx")]) == 2
    assert "segmenter model file not found" in one_line_error(capsys)
    assert not (tmp_path / "photo_rgba.png").exists()


def test_output_of_the_wrong_size_at_run_time_is_one_line(tmp_path, capsys):
    # The output's declared shape is symbolic; the run gives 1x1x16x16 for a 32x32 input (a 2x2
    # max-pool with stride 2, then the channel mean). MaxPool's attributes are written by hand.
    model = tmp_path / "strided.onnx"
    attrs = [_len(1, name) + _int(8, 2) + _int(8, 2) + _int(20, 7) for name in ("kernel_shape", "strides")]  # INTS
    node = _len(1, "input") + _len(2, "pooled") + _len(4, "MaxPool") + b"".join(_len(5, a) for a in attrs)
    conv = _len(1, "pooled") + _len(1, "w") + _len(2, "output") + _len(4, "Conv")
    graph = (_len(1, node) + _len(1, conv) + _len(2, "g") + _len(5, _tensor("w", np.ones((1, 3, 1, 1))))
             + _len(11, _value_info("input", [1, 3, 32, 32])) + _len(12, _value_info("output", ["n", "c", "h", "w"])))
    model.write_bytes(_int(1, 8) + _len(7, graph) + _len(8, _len(1, "") + _int(2, 13)))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.round(object_photo() * 255).astype(np.uint8)).save(photo)
    assert main(["prep", str(photo), "--segmenter", str(model)]) == 2
    err = one_line_error(capsys)
    assert "of the input's size 32x32" in err and "is 1x1x16x16" in err
    assert not (tmp_path / "photo_rgba.png").exists()


def test_prep_with_a_segmenter_writes_a_centred_rgba_png(tmp_path, capsys, bright_model, monkeypatch):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.round(object_photo(squares=((10, 30, 40, 50),)) * 255).astype(np.uint8)).save(photo, quality=95)
    assert main(["prep", str(photo), "--segmenter", str(bright_model), "--segmenter-norm", "isnet",
                 "--size", "64"]) == 0
    out = tmp_path / "photo_rgba.png"
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (64, 64)
        a = np.asarray(im)[..., 3] / 255.0
    ys, xs = np.nonzero(a >= 0.5)
    assert abs((xs.min() + xs.max() + 1) / 2 - 32) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - 32) <= 1
    assert xs.max() + 1 - xs.min() == pytest.approx(0.8 * 64, abs=2)  # longer side scaled to (1 - 0.2) * size
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    # The same from the config key, and from $DREAMGS_SEGMENTER.
    out.unlink()
    assert main(["prep", str(photo), f"prep.segmenter={bright_model}", "prep.segmenter_norm=isnet"]) == 0
    first = load_rgba(out)
    out.unlink()
    monkeypatch.setenv(segment.ENV_VAR, str(bright_model))
    assert main(["prep", str(photo), "--segmenter-norm", "isnet"]) == 0
    np.testing.assert_array_equal(load_rgba(out), first)
    # An image with its own transparency keeps it; the model is not run.
    monkeypatch.setattr(Segmenter, "alpha", lambda *a: pytest.fail("segmenter run on an RGBA image"))
    assert main(["prep", str(SHIPPED[0]), "--out", str(tmp_path / "x.png")]) == 0


def test_bad_norm_in_config_and_missing_onnxruntime(tmp_path, capsys, bright_model, monkeypatch):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.round(object_photo() * 255).astype(np.uint8)).save(photo)
    assert main(["prep", str(photo), "prep.segmenter_norm=zscore"]) == 2
    assert "prep.segmenter_norm: expected auto, isnet or imagenet" in one_line_error(capsys)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(DreamGSError, match=r"needs onnxruntime: pip install 'dreamgs\[segment\]'"):
        segment_alpha(object_photo(), bright_model)


def test_no_alpha_message_and_info_name_the_segmenter(tmp_path, monkeypatch, bright_model):
    msg = no_alpha_message("photo.jpg")
    assert "--segmenter MODEL.onnx" in msg and "DREAMGS_SEGMENTER" in msg and "--mask" in msg
    with pytest.raises(InputError, match="--segmenter MODEL.onnx"):
        preprocess(object_photo())
    from dreamgs.info import weights_lookup

    assert weights_lookup()["segmenter"].startswith("not configured")
    monkeypatch.setenv(segment.ENV_VAR, str(bright_model))
    assert weights_lookup()["segmenter"].startswith(f"{bright_model} (found, from $DREAMGS_SEGMENTER)")
    monkeypatch.setenv(segment.ENV_VAR, str(tmp_path / "gone.onnx"))
    assert "(not found" in weights_lookup()["segmenter"]
    with pytest.raises(InputError, match=r"segmenter model file not found \(set by \$DREAMGS_SEGMENTER\)"):
        preprocess(object_photo())


def test_app_offers_the_configured_segmenter(tmp_path, monkeypatch, bright_model):
    from dreamgs.app import AppSettings, cutout_choices, prepare_image

    settings = AppSettings(tmp_path / "app")
    assert cutout_choices(settings) == ([("None: the image's own transparency", "none")], "none")
    settings = AppSettings(tmp_path / "app", overrides=(f"prep.segmenter={bright_model}", "prep.segmenter_norm=isnet"))
    choices, default = cutout_choices(settings)
    assert default == "segmenter" and choices[0] == ("Segmenter model: bright.onnx", "segmenter")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.round(object_photo() * 255).astype(np.uint8)).save(photo)
    out = prepare_image(photo, 32, str(bright_model), "isnet")
    assert out.name == "photo_rgba.png" and load_rgba(out)[..., 3].min() == 0.0
    with pytest.raises(InputError, match="choose it under Cut-out"):
        prepare_image(photo, 32, False)


# --- the real model (IS-Net from @imgly/background-removal-data, see .ci/run) ------------------------


@pytest.fixture(scope="module")
def real_model() -> Path:
    path = os.environ.get(REAL_ENV, "")
    if not path or not Path(path).is_file():
        why = (f"{REAL_ENV} is not set" if not path else f"{REAL_ENV}={path}: file not found") + \
            " (the real IS-Net model: python scripts/fetch_isnet.py --out medium.onnx; see .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return Path(path)


def background(kind: str, h: int, w: int) -> np.ndarray:
    """Synthetic backgrounds, fixed by seed: plain, gradient, clutter."""
    rng = np.random.default_rng({"plain": 1, "gradient": 2, "clutter": 3}[kind])
    if kind == "plain":
        return np.broadcast_to(np.array([0.86, 0.84, 0.78], np.float32), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "gradient":
        t = ((xx / w + yy / h) / 2)[..., None]
        return (np.array([0.95, 0.75, 0.55]) * (1 - t) + np.array([0.35, 0.45, 0.7]) * t).astype(np.float32)
    base = Image.fromarray((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    img = Image.fromarray((np.asarray(base) * 0.5 + 64).astype(np.uint8))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    for _ in range(24):  # rectangles and ellipses of random colours and sizes
        x0, y0 = rng.integers(-w // 8, w, 2)
        x1, y1 = x0 + rng.integers(w // 16, w // 3), y0 + rng.integers(h // 16, h // 3)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([int(x0), int(y0), int(x1), int(y1)], fill=fill)
    return np.asarray(img, np.float32) / 255.0


def composite(image: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB photo of the example over a background, its true alpha)."""
    rgba = load_rgba(image)
    a = rgba[..., 3:]
    rgb = rgba[..., :3] * a + background(kind, *a.shape[:2]) * (1 - a)
    return np.round(rgb * 255) / 255, rgba[..., 3]  # as stored in an 8-bit file


CASES = [(img, kind) for img in SHIPPED for kind in ("plain", "gradient", "clutter")]
MIN_IOU = {"plain": 0.95, "gradient": 0.95, "clutter": 0.70}


@pytest.fixture(scope="module")
def segmented(real_model):
    """Each composite's segmentation, run once: {(image, kind): (alpha, true alpha, seconds)}."""
    cache = {}

    def get(image, kind):
        if (image, kind) not in cache:
            rgb, truth = composite(image, kind)
            t0 = time.perf_counter()
            alpha = segment_alpha(rgb, real_model)
            cache[image, kind] = alpha, truth, time.perf_counter() - t0
        return cache[image, kind]

    return get


@pytest.mark.parametrize("image,kind", CASES, ids=[f"{i.stem}-{k}" for i, k in CASES])
def test_real_model_cutout_matches_the_true_alpha(segmented, image, kind):
    alpha, truth, seconds = segmented(image, kind)
    score = iou(alpha, truth)
    print(f"{image.stem} over {kind}: IoU {score:.3f} in {seconds:.1f} s")
    assert score >= MIN_IOU[kind], f"{image.stem} over {kind}: IoU {score:.3f} < {MIN_IOU[kind]}"


def test_real_model_runs_through_rembg_and_matches_the_onnxruntime_path(real_model):
    need("rembg")
    rgb, truth = composite(SHIPPED[0], "gradient")
    seg = Segmenter(real_model)
    assert seg.engine == "dis_custom"
    assert iou(seg.alpha(rgb), Segmenter(real_model, use_rembg=False).alpha(rgb)) >= 0.98


def test_real_model_prep_and_image_to_3d(real_model, tmp_path, capsys):
    from dreamgs.pipeline import generate

    image = SHIPPED[0]
    rgb, _ = composite(image, "plain")
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(photo, quality=95)
    assert main(["prep", str(photo), "--segmenter", str(real_model)]) == 0
    out = tmp_path / "photo_rgba.png"
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
    got, want = load_rgba(out)[..., 3], preprocess(image)[..., 3]  # prep of the photo, of the true cut-out
    ys, xs = np.nonzero(got >= 0.5)
    assert abs((xs.min() + xs.max() + 1) / 2 - 128) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - 128) <= 1
    assert max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == pytest.approx(0.8 * 256, abs=2)
    assert (got >= 0.5).sum() == pytest.approx((want >= 0.5).sum(), rel=0.1)
    # Loose: the frame follows the cut-out's bounding box, so a box one or two pixels off moves it
    # (the cut-out's accuracy itself is measured in the image's frame, above).
    assert iou(got, want) >= 0.8
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    # Image to 3D (oracle prior, tiny sizes) from the photo itself, cut out through prep.segmenter.
    tiny = ["prior.kind=oracle", "stage1.iters=6", "stage1.render_sizes=[32]", "stage1.size_milestones=[]",
            "stage1.ref_size=32", "gaussians.num_points=300", "prior.oracle_azimuths=8", "prior.oracle_elevations=[0]",
            "prior.oracle_resolution=32", "export.video=false", "stage2.enabled=false", "device=cpu",
            f"prep.segmenter={real_model}"]
    run = tmp_path / "run"
    res = generate(image=photo, overrides=tiny, seed=3, run_dir=run, progress=False)
    assert (run / "model.ply").stat().st_size > 0 and res.files


# --- scripts/fetch_isnet.py (the reassembly; the real package is exercised by .ci/run) --------------


def test_fetch_script_verifies_chunks_and_checksum_and_writes_atomically(tmp_path, monkeypatch, capsys):
    import hashlib
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("fetch_isnet", Path(__file__).resolve().parents[1] / "scripts"
                                                  / "fetch_isnet.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    pkg = tmp_path / "package"
    (pkg / "dist").mkdir(parents=True)
    parts = [b"first chunk " * 50, b"second, shorter"]
    chunks, pos = [], 0
    for data in parts:
        name = hashlib.sha256(data).hexdigest()
        (pkg / "dist" / name).write_bytes(data)
        chunks.append({"hash": name, "offsets": [pos, pos + len(data)]})
        pos += len(data)
    (pkg / "dist" / "resources.json").write_text(json.dumps({"/models/medium": {"chunks": chunks, "size": pos}}))
    whole = b"".join(parts)
    monkeypatch.setitem(fetch.PINNED, "medium", (hashlib.sha256(whole).hexdigest(), len(whole)))
    out = tmp_path / "out" / "model.onnx"
    assert fetch.main(["--package", str(pkg), "--out", str(out)]) == 0
    assert out.read_bytes() == whole
    assert "AGPL-3.0" in capsys.readouterr().err
    # A damaged chunk, or a model whose checksum differs from the pinned one: an error, nothing written.
    out.unlink()
    (pkg / "dist" / chunks[1]["hash"]).write_bytes(b"second, damaged")
    assert fetch.main(["--package", str(pkg), "--out", str(out)]) == 2
    assert "chunk is damaged" in capsys.readouterr().err
    (pkg / "dist" / chunks[1]["hash"]).write_bytes(parts[1])
    monkeypatch.setitem(fetch.PINNED, "medium", ("0" * 64, len(whole)))
    assert fetch.main(["--package", str(pkg), "--out", str(out)]) == 2
    assert "expected 0000" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []
