"""MVDream (text, 4 views) and ImageDream (image, 4 views + the input view) priors.

Architecture, built on diffusers' ``UNet2DConditionModel`` (SD 2.1-base layout, 256 px, 32x32 latents):

- **Self-attention across views.** :class:`MultiViewAttnProcessor` sits in every transformer
  block's self-attention (``attn1``) and folds the views of a sample into one token sequence,
  (b·f, l, c) -> (b, f·l, c), before attending; cross-attention (``attn2``) stays per view.
- **Camera embedding.** A projection class embedding (``class_embed_type="projection"``: Linear
  16 -> 1280, SiLU, Linear 1280 -> 1280, exactly MVDream's ``camera_embed``) of the flattened 4x4
  camera-to-world matrix is added to the timestep embedding. :func:`camera_embedding_input` gives
  the matrix in MVDream's axis convention: our OpenGL orbit pose with the y/z rows swapped and the
  new y row negated (DreamGaussian's and MVDream's ``convert_opengl_to_blender``), translation
  normalised to unit length, row-major.
- **ImageDream** adds a fifth frame to every group of 4 inside the multi-view attention: the input
  view's scaled VAE latents (clean, at the same timestep) with a zero camera, and 16 image tokens
  appended to the text context: CLIP ViT-H penultimate hidden states (257 x 1280) through the
  IP-Adapter-plus resampler (diffusers' ``IPAdapterPlusImageProjection``), read by separate
  key/value projections in every cross-attention (:class:`IPCrossAttnProcessor`, the IP-Adapter
  form ``attn(q, k, v) + attn(q, k_ip, v_ip)``, as diffusers' ``IPAdapterAttnProcessor2_0``).
  Its unconditional branch has zero image features (before the resampler) and a zero fifth frame,
  as ImageDream's own guidance does.

Guidance: the views of a sample form one group; ``sds`` and ``refine`` take B = 4·G images whose
cameras are G groups of 4 consecutive views (stage 1 renders them at azimuths a, a+90, a+180,
a+270 with a shared elevation; :data:`VIEWS`). CFG batches ``[cond; uncond]`` as the other latent
priors do; the camera is the same in both halves. Default guidance: **50** for MVDream, the value
of MVDream-threestudio's ``mvdream-sd21.yaml`` (DreamGaussian's MVDream config uses 100 with
w(t) = 1; ``prior.guidance_scale=100`` gives that scale, with our w(t) = 1 - abar_t kept), and **5**
for ImageDream (DreamGaussian's and ImageDream's). The SDS itself is the plain
``w(t) (eps_hat - eps)`` of the other latent priors, not MVDream-threestudio's x0-reconstruction
loss with std rescaling. Prompts are not made view-dependent: the camera embedding carries the view.

Loading: see :mod:`dreamgs.priors.mvdream_ckpt` for the two checkpoint layouts and their strict
key maps. Nothing here runs any code from a checkpoint or repository.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..errors import ConfigError, InputError
from . import mvdream_ckpt as ckpt
from .base import resize
from .latent import LatentDiffusionPrior
from .weights import load_component, load_safetensors, resolve_dtype

VIEWS = 4  # views per sample: azimuths a, a+90, a+180, a+270 at one elevation

# OpenGL (y up) -> MVDream's frame: new y = -z, new z = y.
_FLIP_YZ = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)


def camera_embedding_input(cams: Cameras) -> Tensor:
    """(C, 16) float32: each camera's c2w in MVDream's axis convention, unit-length translation."""
    c2w = _FLIP_YZ.to(cams.device) @ cams.c2w.double()
    t = c2w[:, :3, 3]
    c2w[:, :3, 3] = t / (t.norm(dim=-1, keepdim=True) + 1e-8)
    return c2w.reshape(-1, 16).float()


# ------------------------------------------------------------------------------------------------
# Attention processors


def _attend(attn, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Multi-head scaled-dot-product attention of projected (B, L, heads·d) tensors."""
    b, heads = query.shape[0], attn.heads
    q, k, v = (x.reshape(b, x.shape[1], heads, -1).transpose(1, 2) for x in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    return out.transpose(1, 2).reshape(b, -1, heads * q.shape[-1])


class MultiViewAttnProcessor:
    """Self-attention over all ``num_views`` views of a sample at once (MVDream's ``attn1``)."""

    def __init__(self, num_views: int):
        self.num_views = int(num_views)

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs) -> Tensor:
        bf, length, channels = hidden_states.shape
        f = self.num_views
        if bf % f:
            raise ValueError(f"multi-view attention: batch {bf} is not a multiple of {f} views")
        x = hidden_states.reshape(bf // f, f * length, channels)
        out = _attend(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x))
        out = attn.to_out[1](attn.to_out[0](out))
        return out.reshape(bf, length, -1)


