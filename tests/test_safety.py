"""Safe loading, checked on the source tree: no unpickling, weights only through safetensors, no
remote code; and the web app's defaults (localhost only, upload cap, writes in its work folder)."""

import ast
import inspect
from pathlib import Path

import pytest
from optional import need

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("src", "benchmarks")  # what runs on users' files; tests may build pickles as traps
# Loaders whose from_pretrained reads JSON/text files only; every other from_pretrained reads weights.
NON_WEIGHT_LOADERS = ("Tokenizer", "TokenizerFast", "Scheduler", "Processor", "FeatureExtractor", "Config")


def _attr_chain(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "?")  # "?": an expression, e.g. a call's result
    return ".".join(reversed(parts))


def _kw_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Problems in ``source``: each as 'file:line: what'."""
    problems = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve", "marshal")
                   for n in names):
                problems.append(f"{filename}:{node.lineno}: imports an unpickler")
        if not isinstance(node, ast.Call):
            continue
        name = _attr_chain(node.func)
        where = f"{filename}:{node.lineno}"
        if name == "torch.load" and not _kw_is(node, "weights_only", True):
            problems.append(f"{where}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load") and not _kw_is(node, "allow_pickle", False) and \
                any(k.arg == "allow_pickle" for k in node.keywords):
            problems.append(f"{where}: np.load with allow_pickle")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            problems.append(f"{where}: {name} (use yaml.safe_load)")
        if name in ("eval", "exec"):
            problems.append(f"{where}: {name}")
        for k in node.keywords:
            if k.arg == "trust_remote_code" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                problems.append(f"{where}: trust_remote_code")
            if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                problems.append(f"{where}: subprocess with shell=True")
        # from_pretrained of a weights-holding class, called directly or handed to a loader helper.
        for target in [node.func] + list(node.args):
            chain = _attr_chain(target)
            if chain.endswith(".from_pretrained"):
                cls = chain.split(".")[-2]
                if not cls.endswith(NON_WEIGHT_LOADERS) and not _kw_is(node, "use_safetensors", True):
                    problems.append(f"{where}: {chain} without use_safetensors=True")
    return problems


def test_the_checker_finds_what_it_looks_for():
    bad = """
import pickle
import torch, yaml
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
yaml.load(open("a"))
m = AutoModel.from_pretrained("id", trust_remote_code=True)
u = load(UNet2DConditionModel.from_pretrained, "unet")
subprocess.run("ls", shell=True)
"""
    found = unsafe_calls(bad)
    assert len(found) == 8, found
    good = """
import torch, yaml
torch.load("x.pt", weights_only=True)
yaml.safe_load(open("a"))
tok = load(CLIPTokenizer.from_pretrained, "tokenizer")
u = load(UNet2DConditionModel.from_pretrained, "unet", use_safetensors=True)
"""
    assert unsafe_calls(good) == []


def test_source_tree_loads_nothing_unsafely():
    files = [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    problems = [msg for p in files for msg in unsafe_calls(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert problems == []


def test_checkpoints_hold_no_pickles(tmp_path):
    """A checkpoint is a safetensors file: a JSON header and raw tensor bytes, nothing executable."""
    import json
    import struct

    import torch

    from dreamgs.checkpoint import save_checkpoint
    from dreamgs.config import Config, to_dict
    from dreamgs.gaussians import GaussianModel
    from dreamgs.train import GaussianTrainer

    cfg = Config()
    trainer = GaussianTrainer(GaussianModel.random_ball(4), cfg.gaussians, cfg.densify, seed=0)
    path = save_checkpoint(tmp_path / "c.safetensors", stage="stage1", config=to_dict(cfg), trainer=trainer)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert set(header["__metadata__"]) == {"dreamgs"} and json.loads(header["__metadata__"]["dreamgs"])["version"]
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    assert 8 + n + max(ends) == len(raw)  # nothing after the tensors
    assert b"\x80\x04" not in raw[:8 + n] and torch.__version__  # no pickle protocol marker in the header


# ------------------------------------------------------------------------------------------------
# The web app (dreamgs.app): tested through its public functions


def _app():
    return need("dreamgs.app")  # needs gradio (the app extra)


def test_app_listens_on_localhost_by_default():
    app = _app()
    assert app.DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(app.launch_app).parameters["host"].default == "127.0.0.1"
    from dreamgs.cli import COMMANDS, build_parser

    if "app" in COMMANDS:
        assert build_parser().parse_args(["app"]).host == "127.0.0.1"


def test_app_caps_uploads_and_keeps_them_in_its_work_folder(tmp_path):
    app = _app()
    from dreamgs.errors import InputError

    settings = app.AppSettings(tmp_path / "work", max_upload_mb=1)
    for folder in (settings.runs, settings.uploads, settings.cache, settings.tmp):
        assert folder.resolve().is_relative_to(settings.workdir)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(InputError, match="limit"):
        app.stage_upload(big, settings.uploads, max_bytes=2**20)
    small = tmp_path / "small.png"
    small.write_bytes(b"png")
    for name in ("../../../etc/evil.png", "/abs/evil.png", "..\\..\\evil.png", "", ".."):
        dest = app.stage_upload(small, settings.uploads, max_bytes=2**20, name=name)
        assert dest.resolve().is_relative_to(settings.uploads.resolve())
    assert not (tmp_path / "etc").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "small.png",
                                                                                              "work"]
