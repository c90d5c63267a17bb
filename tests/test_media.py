"""Images, grids and videos: exact round trips, layouts, codec fidelity, atomic writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from dreamgs import media
from dreamgs.cameras import orbit_views
from dreamgs.errors import InputError
from dreamgs.gaussians import GaussianModel
from dreamgs.media import (VideoWriter, gaussian_render_fn, image_grid, load_image, save_grid, save_image,
                           to_uint8, turntable, write_video)
from dreamgs.render import render


def levels(shape, seed=0):
    """Random float image whose values are exact multiples of 1/255 (survive uint8 exactly)."""
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.float32) / 255.0


def read_video(path, meta=False):
    """Decode every frame with imageio-ffmpeg: (T, H, W, 3) uint8 (and the stream metadata)."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        info = next(gen)
        w, h = info["size"]
        frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])
    finally:
        gen.close()
    return (frames, info) if meta else frames


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def only_files(folder):
    return sorted(p.name for p in folder.iterdir())


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_save_load_image_round_trip_is_exact(tmp_path, channels):
    img = levels((17, 23, channels))
    if channels == 4:
        img[0, 0, 3] = 0.0  # keep the alpha channel meaningful
    path = save_image(tmp_path / "x.png", torch.from_numpy(img))
    back = load_image(path)
    assert back.shape == img.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back, img)


def test_grayscale_saves_as_one_channel(tmp_path):
    img = levels((5, 6, 1))
    path = save_image(tmp_path / "g.png", img)
    with Image.open(path) as pil:
        assert pil.mode == "L"
    np.testing.assert_array_equal(load_image(path), np.repeat(img, 3, axis=-1))


def test_to_uint8_rounds_and_clips():
    x = np.array([-1.0, 0.0, 0.5 / 255 - 1e-6, 0.5 / 255 + 1e-6, 254.5 / 255 + 1e-6, 1.0, 7.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 0, 1, 255, 255, 255])
    with pytest.raises(InputError, match="finite"):
        to_uint8(np.array([np.nan], np.float32))


def test_save_image_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="unsupported image extension"):
        save_image(tmp_path / "x.gif", levels((4, 4, 3)))
    with pytest.raises(InputError, match="JPEG cannot store alpha"):
        save_image(tmp_path / "x.jpg", levels((4, 4, 4)))
    with pytest.raises(InputError, match="expected an"):
        save_image(tmp_path / "x.png", levels((4, 4, 2)))
    assert only_files(tmp_path) == []


def test_save_image_is_atomic(tmp_path, monkeypatch):
    path = save_image(tmp_path / "x.png", levels((8, 8, 3)))
    before = path.read_bytes()
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # the temporary file is complete...
        raise OSError("disk full")  # ...but the write still fails

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(path, levels((8, 8, 3), seed=1))
    assert path.read_bytes() == before
    assert only_files(tmp_path) == ["x.png"]


# --- grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 2])
def test_image_grid_layout_is_pixel_exact(pad):
    ims = [levels((3, 4, 3), seed=k) for k in range(5)]
    grid = image_grid(ims, ncols=2, pad=pad, pad_value=0.25)
    assert grid.shape == (3 * 3 + 2 * pad, 2 * 4 + pad, 3)
    covered = np.zeros(grid.shape[:2], bool)
    for k, im in enumerate(ims):
        r, c = divmod(k, 2)
        y, x = r * (3 + pad), c * (4 + pad)
        np.testing.assert_array_equal(grid[y:y + 3, x:x + 4], im)
        covered[y:y + 3, x:x + 4] = True
    assert (grid[~covered] == 0.25).all()  # separators and the empty sixth cell
    assert (~covered).sum() == grid.shape[0] * grid.shape[1] - 5 * 12


