"""Checkpoints and resuming: a killed, out-of-memory or diverged run continues exactly where it
stopped, and its final .ply equals an uninterrupted run's bit for bit (CPU, deterministic)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamgs import pipeline
from dreamgs.checkpoint import CHECKPOINT_NAME, load_checkpoint, read_meta
from dreamgs.cli import main
from dreamgs.errors import ConfigError, InputError, TrainingError
from dreamgs.pipeline import generate, has_checkpoint, resume_run
from dreamgs.priors.oracle import OraclePrior
from dreamgs.stage1 import Stage1

SRC = Path(__file__).resolve().parents[1] / "src"
ITERS = 12
TINY = ["prior.kind=oracle", f"stage1.iters={ITERS}", "stage1.checkpoint_every=3", "stage1.render_sizes=[32]",
        "stage1.size_milestones=[]", "gaussians.num_points=300", "prior.oracle_azimuths=8",
        "prior.oracle_elevations=[0]", "prior.oracle_resolution=32", "densify.start=2", "densify.interval=4",
        "export.video=false", "stage2.enabled=false", "device=cpu", "stage1.deterministic=true"]
SEED = 7


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the bytes of its model.ply and its summary."""
    run = tmp_path_factory.mktemp("ref") / "run"
    res = generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    assert not (run / CHECKPOINT_NAME).exists()  # removed once the run is complete
    return (run / "model.ply").read_bytes(), res.summary


def _fail_at(monkeypatch, step: int, exc: BaseException) -> None:
    """Make Stage1.step raise ``exc`` when it is about to run step ``step`` (0-based)."""
    orig = Stage1.step

    def step_or_fail(self):
        if self.step_count == step:
            raise exc
        return orig(self)
    monkeypatch.setattr(Stage1, "step", step_or_fail)


