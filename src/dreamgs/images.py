"""Input images for image-to-3D: safe decoding, masks, and object-centred preprocessing.

Conventions: images are float32 numpy arrays ``(H, W, C)`` with values in [0, 1]; RGBA has
straight (not premultiplied) alpha, 1 = object. Pixel coordinates: column x, row y, and pixel
(i, j) covers the square [j, j+1] x [i, i+1].

Decoding is defensive: the pixel count is checked against :data:`MAX_PIXELS` from the file header
before any pixel is decoded (decompression bombs), and every failure becomes an
:class:`~dreamgs.errors.InputError` naming the file.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DreamGSError, InputError

MAX_PIXELS = 8192 * 8192  # 64 megapixels
ALPHA_OBJECT = 0.5  # a pixel belongs to the object's bounding box when its alpha is at least this

# Pillow modes we know how to turn into RGB(A) in [0, 1]. Others (float "F", "LAB", "HSV", ...)
# have no well-defined display range and are rejected.
_SUPPORTED_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                    "I", "I;16", "I;16L", "I;16B", "I;16N"}
_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open and fully decode an image file, with size and format checks (see module docstring).

    Returns a decoded Pillow image with EXIF orientation applied. ``what`` names the file's role
    in error messages ("image", "mask").
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an {what} file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes), not an {what}")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and raises above twice that; ours is lower and
            # checked below from the header alone.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file Pillow can read (unknown or unsupported format)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{path}: {what} dimensions are above the limit of {MAX_PIXELS // 2**20} megapixels "
                         "(8192x8192); downscale it first") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except Exception as e:  # Pillow's format plugins raise ValueError, SyntaxError, struct.error, ... on bad headers
        raise InputError(f"{path}: {what} header is corrupt ({type(e).__name__}: {e})") from None
    decoded = None
    try:
        _check_header(path, img, what)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img.load()
                decoded = ImageOps.exif_transpose(img)
            except Exception as e:  # Pillow's decoders raise many types for corrupt data
                raise InputError(f"{path}: {what} data is corrupt or truncated ({type(e).__name__}: {e})") from None
    finally:
        if decoded is not img:  # exif_transpose made a copy; release the file and the original
            img.close()
    return decoded


def _check_header(path: Path, img: Image.Image, what: str) -> None:
    """Size and mode checks from the header, before any pixel is decoded."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"{path}: {what} has an invalid size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise InputError(f"{path}: {what} is {w}x{h} ({w * h / 2**20:.0f} megapixels), above the limit of "
                         f"{MAX_PIXELS // 2**20} megapixels (8192x8192); downscale it first")
    if img.mode not in _SUPPORTED_MODES:
        raise InputError(f"{path}: unsupported image mode '{img.mode}' (expected 8- or 16-bit grayscale, "
                         "palette, RGB, RGBA or CMYK)")


def _to_float(img: Image.Image, keep_alpha: bool = True) -> np.ndarray:
    """Decoded Pillow image -> float32 (H, W, 3) or (H, W, 4) in [0, 1]."""
    if img.mode in _SIXTEEN_BIT:
        v = np.asarray(img).astype(np.float64)
        if v.min() < 0 or v.max() > 65535:
            raise InputError(f"{getattr(img, 'filename', 'image')}: 32-bit integer image values outside 0..65535")
        gray = (v / 65535.0).astype(np.float32)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        return np.concatenate([rgb, np.ones_like(gray)[..., None]], -1) if keep_alpha else rgb
    has_alpha = img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    if keep_alpha and has_alpha:
        return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if keep_alpha:
        return np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,), np.float32)], -1)
    return rgb


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Float32 (H, W, 3), or (H, W, 4) when the file has an alpha channel, in [0, 1]."""
    img = open_image(path)
    has_alpha = img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    return _to_float(img, keep_alpha=has_alpha)


def load_rgba(path: str | os.PathLike) -> np.ndarray:
    """Load an image as float32 RGBA (H, W, 4) in [0, 1]; images without alpha get alpha 1."""
    return _to_float(open_image(path), keep_alpha=True)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a mask file as float32 (H, W) in [0, 1], 1 = object.

    A file with a non-trivial alpha channel (a cut-out) gives its alpha; otherwise its luminance
    (white = object, black = background).
    """
    img = open_image(path, what="mask")
    arr = _to_float(img, keep_alpha=True)
    alpha = arr[..., 3]
    if alpha.min() < 1.0:
        return np.ascontiguousarray(alpha)
    rgb = arr[..., :3]
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.float32)


