"""Output media: images, image grids and turntable videos.

Images are float arrays or tensors ``(H, W, C)`` with values in [0, 1] (uint8 is accepted too);
C is 1, 3 or 4. Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so an interrupted write never leaves a partial file under the final name.

Torch is imported only by the functions that render, so writing images (``dreamgs prep``) starts fast.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .atomic import atomic_output, temp_path
from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .cameras import Cameras

_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch: none exists before it is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(img) -> np.ndarray:
    """Tensor or array -> numpy array on the CPU (no copy when already numpy)."""
    if _is_tensor(img):
        return img.detach().to("cpu").numpy()
    return np.asarray(img)


def to_uint8(img) -> np.ndarray:
    """Float [0, 1] (clipped, rounded half up) or uint8 image -> uint8, same shape."""
    arr = to_numpy(img)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"image: expected float or uint8 pixels, got {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError("image: pixel values must be finite")
    return np.floor(np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | os.PathLike, img) -> Path:
    """Write an image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) as PNG (or JPEG), atomically."""
    path = Path(path)
    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unsupported image extension (use .png, or .jpg without alpha)")
    arr = to_uint8(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or 0 in arr.shape:
        raise InputError(f"{path}: expected an (H, W[, 1|3|4]) image, got shape {tuple(arr.shape)}")
    if fmt == "JPEG" and arr.ndim == 3 and arr.shape[-1] == 4:
        raise InputError(f"{path}: JPEG cannot store alpha; save RGBA images as .png")
    pil = Image.fromarray(np.ascontiguousarray(arr))
    with atomic_output(path) as tmp:
        pil.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 (H, W, 3), or (H, W, 4) if it has alpha, in [0, 1].

    Uses the same checks as input images (:func:`dreamgs.images.open_image`).
    """
    from .images import read_image

    return read_image(path)


# ------------------------------------------------------------------------------------------------
# Grids


def _stack_images(images) -> np.ndarray:
    """A (N, H, W, C) array/tensor or a sequence of (H, W, C) images -> float32 (N, H, W, C)."""
    if (isinstance(images, np.ndarray) or _is_tensor(images)) and to_numpy(images).ndim == 4:
        items = list(to_numpy(images))
    else:
        items = [to_numpy(im) for im in images]
    if not items:
        raise InputError("image_grid: no images given")
    shapes = {im.shape for im in items}
    if len(shapes) != 1:
        raise InputError(f"image_grid: all images must have the same shape, got {sorted(shapes)}")
    shape = items[0].shape
    if len(shape) != 3 or shape[-1] not in (1, 3, 4):
        raise InputError(f"image_grid: expected (H, W, C) images with C in 1, 3, 4, got {shape}")
    out = np.stack(items)
    return out.astype(np.float32) / 255.0 if out.dtype == np.uint8 else out.astype(np.float32)


def image_grid(images, ncols: int, pad: int = 0, pad_value: float = 1.0) -> np.ndarray:
    """Tile N equally sized images row by row into one float32 image.

    With cols = min(ncols, N) and rows = ceil(N / cols), image k sits at row k // cols, column
    k % cols, its top-left pixel at ((H + pad) * row, (W + pad) * column). ``pad`` pixels of
    ``pad_value`` separate the tiles (no outer border); unused cells of the last row are filled
    with ``pad_value``. The result is (rows*H + (rows-1)*pad, cols*W + (cols-1)*pad, C).
    """
    stack = _stack_images(images)
    if isinstance(ncols, bool) or int(ncols) != ncols or ncols < 1:
        raise InputError(f"image_grid: ncols must be a positive integer, got {ncols!r}")
    if int(pad) != pad or pad < 0:
        raise InputError(f"image_grid: pad must be a non-negative integer, got {pad!r}")
    n, h, w, c = stack.shape
    cols, pad = min(int(ncols), n), int(pad)
    rows = math.ceil(n / cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), pad_value, np.float32)
    for k in range(n):
        r, q = divmod(k, cols)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = stack[k]
    return out


def save_grid(path: str | os.PathLike, images, ncols: int, pad: int = 0, pad_value: float = 1.0) -> Path:
    """:func:`image_grid` written to ``path`` (PNG) with :func:`save_image`."""
    return save_image(path, image_grid(images, ncols, pad, pad_value))


# ------------------------------------------------------------------------------------------------
# Video