class IPCrossAttnProcessor(torch.nn.Module):
    """Cross-attention to the text tokens plus, with their own key/value projections, to the last
    ``num_tokens`` tokens of the context (the image tokens): IP-Adapter's decoupled attention."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int, scale: float = 1.0):
        super().__init__()
        self.num_tokens, self.scale = int(num_tokens), float(scale)
        self.to_k_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs) -> Tensor:
        text, image = encoder_hidden_states[:, :-self.num_tokens], encoder_hidden_states[:, -self.num_tokens:]
        q = attn.to_q(hidden_states)
        out = _attend(attn, q, attn.to_k(text), attn.to_v(text))
        out = out + self.scale * _attend(attn, q, self.to_k_ip(image), self.to_v_ip(image))
        return attn.to_out[1](attn.to_out[0](out))


# ------------------------------------------------------------------------------------------------
# The UNet


class MultiViewUNet(torch.nn.Module):
    """diffusers' UNet2DConditionModel with multi-view self-attention and the camera embedding
    (and, for ImageDream, the resampler ``image_embed`` and IP cross-attention)."""

    def __init__(self, spec: ckpt.UNetSpec):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.spec = spec
        widths = [spec.model_channels * m for m in spec.channel_mult]
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in spec.attention_levels]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.attention_levels)]
        self.unet = UNet2DConditionModel(
            sample_size=32, in_channels=spec.in_channels, out_channels=spec.out_channels,
            layers_per_block=spec.num_res_blocks, block_out_channels=tuple(widths), down_block_types=tuple(down),
            up_block_types=tuple(up), cross_attention_dim=spec.context_dim,
            attention_head_dim=tuple(max(1, w // spec.num_head_channels) for w in widths),
            use_linear_projection=True, transformer_layers_per_block=spec.transformer_depth,
            class_embed_type="projection", projection_class_embeddings_input_dim=spec.camera_dim, norm_num_groups=32,
        )
        self.num_frames = VIEWS + (1 if spec.ip_tokens else 0)
        self.view_processor = MultiViewAttnProcessor(self.num_frames)
        processors = {}
        for name, proc in self.unet.attn_processors.items():
            if ".attn1." in name:
                processors[name] = self.view_processor
            elif spec.ip_tokens:
                module = self.unet.get_submodule(name.rsplit(".processor", 1)[0])
                processors[name] = IPCrossAttnProcessor(module.inner_dim, spec.context_dim, spec.ip_tokens)
            else:
                processors[name] = proc
        self.unet.set_attn_processor(processors)
        self.image_embed = None
        if spec.ip_tokens:
            from diffusers.models.embeddings import IPAdapterPlusImageProjection

            self.image_embed = IPAdapterPlusImageProjection(
                embed_dims=spec.ip_embed_dim, output_dims=spec.context_dim, hidden_dims=spec.context_dim,
                depth=spec.ip_depth, dim_head=ckpt.HEAD_CHANNELS, heads=max(1, spec.ip_heads),
                num_queries=spec.ip_tokens)

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor, camera: Tensor) -> Tensor:
        """Noise prediction for (b·f, C, h, w) latents, f = ``num_frames`` consecutive views per
        sample, with (b·f, L, D) context and (b·f, 16) cameras."""
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         class_labels=camera.to(sample.dtype), return_dict=False)[0]

    def load_ldm(self, state: dict[str, Tensor], prefix: str, where: str, used: set[str]) -> None:
        """Fill the weights from ldm-named ``state`` (strict: see mvdream_ckpt.gather)."""
        ckpt.load_into(self.unet, ckpt.gather(state, self.unet.state_dict(), ckpt.unet_key_map(self.spec, prefix),
                                              where, used))
        if self.image_embed is not None:
            ckpt.load_into(self.image_embed, ckpt.gather(state, self.image_embed.state_dict(),
                                                         ckpt.resampler_key_map(prefix), where, used))


# ------------------------------------------------------------------------------------------------
# Loading


def _text_encoder_from_ldm(state, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(**ckpt.text_config(state), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def _sd21_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def load_multiview(model: str, kind: str) -> dict:
    """The components of an MVDream / ImageDream model: tokenizer, text_encoder, vae, unet
    (:class:`MultiViewUNet`), scheduler, and for ImageDream image_encoder and feature_extractor."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    model = model or ckpt.default_model(kind)
    source = ckpt.locate(model, kind, download=True)
    used: set[str] = set()
    if source.layout == "ldm":
        state = load_safetensors(source.path, model, kind)
        where = f"{kind} checkpoint {source.path.name}"
        tokenizer = load_component(CLIPTokenizer.from_pretrained, source.path.parent, "tokenizer", model, kind)
        unet = MultiViewUNet(ckpt.unet_spec(state, ckpt.UNET_PREFIX))
        unet.load_ldm(state, ckpt.UNET_PREFIX, where, used)
        vae = AutoencoderKL(**ckpt.vae_config(state))
        ckpt.load_into(vae, ckpt.gather(state, vae.state_dict(), ckpt.vae_key_map(len(vae.config.block_out_channels)),
                                        where, used))
        text_encoder = _text_encoder_from_ldm(state, tokenizer)
        targets = text_encoder.state_dict()
        ckpt.load_into(text_encoder, ckpt.gather(state, targets, ckpt.text_key_map(), where, used))
        last = f"{ckpt.TEXT_PREFIX}transformer.resblocks.{text_encoder.config.num_hidden_layers}."
        ckpt.check_all_used(state, used, where, lambda k: k in ckpt.LDM_UNUSED or k.startswith(last)
                            or k.startswith("model_ema."))
        parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet, scheduler=_sd21_scheduler())
    else:
        folder = source.path

        def load(loader, sub, **kw):
            return load_component(loader, folder, sub, model, kind, **kw)

        config = ckpt.read_unet_config(folder, model, kind)
        file = ckpt.unet_file(folder, model, kind)
        state = load_safetensors(file, model, kind)
        where = f"{kind} {file.parent.name}/{file.name}"
        unet = MultiViewUNet(ckpt.unet_spec(state, "", ckpt.head_channels(config)))
        unet.load_ldm(state, "", where, used)
        ckpt.check_all_used(state, used, where)
        parts = dict(tokenizer=load(CLIPTokenizer.from_pretrained, "tokenizer"),
                     text_encoder=load(CLIPTextModel.from_pretrained, "text_encoder", use_safetensors=True),
                     vae=load(AutoencoderKL.from_pretrained, "vae", use_safetensors=True),
                     unet=unet, scheduler=load(DDIMScheduler.from_pretrained, "scheduler"))
        if kind == "imagedream":
            from transformers import CLIPVisionModel

            from .zero123 import _clip_image_processor_class

            CLIPImageProcessor = _clip_image_processor_class()  # no weights: a JSON config
            parts["image_encoder"] = load(CLIPVisionModel.from_pretrained, "image_encoder", use_safetensors=True)
            parts["feature_extractor"] = load(CLIPImageProcessor.from_pretrained, "feature_extractor")
    unet = parts["unet"]
    if (kind == "imagedream") != bool(unet.spec.ip_tokens):
        what = "has no image tokens (an MVDream model)" if kind == "imagedream" else "is an ImageDream model"
        raise ConfigError(f"prior.model '{model}': the UNet {what}; use prior.kind="
                          f"{'mvdream' if kind == 'imagedream' else 'imagedream'}")
    if unet.spec.context_dim != parts["text_encoder"].config.hidden_size:
        raise ConfigError(f"prior.model '{model}': text width {parts['text_encoder'].config.hidden_size} != "
                          f"UNet context width {unet.spec.context_dim}")
    parts["source"] = source  # the prior casts the modules to its dtype (LatentDiffusionPrior._frozen)
    return parts


