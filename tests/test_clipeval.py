"""`dreamgs eval`: CLIP score and R-precision (issue 16, part 4).

- The ranking with an oracle retriever (a stand-in encoder that recognises the ground-truth renders
  of each run's object and returns its prompt's embedding): R@1 = 1 on the truth, chance on blank
  images. No open_clip needed.
- The plumbing with tiny random open_clip models saved as safetensors and loaded back through the
  command's loader: shapes, batching, metrics.json, chance-level R@1 within 3 binomial sigmas.
  Skipped where open_clip is not installed (it is the optional extra `eval`).
- Bad input: one-line errors before anything is loaded; loader errors (pickles, wrong keys/shapes).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dreamgs.cli import main
from dreamgs.clipeval import (evaluate_runs, load_state_dict_checked, parse_clip_spec, rank_prompts, render_run,
                              load_runs, view_cameras)
from dreamgs.config import Config, dump_yaml
from dreamgs.errors import InputError
from dreamgs.export import save_glb
from dreamgs.mesh.core import Mesh

SIZE = 48  # render size of the tests (pixels)


# ------------------------------------------------------------------------------------------------
# Fake finished runs: config.yaml + model.glb of simple vertex-coloured shapes


def box_mesh(lo, hi, texture: np.ndarray, rng) -> Mesh:
    """An axis-aligned box (8 vertices, 12 triangles, outward winding) with random texture
    coordinates per corner into ``texture`` (H, W, 3), so its faces show parts of the texture."""
    lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32)
    verts = lo + corners * (hi - lo)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = torch.tensor([f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))], dtype=torch.int64)
    uvs = torch.tensor(rng.uniform(0.05, 0.95, size=(8, 2)), dtype=torch.float32)
    return Mesh(torch.tensor(verts), faces, uvs, faces.clone(), torch.tensor(texture, dtype=torch.float32))


def object_mesh(k: int) -> Mesh:
    """Object number ``k``: a box of its own proportions and texture."""
    rng = np.random.default_rng(100 + k)
    half = rng.uniform(0.15, 0.5, size=3)
    return box_mesh(-half, half, rng.uniform(0.0, 1.0, size=(4, 4, 3)), rng)


def blank_mesh() -> Mesh:
    """A box far outside every view: its renders are blank (all background)."""
    return box_mesh([50.0, 50.0, 50.0], [51.0, 51.0, 51.0], np.full((4, 4, 3), 0.2), np.random.default_rng(0))


def make_run(folder, prompt: str | None, mesh: Mesh, mode: str = "text"):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = Config(mode=mode, prompt=prompt or "")
    if mode == "image":
        cfg.image = "input.png"
    cfg.seed = 0
    (folder / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    save_glb(mesh, folder / "model.glb")
    return folder


PROMPTS = ["a red box", "a tall green crate", "a flat blue tile", "a small yellow cube", "a wooden chest"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root / f"run{k}", p, object_mesh(k)) for k, p in enumerate(PROMPTS)]


# ------------------------------------------------------------------------------------------------
# The oracle retriever


class OracleEncoder:
    """Recognises the truth renders of each prompt's object and returns that prompt's embedding.

    Text embeddings are basis vectors e_k (one per prompt). An image is
    compared with the in-memory truth meshes' renders at the same cameras; if the nearest is close
    (RMS < 0.05) the image maps to that prompt's e_k, otherwise it is "blank": ``blank="tie"`` maps it
    to a vector orthogonal to every prompt (every candidate ties), ``blank="random"`` to a random
    unit vector (a seeded Gaussian direction: its top-1 is uniform over the candidates)."""

    def __init__(self, truths: dict[str, Mesh], cfg: Config, views: int, size: int, blank: str = "tie",
                 dim: int = 64, seed: int = 0):
        from dreamgs.evaluate import mesh_rgba_views
        from dreamgs.media import to_uint8

        cams = view_cameras(cfg, views, size)
        self.truth = {p: to_uint8(mesh_rgba_views(m, cams, ssaa=2)[0]).astype(np.float32) / 255
                      for p, m in truths.items()}
        self.ids = {p: i for i, p in enumerate(truths)}  # distractors get the next ids when first seen
        self.dim, self.blank = dim, blank
        self.gen = torch.Generator().manual_seed(seed)
        self.image_calls: list[int] = []

    def _id(self, prompt: str) -> int:
        return self.ids.setdefault(prompt, len(self.ids))

    def encode_texts(self, texts):
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(self._id(t)), self.dim).float() for t in texts])

    def encode_images(self, images):
        self.image_calls.append(len(images))
        out = []
        for im in images.astype(np.float32) / 255:
            best, err = None, math.inf
            for prompt, renders in self.truth.items():
                e = float(np.sqrt(((renders - im[None]) ** 2).mean(axis=(1, 2, 3))).min())
                if e < err:
                    best, err = prompt, e
            if err < 0.05:
                out.append(torch.nn.functional.one_hot(torch.tensor(self._id(best)), self.dim).float())
            elif self.blank == "tie":
                out.append(torch.nn.functional.one_hot(torch.tensor(self.dim - 1), self.dim).float())
            else:
                v = torch.randn(self.dim, generator=self.gen)
                out.append(v / v.norm())
        return torch.stack(out)


def test_oracle_retriever_gives_r_precision_one_on_ground_truth(runs):
    enc = OracleEncoder({p: object_mesh(k) for k, p in enumerate(PROMPTS)}, Config(mode="text"), 8, SIZE)
    res = evaluate_runs(runs, enc, views=8, size=SIZE, model_name="oracle")
    assert enc.image_calls == [len(runs) * 8]
    assert res.summary["r_precision@1"] == 1.0 and res.summary["candidates"] == len(PROMPTS)
    assert res.summary["clip_score"] == pytest.approx(100.0)
    for run_dir, row in zip(runs, res.runs):
        saved = json.loads((run_dir / "metrics.json").read_text())
        assert saved["r_precision@1"] == 1.0 and saved["clip_score"] == pytest.approx(100.0)
        assert saved["clip_eval"]["prompt"] == row["clip_eval"]["prompt"]
        assert [v["azimuth"] for v in saved["clip_eval"]["per_view"]] == [0.0, 45.0, 90.0, 135.0, -180.0, -135.0,
                                                                          -90.0, -45.0]
        assert all(v["top1"] == saved["clip_eval"]["prompt"] for v in saved["clip_eval"]["per_view"])


def test_oracle_retriever_swapped_prompts_score_zero(runs):
    """Each run paired with its neighbour's prompt: the oracle retrieves the object's true prompt,
    which is now another run's, so R@1 = 0 (the labels really follow --prompts)."""
    enc = OracleEncoder({p: object_mesh(k) for k, p in enumerate(PROMPTS)}, Config(mode="text"), 2, SIZE)
    shifted = PROMPTS[1:] + PROMPTS[:1]
    res = evaluate_runs(runs, enc, prompts=shifted, views=2, size=SIZE, write=False)
    assert res.summary["r_precision@1"] == 0.0 and res.summary["clip_score"] == 0.0
    assert [r["clip_eval"]["prompt"] for r in res.runs] == shifted


