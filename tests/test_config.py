"""Typed config: presets, YAML files, key=value overrides and their errors."""

import pytest

from dreamgs.config import ConfigError, apply_override, dump_yaml, from_dict, load_config, to_dict
import yaml


def test_mode_presets_differ_where_dreamgaussian_does():
    text, image = load_config("text"), load_config("image")
    assert (text.camera.radius, image.camera.radius) == (2.5, 2.0)
    assert (text.densify.interval, image.densify.interval) == (50, 100)
    assert (text.prior.kind, image.prior.kind) == ("sd", "zero123")
    assert text.stage1.render_sizes == (128, 256, 512)


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("stage1:\n  iters: 123\n  render_sizes: [64, 128]\n  size_milestones: [0.5]\nprior:\n  t_max: 0.9\n")
    cfg = load_config("text", f, ["stage1.iters=7", "prior.guidance_scale=7.5", "seed=42", "densify.enabled=false",
                                  "prompt=a mug: blue", "camera.elevation_range=[-10, 5]"])
    assert cfg.stage1.iters == 7 and cfg.stage1.render_sizes == (64, 128)
    assert cfg.prior.t_max == 0.9 and cfg.prior.guidance_scale == 7.5
    assert cfg.seed == 42 and cfg.densify.enabled is False
    assert cfg.prompt == "a mug: blue"
    assert cfg.camera.elevation_range == (-10.0, 5.0)
    assert load_config("text", None, ["prior.guidance_scale=1e-3"]).prior.guidance_scale == 0.001


@pytest.mark.parametrize("override, message", [
    ("stage1.iter=5", "unknown config key 'stage1.iter'"),
    ("stage1.iters=five", "stage1.iters: expected an integer"),
    ("stage1.iters=2.5", "stage1.iters: expected an integer"),
    ("densify.enabled=maybe", "densify.enabled: expected true/false"),
    ("nosection.key=1", "unknown config key 'nosection'"),
    ("stage1=3", "names a section"),
    ("justtext", "not of the form key=value"),
    ("camera.elevation_range=[1,2,3]", "expected 2 values"),
    ("backend=opengl", "backend: expected auto, gsplat or torch"),
    ("prior.t_min=0.99", "t_min"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config("text", None, [override])


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match="did you mean 'iters'"):
        load_config("text", None, ["stage1.itres=3"])


@pytest.mark.parametrize("text, message", [
    ("stage1:\n  itres: 3\n", "unknown config key 'stage1.itres'"),
    ("stage1:\n  iters: [1, 2]\n", "expected an integer"),
    ("- a\n- b\n", "mapping at the top level"),
    ("stage1: [unclosed\n", "not valid YAML"),
])
def test_bad_yaml_files(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config("text", f)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("text", tmp_path / "nope.yaml")


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config("image", None, ["seed=7", "stage1.iters=11"])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)


def test_seed_none_override():
    cfg = load_config("text", None, ["seed=5"])
    apply_override(cfg, "seed=null")
    assert cfg.seed is None


def test_preview_preset_fits_sizes_to_the_prior_and_keeps_what_the_user_set():
    auto = load_config("image", None, ["prior.kind=oracle", "device=cpu"])
    assert auto.preset == "preview"  # resolved, so config.yaml records what ran
    assert auto.stage1.render_sizes == (128, 128, 128) and auto.stage1.ref_size == 128  # 2 x the oracle's 64 px
    assert auto.densify.max_gaussians == 30_000 and auto.texture.bake_views == 12
    assert auto.texture.size == 512 and auto.export.video_size == 256 and auto.stage2.render_size == 128
    user = load_config("image", None, ["prior.kind=oracle", "device=cpu", "texture.size=2048",
                                       "stage1.render_sizes=[64,256,512]"])
    assert user.texture.size == 2048 and user.stage1.render_sizes == (64, 256, 512)  # the user's values win
    full = load_config("image", None, ["prior.kind=oracle", "device=cpu", "preset=full"])
    assert full.preset == "full" and full.stage1.render_sizes == (128, 256, 512) and full.texture.size == 1024
    # a full-resolution prior's render sizes are not capped (SD works at 512 px)
    assert load_config("text", None, ["device=cpu"]).stage1.render_sizes == (128, 256, 512)
    # a run's config.yaml reloads to the same values
    assert to_dict(from_dict(to_dict(auto))) == to_dict(auto)
    with pytest.raises(ConfigError, match="preset: expected auto, preview or full"):
        load_config("text", None, ["preset=tiny"])
