"""``dreamgs bench`` at CI size: held-out cameras, baselines, the default method through the whole
pipeline (scored from its model.glb), and a deliberately broken method that the table must catch."""

import json
import math
from pathlib import Path

import pytest
import torch

from dreamgs.bench import _turned, asset_label, run_bench, run_dreamgaussian
from dreamgs.config import load_config
from dreamgs.errors import InputError
from dreamgs.evaluate import grid_distance, heldout_cameras, reference_grid

CI_SIZE = Path(__file__).parent.parent / "benchmarks" / "ci_size.yaml"  # 64 px, 300 steps, stage 2, .glb


@pytest.mark.parametrize("mode", ["text", "image"])
def test_heldout_cameras_are_half_a_grid_step_from_every_reference(mode):
    cfg = load_config(mode, None, ["prior.kind=oracle"])
    cams = heldout_cameras(cfg, 24, 64, seed=0)
    assert len(cams) == 24
    rel, raz, el_step, az_step = reference_grid(cfg)
    # brute force over every reference camera, independent of grid_distance
    el, az = cams.elevation.double(), cams.azimuth.double()
    d_az = (az[:, None] - raz[None] + 180.0) % 360.0 - 180.0
    d = (((el[:, None] - rel[None]) / el_step) ** 2 + (d_az / az_step) ** 2).sqrt().amin(1)
    assert d.min() >= 0.5, d.min()
    assert torch.allclose(d, grid_distance(el, az, cfg))
    lo, hi = cfg.camera.elevation_range
    assert (el >= lo - 1e-6).all() and (el <= hi + 1e-6).all()
    # the cameras are spread around the object, not bunched
    assert (az.max() - az.min()) > 270


def _broken_turned_90(job):
    """A deliberately broken method: the default method's own model.glb, turned by 90 degrees."""
    from dreamgs.export import save_glb
    from dreamgs.mesh.io import load_mesh

    src = job.run_dir.parent / job.run_dir.name.replace("turned90", "dreamgaussian") / "model.glb"
    if not src.is_file():
        src = run_dreamgaussian(job)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    return save_glb(_turned(load_mesh(src), 90.0), job.run_dir / "model.glb")


def test_small_bench_orders_baselines_and_catches_a_broken_method(tmp_path):
    methods = {"dreamgaussian": run_dreamgaussian, "turned90": _broken_turned_90}
    report = run_bench(methods, ["gen:0"], mode="text", seeds=(0, 1), out_dir=tmp_path, config=CI_SIZE,
                       device="cpu", progress=True)
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["complete"] is True and on_disk["results"] == json.loads(json.dumps(report["results"]))
    keys = {"method", "mode", "asset", "seed", "psnr", "psnr_masked", "chamfer_pct", "pose_offset_deg", "seconds"}
    assert all(keys <= set(r) for r in report["results"]) and len(report["results"]) == 4
    assert all({"name", "mode", "asset", "psnr", "psnr_masked", "chamfer_pct"} <= set(b) for b in report["baselines"])

    base = {b["name"]: b for b in report["baselines"]}
    print("\n" + (tmp_path / "bench.md").read_text())
    # the baselines are ordered as they must be
    assert base["truth"]["psnr_masked"] > max(b["psnr_masked"] for n, b in base.items() if n != "truth")
    assert base["turned30"]["psnr_masked"] < base["turned20"]["psnr_masked"] < base["turned15"]["psnr_masked"]
    assert abs(base["turned15"]["pose_offset_deg"] - 15) <= 3 and abs(base["turned30"]["pose_offset_deg"] - 30) <= 3
    assert abs(base["truth"]["pose_offset_deg"]) <= 1 and base["truth"]["chamfer_pct"] == 0.0
    assert 0 < base["turned15"]["chamfer_pct"] < base["turned30"]["chamfer_pct"]

    mine = [r for r in report["results"] if r["method"] == "dreamgaussian"]
    broken = [r for r in report["results"] if r["method"] == "turned90"]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    # the default method, scored from its model.glb, beats the flat silhouette and the initial blob
    assert mean(mine, "psnr_masked") > base["flat"]["psnr_masked"], (mine, base["flat"])
    assert mean(mine, "psnr_masked") > base["blob"]["psnr_masked"], (mine, base["blob"])
    assert all(math.isfinite(r["chamfer_pct"]) and r["chamfer_pct"] > 0 for r in mine)
    # the broken method is caught: it turns up turned by ~90 degrees and scores below the default
    assert all(abs(abs(r["pose_offset_deg"]) - 90) <= 20 for r in broken), broken
    # (1 dB: at CI size the gap measured 1.8 dB; the 2 dB once here was set on runs that, through
    # the bench's --config bug, were at preview sizes)
    assert mean(broken, "psnr_masked") < mean(mine, "psnr_masked") - 1.0
    assert "does not beat" in (tmp_path / "bench.md").read_text()  # turned90 loses to the truth turned 15


