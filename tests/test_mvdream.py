"""MVDream and ImageDream: tiny random models in the published key layouts, loaded back through
the real loaders, and the multi-view pieces (cross-view attention, camera embedding, fifth frame,
view-group cameras) checked for the behaviour they exist for."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (MV_CONTEXT, TINY_RESOLUTION, build_tiny_multiview_folder, build_tiny_mvdream_ldm,
                         tiny_mv_config, tiny_mv_spec)

from dreamgs.cameras import make_cameras
from dreamgs.errors import InputError, ModelNotFoundError
from dreamgs.priors import load_prior

R = TINY_RESOLUTION
U = "model.diffusion_model."


@pytest.fixture(scope="module")
def ldm_file(tmp_path_factory):
    return build_tiny_mvdream_ldm(tmp_path_factory.mktemp("mv") / "ldm")


@pytest.fixture(scope="module")
def mv_folder(tmp_path_factory):
    return build_tiny_multiview_folder(tmp_path_factory.mktemp("mv") / "mvdream-diffusers")


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
    return build_tiny_multiview_folder(tmp_path_factory.mktemp("mv") / "imagedream-diffusers", image=True)


@pytest.fixture(scope="module")
def mv_prior(ldm_file):
    return load_prior(tiny_mv_config("mvdream", ldm_file, ("seed=1",)), "cpu")


@pytest.fixture(scope="module")
def ref_image():
    img = torch.ones(1, 3, 48, 48)
    img[:, :, 12:36, 12:36] = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    return img


@pytest.fixture(scope="module")
def id_prior(id_folder, ref_image):
    return load_prior(tiny_mv_config("imagedream", id_folder, ("seed=2",)), "cpu", ref_image=ref_image)


def _group_cams(azimuth=20.0, elevation=-15.0):
    return make_cameras(elevation, [azimuth + k * 90.0 for k in range(4)], 2.5, 49.1, R)


def _images(n=4, seed=0):
    return torch.rand(n, 3, R, R, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Layouts and loading


def test_ldm_file_uses_the_published_key_names(ldm_file):
    keys = set(load_file(str(ldm_file)))
    published = [
        f"{U}input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        f"{U}input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        f"{U}input_blocks.1.0.in_layers.0.weight", f"{U}input_blocks.1.0.emb_layers.1.weight",
        f"{U}input_blocks.2.0.op.weight", f"{U}input_blocks.3.0.skip_connection.weight",
        f"{U}middle_block.1.proj_in.weight", f"{U}output_blocks.1.1.conv.weight",
        f"{U}output_blocks.3.1.proj_out.weight", f"{U}time_embed.0.weight", f"{U}out.2.weight",
        f"{U}camera_embed.0.weight", f"{U}camera_embed.2.bias",
        "first_stage_model.encoder.down.0.block.0.conv1.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight", "first_stage_model.quant_conv.weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.positional_embedding", "cond_stage_model.model.ln_final.weight",
    ]
    assert [k for k in published if k not in keys] == []
    # the tiny architecture's UNet modules, written out by hand from the ldm layout
    modules = {".".join(k[len(U):].split(".")[:3]) for k in keys
               if k.startswith((f"{U}input_blocks.", f"{U}output_blocks."))}
    assert modules == {"input_blocks.0.0", "input_blocks.1.0", "input_blocks.1.1", "input_blocks.2.0",
                       "input_blocks.3.0", "output_blocks.0.0", "output_blocks.1.0", "output_blocks.1.1",
                       "output_blocks.2.0", "output_blocks.2.1", "output_blocks.3.0", "output_blocks.3.1"}


def test_ldm_checkpoint_loads_back_with_equal_parameters(mv_prior, ldm_file):
    file = load_file(str(ldm_file))
    unet, vae, text = mv_prior.unet.unet, mv_prior.vae, mv_prior.text_encoder
    tower = getattr(text, "text_model", text)  # transformers 4 wraps the tower; 5 does not
    blk = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    pairs = [
        (blk.attn1.to_q.weight, f"{U}input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
        (blk.attn2.to_v.weight, f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"),
        (unet.class_embedding.linear_1.weight, f"{U}camera_embed.0.weight"),
        (unet.class_embedding.linear_2.bias, f"{U}camera_embed.2.bias"),
        (unet.time_embedding.linear_2.weight, f"{U}time_embed.2.weight"),
        (unet.down_blocks[1].resnets[0].conv_shortcut.weight, f"{U}input_blocks.3.0.skip_connection.weight"),
        (unet.down_blocks[0].downsamplers[0].conv.weight, f"{U}input_blocks.2.0.op.weight"),
        (unet.mid_block.resnets[1].time_emb_proj.weight, f"{U}middle_block.2.emb_layers.1.weight"),
        (unet.up_blocks[0].upsamplers[0].conv.weight, f"{U}output_blocks.1.1.conv.weight"),
        (unet.up_blocks[1].attentions[1].proj_out.weight, f"{U}output_blocks.3.1.proj_out.weight"),
        (unet.up_blocks[1].resnets[0].norm2.weight, f"{U}output_blocks.2.0.out_layers.0.weight"),
        (unet.conv_out.weight, f"{U}out.2.weight"),
        (vae.decoder.up_blocks[0].resnets[0].conv1.weight, "first_stage_model.decoder.up.1.block.0.conv1.weight"),
        (vae.decoder.up_blocks[1].resnets[0].conv2.bias, "first_stage_model.decoder.up.0.block.0.conv2.bias"),
        (vae.encoder.down_blocks[1].resnets[0].conv_shortcut.weight,
         "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight"),
        (vae.post_quant_conv.weight, "first_stage_model.post_quant_conv.weight"),
        (tower.final_layer_norm.weight, "cond_stage_model.model.ln_final.weight"),
        (tower.encoder.layers[1].mlp.fc2.weight, "cond_stage_model.model.transformer.resblocks.1.mlp.c_proj.weight"),
    ]
    for param, key in pairs:
        assert torch.equal(param.detach(), file[key]), key
    q = file["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
    assert q.abs().sum() > 0  # random, not a default initialisation
    attn = vae.encoder.mid_block.attentions[0]
    assert torch.equal(attn.to_q.weight, file["first_stage_model.encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    fused = file["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    layer = tower.encoder.layers[0].self_attn
    for i, proj in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
        assert torch.equal(proj.weight, fused[i * MV_CONTEXT:(i + 1) * MV_CONTEXT])
    # penultimate-layer conditioning: the file's third (last) text block is not used
    assert text.config.num_hidden_layers == 2 and "cond_stage_model.model.transformer.resblocks.2.ln_1.weight" in file


def test_diffusers_folder_loads_back_with_equal_parameters(mv_folder):
    from transformers import CLIPTextModel

    prior = load_prior(tiny_mv_config("mvdream", mv_folder), "cpu")
    file = load_file(str(mv_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert "camera_embed.0.weight" in file and not any(k.startswith(U) for k in file)
    unet = prior.unet.unet
    assert torch.equal(unet.class_embedding.linear_1.weight, file["camera_embed.0.weight"])
    assert torch.equal(unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.to_k.weight,
                       file["output_blocks.2.1.transformer_blocks.0.attn1.to_k.weight"])
    assert torch.equal(unet.mid_block.attentions[0].proj_in.weight, file["middle_block.1.proj_in.weight"])
    reference = CLIPTextModel.from_pretrained(str(mv_folder), subfolder="text_encoder")
    for (name, a), b in zip(prior.text_encoder.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert prior.source.layout == "diffusers" and prior.unet.num_frames == 4


def test_imagedream_folder_maps_resampler_and_ip_projections(id_prior, id_folder):
    file = load_file(str(id_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    resampler = id_prior.unet.image_embed
    kv = file["image_embed.layers.0.0.to_kv.weight"]
    half = kv.shape[0] // 2
    assert torch.equal(resampler.layers[0].attn.to_k.weight, kv[:half])
    assert torch.equal(resampler.layers[0].attn.to_v.weight, kv[half:])
    assert torch.equal(resampler.layers[0].ln0.weight, file["image_embed.layers.0.0.norm1.weight"])
    assert torch.equal(resampler.layers[0].ff[1].net[2].weight, file["image_embed.layers.0.1.3.weight"])
    assert torch.equal(resampler.latents, file["image_embed.latents"])
    proc = id_prior.unet.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.processor
    assert torch.equal(proc.to_k_ip.weight, file["input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"])
    assert torch.equal(proc.to_v_ip.weight, file["input_blocks.1.1.transformer_blocks.0.attn2.to_v_ip.weight"])
    assert id_prior.unet.num_frames == 5 and id_prior.guidance_scale == 5.0


def _broken_copy(ldm_file, tmp_path, edit):
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copytree(ldm_file.parent / "tokenizer", folder / "tokenizer")
    state = load_file(str(ldm_file))
    edit(state)
    save_file(state, str(folder / ldm_file.name))
    return folder / ldm_file.name


def test_a_missing_key_fails_naming_it(ldm_file, tmp_path):
    key = f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    broken = _broken_copy(ldm_file, tmp_path, lambda s: s.pop(key))
    with pytest.raises(InputError) as err:
        load_prior(tiny_mv_config("mvdream", broken), "cpu")
    message = str(err.value)
    assert key in message and "missing" in message and "\n" not in message


def test_unexpected_keys_and_wrong_shapes_fail_listing_them(ldm_file, tmp_path):
    def extra(state):
        for i in range(6):
            state[f"{U}input_blocks.1.1.mystery_{i}.weight"] = torch.zeros(2)

    with pytest.raises(InputError) as err:
        load_prior(tiny_mv_config("mvdream", _broken_copy(ldm_file, tmp_path, extra)), "cpu")
    message = str(err.value)
    assert "unexpected keys" in message and "6:" in message and "mystery_0" in message and "(+2 more)" in message

    key = f"{U}camera_embed.2.weight"

    def reshape(state):
        state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)

    shutil.rmtree(tmp_path / "broken")
    with pytest.raises(InputError, match="camera_embed.2.weight"):
        load_prior(tiny_mv_config("mvdream", _broken_copy(ldm_file, tmp_path, reshape)), "cpu")


def test_pickles_are_refused_and_missing_weights_name_the_remedy(tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "sd-v2.1-base-4view.pt").write_bytes(b"never unpickled")
    with pytest.raises(ModelNotFoundError, match="pickled"):
        load_prior(tiny_mv_config("mvdream", tmp_path), "cpu")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as err:
        load_prior(tiny_mv_config("mvdream", "", ("prior.model=",)), "cpu")
    assert "MVDream/MVDream" in str(err.value) and "prior.model=" in str(err.value)


def test_info_lists_both_priors_and_finds_local_weights(ldm_file, id_folder, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from dreamgs.info import info_text, prior_status

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    assert prior_status("mvdream", str(ldm_file)).found
    assert prior_status("mvdream", str(ldm_file.parent)).found  # the folder holding the file
    assert prior_status("imagedream", str(id_folder)).found
    assert not prior_status("imagedream", str(ldm_file)).found  # ImageDream: folder layout only
    text = info_text(use_torch=False)
    assert "mvdream" in text and "imagedream" in text and "MVDream/MVDream" in text


# ----------------------------------------------------------------------------------------------
# What the architecture is for


@pytest.fixture(scope="module")
def tiny_unet():
    from dreamgs.priors.mvdream import MultiViewUNet

    torch.manual_seed(0)
    return MultiViewUNet(tiny_mv_spec()).eval()


def _unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 4, 8, 8, generator=g)
    context = torch.randn(4, 7, MV_CONTEXT, generator=g)
    from dreamgs.priors.mvdream import camera_embedding_input

    return x, torch.full((4,), 500), context, camera_embedding_input(_group_cams())


@torch.no_grad()
def test_cross_view_attention_mixes_views_and_per_view_attention_would_not(tiny_unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    x, t, context, cam = _unet_inputs()
    changed = x.clone()
    changed[1] += torch.randn(changed[1].shape, generator=torch.Generator().manual_seed(9))
    base, out = tiny_unet(x, t, context, cam), tiny_unet(changed, t, context, cam)
    assert (out[0] - base[0]).abs().max() > 1e-4  # view 2's input reached view 1's output
    saved = tiny_unet.unet.attn_processors
    try:
        tiny_unet.unet.set_attn_processor({k: AttnProcessor2_0() if ".attn1." in k else v for k, v in saved.items()})
        base, out = tiny_unet(x, t, context, cam), tiny_unet(changed, t, context, cam)
        torch.testing.assert_close(out[0], base[0], rtol=0, atol=1e-6)
        assert (out[1] - base[1]).abs().max() > 1e-4
    finally:
        tiny_unet.unet.set_attn_processor(saved)


@torch.no_grad()
def test_camera_embedding_changes_the_output(tiny_unet):
    x, t, context, cam = _unet_inputs()
    other = cam.clone()
    other[0] = cam[2]
    base, out = tiny_unet(x, t, context, cam), tiny_unet(x, t, context, other)
    assert (out[0] - base[0]).abs().max() > 1e-4


def test_camera_embedding_input_convention():
    from dreamgs.priors.mvdream import camera_embedding_input

    cams = make_cameras([0.0, -30.0], [0.0, 90.0], [2.5, 4.0], 49.1, R)
    m = camera_embedding_input(cams).reshape(2, 4, 4)
    # OpenGL +z (front camera) -> MVDream's -y; OpenGL up (+y) -> +z; translations of unit length
    torch.testing.assert_close(m[0, :3, 3], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    assert m[1, 2, 3] == pytest.approx(0.5, abs=1e-6)  # 30 degrees above: z = sin 30
    torch.testing.assert_close(m[:, :3, 3].norm(dim=-1), torch.ones(2))
    assert torch.equal(m[:, 3], torch.tensor([[0.0, 0, 0, 1]] * 2))


# ----------------------------------------------------------------------------------------------
# SDS and refine on CPU


def test_mvdream_sds_and_refine_on_cpu(mv_prior):
    images = _images().requires_grad_(True)
    loss = mv_prior.sds(images, _group_cams(), 0.4)
    loss.backward()
    assert images.grad.shape == images.shape and torch.isfinite(images.grad).all()
    assert images.grad.abs().max() > 0
    out = mv_prior.refine(_images(seed=1), _group_cams(), 0.5, 2)
    assert out.shape == (4, 3, R, R) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="groups of 4"):
        mv_prior.sds(_images(3), _group_cams()[:3], 0.4)
    assert mv_prior.guidance_scale == 50.0 and mv_prior.views_per_sample == 4


def test_imagedream_sds_has_the_fifth_frame_and_image_tokens(id_prior, monkeypatch):
    seen = []
    original = id_prior._unet

    def spy(sample, t, context, camera):
        seen.append((sample.detach().clone(), context.detach().clone(), camera.detach().clone()))
        return original(sample, t, context, camera)

    monkeypatch.setattr(id_prior, "_unet", spy)
    images = _images(8).requires_grad_(True)
    cams = make_cameras(-10.0, [0.0, 90, 180, 270, 45, 135, -135, -45], 2.0, 49.1, R)
    id_prior.sds(images, cams, 0.5).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().max() > 0
    ((sample, context, camera),) = seen
    assert sample.shape == (20, 4, R // 2, R // 2)  # [cond; uncond] x 2 groups x (4 views + input view)
    frames = sample.reshape(4, 5, 4, R // 2, R // 2)
    torch.testing.assert_close(frames[:2, 4], id_prior.ref_latents.expand(2, -1, -1, -1))  # cond: the input view
    assert torch.count_nonzero(frames[2:, 4]) == 0  # uncond: a zero frame
    assert torch.count_nonzero(camera.reshape(4, 5, 16)[:, 4]) == 0 and camera.reshape(4, 5, 16)[:, :4].abs().sum() > 0
    tokens = id_prior.unet.spec.ip_tokens
    assert context.shape[1] == id_prior.text_embedding.shape[1] + tokens
    torch.testing.assert_close(context[0, -tokens:], id_prior.image_tokens[0])
    torch.testing.assert_close(context[10, -tokens:], id_prior.uncond_image_tokens[0])
    out = id_prior.refine(_images(4, seed=2), cams[:4], 0.4, 2)
    assert out.shape == (4, 3, R, R)


# ----------------------------------------------------------------------------------------------
# Stage 1 view groups


def test_view_group_cameras_are_90_degrees_apart_at_a_shared_elevation():
    from dreamgs.config import load_config
    from dreamgs.stage1 import view_group_cameras

    for mode in ("text", "image"):
        cfg = load_config(mode, overrides=["elevation=-20"] if mode == "image" else [])
        cams = view_group_cameras(cfg, 3, 4, 32, "cpu", torch.Generator().manual_seed(0), relative=mode == "image")
        az, el = cams.azimuth.reshape(3, 4).double(), cams.elevation.reshape(3, 4)
        steps = (az.diff(dim=1) % 360.0)
        torch.testing.assert_close(steps, torch.full_like(steps, 90.0), atol=1e-4, rtol=0)
        assert (el == el[:, :1]).all() and (cams.radius.reshape(3, 4) == cams.radius.reshape(3, 4)[:, :1]).all()
        assert len(set(az[:, 0].tolist())) == 3 and ((az >= -180) & (az < 180)).all()


def test_step_cameras_follow_the_prior():
    """Stage 1, stage 2 and the time estimate all take their cameras from stage1.step_cameras."""
    from dreamgs.config import load_config
    from dreamgs.stage1 import sample_training_cameras, step_cameras

    class MultiView:
        views_per_sample = 4

    class SingleView:
        views_per_sample = 1

    cfg = load_config("text")
    grouped = step_cameras(cfg, MultiView(), 2, 32, "cpu", torch.Generator().manual_seed(5))
    assert len(grouped) == 8 and (grouped.elevation[:4] == grouped.elevation[0]).all()
    single = step_cameras(cfg, SingleView(), 2, 32, "cpu", torch.Generator().manual_seed(5))
    plain = sample_training_cameras(cfg, 2, 32, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(single.viewmats, plain.viewmats)  # single-view priors: draws unchanged


def test_stage1_step_gives_the_prior_one_view_group(mv_prior, ldm_file, monkeypatch):
    from dreamgs.stage1 import Stage1

    cfg = tiny_mv_config("mvdream", ldm_file, ("seed=3", "stage1.iters=2", f"stage1.render_sizes=[{R}]",
                                                "stage1.size_milestones=[]", "gaussians.num_points=64"))
    seen = []
    original = mv_prior.sds

    def spy(images, cams, progress):
        seen.append((images.shape, cams.azimuth.clone(), cams.elevation.clone()))
        return original(images, cams, progress)

    monkeypatch.setattr(mv_prior, "sds", spy)
    s1 = Stage1(cfg, mv_prior, device="cpu")
    assert s1.step() is True
    ((shape, az, el),) = seen
    assert shape == (4, 3, R, R)
    steps = az.double().diff() % 360.0
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0), atol=1e-4, rtol=0)
    assert (el == el[0]).all()


def test_full_size_mvdream_maps_onto_the_published_ldm_names():
    """The published MVDream config (SD 2.1-base: 320 channels, mult 1/2/4/4, 2 res blocks, attention
    at 4/2/1, context 1024, camera 16), built without memory on the meta device: every diffusers
    parameter has its own ldm name, the well-known SD ldm names have the published shapes, and the
    structure read back from those names is the config again."""
    from dreamgs.priors import mvdream_ckpt as ck
    from dreamgs.priors.mvdream import MultiViewUNet

    spec = ck.UNetSpec(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                       attention_levels=(True, True, True, False), context_dim=1024, camera_dim=16)
    with torch.device("meta"):
        unet = MultiViewUNet(spec)
    key_map = ck.unet_key_map(spec, U)
    ldm = {key_map(k)[0]: v for k, v in unet.unet.state_dict().items()}
    assert len(ldm) == len(unet.unet.state_dict()) == 690  # one name each: SD 2.1's 686 UNet tensors + 4 camera MLP
    shapes = {
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3), "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3), "middle_block.1.proj_in.weight": (1280, 1280),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3), "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3), "output_blocks.11.1.proj_out.weight": (320, 320),
        "time_embed.0.weight": (1280, 320), "camera_embed.0.weight": (1280, 16), "camera_embed.2.weight": (1280, 1280),
        "out.2.weight": (4, 320, 3, 3),
    }
    for key, shape in shapes.items():
        assert tuple(ldm[U + key].shape) == shape, key
    assert not any(k.startswith(U + "input_blocks.12") or k.startswith(U + "output_blocks.12") for k in ldm)
    assert ck.unet_spec(ldm, U) == spec
