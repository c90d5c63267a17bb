"""Bad input, table-driven: every case goes through the CLI and through the Python API.

Each must give a one-line error naming the problem, a non-zero exit status, no traceback (unless
``--debug``), and no outputs: the run folder is created only after every input has been checked,
so a rejected run leaves nothing under the output folder.
"""

import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from dreamgs.cli import main
from dreamgs.errors import DreamGSError
from dreamgs.pipeline import generate

ROOT = Path(__file__).resolve().parents[1]
# Tiny settings, so that a case that wrongly passes validation still finishes quickly (and fails).
TINY = ["stage1.iters=2", "stage1.render_sizes=[16]", "stage1.size_milestones=[]", "gaussians.num_points=50",
        "prior.oracle_azimuths=4", "prior.oracle_elevations=[0]", "prior.oracle_resolution=16", "export.video=false",
        "stage2.enabled=false", "device=cpu", "stage1.ref_size=32"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Case:
    """One bad input: text (``prompt``) or image (``image``) mode; ``expect`` must be in the message."""

    id: str
    expect: str
    prompt: str | None = "a mug"
    image: str | None = None
    prior: str = "oracle"
    overrides: list[str] = field(default_factory=list)
    config: str | None = None
    out: str | None = None  # default: <tmp>/out
    run_dir: str | None = None  # --run-dir / run_dir=, instead of out
    skip: str | None = None
    patch: Callable | None = None  # patch(monkeypatch): simulate a condition the test process cannot create


def _png_with_size(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (its data is for 1 x 1); IHDR CRC kept valid."""
    Image.new("RGBA", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = 8  # after the signature: length (4), b"IHDR" (4), data (13), crc (4)
    raw[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    raw[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr + 4:ihdr + 21])))
    path.write_bytes(bytes(raw))


FILES = ["a_dir.png", "text.png", "zero.png", "good.png", "truncated.png", "huge.png", "big.png", "rgb.jpg",
         "transparent.png", "locked.png", "unknown_key.yaml", "wrong_type.yaml", "syntax.yaml", "list.yaml",
         "no_props.ply", "gs.ply", "truncated.ply", "bad.glb", "fake_gltf.glb", "a_file"]


def _files(d: Path) -> None:
    """The bad input files every case refers to by name."""
    (d / "a_dir.png").mkdir()
    (d / "text.png").write_text("this is not an image\n")
    (d / "zero.png").write_bytes(b"")
    good = d / "good.png"
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = 200
    Image.fromarray(rgba).save(good)
    (d / "truncated.png").write_bytes(good.read_bytes()[:60])
    _png_with_size(d / "huge.png", 100_000, 100_000)
    _png_with_size(d / "big.png", 9000, 9000)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(d / "rgb.jpg")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(d / "transparent.png")
    locked = d / "locked.png"
    locked.write_bytes(good.read_bytes())
    locked.chmod(0)
    (d / "unknown_key.yaml").write_text("stage1:\n  itres: 10\n")
    (d / "wrong_type.yaml").write_text("stage1:\n  iters: many\n")
    (d / "syntax.yaml").write_text("stage1: [unclosed\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    ply = ("ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
           "property float z\nend_header\n").encode()
    (d / "no_props.ply").write_bytes(ply + np.zeros(6, "<f4").tobytes())
    from dreamgs.gaussians import GaussianModel, save_ply

    save_ply(GaussianModel.random_ball(20), d / "gs.ply")
    (d / "truncated.ply").write_bytes((d / "gs.ply").read_bytes()[:-100])
    (d / "bad.glb").write_bytes(b"PK\x03\x04 this is a zip file, not a glb")
    (d / "fake_gltf.glb").write_bytes(b"glTF\x02\x00\x00\x00" + b"\x00" * 12)
    (d / "a_file").write_text("x")


def _deny_reading(monkeypatch, name: str = "locked.png") -> None:
    """Opening ``name`` fails with EACCES, as for a file without read permission (root reads anything)."""
    import builtins

    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith(name):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", guarded_open)


CASES = [
    Case("missing-image", "input image not found", image="missing.png"),
    Case("image-is-a-directory", "is a directory", image="a_dir.png"),
    Case("unreadable-image", "Permission denied", image="locked.png",
         skip="root can read any file" if IS_ROOT else None),
    Case("unreadable-image-simulated", "cannot read image (Permission denied)", image="locked.png",
         patch=_deny_reading),
    Case("not-an-image", "not an image file", image="text.png"),
    Case("zero-byte-image", "empty file (0 bytes)", image="zero.png"),
    Case("truncated-image", "corrupt or truncated", image="truncated.png"),
    Case("huge-image-bomb", "above the limit", image="huge.png"),
    Case("image-above-the-cap", "above the limit of 64 megapixels", image="big.png"),
    Case("no-alpha-no-rembg", "no transparency", image="rgb.jpg"),
    Case("empty-alpha", "alpha channel or mask is empty", image="transparent.png"),
    Case("empty-prompt", "the prompt is empty", prompt=""),
    Case("whitespace-prompt", "the prompt is empty", prompt="  \t\n  "),
    Case("10k-prompt", "characters long", prompt="a mug " * 1667),
    Case("yaml-unknown-key", "unknown config key 'stage1.itres'", config="unknown_key.yaml"),
    Case("yaml-wrong-type", "stage1.iters: expected an integer", config="wrong_type.yaml"),
    Case("yaml-syntax", "is not valid YAML", config="syntax.yaml"),
    Case("yaml-not-a-mapping", "must contain a mapping", config="list.yaml"),
    Case("config-file-missing", "config file not found", config="missing.yaml"),
    Case("override-unknown-key", "unknown config key 'stage1.itres'", overrides=["stage1.itres=3"]),
    Case("override-wrong-type", "stage1.iters: expected an integer", overrides=["stage1.iters=lots"]),
    Case("override-bad-list", "stage1.render_sizes[0]: expected an integer", overrides=["stage1.render_sizes=[a]"]),
    Case("override-no-equals", "not of the form key=value", overrides=["stage1.iters"]),
    Case("override-out-of-range", "stage1.iters must be at least 1", overrides=["stage1.iters=0"]),
    Case("negative-seed", "seed must be a non-negative integer", overrides=["seed=-1"]),
    Case("unknown-device", "device: unknown device 'gpu0'", overrides=["device=gpu0"]),
    Case("unknown-prior", "unknown kind 'dall-e'", prior="dall-e"),
    Case("oracle-unknown-asset", "neither a built-in asset", prior="oracle:no_such_asset"),
    Case("oracle-truncated-ply", "truncated", prior="oracle:truncated.ply"),
    Case("oracle-ply-missing-properties", "missing 3DGS vertex properties", prior="oracle:no_props.ply"),
    Case("oracle-glb-not-glb", "not a binary glTF", prior="oracle:bad.glb"),
    Case("oracle-glb-garbage", "fake_gltf.glb", prior="oracle:fake_gltf.glb"),
    Case("output-under-a-file", "cannot be created: a_file is not a folder", out="a_file/out"),
    Case("run-dir-is-a-file", "exists and is not a folder", run_dir="a_file"),
    Case("output-not-writable", "is not writable", out="/proc/dreamgs-out"),
]


def _overrides(case: Case) -> list[str]:
    kind, _, asset = case.prior.partition(":")
    ov = [f"prior.kind={kind}"] + ([f"prior.asset={asset}"] if asset else [])
    return TINY + ov + case.overrides


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)  # case files are named relative to here
    monkeypatch.setattr("dreamgs.images.rembg_available", lambda: False)
    return tmp_path


def _check_message(msg: str, case: Case) -> None:
    assert case.expect in msg, msg
    assert "\n" not in msg.strip() and "Traceback" not in msg


def _no_outputs(workdir: Path, case: Case) -> None:
    out = workdir / "out"
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert sorted(p.name for p in workdir.iterdir()) == sorted(FILES), "a rejected run left files behind"
    leftovers = [p for p in workdir.rglob("*") if p.name.startswith(".dreamgs-write-test") or ".tmp-" in p.name]
    assert not leftovers


def _argv(case: Case, debug: bool = False) -> list[str]:
    argv = (["--debug"] if debug else []) + (["image", case.image] if case.image else ["text", case.prompt])
    argv += _overrides(case) + (["--run-dir", case.run_dir] if case.run_dir else ["--out", case.out or "out"])
    argv += ["--quiet"]
    if case.config:
        argv += ["--config", case.config]
    return argv


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(case, workdir, capsys, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    if case.patch:
        case.patch(monkeypatch)
    rc = main(_argv(case))
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip()
    assert err.startswith(f"dreamgs {'image' if case.image else 'text'}: error: ")
    _check_message(err, case)
    assert captured.out == ""
    _no_outputs(workdir, case)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_python_api(case, workdir, monkeypatch):
    if case.skip:
        pytest.skip(case.skip)
    if case.patch:
        case.patch(monkeypatch)
    with pytest.raises(DreamGSError) as err:
        generate(None if case.image else case.prompt, image=case.image, config=case.config,
                 overrides=_overrides(case), output_dir=case.out or "out", run_dir=case.run_dir, progress=False)
    _check_message(str(err.value), case)
    _no_outputs(workdir, case)


def test_run_dir_is_not_created_for_a_rejected_run(workdir):
    with pytest.raises(DreamGSError, match="not found"):
        generate(image="missing.png", overrides=TINY + ["prior.kind=oracle"], run_dir="runs/exact", progress=False)
    assert not (workdir / "runs").exists()


def test_debug_shows_the_traceback(workdir):
    case = next(c for c in CASES if c.id == "override-unknown-key")
    with pytest.raises(DreamGSError, match="unknown config key"):
        main(_argv(case, debug=True))


def test_real_process_prints_one_line_and_exits_2(workdir):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = subprocess.run([sys.executable, "-m", "dreamgs", "text", "   ", "--prior", "oracle", "--out", "out"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "the prompt is empty" in res.stderr
    assert "Traceback" not in res.stderr and not (workdir / "out").exists()


# ------------------------------------------------------------------------------------------------
# dreamgs mesh SOURCE (stage 2 on a run folder or a .ply)


@dataclass
class MeshCase:
    id: str
    expect: str
    source: str
    argv: list[str] = field(default_factory=list)  # extra CLI arguments
    overrides: list[str] = field(default_factory=list)
    out: str | None = None


MESH_TINY = ["device=cpu", "mesh.grid_resolution=16", "texture.size=32", "texture.bake_views=2",
             "texture.bake_resolution=32", "export.video=false", "stage2.iters=1", "stage2.render_size=16"]
MESH_CASES = [
    MeshCase("glb-is-not-a-source", "expected a run folder or a 3DGS .ply file", "bad.glb"),
    MeshCase("missing-ply", "file not found", "missing.ply"),
    MeshCase("truncated-ply", "truncated", "truncated.ply"),
    MeshCase("ply-missing-properties", "missing 3DGS vertex properties", "no_props.ply"),
    MeshCase("folder-is-not-a-run", "not a dreamgs run folder", "a_dir.png"),
    MeshCase("unknown-override", "unknown config key 'mesh.grid'", "gs.ply", overrides=["mesh.grid=3"]),
    MeshCase("unknown-prior-for-refinement", "unknown kind 'nope'", "gs.ply",
             overrides=["prompt=a mug", "prior.kind=nope"]),
    MeshCase("out-under-a-file", "cannot be created: a_file is not a folder", "gs.ply", out="a_file/m"),
]


@pytest.mark.parametrize("case", MESH_CASES, ids=[c.id for c in MESH_CASES])
def test_mesh_command(case, workdir, capsys):
    from dreamgs.cli import COMMANDS
    from dreamgs.pipeline import mesh_from

    if "mesh" not in COMMANDS:
        pytest.skip("no dreamgs mesh command")
    argv = ["mesh", case.source, *MESH_TINY, *case.overrides, "--quiet"] + (["--out", case.out] if case.out else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dreamgs mesh: error: ")
    _check_message(err, Case(case.id, case.expect))
    with pytest.raises(DreamGSError) as e:
        mesh_from(case.source, overrides=MESH_TINY + case.overrides, out_dir=case.out, progress=False)
    _check_message(str(e.value), Case(case.id, case.expect))
    assert sorted(p.name for p in workdir.iterdir()) == sorted(FILES), "a rejected run left files behind"