def test_blank_images_give_chance_exactly_with_ties(tmp_path):
    blanks = [make_run(tmp_path / f"blank{k}", p, blank_mesh()) for k, p in enumerate(PROMPTS[:4])]
    assert (render_run(load_runs(blanks[:1])[0], 2, SIZE) == 255).all()  # white background only
    enc = OracleEncoder({p: object_mesh(k) for k, p in enumerate(PROMPTS)}, Config(mode="text"), 4, SIZE, "tie")
    res = evaluate_runs(blanks, enc, views=4, size=SIZE, write=False)
    assert res.summary["r_precision@1"] == pytest.approx(1 / 4) == res.summary["chance_r_precision@1"]
    assert res.summary["clip_score"] == 0.0


def test_blank_images_give_chance_within_three_sigma(tmp_path):
    blanks = [make_run(tmp_path / f"blank{k}", p, blank_mesh()) for k, p in enumerate(PROMPTS[:3])]
    distractors = ["a green sphere", "a metal cone", "a glass vase"]  # 6 candidates: chance 1/6
    enc = OracleEncoder({}, Config(mode="text"), 40, SIZE, "random", seed=3)
    res = evaluate_runs(blanks, enc, distractors=distractors, views=40, size=SIZE, write=False)
    n, p = res.summary["renderings"], 1 / 6
    assert n == 120 and res.summary["candidates"] == 6
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(res.summary["r_precision@1"] - p) <= 3 * sigma, res.summary