def test_image_grid_inputs():
    batch = torch.from_numpy(np.stack([levels((2, 2, 4), seed=k) for k in range(3)]))
    grid = image_grid(batch, ncols=10)  # fewer images than columns: one row of 3
    assert grid.shape == (2, 6, 4)
    np.testing.assert_array_equal(grid[:, 2:4], batch[1].numpy())
    u8 = [np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2, 3), np.uint8)]
    np.testing.assert_array_equal(image_grid(u8, 2)[0], [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(InputError, match="same shape"):
        image_grid([np.zeros((2, 2, 3)), np.zeros((3, 2, 3))], 2)
    with pytest.raises(InputError, match="no images"):
        image_grid([], 2)
    with pytest.raises(InputError, match="ncols"):
        image_grid(u8, 0)


def test_save_grid_writes_the_grid(tmp_path):
    ims = [levels((4, 5, 3), seed=k) for k in range(4)]
    path = save_grid(tmp_path / "grid.png", ims, ncols=3, pad=1)
    np.testing.assert_array_equal(load_image(path), image_grid(ims, ncols=3, pad=1))


# --- videos -----------------------------------------------------------------------------------


@pytest.mark.parametrize("w,h", [(32, 24), (31, 21)])
def test_write_video_frame_count_and_size(tmp_path, w, h):
    t = np.linspace(0, 1, 7, dtype=np.float32)
    frames = np.broadcast_to(t[:, None, None, None], (7, h, w, 3)).copy()
    path = write_video(frames, tmp_path / "v.mp4", fps=12)
    video, meta = read_video(path, meta=True)
    assert video.shape == (7, h + h % 2, w + w % 2, 3)  # odd sizes are padded to even
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 12
    np.testing.assert_allclose(video.mean(axis=(1, 2, 3)) / 255, t, atol=2 / 255)
    assert only_files(tmp_path) == ["v.mp4"]


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(InputError, match="no frames"):
        write_video([], tmp_path / "v.mp4")
    with pytest.raises(InputError, match="differs from the first frame"):
        write_video([np.zeros((8, 8, 3)), np.zeros((8, 10, 3))], tmp_path / "v.mp4")
    with pytest.raises(InputError, match="RGB"):
        write_video([np.zeros((8, 8, 4))], tmp_path / "v.mp4")
    with pytest.raises(InputError, match=".mp4"):
        VideoWriter(tmp_path / "v.avi")
    assert only_files(tmp_path) == []


def small_scene():
    g = torch.Generator().manual_seed(3)
    model = GaussianModel.random_ball(400, 0.5, opacity=0.7, generator=g)
    model.params["scales"] += 0.7  # larger, smoother blobs
    model.params["sh0"] += 0.6 * torch.randn(model.params["sh0"].shape, generator=g)
    return model


def test_turntable_matches_direct_renders(tmp_path):
    model = small_scene()
    path = turntable(gaussian_render_fn(model), tmp_path / "turn.mp4", frames=6, size=64, elevation=-15.0,
                     radius=2.0, batch=4, progress=False)
    video = read_video(path).astype(np.float32) / 255
    assert video.shape == (6, 64, 64, 3)
    cams = orbit_views(6, -15.0, 2.0, 49.1, 64)
    direct = render(model, cams, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1).numpy()
    assert direct[0].std() > 0.05  # a real image, not a blank frame
    assert psnr(video[0], direct[0]) >= 30.0
    assert psnr(video[5], direct[5]) >= 30.0  # the last frame of the second batch too
    assert psnr(video[0], direct[3]) < psnr(video[0], direct[0]) - 3  # frames are in orbit order


def test_turntable_accepts_any_render_fn(tmp_path):
    """A mesh renderer only has to map cameras to images; here: grey level = azimuth."""
    seen = []

    def render_fn(cams):
        seen.append(len(cams))
        level = ((cams.azimuth.numpy() + 180.0) / 360.0).astype(np.float32)
        return np.broadcast_to(level[:, None, None, None], (len(cams), 16, 16, 3))

    path = turntable(render_fn, tmp_path / "t.mp4", frames=10, size=16, batch=4, progress=False)
    assert seen == [4, 4, 2]
    az = orbit_views(10, 0.0, 2.5, 49.1, 16).azimuth.numpy()
    np.testing.assert_allclose(read_video(path).mean(axis=(1, 2, 3)) / 255, (az + 180) / 360, atol=2 / 255)


def test_turntable_failure_leaves_no_partial_file(tmp_path):
    calls = []

    def render_fn(cams):
        calls.append(len(cams))
        if len(calls) == 2:
            raise RuntimeError("renderer crashed")
        return torch.full((len(cams), 16, 16, 3), 0.5)

    with pytest.raises(RuntimeError, match="renderer crashed"):
        turntable(render_fn, tmp_path / "t.mp4", frames=8, size=16, batch=3, progress=False)
    assert only_files(tmp_path) == []
    # An existing video is left as it was.
    old = write_video(np.zeros((2, 16, 16, 3), np.float32), tmp_path / "t.mp4")
    before = old.read_bytes()
    calls.clear()
    with pytest.raises(RuntimeError, match="renderer crashed"):
        turntable(render_fn, old, frames=8, size=16, batch=3, progress=False)
    assert old.read_bytes() == before and only_files(tmp_path) == ["t.mp4"]
    with pytest.raises(ValueError, match="render_fn returned shape"):
        turntable(lambda cams: torch.zeros(len(cams), 8, 8, 3), tmp_path / "u.mp4", frames=2, size=16,
                  progress=False)
    assert only_files(tmp_path) == ["t.mp4"]


def test_video_writer_reports_ffmpeg_failure(tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: "false")  # exits 1 at once
    with pytest.raises(RuntimeError, match="ffmpeg"):
        write_video(np.zeros((3, 8, 8, 3), np.float32), tmp_path / "v.mp4")
    assert only_files(tmp_path) == []


def test_temporary_names_keep_the_suffix_for_ffmpeg():
    assert media.temp_path("a/b.mp4").name.startswith(".b.mp4.tmp-") and media.temp_path("a/b.mp4").suffix == ".mp4"


def test_video_writer_reports_ffmpeg_dying_mid_stream(tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: "false")
    frames = np.zeros((40, 256, 256, 3), np.float32)  # far more than a pipe buffer holds
    with pytest.raises(RuntimeError, match="ffmpeg"):
        write_video(frames, tmp_path / "v.mp4")
    assert only_files(tmp_path) == []
