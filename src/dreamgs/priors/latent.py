"""What the latent-diffusion priors (Stable Diffusion, Zero123) share: VAE encode/decode, the
timestep and noise draws, score distillation and SDEdit refinement.

Conventions (DDPM, as in the diffusers schedulers): ``abar_t`` is ``alphas_cumprod[t]`` for an
integer timestep ``t`` in ``[0, T)``; ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Latents
are the VAE posterior *mean* (deterministic, differentiable) times ``vae.config.scaling_factor``.

Classifier-free guidance batches the conditional and unconditional branches in one UNet call as
``[cond; uncond]`` and combines them as ``eps_u + s (eps_c - eps_u)``. The SDS gradient is
``w(t) (eps_hat - eps)`` with ``w(t) = 1 - abar_t``; v-prediction models are converted to
epsilon first (``eps = sqrt(abar) v + sqrt(1 - abar) x_t``).

Subclasses build their conditioning once per call (:meth:`condition`) and run the guided UNet
(:meth:`guided_eps`); every UNet evaluation goes through :meth:`_unet`, the one place to add
channels-last, ``torch.compile`` or CUDA graphs.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..errors import ConfigError
from .base import Prior, resize, sdedit_timesteps, timestep_fraction


class LatentDiffusionPrior(Prior):
    """Shared machinery; subclasses set ``self.unet``/``self.vae`` and implement the conditioning."""

    def __init__(self, vae, unet, scheduler, *, device, dtype: torch.dtype, guidance_scale: float,
                 t_min: float, t_max: float, t_schedule: str, resolution: int, seed: int | None):
        if t_schedule not in ("anneal", "random"):
            raise ConfigError(f"prior.t_schedule: expected anneal or random, got '{t_schedule}'")
        self.device = torch.device(device)
        self.dtype = dtype
        # Guidance arithmetic, noise and the SDS gradient run in float32 (float64 for fp64 models).
        self.acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.vae = self._frozen(vae)
        self.unet = self._frozen(unet)
        # A DDIMScheduler built from the model's scheduler config: its noise schedule serves both
        # SDS and the DDIM (eta = 0) steps of refine.
        self.scheduler = scheduler
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prior.model: unsupported prediction_type '{self.prediction_type}'")
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, self.acc_dtype)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.guidance_scale = float(guidance_scale)
        self.t_min, self.t_max, self.t_schedule = float(t_min), float(t_max), t_schedule
        self.resolution = int(resolution)
        if self.resolution < 8:
            raise ConfigError(f"prior.resolution must be at least 8, got {self.resolution}")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self._cpu_gen = torch.Generator().manual_seed(seed)
        self._noise_gen = (torch.Generator(device=self.device).manual_seed(seed)
                           if self.device.type == "cuda" else self._cpu_gen)

    def optimize(self, channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False,
                 vae_matmul_attention: bool = False) -> "LatentDiffusionPrior":
        """Speed options for CUDA: channels-last UNet weights, ``torch.compile`` of the UNet call
        and the VAE encoder, CUDA graphs of the UNet call (inference) and of the VAE encoder
        (forward and backward), and plain matrix-multiply attention in the VAE. Each call sets
        them all from scratch.

        The VAE's one attention layer is single-headed with 512 channels, more than the flash
        kernels take, so ``scaled_dot_product_attention`` falls back to a memory-efficient kernel
        whose backward is slow (docs/benchmarks.md); ``vae_matmul_attention`` computes it as two
        batched matrix products and a softmax instead (diffusers' ``AttnProcessor``). The VAE
        stays in NCHW: channels-last slows its GroupNorm-heavy encoder (measured).

        Results are unchanged up to floating-point rounding. Compilation happens on the first call
        of each input shape (tens of seconds for a full-size UNet; inductor caches it on disk).
        A CUDA graph is captured once per input shape (a second or two each) and then replayed,
        which removes the per-kernel launch cost of the many small kernels of a UNet at batch 2.
        """
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.vae.set_attn_processor(AttnProcessor() if vae_matmul_attention else AttnProcessor2_0())
        unet_call = self._unet_forward

        encode_call = self._encode_raw
        if compile:
            unet_call = torch.compile(unet_call, dynamic=False)
            encode_call = torch.compile(encode_call, dynamic=False)
        if cuda_graphs and self.device.type == "cuda":
            unet_call = CudaGraphCache(unet_call)
            encode_call = GraphedAutogradCache(encode_call)
        optimized = compile or (cuda_graphs and self.device.type == "cuda")
        self._unet_call = unet_call if optimized else None
        self._encode_call = encode_call if optimized else None
        return self

    def _frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on the prior's device and dtype, in eval mode, without parameter gradients."""
        if next(module.parameters()).dtype != self.dtype:
            module = module.to(self.dtype)
        return module.to(self.device).eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------
    # Subclass hooks

    @abstractmethod
    def condition(self, cams: Cameras, batch: int) -> Any:
        """Everything the guided UNet needs for ``batch`` images seen from ``cams``."""

    @abstractmethod
    def guided_eps(self, x_t: Tensor, t: int, cond: Any) -> Tensor:
        """Classifier-free-guided noise prediction (``acc_dtype``) for noisy latents ``x_t`` at ``t``."""

    # ------------------------------------------------------------------------------------------
    # Building blocks

    _unet_call = None  # set by optimize(compile=True or cuda_graphs=True)
    _encode_call = None

    def _unet(self, sample: Tensor, t: Tensor, encoder_hidden_states: Tensor, *extra: Tensor) -> Tensor:
        """The single UNet evaluation every prediction goes through (raw model output); ``extra``
        tensors (the multi-view priors' cameras) are passed on to :meth:`_unet_forward`."""
        if self._unet_call is not None and not torch.is_grad_enabled():
            return self._unet_call(sample, t, encoder_hidden_states, *extra)
        return self._unet_forward(sample, t, encoder_hidden_states, *extra)

    def _unet_forward(self, sample: Tensor, t: Tensor, encoder_hidden_states: Tensor, *extra: Tensor) -> Tensor:
        """The UNet call itself (a diffusers UNet2DConditionModel here; subclasses with other
        inputs override it)."""
        return self.unet(sample, t, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    def _combine(self, out: Tensor, x_in: Tensor, t: int) -> Tensor:
        """Raw UNet output of a ``[cond; uncond]`` batch -> guided epsilon (``acc_dtype``)."""
        out = out.to(self.acc_dtype)
        if self.prediction_type == "v_prediction":
            abar = self.alphas_cumprod[t]
            out = abar.sqrt() * out + (1 - abar).sqrt() * x_in.to(self.acc_dtype)
        eps_c, eps_u = out.chunk(2)
        return eps_u + self.guidance_scale * (eps_c - eps_u)

    def _timesteps(self, t: int, n: int) -> Tensor:
        return torch.full((n,), int(t), device=self.device, dtype=torch.long)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Text-encoder last hidden states (N, L, D) for ``prompts``, padded to the max length (the
        text-conditioned priors, which set ``tokenizer`` and ``text_encoder``)."""
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latents, differentiable, in the model dtype."""
        images = images.to(self.device)
        if self._encode_call is not None:
            return self._encode_call(images)
        return self._encode_raw(images)

    def _encode_raw(self, images: Tensor) -> Tensor:
        x = resize(images, self.resolution) * 2.0 - 1.0
        return self.vae.encode(x.to(self.dtype)).latent_dist.mean * self.scaling_factor

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Scaled latents -> (B, 3, R, R) float32 images in [0, 1]."""
        x = self.vae.decode((latents / self.scaling_factor).to(self.dtype), return_dict=False)[0]
        return (x.float() * 0.5 + 0.5).clamp(0.0, 1.0)

    def timestep(self, progress: float) -> int:
        """Integer timestep for training ``progress`` (anneal or random, see ``timestep_fraction``)."""
        frac = timestep_fraction(progress, self.t_min, self.t_max, self.t_schedule, self._cpu_gen)
        return min(max(int(round(frac * self.num_train_timesteps)), 0), self.num_train_timesteps - 1)

    def draw_noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self._noise_gen, device=self._noise_gen.device,
                           dtype=self.acc_dtype).to(self.device)

    @staticmethod
    def _check_batch(images: Tensor, cams: Cameras) -> int:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if len(cams) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(cams)} cameras")
        return images.shape[0]

    # ------------------------------------------------------------------------------------------
    # Score distillation

    @torch.no_grad()
    def sds_grad(self, latents: Tensor, cond: Any, t: int, noise: Tensor) -> Tensor:
        """``w(t) (eps_hat_cfg - eps)`` (``acc_dtype``) for clean ``latents`` noised with ``noise``."""
        abar = self.alphas_cumprod[t]
        noise = noise.to(self.acc_dtype)
        x_t = abar.sqrt() * latents.to(self.acc_dtype) + (1 - abar).sqrt() * noise
        return (1 - abar) * (self.eps(x_t, t, cond) - noise)

    def sds(self, images: Tensor, cams: Cameras, progress: float, *, t: int | None = None,
            noise: Tensor | None = None) -> Tensor:
        """SDS loss (:func:`dreamgs.priors.distill.sds`); ``t`` and ``noise`` override the random
        draws (for tests and analysis)."""
        from .distill import sds

        return sds(self, images, cams, progress, t=t, noise=noise)

    # The denoiser interface (priors/distill.py)

    is_denoiser = True

    def model_input(self, images: Tensor, cams: Cameras) -> Tensor:
        self._check_batch(images, cams)
        return self.encode_images(images)

    def eps(self, x_t: Tensor, t: int, cond: Any) -> Tensor:
        return self.guided_eps(x_t.to(self.dtype), t, cond)

    def eps_uncond(self, x_t: Tensor, t: int, cond: Any) -> Tensor:
        """The unconditional branch alone; this generic version runs the guided batch with scale
        0 (``eps_u + 0 (eps_c - eps_u)``); subclasses run the unconditional half only."""
        scale = self.guidance_scale
        self.guidance_scale = 0.0
        try:
            return self.guided_eps(x_t.to(self.dtype), t, cond)
        finally:
            self.guidance_scale = scale

    def to_eps(self, out: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """Raw UNet output -> epsilon (``acc_dtype``); ``t`` an int or a (B,) tensor."""
        out = out.to(self.acc_dtype)
        if self.prediction_type == "v_prediction":
            abar = self.alphas_cumprod[t]
            if abar.ndim:
                abar = abar.reshape(-1, *([1] * (out.ndim - 1)))
            out = abar.sqrt() * out + (1 - abar).sqrt() * x_t.to(self.acc_dtype)
        return out

    # ------------------------------------------------------------------------------------------
    # SDEdit

    def refine_timesteps(self, strength: float, steps: int, schedule: str = "linear") -> list[int]:
        """The denoiser's timesteps for ``refine`` (:func:`~dreamgs.priors.base.sdedit_timesteps`)."""
        return sdedit_timesteps(strength, steps, schedule, self.num_train_timesteps)

    @torch.no_grad()
    def refine(self, images: Tensor, cams: Cameras, strength: float, steps: int, *,
               schedule: str = "linear", noise: Tensor | None = None) -> Tensor:
        """SDEdit: noise to the first of :meth:`refine_timesteps`, then DDIM (eta = 0) through
        them to a clean image (one UNet call per timestep).

        Returns float32 images in [0, 1] of the input size. With the ``linear`` schedule
        ``strength <= 0`` returns the input.
        """
        batch = self._check_batch(images, cams)
        height, width = images.shape[-2:]
        if strength <= 0 and schedule == "linear":
            return images.detach().float().clamp(0.0, 1.0)
        cond = self.condition(cams, batch)
        latents = self.encode_images(images).to(self.acc_dtype)
        ts = self.refine_timesteps(strength, steps, schedule)
        if noise is None:
            noise = self.draw_noise(latents)
        abar = self.alphas_cumprod
        x = abar[ts[0]].sqrt() * latents + (1 - abar[ts[0]]).sqrt() * noise.to(self.acc_dtype)
        for i, t in enumerate(ts):
            eps = self.guided_eps(x.to(self.dtype), t, cond)
            a_t = abar[t]
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out = self.decode_latents(x)
        if out.shape[-2:] != (height, width):
            out = F.interpolate(out, (height, width), mode="bilinear", align_corners=False,
                                antialias=out.shape[-1] > width).clamp(0.0, 1.0)
        return out


# ------------------------------------------------------------------------------------------------
# CUDA graphs


def _shape_key(args: tuple[Tensor, ...]) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device, a.requires_grad) for a in args)


