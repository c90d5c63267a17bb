"""``--method dreamfusion`` through the pipeline: the run folder's files, the shared stage 2 to a
model.glb, checkpoints and ``dreamgs resume`` (bit for bit on the CPU), config and CLI."""

import pytest
import torch

from dreamgs.checkpoint import CHECKPOINT_NAME, load_checkpoint
from dreamgs.cli import _generation_overrides, build_parser
from dreamgs.config import load_config
from dreamgs.errors import ConfigError, TrainingError
from dreamgs.pipeline import generate, resume_run
from dreamgs.representations.nerf import load_nerf
from dreamgs.stage1_nerf import NerfStage1

ITERS = 6
TINY = ["method=dreamfusion", "prior.kind=oracle", f"stage1.iters={ITERS}", "stage1.checkpoint_every=2",
        "stage1.render_sizes=[24]", "stage1.size_milestones=[]", "prior.oracle_azimuths=8", "prior.oracle_elevations=[0]",
        "prior.oracle_resolution=24", "nerf.levels=2", "nerf.base_resolution=8", "nerf.max_resolution=16",
        "nerf.hidden=8", "nerf.samples=16", "nerf.occ_resolution=8", "nerf.occ_every=2",
        "nerf.ambient_only_fraction=0.3", "export.video=false", "stage2.enabled=false", "device=cpu",
        "stage1.deterministic=true"]
SEED = 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("df") / "run"
    res = generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    return run, res


def test_run_folder_holds_the_nerf_and_its_config(reference):
    run, res = reference
    assert (run / "nerf.safetensors").is_file() and not (run / "model.ply").exists()
    assert not (run / CHECKPOINT_NAME).exists()
    assert "method: dreamfusion" in (run / "config.yaml").read_text()
    assert res.summary["method"] == "dreamfusion" and res.summary["nerf_parameters"] > 0
    assert 0.0 <= res.summary["normals_facing_away"] <= 1.0
    m = load_nerf(run / "nerf.safetensors")
    assert m.spec.max_resolution == 16 and m.spec.levels == 2


def test_interrupted_run_resumes_to_the_same_nerf(reference, tmp_path, monkeypatch):
    ref_run, _ = reference
    orig = NerfStage1.step

    def step_or_fail(self):
        if self.step_count == 5:
            raise torch.OutOfMemoryError("simulated")
        return orig(self)
    monkeypatch.setattr(NerfStage1, "step", step_or_fail)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="dreamgs resume"):
        generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    assert ckpt.stage == "stage1" and ckpt.step == 4
    assert ckpt.meta["trainer"]["representation"] == "nerf"
    monkeypatch.setattr(NerfStage1, "step", orig)
    with pytest.raises(ConfigError, match="'nerf.mesh_threshold' cannot change when resuming"):
        resume_run(run, ["nerf.mesh_threshold=2"], progress=False)  # Magic3D's stage 1 reads it too
    res = resume_run(run, progress=False)
    assert res.summary["resumed_from"] == {"stage": "stage1", "step": 4}
    a, b = load_nerf(ref_run / "nerf.safetensors"), load_nerf(run / "nerf.safetensors")
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    assert torch.equal(a.occupancy, b.occupancy)


def test_dreamfusion_exports_a_textured_glb_through_stage2(tmp_path):
    from dreamgs.errors import EmptyModelError

    ov = [o for o in TINY if not o.startswith("stage2.enabled")] + [
        "stage2.iters=1", "stage2.render_size=24", "mesh.grid_resolution=24", "texture.size=64",
        "texture.bake_views=2", "texture.bake_resolution=24", "export.obj=false"]
    run = tmp_path / "run"
    with pytest.raises(EmptyModelError, match=r"never reaches nerf\.mesh_threshold=1e\+06; stage 1's outputs are kept"):
        generate("a mug", overrides=ov + ["nerf.mesh_threshold=1e6"], seed=SEED, run_dir=run, progress=False)
    res = resume_run(run, ["nerf.mesh_threshold=1.0"], progress=False)  # stage 2 again, at another level
    assert res.summary["resumed_from"]["stage"] == "stage2"
    assert res.files["glb"].is_file() and res.summary["mesh_faces"] > 0
    from dreamgs.mesh.io import load_mesh

    mesh = load_mesh(res.files["glb"])
    assert mesh.vertices.abs().max() <= 0.75 + 1e-4  # inside the field's box


def test_dreamgs_mesh_meshes_a_dreamfusion_run_folder(reference, tmp_path):
    from dreamgs.pipeline import mesh_from

    run, _ = reference
    res = mesh_from(run, out_dir=tmp_path / "mesh", progress=False,
                    overrides=["stage2.iters=0", "mesh.grid_resolution=24", "texture.size=64", "texture.bake_views=2",
                               "texture.bake_resolution=24", "export.obj=false", "nerf.mesh_threshold=1.0"])
    assert res.files["glb"].is_file() and res.summary["mesh_faces"] > 0


