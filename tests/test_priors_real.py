"""The real diffusers-backed priors, exercised with tiny random models in the hub folder layouts.

Every reference below is computed independently of the prior's own code path: components are
re-loaded from the folder, the UNet is called once per branch and per sample (no batching), and
the classifier-free guidance / SDS formulas are written out by hand.
"""

from __future__ import annotations

import functools
import math
import pickle
import shutil

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_RESOLUTION, build_tiny_sd, build_tiny_zero123, tiny_config

from dreamgs.cameras import make_cameras
from dreamgs.errors import ConfigError, InputError, ModelNotFoundError
from dreamgs.priors import load_prior
from dreamgs.priors.base import view_prompt
from dreamgs.priors.zero123 import CameraProjection, camera_vector

R = TINY_RESOLUTION


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def z_folder(tmp_path_factory):
    return build_tiny_zero123(tmp_path_factory.mktemp("models") / "tiny-zero123")


@pytest.fixture(scope="module")
def sd_prior(sd_folder):
    return load_prior(tiny_config("sd", sd_folder, overrides=("seed=1",)), "cpu")


@pytest.fixture(scope="module")
def sd_prior64(sd_folder):
    """Float64 copy for the gradient identities (CFG scale 100 amplifies float32 rounding)."""
    from dreamgs.priors.sd import StableDiffusionPrior

    return StableDiffusionPrior(str(sd_folder), prompt="a hamburger", dtype=torch.float64, resolution=R, seed=1)


@pytest.fixture(scope="module")
def ref_image():
    g = torch.Generator().manual_seed(3)
    img = torch.ones(1, 3, 48, 48)
    img[:, :, 12:36, 12:36] = torch.rand(1, 3, 24, 24, generator=g)  # an object on white
    return img


@pytest.fixture(scope="module")
def z_prior(z_folder, ref_image):
    cfg = tiny_config("zero123", z_folder, overrides=("elevation=-10", "seed=2"))
    return load_prior(cfg, "cpu", ref_image=ref_image)


def _front_back_cams():
    # front (azimuth 0) and back (azimuth 180), both at the orbit radius
    return make_cameras([0.0, -5.0], [0.0, 180.0], 2.5, 49.1, R)


