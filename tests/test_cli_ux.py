"""CLI comfort: help for every option, --version, `dreamgs info`, overrides after options, and the
missing-weights messages of `dreamgs text`/`image` (naming the model and the remedy)."""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from tiny_models import build_tiny_sd

from dreamgs import __version__
from dreamgs.cli import COMMANDS, build_parser, main
from dreamgs.info import DEFAULT_MODELS, info_text, prior_status


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """Offline, with an empty Hugging Face cache and no rembg model."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-empty"))
    return hub


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_option_has_help(capsys):
    parser = build_parser()
    subs = subparsers(parser)
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            assert action.help and action.help.strip(), f"dreamgs {name}: {action.option_strings or action.dest}"
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: dreamgs {name}")
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dreamgs {__version__}"


def test_overrides_may_follow_options(capsys):
    # stage1.iters=0 is only rejected if the override reached the config.
    assert main(["text", "a mug", "--prior", "oracle", "--quiet", "stage1.iters=0"]) == 2
    assert "stage1.iters must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["text", "a mug", "--prior", "oracle", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_info_without_weights_names_models_and_remedy(empty_cache, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "device:" in out and "render backend:" in out and "torch" in out
    assert "oracle          yes (built in)" in out
    for kind, model in DEFAULT_MODELS.items():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(kind + " "))
        assert f"no: {kind} weights '{model}' not found: not in the Hugging Face cache ({empty_cache})" in line
        assert "prior.model=/path/to/folder" in line and "HF_HOME" in line
    assert f"hub cache:      {empty_cache}" in out
    assert "rembg model:" in out and "(not found)" in out


def _fake_hub_snapshot(hub, model_id, source):
    """Lay out ``source`` as the cached snapshot of ``model_id`` (the hub cache's folder layout)."""
    repo = hub / f"models--{model_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_info_finds_cached_and_local_weights(empty_cache, tmp_path, capsys):
    folder = build_tiny_sd(tmp_path / "tiny-sd")
    snap = _fake_hub_snapshot(empty_cache, DEFAULT_MODELS["sd"], folder)
    status = prior_status("sd")
    assert status.found and status.folder == snap
    assert not prior_status("zero123").found
    assert main(["info", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"sd              yes: {DEFAULT_MODELS['sd']} ({snap})" in out
    assert f"--model {folder}:\n  usable as the sd prior ({folder})" in out


def test_info_model_folder_that_is_not_usable(empty_cache, tmp_path):
    text = info_text(str(tmp_path))
    assert f"not usable: sd weights '{tmp_path}' not found: the folder has no 'tokenizer/' component" in text
    assert f"not usable: zero123 weights '{tmp_path}' not found: the folder has no 'unet/' component" in text


def test_text_with_sd_and_no_weights_names_model_and_remedy(empty_cache, tmp_path, capsys):
    code = main(["text", "a ceramic mug", "--prior", "sd", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("dreamgs text: error: sd weights 'stabilityai/stable-diffusion-2-1-base' not found: "
                          f"not in the local Hugging Face cache ({empty_cache}), and offline mode is set (HF_HUB_OFFLINE=1)")
    assert "supply the weights with prior.model=/path/to/folder" in err and "HF_HOME" in err
    assert "Got:" not in err and "error happened" not in err  # none of the hub library's own text


def test_missing_weights_without_network_say_so_in_our_words(empty_cache, monkeypatch):
    from huggingface_hub import constants

    from dreamgs.errors import ModelNotFoundError
    from dreamgs.priors.weights import SD_COMPONENTS, resolve_model_folder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no network
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_folder("nobody/no-model", SD_COMPONENTS, "sd")
    msg = str(e.value)
    assert msg.startswith(f"sd weights 'nobody/no-model' not found: not in the local Hugging Face cache "
                          f"({empty_cache}), and the Hugging Face hub could not be reached (no network); "
                          "supply the weights with prior.model=/path/to/folder")
    assert "\n" not in msg and "HF_HOME" in msg and "Got:" not in msg and "ConnectError" not in msg


@pytest.mark.parametrize("kind, model", [("zero123", "ashawkey/zero123-xl-diffusers"),
                                         ("stable-zero123", "ashawkey/stable-zero123-diffusers")])
def test_image_with_zero123_and_no_weights_names_model_and_remedy(empty_cache, tmp_path, capsys, kind, model):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (90, 160, 220, 255)
    Image.fromarray(rgba).save(tmp_path / "obj.png")
    code = main(["image", str(tmp_path / "obj.png"), "--prior", kind, "--out", str(tmp_path / "out"), "--quiet",
                 "stage1.ref_size=32"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err  # no transformers warning before it
    assert err.startswith(f"dreamgs image: error: {kind} weights '{model}' not found")
    assert "supply the weights with prior.model=/path/to/folder" in err and "HF_HOME" in err


def test_app_rejects_bad_port_and_config_before_starting(tmp_path, capsys):
    assert main(["app", "--port", "70000", "--workdir", str(tmp_path / "w")]) == 2
    assert "--port: expected a TCP port" in capsys.readouterr().err
    assert main(["app", "--workdir", str(tmp_path / "w"), "stage1.iterz=3"]) == 2
    assert "unknown config key 'stage1.iterz'" in capsys.readouterr().err
    assert main(["app", "--workdir", str(tmp_path / "w"), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_app_listens_on_loopback_unless_told(tmp_path, capsys):
    args = build_parser().parse_args(["app"])
    assert (args.host, args.port, args.workdir) == ("127.0.0.1", 7860, "outputs/app")


def test_app_reports_a_busy_port(tmp_path, capsys, monkeypatch):
    import socket
    import tempfile

    for var in ("TMPDIR", "GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED"):  # the app sets these for its process
        monkeypatch.setenv(var, os.environ.get(var, ""))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--port", str(port), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"dreamgs app: error: cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err


def test_runs_get_named_folders_never_shared_and_one_final_line(tmp_path, capsys, monkeypatch):
    import datetime as dt

    import dreamgs.run

    class Frozen(dt.datetime):  # both runs start "in the same second"
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 20, 0, 0)

    monkeypatch.setattr(dreamgs.run._dt, "datetime", Frozen)
    tiny = ["prior.oracle_azimuths=8", "prior.oracle_elevations=[0]", "prior.oracle_resolution=16",
            "stage1.iters=2", "stage1.render_sizes=[16]", "stage1.size_milestones=[]", "gaussians.num_points=50",
            "stage2.enabled=false", "export.video=false", "device=cpu"]
    lines = []
    for _ in range(2):
        assert main(["text", "A Ceramic Mug!", "--prior", "oracle", "--seed", "7", "--out", str(tmp_path),
                     "--quiet", *tiny]) == 0
        lines.append(capsys.readouterr().out.strip().splitlines())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["20261201-200000-a-ceramic-mug-s7", "20261201-200000-a-ceramic-mug-s7-2"]
    for out, name in zip(lines, names):
        assert len(out) == 1 and out[0].startswith("done in ") and "(seed 7)" in out[0], out
        written = out[0].split("; wrote ", 1)[1].split(", ")
        assert str(tmp_path / name / "model.ply") in written and str(tmp_path / name / "config.yaml") in written
        assert all(os.path.isfile(p) for p in written)


def test_python_api_is_dreamgs_generate_and_imports_lazily():
    import subprocess
    import sys

    code = ("import sys, dreamgs; assert 'torch' not in sys.modules and 'dreamgs.pipeline' not in sys.modules; "
            "from dreamgs import generate, resume_run; import dreamgs.pipeline as p; "
            "assert generate is p.generate and resume_run is p.resume_run; "
            "print(dreamgs.generate.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "generate", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'genrate'"):
        import dreamgs
        dreamgs.genrate


@pytest.mark.parametrize("argv", [["--help"], ["info"], ["info", "--model", "nobody/none"],
                                  ["prep", "IMAGE", "--out", "OUT"]])
def test_quick_commands_do_not_import_torch(argv, tmp_path):
    """`dreamgs --help`, `info` and `prep` start fast: they never import torch, diffusers or transformers."""
    import subprocess
    import sys

    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[10:30, 8:30] = (200, 120, 40, 255)
    Image.fromarray(rgba).save(tmp_path / "in.png")
    argv = [str(tmp_path / "in.png") if a == "IMAGE" else str(tmp_path / "out.png") if a == "OUT" else a
            for a in argv]
    code = ("import sys; from dreamgs.cli import main\n"
            "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'gsplat') if m in sys.modules)\n"
            "print('HEAVY', heavy)\nsys.exit(code)\n")
    import dreamgs

    src = os.path.dirname(os.path.dirname(dreamgs.__file__))  # this checkout's package, not an installed one
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stdout[-500:]
    if argv[0] == "prep":
        assert Image.open(tmp_path / "out.png").mode == "RGBA"


def test_app_defaults_in_the_cli_match_the_app():
    import dreamgs.app as app
    import dreamgs.cli as cli

    for name in ("DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_WORKDIR", "DEFAULT_MAX_UPLOAD_MB"):
        assert getattr(cli, name) == getattr(app, name), name


def test_info_without_torch_reads_the_installed_build(empty_cache, capsys):
    from dreamgs.info import device_report, torch_build

    version, build = torch_build()
    import torch

    assert version == torch.__version__ and build.get("cuda") == torch.version.cuda
    static, exact = device_report(use_torch=False), device_report(use_torch=True)
    assert static["torch"] == exact["torch"]
    assert static["render backend"].split()[0] == exact["render backend"].split()[0]
    assert static["device"].split()[0] == exact["device"].split()[0] or "not checked with torch" in static["device"]