class VideoWriter:
    """Stream RGB frames into an H.264 ``.mp4`` (yuv420p) with the ffmpeg of imageio-ffmpeg.

    Frames are (H, W, 3) or batches (T, H, W, 3), float in [0, 1] or uint8; all the same size.
    Odd widths/heights are padded by repeating the last column/row (yuv420p needs even sizes).
    The video is encoded into a temporary file and moved onto ``path`` only by :meth:`close`;
    :meth:`abort` (or leaving the ``with`` block by an exception) deletes it.

    ``crf`` is x264's constant-rate factor: 0 is lossless, 18 is visually near-lossless,
    23 is x264's default; each +6 roughly halves the file size.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 30, crf: int = 18):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise InputError(f"{self.path}: the video file name must end in .mp4")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, expected an output file name")
        if not 0 <= int(crf) <= 51:
            raise InputError(f"crf: expected 0..51, got {crf!r}")
        if not fps > 0:
            raise InputError(f"fps: expected a positive number, got {fps!r}")
        self.fps, self.crf = Fraction(fps).limit_denominator(1001), int(crf)
        self.tmp = temp_path(self.path)
        self.frames = 0
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._done = False

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start(self, h: int, w: int) -> None:
        import imageio_ffmpeg

        self.path.parent.mkdir(parents=True, exist_ok=True)
        ew, eh = w + w % 2, h + h % 2
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{ew}x{eh}", "-r", str(self.fps), "-i", "-",
               "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(self.crf), "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", "-f", "mp4", str(self.tmp)]
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self._size = (h, w)

    def _ffmpeg_error(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace").strip()

    def write(self, frames) -> None:
        """Append one frame (H, W, 3) or a batch (T, H, W, 3)."""
        if self._done:
            raise RuntimeError("VideoWriter is closed")
        arr = to_uint8(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape[1:3]:
            raise InputError(f"{self.path}: video frames must be (H, W, 3) or (T, H, W, 3) RGB, "
                             f"got shape {tuple(to_numpy(frames).shape)}")
        h, w = arr.shape[1:3]
        if self._proc is None:
            self._start(h, w)
        elif (h, w) != self._size:
            raise InputError(f"{self.path}: frame size {w}x{h} differs from the first frame's "
                             f"{self._size[1]}x{self._size[0]}")
        if h % 2 or w % 2:
            arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(arr).tobytes())
        except OSError:  # ffmpeg exited early (a broken pipe)
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            msg = self._ffmpeg_error()
            self.abort()
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {msg}") from None
        self.frames += arr.shape[0]

    def close(self) -> Path:
        """Finish encoding and move the video into place. Returns the path."""
        if self._done:
            return self.path
        if self._proc is None:
            self._done = True
            raise InputError(f"{self.path}: no frames were written; not creating an empty video")
        try:
            self._proc.stdin.close()
        except OSError:  # ffmpeg already exited; its exit status below says why
            pass
        rc = self._proc.wait()
        self._done = True
        if rc != 0 or not self.tmp.is_file():
            msg = self._ffmpeg_error()
            self._cleanup()
            raise RuntimeError(f"ffmpeg failed (exit {rc}) writing {self.path}: {msg}")
        os.replace(self.tmp, self.path)
        self._cleanup()
        return self.path

    def abort(self) -> None:
        """Stop encoding and delete the partial file; ``path`` is left untouched."""
        self._done = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmp.exists():
            self.tmp.unlink()


def write_video(frames: Iterable, path: str | os.PathLike, fps: float = 30, crf: int = 18) -> Path:
    """Write frames to an H.264 ``.mp4`` atomically; see :class:`VideoWriter`.

    ``frames``: a (T, H, W, 3) array/tensor, or an iterable of (H, W, 3) frames or batches.
    """
    if (isinstance(frames, np.ndarray) or _is_tensor(frames)) and to_numpy(frames).ndim == 4:
        frames = [frames]
    with VideoWriter(path, fps=fps, crf=crf) as writer:
        for f in frames:
            writer.write(f)
    return writer.path


# ------------------------------------------------------------------------------------------------
# Turntables


RenderFn = Callable[["Cameras"], "torch.Tensor | np.ndarray"]


def gaussian_render_fn(model, background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto") -> RenderFn:
    """A ``render_fn`` for :func:`turntable` that renders Gaussians with :func:`dreamgs.render.render`."""
    import torch

    from .render import render

    def render_fn(cams: Cameras) -> torch.Tensor:
        with torch.no_grad():
            return render(model, cams, background=background, backend=backend).rgb.clamp(0.0, 1.0)

    return render_fn


def turntable(render_fn: RenderFn, path: str | os.PathLike, frames: int = 90, size: int = 512,
              elevation: float = 0.0, radius: float = 2.5, fovy: float = 49.1, batch: int = 8,
              fps: float = 30, crf: int = 18, progress: bool | None = None) -> Path:
    """Render a full orbit and write it as an ``.mp4``.

    Cameras come from :func:`dreamgs.cameras.orbit_views`: ``frames`` views evenly spaced in
    azimuth starting at 0 (so the video loops), at ``elevation`` degrees (negative = above the
    object), ``radius`` from the origin, vertical field of view ``fovy`` degrees, square
    ``size`` pixels. ``render_fn(cams)`` must return (C, size, size, 3) images in [0, 1] for a
    batch of at most ``batch`` cameras; it can render Gaussians (:func:`gaussian_render_fn`) or
    meshes. ``progress``: a progress bar, or plain lines where stderr is not a terminal (see
    :mod:`dreamgs.progress`); default: a bar when stderr is a terminal, else nothing.
    """
    from .cameras import orbit_views
    from .progress import Progress, is_terminal

    if frames < 1 or batch < 1:
        raise InputError(f"turntable: frames and batch must be positive, got {frames} and {batch}")
    cams = orbit_views(frames, elevation, radius, fovy, size)
    show = is_terminal() if progress is None else progress
    with VideoWriter(path, fps=fps, crf=crf) as writer, \
            Progress(f"video {Path(path).name}", frames, "frames", enabled=show) as bar:
        for i in range(0, frames, batch):
            chunk = cams[i:i + batch]
            imgs = render_fn(chunk)
            shape = tuple(imgs.shape)
            if shape != (len(chunk), size, size, 3):
                raise ValueError(f"render_fn returned shape {shape}, expected {(len(chunk), size, size, 3)}")
            writer.write(imgs)
            bar.update(len(chunk))
    return writer.path