def _images(batch=2, size=R, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Independent references


@functools.lru_cache(maxsize=None)
def _component(folder, cls_name, subfolder, dtype=torch.float32):
    """A component loaded straight from the folder (not through the prior), cached per test run."""
    import diffusers
    import transformers

    cls = getattr(diffusers, cls_name, None) or getattr(transformers, cls_name)
    obj = cls.from_pretrained(str(folder), subfolder=subfolder)
    if isinstance(obj, torch.nn.Module):
        obj = obj.eval()
        if dtype != torch.float32:
            obj = obj.to(dtype)
    return obj


def _text_embedding(folder, prompt, dtype=torch.float32):
    tok = _component(folder, "CLIPTokenizer", "tokenizer")
    enc = _component(folder, "CLIPTextModel", "text_encoder", dtype)
    ids = tok([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids).last_hidden_state


def _sd_reference_grad(folder, latents, noise, t, prompts, negative, scale):
    """w(t) (eps_u + s (eps_c - eps_u) - eps), float64, one UNet call per sample and branch."""
    unet = _component(folder, "UNet2DConditionModel", "unet", torch.float64)
    abar = _component(folder, "DDIMScheduler", "scheduler").alphas_cumprod[t].double()
    latents, noise = latents.double(), noise.double()
    x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    uncond = _text_embedding(folder, negative, torch.float64)
    out = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            cond = _text_embedding(folder, prompt, torch.float64)
            eps_c = unet(x_t[i:i + 1], t, encoder_hidden_states=cond).sample
            eps_u = unet(x_t[i:i + 1], t, encoder_hidden_states=uncond).sample
            out.append((1 - abar) * (eps_u + scale * (eps_c - eps_u) - noise[i:i + 1]))
    return torch.cat(out)


def _vae_latents(folder, images):
    vae = _component(folder, "AutoencoderKL", "vae", images.dtype)
    return vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor, vae


def _assert_close(ours, ref, tol=1e-5):
    """Agreement to ``tol`` relative to the reference's largest entry."""
    scale = max(ref.abs().max().item(), 1.0)
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} > {tol:g} * {scale:.3g}"


# ----------------------------------------------------------------------------------------------
# (a), (b): SDS gradients


def test_sd_sds_gradient_wrt_latents_matches_hand_computation(sd_prior64, sd_folder, monkeypatch):
    cams = _front_back_cams()
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(2, 4, R // 2, R // 2, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, R // 2, R // 2, generator=g, dtype=torch.float64)
    leaf = latents.clone().requires_grad_(True)
    monkeypatch.setattr(sd_prior64, "encode_images", lambda images: leaf)
    t = 617
    loss = sd_prior64.sds(_images(), cams, 0.0, t=t, noise=noise)
    loss.backward()
    prompts = [view_prompt("a hamburger", "front"), view_prompt("a hamburger", "back")]
    ref = _sd_reference_grad(sd_folder, latents, noise, t, prompts, "", 100.0)
    assert sd_prior64.guidance_scale == 100.0
    _assert_close(leaf.grad * 2, ref)  # sds_loss averages over the batch of 2
    assert ref.abs().max() > 1e-3  # the comparison is not vacuous


def test_sd_sds_gradient_wrt_images_is_vae_encoder_vjp(sd_prior64, sd_folder):
    cams = _front_back_cams()
    images = _images(seed=7).double().requires_grad_(True)
    noise = torch.randn(2, 4, R // 2, R // 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    t = 300
    sd_prior64.sds(images, cams, 0.5, t=t, noise=noise).backward()

    x = images.detach().clone().requires_grad_(True)
    latents, _ = _vae_latents(sd_folder, x)
    prompts = [view_prompt("a hamburger", "front"), view_prompt("a hamburger", "back")]
    grad = _sd_reference_grad(sd_folder, latents.detach(), noise, t, prompts, "", 100.0)
    (vjp,) = torch.autograd.grad(latents, x, grad_outputs=grad / 2)
    _assert_close(images.grad, vjp)
    assert vjp.abs().max() > 0


def test_sds_timestep_anneals_from_t_max_to_t_min(sd_prior):
    assert sd_prior.timestep(0.0) == 980
    assert sd_prior.timestep(0.5) == 500
    assert sd_prior.timestep(1.0) == 20


def test_sds_is_reproducible_for_a_seed(sd_folder):
    cfg = tiny_config("sd", sd_folder, overrides=("seed=11", "prior.t_schedule=random"))
    losses = []
    for _ in range(2):
        prior = load_prior(cfg, "cpu")
        losses.append([prior.sds(_images(), _front_back_cams(), 0.3).item() for _ in range(2)])
    assert losses[0] == losses[1]
    assert losses[0][0] != losses[0][1]


# ----------------------------------------------------------------------------------------------
# (c), (d): view-dependent prompts and the negative prompt


def _record_hidden_states(prior, monkeypatch):
    seen = []
    original = prior._unet

    def spy(sample, t, encoder_hidden_states):
        seen.append(encoder_hidden_states.detach().clone())
        return original(sample, t, encoder_hidden_states)

    monkeypatch.setattr(prior, "_unet", spy)
    return seen


def test_front_and_back_cameras_use_their_bucket_embeddings(sd_prior, sd_folder, monkeypatch):
    seen = _record_hidden_states(sd_prior, monkeypatch)
    sd_prior.sds(_images(), _front_back_cams(), 0.5)
    (hidden,) = seen
    assert hidden.shape[0] == 4  # [cond front, cond back, uncond, uncond] in one UNet call
    front = _text_embedding(sd_folder, "a hamburger, front view")
    back = _text_embedding(sd_folder, "a hamburger, back view")
    _assert_close(hidden[0:1], front)
    _assert_close(hidden[1:2], back)
    assert (front - back).abs().max() > 1e-3
    empty = _text_embedding(sd_folder, "")
    _assert_close(hidden[2:4], empty.expand(2, -1, -1))


def test_side_and_overhead_buckets(sd_prior, sd_folder, monkeypatch):
    seen = _record_hidden_states(sd_prior, monkeypatch)
    cams = make_cameras([0.0, -70.0], [90.0, 0.0], 2.5, 49.1, R)
    sd_prior.sds(_images(), cams, 0.5)
    _assert_close(seen[0][0:1], _text_embedding(sd_folder, "a hamburger, side view"))
    _assert_close(seen[0][1:2], _text_embedding(sd_folder, "a hamburger, overhead view"))


def test_view_independent_prompt(sd_folder, monkeypatch):
    cfg = tiny_config("sd", sd_folder, overrides=("prior.view_dependent_prompt=false",))
    prior = load_prior(cfg, "cpu")
    seen = _record_hidden_states(prior, monkeypatch)
    prior.sds(_images(), _front_back_cams(), 0.5)
    plain = _text_embedding(sd_folder, "a hamburger")
    _assert_close(seen[0][0:2], plain.expand(2, -1, -1))


def test_negative_prompt_replaces_unconditional_embedding(sd_folder, monkeypatch):
    cfg = tiny_config("sd", sd_folder, overrides=("negative_prompt=blurry, low quality",))
    prior = load_prior(cfg, "cpu")
    seen = _record_hidden_states(prior, monkeypatch)
    prior.sds(_images(), _front_back_cams(), 0.5)
    negative = _text_embedding(sd_folder, "blurry, low quality")
    _assert_close(seen[0][2:4], negative.expand(2, -1, -1))
    assert (negative - _text_embedding(sd_folder, "")).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# (e): missing weights


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def _assert_remedy(message, model):
    assert model in message
    assert "prior.model=/path/to/folder" in message
    assert "HF_HOME" in message
    assert "log in" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["sd", "zero123", "stable-zero123"])
def test_unknown_hub_id_offline_raises_model_not_found(kind, offline_empty_cache, ref_image):
    cfg = tiny_config(kind, "nobody/no-such-diffusion-model")
    with pytest.raises(ModelNotFoundError) as err:
        load_prior(cfg, "cpu", ref_image=ref_image)
    _assert_remedy(str(err.value), "nobody/no-such-diffusion-model")
    assert kind in str(err.value)


def test_default_model_offline_names_the_default(offline_empty_cache):
    cfg = tiny_config("sd", "x", overrides=("prior.model=",))
    with pytest.raises(ModelNotFoundError) as err:
        load_prior(cfg, "cpu")
    _assert_remedy(str(err.value), "stabilityai/stable-diffusion-2-1-base")


def test_local_folder_without_unet_raises_model_not_found(sd_folder, tmp_path):
    broken = tmp_path / "sd-no-unet"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFoundError) as err:
        load_prior(tiny_config("sd", broken), "cpu")
    _assert_remedy(str(err.value), str(broken))
    assert "'unet/'" in str(err.value)


def test_local_folder_with_only_pickled_weights_is_refused(z_folder, tmp_path, ref_image):
    broken = tmp_path / "z-pickled"
    shutil.copytree(z_folder, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelNotFoundError) as err:
        load_prior(tiny_config("zero123", broken), "cpu", ref_image=ref_image)
    assert "pickled" in str(err.value) and "'vae/'" in str(err.value)


def test_missing_path_raises_model_not_found():
    with pytest.raises(ModelNotFoundError) as err:
        load_prior(tiny_config("sd", "/no/such/folder/sd"), "cpu")
    _assert_remedy(str(err.value), "/no/such/folder/sd")


def test_unknown_kind_and_missing_inputs(sd_folder, z_folder):
    cfg = tiny_config("sd", sd_folder)
    cfg.prior.kind = "dalle"
    with pytest.raises(ConfigError, match="sd, zero123, stable-zero123, mvdream, imagedream, oracle"):
        load_prior(cfg, "cpu")
    with pytest.raises(InputError, match="input image"):
        load_prior(tiny_config("zero123", z_folder), "cpu")
    with pytest.raises(ConfigError, match="prompt"):
        load_prior(tiny_config("sd", sd_folder, overrides=("prompt=",)), "cpu")


# ----------------------------------------------------------------------------------------------
# (f): SDEdit refine


@pytest.mark.parametrize("which", ["sd", "zero123"])
def test_refine_shape_range_and_small_strength(which, sd_prior, z_prior, sd_folder, z_folder, monkeypatch):
    prior, folder = (sd_prior, sd_folder) if which == "sd" else (z_prior, z_folder)
    cams = _front_back_cams()
    images = F.interpolate(_images(seed=4), size=(40, 40), mode="bilinear")  # not the prior's size
    out = prior.refine(images, cams, strength=0.6, steps=3)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1

    # tiny strength: DDIM from t=1 back to a clean image, i.e. the VAE round trip. Random weights
    # make eps_c and eps_u disagree arbitrarily, so keep guidance at 1 for this comparison.
    monkeypatch.setattr(prior, "guidance_scale", 1.0)
    small = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(9))
    latents, vae = _vae_latents(folder, small)
    with torch.no_grad():
        round_trip = (vae.decode(latents / vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    near = prior.refine(small, cams, strength=1e-3, steps=4)
    far = prior.refine(small, cams, strength=0.9, steps=4)
    err_near = (near - round_trip).abs().mean().item()
    err_far = (far - round_trip).abs().mean().item()
    assert err_near < 0.02, err_near
    assert err_far > 5 * err_near
    assert torch.equal(prior.refine(small, cams, strength=0.0, steps=4), small)


@pytest.mark.parametrize("strength, steps", [(0.3, 1), (0.7, 5), (0.98, 3)])
def test_refine_with_an_exact_denoiser_returns_the_vae_round_trip(sd_prior, sd_folder, monkeypatch,
                                                                  strength, steps):
    """If eps_hat equals the noise that was added, every DDIM step lands on the clean latents."""
    small = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(12))
    noise = torch.randn(2, 4, R // 2, R // 2, generator=torch.Generator().manual_seed(13))
    monkeypatch.setattr(sd_prior, "guided_eps", lambda x_t, t, cond: noise)
    out = sd_prior.refine(small, _front_back_cams(), strength, steps, noise=noise)
    latents, vae = _vae_latents(sd_folder, small)
    with torch.no_grad():
        round_trip = (vae.decode(latents / vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    _assert_close(out, round_trip, tol=1e-4)


def test_refine_timesteps():
    from dreamgs.priors.latent import LatentDiffusionPrior

    class Stub:
        num_train_timesteps = 1000

    ts = LatentDiffusionPrior.refine_timesteps(Stub(), 0.5, 4)
    assert ts == [500, 375, 250, 125]  # then one step to the clean image: no UNet call at t = 0
    assert LatentDiffusionPrior.refine_timesteps(Stub(), 0.001, 4) == [1]
    assert LatentDiffusionPrior.refine_timesteps(Stub(), 0.8, 50, "ddim") == list(range(181, 0, -20))


# ----------------------------------------------------------------------------------------------
# Zero123: conditioning, CFG structure, SDS


def test_camera_vector_conventions():
    # target 30 deg above the input view (negative elevation is up), 90 deg to the side
    zero = camera_vector([-40.0], [90.0], [2.5], ref_elevation=-10.0, ref_radius=2.0, stable=False)
    stable = camera_vector([-40.0], [90.0], [2.5], ref_elevation=-10.0, ref_radius=2.0, stable=True)
    torch.testing.assert_close(zero[0, :3], torch.tensor([-math.pi / 6, 1.0, 0.0]), atol=1e-6, rtol=0)
    assert zero[0, 3].item() == pytest.approx(0.5)  # radius delta
    assert stable[0, 3].item() == pytest.approx(math.radians(80.0))  # polar angle of the input view


def test_stable_zero123_camera_vector_differs_only_in_last_entry(z_folder, ref_image):
    cams = make_cameras([-30.0, 10.0, 0.0], [45.0, 200.0, -90.0], [2.0, 2.4, 1.8], 49.1, R)
    priors = {}
    for kind in ("zero123", "stable-zero123"):
        cfg = tiny_config(kind, z_folder, overrides=("elevation=-20",))
        priors[kind] = load_prior(cfg, "cpu", ref_image=ref_image)
    zero = priors["zero123"].camera_vector(cams)
    stable = priors["stable-zero123"].camera_vector(cams)
    assert torch.equal(zero[:, :3], stable[:, :3])
    torch.testing.assert_close(zero[:, 3], cams.radius - 2.0)  # image preset radius is 2.0
    torch.testing.assert_close(stable[:, 3], torch.full((3,), math.radians(70.0)))
    assert priors["stable-zero123"].name == "stable-zero123"


def test_zero123_cfg_branches(z_prior, z_folder, ref_image, monkeypatch):
    from diffusers import AutoencoderKL

    calls = []
    original = z_prior._unet

    def spy(sample, t, encoder_hidden_states):
        calls.append((sample.detach().clone(), encoder_hidden_states.detach().clone()))
        return original(sample, t, encoder_hidden_states)

    monkeypatch.setattr(z_prior, "_unet", spy)
    cams = _front_back_cams()
    z_prior.sds(_images(), cams, 0.5)
    ((sample, hidden),) = calls
    assert sample.shape == (4, 8, R // 2, R // 2) and hidden.shape == (4, 1, 16)
    # unconditional half: zero embedding and zero concat latents
    assert torch.count_nonzero(hidden[2:]) == 0 and torch.count_nonzero(sample[2:, 4:]) == 0
    # conditional half: the input view's unscaled posterior mode, and projection(clip ⊕ camera)
    vae = AutoencoderKL.from_pretrained(str(z_folder), subfolder="vae").eval()
    with torch.no_grad():
        x = F.interpolate(ref_image, (R, R), mode="bilinear", antialias=True) * 2 - 1
        ref_latents = vae.encode(x).latent_dist.mode()
    _assert_close(sample[:2, 4:], ref_latents.expand(2, -1, -1, -1))
    proj = CameraProjection.from_folder(z_folder / "clip_camera_projection")
    cam = z_prior.camera_vector(cams)[:, None, :]
    with torch.no_grad():
        expected = proj(torch.cat([z_prior.clip_embedding.expand(2, -1, -1), cam], dim=-1))
    _assert_close(hidden[:2], expected)
    # and the noisy latents are the same in both halves
    assert torch.equal(sample[:2, :4], sample[2:, :4])


def test_zero123_clip_embedding_matches_processor_and_encoder(z_prior, z_folder, ref_image):
    import numpy as np
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    proc = CLIPImageProcessor.from_pretrained(str(z_folder), subfolder="feature_extractor")
    enc = CLIPVisionModelWithProjection.from_pretrained(str(z_folder), subfolder="image_encoder").eval()
    img = F.interpolate(ref_image, (R, R), mode="bilinear", antialias=True)
    pixels = (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    with torch.no_grad():
        expected = enc(proc(images=[np.ascontiguousarray(pixels)], return_tensors="pt").pixel_values).image_embeds
    _assert_close(z_prior.clip_embedding, expected[:, None, :])


def test_zero123_sds_gradient_matches_hand_computation(z_folder, ref_image, monkeypatch):
    from dreamgs.priors.zero123 import Zero123Prior

    z_prior = Zero123Prior(str(z_folder), ref_image=ref_image, ref_elevation=-10.0, ref_radius=2.0,
                           dtype=torch.float64, resolution=R, seed=0)
    cams = _front_back_cams()
    g = torch.Generator().manual_seed(21)
    latents = torch.randn(2, 4, R // 2, R // 2, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, R // 2, R // 2, generator=g, dtype=torch.float64)
    leaf = latents.clone().requires_grad_(True)
    monkeypatch.setattr(z_prior, "encode_images", lambda images: leaf)
    t = 450
    z_prior.sds(_images(), cams, 0.0, t=t, noise=noise).backward()

    unet = _component(z_folder, "UNet2DConditionModel", "unet", torch.float64)
    abar = _component(z_folder, "DDIMScheduler", "scheduler").alphas_cumprod[t].double()
    x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    proj = CameraProjection.from_folder(z_folder / "clip_camera_projection").double()
    ref = []
    with torch.no_grad():
        for i in range(2):
            cam = z_prior.camera_vector(cams[i])[:, None, :].double()
            emb = proj(torch.cat([z_prior.clip_embedding, cam], dim=-1))
            cond_in = torch.cat([x_t[i:i + 1], z_prior.ref_latents], dim=1)
            uncond_in = torch.cat([x_t[i:i + 1], torch.zeros_like(z_prior.ref_latents)], dim=1)
            eps_c = unet(cond_in, t, encoder_hidden_states=emb).sample
            eps_u = unet(uncond_in, t, encoder_hidden_states=torch.zeros_like(emb)).sample
            ref.append((1 - abar) * (eps_u + 5.0 * (eps_c - eps_u) - noise[i:i + 1]))
    ref = torch.cat(ref)
    _assert_close(leaf.grad * 2, ref)
    assert ref.abs().max() > 1e-3


def test_zero123_rejects_bad_reference_image(z_folder):
    cfg = tiny_config("zero123", z_folder)
    with pytest.raises(InputError, match="reference image"):
        load_prior(cfg, "cpu", ref_image=torch.rand(3, 32, 32))


# ----------------------------------------------------------------------------------------------
# (h): safetensors only


class _Trap:
    """Unpickling this creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_camera_projection_loads_safetensors_and_never_a_pickle(z_folder, tmp_path, monkeypatch):
    folder = tmp_path / "clip_camera_projection"
    shutil.copytree(z_folder / "clip_camera_projection", folder)
    marker = tmp_path / "unpickled"
    (folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    torch_loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: torch_loads.append(a) or real_load(*a, **k))

    proj = CameraProjection.from_folder(folder)
    from safetensors.torch import load_file

    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(proj.proj.weight, state["proj.weight"]) and torch.equal(proj.proj.bias, state["proj.bias"])
    assert proj.proj.weight.shape == (16, 20)
    assert not marker.exists() and not torch_loads

    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        CameraProjection.from_folder(folder)
    assert not marker.exists() and not torch_loads


def test_full_zero123_load_ignores_pickles_next_to_safetensors(z_folder, tmp_path, ref_image, monkeypatch):
    folder = tmp_path / "z-with-pickles"
    shutil.copytree(z_folder, folder)
    marker = tmp_path / "unpickled"
    for sub, name in [("unet", "diffusion_pytorch_model.bin"), ("vae", "diffusion_pytorch_model.bin"),
                      ("image_encoder", "pytorch_model.bin"),
                      ("clip_camera_projection", "diffusion_pytorch_model.bin")]:
        (folder / sub / name).write_bytes(pickle.dumps(_Trap(marker)))
    torch_loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: torch_loads.append(a) or real_load(*a, **k))
    prior = load_prior(tiny_config("zero123", folder), "cpu", ref_image=ref_image)
    assert prior.unet.config.in_channels == 8
    assert not marker.exists() and not torch_loads


# ----------------------------------------------------------------------------------------------
# Factory defaults and small helpers


def test_factory_defaults_and_overrides(sd_prior, z_prior, sd_folder):
    assert sd_prior.guidance_scale == 100.0 and z_prior.guidance_scale == 5.0  # prior.guidance_scale unset
    assert sd_prior.resolution == R and sd_prior.dtype == torch.float32
    prior = load_prior(tiny_config("sd", sd_folder, overrides=("prior.guidance_scale=7.5",
                                                              "prior.t_min=0.1", "prior.t_max=0.5")), "cpu")
    assert prior.guidance_scale == 7.5
    assert (prior.timestep(0.0), prior.timestep(1.0)) == (500, 100)


def test_hub_ids_and_dtypes():
    from dreamgs.priors.weights import is_hub_id, resolve_dtype

    assert is_hub_id("stabilityai/stable-diffusion-2-1-base") and is_hub_id("ashawkey/zero123-xl-diffusers")
    for bad in ("sd", "/abs/path", "a/b/c", "../x", "./x", "~/models/sd", "a/../b"):
        assert not is_hub_id(bad), bad
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError):
        resolve_dtype("int8", "cpu")


def test_a_nan_from_the_unet_is_skipped_and_counted_not_zeroed(sd_folder, monkeypatch):
    from dreamgs.stage1 import Stage1

    cfg = tiny_config("sd", sd_folder, overrides=("seed=4", "stage1.iters=4", "stage1.max_bad_steps=5",
                                                  f"stage1.render_sizes=[{R}]", "stage1.size_milestones=[]",
                                                  "gaussians.num_points=100"))
    prior = load_prior(cfg, "cpu")
    calls = {"n": 0}
    original = prior._unet

    def sometimes_nan(sample, t, encoder_hidden_states):
        calls["n"] += 1
        out = original(sample, t, encoder_hidden_states)
        return torch.full_like(out, float("nan")) if calls["n"] == 2 else out

    monkeypatch.setattr(prior, "_unet", sometimes_nan)
    s1 = Stage1(cfg, prior, device="cpu")
    before = {k: v.detach().clone() for k, v in s1.model.params.items()}
    assert s1.step() is True
    after_first = {k: v.detach().clone() for k, v in s1.model.params.items()}
    assert any(not torch.equal(before[k], after_first[k]) for k in before)
    assert s1.step() is False and s1.trainer.bad_steps == 1  # the NaN step: skipped, counted
    assert all(torch.equal(after_first[k], v) for k, v in s1.model.params.items())  # and changed nothing
    assert s1.step() is True and s1.trainer.bad_steps == 1


def test_compiled_unet_and_encoder_match_eager_and_optimize_resets(sd_folder, monkeypatch):
    """``optimize(compile=True)`` routes the UNet call and the VAE encoder (forward and backward)
    through ``torch.compile``; the result equals the eager path, and a later ``optimize()`` goes
    back to eager. Inductor's code generation is too slow for CI's CPUs, so the compiled graphs run
    on the ``aot_eager`` backend: Dynamo's tracing and AOT autograd are what is exercised here."""
    from dreamgs.priors.sd import StableDiffusionPrior

    real_compile = torch.compile
    compiled = []

    def fake_compile(fn, **kw):
        compiled.append(fn)
        return real_compile(fn, backend="aot_eager", **kw)

    prior = StableDiffusionPrior(str(sd_folder), prompt="a hamburger", dtype=torch.float32, resolution=R, seed=1)
    cams = _front_back_cams()
    images = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        latent_shape = prior.encode_images(images).shape
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(6))

    def sds_and_refine():
        x = images.clone().requires_grad_(True)
        prior.sds(x, cams, 0.5, t=400, noise=noise).backward()
        return x.grad, prior.refine(images, cams, 0.3, 3, noise=noise)

    grad_eager, refined_eager = sds_and_refine()
    monkeypatch.setattr(torch, "compile", fake_compile)
    prior.optimize(compile=True)
    assert len(compiled) == 2 and prior._unet_call is not None and prior._encode_call is not None
    torch._dynamo.reset()
    grad_c, refined_c = sds_and_refine()
    assert grad_eager.abs().max() > 0
    torch.testing.assert_close(grad_c, grad_eager, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(refined_c, refined_eager, rtol=1e-4, atol=1e-5)
    prior.optimize()
    assert prior._unet_call is None and prior._encode_call is None


def test_vae_matmul_attention_matches_sdpa(sd_folder):
    """``vae_matmul_attention`` swaps the VAE's attention for the matmul processor and back; the
    SDS image gradient (through the encoder's attention) and a refine (through the decoder's) are
    those of the default scaled-dot-product attention."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from dreamgs.priors.sd import StableDiffusionPrior

    prior = StableDiffusionPrior(str(sd_folder), prompt="a hamburger", dtype=torch.float64, resolution=R, seed=1)
    assert prior.vae.attn_processors, "the tiny VAE must have an attention layer for this test"
    cams = _front_back_cams()
    images = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        noise = torch.randn(prior.encode_images(images).shape, generator=torch.Generator().manual_seed(8),
                            dtype=torch.float64)

    def run():
        x = images.clone().requires_grad_(True)
        prior.sds(x, cams, 0.5, t=300, noise=noise).backward()
        return x.grad, prior.refine(images, cams, 0.3, 2, noise=noise)

    grad_sdpa, refined_sdpa = run()
    prior.optimize(vae_matmul_attention=True)
    assert all(type(p) is AttnProcessor for p in prior.vae.attn_processors.values())
    grad_mm, refined_mm = run()
    # The matmul processor takes its softmax in float32 (upcast_softmax), hence float32 tolerances.
    scale = float(grad_sdpa.abs().max())
    assert scale > 0
    torch.testing.assert_close(grad_mm, grad_sdpa, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(refined_mm, refined_sdpa, rtol=1e-4, atol=1e-6)
    prior.optimize()
    assert all(type(p) is AttnProcessor2_0 for p in prior.vae.attn_processors.values())
