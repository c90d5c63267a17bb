"""Tiny randomly initialised diffusion models in the exact diffusers folder layouts.

They load through the real loading code (``dreamgs.priors.load_prior``) and run in well under a
second on a CPU, so tests and short end-to-end runs can use real SD / Zero123 code paths without
downloads. Weights are random: outputs are meaningless but deterministic for a seed.

- :func:`build_tiny_sd` writes ``model_index.json``, ``tokenizer/``, ``text_encoder/``, ``vae/``,
  ``unet/``, ``scheduler/`` (as ``StableDiffusionPipeline.save_pretrained`` does);
- :func:`build_tiny_zero123` writes ``model_index.json``, ``unet/`` (8 input channels), ``vae/``,
  ``image_encoder/``, ``feature_extractor/``, ``scheduler/``, ``clip_camera_projection/``;
- :func:`tiny_config` returns a :class:`~dreamgs.config.Config` pointing at such a folder;
- :func:`build_tiny_mvdream_ldm` writes MVDream's original single-file layout (ldm key names) and
  :func:`build_tiny_multiview_folder` the diffusers-style MVDream / ImageDream conversions;
  :func:`tiny_mv_config` points a Config at either.

The VAE downsamples by 2 (not 8) and the priors run at :data:`TINY_RESOLUTION` px.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_RESOLUTION = 32
TINY_WIDTH = 16  # text / image embedding width = cross-attention width


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table byte-level BPE (GPT-2 / CLIP) tokenizers use."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_tokenizer_files(folder: Path, words: tuple[str, ...] = ("view", "front", "back", "side"),
                               vocab_size: int | None = None) -> Path:
    """``vocab.json`` + ``merges.txt`` of a CLIP-style byte-level BPE: all bytes, their word-final
    forms, merges spelling out ``words``, and the two special tokens (last, as in CLIP).

    With ``vocab_size`` (49408 for CLIP), synthetic two-character merges pad the vocabulary to
    that size: token identities are meaningless, sizes and shapes are those of the real model.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    known = set(vocab_list)
    merges: list[str] = []

    def add(left: str, right: str) -> None:
        if left + right not in known:
            merges.append(f"{left} {right}")
            vocab_list.append(left + right)
            known.add(left + right)

    for word in words:
        # Left-to-right merges: w + o -> wo, wo + r -> wor, ..., the last symbol word-final.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            add(current, nxt)
            current = current + nxt
    if vocab_size is not None:
        target = vocab_size - 2
        if target < len(vocab_list) or target - len(vocab_list) > len(chars) ** 2:
            raise ValueError(f"cannot build a CLIP BPE vocabulary of size {vocab_size}")
        for a in chars:
            for b in chars:
                if len(vocab_list) >= target:
                    break
                add(a, b + "</w>")
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def write_clip_tokenizer(folder: Path, vocab_size: int | None = None) -> Path:
    """A tokenizer folder laid out like the hub's SD ``tokenizer/``: ``vocab.json``,
    ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``."""
    write_clip_tokenizer_files(folder, vocab_size=vocab_size)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True,
                  errors="replace", add_prefix_space=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return folder


def _tiny_unet(in_channels: int, channels: tuple[int, int] = (8, 16), head_dim: int = 2):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=channels, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TINY_WIDTH,
        attention_head_dim=head_dim, norm_num_groups=4,
    )