def _as_float_image(image, name: str) -> np.ndarray:
    """Array/tensor (H, W, 3|4), uint8 or float in [0, 1] -> float32 (H, W, 3|4)."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name}: expected an (H, W, 3) or (H, W, 4) image, got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{name}: expected uint8 or float pixels, got {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise InputError(f"{name}: float pixel values must be finite and within [0, 1]")
    return arr


# ------------------------------------------------------------------------------------------------
# Background removal with rembg (optional; only when installed and its model file is on disk)


def rembg_model_path() -> Path:
    """Where rembg looks for its u2net model: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``,
    else ``~/.u2net``, file ``u2net.onnx``."""
    home = os.environ.get("U2NET_HOME", os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net"))
    return Path(os.path.expanduser(home)) / "u2net.onnx"


def rembg_available() -> bool:
    """True when the rembg package is importable and its u2net model file exists locally."""
    return importlib.util.find_spec("rembg") is not None and rembg_model_path().is_file()


MASK_HINT_CLI = "pass a mask with --mask mask.png (white = object, same size as the image)"


class NoAlphaError(InputError):
    """An image without transparency, no mask, and no local background remover."""


SEGMENTER_HINT_CLI = "pass a local IS-Net/U²-Net ONNX model with --segmenter MODEL.onnx"


def no_alpha_message(name: str, mask_hint: str = MASK_HINT_CLI, segmenter_hint: str = SEGMENTER_HINT_CLI) -> str:
    return (f"{name}: the image has no transparency, so the object cannot be separated from its background; "
            f"{mask_hint}, or {segmenter_hint} (or set DREAMGS_SEGMENTER; pip install 'dreamgs[segment]'; "
            "README: \"Cut out a photo offline\"), or give an RGBA image with a transparent background, "
            f"or install rembg (pip install rembg onnxruntime) and place its model file at {rembg_model_path()} "
            "(directory set by U2NET_HOME); dreamgs never downloads a model")


def rembg_alpha(rgb: np.ndarray) -> np.ndarray:
    """Foreground alpha (H, W) from rembg's u2net model. Call only when :func:`rembg_available`."""
    # With checksums disabled rembg hands pooch no hash, and pooch then uses the existing file
    # as it is instead of re-downloading it.
    old = os.environ.get("MODEL_CHECKSUM_DISABLED")
    os.environ["MODEL_CHECKSUM_DISABLED"] = "1"
    try:
        import rembg

        session = rembg.new_session("u2net")
        out = rembg.remove(Image.fromarray(np.round(rgb * 255).astype(np.uint8)), session=session)
        alpha = np.asarray(out.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
    except Exception as e:
        raise DreamGSError(f"background removal with rembg failed ({type(e).__name__}: {e}); "
                           "pass a mask with --mask instead") from None
    finally:
        if old is None:
            os.environ.pop("MODEL_CHECKSUM_DISABLED", None)
        else:
            os.environ["MODEL_CHECKSUM_DISABLED"] = old
    if alpha.shape != rgb.shape[:2]:
        raise DreamGSError(f"rembg returned a {alpha.shape} mask for a {rgb.shape[:2]} image")
    return alpha


# ------------------------------------------------------------------------------------------------
# Preprocessing


def object_bbox(alpha: np.ndarray, threshold: float = ALPHA_OBJECT) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (pixel edges, x1/y1 exclusive) of ``alpha >= threshold``."""
    ys, xs = np.nonzero(alpha >= threshold)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _resample_to_canvas(premult: np.ndarray, cx: float, cy: float, scale: float, size: int) -> np.ndarray:
    """Map source point (cx, cy) to the canvas centre with ``scale`` canvas px per source px.

    ``premult`` is premultiplied RGBA (H, W, 4). Outside the source is transparent. Resampling
    is Pillow's antialiased bicubic filter on each float channel, with a float source box, so the
    placement is exact to sub-pixel precision.
    """
    H, W = premult.shape[:2]
    half = size / 2.0
    U0 = max(0, math.floor(half - cx * scale))
    U1 = min(size, math.ceil(half + (W - cx) * scale))
    V0 = max(0, math.floor(half - cy * scale))
    V1 = min(size, math.ceil(half + (H - cy) * scale))
    canvas = np.zeros((size, size, 4), np.float32)
    if U1 <= U0 or V1 <= V0:
        return canvas
    xa, xb = cx + (U0 - half) / scale, cx + (U1 - half) / scale
    ya, yb = cy + (V0 - half) / scale, cy + (V1 - half) / scale
    margin = math.ceil(3.0 / min(scale, 1.0)) + 2  # filter support in source pixels, plus slack
    ix0, ix1 = max(0, math.floor(xa) - margin), min(W, math.ceil(xb) + margin)
    iy0, iy1 = max(0, math.floor(ya) - margin), min(H, math.ceil(yb) + margin)
    crop = np.pad(premult[iy0:iy1, ix0:ix1], ((margin, margin), (margin, margin), (0, 0)))
    box = (xa - ix0 + margin, ya - iy0 + margin, xb - ix0 + margin, yb - iy0 + margin)
    for c in range(4):
        channel = Image.fromarray(np.ascontiguousarray(crop[..., c], dtype=np.float32))
        canvas[V0:V1, U0:U1, c] = np.asarray(channel.resize((U1 - U0, V1 - V0), Image.BICUBIC, box=box))
    return canvas


def preprocess(image, size: int = 256, border_ratio: float = 0.2, mask=None, segmenter=None,
               segmenter_norm: str = "auto") -> np.ndarray:
    """Cut out the object, centre it and scale it into a square RGBA image for image-to-3D.

    ``image``: a file path, or an (H, W, 3|4) array/tensor (uint8, or float in [0, 1]).
    ``mask``: optional file path or (H, W) array in [0, 1] (1 = object); it replaces any alpha.

    The object is where alpha >= 0.5. Alpha comes from ``mask``, else from the image's own
    transparency, else from the salient-object model ``segmenter`` (a local ONNX file, default
    ``$DREAMGS_SEGMENTER``, False for none; see :mod:`dreamgs.segment`; ``segmenter_norm``: its
    input normalisation),
    else from rembg if it and its model file are installed locally; otherwise an
    :class:`InputError` explains the options. The object's bounding box is centred on the
    ``size`` x ``size`` canvas and scaled so its longer side is ``(1 - border_ratio) * size``
    pixels. Returns float32 (size, size, 4) with straight alpha; colour is 0 where alpha is 0.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 4096:
        raise InputError(f"size: expected an integer from 8 to 4096, got {size!r}")
    if not 0.0 <= float(border_ratio) < 1.0:
        raise InputError(f"border_ratio: expected a value in [0, 1), got {border_ratio!r}")
    size = int(size)
    if isinstance(image, (str, os.PathLike)):
        name = str(image)
        rgba = load_rgba(image)
    else:
        name = "image"
        rgba = _as_float_image(image, name)
    rgb = rgba[..., :3]
    H, W = rgb.shape[:2]

    if mask is not None:
        if isinstance(mask, (str, os.PathLike)):
            mname, alpha = str(mask), load_mask(mask)
        else:
            mname = "mask"
            m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
            if m.ndim == 3 and m.shape[-1] == 1:
                m = m[..., 0]
            if m.ndim != 2:
                raise InputError(f"mask: expected an (H, W) array, got shape {tuple(m.shape)}")
            alpha = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
            if not np.isfinite(alpha).all() or alpha.min() < 0 or alpha.max() > 1:
                raise InputError("mask: values must be finite and within [0, 1]")
        if alpha.shape != (H, W):
            raise InputError(f"{mname}: the mask is {alpha.shape[1]}x{alpha.shape[0]} but the image is {W}x{H}")
    elif rgba.shape[-1] == 4 and rgba[..., 3].min() < 1.0:
        alpha = rgba[..., 3]
    elif (model := _segmenter_file(segmenter)) is not None:
        from .segment import segment_alpha

        alpha = segment_alpha(rgb, model, segmenter_norm)
    elif rembg_available():
        alpha = rembg_alpha(rgb)
    else:
        raise NoAlphaError(no_alpha_message(name))

    bbox = object_bbox(alpha)
    if bbox is None:
        bbox = object_bbox(alpha, threshold=1e-6)
    if bbox is None:
        raise InputError(f"{name}: the alpha channel or mask is empty (no object pixels)")
    x0, y0, x1, y1 = bbox
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    scale = (1.0 - float(border_ratio)) * size / max(x1 - x0, y1 - y0)
    premult = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=-1).astype(np.float32)
    out = _resample_to_canvas(premult, cx, cy, scale, size)
    # Un-premultiply with the filtered alpha before clipping it (bicubic overshoots slightly), so
    # a uniformly coloured region keeps exactly its colour.
    raw = out[..., 3:]
    color = np.where(raw > 1e-6, np.clip(out[..., :3] / np.maximum(raw, 1e-6), 0.0, 1.0), 0.0)
    alpha = np.clip(raw, 0.0, 1.0)
    return np.concatenate([np.where(alpha > 0, color, 0.0), alpha], axis=-1).astype(np.float32)