def _capture(fn, static_in: tuple[Tensor, ...], warmup: int, before=lambda: None):
    """``(graph, output)``: ``fn(*static_in)`` run ``warmup`` times on a side stream (cuDNN/cuBLAS
    autotuning and lazy allocations happen there), then captured; ``before()`` runs before each."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            before()
            fn(*static_in)
    torch.cuda.current_stream().wait_stream(side)
    before()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_in)
    return graph, out


class CudaGraphCache:
    """``fn(*tensors) -> tensor`` (no gradient) replayed from a CUDA graph, one per input shape.

    The first call with a new shape runs ``fn`` a few times on a side stream (cuDNN/cuBLAS
    autotuning and lazy allocations happen there), captures it, and from then on copies the inputs
    into the graph's static buffers and replays it. The result is a fresh copy of the graph's
    output, so it is not overwritten by the next replay.
    """

    def __init__(self, fn, warmup: int = 2):
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}

    @torch.no_grad()
    def __call__(self, *args: Tensor) -> Tensor:
        key = _shape_key(args)
        entry = self.graphs.get(key)
        if entry is None:
            static_in = tuple(a.clone() for a in args)
            graph, static_out = _capture(self.fn, static_in, self.warmup)
            entry = self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        for buf, a in zip(static_in, args):
            buf.copy_(a)
        graph.replay()
        return static_out.clone()


class GraphedBackwardCache:
    """``fn(*tensors) -> loss``, where ``fn`` also back-propagates the loss into ``params``' grads,
    replayed from a CUDA graph, one per input shape (a training step's forward and backward).

    The first call with a new shape runs ``fn`` a few times on a side stream with the grads
    cleared (only the grads change: the optimiser step is the caller's), then captures it with the
    grads cleared, so that the captured backward writes (not accumulates) into grads that live in
    the graph's memory. Each replay copies the inputs in, re-runs the kernels and points every
    ``param.grad`` at its graph's buffer again; the result is a fresh copy of the loss.
    """

    def __init__(self, fn, params: list[Tensor], warmup: int = 3):
        self.fn = fn
        self.params = list(params)
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}

    def _clear(self) -> None:
        for p in self.params:
            p.grad = None

    def __call__(self, *args: Tensor) -> Tensor:
        key = _shape_key(args)
        entry = self.graphs.get(key)
        if entry is None:
            static_in = tuple(a.clone() for a in args)
            graph, static_loss = _capture(self.fn, static_in, self.warmup, before=self._clear)
            entry = self.graphs[key] = (graph, static_in, static_loss, [p.grad for p in self.params])
        graph, static_in, static_loss, grads = entry
        for buf, a in zip(static_in, args):
            buf.copy_(a)
        graph.replay()
        for p, g in zip(self.params, grads):
            p.grad = g
        return static_loss.detach().clone()


class GraphedAutogradCache:
    """``fn(x)`` with its forward and backward passes replayed from CUDA graphs, one pair per
    input shape (``torch.cuda.make_graphed_callables``). Without gradient, ``fn`` runs eagerly.

    The output lives in the graph's static memory: back-propagate through one call before making
    the next with the same shape (stage 1 encodes once per step)."""

    def __init__(self, fn):
        self.fn = fn
        self.graphed: dict[tuple, object] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.fn(x)
        key = _shape_key((x,))
        g = self.graphed.get(key)
        if g is None:
            sample = x.detach().clone().requires_grad_(True)
            g = self.graphed[key] = torch.cuda.make_graphed_callables(self.fn, (sample,), num_warmup_iters=3)
        return g(x)