def _tiny_vae():
    """A 2x-downsampling VAE whose scaling factor, like SD's, makes latents roughly unit-variance."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=TINY_RESOLUTION,
    )
    with torch.no_grad():
        x = torch.rand(8, 3, TINY_RESOLUTION, TINY_RESOLUTION) * 2 - 1
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 4))
    return vae


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_tiny_sd(folder: str | Path, seed: int = 0, unet_channels: tuple[int, int] = (8, 16),
                  head_dim: int = 2) -> Path:
    """A tiny Stable Diffusion folder (diffusers layout, safetensors) at ``folder``; ``unet_channels``
    and ``head_dim`` widen its UNet (the VSD LoRA test uses (32, 64) and 8)."""
    import shutil

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    # The pipeline's own save would write tokenizer.json; write the hub's file set instead.
    tok_dir = write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=TINY_WIDTH,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(text_config), tokenizer=tokenizer,
        unet=_tiny_unet(4, unet_channels, head_dim), scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(tok_dir)
    write_clip_tokenizer(tok_dir)
    return folder


def build_tiny_zero123(folder: str | Path, seed: int = 0) -> Path:
    """A tiny Zero123 folder in the layout of ``ashawkey/zero123-xl-diffusers``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from dreamgs.priors.zero123 import CameraProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _tiny_unet(8).save_pretrained(folder / "unet", safe_serialization=True)
    _tiny_vae().save_pretrained(folder / "vae", safe_serialization=True)
    _sd_scheduler().save_pretrained(folder / "scheduler")
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TINY_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=TINY_WIDTH, hidden_act="quick_gelu",
    ))
    vision.save_pretrained(folder / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_resize=True,
        do_center_crop=True, do_normalize=True, do_rescale=True, resample=3,
    ).save_pretrained(folder / "feature_extractor")
    CameraProjection(TINY_WIDTH, 4).save(folder / "clip_camera_projection")
    index = {
        "_class_name": ["zero123", "Zero123Pipeline"],
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder


def tiny_config(kind: str, folder: str | Path, mode: str | None = None, overrides: tuple[str, ...] = ()):
    """A Config for ``kind`` (sd / zero123 / stable-zero123) using the tiny folder, fp32,
    at :data:`TINY_RESOLUTION` px; ``overrides`` are extra ``key=value`` strings."""
    from dreamgs.config import load_config

    mode = mode or ("text" if kind == "sd" else "image")
    base = [f"prior.kind={kind}", f"prior.model={folder}", "prior.dtype=fp32",
            f"prior.resolution={TINY_RESOLUTION}"]
    if kind == "sd":
        base.append("prompt=a hamburger")
    return load_config(mode, overrides=base + list(overrides))


# ------------------------------------------------------------------------------------------------
# MVDream / ImageDream in their published layouts (priors/mvdream_ckpt.py)

MV_CONTEXT = 64  # text width = UNet context width (one 64-channel head)


def tiny_mv_spec(image_tokens: int = 0):
    """A tiny multi-view UNet: 64/128 channels (ldm's 32-group norms and 64-channel heads need at
    least 64), one res block per level, attention at the first level and the middle."""
    from dreamgs.priors.mvdream_ckpt import UNetSpec

    ip = dict(ip_tokens=image_tokens, ip_embed_dim=32, ip_heads=1, ip_depth=1) if image_tokens else {}
    return UNetSpec(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                    attention_levels=(True, False), context_dim=MV_CONTEXT, camera_dim=16, **ip)


def _to_source(module, key_map, conv_attention: bool = False) -> dict:
    """``module``'s weights under the checkpoint names ``key_map`` gives them (fused parts
    concatenated back; with ``conv_attention`` the ldm VAE's attention as 1x1 conv kernels)."""
    import re

    parts: dict[str, list] = {}
    for key, value in module.state_dict().items():
        source, index, count = key_map(key)
        parts.setdefault(source, [None] * count)[index] = value
    out = {}
    for source, values in parts.items():
        value = torch.cat(values) if len(values) > 1 else values[0]
        if conv_attention and re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", source):
            value = value[:, :, None, None]
        out[source] = value.detach().contiguous().clone()
    return out


def _tiny_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=MV_CONTEXT, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=MV_CONTEXT))