def _segmenter_file(segmenter) -> Path | None:
    """The segmenter model to use (``segmenter``, else ``$DREAMGS_SEGMENTER``; False: none)."""
    from .segment import ENV_VAR, configured_segmenter

    model = configured_segmenter(segmenter)
    if model is not None and not model.is_file() and not (segmenter and str(segmenter).strip()):
        raise InputError(f"{model}: segmenter model file not found (set by ${ENV_VAR})")
    return model


def input_view(image, size: int = 256, recenter: bool = False, border_ratio: float = 0.2, mask=None,
               segmenter=None, segmenter_norm: str = "auto") -> np.ndarray:
    """The image-to-3D input view, RGBA (size, size, 4) float32.

    An image with transparency is used as framed (centred on a square canvas and resized), the
    way the reference implementation reads its ``*_rgba.png`` inputs, so a render of a known
    asset keeps its scale; ``recenter`` (or an image without alpha, or a mask) goes through
    :func:`preprocess` instead: cut out, centred, scaled to ``border_ratio``. ``segmenter`` and
    ``segmenter_norm``: see :func:`preprocess`.
    """
    seg = {"segmenter": segmenter, "segmenter_norm": segmenter_norm}
    if recenter or mask is not None:
        return preprocess(image, size=size, border_ratio=border_ratio, mask=mask, **seg)
    rgba = load_rgba(image) if isinstance(image, (str, os.PathLike)) else _as_float_image(image, "image")
    if rgba.shape[-1] != 4 or rgba[..., 3].min() >= 1.0:
        return preprocess(image, size=size, border_ratio=border_ratio, **seg)
    if object_bbox(rgba[..., 3], threshold=1e-6) is None:
        raise InputError(f"{image if isinstance(image, (str, os.PathLike)) else 'image'}: "
                         "the alpha channel or mask is empty (no object pixels)")
    H, W = rgba.shape[:2]
    alpha = rgba[..., 3:4]
    premult = np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1).astype(np.float32)
    out = _resample_to_canvas(premult, W / 2.0, H / 2.0, size / max(H, W), size)
    raw = out[..., 3:]
    color = np.where(raw > 1e-6, np.clip(out[..., :3] / np.maximum(raw, 1e-6), 0.0, 1.0), 0.0)
    alpha = np.clip(raw, 0.0, 1.0)
    return np.concatenate([np.where(alpha > 0, color, 0.0), alpha], axis=-1).astype(np.float32)


def prep_output_path(image: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``out``, or ``<stem>_rgba.png`` next to ``image``; never the input file itself."""
    image = Path(image)
    path = Path(out) if out is not None else image.with_name(f"{image.stem}_rgba.png")
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: the output must be a .png file (it has an alpha channel)")
    if path.exists() and image.exists() and path.resolve() == image.resolve():
        raise InputError(f"{path}: refusing to overwrite the input image; choose another --out")
    return path
