"""MVDream / ImageDream weights: where they are, and the strict key maps of their published layouts.

Two layouts are read, both safetensors only (pickled ``.pt``/``.ckpt``/``.bin`` files are never
opened, and no repository code is ever run):

- **ldm single file** (MVDream only): the original ``sd-v2.1-base-4view`` checkpoint converted to
  ``.safetensors`` (the hub's ``MVDream/MVDream`` publishes it as a pickled ``.pt``, which must be
  converted first). Keys: ``model.diffusion_model.*`` (the multi-view UNet, ldm names, with
  ``camera_embed.{0,2}``), ``first_stage_model.*`` (the ldm VAE) and ``cond_stage_model.model.*``
  (the OpenCLIP ViT-H text tower). The tokenizer is not in the file: a CLIP ``tokenizer/`` folder
  (SD 2.1's) must sit beside it. Structure (channels, levels, heads of 64 channels) is read off the
  tensor shapes; the scheduler is SD 2.1-base's (scaled-linear betas 0.00085-0.012, epsilon).
- **diffusers-style folder** (MVDream and ImageDream; the public conversions
  ``ashawkey/mvdream-sd2.1-diffusers`` and ``ashawkey/imagedream-ipmv-diffusers``): ``tokenizer/``,
  ``text_encoder/`` (transformers CLIPTextModel), ``vae/`` (diffusers AutoencoderKL),
  ``scheduler/`` and ``unet/`` whose ``diffusion_pytorch_model.safetensors`` keeps the ldm names
  without the ``model.diffusion_model.`` prefix (a custom class upstream; we map it onto diffusers'
  ``UNet2DConditionModel``). ImageDream adds ``image_encoder/`` (CLIPVisionModel, ViT-H) and
  ``feature_extractor/``, and its UNet file holds ``image_embed.*`` (the IP-Adapter-plus resampler)
  and ``attn2.to_k_ip`` / ``attn2.to_v_ip`` in every transformer block.

Mapping is strict: every parameter of the target modules must come from exactly one checkpoint key
of the right shape, and every checkpoint key must be used or be on the short list of keys that are
known to be unused (:data:`LDM_UNUSED`, the text tower's last block, which the penultimate-layer
conditioning skips). Anything else raises one :class:`~dreamgs.errors.InputError` line naming the
first few offending keys and their count.

This module imports torch only inside the functions that load tensors, so ``dreamgs info`` can use
:func:`locate` cheaply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError, InputError
from .weights import CONFIG, TOKENIZER, WEIGHTS, cached_snapshot, check_folder, is_hub_id, missing

if TYPE_CHECKING:
    import torch

DEFAULT_MVDREAM_MODEL = "MVDream/MVDream"
MVDREAM_CHECKPOINT = "sd-v2.1-base-4view.safetensors"
DEFAULT_IMAGEDREAM_MODEL = "ashawkey/imagedream-ipmv-diffusers"
MVDREAM_COMPONENTS = {"tokenizer": TOKENIZER, "text_encoder": WEIGHTS, "vae": WEIGHTS, "unet": WEIGHTS,
                      "scheduler": CONFIG}
IMAGEDREAM_COMPONENTS = dict(MVDREAM_COMPONENTS, image_encoder=WEIGHTS, feature_extractor=CONFIG)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
# ldm checkpoints also store the diffusion schedule and EMA bookkeeping; none of it is a weight we use.
LDM_UNUSED = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model_ema.decay", "model_ema.num_updates", f"{TEXT_PREFIX}text_projection", f"{TEXT_PREFIX}logit_scale",
})
HEAD_CHANNELS = 64  # MVDream / ImageDream / SD 2.x: attention heads of 64 channels


def components(kind: str) -> dict[str, str]:
    return IMAGEDREAM_COMPONENTS if kind == "imagedream" else MVDREAM_COMPONENTS


def default_model(kind: str) -> str:
    return DEFAULT_IMAGEDREAM_MODEL if kind == "imagedream" else DEFAULT_MVDREAM_MODEL


# ------------------------------------------------------------------------------------------------
# Finding the weights


@dataclass
class Source:
    """Where the weights are: ``layout`` is ``"ldm"`` (``path`` is the .safetensors file, with
    ``tokenizer/`` beside it) or ``"diffusers"`` (``path`` is the folder)."""

    layout: str
    path: Path


def _ldm_file(folder: Path) -> Path | None:
    named = folder / MVDREAM_CHECKPOINT
    if named.is_file():
        return named
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return files[0] if len(files) == 1 else None


def _from_folder(folder: Path, model: str, kind: str) -> Source:
    if (folder / "unet").is_dir():
        return Source("diffusers", check_folder(folder, components(kind), model, kind))
    if kind == "mvdream":
        file = _ldm_file(folder)
        if file is not None:
            return _from_file(file, model, kind)
        pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".pt", ".ckpt", ".bin", ".pth"))
        if pickled:
            raise missing(model, kind, f"{folder} only holds pickled weights ({pickled[0]}), which are never "
                                       f"loaded; convert them to {MVDREAM_CHECKPOINT} (safetensors)")
        raise missing(model, kind, f"{folder} has neither a diffusers-style 'unet/' folder nor {MVDREAM_CHECKPOINT}")
    raise missing(model, kind, f"{folder} is not a diffusers-style folder (no 'unet/')")


def _from_file(file: Path, model: str, kind: str) -> Source:
    if file.suffix != ".safetensors":
        raise missing(model, kind, f"refusing to load non-safetensors weights {file.name}")
    if kind != "mvdream":
        raise missing(model, kind, "only the diffusers-style folder layout is supported for ImageDream")
    check_folder(file.parent, {"tokenizer": TOKENIZER}, model, kind)
    return Source("ldm", file)


def locate(model: str, kind: str, download: bool = False) -> Source:
    """The weights of prior ``kind`` (mvdream / imagedream) named by ``model``: a ``.safetensors``
    file, a folder in either layout, or a hub id (the Hugging Face cache only, unless ``download``).
    Raises ModelNotFoundError with the project's "how to supply them" remedy."""
    model = model or default_model(kind)
    path = Path(model).expanduser()
    if path.is_file():
        return _from_file(path.resolve(), model, kind)
    if path.is_dir():
        return _from_folder(path.resolve(), model, kind)
    if not is_hub_id(model):
        raise missing(model, kind, "no such file or folder, and it is not a hub id of the form owner/name")
    if not download:
        return _from_folder(cached_snapshot(model, components(kind), kind), model, kind)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    from .weights import _IGNORE, _allow_patterns, _hub_failure

    patterns = _allow_patterns(components(kind)) + ["*.safetensors"]
    try:
        folder = snapshot_download(model, allow_patterns=patterns, ignore_patterns=_IGNORE)
    except (OSError, ValueError, HfHubHTTPError) as e:
        raise missing(model, kind, _hub_failure(e)) from None
    return _from_folder(Path(folder), model, kind)