def build_tiny_mvdream_ldm(folder: str | Path, seed: int = 0) -> Path:
    """``folder/sd-v2.1-base-4view.safetensors`` in the original ldm key names (UNet under
    ``model.diffusion_model.``, VAE under ``first_stage_model.``, OpenCLIP text under
    ``cond_stage_model.model.`` with one more block than is used, plus the schedule buffers an ldm
    checkpoint carries) and the SD ``tokenizer/`` beside it. Returns the file."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    from dreamgs.priors import mvdream_ckpt as ck
    from dreamgs.priors.mvdream import MultiViewUNet

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "tokenizer")))
    unet = MultiViewUNet(tiny_mv_spec())
    state = _to_source(unet.unet, ck.unet_key_map(unet.spec, ck.UNET_PREFIX))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=32, sample_size=TINY_RESOLUTION)
    state.update(_to_source(vae, ck.vae_key_map(2), conv_attention=True))
    text = _tiny_text_encoder(tokenizer)
    text_state = _to_source(text, ck.text_key_map())
    state.update(text_state)
    p = ck.TEXT_PREFIX
    for key in [k for k in text_state if k.startswith(f"{p}transformer.resblocks.0.")]:  # the unused last block
        state[key.replace("resblocks.0.", "resblocks.2.")] = torch.randn_like(text_state[key])
    state[f"{p}text_projection"] = torch.randn(MV_CONTEXT, MV_CONTEXT)
    state[f"{p}logit_scale"] = torch.tensor(4.6)
    state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    state["betas"] = torch.linspace(0.00085, 0.012, 1000)
    file = folder / "sd-v2.1-base-4view.safetensors"
    save_file(state, str(file))
    return file


def build_tiny_multiview_folder(folder: str | Path, image: bool = False, seed: int = 0) -> Path:
    """The diffusers-style conversion layout (``ashawkey/mvdream-sd2.1-diffusers``, with ``image``
    ``ashawkey/imagedream-ipmv-diffusers``): diffusers/transformers components, and ``unet/`` with
    ldm key names (no prefix) and an ldm-style ``config.json``."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

    from dreamgs.priors import mvdream_ckpt as ck
    from dreamgs.priors.mvdream import MultiViewUNet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder / "tokenizer")))
    _tiny_text_encoder(tokenizer).save_pretrained(folder / "text_encoder", safe_serialization=True)
    _tiny_vae().save_pretrained(folder / "vae", safe_serialization=True)
    _sd_scheduler().save_pretrained(folder / "scheduler")
    spec = tiny_mv_spec(image_tokens=4 if image else 0)
    unet = MultiViewUNet(spec)
    state = _to_source(unet.unet, ck.unet_key_map(spec))
    if image:
        state.update(_to_source(unet.image_embed, ck.resampler_key_map()))
    (folder / "unet").mkdir(exist_ok=True)
    save_file(state, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    config = {"_class_name": "MultiViewUNetModel", "image_size": 32, "in_channels": 4, "out_channels": 4,
              "model_channels": 64, "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1, 2],
              "num_head_channels": 64, "transformer_depth": 1, "context_dim": MV_CONTEXT, "camera_dim": 16}
    if image:
        config["ip_dim"] = spec.ip_tokens
        CLIPVisionModel(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8, projection_dim=32, hidden_act="gelu",
        )).save_pretrained(folder / "image_encoder", safe_serialization=True)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_resize=True,
                           do_center_crop=True, do_normalize=True, do_rescale=True,
                           resample=3).save_pretrained(folder / "feature_extractor")
    (folder / "unet" / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    index = {"_class_name": "MVDreamPipeline", "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder": ["transformers", "CLIPTextModel"], "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["mv_unet", "MultiViewUNetModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder


def tiny_mv_config(kind: str, model: str | Path, overrides: tuple[str, ...] = ()):
    """A Config for ``mvdream`` (text) / ``imagedream`` (image) using a tiny model, fp32, 32 px."""
    from dreamgs.config import load_config

    mode = "text" if kind == "mvdream" else "image"
    base = [f"prior.kind={kind}", f"prior.model={model}", "prior.dtype=fp32", f"prior.resolution={TINY_RESOLUTION}"]
    if kind == "mvdream":
        base.append("prompt=a hamburger")
    return load_config(mode, overrides=base + list(overrides))