def test_killed_subprocess_resumes_to_the_same_ply(reference, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "dreamgs", "text", "a mug", *TINY, "--seed", str(SEED), "--run-dir", str(run),
           "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run / CHECKPOINT_NAME
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    step = read_meta(ckpt)["step"]
    assert 0 < step < ITERS and not (run / "summary.json").exists() and not (run / "model.ply").exists()
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]  # no half-written file left by the kill

    res = subprocess.run([sys.executable, "-m", "dreamgs", "resume", str(run), "--quiet"], env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert f"resumed at stage1 step {read_summary(run)['resumed_from']['step']}" in res.stdout
    assert (run / "model.ply").read_bytes() == reference[0]
    assert not ckpt.exists()


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_out_of_memory_names_the_settings_and_keeps_the_checkpoint(reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _fail_at(monkeypatch, 7, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    rc = main(["text", "a mug", *TINY, "--seed", str(SEED), "--run-dir", str(run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    for setting in ("stage1.render_sizes", "stage1.batch_size", "densify.max_gaussians", "dreamgs resume"):
        assert setting in err
    assert "out of memory in stage 1 at step 8" in err
    assert load_checkpoint(run / CHECKPOINT_NAME).step == 6 and not (run / "summary.json").exists()

    monkeypatch.undo()
    torch.manual_seed(999)  # the resumed run must not depend on this process's RNG state
    res = resume_run(run, progress=False)
    assert res.summary["resumed_from"] == {"stage": "stage1", "step": 6}
    assert (run / "model.ply").read_bytes() == reference[0]


@pytest.mark.parametrize("exc, oom", [
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (RuntimeError("shape mismatch"), False),
])
def test_out_of_memory_reported_as_runtime_error_is_recognised(tmp_path, monkeypatch, exc, oom):
    _fail_at(monkeypatch, 1, exc)
    with pytest.raises(TrainingError if oom else RuntimeError) as err:
        generate("a mug", overrides=TINY, seed=SEED, run_dir=tmp_path / "run", progress=False)
    assert str(err.value).startswith("out of memory in stage 1 at step 2") == oom


def test_resume_with_a_smaller_render_size_is_recorded(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _fail_at(monkeypatch, 4, MemoryError())
    with pytest.raises(TrainingError, match="out of memory"):
        generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="cannot change when resuming"):
        resume_run(run, ["gaussians.num_points=10"], progress=False)
    sizes = []
    monkeypatch.setattr(pipeline, "preview_image", lambda *a, **k: None)
    res = resume_run(run, ["stage1.render_sizes=[16]"], progress=False,
                     on_progress=lambda info: sizes.append(info["step"]))
    assert sizes == list(range(4, ITERS + 1)) and res.summary["resumed_from"]["step"] == 3
    assert "- 16" in (run / "config.yaml").read_text()


def test_interrupted_after_stage1_resumes_without_redoing_it(reference, tmp_path, monkeypatch):
    import dreamgs.gaussians

    run = tmp_path / "run"

    def crash(*a, **k):
        raise RuntimeError("simulated crash while writing outputs")
    monkeypatch.setattr(dreamgs.gaussians, "save_ply", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    meta = read_meta(run / CHECKPOINT_NAME)
    assert meta["stage"] == "stage2" and meta["step"] == ITERS
    monkeypatch.undo()
    _fail_at(monkeypatch, ITERS, AssertionError("stage 1 ran again"))
    monkeypatch.setattr(Stage1, "run", lambda *a, **k: pytest.fail("stage 1 ran again"))
    res = resume_run(run, progress=False)
    assert res.summary["resumed_from"] == {"stage": "stage2", "step": ITERS}
    assert (run / "model.ply").read_bytes() == reference[0]
    assert has_checkpoint(run) is False and (run / "summary.json").is_file()


def _nan_every(monkeypatch, k: int) -> list:
    """Make the oracle's SDS loss NaN on every k-th call; returns the list of call numbers."""
    orig = OraclePrior.sds
    calls = []

    def sds(self, images, cams, progress):
        calls.append(len(calls) + 1)
        loss = orig(self, images, cams, progress)
        return loss * float("nan") if len(calls) % k == 0 else loss
    monkeypatch.setattr(OraclePrior, "sds", sds)
    return calls


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    calls = _nan_every(monkeypatch, 4)
    res = generate("a mug", overrides=TINY, seed=SEED, run_dir=tmp_path / "run", progress=False)
    assert len(calls) == ITERS
    assert res.summary["bad_steps"] == 3 and res.summary["bad_steps_by_stage"] == {"stage1": 3, "stage2": 0}
    assert read_summary(tmp_path / "run")["bad_steps_by_stage"]["stage1"] == 3


def test_too_many_non_finite_steps_stop_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_every(monkeypatch, 4)  # bad steps at 4 and 8; the second one is over the limit of 1
    run = tmp_path / "run"
    rc = main(["text", "a mug", *TINY, "stage1.max_bad_steps=1", "--seed", "1", "--run-dir", str(run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "non-finite" in err and "limit 1" in err
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    assert ckpt.step == 6 and ckpt.meta["trainer"]["bad_steps"] == 1
    assert torch.isfinite(ckpt.tensors["params.means"]).all()
    assert not (run / "model.ply").exists() and not (run / "summary.json").exists()


def test_tiny_stable_diffusion_resume_restores_the_priors_generators(tmp_path, monkeypatch):
    from tiny_models import build_tiny_sd, tiny_config

    folder = build_tiny_sd(tmp_path / "sd")
    # Deterministic algorithms make the tiny UNet's CPU convolutions 4x slower; they are
    # reproducible without them.
    ov = [o for o in TINY if not o.startswith("prior.")] + ["seed=3", "stage1.deterministic=false", "stage1.iters=6",
                                                            "stage1.checkpoint_every=2"]
    cfg = lambda: tiny_config("sd", folder, overrides=ov)  # noqa: E731
    generate(config=cfg(), run_dir=tmp_path / "a", progress=False)
    _fail_at(monkeypatch, 3, torch.OutOfMemoryError("fake"))
    with pytest.raises(TrainingError):
        generate(config=cfg(), run_dir=tmp_path / "b", progress=False)
    names = read_meta(tmp_path / "b" / CHECKPOINT_NAME)["prior_generators"]
    assert "_cpu_gen" in names
    monkeypatch.undo()
    resume_run(tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.ply").read_bytes() == (tmp_path / "b" / "model.ply").read_bytes()


def test_image_mode_resume_uses_the_stored_input(tmp_path, monkeypatch):
    image = Path(__file__).resolve().parents[1] / "examples" / "images" / "anya_rgba.png"
    ov = TINY + ["stage1.ref_size=32", "seed=2"]
    generate(image=image, overrides=ov, run_dir=tmp_path / "a", progress=False)
    _fail_at(monkeypatch, 8, torch.OutOfMemoryError("fake"))
    with pytest.raises(TrainingError):
        generate(image=image, overrides=ov, run_dir=tmp_path / "b", progress=False)
    monkeypatch.undo()
    monkeypatch.setattr("dreamgs.images.preprocess", lambda *a, **k: pytest.fail("input read again"))
    resume_run(tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.ply").read_bytes() == (tmp_path / "b" / "model.ply").read_bytes()


def test_resume_refuses_folders_without_a_usable_checkpoint(tmp_path, capsys):
    with pytest.raises(InputError, match="run folder not found"):
        resume_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no checkpoint.safetensors"):
        resume_run(tmp_path / "empty")
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text("{}")
    with pytest.raises(InputError, match="has finished"):
        resume_run(done)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CHECKPOINT_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert has_checkpoint(bad) is False
    assert main(["resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a usable dreamgs checkpoint" in err and len(err.strip().splitlines()) == 1


def test_deterministic_flag_is_scoped_to_the_run():
    assert not torch.are_deterministic_algorithms_enabled()
    with pipeline.deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


def test_batch_retry_resumes_from_the_checkpoint(reference, tmp_path, monkeypatch):
    import yaml

    from dreamgs.batch import read_manifest, run_batch

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"overrides": TINY, "jobs": [{"name": "mug", "prompt": "a mug", "seed": SEED}]}))
    orig, failed = Stage1.step, []

    def oom_once(self):
        if self.step_count == 7 and not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("fake")
        return orig(self)
    monkeypatch.setattr(Stage1, "step", oom_once)
    report = run_batch(jobs, local=True, retries=1, progress=False, log=lambda m: None)
    recs = read_manifest(report.manifest)
    assert [(r["status"], r["resumed"]) for r in recs] == [("retrying", False), ("done", True)]
    assert "out of memory in stage 1" in recs[0]["error"]
    run = tmp_path / "outputs" / "jobs" / "mug"
    assert read_summary(run)["resumed_from"] == {"stage": "stage1", "step": 6}
    assert (run / "model.ply").read_bytes() == reference[0]


# ------------------------------------------------------------------------------------------------
# Stage 2: the boundary checkpoint, out of memory and non-finite steps in the texture refinement

STAGE2 = ["stage2.enabled=true", "mesh.grid_resolution=32", "mesh.density_threshold=0.3", "texture.size=64",
          "texture.bake_resolution=64", "texture.bake_views=6", "stage2.iters=4", "stage2.render_size=32"]
OUTPUTS = ("model.ply", "model.glb", "model.obj", "model.mtl", "model_albedo.png")


@pytest.fixture(scope="module")
def reference2(tmp_path_factory):
    """An uninterrupted run with a tiny stage 2: the bytes of its output files."""
    run = tmp_path_factory.mktemp("ref2") / "run"
    generate("a mug", overrides=TINY + STAGE2, seed=SEED, run_dir=run, progress=False)
    return {name: (run / name).read_bytes() for name in OUTPUTS}


def test_interrupted_in_stage2_resumes_there_with_the_same_outputs(reference2, tmp_path, monkeypatch):
    import dreamgs.stage2

    run = tmp_path / "run"
    monkeypatch.setattr(dreamgs.stage2, "refine_texture", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        generate("a mug", overrides=TINY + STAGE2, seed=SEED, run_dir=run, progress=False)
    assert read_meta(run / CHECKPOINT_NAME)["stage"] == "stage2" and not (run / "model.glb").exists()
    monkeypatch.undo()
    monkeypatch.setattr(Stage1, "run", lambda *a, **k: pytest.fail("stage 1 ran again"))
    torch.manual_seed(1)
    res = resume_run(run, progress=False)
    assert res.summary["resumed_from"] == {"stage": "stage2", "step": ITERS}
    assert {name: (run / name).read_bytes() for name in OUTPUTS} == reference2


def test_stage2_out_of_memory_names_its_settings(tmp_path, monkeypatch):
    import dreamgs.stage2

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(dreamgs.stage2, "bake_from_gaussians", oom)
    with pytest.raises(TrainingError) as err:
        generate("a mug", overrides=TINY + STAGE2, seed=SEED, run_dir=tmp_path / "run", progress=False)
    msg = str(err.value)
    assert msg.startswith("out of memory in stage 2") and "\n" not in msg
    for setting in ("stage2.render_size", "texture.bake_resolution", "mesh.grid_resolution", "dreamgs resume"):
        assert setting in msg
    assert read_meta(tmp_path / "run" / CHECKPOINT_NAME)["stage"] == "stage2"


def _nan_refine_every(monkeypatch, k: int) -> None:
    orig, calls = OraclePrior.refine, []

    def refine(self, images, cams, strength, steps, **kw):
        calls.append(1)
        out = orig(self, images, cams, strength, steps, **kw)
        return out * float("nan") if len(calls) % k == 0 else out
    monkeypatch.setattr(OraclePrior, "refine", refine)


def test_stage2_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    _nan_refine_every(monkeypatch, 2)
    res = generate("a mug", overrides=TINY + STAGE2, seed=SEED, run_dir=tmp_path / "run", progress=False)
    assert res.summary["bad_steps_by_stage"] == {"stage1": 0, "stage2": 2} and res.summary["bad_steps"] == 2
    from dreamgs.mesh.io import load_mesh

    assert torch.isfinite(load_mesh(tmp_path / "run" / "model.glb").texture).all()


def test_stage2_divergence_stops_with_one_line_and_keeps_the_boundary_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_refine_every(monkeypatch, 1)
    run = tmp_path / "run"
    rc = main(["text", "a mug", *TINY, *STAGE2, "stage2.max_bad_steps=2", "--seed", str(SEED), "--run-dir", str(run),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "stage 2: 3 texture steps had a non-finite loss or gradient" in err and "stage2.max_bad_steps=2" in err
    assert read_meta(run / CHECKPOINT_NAME)["stage"] == "stage2"
    assert not (run / "summary.json").exists() and not (run / "model.glb").exists()


def test_stage2_failure_keeps_stage1_and_says_how_to_try_stage2_again(reference2, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["text", "a mug", *TINY, *STAGE2, "mesh.density_threshold=1e6", "--seed", str(SEED), "--run-dir",
               str(run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "the model is empty" in err
    assert f"stage 1's outputs are kept, try stage 2 again with: dreamgs resume {run} KEY=VALUE" in err
    assert read_meta(run / CHECKPOINT_NAME)["stage"] == "stage2" and (run / "model.ply").is_file()
    assert main(["resume", str(run), "mesh.density_threshold=0.3", "--quiet"]) == 0
    assert {name: (run / name).read_bytes() for name in OUTPUTS} == reference2
