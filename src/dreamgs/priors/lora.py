"""VSD's LoRA: a low-rank adapter of the prior's own UNet that models the current renders.

ProlificDreamer's variational score distillation replaces SDS's noise term by the prediction of a
second diffusion model fitted, step by step, to the distribution of the renders. Here it is the
same UNet with

- a peft LoRA (rank ``rank``, ``lora_alpha = rank``) on the attention projections ``to_q``,
  ``to_k``, ``to_v`` and ``to_out.0``, its weights in float32 whatever the UNet's dtype;
- a camera embedding in the UNet's class-embedding slot: a ``TimestepEmbedding`` (Linear(16 ->
  D), SiLU, Linear(D -> D), D the time-embedding width) of the flattened camera-to-world matrix,
  added to the timestep embedding. Its last layer starts at zero and LoRA's ``B`` starts at zero,
  so at the start the adapted UNet is the pretrained one.

The adapter and the camera embedding are switched on only inside :meth:`UNetLoRA.active`;
everywhere else (the pretrained branch, SDEdit, the CUDA graphs captured for the UNet) the UNet is
the pretrained model with no class embedding.

Each step (:meth:`observe`) trains them on the renders' latents with the standard denoising
loss: a random timestep per render in [0, T), fresh noise, the camera zeroed with probability
``camera_dropout`` (10%), target the noise (or the velocity for v-prediction models), mean
squared error, AdamW (``lr``, 1e-4 as ProlificDreamer). The prediction used in the gradient
(:meth:`eps`) is the conditional branch alone with the view-independent prompt (guidance 1).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..errors import ConfigError
from .distill import camera_vector

ADAPTER = "vsd"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class UNetLoRA:
    """The LoRA + camera embedding of ``prior.unet`` with its own optimiser and generator."""

    def __init__(self, prior, *, rank: int = 4, lr: float = 1e-4, camera_dropout: float = 0.1, seed: int = 0):
        try:
            from peft import LoraConfig
        except ImportError:
            raise ConfigError("prior.distill=vsd needs the peft package (pip install 'peft>=0.13,<1')") from None
        from diffusers.models.embeddings import TimestepEmbedding

        if rank < 1:
            raise ConfigError(f"prior.vsd_lora_rank must be at least 1, got {rank}")
        if not 0.0 <= camera_dropout <= 1.0:
            raise ConfigError(f"prior.vsd_camera_dropout must be within [0, 1], got {camera_dropout}")
        self.prior, self.unet = prior, prior.unet
        if getattr(self.unet, "class_embedding", None) is not None:
            raise ConfigError(f"prior.distill=vsd: the {prior.name} UNet already uses its class embedding")
        if ADAPTER in getattr(self.unet, "peft_config", {}):
            raise ConfigError(f"prior.distill=vsd: the {prior.name} UNet already has a '{ADAPTER}' adapter")
        self.camera_dropout = float(camera_dropout)
        self.device = prior.device
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=list(TARGETS)), adapter_name=ADAPTER)
        self.lora_params: dict[str, torch.nn.Parameter] = {}
        for name, p in self.unet.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
                p.requires_grad_(True)
                self.lora_params[name] = p
        if not self.lora_params:
            raise ConfigError(f"prior.distill=vsd: no attention projections ({', '.join(TARGETS)}) in the UNet")
        self.unet.disable_adapters()
        width = self.unet.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(16, width).to(self.device)
        torch.nn.init.zeros_(self.camera_embedding.linear_2.weight)
        torch.nn.init.zeros_(self.camera_embedding.linear_2.bias)
        params = list(self.lora_params.values()) + list(self.camera_embedding.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.last_loss = float("nan")
        # With the prior's UNet call on CUDA graphs, the adapted UNet's prediction and its training
        # step's forward and backward are graphed too (the optimiser updates the weights in place,
        # so the captured graphs stay valid; AdamW runs eagerly on the graphed grads).
        from .latent import CudaGraphCache, GraphedBackwardCache

        graphed = isinstance(prior._unet_call, CudaGraphCache)
        self._eps_call = CudaGraphCache(self._eps_raw) if graphed else None
        self._train_call = GraphedBackwardCache(self._train_raw, params) if graphed else None

    @contextlib.contextmanager
    def active(self):
        """The adapter and the camera embedding switched on for the block."""
        self.unet.enable_adapters()
        self.unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            self.unet.class_embedding = None
            self.unet.disable_adapters()

    def _condition(self, cams: Cameras, n: int) -> tuple[Tensor, ...]:
        cond = self.prior.lora_condition(cams, n)
        return tuple(cond) if isinstance(cond, tuple) else (cond,)

    def _unet(self, x: Tensor, t: Tensor, camvec: Tensor, cond: tuple[Tensor, ...]) -> Tensor:
        """The adapted UNet's raw output; call inside :meth:`active`."""
        return self.prior.lora_unet_call(x.to(self.prior.dtype), t, cond if len(cond) > 1 else cond[0], camvec)

    def _randn(self, shape) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=self.prior.acc_dtype)

    def loss(self, x0: Tensor, cams: Cameras, t: Tensor, noise: Tensor, camvec: Tensor) -> Tensor:
        """The denoising loss of the adapted UNet for clean latents ``x0`` at timesteps ``t`` (B,);
        call inside :meth:`active`."""
        return self._loss(x0, t, noise, camvec, self._condition(cams, x0.shape[0]))

    def _loss(self, x0: Tensor, t: Tensor, noise: Tensor, camvec: Tensor, cond: tuple[Tensor, ...]) -> Tensor:
        prior = self.prior
        abar = prior.alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
        x0 = x0.detach().to(prior.acc_dtype)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        out = self._unet(x_t, t, camvec, cond)
        target = noise if prior.prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
        return F.mse_loss(out.float(), target.float())

    def observe(self, x0: Tensor, cams: Cameras) -> None:
        """One optimiser step of the denoising loss on the renders' latents ``x0``."""
        n = x0.shape[0]
        T = self.prior.num_train_timesteps
        t = torch.randint(0, T, (n,), generator=self.generator, device=self.device)
        noise = self._randn(x0.shape)
        camvec = camera_vector(cams).to(self.device)
        keep = torch.rand(n, generator=self.generator, device=self.device) >= self.camera_dropout
        camvec = camvec * keep[:, None].float()
        args = (x0.detach().to(self.prior.acc_dtype), t, noise, camvec, *self._condition(cams, n))
        if self._train_call is not None:
            loss = self._train_call(*args)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._train_raw(*args)
        if torch.isfinite(loss):
            self.optimizer.step()
        self.last_loss = float(loss)

    def _train_raw(self, x0: Tensor, t: Tensor, noise: Tensor, camvec: Tensor, *cond: Tensor) -> Tensor:
        """The denoising loss, back-propagated into the adapter's and camera embedding's grads."""
        # backward inside active(): peft turns the adapter's requires_grad off when it is disabled
        with torch.enable_grad(), self.active():
            loss = self._loss(x0, t, noise, camvec, cond)
            loss.backward()
        return loss.detach()

    def _eps_raw(self, x: Tensor, t: Tensor, camvec: Tensor, *cond: Tensor) -> Tensor:
        with self.active():
            return self._unet(x, t, camvec, cond)

    @torch.no_grad()
    def eps(self, x_t: Tensor, t: int, cams: Cameras) -> Tensor:
        """The adapted UNet's noise prediction for ``x_t`` at ``t`` with the cameras (guidance 1)."""
        n = x_t.shape[0]
        ts = torch.full((n,), int(t), device=self.device, dtype=torch.long)
        args = (x_t.to(self.prior.dtype), ts, camera_vector(cams).to(self.device), *self._condition(cams, n))
        out = self._eps_call(*args) if self._eps_call is not None else self._eps_raw(*args)
        return self.prior.to_eps(out, x_t, t)

    # -- checkpoints ------------------------------------------------------------------------------

    def _named(self) -> dict[str, torch.nn.Parameter]:
        named = {f"lora.{k}": p for k, p in self.lora_params.items()}
        named.update({f"camera.{k}": p for k, p in self.camera_embedding.named_parameters()})
        return named

    def state_dict(self) -> dict[str, Tensor]:
        """The adapter's and camera embedding's weights, their AdamW moments and step counts, and the
        training generator, as flat tensors."""
        out = {k: p.detach().clone() for k, p in self._named().items()}
        for k, p in self._named().items():
            for key, v in self.optimizer.state.get(p, {}).items():
                out[f"opt.{k}.{key}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().clone()
        out["lora_generator"] = self.generator.get_state()
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        named = self._named()
        missing = [k for k in named if k not in state]
        if missing:
            raise ValueError(f"VSD LoRA state lacks {len(missing)} tensors (e.g. {missing[0]})")
        with torch.no_grad():
            for k, p in named.items():
                if state[k].shape != p.shape:
                    raise ValueError(f"VSD LoRA tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[k])
        self.optimizer.state.clear()
        for k, p in named.items():
            st = {key[len(f"opt.{k}."):]: v.to(p.device) for key, v in state.items() if key.startswith(f"opt.{k}.")}
            if st:
                if "step" in st:
                    st["step"] = st["step"].float().cpu() if st["step"].ndim == 0 else st["step"]
                self.optimizer.state[p] = st
        if "lora_generator" in state:
            self.generator.set_state(state["lora_generator"])
