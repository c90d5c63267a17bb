"""Multi-view fitting end to end: the Gaussian engine's proof, and its input checks."""

import json

import numpy as np
import pytest
import torch

from dreamgs.config import load_config
from dreamgs.errors import InputError
from dreamgs.gaussians import GaussianModel
from dreamgs.fit import (evaluate, fit_gaussians, load_posed_images, render_rgba, synthetic_scene,
                         synthetic_views)
from dreamgs.media import save_image


def test_fit_synthetic_scene_reaches_28db_on_heldout_views():
    scene = synthetic_scene()
    train, test = synthetic_views(size=64, n_train=24, n_test=8)
    assert len(train) == 24
    train_imgs, test_imgs = render_rgba(scene, train), render_rgba(scene, test)
    cfg = load_config("text", None, ["device=cpu", "backend=torch", "fit.iters=300"])
    model = fit_gaussians(train_imgs, train, cfg, seed=0, progress=False)
    scores = evaluate(model, test_imgs, test)
    assert min(scores) > 25.0
    assert sum(scores) / len(scores) >= 28.0, scores
    # The starting point (a grey ball) does far worse, so the bar is meaningful.
    start = GaussianModel.random_ball(cfg.fit.num_points, cfg.fit.init_radius, opacity=cfg.fit.init_opacity)
    blank = evaluate(start, test_imgs, test)
    assert sum(blank) / len(blank) < 20.0


def _write_dataset(root, n=3, size=16, alpha=True, sizes=None):
    frames = []
    for i in range(n):
        s = sizes[i] if sizes else size
        img = np.random.default_rng(i).random((s, s, 4 if alpha else 3)).astype(np.float32)
        save_image(root / f"{i:03d}.png", img)
        frames.append({"file": f"{i:03d}.png", "elevation": -10.0, "azimuth": 40.0 * i, "radius": 2.0})
    (root / "cameras.json").write_text(json.dumps({"fovy": 49.1, "frames": frames}))


def test_load_posed_images_reads_orbit_and_c2w(tmp_path):
    _write_dataset(tmp_path)
    imgs, cams, names = load_posed_images(tmp_path)
    assert imgs.shape == (3, 16, 16, 4) and names == ["000.png", "001.png", "002.png"]
    torch.testing.assert_close(cams.azimuth, torch.tensor([0.0, 40.0, 80.0]))
    # The same cameras given as c2w matrices.
    meta = json.loads((tmp_path / "cameras.json").read_text())
    c2w = cams.c2w.tolist()
    for fr, m in zip(meta["frames"], c2w):
        for k in ("elevation", "azimuth", "radius"):
            del fr[k]
        fr["c2w"] = m
    (tmp_path / "cameras.json").write_text(json.dumps(meta))
    _, cams2, _ = load_posed_images(tmp_path)
    torch.testing.assert_close(cams2.viewmats, cams.viewmats, atol=1e-5, rtol=0)
    torch.testing.assert_close(cams2.elevation, cams.elevation, atol=1e-3, rtol=0)


def test_fit_rejects_images_without_alpha(tmp_path):
    _write_dataset(tmp_path, alpha=False)
    with pytest.raises(InputError, match="000.png: image has no alpha channel"):
        load_posed_images(tmp_path)


def test_fit_rejects_images_of_different_sizes(tmp_path):
    _write_dataset(tmp_path, sizes=[16, 16, 20])
    with pytest.raises(InputError, match=r"002.png: size 20x20 differs from the first image's 16x16"):
        load_posed_images(tmp_path)


def test_fit_missing_metadata_and_bad_frames(tmp_path):
    with pytest.raises(InputError, match="cameras.json: not found"):
        load_posed_images(tmp_path)
    (tmp_path / "cameras.json").write_text('{"frames": [{"file": "a.png"}]}')
    with pytest.raises(InputError, match="a.png"):
        load_posed_images(tmp_path)
    (tmp_path / "cameras.json").write_text("{not json")
    with pytest.raises(InputError, match="cameras.json: invalid"):
        load_posed_images(tmp_path)


def test_fit_command_on_a_dataset_folder_writes_a_new_seeded_run_each_time(tmp_path, capsys):
    from dreamgs.cameras import make_cameras
    from dreamgs.cli import main

    data = tmp_path / "knot"
    data.mkdir()
    angles = [(-20.0, az) for az in range(-180, 180, 40)]  # 9 views: 2 held out (every 8th)
    cams = make_cameras([e for e, _ in angles], [a for _, a in angles], 2.0, 49.1, 32)
    frames = []
    for i, img in enumerate(render_rgba(synthetic_scene(), cams, backend="torch")):
        save_image(data / f"{i:03d}.png", img.numpy())
        frames.append({"file": f"{i:03d}.png", "elevation": angles[i][0], "azimuth": angles[i][1], "radius": 2.0})
    (data / "cameras.json").write_text(json.dumps({"fovy": 49.1, "frames": frames}), encoding="utf-8")
    out = tmp_path / "fits"
    args = ["fit", "--data", str(data), "--out", str(out), "fit.iters=10", "fit.num_points=200", "device=cpu"]
    assert main(args) == 0 and main(args) == 0
    runs = sorted(out.iterdir())
    assert len(runs) == 2 and all("-knot-s" in r.name for r in runs)  # a new folder per fit, never overwritten
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["train_views"] == 7 and metrics["test_views"] == 2 and len(metrics["psnr"]) == 2
        seed = int((run / "seed.txt").read_text())
        assert run.name.endswith(f"-s{seed}") and (run / "model.ply").is_file() and (run / "heldout_grid.png").is_file()
    assert "held-out PSNR" in capsys.readouterr().out
