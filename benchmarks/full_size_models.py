"""Full-size Stable Diffusion 2.1-base, Zero123-XL and MVDream with random weights, for GPU timing.

Speed does not depend on weight values or token identities, only on shapes, so these folders
time exactly like the real models while needing no download. They are written in the diffusers
layouts of ``stabilityai/stable-diffusion-2-1-base``, ``ashawkey/zero123-xl-diffusers`` and
``ashawkey/mvdream-sd2.1-diffusers`` (its UNet in ldm key names, as published; safetensors only) and
load through the same code as the real weights::

    python benchmarks/full_size_models.py --out /tmp/sd21-random --which sd
    python benchmarks/full_size_models.py --out /tmp/zero123xl-random --which zero123
    python benchmarks/full_size_models.py --out /tmp/mvdream-random --which mvdream
    dreamgs ... prior.model=/tmp/sd21-random

``--check-only`` builds the modules on the meta device and prints the parameter counts (no
memory, no files). Every build checks the counts against the published ones:

=================================  ===========  =============================================
SD 2.1 UNet (4 in-channels)        865,910,724
MVDream UNet                       867,572,164  SD 2.1 UNet + camera MLP 16*1280+1280+1280*1280+1280
Zero123-XL UNet (8 in-channels)    859,532,484  SD 1.x UNet 859,520,964 + 4*320*3*3 conv_in
SD VAE (AutoencoderKL)              83,653,863
OpenCLIP ViT-H text tower, 23 lay. 340,387,840  23 * 12,596,224 + 49408*1024 + 77*1024 + LN
CLIP ViT-L/14 vision + projection  303,966,208  24 * 12,596,224 + embeddings, LNs, 1024*768
=================================  ===========  =============================================

Weights are random (PyTorch default init), saved in fp16 by default (``--dtype fp32`` keeps
fp32): about 2.6 GB for SD and MVDream and 2.4 GB for Zero123-XL. Building on a CPU takes about a minute;
``--device cuda`` initialises on the GPU instead. The output folder appears atomically (built
in a temporary sibling, then renamed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from tiny_models import _to_source, write_clip_tokenizer  # noqa: E402

from dreamgs.priors.zero123 import CameraProjection  # noqa: E402

PUBLISHED = {
    "sd_unet": 865_910_724,
    "mvdream_unet": 865_910_724 + 16 * 1280 + 1280 + 1280 * 1280 + 1280,
    "zero123_unet": 859_532_484,
    "vae": 83_653_863,
    "text_encoder": 340_387_840,
    "image_encoder": 303_966_208,
}
TOLERANCE = 0.005  # relative

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, only_cross_attention=False,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20], dual_cross_attention=False, use_linear_projection=True,
    upcast_attention=False,
)
ZERO123_UNET = dict(SD21_UNET, sample_size=32, in_channels=8, cross_attention_dim=768, attention_head_dim=8,
                    use_linear_projection=False)
SD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD21_TEXT = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
VIT_L14 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
    patch_size=14, num_channels=3, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
MVDREAM_CONFIG = {  # unet/config.json of the diffusers-style conversion (ldm names)
    "_class_name": "MultiViewUNetModel", "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64, "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024,
    "use_checkpoint": False, "legacy": False, "camera_dim": 16,
}


def _mvdream_spec():
    from dreamgs.priors.mvdream_ckpt import UNetSpec

    c = MVDREAM_CONFIG
    return UNetSpec(in_channels=4, out_channels=4, model_channels=c["model_channels"],
                    channel_mult=tuple(c["channel_mult"]), num_res_blocks=c["num_res_blocks"],
                    attention_levels=(True, True, True, False), context_dim=c["context_dim"], camera_dim=16)


MVDREAM_SPEC = _mvdream_spec()
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_counts(modules: dict[str, torch.nn.Module]) -> list[str]:
    """One line per module with its parameter count vs the published one; raises on a mismatch."""
    lines, bad = [], []
    for key, module in modules.items():
        n, ref = count(module), PUBLISHED[key]
        rel = abs(n - ref) / ref
        lines.append(f"{key:14s} {n:>13,d}  published {ref:>13,d}  ({100 * rel:.3f}% off)")
        if rel > TOLERANCE:
            bad.append(key)
    if bad:
        raise SystemExit("parameter counts differ from the published ones: " + ", ".join(bad) + "\n" + "\n".join(lines))
    return lines


def build_sd_modules(device: str = "cpu") -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return {
            "sd_unet": UNet2DConditionModel(**SD21_UNET),
            "vae": AutoencoderKL(**SD_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD21_TEXT)),
        }


def build_zero123_modules(device: str = "cpu") -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device(device):
        return {
            "zero123_unet": UNet2DConditionModel(**ZERO123_UNET),
            "vae": AutoencoderKL(**SD_VAE),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_L14)),
        }


def build_mvdream_modules(device: str = "cpu") -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamgs.priors.mvdream import MultiViewUNet

    with torch.device(device):
        return {
            "mvdream_unet": MultiViewUNet(MVDREAM_SPEC),
            "vae": AutoencoderKL(**SD_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD21_TEXT)),
        }


BUILDERS = {"sd": build_sd_modules, "zero123": build_zero123_modules, "mvdream": build_mvdream_modules}


def _save(module, folder: Path, dtype: torch.dtype) -> None:
    module.to("cpu", dtype).save_pretrained(folder, safe_serialization=True)


def write_sd(out: Path, dtype: torch.dtype, device: str) -> list[str]:
    """SD 2.1-base layout: tokenizer/, text_encoder/, unet/, vae/, scheduler/ (PNDM), model_index.json."""
    from diffusers import PNDMScheduler

    modules = build_sd_modules(device)
    lines = check_counts(modules)
    write_clip_tokenizer(out / "tokenizer", vocab_size=SD21_TEXT["vocab_size"])
    _save(modules["text_encoder"], out / "text_encoder", dtype)
    _save(modules["sd_unet"], out / "unet", dtype)
    _save(modules["vae"], out / "vae", dtype)
    pndm = {k: v for k, v in SCHEDULER.items() if k != "clip_sample"}
    PNDMScheduler(skip_prk_steps=True, **pndm).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return lines


def write_zero123(out: Path, dtype: torch.dtype, device: str) -> list[str]:
    """Zero123-XL layout: unet/, vae/, image_encoder/, feature_extractor/, scheduler/ (DDIM),
    clip_camera_projection/, model_index.json."""
    from diffusers import DDIMScheduler
    from transformers import CLIPImageProcessor

    modules = build_zero123_modules(device)
    lines = check_counts(modules)
    _save(modules["zero123_unet"], out / "unet", dtype)
    _save(modules["vae"], out / "vae", dtype)
    _save(modules["image_encoder"], out / "image_encoder", dtype)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                       do_center_crop=True, do_normalize=True, do_rescale=True, do_convert_rgb=True,
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out / "feature_extractor")
    DDIMScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    CameraProjection(768, 4).to(dtype).save(out / "clip_camera_projection")
    index = {
        "_class_name": ["zero123", "Zero123Pipeline"],
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return lines


def write_mvdream(out: Path, dtype: torch.dtype, device: str) -> list[str]:
    """``ashawkey/mvdream-sd2.1-diffusers`` layout: tokenizer/, text_encoder/, vae/, scheduler/
    (DDIM), unet/ (ldm key names and config.json), model_index.json."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    from dreamgs.priors import mvdream_ckpt as ck

    modules = build_mvdream_modules(device)
    lines = check_counts(modules)
    write_clip_tokenizer(out / "tokenizer", vocab_size=SD21_TEXT["vocab_size"])
    _save(modules["text_encoder"], out / "text_encoder", dtype)
    _save(modules["vae"], out / "vae", dtype)
    DDIMScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    unet = modules["mvdream_unet"]
    state = {k: v.to("cpu", dtype) for k, v in _to_source(unet.unet, ck.unet_key_map(unet.spec)).items()}
    (out / "unet").mkdir()
    save_file(state, str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    (out / "unet" / "config.json").write_text(json.dumps(MVDREAM_CONFIG, indent=2) + "\n", encoding="utf-8")
    index = {"_class_name": "MVDreamPipeline", "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder": ["transformers", "CLIPTextModel"], "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["mv_unet", "MultiViewUNetModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return lines


WRITERS = {"sd": write_sd, "zero123": write_zero123, "mvdream": write_mvdream}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="output folder (must not exist)")
    ap.add_argument("--which", choices=sorted(WRITERS), required=True)
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16", help="dtype of the saved weights")
    ap.add_argument("--device", default="cpu", help="where to initialise the modules (cpu or cuda)")
    ap.add_argument("--check-only", action="store_true", help="print parameter counts (meta device), write nothing")
    args = ap.parse_args(argv)

    if args.check_only:
        print("\n".join(check_counts(BUILDERS[args.which]("meta"))))
        return 0
    if args.out is None:
        ap.error("--out is required unless --check-only")
    out = args.out.resolve()
    if out.exists():
        ap.error(f"--out {out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o755)
    try:
        lines = WRITERS[args.which](tmp, dtype, args.device)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print("\n".join(lines))
    print(f"wrote {out} ({size / 1e9:.2f} GB, {args.dtype}) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
