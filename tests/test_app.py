"""The web app without a browser: upload handling (path traversal, size cap), preprocessing
errors, missing-weights messages, download zips, and one-job-at-a-time (runner lock and Gradio queue)."""

from __future__ import annotations

import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamgs.app import (AppSettings, JobRunner, downloads, format_progress, obj_bundle, parse_seed, parse_steps,
                         prior_choices, prior_note, safe_filename, stage_upload)
from dreamgs.errors import InputError
from dreamgs.pipeline import RunResult

TINY = ("stage1.iters=3", "stage1.render_sizes=[16]", "stage1.size_milestones=[]", "gaussians.num_points=50",
        "prior.oracle_azimuths=4", "prior.oracle_elevations=[0]", "prior.oracle_resolution=16",
        "stage1.ref_size=16", "export.video=false", "stage2.enabled=false")


@pytest.fixture(autouse=True)
def offline_empty_cache(tmp_path, monkeypatch):
    """No Hugging Face weights anywhere: an empty cache, offline, and no rembg model."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-empty"))
    return hub


@pytest.fixture
def settings(tmp_path):
    return AppSettings(tmp_path / "work", overrides=TINY)


# --- uploads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("../../x.png", "x.png"),
    ("..\\..\\x.png", "x.png"),
    ("/etc/passwd", "passwd"),
    ("C:\\Users\\me\\cat photo.jpg", "cat_photo.jpg"),
    ("..", "upload"),
    ("", "upload"),
    (".bashrc", "bashrc"),
    ("élan€.png", "elan.png"),
    ("a;rm -rf $HOME.png", "a_rm_-rf_HOME.png"),
])
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_safe_filename_caps_length_and_keeps_extension():
    name = safe_filename("a" * 500 + ".png")
    assert len(name) <= 100 and name.endswith(".png")


@pytest.mark.parametrize("name", ["../../x.png", "../../../../../../tmp/x.png", "..\\..\\x.png", "/abs/x.png"])
def test_stage_upload_never_writes_outside_uploads(tmp_path, name):
    src = tmp_path / "incoming.png"
    src.write_bytes(b"\x89PNG fake")
    uploads = tmp_path / "work" / "uploads"
    dest = stage_upload(src, uploads, max_bytes=1000, name=name)
    assert dest.resolve().is_relative_to(uploads.resolve())
    assert dest.name == "x.png" and dest.read_bytes() == b"\x89PNG fake"
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "work" / "x.png").exists()
    assert not Path("/tmp/x.png").exists() or Path("/tmp/x.png").stat().st_mtime < time.time() - 60


def test_stage_upload_refuses_files_over_the_cap(tmp_path):
    src = tmp_path / "big.png"
    src.write_bytes(b"0" * 2048)
    with pytest.raises(InputError, match=r"big\.png: the upload is .* the limit is"):
        stage_upload(src, tmp_path / "uploads", max_bytes=1024)
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").rglob("*.png"))


def test_image_without_alpha_reports_the_preprocess_error(settings, tmp_path):
    jpg = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(jpg)
    events = list(JobRunner(settings).run("image", image=str(jpg), image_name="../../photo.jpg", prior="oracle"))
    assert len(events) == 1 and events[0].error
    assert "photo.jpg: the image has no transparency" in events[0].error
    assert "--mask" in events[0].error and "rembg" in events[0].error
    assert "dreamgs prep" in events[0].error and "upload the _rgba.png" in events[0].error  # a remedy for the page
    assert not settings.runs.exists() or not any(settings.runs.iterdir())  # no run started


def test_image_with_alpha_is_cut_out_and_run(settings, tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 12:28] = (200, 60, 40, 255)
    png = tmp_path / "cube.png"
    Image.fromarray(rgba).save(png)
    calls = []

    def fake_generate(config, image, run_dir, on_progress, progress):
        calls.append((config, image))
        run_dir.mkdir(parents=True)
        (run_dir / "model.ply").write_bytes(b"ply\n")
        return RunResult(run_dir, 7, {"ply": run_dir / "model.ply"})

    events = list(JobRunner(settings, fake_generate).run("image", image=str(png), image_name="cube.png",
                                                         prior="oracle", elevation=-10, steps=5, seed=3))
    assert events[-1].error is None and events[-1].result is not None
    cfg, image = calls[0]
    assert Path(image).resolve().is_relative_to(settings.uploads) and Path(image).name == "cube_rgba.png"
    staged = np.asarray(Image.open(image))
    assert staged.shape == (16, 16, 4) and staged[..., 3].max() == 255 and staged[0, 0, 3] == 0
    assert (cfg.mode, cfg.elevation, cfg.stage1.iters, cfg.seed, cfg.prior.kind) == ("image", -10.0, 5, 3, "oracle")
    assert Path(cfg.output_dir) == settings.runs


# --- inputs and messages --------------------------------------------------------------------------


def test_parse_seed_and_steps():
    assert parse_seed(-1) is None and parse_seed(None) is None and parse_seed(42.0) == 42
    for bad in (1.5, "x", -2, 2**63):
        with pytest.raises(InputError, match="seed"):
            parse_seed(bad)
    assert parse_steps(20) == 20
    for bad in (0, 2.5, "x", 10**6):
        with pytest.raises(InputError, match="steps"):
            parse_steps(bad)


def test_format_progress():
    assert format_progress({"stage": "stage1", "step": 3, "total": 20, "loss": 0.012345, "gaussians": 300}) == \
        "Stage 1 (Gaussians): step 3/20 · loss 0.01235 · 300 Gaussians"


def test_the_joint_oracle_runs_from_the_page(settings):
    events = list(JobRunner(settings).run("text", prompt="a ceramic mug", prior="oracle-mv", steps=2))
    assert events[-1].error is None and events[-1].result is not None, events[-1]


def test_empty_prompt_and_wrong_prior_are_reported(settings):
    (ev,) = JobRunner(settings).run("text", prompt="   ", prior="oracle")
    assert "the prompt is empty" in ev.error
    (ev,) = JobRunner(settings).run("text", prompt="a mug", prior="zero123")
    assert "not available for text→3D" in ev.error


def test_prior_choices_name_missing_weights_and_remedy(settings):
    choices, default, notes = prior_choices("text", settings)
    assert default == "oracle"  # sd weights are missing, so the page starts on the offline prior
    labels = dict((v, k) for k, v in choices)
    assert "weights not found locally" in labels["sd"] and "not found" not in labels["oracle"]
    note = prior_note("sd", notes)
    assert "stabilityai/stable-diffusion-2-1-base" in note and "prior.model=" in note and "HF_HOME" in note
    assert "weights not found locally" in labels["mvdream"] and "MVDream/MVDream" in prior_note("mvdream", notes)
    ichoices, _, inotes = prior_choices("image", settings)
    assert "imagedream" in dict((v, k) for k, v in ichoices)
    assert "ashawkey/imagedream-ipmv-diffusers" in prior_note("imagedream", inotes)
    assert "ashawkey/zero123-xl-diffusers" in prior_note("zero123", inotes)
    assert "ashawkey/stable-zero123-diffusers" in prior_note("stable-zero123", inotes)
    assert "offline" in prior_note("oracle", notes)
    assert "oracle-mv" in dict((k, l) for l, k in choices) and "oracle-mv" not in notes
    assert "4 views" in prior_note("oracle-mv", notes) and "oracle-mv" in [k for _, k in ichoices]


def test_missing_weights_job_shows_the_message_and_leaves_no_run(settings):
    events = list(JobRunner(settings).run("text", prompt="a ceramic mug", prior="sd", steps=2))
    err = events[-1].error
    assert err and "sd weights 'stabilityai/stable-diffusion-2-1-base' not found" in err
    assert "prior.model=/path/to/folder" in err and "HF_HOME" in err
    # No run folder left: generate() checks the prior before it creates one (nor even runs/).
    assert not settings.runs.exists() or not any(settings.runs.iterdir())


def test_text_job_with_the_oracle_prior_end_to_end(settings):
    events = list(JobRunner(settings).run("text", prompt="a ceramic mug", prior="oracle", seed=5))
    last = events[-1]
    assert last.error is None, last.status
    assert any(ev.preview is not None for ev in events)
    assert any("Stage 1 (Gaussians): step" in ev.status for ev in events)
    assert last.result.seed == 5 and last.result.run_dir.parent == settings.runs
    assert last.downloads["ply"].read_bytes().startswith(b"ply\n")
    with zipfile.ZipFile(last.downloads["all_zip"]) as zf:
        assert {"model.ply", "config.yaml", "seed.txt", "summary.json"} <= set(zf.namelist())


# --- downloads ------------------------------------------------------------------------------------


def test_obj_zip_holds_obj_mtl_and_texture_only_from_the_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (run / "model.obj").write_text("mtllib model.mtl\nmtllib ../secret.txt\nv 0 0 0\n")
    (run / "model.mtl").write_text("newmtl m\nmap_Kd texture.png\nmap_Ks /etc/passwd\n")
    (run / "texture.png").write_bytes(b"png")
    (run / "model.ply").write_bytes(b"ply\n")
    out = downloads({"ply": run / "model.ply", "obj": run / "model.obj", "glb": run / "missing.glb"}, run)
    assert set(out) == {"ply", "obj_zip", "all_zip"}
    assert obj_bundle(run / "model.obj") == [run / "model.obj", run / "model.mtl", run / "texture.png"]
    with zipfile.ZipFile(out["obj_zip"]) as zf:
        assert sorted(zf.namelist()) == ["model.mtl", "model.obj", "texture.png"]
        assert zf.read("texture.png") == b"png"
    with zipfile.ZipFile(out["all_zip"]) as zf:
        assert sorted(zf.namelist()) == ["model.mtl", "model.obj", "model.ply", "texture.png"]


# --- one job at a time ----------------------------------------------------------------------------


class Recorder:
    """A stand-in for generate() that records when each call runs."""

    def __init__(self, seconds: float):
        self.seconds, self.intervals, self.guard = seconds, [], threading.Lock()

    def __call__(self, config, image, run_dir, on_progress, progress):
        start = time.perf_counter()
        on_progress({"stage": "stage1", "step": 1, "total": 1, "loss": 0.5, "gaussians": 1})
        time.sleep(self.seconds)
        run_dir.mkdir(parents=True)
        (run_dir / "model.ply").write_bytes(b"ply\n")
        with self.guard:
            self.intervals.append((start, time.perf_counter()))
        return RunResult(run_dir, 0, {"ply": run_dir / "model.ply"})


def assert_disjoint(intervals, n):
    assert len(intervals) == n
    spans = sorted(intervals)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"runs overlapped: {spans}"


def test_runner_lock_serialises_jobs_started_together(settings):
    rec = Recorder(0.3)
    runner = JobRunner(settings, rec)
    statuses: list[list[str]] = []

    def client():
        statuses.append([ev.status for ev in runner.run("text", prompt="a mug", prior="oracle", steps=1)])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert_disjoint(rec.intervals, 3)
    assert all(s[-1].startswith("Done") for s in statuses)
    assert any(s[0].startswith("Waiting for the previous run") for s in statuses)


class NoLock:
    """Disables the runner's own lock so that only Gradio's queue can keep jobs apart."""

    def acquire(self, blocking=True):
        return True

    def release(self):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradio_queue_runs_one_job_at_a_time_across_both_tabs(settings, monkeypatch):
    from gradio_client import Client

    from dreamgs.app import build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(settings.cache))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    rec = Recorder(0.4)
    runner = JobRunner(settings, rec)
    runner.lock = NoLock()
    demo = build_app(settings, runner)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(settings.runs)], ssr_mode=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        png = settings.workdir / "in.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        rgba = np.zeros((16, 16, 4), np.uint8)
        rgba[4:12, 4:12] = 255
        Image.fromarray(rgba).save(png)
        from gradio_client import handle_file

        jobs = [client.submit("a mug", "", "oracle", -1, 1, api_name="/run_text") for _ in range(2)]
        jobs.append(client.submit(handle_file(str(png)), 0, "oracle", -1, 1, api_name="/run_image"))
        outs = [job.result(timeout=30) for job in jobs]
    finally:
        demo.close()
    assert all(str(out[0]).startswith("Done") for out in outs), [o[0] for o in outs]
    assert_disjoint(rec.intervals, 3)
