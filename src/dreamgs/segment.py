"""Cut-outs from a local salient-object model (IS-Net / U²-Net style ONNX) through onnxruntime.

The model is a file the user supplies (``dreamgs prep IMAGE --segmenter MODEL.onnx``,
``prep.segmenter=`` in a config, or ``$DREAMGS_SEGMENTER``); nothing is downloaded. onnxruntime
is optional (``pip install 'dreamgs[segment]'``) and imported only when a model is used.

What the model must look like: one image input of shape ``1 x 3 x H x W`` (float) and, as its
first output (or the one named ``output``), a saliency map ``1 x 1 x H x W`` (or ``1 x H x W``).
This covers IS-Net/DIS (1024², e.g. rembg's isnet-general-use or the imgly package) and U²-Net
(320², rembg's u2net/u2netp/silueta).

Normalisation of the RGB input ``x`` in [0, 255] (``norm``):

- ``isnet``: ``x / 255 - 0.5`` (IS-Net/DIS);
- ``imagenet``: ``(x / 255 - mean) / std`` with ImageNet's mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225) (U²-Net);
- ``auto`` (default): ``isnet`` when the model's input side is 1024 px or more, or not fixed
  (then it runs at 1024 px); ``imagenet`` otherwise. Models outside this rule (e.g. a 1024-px
  model trained with ImageNet statistics) need the explicit choice.

The map is min-max normalised to [0, 1] (as these models need), resized to the image size and used
as a soft alpha; only the largest connected object (alpha >= 0.5, with its soft edge) is kept.

Where rembg is installed (it comes with ``dreamgs[segment]``) and the model fits one of its
custom-model sessions, rembg runs it: ``dis_custom`` for a 1024 x 1024 model with ``isnet``
normalisation, ``u2net_custom`` for a 320 x 320 model with ``imagenet`` normalisation. Those
sessions do the same pre- and post-processing as above (rembg scales by the image's maximum
instead of 255, resizes with Lanczos and returns an 8-bit map). Other models (other or dynamic
sizes, or another normalisation) run through onnxruntime directly with the code below.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DreamGSError, InputError

ENV_VAR = "DREAMGS_SEGMENTER"
NORMS = ("auto", "isnet", "imagenet")
DYNAMIC_SIZE = 1024  # input side used when the model's input size is not fixed
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_EXPECTED = "expected a salient-object model with one 1x3xHxW float image input and a 1x1xHxW saliency output"
_sessions: dict[tuple, object] = {}


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def rembg_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rembg") is not None


# rembg's custom-model sessions and the models they fit: (input size, normalisation) -> session name.
REMBG_SESSIONS = {((1024, 1024), "isnet"): "dis_custom", ((320, 320), "imagenet"): "u2net_custom"}


def configured_segmenter(path: str | os.PathLike | bool | None = None) -> Path | None:
    """The model to use: ``path`` if given (non-empty), else ``$DREAMGS_SEGMENTER``, else None;
    ``path=False`` means none."""
    if path is False:
        return None
    if path is not None and str(path).strip():
        return Path(os.path.expanduser(str(path).strip()))
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(os.path.expanduser(env)) if env else None


def _dims(shape) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) if shape is not None else "?"


class Segmenter:
    """A loaded model: its input name/size, output name and normalisation."""

    def __init__(self, path: str | os.PathLike, norm: str = "auto", use_rembg: bool = True):
        if norm not in NORMS:
            raise InputError(f"segmenter norm: expected auto, isnet or imagenet, got {norm!r}")
        self.path = path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: segmenter model file not found" if not path.exists()
                             else f"{path}: expected an .onnx model file")
        try:
            import onnxruntime as ort
        except ImportError:
            raise DreamGSError("the segmenter needs onnxruntime: pip install 'dreamgs[segment]' "
                               "(or pip install onnxruntime)") from None
        key = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
        session = _sessions.get(key)
        if session is None:
            try:
                opts = ort.SessionOptions()
                opts.log_severity_level = 3  # errors only
                session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            except Exception as e:
                msg = " ".join(str(e).split())[:200]
                raise InputError(f"{path}: not an ONNX model onnxruntime can load ({type(e).__name__}: {msg})") from None
            _sessions.clear()  # keep one model in memory
            _sessions[key] = session
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise InputError(f"{path}: {_EXPECTED}; it has {len(inputs)} inputs")
        inp = inputs[0]
        shape = inp.shape
        if (shape is None or len(shape) != 4 or shape[1] != 3 or (isinstance(shape[0], int) and shape[0] != 1)
                or inp.type != "tensor(float)"):
            raise InputError(f"{path}: {_EXPECTED}; its input '{inp.name}' is {_dims(shape)} {inp.type}")
        h, w = shape[2], shape[3]
        fixed = isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
        self.size = (h, w) if fixed else (DYNAMIC_SIZE, DYNAMIC_SIZE)
        out = next((o for o in outputs if o.name == "output"), outputs[0] if outputs else None)
        if out is None:
            raise InputError(f"{path}: {_EXPECTED}; it has no outputs")
        oshape = out.shape
        if not self._output_ok(oshape, allow_symbolic=True):
            raise InputError(f"{path}: {_EXPECTED}; its output '{out.name}' is {_dims(oshape)}")
        self.input_name, self.output_name = inp.name, out.name
        self.norm = norm if norm != "auto" else ("isnet" if min(self.size) >= 1024 or not fixed else "imagenet")
        self.rembg_session = None  # rembg's custom-model session, where the model fits one
        # rembg's sessions read the first output as 1 x 1 x H x W.
        fits = fixed and use_rembg and out.name == outputs[0].name and oshape is not None and len(oshape) == 4
        name = REMBG_SESSIONS.get((self.size, self.norm)) if fits else None
        if name and rembg_available():
            rkey = (name,) + key
            self.rembg_session = _sessions.get(rkey)
            if self.rembg_session is None:
                self.rembg_session = _rembg_session(name, path)
                _sessions[rkey] = self.rembg_session

    @property
    def engine(self) -> str:
        """What runs the model: rembg's session name, or ``onnxruntime``."""
        return self.rembg_session.name() if self.rembg_session is not None else "onnxruntime"

    def _output_ok(self, shape, allow_symbolic: bool = False) -> bool:
        if shape is None:
            return allow_symbolic
        shape = list(shape)
        if len(shape) not in (3, 4):
            return False
        ok = lambda d, v: d == v or (allow_symbolic and not isinstance(d, int))  # noqa: E731
        lead = shape[:-2]
        if not all(ok(d, 1) for d in lead):
            return False
        if allow_symbolic:
            return all(not isinstance(d, int) or d > 0 for d in shape[-2:])
        return shape[-2:] == list(self.size)

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """RGB float (H, W, 3) in [0, 1] -> the normalised (1, 3, h, w) float32 model input."""
        h, w = self.size
        img = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
        x = np.asarray(img.resize((w, h), Image.BILINEAR), np.float32) / 255.0
        x = x - 0.5 if self.norm == "isnet" else (x - _IMAGENET_MEAN) / _IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)

    def saliency(self, rgb: np.ndarray) -> np.ndarray:
        """The model's map for ``rgb`` at the model's size, min-max normalised to [0, 1]."""
        try:
            pred = self.session.run([self.output_name], {self.input_name: self.model_input(rgb)})[0]
        except Exception as e:
            msg = " ".join(str(e).split())[:200]
            raise InputError(f"{self.path}: running the segmenter failed ({type(e).__name__}: {msg}); {_EXPECTED}") \
                from None
        pred = np.asarray(pred)
        if not self._output_ok(pred.shape):
            raise InputError(f"{self.path}: {_EXPECTED} of the input's size {self.size[0]}x{self.size[1]}; "
                             f"its output '{self.output_name}' is {_dims(pred.shape)}")
        pred = pred.reshape(self.size).astype(np.float32)
        if not np.isfinite(pred).all():
            raise InputError(f"{self.path}: the segmenter's output has non-finite values")
        lo, hi = float(pred.min()), float(pred.max())
        return (pred - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(pred)

    def alpha(self, rgb: np.ndarray) -> np.ndarray:
        """Soft alpha (H, W) in [0, 1] for ``rgb`` (H, W, 3), largest object only."""
        H, W = rgb.shape[:2]
        if self.rembg_session is not None:
            img = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
            try:
                mask = self.rembg_session.predict(img)[0]
            except Exception as e:
                msg = " ".join(str(e).split())[:200]
                raise InputError(f"{self.path}: running the segmenter (rembg {self.engine}) failed "
                                 f"({type(e).__name__}: {msg}); {_EXPECTED}") from None
            sal = np.asarray(mask.convert("L"), np.float32) / 255.0
        else:
            sal = np.asarray(Image.fromarray(self.saliency(rgb), "F").resize((W, H), Image.BILINEAR), np.float32)
        return largest_component(np.clip(sal, 0.0, 1.0))


def _rembg_session(name: str, path: Path):
    """rembg's custom-model session ``name`` for the model file ``path``, wherever it is.

    rembg (2.0.7x and later) accepts custom models only inside its own model folder, a guard for
    its web server, where the path comes from a request. Here the user names the file themselves,
    so the session class's model lookup (``download_models``, the hook every rembg session
    defines) is given the file as it is."""
    import onnxruntime as ort
    from rembg.sessions import sessions

    base = sessions[name]

    class LocalFile(base):
        @classmethod
        def download_models(cls, *args, **kwargs):
            return kwargs["model_path"]

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return LocalFile(name, opts, model_path=str(path), providers=["CPUExecutionProvider"])


def largest_component(alpha: np.ndarray, threshold: float = 0.5, edge: float = 1.0 / 255.0) -> np.ndarray:
    """Keep the largest 8-connected region of ``alpha >= threshold`` and the soft edge around it.

    The soft edge is the part of ``alpha >= edge`` connected to that region; other regions at or
    above ``threshold`` are cleared even where a faint haze joins them to it.
    """
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    core, n = ndimage.label(alpha >= threshold, structure=eight)
    if n <= 1:
        keep_core = core > 0
    else:
        sizes = np.bincount(core.ravel())[1:]
        keep_core = core == (int(np.argmax(sizes)) + 1)
    if not keep_core.any():
        return alpha.astype(np.float32)
    support, _ = ndimage.label(alpha >= edge, structure=eight)
    ids = np.unique(support[keep_core])
    keep = np.isin(support, ids[ids > 0]) & ((core == 0) | keep_core)
    return np.where(keep, alpha, 0.0).astype(np.float32)


def segment_alpha(rgb: np.ndarray, model: str | os.PathLike, norm: str = "auto") -> np.ndarray:
    """Soft alpha (H, W) of the salient object in ``rgb`` (H, W, 3) float in [0, 1] from ``model``."""
    return Segmenter(model, norm).alpha(rgb)


def segmenter_status(path: str | os.PathLike | None = None) -> str:
    """One line for ``dreamgs info``: the configured model (``$DREAMGS_SEGMENTER``) and onnxruntime."""
    ort = ("onnxruntime and rembg installed" if rembg_available() else "onnxruntime installed") \
        if onnxruntime_available() else "onnxruntime not installed: pip install 'dreamgs[segment]'"
    model = configured_segmenter(path)
    if model is None:
        from .images import rembg_model_path

        rembg = rembg_model_path()
        usable = f"; rembg's model {rembg} is on disk: --segmenter {rembg}" if rembg.is_file() else ""
        return f"not configured (prep --segmenter MODEL.onnx or ${ENV_VAR}){usable}; {ort}"
    return f"{model} ({'found' if model.is_file() else 'not found'}, from ${ENV_VAR}); {ort}"
