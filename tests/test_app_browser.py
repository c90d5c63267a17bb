"""The web app in a real browser: `dreamgs app` in a subprocess on a free loopback port, driven
by Playwright in Debian's headless Chromium (/usr/bin/chromium; `.ci/run` installs it).

A text job with the oracle prior at tiny sizes runs to completion (both stages); the splat and
mesh viewers must draw, the turntable must play, and the downloads must hold the run's files. The image tab must
show the preprocessing error for an image without transparency, and uploads named
``../../x.png`` must stay inside the app's work folder. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from optional import need
from PIL import Image

import dreamgs

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TINY = ["stage1.iters=20", "stage1.render_sizes=[32]", "stage1.size_milestones=[]", "gaussians.num_points=300",
        "prior.oracle_azimuths=8", "prior.oracle_elevations=[0]", "prior.oracle_resolution=32",
        "stage1.ref_size=32", "export.video_frames=8", "export.video_size=64", "mesh.grid_resolution=32",
        "texture.size=64", "texture.bake_views=4", "texture.bake_resolution=64", "stage2.iters=3",
        "stage2.render_size=32", "stage2.refine_steps=1"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing; .ci/run installs it with apt (chromium, chromium-driver)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)", allow_module_level=True)
playwright = need("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`dreamgs app` started from an empty folder, with its own empty TMPDIR."""
    import httpx

    root = tmp_path_factory.mktemp("app")
    cwd, tmpdir = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    src = str(Path(dreamgs.__file__).resolve().parent.parent)
    # An empty HF_HOME: no cached weights, so the oracle prior is the page's default whatever this
    # machine has downloaded.
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"),
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    port = free_port()
    log = open(root / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dreamgs", "app", "--port", str(port), *TINY], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{(root / 'app.log').read_text()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer within 90 s:\n{(root / 'app.log').read_text()}")
            time.sleep(0.5)
        yield {"url": url, "root": root, "cwd": cwd, "tmp": tmpdir, "work": cwd / "outputs" / "app",
               "log": root / "app.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        profile = tempfile.mkdtemp(prefix="dreamgs-chromium-")  # a fresh --user-data-dir
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={"width": 1280, "height": 1400}, accept_downloads=True)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def download(page, selector: str, dest: Path) -> Path:
    with page.expect_download(timeout=30_000) as info:
        page.click(selector)
    path = dest / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_text_job_in_the_browser(server, browser, tmp_path):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server["url"])
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    assert page.title() == "dreamgs"
    assert "offline" in page.inner_text("#text-prior-note")
    page.fill("#prompt textarea", "a ceramic mug")
    page.fill("#text-seed input", "3")
    t0 = time.monotonic()
    page.click("#text-generate")
    # Live progress: the stage-1 preview arrives during the run, before the downloads.
    page.wait_for_selector("#preview img", timeout=90_000)
    page.wait_for_selector("#download-ply", state="visible", timeout=120_000)
    elapsed = time.monotonic() - t0
    status = page.inner_text("#dreamgs-status")
    assert status.startswith("Done in") and "(seed 3)" in status and "model.ply" in status, status
    assert page.locator("#download-all").is_visible()
    video = page.wait_for_selector("#turntable video", timeout=30_000)  # the textured mesh's turntable
    assert "mesh.mp4" in (video.get_attribute("src") or ""), video.get_attribute("src")
    # Both 3D viewers draw: their canvases show more than a flat background.
    spreads = {}
    for viewer in ("#splat-viewer", "#mesh-viewer"):
        canvas = page.wait_for_selector(f"{viewer} canvas", timeout=30_000)
        for _ in range(20):
            pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=np.float32)
            spreads[viewer] = float(np.percentile(pixels, 99.5) - np.percentile(pixels, 0.5))
            if spreads[viewer] > 40:
                break
            time.sleep(0.5)
    screenshot(page, "app-text-job.png")
    assert all(v > 40 for v in spreads.values()), f"a 3D viewer stayed blank: {spreads}"

    ply = download(page, "#download-ply", tmp_path)
    head = ply.read_bytes()[:2000]
    assert ply.name == "model.ply" and head.startswith(b"ply\n") and b"element vertex " in head
    glb = download(page, "#download-glb", tmp_path)
    assert glb.name == "model.glb" and glb.read_bytes()[:4] == b"glTF"
    with zipfile.ZipFile(download(page, "#download-obj", tmp_path)) as zf:
        assert sorted(zf.namelist()) == ["model.mtl", "model.obj", "model_albedo.png"]
        assert b"mtllib model.mtl" in zf.read("model.obj")
    with zipfile.ZipFile(download(page, "#download-all", tmp_path)) as zf:
        names = set(zf.namelist())
        assert {"model.ply", "model.glb", "model.obj", "gaussians.mp4", "mesh.mp4", "config.yaml", "seed.txt",
                "summary.json"} <= names
        assert zf.read("seed.txt").strip() == b"3"
    runs = list((server["work"] / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-a-ceramic-mug-s3") and (runs[0] / "model.ply").is_file()
    assert not errors, errors
    assert elapsed < 60, f"the tiny job took {elapsed:.0f} s"
    page.close()


def test_image_without_transparency_shows_the_preprocess_error(server, browser, tmp_path):
    jpg = tmp_path / "photo.jpg"
    Image.fromarray(np.full((48, 64, 3), (120, 160, 200), np.uint8)).save(jpg)
    page = browser.new_page()
    page.goto(server["url"])
    page.wait_for_selector("#prompt textarea", timeout=30_000)
    page.get_by_role("tab", name="Image → 3D").click()
    page.set_input_files("#image-input input[type=file]", str(jpg))
    page.wait_for_selector("#image-input img", timeout=30_000)
    page.click("#image-generate")
    page.wait_for_function("document.querySelector('#dreamgs-status').innerText.includes('no transparency')",
                           timeout=60_000)
    status = page.inner_text("#dreamgs-status")
    assert status.startswith("Error:") and "the image has no transparency" in status and "rembg" in status
    screenshot(page, "app-image-error.png")
    page.close()


def test_uploads_stay_inside_the_work_folder(server):
    import httpx

    url = server["url"] + "gradio_api/upload"
    files = [("files", ("../../x.png", b"\x89PNG\r\n\x1a\n", "image/png")),
             ("files", ("..\\..\\y.png", b"\x89PNG\r\n\x1a\n", "image/png"))]
    r = httpx.post(url, files=files, timeout=30)
    assert r.status_code == 200, r.text
    work = server["work"].resolve()
    for p in r.json():
        assert Path(p).resolve().is_relative_to(work / "cache"), p
    too_big = httpx.post(url, files=[("files", ("big.png", b"0" * (21 * 2**20), "image/png"))], timeout=60)
    assert too_big.status_code == 413
    # A client naming a server file instead of uploading one is refused before the job runs.
    call = server["url"] + "gradio_api/call/run_image"
    r = httpx.post(call, json={"data": [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}},
                                        0, "oracle", -1, 5, "none"]}, timeout=30)
    assert r.status_code == 200, r.text
    reply = httpx.get(f"{call}/{r.json()['event_id']}", timeout=60).text
    assert "event: error" in reply and "not uploaded by a user" in reply, reply
    assert not list(server["work"].rglob("hostname*"))


def test_nothing_was_written_outside_the_work_folder(server):
    """Runs last in this module: after the jobs above, only outputs/app exists beside the app."""
    assert [p.name for p in server["cwd"].iterdir()] == ["outputs"]
    assert [p.name for p in (server["cwd"] / "outputs").iterdir()] == ["app"]
    assert sorted(p.name for p in server["work"].iterdir()) == ["cache", "runs", "tmp", "uploads"]
    assert not any(server["tmp"].iterdir()), list(server["tmp"].iterdir())
    for name in ("x.png", "y.png"):
        assert not list(server["root"].rglob(name)) or all(
            p.resolve().is_relative_to(server["work"].resolve()) for p in server["root"].rglob(name))
    log = server["log"].read_text()
    assert f"dreamgs app: serving {server['url']} (work folder {server['work']})" in log