# ------------------------------------------------------------------------------------------------
# Architecture read off the weights


@dataclass(frozen=True)
class UNetSpec:
    """The multi-view UNet's hyper-parameters (ldm names). MVDream's published config:
    320 channels, mult (1, 2, 4, 4), 2 res blocks, attention at 4, 2, 1, heads of 64 channels,
    context 1024, camera 16; ImageDream adds 16 image tokens from a 4-layer resampler on
    1280-wide CLIP features."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    context_dim: int
    camera_dim: int
    transformer_depth: int = 1
    num_head_channels: int = HEAD_CHANNELS
    ip_tokens: int = 0  # ImageDream: image tokens appended to the text context (0: MVDream)
    ip_embed_dim: int = 0  # width of the CLIP features the resampler reads
    ip_heads: int = 0
    ip_depth: int = 0


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise InputError(f"checkpoint: required key '{key}' is missing; is this an MVDream/ImageDream UNet?")
    return tuple(state[key].shape)


def unet_spec(state: dict, prefix: str = "", num_head_channels: int = HEAD_CHANNELS) -> UNetSpec:
    """The UNet's structure from the ldm-named ``state`` (keys under ``prefix``)."""
    p = prefix
    mc, cin = _shape(state, f"{p}input_blocks.0.0.weight")[:2]
    cout = _shape(state, f"{p}out.2.weight")[0]
    camera = _shape(state, f"{p}camera_embed.0.weight")[1]
    mult, attn, per_level, level, i = [], [], [], 0, 1
    while f"{p}input_blocks.{i}.0.op.weight" in state or f"{p}input_blocks.{i}.0.in_layers.2.weight" in state:
        if f"{p}input_blocks.{i}.0.op.weight" in state:
            level += 1
        else:
            width = _shape(state, f"{p}input_blocks.{i}.0.in_layers.2.weight")[0]
            if level == len(mult):
                mult.append(width // mc)
                attn.append(f"{p}input_blocks.{i}.1.proj_in.weight" in state)
                per_level.append(0)
            per_level[level] += 1
        i += 1
    if not mult or len(set(per_level)) != 1:
        raise InputError(f"checkpoint: cannot read the UNet's levels from '{p}input_blocks.*'")
    ctx_key = next((k for k in state if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    if ctx_key is None:
        raise InputError("checkpoint: the UNet has no cross-attention ('attn2.to_k.weight')")
    first_attn = next(j for j in range(1, i) if f"{p}input_blocks.{j}.1.proj_in.weight" in state)
    depth = 0
    while f"{p}input_blocks.{first_attn}.1.transformer_blocks.{depth}.attn1.to_q.weight" in state:
        depth += 1
    ip = {}
    if f"{p}image_embed.latents" in state:
        _, tokens, _ = _shape(state, f"{p}image_embed.latents")
        ip_depth = 0
        while f"{p}image_embed.layers.{ip_depth}.0.to_q.weight" in state:
            ip_depth += 1
        ip = dict(ip_tokens=tokens, ip_embed_dim=_shape(state, f"{p}image_embed.proj_in.weight")[1],
                  ip_heads=_shape(state, f"{p}image_embed.layers.0.0.to_q.weight")[0] // HEAD_CHANNELS,
                  ip_depth=ip_depth)
    return UNetSpec(in_channels=cin, out_channels=cout, model_channels=mc, channel_mult=tuple(mult),
                    num_res_blocks=per_level[0], attention_levels=tuple(attn), context_dim=_shape(state, ctx_key)[1],
                    camera_dim=camera, transformer_depth=depth, num_head_channels=num_head_channels, **ip)


def vae_config(state: dict, prefix: str = VAE_PREFIX) -> dict:
    """diffusers ``AutoencoderKL`` arguments for the ldm VAE under ``prefix``."""
    p = prefix
    widths, level = [], 0
    while f"{p}encoder.down.{level}.block.0.conv1.weight" in state:
        widths.append(_shape(state, f"{p}encoder.down.{level}.block.0.conv1.weight")[0])
        level += 1
    blocks = 0
    while f"{p}encoder.down.0.block.{blocks}.conv1.weight" in state:
        blocks += 1
    if not widths:
        raise InputError(f"checkpoint: no VAE under '{p}' ('{p}encoder.down.0.block.0.conv1.weight' is missing)")
    n = len(widths)
    return dict(in_channels=_shape(state, f"{p}encoder.conv_in.weight")[1],
                out_channels=_shape(state, f"{p}decoder.conv_out.weight")[0],
                down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                block_out_channels=tuple(widths), layers_per_block=blocks,
                latent_channels=_shape(state, f"{p}post_quant_conv.weight")[1], norm_num_groups=32,
                sample_size=256, scaling_factor=0.18215)


def text_config(state: dict, prefix: str = TEXT_PREFIX) -> dict:
    """transformers ``CLIPTextConfig`` arguments for the OpenCLIP text tower under ``prefix``,
    cut before its last block (MVDream conditions on the penultimate layer, then ``ln_final``)."""
    p = prefix
    vocab, width = _shape(state, f"{p}token_embedding.weight")
    layers = 0
    while f"{p}transformer.resblocks.{layers}.ln_1.weight" in state:
        layers += 1
    if layers < 2:
        raise InputError(f"checkpoint: the text tower under '{p}' has {layers} blocks; at least 2 are needed")
    return dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers - 1,
                intermediate_size=_shape(state, f"{p}transformer.resblocks.0.mlp.c_fc.weight")[0],
                num_attention_heads=max(1, width // HEAD_CHANNELS), hidden_act="gelu",
                max_position_embeddings=_shape(state, f"{p}positional_embedding")[0], layer_norm_eps=1e-5,
                projection_dim=width)


# ------------------------------------------------------------------------------------------------
# Key maps: a function from a target (diffusers / transformers) parameter name to its checkpoint
# key, plus the part of that tensor it takes (OpenCLIP's fused q/k/v, the resampler's fused k/v).

KeyMap = Callable[[str], "tuple[str, int, int]"]  # target key -> (source key, part index, parts)


def _rename(suffix: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if suffix == old or suffix.startswith(old + "."):
            return new + suffix[len(old):]
    return suffix


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_module_pairs(spec: UNetSpec) -> list[tuple[str, str, dict[str, str]]]:
    """(diffusers prefix, ldm prefix, suffix renames) for every module of the multi-view UNet."""
    pairs = [("time_embedding.linear_1", "time_embed.0", {}), ("time_embedding.linear_2", "time_embed.2", {}),
             ("class_embedding.linear_1", "camera_embed.0", {}), ("class_embedding.linear_2", "camera_embed.2", {}),
             ("conv_in", "input_blocks.0.0", {}), ("conv_norm_out", "out.0", {}), ("conv_out", "out.2", {}),
             ("mid_block.resnets.0", "middle_block.0", _RESNET), ("mid_block.attentions.0", "middle_block.1", {}),
             ("mid_block.resnets.1", "middle_block.2", _RESNET)]
    levels, nrb = len(spec.channel_mult), spec.num_res_blocks
    i = 1
    for lvl in range(levels):
        for j in range(nrb):
            pairs.append((f"down_blocks.{lvl}.resnets.{j}", f"input_blocks.{i}.0", _RESNET))
            if spec.attention_levels[lvl]:
                pairs.append((f"down_blocks.{lvl}.attentions.{j}", f"input_blocks.{i}.1", {}))
            i += 1
        if lvl < levels - 1:
            pairs.append((f"down_blocks.{lvl}.downsamplers.0.conv", f"input_blocks.{i}.0.op", {}))
            i += 1
    k = 0
    for up in range(levels):
        lvl = levels - 1 - up
        for j in range(nrb + 1):
            pairs.append((f"up_blocks.{up}.resnets.{j}", f"output_blocks.{k}.0", _RESNET))
            if spec.attention_levels[lvl]:
                pairs.append((f"up_blocks.{up}.attentions.{j}", f"output_blocks.{k}.1", {}))
            if j == nrb and up < levels - 1:
                slot = 2 if spec.attention_levels[lvl] else 1
                pairs.append((f"up_blocks.{up}.upsamplers.0.conv", f"output_blocks.{k}.{slot}.conv", {}))
            k += 1
    return pairs


def _prefix_map(pairs: list[tuple[str, str, dict[str, str]]], source_prefix: str, post=None) -> KeyMap:
    ordered = sorted(pairs, key=lambda p: -len(p[0]))

    def key_map(key: str) -> tuple[str, int, int]:
        for target, source, table in ordered:
            if key.startswith(target + "."):
                suffix = _rename(key[len(target) + 1:], table)
                if post is not None:
                    suffix = post(suffix)
                return f"{source_prefix}{source}.{suffix}", 0, 1
        return f"{source_prefix}{key}", 0, 1  # unknown: reported as missing under its own name

    return key_map


def unet_key_map(spec: UNetSpec, prefix: str = "") -> KeyMap:
    """diffusers UNet key (of :class:`~dreamgs.priors.mvdream.MultiViewUNet`'s ``unet``) -> ldm key.
    The IP-Adapter projections live in the cross-attention processors (``attn2.processor.to_k_ip``)."""
    return _prefix_map(unet_module_pairs(spec), prefix, lambda s: s.replace(".processor.", "."))


def resampler_key_map(prefix: str = "") -> KeyMap:
    """diffusers ``IPAdapterPlusImageProjection`` key -> ImageDream ``image_embed.*`` key."""
    layer = re.compile(r"^layers\.(\d+)\.(.+)$")
    table = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_out.0": "0.to_out",
             "ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}

    def key_map(key: str) -> tuple[str, int, int]:
        m = layer.match(key)
        if not m:
            return f"{prefix}image_embed.{key}", 0, 1
        i, rest = m.groups()
        for part, name in enumerate(("attn.to_k.", "attn.to_v.")):
            if rest.startswith(name):
                return f"{prefix}image_embed.layers.{i}.0.to_kv.{rest[len(name):]}", part, 2
        return f"{prefix}image_embed.layers.{i}.{_rename(rest, table)}", 0, 1

    return key_map


def vae_key_map(num_levels: int, prefix: str = VAE_PREFIX) -> KeyMap:
    """diffusers ``AutoencoderKL`` key -> ldm VAE key (the decoder's levels run in reverse order)."""
    res = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    pairs = [("quant_conv", "quant_conv", {}), ("post_quant_conv", "post_quant_conv", {})]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.conv_in", f"{side}.conv_in", {}), (f"{side}.conv_out", f"{side}.conv_out", {}),
                  (f"{side}.conv_norm_out", f"{side}.norm_out", {}),
                  (f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", res),
                  (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", res),
                  (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", attn)]
    for lvl in range(num_levels):
        up = num_levels - 1 - lvl
        pairs += [(f"encoder.down_blocks.{lvl}.resnets", f"encoder.down.{lvl}.block", res),
                  (f"encoder.down_blocks.{lvl}.downsamplers.0.conv", f"encoder.down.{lvl}.downsample.conv", {}),
                  (f"decoder.up_blocks.{up}.resnets", f"decoder.up.{lvl}.block", res),
                  (f"decoder.up_blocks.{up}.upsamplers.0.conv", f"decoder.up.{lvl}.upsample.conv", {})]
    inner = _prefix_map(pairs, prefix)

    def key_map(key: str) -> tuple[str, int, int]:
        source, part, parts = inner(key)
        # ".resnets.{j}.x" -> ".block.{j}.x": the index stays, the per-resnet renames apply after it.
        source = re.sub(r"(\.block\.\d+\.)conv_shortcut\.", r"\1nin_shortcut.", source)
        return source, part, parts

    return key_map


def text_key_map(prefix: str = TEXT_PREFIX) -> KeyMap:
    """transformers ``CLIPTextModel`` key (with or without the ``text_model.`` prefix) -> OpenCLIP
    text-tower key."""
    layer = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
    table = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}

    def key_map(key: str) -> tuple[str, int, int]:
        key = key.removeprefix("text_model.")  # transformers 4 names the text tower; 5 does not
        if key in fixed:
            return prefix + fixed[key], 0, 1
        m = layer.match(key)
        if not m:
            return prefix + key, 0, 1
        i, rest = m.groups()
        for part, name in enumerate(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
            if rest.startswith(name):
                return f"{prefix}transformer.resblocks.{i}.attn.in_proj_{rest[len(name):]}", part, 3
        return f"{prefix}transformer.resblocks.{i}.{_rename(rest, table)}", 0, 1

    return key_map


# ------------------------------------------------------------------------------------------------
# Strict mapping


def _listing(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: {shown}{more}"


def gather(source: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], key_map: KeyMap,
           where: str, used: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors for ``targets`` (a module's state dict) taken from ``source`` through ``key_map``.

    A missing source key or a shape that does not match raises InputError naming the keys; the
    source keys read are added to ``used`` (for :func:`check_all_used`). Conv 1x1 kernels
    (C, C, 1, 1) feed linear weights (C, C), as the ldm VAE's attention stores them."""
    out, absent, wrong = {}, [], []
    for key, target in targets.items():
        src, part, parts = key_map(key)
        if src not in source:
            absent.append(src)
            continue
        value = source[src]
        if parts > 1:
            if value.shape[0] % parts:
                wrong.append(f"{src} {tuple(value.shape)} (cannot split in {parts})")
                continue
            value = value.chunk(parts, dim=0)[part]
        if value.ndim == 4 and target.ndim == 2 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]
        if tuple(value.shape) != tuple(target.shape):
            wrong.append(f"{src} {tuple(value.shape)} != {tuple(target.shape)} for {key}")
            continue
        out[key] = value
        if used is not None:
            used.add(src)
    if absent:
        raise InputError(f"{where}: keys missing from the checkpoint, {_listing(sorted(set(absent)))}")
    if wrong:
        raise InputError(f"{where}: shapes that do not match, {_listing(wrong, 2)}")
    return out


def check_all_used(source: dict, used: set[str], where: str,
                   unused_ok: Callable[[str], bool] = lambda k: False) -> None:
    """InputError listing the checkpoint keys no parameter took (except the known-unused ones)."""
    left = sorted(k for k in source if k not in used and not unused_ok(k))
    if left:
        raise InputError(f"{where}: unexpected keys in the checkpoint, {_listing(left)}")


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (exactly the module's state-dict keys) into ``module``."""
    result = module.load_state_dict(tensors, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def read_unet_config(folder: Path, model: str, kind: str) -> dict:
    """``unet/config.json`` of a diffusers-style conversion (ldm parameter names)."""
    path = folder / "unet" / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise missing(model, kind, f"unreadable {path}: {e}") from None
    return config


def unet_file(folder: Path, model: str, kind: str) -> Path:
    sub = folder / "unet"
    named = sub / "diffusion_pytorch_model.safetensors"
    if named.is_file():
        return named
    files = sorted(sub.glob("*.safetensors"))
    if len(files) != 1:
        raise missing(model, kind, f"'{sub}' needs one diffusion_pytorch_model.safetensors, found {len(files)} files")
    return files[0]


def head_channels(config: dict) -> int:
    n = config.get("num_head_channels", HEAD_CHANNELS)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"unet/config.json: num_head_channels must be a positive integer, got {n!r}")
    return n