def test_method_is_checked_and_the_preset_fills_unset_keys():
    with pytest.raises(ConfigError, match="method: expected one of dreamgaussian, dreamfusion"):
        load_config("text", None, ["method=nerf"])
    cfg = load_config("text", None, ["method=dreamfusion", "stage1.iters=7"])
    assert cfg.stage1.iters == 7 and cfg.stage1.render_sizes == (64,)
    assert load_config("text", None, []).stage1.render_sizes != (64,)  # DreamGaussian's defaults untouched


def test_cli_method_flag_is_the_method_override():
    args = build_parser().parse_args(["text", "a mug", "--method", "dreamfusion", "--prior", "oracle:mug"])
    assert "method=dreamfusion" in _generation_overrides(args)


def test_orientation_through_the_weight_share_has_the_same_loss_and_moves_the_density_too():
    from dreamgs.priors import load_prior

    def one_step(mode):
        cfg = load_config("text", None, TINY + ["prompt=a mug", "seed=3", "nerf.ambient_only_fraction=0",
                                                "nerf.albedo_prob=0", "nerf.orient_warmup=0", "nerf.orient_start=0",
                                                f"nerf.orient_weights={mode}"])
        stage = NerfStage1(cfg, load_prior(cfg, "cpu"), device="cpu")
        stage.step()
        return stage.last, {k: v.detach().clone() for k, v in stage.model.params.items()}

    (det, p_det), (share, p_share) = one_step("detached"), one_step("share")
    assert det["orient"] > 0 and share["orient"] == pytest.approx(det["orient"], rel=1e-6)
    assert any(not torch.equal(p_det[k], p_share[k]) for k in p_det)
    with pytest.raises(ConfigError, match="nerf.orient_weights: expected detached or share, got 'both'"):
        load_config("text", None, ["method=dreamfusion", "nerf.orient_weights=both"])


def test_orientation_loss_waits_for_its_start():
    from dreamgs.priors import load_prior
    from dreamgs.stage1_nerf import linear_ramp

    assert [linear_ramp(p, 0.5, 0.3) for p in (0.0, 0.29, 0.3, 0.55, 0.8, 1.0)] == pytest.approx([0, 0, 0, 0.5, 1, 1])
    assert linear_ramp(0.29, 0.0, 0.3) == 0.0 and linear_ramp(0.3, 0.0, 0.3) == 1.0

    def first_step(extra):
        cfg = load_config("text", None, TINY + ["prompt=a mug", "seed=3", "nerf.ambient_only_fraction=0",
                                                "nerf.albedo_prob=0", "nerf.orient_warmup=0", "nerf.orient_start=0"]
                           + extra)
        stage = NerfStage1(cfg, load_prior(cfg, "cpu"), device="cpu")
        stage.step()
        return {k: v.detach().clone() for k, v in stage.model.params.items()}

    waiting, off, on = first_step(["nerf.orient_start=0.5"]), first_step(["nerf.lambda_orient=0"]), first_step([])
    assert all(torch.equal(waiting[k], off[k]) for k in off)
    assert any(not torch.equal(on[k], off[k]) for k in off)


def last_of_three_steps(extra):
    """The report of a tiny DreamFusion stage 1's third step (the same draws for any ``extra``)."""
    from dreamgs.priors import load_prior

    cfg = load_config("text", None, TINY + ["prompt=a mug", "seed=3"] + extra)
    stage = NerfStage1(cfg, load_prior(cfg, "cpu"), device="cpu")
    for _ in range(3):
        stage.step()
    return stage.last


def test_empty_space_loss_enters_the_stage1_loss_and_is_reported():
    off = last_of_three_steps(["nerf.lambda_empty=0"])
    on = last_of_three_steps(["nerf.lambda_empty=1000", "nerf.empty_points=2048"])
    assert "empty" not in off and on["empty"] > 0  # the field's faint density outside the blob
    assert on["loss"] != off["loss"]
    with pytest.raises(ConfigError, match="nerf.lambda_empty must not be negative"):
        load_config("text", None, ["method=dreamfusion", "nerf.lambda_empty=-1"])


@pytest.mark.parametrize("normalise", [False, True])
def test_distortion_weight_enters_the_stage1_loss_and_is_reported(normalise):
    off = last_of_three_steps([])
    on = last_of_three_steps(["nerf.lambda_distortion=1000", f"nerf.distortion_normalise={str(normalise).lower()}",
                              "nerf.distortion_warmup=0.5"])
    assert "distortion" not in off and on["distortion"] > 0
    assert on["loss"] != off["loss"]  # the same draws, a different loss