def test_an_interrupted_bench_keeps_the_runs_that_finished(tmp_path):
    from dreamgs.bench import load_truth
    from dreamgs.export import save_glb

    def truth_then_crash(job):  # seed 0: the true mesh itself; seed 1: the run dies
        if job.seed == 1:
            raise RuntimeError("out of memory")
        job.run_dir.mkdir(parents=True, exist_ok=True)
        return save_glb(load_truth(job.asset), job.run_dir / "model.glb")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_bench({"truth-copy": truth_then_crash}, ["gen:0"], seeds=(0, 1), out_dir=tmp_path, baselines=False,
                  device="cpu", progress=False)
    partial = json.loads((tmp_path / "bench.json").read_text())
    assert partial["complete"] is False and [r["seed"] for r in partial["results"]] == [0]
    assert partial["results"][0]["psnr_masked"] > 30  # the truth, scored

    # started again into the same folder, the bench runs only what is missing and keeps the rest
    calls = []

    def truth_copy(job):
        calls.append((job.asset, job.seed))
        job.run_dir.mkdir(parents=True, exist_ok=True)
        return save_glb(load_truth(job.asset), job.run_dir / "model.glb")

    report = run_bench({"truth-copy": truth_copy}, ["gen:0"], seeds=(0, 1, 2), out_dir=tmp_path, baselines=False,
                       device="cpu", progress=False)
    assert calls == [("gen:0", 1), ("gen:0", 2)]
    assert report["complete"] and [r["seed"] for r in report["results"]] == [0, 1, 2]
    assert report["results"][0] == partial["results"][0]
    # a bench of other settings into that folder is refused, and the report is left as it was
    before = (tmp_path / "bench.json").read_text()
    with pytest.raises(InputError, match=r"other settings \(overrides \[\] here, \['seed=3'\] now\)"):
        run_bench({"truth-copy": truth_copy}, ["gen:0"], seeds=(0,), out_dir=tmp_path, baselines=False,
                  device="cpu", progress=False, overrides=["seed=3"])
    assert (tmp_path / "bench.json").read_text() == before and len(calls) == 2


def test_a_run_with_no_surface_is_a_failed_row_not_a_crashed_bench(tmp_path):
    from dreamgs.bench import load_truth, markdown
    from dreamgs.errors import EmptyModelError
    from dreamgs.export import save_glb

    def empty_on_seed_1(job):  # seed 0: the true mesh; seed 1: nothing reaches the surface threshold
        if job.seed == 1:
            raise EmptyModelError("the model is empty: its density (max 3.9) never reaches nerf.mesh_threshold=5")
        job.run_dir.mkdir(parents=True, exist_ok=True)
        return save_glb(load_truth(job.asset), job.run_dir / "model.glb")

    report = run_bench({"sometimes-empty": empty_on_seed_1}, ["gen:0"], seeds=(0, 1), out_dir=tmp_path,
                       baselines=False, device="cpu", progress=False)
    ok, failed = sorted(report["results"], key=lambda r: r["seed"])
    assert ok["psnr_masked"] > 30 and "failed" not in ok
    assert failed["failed"].startswith("the model is empty") and failed["psnr_masked"] is None
    assert report["complete"] and json.loads((tmp_path / "bench.json").read_text())["results"][1]["failed"]
    md = markdown(report)
    assert "| 2 (1 failed) |" in md and "**1 of 2 runs failed**" in md


