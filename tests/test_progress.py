"""Progress a person can read: the run's first line estimates its duration, long phases report
progress with an ETA, logs get plain lines (no carriage returns), and progress=False is silent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import dreamgs
from dreamgs.estimate import describe
from dreamgs.progress import Progress, clock, phase

TINY = ["--prior", "oracle", "stage1.iters=20", "stage1.render_sizes=[32]", "stage1.size_milestones=[]",
        "gaussians.num_points=200", "export.video=true", "export.video_frames=8", "export.video_size=32",
        "stage2.iters=2", "texture.size=128", "texture.bake_resolution=64", "texture.bake_views=4",
        "stage2.render_size=64", "mesh.grid_resolution=32", "device=cpu"]


def _env(**extra) -> dict:
    src = os.path.dirname(os.path.dirname(dreamgs.__file__))  # this checkout's package
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **extra}


def test_cli_run_in_a_log_gets_an_estimate_first_and_plain_eta_lines(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dreamgs.cli", "text", "a ceramic mug", "--seed", "1",
                          "--out", str(tmp_path), *TINY],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600,
                         env=_env(DREAMGS_PROGRESS_EVERY="0"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stderr and "\r" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("dreamgs: text -> 3D on cpu, about "), lines[:3]
    assert " in all (stage 1 ~" in lines[0]
    eta = [ln for ln in lines if ln.startswith("stage 1: ") and "ETA" in ln]
    assert eta and all("steps (" in ln and "Gaussians" in ln and "elapsed" in ln for ln in eta)
    assert any(ln.startswith("stage 1: 20/20 steps (100%)") and "done in" in ln for ln in lines)
    for name in ("stage 2: extracting the mesh", "stage 2: unwrapping UVs", "stage 2: baking the texture"):
        assert any(ln.startswith(name) and ln.endswith("...") for ln in lines), name
        assert any(ln.startswith(name + ": done in ") for ln in lines), name
    assert any(ln.startswith("stage 2: texture: 2/2 steps (100%)") for ln in lines)
    for video in ("gaussians.mp4", "mesh.mp4"):
        assert any(ln.startswith(f"video {video}: 8/8 frames (100%), done in") for ln in lines), video
    # stdout keeps only the result line.
    assert out.stdout.strip().splitlines()[-1].startswith("done in ") and len(out.stdout.strip().splitlines()) == 1


def test_progress_false_prints_nothing_and_the_estimate_changes_nothing(tmp_path, capfd):
    overrides = [a for a in TINY[2:]] + ["prior.kind=oracle", "export.video=false", "stage1.deterministic=true"]
    quiet = dreamgs.generate("a ceramic mug", overrides=overrides, seed=3, run_dir=tmp_path / "quiet", progress=False)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    loud = dreamgs.generate("a ceramic mug", overrides=overrides, seed=3, run_dir=tmp_path / "loud", progress=True)
    err = capfd.readouterr().err
    assert err.startswith("dreamgs: text -> 3D on cpu, about ")
    # The estimate's probe steps ran on a copy with every generator restored: same Gaussians, bit for bit.
    assert (quiet.run_dir / "model.ply").read_bytes() == (loud.run_dir / "model.ply").read_bytes()


def test_plain_lines_every_interval_with_a_weighted_eta(monkeypatch, capsys):
    monkeypatch.setenv("DREAMGS_PROGRESS_EVERY", "0")
    with Progress("stage 1", 4, "steps", weight=lambda k: 1.0 if k < 2 else 3.0) as bar:
        bar._t0 -= 10.0  # pretend the first two (cheap) steps took 10 s
        bar.update(2, "loss 0.5, 10 Gaussians")
        line = capsys.readouterr().err.strip()
        # 2 cheap units took 10 s; the 2 left cost 3x each: 30 s to go.
        assert line == "stage 1: 2/4 steps (50%), loss 0.5, 10 Gaussians, 0:10 elapsed, ETA 0:30"
        bar.update(2)
    assert capsys.readouterr().err.strip().startswith("stage 1: 4/4 steps (100%), loss 0.5, 10 Gaussians, done in")
    monkeypatch.setenv("DREAMGS_PROGRESS_EVERY", "5")
    with Progress("video a.mp4", 100, "frames") as bar:
        for _ in range(99):
            bar.update(1)  # all within 5 s: no line until the final one
    assert capsys.readouterr().err.strip().splitlines() == [bar.line(final=True)]
    with Progress("x", 3, enabled=False) as bar, phase("stage 2: y", "z", enabled=False):
        bar.update(3)
    assert capsys.readouterr().err == ""
    with phase("stage 2: unwrapping UVs", "10 faces"):
        pass
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "stage 2: unwrapping UVs (10 faces)..." and lines[1].startswith("stage 2: unwrapping UVs: done in")


@pytest.mark.parametrize("seconds, text", [(12, "about 10-15 s"), (100, "about 1-2 min"), (150, "about 2-3 min"),
                                           (3 * 3600, "about 2.2-4.1 h")])
def test_estimate_ranges_read_naturally(seconds, text):
    assert describe(seconds) == text
    assert clock(98) == "1:38" and clock(3725) == "1:02:05"


def test_step_cost_model_runs_through_both_measured_sizes():
    """The estimate's render share of a step: a power law through the two probed sizes (a 32 px step
    is far from 1/16 of a 128 px one), or the assumed exponent from a single size."""
    import math

    from dreamgs.estimate import SIZE_EXPONENT, render_model

    f = render_model({"prior_s": 0.1, "step_s": {32: 0.3, 128: 0.5}})
    assert f(32) == pytest.approx(0.2) and f(128) == pytest.approx(0.4)
    assert f(64) == pytest.approx(math.sqrt(0.2 * 0.4))  # halfway in log-size
    one = render_model({"prior_s": 0.0, "step_s": {128: 1.0}})
    assert one(256) == pytest.approx(2**SIZE_EXPONENT)


def test_expected_gaussian_counts_follow_the_densification_rounds_up_to_the_cap():
    """The forecast's model of the growth: x GROWTH after the update of each step s with
    start <= s + 1 < stop and (s + 1) % interval == 0, never above max_gaussians; from a resumed
    step on, only the rounds still ahead count; without densification the count stays."""
    from dreamgs.config import load_config
    from dreamgs.estimate import GROWTH, gaussian_counts

    cfg = load_config("text", overrides=["stage1.iters=200", "densify.start=0", "densify.interval=50",
                                         "densify.stop=160", "densify.max_gaussians=12000"])
    n = gaussian_counts(cfg, 5000)
    assert len(n) == 200
    assert set(n[:50]) == {5000} and set(n[50:100]) == {int(5000 * GROWTH)}
    assert set(n[100:150]) == {int(5000 * GROWTH ** 2)} and set(n[150:]) == {12000}
    assert gaussian_counts(cfg, 8000, start_step=120) == [8000] * 30 + [int(8000 * GROWTH)] * 50
    cfg.densify.enabled = False
    assert gaussian_counts(cfg, 5000) == [5000] * 200