def test_rank_prompts_against_brute_force():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(50, 7, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 7, generator=g), dim=-1)
    labels = torch.randint(0, 5, (50,), generator=g).numpy()
    r = rank_prompts(img, txt, labels)
    for i in range(50):
        sims = [float(sum(float(a) * float(b) for a, b in zip(img[i], txt[j]))) for j in range(5)]
        assert r.cosine[i] == pytest.approx(sims[labels[i]], abs=1e-9)
        assert r.hit[i] == (1.0 if max(range(5), key=lambda j: sims[j]) == labels[i] else 0.0)
        assert r.clip_score[i] == pytest.approx(100 * max(sims[labels[i]], 0), abs=1e-7)
    # a 3-way tie at the top counts 1/3 for a member, 0 for a non-member
    txt3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r3 = rank_prompts(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), txt3, [1, 3])
    assert r3.hit.tolist() == pytest.approx([1 / 3, 0.0])


def test_metrics_json_keeps_other_keys(runs):
    (runs[0] / "metrics.json").write_text(json.dumps({"psnr": 31.5, "clip_score": -1}))
    enc = OracleEncoder({p: object_mesh(k) for k, p in enumerate(PROMPTS)}, Config(mode="text"), 1, SIZE)
    evaluate_runs(runs[:2], enc, views=1, size=SIZE)
    saved = json.loads((runs[0] / "metrics.json").read_text())
    assert saved["psnr"] == 31.5 and saved["clip_score"] == pytest.approx(100.0)
    assert not [p for p in runs[0].iterdir() if p.name.startswith(".metrics.json")]  # no temp files left


