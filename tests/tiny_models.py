"""Tiny randomly initialised diffusion models in the exact diffusers folder layouts.

They load through the real loading code (``dreamgs.priors.load_prior``) and run in well under a
second on a CPU, so tests and short end-to-end runs can use real SD / Zero123 code paths without
downloads. Weights are random: outputs are meaningless but deterministic for a seed.

- :func:`build_tiny_sd` writes ``model_index.json``, ``tokenizer/``, ``text_encoder/``, ``vae/``,
  ``unet/``, ``scheduler/`` (as ``StableDiffusionPipeline.save_pretrained`` does);
- :func:`build_tiny_zero123` writes ``model_index.json``, ``unet/`` (8 input channels), ``vae/``,
  ``image_encoder/``, ``feature_extractor/``, ``scheduler/``, ``clip_camera_projection/``;
- :func:`tiny_config` returns a :class:`~dreamgs.config.Config` pointing at such a folder.

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


def _tiny_unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TINY_WIDTH,
        attention_head_dim=2, norm_num_groups=4,
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


def build_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """A tiny Stable Diffusion folder (diffusers layout, safetensors) at ``folder``."""
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
        unet=_tiny_unet(4), scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
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
