"""``--method magic3d`` through the pipeline: a tiny run to a watertight model.glb with the oracle,
the fine stage's diffusion-time range and its gradients on the geometry, checkpoints and
``dreamgs resume`` across the coarse-to-fine boundary (bit for bit on the CPU), and the bench method."""

import pytest
import torch

from dreamgs.checkpoint import CHECKPOINT_NAME, load_checkpoint
from dreamgs.cli import _generation_overrides, build_parser, main
from dreamgs.config import load_config
from dreamgs.errors import ConfigError, TrainingError
from dreamgs.pipeline import generate, resume_run
from dreamgs.representations.dmtet import load_dmtet
from dreamgs.stage1_magic3d import Magic3DStage, coarse_steps

ITERS = 8  # 4 coarse (NeRF) steps, 4 fine (DMTet) steps
TINY = ["method=magic3d", "prior.kind=oracle", f"stage1.iters={ITERS}", "stage1.checkpoint_every=2",
        "stage1.render_sizes=[24]", "stage1.size_milestones=[]", "prior.oracle_azimuths=8",
        "prior.oracle_elevations=[0]", "prior.oracle_resolution=24", "nerf.levels=2", "nerf.base_resolution=8",
        "nerf.max_resolution=16", "nerf.hidden=8", "nerf.samples=16", "nerf.occ_resolution=8", "nerf.occ_every=2",
        "magic3d.grid_resolution=12", "magic3d.render_size=32", "magic3d.coarse_fraction=0.5",
        "export.video=false", "stage2.enabled=false", "device=cpu", "stage1.deterministic=true"]
MESH = ["stage2.enabled=true", "stage2.iters=1", "stage2.render_size=24", "texture.size=64", "texture.bake_views=2",
        "texture.bake_resolution=24", "export.obj=false"]
SEED = 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("m3") / "run"
    res = generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    return run, res


def test_tiny_run_from_the_cli_exports_a_watertight_glb(tmp_path, capsys):
    import trimesh

    from dreamgs.bench import METHODS

    tiny = [o for o in TINY if not o.startswith("stage2.enabled")]
    assert main(["text", "a mug", "--method", "magic3d", "--prior", "oracle:mug", "--seed", str(SEED), "--out",
                 str(tmp_path), *tiny, *MESH, "mesh.target_faces=400"]) == 0
    assert "stage 2: extracting the mesh (the DMTet's zero set)" in capsys.readouterr().err
    (run,) = list(tmp_path.iterdir())
    assert (run / "dmtet.safetensors").is_file() and (run / "model.glb").is_file()
    assert not (run / CHECKPOINT_NAME).exists() and "method: magic3d" in (run / "config.yaml").read_text()
    tm = trimesh.load(run / "model.glb", force="mesh")
    tm.merge_vertices(merge_tex=True, merge_norm=True)  # UV seams split the glb's vertices
    assert 50 < len(tm.faces) <= 400 and tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
    assert float(abs(tm.vertices).max()) <= 0.75 + 1e-4  # inside the NeRF's box
    assert "magic3d" in METHODS
    from test_export import validate_glb

    issues = validate_glb(run / "model.glb", tmp_path)["issues"]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


def test_run_folder_holds_the_dmtet_and_the_fine_stage_ran(reference):
    run, res = reference
    assert res.summary["method"] == "magic3d" and res.summary["dmtet_resolution"] == 12
    assert res.summary["dmtet_surface_faces"] > 0 and "normal" in res.summary["stage1_last"]
    m = load_dmtet(run / "dmtet.safetensors")
    assert m.geometry.grid.resolution == 12 and m.color.spec.max_resolution == 16
    verts, faces = m.surface()
    assert len(faces) == res.summary["dmtet_surface_faces"]


def test_fine_stage_keeps_t_below_t_max_and_moves_the_geometry():
    cfg = load_config("text", None, [*TINY, "prompt=a mug", "seed=3", "prior.t_schedule=random"])
    from dreamgs.priors import load_prior

    prior = load_prior(cfg, torch.device("cpu"), None)
    st = Magic3DStage(cfg, prior, None, "cpu")
    while st.step_count < coarse_steps(cfg):
        st.step()
    seen = []
    orig = prior.timestep
    prior.timestep = lambda p: seen.append(orig(p)) or seen[-1]
    st.step()  # builds the fine model from the NeRF, then one fine step
    sdf0 = st.model.params["dmtet.sdf"].detach().clone()
    dfm0 = st.model.params["dmtet.deform"].detach().clone()
    for _ in range(3):
        st.step()
    prior.timestep = orig
    T = len(prior.alphas_cumprod)
    assert seen and max(seen) <= 0.5 * T and prior.t_max == cfg.prior.t_max  # restored after each step
    assert st.stage == "fine" and st.step_count == coarse_steps(cfg) + 4
    assert not torch.equal(st.model.params["dmtet.sdf"], sdf0) and not torch.equal(st.model.params["dmtet.deform"],
                                                                                   dfm0)