# ------------------------------------------------------------------------------------------------
# Bad input: one line, before CLIP is loaded


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main(["eval", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_inputs_are_one_line(tmp_path, runs, capsys, monkeypatch):
    monkeypatch.delenv("DREAMGS_CLIP", raising=False)
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"\0" * 16)
    cases = {
        "run folder not found": [tmp_path / "nope", "--clip", f"ViT-B-32:{w}"],
        "no model.glb in this run folder": [tmp_path, "--clip", f"ViT-B-32:{w}"],
        "no CLIP weights were given": [runs[0]],
        "only .safetensors weights are loaded": [runs[0], "--clip", f"ViT-B-32:{tmp_path / 'model.bin'}"],
        "file not found": [runs[0], "--clip", f"ViT-B-32:{tmp_path / 'missing.safetensors'}"],
        "name the architecture too": [runs[0], "--clip", w],
        "given twice": [runs[0], runs[0], "--clip", f"ViT-B-32:{w}"],
    }
    (tmp_path / "model.bin").write_bytes(b"x")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n\n")
    two = tmp_path / "two.txt"
    two.write_text("a box\na crate\n")
    cases["no prompts in this file"] = [runs[0], "--prompts", empty, "--clip", f"ViT-B-32:{w}"]
    cases["the prompts file has 2 prompts for 1 run folders"] = [runs[0], "--prompts", two, "--clip",
                                                                 f"ViT-B-32:{w}"]
    cases["prompts file not found"] = [runs[0], "--prompts", tmp_path / "none.txt"]
    image_run = make_run(tmp_path / "imagerun", None, object_mesh(0), mode="image")
    cases["has no prompt (an image-to-3D run?)"] = [image_run, "--clip", f"ViT-B-32:{w}"]
    for expected, args in cases.items():
        rc, err = run_cli(capsys, *args)
        assert rc == 2 and len(err.splitlines()) == 1 and expected in err, (expected, err)
        assert err.startswith("dreamgs eval: error: ")


def test_no_weights_message_names_the_remedy(runs, capsys, monkeypatch):
    monkeypatch.delenv("DREAMGS_CLIP", raising=False)
    rc, err = run_cli(capsys, runs[0])
    assert rc == 2 and "--clip ARCH:FILE.safetensors" in err and "never downloads" in err


def test_clip_spec_forms(tmp_path, monkeypatch):
    w = tmp_path / "open_clip_model.safetensors"
    w.write_bytes(b"x")
    assert parse_clip_spec(f"ViT-B-32:{w}").arch == "ViT-B-32"
    assert parse_clip_spec(f"ViT-B-32:{tmp_path}").weights == w  # ARCH:FOLDER
    cfg = tmp_path / "tiny.json"
    cfg.write_text("{}")
    assert parse_clip_spec(f"{cfg}:{w}").config == cfg
    with pytest.raises(InputError, match="no open_clip_config.json"):
        parse_clip_spec(str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text("{}")
    assert parse_clip_spec(str(tmp_path)).folder == tmp_path
    monkeypatch.setenv("DREAMGS_CLIP", f"ViT-B-32:{w}")
    assert parse_clip_spec(None).weights == w
    w.unlink()
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"x")
    w2 = tmp_path / "second.safetensors"
    w2.write_bytes(b"x")
    assert parse_clip_spec(str(tmp_path)).weights == w2  # the folder's only .safetensors file
    (tmp_path / "third.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="several .safetensors"):
        parse_clip_spec(str(tmp_path))
    w2.unlink()
    (tmp_path / "third.safetensors").unlink()
    with pytest.raises(InputError, match="pickled weights are never opened"):
        parse_clip_spec(str(tmp_path))


def test_state_dict_loader_errors_are_one_line(tmp_path):
    from safetensors.torch import save_file

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    f = tmp_path / "w.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in good.items()}, str(f))
    load_state_dict_checked(model, f, "--clip")
    assert all((p == 0).all() for p in model.state_dict().values())

    def error(state) -> str:
        save_file(state, str(f))
        with pytest.raises(InputError) as e:
            load_state_dict_checked(model, f, "--clip")
        assert len(str(e.value).splitlines()) == 1
        return str(e.value)

    assert "missing 1.bias" in error({k: v for k, v in good.items() if k != "1.bias"})
    assert "unexpected extra" in error({**good, "extra": torch.zeros(1)})
    assert "wrong shape 0.weight (3, 4) vs (4, 3)" in error({**good, "0.weight": torch.zeros(3, 4)})
    f.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="not a valid safetensors file"):
        load_state_dict_checked(model, f, "--clip")
    assert all((p == 0).all() for p in model.state_dict().values())  # nothing half-loaded


def test_missing_open_clip_is_one_line(runs, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed")
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    rc, err = run_cli(capsys, runs[0], "--clip", f"ViT-B-32:{w}", "--device", "cpu")
    assert rc == 2 and len(err.splitlines()) == 1 and "pip install 'dreamgs[eval]'" in err


# ------------------------------------------------------------------------------------------------
# Tiny random open_clip models through the real loader


TINY_CFG = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def tiny_clip(tmp_path, seed: int):
    """A random tiny open_clip CLIP written as JSON config + safetensors; returns the --clip value."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip is the optional extra 'eval'")
    from safetensors.torch import save_file

    cfg = tmp_path / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CFG))
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CFG)
    with torch.no_grad():  # spread the random embeddings so different inputs rank differently
        model.logit_scale.fill_(math.log(100.0))
    weights = tmp_path / f"tiny-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return f"{cfg}:{weights}", model


def test_tiny_open_clip_loads_and_batches(tmp_path):
    from dreamgs.clipeval import load_clip

    spec, reference = tiny_clip(tmp_path, 0)
    enc = load_clip(spec, batch_size=3)
    for k, v in reference.state_dict().items():  # the loader put the saved weights in
        assert torch.equal(enc.model.state_dict()[k], v), k
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 40, 40, 3), dtype=np.uint8)
    texts = ["a red box", "a crate", "a tile", "a cube", "a chest"]
    e3, t3 = enc.encode_images(images), enc.encode_texts(texts)
    assert e3.shape == (7, 16) and t3.shape == (5, 16)
    assert torch.allclose(e3.norm(dim=-1), torch.ones(7), atol=1e-5)
    enc.batch_size = 64
    assert torch.allclose(enc.encode_images(images), e3, atol=1e-5)
    assert torch.allclose(enc.encode_texts(texts), t3, atol=1e-5)
    with torch.no_grad():  # the same numbers as open_clip's own model on its own preprocessing
        from PIL import Image

        x = torch.stack([enc.preprocess(Image.fromarray(im)) for im in images])
        assert x.shape == (7, 3, 32, 32)
        ref = torch.nn.functional.normalize(reference.eval().encode_image(x), dim=-1)
    assert torch.allclose(e3, ref, atol=1e-5)


def test_tiny_open_clip_wrong_weights_are_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    from dreamgs.clipeval import load_clip

    spec, _ = tiny_clip(tmp_path, 0)
    cfg, weights = spec.split(":")
    state = load_file(weights)
    state.pop("visual.proj")
    save_file(state, weights)
    with pytest.raises(InputError, match=r"do not fit the architecture \(missing visual.proj\)"):
        load_clip(spec)
    with pytest.raises(InputError, match="unknown open_clip architecture 'NoSuchNet'"):
        load_clip(f"NoSuchNet:{weights}")


def test_random_open_clip_gives_chance_r_precision(tmp_path, runs):
    """R@1 of random weights is 1/M in expectation. Renders of one scene look alike to a random
    CLIP, so each query's label is drawn independently of its image (a random pairing of runs with
    prompts, per model): each run's hit rate is then an independent draw with mean 1/M and variance
    at most 1/M (1 - 1/M) whatever the model does, and the mean over runs and models must lie within
    3 binomial sigmas (counting runs, not renderings, which share their run's label) of 1/M."""
    from dreamgs.clipeval import load_clip

    views, m = 2, len(PROMPTS)
    rng = np.random.default_rng(0)
    hits, n = 0.0, 0
    for seed in range(12):
        spec, _ = tiny_clip(tmp_path, seed)
        enc = load_clip(spec, batch_size=4)
        prompts = list(rng.choice(PROMPTS, size=len(runs)))  # with replacement: independent labels
        res = evaluate_runs(runs, enc, prompts=prompts, distractors=PROMPTS, views=views, size=SIZE, write=False)
        assert res.summary["candidates"] == m
        hits += sum(r["r_precision@1"] for r in res.runs)
        n += len(res.runs)
    p = 1 / m
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= 3 * sigma, (hits / n, p, sigma)


def test_dreamgs_eval_command_with_random_weights(tmp_path, runs, capsys):
    spec, _ = tiny_clip(tmp_path, 1)
    summary = tmp_path / "summary.json"
    assert main(["eval", *map(str, runs), "--clip", spec, "--views", "4", "--device", "cpu",
                 "--batch-size", "5", "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"overall: {len(runs)} runs x 4 views, {len(PROMPTS)} candidate prompts")
    s = json.loads(summary.read_text())
    assert s["summary"]["renderings"] == 4 * len(runs) and s["summary"]["chance_r_precision@1"] == 1 / len(PROMPTS)
    for run_dir in runs:
        saved = json.loads((run_dir / "metrics.json").read_text())
        assert 0 <= saved["clip_score"] <= 100 and 0 <= saved["r_precision@1"] <= 1
        assert saved["clip_eval"]["size"] == 32  # the model's input size
        assert len(saved["clip_eval"]["per_view"]) == 4


def write_folder(folder, spec: str):
    """The open_clip hub layout: open_clip_config.json + open_clip_model.safetensors."""
    import shutil

    cfg, weights = spec.split(":")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    shutil.copy(weights, folder / "open_clip_model.safetensors")
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_model_folder_and_hub_cache_forms_load_offline(tmp_path, no_network, monkeypatch):
    from huggingface_hub import constants

    from dreamgs.clipeval import load_clip

    spec, reference = tiny_clip(tmp_path, 2)
    folder = write_folder(tmp_path / "tiny-folder", spec)
    enc = load_clip(str(folder))
    assert enc.preprocess.transforms[-1].mean == [0.5, 0.5, 0.5]  # the folder's preprocess_cfg is used
    images = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    by_file = load_clip(spec)
    assert torch.allclose(enc.encode_texts(["a box"]), by_file.encode_texts(["a box"]), atol=1e-6)
    assert enc.encode_images(images).shape == (2, 16)
    # the same folder as a snapshot in a local Hugging Face cache, named by its hub id
    hub = tmp_path / "hub"
    snap = hub / "models--someone--tiny-clip" / "snapshots" / "abc123"
    write_folder(snap, spec)
    (hub / "models--someone--tiny-clip" / "refs").mkdir()
    (hub / "models--someone--tiny-clip" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert parse_clip_spec("someone/tiny-clip").folder == snap
    assert torch.allclose(load_clip("someone/tiny-clip").encode_texts(["a box"]), by_file.encode_texts(["a box"]),
                          atol=1e-6)
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        parse_clip_spec("someone/other-clip")


def test_info_says_whether_open_clip_is_installed(monkeypatch):
    import importlib.metadata

    from dreamgs.info import clip_status, info_text

    monkeypatch.setenv("DREAMGS_CLIP", "ViT-B-32:/w/open_clip_model.safetensors")
    real = importlib.metadata.version

    def version(name):
        if name == "open_clip_torch":
            return "3.3.0"
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert clip_status() == ("open_clip 3.3.0 installed; weights: --clip or $DREAMGS_CLIP "
                             "(ViT-B-32:/w/open_clip_model.safetensors), local files only")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert "open_clip not installed" in clip_status() and "pip install 'dreamgs[eval]'" in clip_status()
    monkeypatch.setattr(importlib.metadata, "version", real)
    assert "CLIP (eval):" in info_text(use_torch=False)
