"""Batch generation: jobs-file checks, completeness, manifest, retries, resuming, Ray and local runs."""

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from optional import need

import dreamgs.pipeline as pipeline
from dreamgs import batch
from dreamgs.batch import Manifest, completion_problem, execute_job, load_jobs, read_manifest, run_batch
from dreamgs.cli import main
from dreamgs.errors import InputError, TrainingError
from dreamgs.pipeline import RunResult, resolve_config
from dreamgs.run import prepare_run_dir, write_json

TINY = ["prior.kind=oracle", "stage1.iters=10", "stage1.render_sizes=[32]", "stage1.size_milestones=[]",
        "gaussians.num_points=200", "prior.oracle_azimuths=12", "prior.oracle_elevations=[0]",
        "prior.oracle_resolution=32", "stage1.ref_size=32", "export.video=false", "stage2.enabled=false"]


def write_jobs(folder: Path, jobs: list, name: str = "jobs.yaml", **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({**top, "jobs": jobs}, sort_keys=False), encoding="utf-8")
    return path


def by_batch(records: list[dict]) -> list[list[dict]]:
    """Manifest records grouped by batch invocation, in order."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["batch"], []).append(r)
    return list(groups.values())


# ------------------------------------------------------------------------------------------------
# Jobs file


def test_load_jobs_resolves_paths_names_seeds_and_overrides(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pic.png").write_bytes(b"x")  # existence is all load_jobs checks
    path = write_jobs(tmp_path, [
        {"prompt": "a mug"},
        {"prompt": "a   mug"},  # same slug and seed: the derived name gets a suffix
        {"prompt": "a mug", "seed": 7, "overrides": {"gaussians": {"num_points": 50}, "export.video": True,
                                                     "prior.oracle_elevations": [0, 15]}},
        {"name": "pic", "image": "in/pic.png", "overrides": ["stage1.iters=3"]},
        "a die",  # a bare string is a prompt
    ], seed=4, overrides=TINY, output_dir="out")
    spec = load_jobs(path)
    assert spec.output_dir == tmp_path / "out"
    names = [j.name for j in spec.jobs]
    assert names == ["a-mug-s4", "a-mug-s4-2", "a-mug-s7", "pic", "a-die-s4"]
    assert [j.run_dir for j in spec.jobs] == [tmp_path / "out" / n for n in names]
    assert [j.seed for j in spec.jobs] == [4, 4, 7, 4, 4]
    assert all(j.error is None for j in spec.jobs)
    c0, c2, c3 = spec.jobs[0].config, spec.jobs[2].config, spec.jobs[3].config
    assert c0.prompt == "a mug" and c0.seed == 4 and c0.gaussians.num_points == 200 and c0.export.video is False
    assert c2.gaussians.num_points == 50 and c2.export.video is True  # job overrides win over top-level ones
    assert c2.prior.oracle_elevations == (0.0, 15.0)
    assert spec.jobs[3].mode == "image" and c3.mode == "image"
    assert Path(c3.image) == tmp_path / "in" / "pic.png" and c3.stage1.iters == 3
    # --out replaces the file's output_dir; the default is outputs/<stem> next to the file.
    assert load_jobs(path, tmp_path / "elsewhere").jobs[0].run_dir == tmp_path / "elsewhere" / "a-mug-s4"
    plain = write_jobs(tmp_path, ["a mug"], name="plain.yaml")
    assert load_jobs(plain).output_dir == tmp_path / "outputs" / "plain"


@pytest.mark.parametrize("jobs, top, fragments", [
    ([{"promt": "a mug"}], {}, ["job 1", "unknown field 'promt'", "did you mean 'prompt'"]),
    ([{"prompt": "a mug"}, {"prompt": "a die", "image": "x.png"}], {}, ["job 2", "exactly one of"]),
    ([{"seed": 3}], {}, ["job 1", "exactly one of"]),
    ([{"name": "m", "prompt": "a mug", "seed": -1}], {}, ["job 1 ('m')", "seed", "-1"]),
    ([{"prompt": "a mug", "seed": "abc"}], {}, ["job 1", "seed"]),
    ([{"prompt": "   "}], {}, ["job 1", "prompt"]),
    ([{"name": "m", "prompt": "a"}, {"name": "m", "prompt": "b"}], {}, ["job name 'm'", "more than one"]),
    ([{"name": "../up", "prompt": "a"}], {}, ["job 1", "not a valid folder name"]),
    ([{"prompt": "a", "overrides": ["stage1.iters"]}], {}, ["job 1", "overrides", "key=value"]),
    ([{"prompt": "a", "overrides": 5}], {}, ["job 1", "overrides"]),
    ([], {}, ["'jobs' must be a non-empty list"]),
    ([{"prompt": "a"}], {"output": "x"}, ["unknown top-level field 'output'", "did you mean 'output_dir'"]),
    ([{"prompt": "a"}], {"seed": 1.5}, ["seed"]),
])
def test_load_jobs_rejects_structural_mistakes(tmp_path, jobs, top, fragments):
    path = write_jobs(tmp_path, jobs, **top)
    with pytest.raises(InputError) as e:
        load_jobs(path)
    for frag in fragments:
        assert frag in str(e.value)
    assert str(path) in str(e.value)


def test_load_jobs_rejects_missing_or_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_jobs(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("jobs: [a, b\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML"):
        load_jobs(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a mug\n", encoding="utf-8")
    with pytest.raises(InputError, match="mapping"):
        load_jobs(tmp_path / "list.yaml")


def test_job_whose_config_does_not_resolve_gets_an_error_not_an_exception(tmp_path):
    path = write_jobs(tmp_path, [{"prompt": "a mug", "overrides": ["stage1.iterz=3"]},
                                 {"image": "missing.png"}, {"prompt": "a die"}], overrides=TINY)
    jobs = load_jobs(path).jobs
    assert "stage1.iterz" in jobs[0].error and "did you mean 'iters'" in jobs[0].error
    assert str(tmp_path / "missing.png") in jobs[1].error and "not found" in jobs[1].error
    assert jobs[2].error is None and jobs[2].config is not None


# ------------------------------------------------------------------------------------------------
# Completeness and manifest


def fake_run(run_dir: Path, cfg, files: dict | None = None) -> Path:
    """A run folder as the pipeline leaves it, without running anything."""
    prepare_run_dir(run_dir, cfg, cfg.seed)
    (run_dir / "model.ply").write_bytes(b"ply\n")
    summary = {"seed": cfg.seed}
    if files is not None:
        summary["files"] = files
    write_json(run_dir / "summary.json", summary)
    return run_dir


def test_completeness_needs_summary_matching_config_and_listed_files(tmp_path):
    cfg = resolve_config("a mug", overrides=TINY, seed=3)
    run = fake_run(tmp_path / "run", cfg, files={"mesh": "mesh.glb"})
    assert completion_problem(run, cfg) == "missing or empty mesh.glb"
    (run / "mesh.glb").write_bytes(b"glb")
    assert completion_problem(run, cfg) is None and batch.is_complete(run, cfg)
    # Where and on what a run happens does not matter; what it makes does.
    assert batch.is_complete(run, resolve_config("a mug", overrides=TINY + ["device=cpu", "output_dir=x"], seed=3))
    assert "differs" in completion_problem(run, resolve_config("a mug", overrides=TINY, seed=4))
    assert "differs" in completion_problem(run, resolve_config("a die", overrides=TINY, seed=3))
    assert "differs" in completion_problem(run, resolve_config("a mug", overrides=TINY + ["stage1.iters=11"], seed=3))
    (run / "model.ply").write_bytes(b"")
    assert completion_problem(run, cfg) == "missing or empty model.ply"
    (run / "model.ply").write_bytes(b"ply\n")
    (run / "summary.json").write_text("{not json", encoding="utf-8")
    assert "unreadable" in completion_problem(run, cfg)
    (run / "summary.json").unlink()
    assert completion_problem(run, cfg) == "no summary.json"
    assert completion_problem(tmp_path / "absent", cfg) == "no summary.json"


def test_outputs_recorded_in_the_manifest_must_still_exist(tmp_path, monkeypatch):
    path = write_jobs(tmp_path, [{"name": "m", "prompt": "a mug", "seed": 3}], overrides=TINY)
    job = load_jobs(path).jobs[0]
    fake_run(job.run_dir, job.config)
    (job.run_dir / "model.glb").write_bytes(b"glb")
    Manifest(tmp_path / "outputs" / "jobs" / "manifest.jsonl").append(
        {"job": "m", "status": "done", "run_dir": str(job.run_dir),
         "outputs": {"ply": str(job.run_dir / "model.ply"), "glb": str(job.run_dir / "model.glb")}})
    generated = []

    def generate(prompt=None, *, run_dir=None, **kwargs):
        generated.append(run_dir)
        return RunResult(run_dir, 3, {"ply": fake_run(run_dir, job.config) / "model.ply"})

    monkeypatch.setattr(pipeline, "generate", generate)
    report = run_batch(path, local=True, progress=False, log=lambda m: None)
    assert report.records["m"]["status"] == "skipped" and generated == []
    assert report.records["m"]["outputs"]["glb"] == str(job.run_dir / "model.glb")
    (job.run_dir / "model.glb").unlink()
    assert "model.glb" in completion_problem(job.run_dir, job.config, batch.done_outputs(report.manifest)
                                             [str(job.run_dir)].values())
    report = run_batch(path, local=True, progress=False, log=lambda m: None)
    assert report.records["m"]["status"] == "done" and generated == [job.run_dir]


def test_manifest_appends_whole_lines_and_skips_a_torn_one(tmp_path):
    m = Manifest(tmp_path / "sub" / "manifest.jsonl")
    assert m.read() == []
    m.append({"job": "a", "n": 1})
    m.append({"job": "b", "text": "é\nnewline inside"})
    with open(m.path, "ab") as f:  # a writer killed mid-line
        f.write(b'{"job": "tor')
    m.append({"job": "c"})
    lines = m.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and lines[2] == '{"job": "tor'
    assert [r["job"] for r in read_manifest(m.path)] == ["a", "b", "c"]
    assert read_manifest(m.path)[1]["text"] == "é\nnewline inside"


def test_fresh_attempt_removes_a_stale_summary_and_reports_the_error(tmp_path, monkeypatch):
    old = resolve_config("a mug", overrides=TINY, seed=1)
    run = fake_run(tmp_path / "run", old)
    cfg = resolve_config("a mug", overrides=TINY, seed=2)

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(pipeline, "generate", boom)
    out = execute_job({"name": "x", "mode": "text", "prompt": "a mug", "image": None, "config": cfg,
                       "run_dir": str(run), "force_cpu": False, "allow_resume": True})
    assert not out["ok"] and out["retryable"] and out["error"] == "RuntimeError: kaboom"
    assert "kaboom" in out["traceback"]
    assert not (run / "summary.json").exists()  # an interrupted re-run is never taken as finished
    assert cfg.seed == 2 and cfg.device == "auto"  # the caller's config is not modified


def _fail_at_step(monkeypatch, step: int) -> None:
    """Make stage 1 run out of memory when it is about to run step ``step`` (0-based)."""
    from dreamgs.stage1 import Stage1

    orig = Stage1.step

    def step_or_fail(self):
        if self.step_count == step:
            raise MemoryError()
        return orig(self)
    monkeypatch.setattr(Stage1, "step", step_or_fail)


def test_batch_resumes_a_run_from_its_checkpoint_and_starts_over_otherwise(tmp_path, monkeypatch):
    """Real checkpoints and the real pipeline: the run of the job's config with a
    checkpoint.safetensors resumes from it; the one whose config.yaml is of another seed starts over."""
    ckpt = TINY + ["stage1.checkpoint_every=3", "device=cpu"]
    path = write_jobs(tmp_path, [{"name": "r", "prompt": "a mug", "seed": 5}, {"name": "f", "prompt": "a die"}],
                      overrides=ckpt)
    spec = load_jobs(path)
    run_r, run_f = spec.jobs[0].run_dir, spec.jobs[1].run_dir
    _fail_at_step(monkeypatch, 4)  # interrupted runs: each keeps its checkpoint of step 3
    with pytest.raises(TrainingError, match="out of memory"):
        pipeline.generate(config=copy.deepcopy(spec.jobs[0].config), run_dir=run_r, progress=False)
    with pytest.raises(TrainingError, match="out of memory"):
        pipeline.generate("a die", overrides=ckpt, seed=9, run_dir=run_f, progress=False)
    monkeypatch.undo()
    assert pipeline.has_checkpoint(run_r) and pipeline.has_checkpoint(run_f)
    resumed, generated = [], []
    real_resume, real_generate = pipeline.resume_run, pipeline.generate

    def resume_run(run_dir, **kwargs):
        resumed.append(Path(run_dir))
        return real_resume(run_dir, **kwargs)

    def generate(*args, run_dir=None, **kwargs):
        generated.append(Path(run_dir))
        return real_generate(*args, run_dir=run_dir, **kwargs)

    monkeypatch.setattr(pipeline, "resume_run", resume_run)
    monkeypatch.setattr(pipeline, "generate", generate)
    report = run_batch(path, local=True, progress=False, log=lambda m: None)
    assert report.ok and resumed == [run_r] and generated == [run_f]
    assert report.records["r"]["status"] == "done" and report.records["r"]["resumed"] is True
    assert report.records["f"]["status"] == "done" and report.records["f"]["resumed"] is False
    summary = json.loads((run_r / "summary.json").read_text())
    assert summary["resumed_from"] == {"stage": "stage1", "step": 3} and "resumed_from" not in json.loads(
        (run_f / "summary.json").read_text())
    assert not pipeline.has_checkpoint(run_r) and not pipeline.has_checkpoint(run_f)  # removed when done


def test_a_failed_resume_is_retried_from_scratch(tmp_path, monkeypatch):
    """A checkpoint whose header reads (so has_checkpoint is true) but that resume_run refuses
    with an input error: the job is not failed for it, the retry starts afresh."""
    from dreamgs.checkpoint import CHECKPOINT_NAME, save_checkpoint
    from dreamgs.config import Config
    from dreamgs.gaussians import GaussianModel
    from dreamgs.train import GaussianTrainer

    path = write_jobs(tmp_path, [{"name": "r", "prompt": "a mug", "seed": 5}], overrides=TINY)
    job = load_jobs(path).jobs[0]
    prepare_run_dir(job.run_dir, job.config, 5)
    c = Config()
    trainer = GaussianTrainer(GaussianModel.random_ball(10, generator=torch.Generator().manual_seed(0)),
                              c.gaussians, c.densify, seed=0)
    save_checkpoint(job.run_dir / CHECKPOINT_NAME, stage="stage1", config={}, trainer=trainer)  # no seed in it
    assert pipeline.has_checkpoint(job.run_dir)
    calls = []
    real_resume = pipeline.resume_run

    def resume_run(run_dir, **kwargs):
        calls.append("resume")
        return real_resume(run_dir, **kwargs)

    def generate(prompt=None, *, run_dir=None, **kwargs):
        calls.append("generate")
        (run_dir / "model.ply").write_bytes(b"ply\n")
        write_json(run_dir / "summary.json", {})
        return RunResult(run_dir, 5, {"ply": run_dir / "model.ply"})

    monkeypatch.setattr(pipeline, "resume_run", resume_run)
    monkeypatch.setattr(pipeline, "generate", generate)
    report = run_batch(path, local=True, retries=2, progress=False, log=lambda m: None)
    recs = read_manifest(report.manifest)
    assert calls == ["resume", "generate"]
    assert [(r["status"], r["attempt"], r["resumed"]) for r in recs] == [("retrying", 1, True), ("done", 2, False)]
    assert recs[0]["error"].startswith("InputError: ") and "has no seed" in recs[0]["error"]


# ------------------------------------------------------------------------------------------------
# Whole batches


def test_local_batch_retries_then_skips_and_cli_reports(tmp_path, monkeypatch, capsys):
    path = write_jobs(tmp_path, [{"prompt": "a mug", "seed": 1}, {"name": "gone", "image": "missing.png"}],
                      overrides=TINY + ["device=cpu"])
    real_generate, calls = pipeline.generate, []

    def flaky(*args, **kwargs):
        calls.append(kwargs["run_dir"])
        if len(calls) == 1:
            raise RuntimeError("transient failure")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate", flaky)
    monkeypatch.setattr(batch, "ray_available", lambda: False)  # as if Ray were not installed
    logs: list[str] = []
    report = run_batch(path, retries=1, progress=False, log=logs.append)
    assert report.backend == "local" and "Ray is not installed" in logs[0]
    assert len(calls) == 2 and not report.ok
    recs = read_manifest(report.manifest)
    mug = [r for r in recs if r["job"] == "a-mug-s1"]
    assert [(r["status"], r["attempt"]) for r in mug] == [("retrying", 1), ("done", 2)]
    assert mug[0]["error"] == "RuntimeError: transient failure" and "transient failure" in mug[0]["traceback"]
    assert mug[1]["error"] is None and mug[1]["seed"] == 1 and mug[1]["prompt"] == "a mug"
    outputs = {k: Path(v) for k, v in mug[1]["outputs"].items()}
    assert outputs["ply"] == tmp_path / "outputs" / "jobs" / "a-mug-s1" / "model.ply"
    assert all(p.is_file() for p in outputs.values())
    gone = [r for r in recs if r["job"] == "gone"]
    assert len(gone) == 1 and gone[0]["status"] == "failed" and gone[0]["attempt"] == 0
    assert "missing.png" in gone[0]["error"] and gone[0]["image"] == str(tmp_path / "missing.png")

    # Re-run through the CLI with --local: the finished job is skipped, untouched.
    mtime = outputs["ply"].stat().st_mtime_ns
    assert main(["batch", str(path), "--local", "--quiet"]) == 1  # a job failed
    out, err = capsys.readouterr()
    assert "0 done, 1 skipped, 1 failed" in out and "failed: gone" in err
    assert len(calls) == 2 and outputs["ply"].stat().st_mtime_ns == mtime
    last = by_batch(read_manifest(report.manifest))[-1]
    assert {(r["job"], r["status"]) for r in last} == {("a-mug-s1", "skipped"), ("gone", "failed")}
    # --dry-run lists each job's state and runs nothing.
    assert main(["batch", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "a-mug-s1" in out and "complete" in out and "invalid" in out
    assert len(read_manifest(report.manifest)) == len(recs) + 2


def test_cli_batch_reports_structural_errors_in_one_line(tmp_path, capsys):
    path = write_jobs(tmp_path, [{"prompt": "a mug", "sed": 1}])
    assert main(["batch", str(path), "--local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown field 'sed'" in err and "did you mean 'seed'" in err
    assert main(["batch", str(path), "--local", "--num-gpus", "1"]) == 2
    assert main(["batch", str(path), "--retries", "-1"]) == 2


@pytest.fixture(scope="module")
def local_ray():
    ray = need("ray")
    batch.start_local_ray(num_cpus=2, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


def test_ray_batch_retries_a_failing_job_then_reports_it_while_the_others_finish(tmp_path, local_ray):
    diverge = {"stage1.lambda_sds": 1e40, "stage1.max_bad_steps": 0}  # a TrainingError: worth retrying
    path = write_jobs(tmp_path, [{"name": "bad", "prompt": "a mug", "seed": 1, "overrides": diverge},
                                 {"name": "good", "prompt": "a house", "seed": 2}], overrides=TINY, output_dir="out")
    report = run_batch(path, gpus_per_job=0, retries=1, progress=False, log=lambda m: None)
    assert report.backend == "ray" and report.names("done") == ["good"] and report.names("failed") == ["bad"]
    recs = [r for r in read_manifest(tmp_path / "out" / "manifest.jsonl") if r["job"] == "bad"]
    assert [(r["status"], r["attempt"]) for r in recs] == [("retrying", 1), ("failed", 2)]
    assert all("training diverged" in r["error"] for r in recs)


def test_ray_batch_runs_jobs_records_failure_and_skips_completed_on_rerun(tmp_path, local_ray):
    (tmp_path / "broken.png").write_text("not an image", encoding="utf-8")
    path = write_jobs(tmp_path, [{"prompt": "a mug", "seed": 1}, {"prompt": "a house", "seed": 2},
                                 {"name": "die", "prompt": "a die", "seed": 3}, {"image": "broken.png"}],
                      overrides=TINY, output_dir="out")
    report = run_batch(path, gpus_per_job=0, retries=2, progress=False, log=lambda m: None)
    assert report.backend == "ray"
    assert sorted(report.names("done")) == ["a-house-s2", "a-mug-s1", "die"]
    assert report.names("failed") == ["broken-s0"] and not report.ok
    recs = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert len(recs) == 4  # input errors are not retried: one record per job
    failed = next(r for r in recs if r["job"] == "broken-s0")
    assert failed["status"] == "failed" and failed["attempt"] == 1 and failed["host"]
    assert "not an image file" in failed["error"] and failed["outputs"] == {}
    mtimes = {}
    for r in recs:
        if r["status"] != "done":
            continue
        run = Path(r["run_dir"])
        assert run == tmp_path / "out" / r["job"] and r["attempt"] == 1 and r["duration_s"] > 0
        summary = json.loads((run / "summary.json").read_text())
        assert summary["seed"] == r["seed"] and summary["gaussians"] > 0 and summary["device"] == "cpu"
        assert (run / "seed.txt").read_text().strip() == str(r["seed"])
        assert {"ply", "summary", "config"} <= set(r["outputs"])
        mtimes[r["job"]] = {p: os.stat(p).st_mtime_ns for p in r["outputs"].values()}

    again = run_batch(path, gpus_per_job=0, retries=0, progress=False, log=lambda m: None)
    assert sorted(again.names("skipped")) == ["a-house-s2", "a-mug-s1", "die"]
    assert again.names("failed") == ["broken-s0"]
    second = by_batch(read_manifest(tmp_path / "out" / "manifest.jsonl"))
    assert len(second) == 2 and {r["status"] for r in second[1]} == {"skipped", "failed"}
    for job, files in mtimes.items():
        assert {p: os.stat(p).st_mtime_ns for p in files} == files, job