# ------------------------------------------------------------------------------------------------
# The priors


class MVDreamPrior(LatentDiffusionPrior):
    """SDS and SDEdit with MVDream on groups of :data:`VIEWS` views."""

    name = "mvdream"
    native_resolution = 256
    views_per_sample = VIEWS

    def __init__(self, model: str = "", *, prompt: str, negative_prompt: str = "", device="cpu",
                 dtype: str | torch.dtype = "auto", guidance_scale: float = 50.0, t_min: float = 0.02,
                 t_max: float = 0.98, t_schedule: str = "anneal", resolution: int = 0, seed: int | None = None,
                 _kind: str = "mvdream"):
        torch_dtype = resolve_dtype(dtype, device)
        parts = load_multiview(model, _kind)
        super().__init__(parts["vae"], parts["unet"], parts["scheduler"], device=device, dtype=torch_dtype,
                         guidance_scale=guidance_scale, t_min=t_min, t_max=t_max, t_schedule=t_schedule,
                         resolution=resolution or self.native_resolution, seed=seed)
        self.model = model or ckpt.default_model(_kind)
        self.source = parts["source"]
        self.tokenizer = parts["tokenizer"]
        self.text_encoder = self._frozen(parts["text_encoder"])
        self.parts = parts
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.text_embedding = self.encode_text([prompt])  # (1, L, D)
        self.uncond_embedding = self.encode_text([negative_prompt])

    def describe(self) -> str:
        return f"{self.name} ({self.model}, {self.resolution} px, guidance {self.guidance_scale:g})"

    def _unet_forward(self, sample: Tensor, t: Tensor, encoder_hidden_states: Tensor, *extra: Tensor) -> Tensor:
        return self.unet(sample, t, encoder_hidden_states, *extra)

    def condition(self, cams: Cameras, batch: int) -> tuple[Tensor, Tensor]:
        """(context (2B, L, D), cameras (2B, 16)) for the ``[cond; uncond]`` batch."""
        self._groups(batch)
        cam = camera_embedding_input(cams).to(self.device, self.dtype)
        context = torch.cat([self.text_embedding.expand(batch, -1, -1), self.uncond_embedding.expand(batch, -1, -1)])
        return context, torch.cat([cam, cam])

    def guided_eps(self, x_t: Tensor, t: int, cond: tuple[Tensor, Tensor]) -> Tensor:
        context, camera = cond
        x_in = torch.cat([x_t, x_t])
        out = self._unet(x_in, self._timesteps(t, x_in.shape[0]), context, camera)
        return self._combine(out, x_in, t)