def _interrupt_at(monkeypatch, step: int):
    orig = Magic3DStage.step

    def step_or_fail(self):
        if self.step_count == step:
            raise torch.OutOfMemoryError("simulated")
        return orig(self)
    monkeypatch.setattr(Magic3DStage, "step", step_or_fail)
    return orig


@pytest.mark.parametrize("fail_at, ckpt_step, rep", [(3, 2, "nerf"), (7, 6, "dmtet")])
def test_interrupted_run_resumes_to_the_same_dmtet(reference, tmp_path, monkeypatch, fail_at, ckpt_step, rep):
    """Stopped in the coarse stage (resumes through the boundary) or in the fine stage."""
    ref_run, _ = reference
    orig = _interrupt_at(monkeypatch, fail_at)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="dreamgs resume"):
        generate("a mug", overrides=TINY, seed=SEED, run_dir=run, progress=False)
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    assert ckpt.stage == "stage1" and ckpt.step == ckpt_step and ckpt.meta["trainer"]["representation"] == rep
    monkeypatch.setattr(Magic3DStage, "step", orig)
    res = resume_run(run, progress=False)
    assert res.summary["resumed_from"] == {"stage": "stage1", "step": ckpt_step}
    a, b = load_dmtet(ref_run / "dmtet.safetensors"), load_dmtet(run / "dmtet.safetensors")
    assert sorted(a.params) == sorted(b.params)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def test_bench_method_scores_a_tiny_magic3d_run_with_the_bench_config(tmp_path):
    from dreamgs.bench import run_bench

    config = tmp_path / "tiny.yaml"
    config.write_text("stage1:\n  iters: 6\n")  # the bench's --config reaches the runs
    ov = [o for o in TINY if not o.startswith(("method=", "prior.kind=", "stage2.enabled", "device=",
                                               "stage1.iters="))] + MESH
    report = run_bench(["magic3d"], ["gen:0"], seeds=(0,), out_dir=tmp_path / "b", overrides=ov, baselines=False,
                       views=4, size=32, device="cpu", config=config, progress=False)
    (row,) = report["results"]
    assert row["method"] == "magic3d" and "failed" not in row
    assert 0 < row["chamfer_pct"] < 50 and row["psnr_masked"] > 0
    (run,) = (tmp_path / "b" / "runs").iterdir()
    assert "iters: 6\n" in (run / "config.yaml").read_text()


def test_config_and_cli():
    cfg = load_config("text", None, ["method=magic3d"])
    assert cfg.stage1.iters == 1000 and cfg.stage1.render_sizes == (64,) and cfg.magic3d.t_max == 0.5
    assert coarse_steps(cfg) == 600
    with pytest.raises(ConfigError, match="magic3d.deform_scale"):
        load_config("text", None, ["method=magic3d", "magic3d.deform_scale=0.6"])
    with pytest.raises(ConfigError, match="coarse_fraction"):
        load_config("text", None, ["method=magic3d", "magic3d.coarse_fraction=1"])
    oracle = load_config("text", None, ["method=magic3d", "prior.kind=oracle", "device=cpu"])
    assert oracle.magic3d.render_size == 128  # the preview preset: twice the oracle's 64 px
    args = build_parser().parse_args(["text", "a mug", "--method", "magic3d"])
    assert "method=magic3d" in _generation_overrides(args)


def test_dreamgs_mesh_meshes_a_magic3d_run_folder(reference, tmp_path):
    from dreamgs.pipeline import mesh_from

    run, res = reference
    out = mesh_from(run, out_dir=tmp_path / "mesh", progress=False,
                    overrides=["stage2.iters=0", "texture.size=64", "texture.bake_views=2",
                               "texture.bake_resolution=24", "export.obj=false", "export.video=false"])
    assert out.files["glb"].is_file() and out.summary["mesh_faces"] > 0