def test_bench_cli_rejects_unknown_assets_and_methods(tmp_path, capsys):
    from dreamgs.cli import main

    assert main(["bench", "--assets", "no-such-asset", "--out", str(tmp_path / "b")]) == 2
    assert "no-such-asset" in capsys.readouterr().err
    assert main(["bench", "--methods", "nope", "--assets", "house", "--out", str(tmp_path / "b")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert asset_label("/x/y/robot.glb") == "robot" and asset_label("gen:3") == "gen:3"


@pytest.mark.parametrize("mode", ["text", "image"])
def test_runs_use_the_bench_config_file(tmp_path, monkeypatch, mode):
    """``--config FILE`` reaches the method's runs, not only the truth's cameras."""
    import dreamgs.pipeline as pipeline
    from dreamgs.bench import Job

    seen = {}

    def fake_generate(prompt=None, *, image=None, config=None, overrides=(), seed=None, run_dir=None, progress=True):
        seen["cfg"] = pipeline.resolve_config(prompt, image, config, overrides, seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    with pytest.raises(KeyboardInterrupt):
        run_dreamgaussian(Job("dreamgaussian", mode, "standard", "gen:0", 0, [], tmp_path / "run", "cpu", str(CI_SIZE)))
    cfg = seen["cfg"]
    assert cfg.stage1.iters == 300 and tuple(cfg.stage1.render_sizes) == (64,) and cfg.stage2.iters == 20


def test_start_methods_run_dreamgaussian_from_a_noisy_coloured_cloud_or_the_silhouette(tmp_path, monkeypatch):
    """dreamgaussian-cloud starts from a cloud of the asset's surface (noisy positions and colours, fixed
    by the seed); dreamgaussian-silhouette lifts the input (image mode only: text mode is refused before
    any run)."""
    import dreamgs.pipeline as pipeline
    from dreamgs.bench import Job, load_truth, run_cloud_start, run_silhouette_start
    from dreamgs.evaluate import outer_surface_samples
    from dreamgs.init import load_point_cloud
    from dreamgs.metrics import nearest_distances

    seen = []

    def fake_generate(prompt=None, *, image=None, config=None, overrides=(), seed=None, run_dir=None, progress=True):
        seen.append(pipeline.resolve_config(prompt, image, config, overrides, seed))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    clouds = []
    for seed in (0, 0, 1):
        with pytest.raises(KeyboardInterrupt):
            run_cloud_start(Job("dreamgaussian-cloud", "text", "standard", "gen:0", seed, [], tmp_path / f"r{seed}",
                                "cpu", str(CI_SIZE)))
        kind, _, path = seen[-1].gaussians.init.partition(":")
        assert kind == "points" and seen[-1].gaussians.cloud_t_max == 0.5
        clouds.append(load_point_cloud(path))
    pts, cols = clouds[0]
    assert pts.shape == (4096, 3) and cols.shape == (4096, 3) and 0 <= cols.min() and cols.max() <= 1
    truth = load_truth("gen:0")
    d = nearest_distances(pts.float(), outer_surface_samples(truth, 20000, torch.Generator().manual_seed(0)))
    assert 0.005 < float(d.mean()) < 0.03  # on the surface, up to noise of std 0.02 per axis
    assert torch.equal(clouds[1][0], pts) and not torch.equal(clouds[2][0], pts)
    with pytest.raises(KeyboardInterrupt):
        run_silhouette_start(Job("dreamgaussian-silhouette", "image", "standard", "gen:0", 0, [], tmp_path / "s",
                                 "cpu", str(CI_SIZE)))
    assert seen[-1].gaussians.init == "silhouette"
    with pytest.raises(InputError, match="needs --mode image"):
        run_bench(["dreamgaussian", "dreamgaussian-silhouette"], ["gen:0"], mode="text", out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()