class ImageDreamPrior(MVDreamPrior):
    """ImageDream: MVDream plus the input view as a fifth frame and as IP-Adapter image tokens."""

    name = "imagedream"

    def __init__(self, model: str = "", *, ref_image: Tensor, prompt: str = "", negative_prompt: str = "",
                 guidance_scale: float = 5.0, **kw):
        if not (isinstance(ref_image, Tensor) and ref_image.ndim == 4 and ref_image.shape[:2] == (1, 3)):
            shape = tuple(ref_image.shape) if isinstance(ref_image, Tensor) else type(ref_image).__name__
            raise InputError(f"imagedream: the reference image must be a (1, 3, H, W) tensor, got {shape}")
        super().__init__(model, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                         _kind="imagedream", **kw)
        self.image_encoder = self._frozen(self.parts["image_encoder"])
        self.feature_extractor = self.parts["feature_extractor"]
        self.set_reference(ref_image)

    @torch.no_grad()
    def set_reference(self, ref_image: Tensor) -> None:
        """Cache the input view's image tokens (cond and uncond, (1, T, D)) and scaled latents."""
        image = resize(ref_image.float().clamp(0.0, 1.0), self.resolution)
        pixels = (image[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).cpu().numpy()
        clip_in = self.feature_extractor(images=[np.ascontiguousarray(pixels)], return_tensors="pt").pixel_values
        hidden = self.image_encoder(clip_in.to(self.device, self.dtype), output_hidden_states=True).hidden_states[-2]
        resampler = self.unet.image_embed
        self.image_tokens = resampler(hidden.to(self.dtype))
        self.uncond_image_tokens = resampler(torch.zeros_like(hidden, dtype=self.dtype))
        self.ref_latents = self.encode_images(image).detach()

    def condition(self, cams: Cameras, batch: int) -> tuple[Tensor, Tensor]:
        """(context (2G·5, L + T, D), cameras (2G·5, 16)): per group, the 4 views then the input
        view's frame (same text, zero camera); image tokens appended to every frame's context."""
        groups = self._groups(batch)
        cam = camera_embedding_input(cams).to(self.device, self.dtype).reshape(groups, VIEWS, -1)
        cam = torch.cat([cam, torch.zeros_like(cam[:, :1])], dim=1).reshape(groups * (VIEWS + 1), -1)
        n = groups * (VIEWS + 1)
        cond = torch.cat([self.text_embedding, self.image_tokens], dim=1).expand(n, -1, -1)
        uncond = torch.cat([self.uncond_embedding, self.uncond_image_tokens], dim=1).expand(n, -1, -1)
        return torch.cat([cond, uncond]), torch.cat([cam, cam])

    def guided_eps(self, x_t: Tensor, t: int, cond: tuple[Tensor, Tensor]) -> Tensor:
        context, camera = cond
        groups = x_t.shape[0] // VIEWS
        frames = x_t.reshape(groups, VIEWS, *x_t.shape[1:])
        ref = self.ref_latents.to(x_t.dtype).expand(groups, 1, -1, -1, -1)
        with_ref = torch.cat([torch.cat([frames, ref], dim=1), torch.cat([frames, torch.zeros_like(ref)], dim=1)])
        sample = with_ref.reshape(-1, *x_t.shape[1:])
        out = self._unet(sample, self._timesteps(t, sample.shape[0]), context, camera)
        out = out.reshape(2 * groups, VIEWS + 1, *x_t.shape[1:])[:, :VIEWS].reshape(2 * x_t.shape[0], *x_t.shape[1:])
        return self._combine(out, torch.cat([x_t, x_t]), t)


def build_multiview(kind: str, model: str, *, prompt: str, negative_prompt: str, ref_image: Tensor | None,
                    **common) -> MVDreamPrior:
    """The MVDream or ImageDream prior (``kind``), for :func:`dreamgs.priors.load_prior`."""
    if kind == "imagedream":
        if ref_image is None:
            raise InputError("prior.kind=imagedream needs an input image (image=path/to/image.png)")
        return ImageDreamPrior(model, ref_image=ref_image, prompt=prompt, negative_prompt=negative_prompt, **common)
    if not prompt.strip():
        raise ConfigError("prior.kind=mvdream needs a text prompt (prompt=...)")
    return MVDreamPrior(model, prompt=prompt, negative_prompt=negative_prompt, **common)


