"""Typed configuration: dataclasses, YAML files and ``key=value`` overrides.

Resolution order (later wins):

1. the dataclass defaults below (the text-to-3D settings of DreamGaussian),
2. the packaged preset for the mode (``configs/<mode>.yaml``),
3. a user YAML file (``--config file.yaml``),
4. ``section.key=value`` overrides from the command line,
5. the size preset (``preset``): ``preview`` sizes replace the full-size values of the keys that
   the user did not set (steps 3 and 4); see :func:`preview_values`.

Every value is type-checked against its field; unknown keys are rejected with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class CameraConfig:
    fovy: float = 49.1  # vertical field of view, degrees
    radius: float = 2.5  # orbit radius of training cameras
    elevation_range: tuple[float, float] = (-30.0, 30.0)  # degrees, negative = above
    azimuth_range: tuple[float, float] = (-180.0, 180.0)  # degrees
    radius_range: tuple[float, float] = (0.0, 0.0)  # added to radius; (0, 0) keeps it fixed
    # Image mode samples elevation offsets from the input view's. True (DreamGaussian): the offset
    # range is widened so absolute elevations cover elevation_range, within [-80, 80]; False: input
    # elevation + elevation_range, clamped to [-80, 80] (docs/fidelity.md, item 2).
    cover_elevation_range: bool = True
    # Front-biased warm-up (seed 000's schedule; off at 0): for the first `front_warmup` fraction of
    # stage 1 the azimuths are drawn within +-front_warmup_azimuth of the front, widening linearly
    # to azimuth_range by the end of the warm-up.
    front_warmup: float = 0.0
    front_warmup_azimuth: float = 45.0


@dataclass
class GaussianConfig:
    num_points: int = 5000
    init_radius: float = 0.5  # points are drawn uniformly in a ball of this radius
    init_opacity: float = 0.1
    init_color: float = 0.5  # grey
    sh_degree: int = 0
    lr_position_init: float = 1e-3
    lr_position_final: float = 2e-5
    lr_position_steps: int = 300  # log-linear decay length
    spatial_lr_scale: float = 10.0  # position lrs are multiplied by this (DreamGaussian: 10; docs/fidelity.md, item 1)
    lr_color: float = 0.01
    lr_color_final: float = 0.0  # > 0: the colour rate decays log-linearly from lr_color to this over lr_position_steps
    lr_opacity: float = 0.05
    lr_scale: float = 0.005
    lr_rotation: float = 0.005
    adam_eps: float = 1e-15
    fused_adam: bool = True  # CUDA: one fused kernel for the Adam update
    # The start (dreamgs/init.py): ball | points:FILE | mesh:FILE | silhouette | depth:FILE
    init: str = "ball"
    init_scale: float = 0.0  # > 0: every starting Gaussian gets this std (GSGen: 0.02); 0: from nearest neighbours
    init_noise: float = 0.0  # std of Gaussian noise added to the starting positions (world units)
    init_colors: str = "file"  # file (the cloud's, mesh's or image's; grey if none) | random (GSGen) | grey
    init_grow_samples: int = 1_000_000  # points/mesh: candidates uniform in the bounding box (GaussianDreamer: 10^6)
    init_grow_distance: float = 0.01  # ... kept within this distance of a cloud point (GaussianDreamer: 0.01)
    init_color_jitter: float = 0.2  # ... coloured as that point plus U[0, jitter) per channel (GaussianDreamer: 0.2)
    # points/mesh starts only (the Gaussians already lie on the surface; dreamgs/init.py, start_learning_rates):
    # the colour learning rate starts at cloud_color_lr_scale times lr_color and decays to lr_color (as by
    # lr_color_final): 5 reaches the plateau sooner but ends 0.32 dB lower on the test split (docs/quality.md,
    # issue 19), so 1 (off); the position learning rates are times cloud_position_lr_scale (GaussianDreamer-like).
    # cloud_t_max > 0: stage 1's distillation draws diffusion times of at most this fraction of T instead of
    # prior.t_max, so that a start which already has the shape is refined rather than re-noised. With 0.1 and
    # 0.5 a noisy coloured cloud passes the ball's final PSNR by step 50 of 500 and ends 1.1 dB above it, its
    # centres 58 % closer (test split, 3 seeds); with 1 and 0 it ends 0.16 dB below (docs/quality.md).
    # The ball, silhouette and depth starts keep the rates and range above.
    cloud_position_lr_scale: float = 0.1
    cloud_color_lr_scale: float = 1.0
    cloud_t_max: float = 0.5


@dataclass
class DensifyConfig:
    enabled: bool = True
    start: int = 0  # first step at which densification may run (DreamGaussian: 0 text, 100 image)
    stats_before_start: bool = False  # also gather gradient statistics before `start` (DreamGaussian: no)
    reference_view_stats: bool = False  # image mode: the reference view's gradients count too (DreamGaussian: no)
    stop: int = 3000  # densification runs while start <= step < stop
    interval: int = 50
    grad_threshold: float = 0.01  # mean view-space gradient norm (NDC units) to densify
    split_scale: float = 0.04  # clone if the largest scale is <= this (world units), else split
    min_opacity: float = 0.01  # prune below
    prune_scale: float = 0.4  # prune if the largest scale is above this (world units)
    max_gaussians: int = 1_000_000
    opacity_reset_interval: int = 0  # 0 disables opacity resets
    # grad (3DGS/DreamGaussian: clone/split by view-space gradient) | compactness (GSGen: fill the gap
    # between a Gaussian and each of its k nearest neighbours when their ellipsoids do not touch) | both
    mode: str = "grad"
    compactness_k: int = 3  # neighbours examined per Gaussian (GSGen: 3)
    compactness_sigmas: float = 1.0  # ellipsoid radius in standard deviations for the touch test (GSGen: 1)


@dataclass
class PriorConfig:
    kind: str = "sd"  # sd | zero123 | stable-zero123 | mvdream | imagedream | oracle | oracle-mv
    model: str = ""  # hub id or local folder; empty picks the default for the kind
    asset: str = ""  # oracle: built-in asset name or a path to .obj/.glb/.ply ("" = from prompt)
    # None = the prior's default (SD 100, Zero123 5, MVDream 50, ImageDream 5, oracle 2)
    guidance_scale: float | None = None
    t_min: float = 0.02
    t_max: float = 0.98
    t_schedule: str = "anneal"  # anneal | random
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    channels_last: bool = True  # CUDA: channels-last UNet weights (the VAE stays NCHW: docs/benchmarks.md)
    compile: bool = False  # CUDA: torch.compile the UNet call and VAE encoder (compiles on first use)
    cuda_graphs: bool = True  # CUDA: replay the UNet call and the VAE encoder from CUDA graphs
    vae_matmul_attention: bool = True  # CUDA: VAE attention as matmuls, not the slow SDPA fallback
    view_dependent_prompt: bool = True
    resolution: int = 0  # 0 = the prior's native resolution
    oracle_azimuths: int = 72  # oracle: reference views per elevation ring
    oracle_elevations: tuple[float, ...] = ()  # empty: rings spanning the training cameras' range
    oracle_ring_step: float = 15.0  # degrees between reference rings
    oracle_max_elevation: float = 0.0  # text mode: highest reference ring (0 = eye level; + is below)
    oracle_resolution: int = 64
    # oracle: albedo (unlit references) | lit (also Lambertian and textureless renders under random lights
    # near the camera: shaded NeRF renders are in-distribution; DreamFusion's shading ablation)
    oracle_shading: str = "albedo"
    # oracle: each reference a Gaussian kernel of this std (pixels on the [-1, 1] scale) instead
    # of a point; 0 = the exact empirical distribution (priors/oracle.py)
    oracle_data_sigma: float = 0.0
    oracle_camera_sigma: float = 0.1  # oracle: camera-kernel width (radians) for image conditioning
    # oracle, image mode: what the conditional knows at views the input does not show. "asset": the
    # input asset's references at every view (the back is read off). "family": the input asset only
    # within oracle_seen_angle of the input camera; beyond it, the other assets of the library (the
    # family: what objects like this look like from behind), so the unseen side must be inferred.
    oracle_unseen: str = "asset"  # asset | family
    oracle_seen_angle: float = 90.0  # oracle_unseen=family: degrees from the input camera that count as seen
    # oracle-mv: the group's camera is known (a camera kernel), as MVDream's camera embedding tells it,
    # with or without view words in the prompt; false: only the 4 views' relative layout is known
    oracle_mv_camera: bool = True
    # Image mode: text guidance added to the image prior (DreamGaussian's lambda_sd beside lambda_zero123):
    # "" (none), sd or mvdream, under `prompt`, with weight text_weight (priors/combined.py)
    text_guidance: str = ""
    text_model: str = ""  # hub id or local folder of the text prior; empty picks the default for the kind
    text_weight: float = 1.0
    # Distillation rule (priors/distill.py): sds | vsd (ProlificDreamer) | ism (LucidDreamer).
    # With vsd or ism and no guidance_scale, Stable Diffusion guides at 7.5 instead of 100.
    distill: str = "sds"
    # Guidance schedule (seed 000's; off when empty): guidance scales over equal parts of stage 1,
    # e.g. [100, 50, 20]; overrides guidance_scale during stage 1.
    guidance_schedule: tuple[float, ...] = ()
    vsd_estimator: str = "auto"  # auto (lora for sd/zero123, particle for the oracles) | lora | particle
    vsd_lora_rank: int = 4  # LoRA rank on the UNet's attention projections
    vsd_lora_lr: float = 1e-4  # AdamW learning rate of the LoRA and the camera embedding
    vsd_camera_dropout: float = 0.1  # fraction of LoRA training renders whose camera is zeroed
    vsd_particles: int = 8  # particle estimator: recent renders kept
    vsd_particle_sigma: float = 0.35  # particle estimator: camera-kernel width, radians
    ism_delta_t: int = 25  # ISM interval t - s after the warm-up (LucidDreamer: 25)
    ism_delta_t_start: int = 100  # ... and at the start (annealed over ism_warmup)
    ism_warmup: float = 0.3  # fraction of stage 1 over which the interval anneals (LucidDreamer: 1500 of 5000)
    ism_xs_delta_t: int = 200  # DDIM inversion stride to x_s
    ism_xs_steps: int = 5  # at most this many inversion steps to x_s
    ism_grad_scale: float = 0.1  # LucidDreamer's lambda_guidance


@dataclass
class Stage1Config:
    iters: int = 500
    batch_size: int = 1
    render_sizes: tuple[int, ...] = (128, 256, 512)
    size_milestones: tuple[float, ...] = (0.3, 0.6)  # fraction of iters at which size steps up
    white_background_prob: float = 0.5  # else black
    lambda_sds: float = 1.0
    lambda_rgb: float = 10000.0  # image mode reference-view losses
    lambda_mask: float = 1000.0
    ref_size: int = 256
    warmup_fraction: float = 1.0  # reference-loss warm-up over this fraction of training
    ref_warmup: str = "auto"  # on | off | auto (DreamGaussian: on, except off with Stable-Zero123)
    clamp_render: bool = True  # clamp renders to [0, 1] before the losses (DreamGaussian: yes)
    ref_every: int = 1  # image mode: reference loss every n steps
    checkpoint_every: int = 100  # stage-1 steps between checkpoints; 0: only when stage 1 ends
    max_bad_steps: int = 20  # non-finite steps tolerated before giving up
    deterministic: bool = False  # torch.use_deterministic_algorithms during the run
    # Seed 000's regularisers (off at 0): lambda_opacity * mean((1 - opacity)^2) over the Gaussians
    # (pushes them to be opaque) and lambda_scale * mean(|s|^2) of their scales (keeps them small).
    lambda_opacity: float = 0.0
    lambda_scale: float = 0.0
    # GSGen's two stages: the first fraction of the steps is the geometry stage (the 3D point prior,
    # points_prior.use, acts only then and densification waits for its end), the rest the appearance
    # stage. 0: one stage (the point prior, if enabled, acts throughout; DreamGaussian).
    geometry_fraction: float = 0.0


@dataclass
class PointPriorConfig:
    """An auxiliary SDS on the Gaussian centres from a 3D point-cloud denoiser (GSGen's Point-E
    guidance); here the exact oracle over the asset's surface points (priors/points.py)."""

    # off | on | auto: on when the 2D prior is an oracle (the point oracle needs its asset), else off,
    # since no point-cloud diffusion model (Point-E) is available here
    use: str = "off"
    weight: float = 0.1  # relative to stage1.lambda_sds (GSGen: 0.01 beside its SDS weight 0.1)
    batch_size: int = 4  # noise draws per step, each on its own farthest-point sample (GSGen: 4)
    num_points: int = 1024  # Gaussian centres per draw, by farthest-point sampling (Point-E: 1024); 0: all of them
    t_min: float = 0.02  # timesteps uniform in [t_min, t_max) of T (GSGen: 0.02, 0.98)
    t_max: float = 0.98
    coord_scale: float = 2.0  # coordinates are multiplied by this before noising (Point-E's channel scale)
    surface_samples: int = 4096  # oracle: points on the asset's outer surface (the data; Point-E's upsampled clouds: 4096)


@dataclass
class MeshConfig:
    grid_resolution: int = 128
    block_size: int = 16
    density_threshold: float = 1.0
    opacity_threshold: float = 0.005
    min_component_fraction: float = 0.02  # drop components smaller than this fraction of faces
    target_faces: int = 100_000  # decimate to at most this many faces (0: keep all)
    grid_margin: float = 0.1  # grid half-size = (1 + margin) * half-extent of the means + 3 sigma
    fill_cavities: bool = True  # fill enclosed empty regions, so hollow shells give one surface
    min_sigma: float = 0.5  # widen Gaussians to at least this std (grid spacings) so thin disks are sampled
    vertex_colors: bool = False  # colour vertices from the Gaussians (for an untextured export; ~2x grid time)


@dataclass
class TextureConfig:
    size: int = 1024
    bake_views: int = 26
    bake_resolution: int = 512
    cos_threshold: float = 0.5
    unwrap_piece_faces: int = 2000  # xatlas charts pieces of at most this many faces in parallel (0: whole)


@dataclass
class Stage2Config:
    enabled: bool = True
    iters: int = 50
    batch_size: int = 1
    lr: float = 0.2  # Adam on the texture's logits
    render_size: int = 512
    # SDEdit schedule (docs/fidelity.md, item 8). "ddim" (DreamGaussian): a DDIM grid of
    # ddim_steps timesteps, entered at index int(ddim_steps * strength), strength rising from
    # strength_start to strength_end; "linear": noise_start -> noise_end (fractions of T) and
    # refine_steps evenly spaced steps.
    sdedit: str = "ddim"  # ddim | linear
    strength_start: float = 0.8
    strength_end: float = 0.95
    ddim_steps: int = 50
    noise_start: float = 0.2  # linear: SDEdit noise level (fraction of T) at the first step ...
    noise_end: float = 0.05  # ... falling to this at the last (the refinement trusts the render more)
    refine_steps: int = 5  # linear: DDIM steps back from the noised render
    lambda_ref: float = 1.0  # image mode: reference-view colour loss (DreamGaussian: 1)
    ref_mask: str = "render"  # render: rendered alpha and view cosine > 0.5 (DreamGaussian) | input: the input's alpha
    max_bad_steps: int = 10  # non-finite steps tolerated before giving up
    # Geometry refinement (issue 17; DreamGaussian's train_geo): learnable vertex offsets trained
    # with the texture, renders antialiased at silhouettes (mesh.raster.antialias) so that they
    # carry gradients to the vertices; the regularisers keep the surface clean (mesh.regularize).
    geometry: bool = False
    geometry_lr: float = 3e-3  # Adam on the vertex offsets (chosen on dev at CI size; DreamGaussian: 1e-4, no regulariser)
    lambda_laplacian: float = 1.0  # uniform Laplacian of the offsets (smooth deformations, no shrinking)
    lambda_normal: float = 0.0  # normal consistency (1 - cos) of neighbouring faces of the deformed mesh


@dataclass
class ExportConfig:
    video: bool = True
    video_frames: int = 90
    video_size: int = 512
    glb: bool = True
    obj: bool = True


@dataclass
class PrepConfig:
    """Cut-out of images without transparency (`dreamgs prep`, image mode, the web app)."""

    segmenter: str = ""  # local IS-Net/U²-Net-style ONNX model file; "" = $DREAMGS_SEGMENTER if set
    segmenter_norm: str = "auto"  # auto | isnet | imagenet: the model's input normalisation (dreamgs.segment)


def _fit_densify() -> DensifyConfig:
    return DensifyConfig(start=100, stop=1000, interval=100, grad_threshold=0.002, split_scale=0.02,
                         min_opacity=0.005, prune_scale=0.3, stats_before_start=True)


@dataclass
class FitConfig:
    """Multi-view fitting (``dreamgs fit``): Gaussians fitted to posed RGBA images."""

    iters: int = 600
    views_per_step: int = 4
    num_points: int = 2000
    init_radius: float = 0.6
    init_opacity: float = 0.1
    lambda_alpha: float = 1.0
    lr_position_steps: int = 600
    densify: DensifyConfig = field(default_factory=_fit_densify)


@dataclass
class NerfConfig:
    """DreamFusion's NeRF (``method=dreamfusion``; representations/nerf.py, methods/dreamfusion.py)."""

    bound: float = 0.75  # the field lives in the box [-bound, bound]^3 (assets fit a radius-0.5 sphere)
    levels: int = 6  # grid levels from base_resolution to max_resolution (geometric)
    base_resolution: int = 16
    max_resolution: int = 96
    features: int = 2  # per level
    log2_table: int = 19  # levels with more than 2^log2_table lattice points are hashed
    hidden: int = 32  # MLP width
    blob_scale: float = 10.0  # density bias blob_scale * (1 - |x| / blob_std) (threestudio's blob_magic3d)
    blob_std: float = 0.5
    density_activation: str = "softplus"  # softplus | exp (sharper surfaces; see docs/quality.md, DreamFusion)
    samples: int = 64  # stratified samples per ray
    occ_resolution: int = 32  # occupancy grid cells per axis
    occ_every: int = 16  # steps between occupancy refreshes
    occ_threshold: float = 0.2  # density below which a cell counts as empty (alpha ~0.005 over a sample step)
    lr_grid: float = 0.01
    lr_mlp: float = 0.001
    # shading (DreamFusion): albedo only for the first ambient_only_steps, then albedo with
    # albedo_prob, else textureless with textureless_prob, else Lambertian
    ambient_only_fraction: float = 0.2  # of stage1.iters (threestudio: 2000 of 10000 steps)
    albedo_prob: float = 0.25
    textureless_prob: float = 0.5
    ambient: float = 0.1
    diffuse: float = 0.9
    light_distance_range: tuple[float, float] = (1.6, 3.0)  # DreamFusion's 0.8-1.5 at its camera scale x 2
    light_perturb: float = 1.0  # std of the Gaussian added to the camera position for the light direction
    background: str = "random"  # random (white or black, stage1.white_background_prob) | mlp (of view direction)
    lambda_orient: float = 1000.0  # orientation loss weight (ramped up linearly over orient_warmup)
    orient_warmup: float = 0.5  # fraction of stage1.iters over which the orientation weight ramps up
    orient_start: float = 0.0  # fraction of stage1.iters without the orientation loss, before its ramp
    orient_weights: str = "detached"  # detached (DreamFusion: the normals only) | share (also each ray's weight share)
    lambda_sparsity: float = 0.0  # mean sqrt(alpha^2 + 0.01)
    lambda_opaque: float = 0.0  # binary entropy of alpha
    lambda_empty: float = 0.0  # mean opacity over a ray step at random points in cells the occupancy grid skips
    empty_points: int = 4096  # points drawn in the box per step for lambda_empty (those in skipped cells count)
    lambda_distortion: float = 0.0  # mip-NeRF 360's distortion loss of the per-ray weights (box side = 1)
    distortion_normalise: bool = False  # of each ray's weights over its opacity (times the opacity, held fixed)
    distortion_warmup: float = 0.0  # fraction of stage1.iters over which its weight ramps up linearly (0: none)
    mesh_threshold: float = 5.0  # density of the exported surface (marching cubes)
    bake_samples: int = 64  # samples per ray for the stage-2 bake


@dataclass
class Magic3DConfig:
    """Magic3D (``method=magic3d``; methods/magic3d.py): the NeRF (``nerf.*``) for the first
    ``coarse_fraction`` of ``stage1.iters``, then a DMTet mesh (representations/dmtet.py) started
    from its density, with the NeRF's albedo as the colour field, for the rest."""

    coarse_fraction: float = 0.6  # share of stage1.iters for the coarse NeRF; the rest is the DMTet (fine) stage
    grid_resolution: int = 64  # DMTet cubes per axis over the NeRF's box (threestudio's refine: 128)
    deform_scale: float = 0.25  # bound of the vertex deformation, in cells (tanh-bounded; at most 0.5)
    init_threshold: float = 0.0  # NeRF density of the starting surface; 0: nerf.mesh_threshold, or half the
    # maximum density where the field never reaches it
    render_size: int = 512  # fine-stage renders (Magic3D: 512)
    t_min: float = 0.02  # fine-stage diffusion time range, fractions of T (Magic3D / threestudio: 0.02 .. 0.5)
    t_max: float = 0.5
    lr_sdf: float = 0.01  # Adam on the SDF (in cells) and the raw deformation (threestudio: 0.01 for all)
    lr_deform: float = 0.01
    lr_color: float = 0.001  # the colour field's grid and MLP in the fine stage
    lambda_normal: float = 1000.0  # normal consistency (mean 1 - cos over edges)
    lambda_laplacian: float = 0.0  # uniform Laplacian (mean squared distance to the neighbours' centroid, world units)
    antialias: bool = True  # antialiased mesh renders in the fine stage (silhouette gradients)


@dataclass
class Config:
    method: str = "dreamgaussian"  # dreamgaussian | dreamfusion | gsgen | magic3d (dreamgs.methods.METHODS)
    mode: str = "text"  # text | image
    preset: str = "auto"  # auto | preview | full: sizes for the device and prior (see preview_values)
    prompt: str = ""
    negative_prompt: str = ""
    image: str = ""
    elevation: float = 0.0  # elevation of the input view in image mode, degrees
    image_recenter: bool = False  # image mode: recentre/rescale the object (as `dreamgs prep` does)
    seed: int | None = None
    output_dir: str = "outputs"
    run_name: str = ""
    device: str = "auto"
    backend: str = "auto"  # render backend: auto | gsplat | torch
    camera: CameraConfig = field(default_factory=CameraConfig)
    gaussians: GaussianConfig = field(default_factory=GaussianConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    export: ExportConfig = field(default_factory=ExportConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)
    magic3d: Magic3DConfig = field(default_factory=Magic3DConfig)
    points_prior: PointPriorConfig = field(default_factory=PointPriorConfig)


# ----------------------------------------------------------------------------------------------
# Type coercion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if value is None:
            raise ConfigError(f"{key}: a value is required")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def apply_dict(cfg: Any, data: dict, where: str, prefix: str = "") -> None:
    """Apply a nested mapping to a config dataclass in place, type-checking every value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at '{prefix or 'top level'}', got {data!r}")
    types_ = _field_types(type(cfg))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in types_:
            raise _unknown_key(str(full), types_, where)
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, where, prefix=f"{full}.")
        else:
            setattr(cfg, key, _coerce(value, types_[key], full))


def apply_override(cfg: Config, override: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed for the type of its field."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{override}' has an empty key")
    # Values stay strings here; _coerce parses them for the field's type ("1e-3", "true", "[1,2]").
    value: Any = None if raw.strip() in ("null", "None", "~") else raw
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        sub = getattr(node, part, None) if part in _field_types(type(node)) else None
        if not dataclasses.is_dataclass(sub):
            raise _unknown_key(".".join(parts[: i + 1]), _field_types(type(node)), "overrides")
        node = sub
    last = parts[-1]
    types_ = _field_types(type(node))
    if last not in types_:
        raise _unknown_key(key, types_, "overrides")
    if dataclasses.is_dataclass(getattr(node, last)):
        raise ConfigError(f"override '{key}' names a section; set one of its keys instead")
    setattr(node, last, _coerce(value, types_[last], key))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return data


def preset(mode: str) -> dict:
    """The packaged YAML preset for ``mode`` (text or image)."""
    if mode not in ("text", "image"):
        raise ConfigError(f"unknown mode '{mode}' (expected 'text' or 'image')")
    text = resources.files("dreamgs").joinpath("configs", f"{mode}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def load_config(
    mode: str = "text",
    config_file: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
) -> Config:
    """Resolve a config: defaults, then the mode preset, the user's YAML and the overrides, then
    the size preset for the keys the user did not set (see :func:`apply_size_preset`)."""
    cfg = Config()
    apply_dict(cfg, preset(mode), f"preset {mode}.yaml")
    cfg.mode = mode
    user_keys: set[str] = set()
    if config_file:
        data = load_yaml(config_file)
        apply_dict(cfg, data, str(config_file))
        user_keys |= _flat_keys(data)
    for ov in overrides:
        apply_override(cfg, ov)
        user_keys.add(ov.split("=", 1)[0].strip())
    validate(cfg)
    apply_method_preset(cfg, user_keys)
    apply_size_preset(cfg, user_keys)
    validate(cfg)
    return cfg


METHOD_NAMES = ("dreamgaussian", "dreamfusion", "gsgen", "magic3d")


def method_preset(method: str) -> dict:
    """The packaged YAML of a method's own settings (``configs/method_<name>.yaml``; none for
    DreamGaussian, whose settings are the defaults)."""
    f = resources.files("dreamgs").joinpath("configs", f"method_{method}.yaml")
    return (yaml.safe_load(f.read_text(encoding="utf-8")) or {}) if f.is_file() else {}


def apply_method_preset(cfg: Config, user_keys: typing.Collection[str] = ()) -> None:
    """Set the method preset's values for the keys that the user did not set."""
    data = method_preset(cfg.method)
    keep = {k: v for k, v in _flat_items(data).items() if k not in user_keys}
    for key, value in keep.items():
        apply_override(cfg, f"{key}={_as_override(value)}")


def _flat_items(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in data.items():
        out.update(_flat_items(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _as_override(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _flat_keys(data: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in data.items():
        keys |= _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


# native image size of each prior
PRIOR_RESOLUTION = {"sd": 512, "zero123": 256, "stable-zero123": 256, "mvdream": 256, "imagedream": 256}


def prior_resolution(cfg: Config) -> int:
    """The square image size the configured prior works at."""
    if cfg.prior.kind in ("oracle", "oracle-mv"):
        return cfg.prior.oracle_resolution
    return cfg.prior.resolution or PRIOR_RESOLUTION.get(cfg.prior.kind, 512)


def resolve_preset(cfg: Config) -> str:
    """``preview`` on a CPU, or wherever the renders would be more than twice the prior's
    resolution (the oracle works at 64 px); else ``full``. An explicit preset is kept."""
    if cfg.preset != "auto":
        return cfg.preset
    from .stage1 import resolve_device

    if resolve_device(cfg.device).type != "cuda":
        return "preview"
    return "preview" if max(cfg.stage1.render_sizes) > 2 * prior_resolution(cfg) else "full"


def preview_values(cfg: Config) -> dict[str, Any]:
    """The ``preview`` preset: render sizes (the input view's too) up to twice the prior's
    resolution, a Gaussian cap, fewer bake views, a smaller texture and 256-pixel videos
    (dotted key -> value)."""
    cap = 2 * prior_resolution(cfg)
    return {
        "stage1.render_sizes": tuple(min(s, cap) for s in cfg.stage1.render_sizes),
        "stage1.ref_size": min(cfg.stage1.ref_size, cap),
        "densify.max_gaussians": min(cfg.densify.max_gaussians, PREVIEW_MAX_GAUSSIANS),
        "texture.bake_views": min(cfg.texture.bake_views, 12),
        "texture.bake_resolution": min(cfg.texture.bake_resolution, max(2 * cap, 128)),
        "texture.size": min(cfg.texture.size, 512),
        "stage2.render_size": min(cfg.stage2.render_size, cap),
        "magic3d.render_size": min(cfg.magic3d.render_size, cap),
        "export.video_size": min(cfg.export.video_size, 256),
        "mesh.target_faces": min(cfg.mesh.target_faces, 30_000),
    }


PREVIEW_MAX_GAUSSIANS = 30_000  # chosen on the dev split (docs/quality.md, "The preview's Gaussian cap")


def apply_size_preset(cfg: Config, user_keys: typing.Collection[str] = ()) -> None:
    """Resolve ``cfg.preset`` (``auto`` -> ``preview`` or ``full``) and, for ``preview``, set
    every :func:`preview_values` key that is not in ``user_keys``."""
    cfg.preset = resolve_preset(cfg)
    if cfg.preset == "preview":
        for key, value in preview_values(cfg).items():
            if key not in user_keys:
                section, name = key.split(".")
                setattr(getattr(cfg, section), name, value)


def preset_line(cfg: Config) -> str:
    """One line naming the run's size preset and how to choose the other."""
    if cfg.preset == "preview":
        return (f"preset: preview (renders up to {max(cfg.stage1.render_sizes)} px, at most "
                f"{cfg.densify.max_gaussians} Gaussians, {cfg.texture.size} px texture, {cfg.export.video_size} px "
                "videos); for the full-size settings add --preset full")
    return "preset: full (DreamGaussian's sizes; --preset preview for a quick run on a CPU)"


INIT_KINDS = ("ball", "points", "mesh", "silhouette", "depth")


CLOUD_STARTS = ("points", "mesh")  # gaussians.init kinds whose Gaussians already lie on the surface


def parse_init(spec: str) -> tuple[str, str]:
    """``gaussians.init`` -> (kind, file or asset); raises ConfigError for a malformed value."""
    kind, _, arg = (spec or "ball").partition(":")
    kind = kind.strip()
    if kind not in INIT_KINDS:
        raise ConfigError(f"gaussians.init: unknown start '{spec}' (expected ball, points:FILE, mesh:FILE, "
                          "silhouette or depth:FILE)")
    if kind in ("points", "mesh", "depth") and not arg.strip():
        raise ConfigError(f"gaussians.init: '{kind}' needs a file, e.g. {kind}:FILE")
    if kind in ("ball", "silhouette") and arg:
        raise ConfigError(f"gaussians.init: '{kind}' takes no argument (got '{spec}')")
    return kind, arg.strip()


def validate(cfg: Config) -> None:
    """Check value ranges that the types alone cannot express."""
    if cfg.mode not in ("text", "image"):
        raise ConfigError(f"mode: expected 'text' or 'image', got '{cfg.mode}'")
    if cfg.prior.oracle_shading not in ("albedo", "lit"):
        raise ConfigError(f"prior.oracle_shading: expected albedo or lit, got '{cfg.prior.oracle_shading}'")
    if cfg.method not in METHOD_NAMES:
        raise ConfigError(f"method: expected one of {', '.join(METHOD_NAMES)}, got '{cfg.method}'")
    n = cfg.nerf
    if n.background not in ("random", "mlp"):
        raise ConfigError(f"nerf.background: expected random or mlp, got '{n.background}'")
    if n.density_activation not in ("softplus", "exp"):
        raise ConfigError(f"nerf.density_activation: expected softplus or exp, got '{n.density_activation}'")
    if n.samples < 2 or n.levels < 1 or n.features < 1 or n.hidden < 1 or n.occ_resolution < 2 or n.occ_every < 1:
        raise ConfigError("nerf.samples, levels, features, hidden, occ_resolution and occ_every must be positive "
                          "(samples and occ_resolution at least 2)")
    if n.bound <= 0 or n.blob_std <= 0 or not 2 <= n.base_resolution <= n.max_resolution:
        raise ConfigError("nerf.bound and nerf.blob_std must be positive and 2 <= base_resolution <= max_resolution")
    for name in ("albedo_prob", "textureless_prob", "ambient_only_fraction", "orient_warmup", "orient_start"):
        if not 0.0 <= getattr(n, name) <= 1.0:
            raise ConfigError(f"nerf.{name} must be within [0, 1]")
    if n.lambda_empty < 0 or n.empty_points < 1:
        raise ConfigError("nerf.lambda_empty must not be negative and nerf.empty_points must be at least 1")
    if n.orient_weights not in ("detached", "share"):  # representations.nerf.ORIENT_WEIGHTS
        raise ConfigError(f"nerf.orient_weights: expected detached or share, got '{n.orient_weights}'")
    m3 = cfg.magic3d
    if not 0.0 < m3.coarse_fraction < 1.0:
        raise ConfigError("magic3d.coarse_fraction must be between 0 and 1 (exclusive): both stages need steps")
    if m3.grid_resolution < 4 or m3.render_size < 8:
        raise ConfigError("magic3d.grid_resolution must be at least 4 and magic3d.render_size at least 8")
    if not 0.0 <= m3.deform_scale <= 0.5:
        raise ConfigError("magic3d.deform_scale must be within [0, 0.5] (cells)")
    if not 0.0 <= m3.t_min <= m3.t_max <= 1.0:
        raise ConfigError("magic3d.t_min and magic3d.t_max must satisfy 0 <= t_min <= t_max <= 1")
    if min(m3.init_threshold, m3.lr_sdf, m3.lr_deform, m3.lr_color, m3.lambda_normal, m3.lambda_laplacian) < 0:
        raise ConfigError("magic3d: init_threshold, the learning rates and the loss weights must not be negative")
    if cfg.preset not in ("auto", "preview", "full"):
        raise ConfigError(f"preset: expected auto, preview or full, got '{cfg.preset}'")
    if cfg.backend not in ("auto", "gsplat", "torch"):
        raise ConfigError(f"backend: expected auto, gsplat or torch, got '{cfg.backend}'")
    if cfg.prior.t_schedule not in ("anneal", "random"):
        raise ConfigError(f"prior.t_schedule: expected anneal or random, got '{cfg.prior.t_schedule}'")
    if not 0.0 <= cfg.prior.t_min <= cfg.prior.t_max <= 1.0:
        raise ConfigError("prior.t_min and prior.t_max must satisfy 0 <= t_min <= t_max <= 1")
    if cfg.prior.dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ConfigError(f"prior.dtype: expected auto, fp32, fp16 or bf16, got '{cfg.prior.dtype}'")
    if cfg.prior.text_guidance not in ("", "sd", "mvdream"):
        raise ConfigError(f"prior.text_guidance: expected sd, mvdream or empty, got '{cfg.prior.text_guidance}'")
    if cfg.prior.text_guidance and cfg.mode != "image":
        raise ConfigError("prior.text_guidance adds text guidance to an image prior; in text mode choose the text "
                          "prior with prior.kind")
    if cfg.prior.text_guidance and not cfg.prompt.strip():
        raise ConfigError(f"prior.text_guidance={cfg.prior.text_guidance} needs a prompt (prompt=...)")
    if cfg.prior.text_weight < 0:
        raise ConfigError(f"prior.text_weight must be >= 0, got {cfg.prior.text_weight}")
    if cfg.prior.distill not in ("sds", "vsd", "ism"):
        raise ConfigError(f"prior.distill: expected sds, vsd or ism, got '{cfg.prior.distill}'")
    if cfg.prior.distill != "sds" and cfg.prior.text_guidance:
        raise ConfigError(f"prior.distill={cfg.prior.distill} takes a single prior; drop prior.text_guidance")
    if cfg.prior.vsd_estimator not in ("auto", "lora", "particle"):
        raise ConfigError(f"prior.vsd_estimator: expected auto, lora or particle, got '{cfg.prior.vsd_estimator}'")
    if any(g < 0 for g in cfg.prior.guidance_schedule):
        raise ConfigError("prior.guidance_schedule: guidance scales must not be negative")
    if not 0.0 <= cfg.camera.front_warmup <= 1.0 or not 0.0 < cfg.camera.front_warmup_azimuth <= 180.0:
        raise ConfigError("camera.front_warmup must be within [0, 1] and camera.front_warmup_azimuth within (0, 180]")
    if cfg.stage1.lambda_opacity < 0 or cfg.stage1.lambda_scale < 0:
        raise ConfigError("stage1.lambda_opacity and stage1.lambda_scale must not be negative")
    if cfg.prior.oracle_data_sigma < 0:
        raise ConfigError(f"prior.oracle_data_sigma must be at least 0, got {cfg.prior.oracle_data_sigma}")
    if cfg.prior.oracle_unseen not in ("asset", "family"):
        raise ConfigError(f"prior.oracle_unseen: expected asset or family, got '{cfg.prior.oracle_unseen}'")
    if not 0.0 < cfg.prior.oracle_seen_angle < 180.0:
        raise ConfigError("prior.oracle_seen_angle must be between 0 and 180 degrees (exclusive)")
    for name in ("iters", "batch_size", "ref_size"):
        if getattr(cfg.stage1, name) < 1:
            raise ConfigError(f"stage1.{name} must be at least 1")
    if not cfg.stage1.render_sizes or any(s < 8 for s in cfg.stage1.render_sizes):
        raise ConfigError("stage1.render_sizes must be a non-empty list of sizes >= 8")
    if len(cfg.stage1.size_milestones) != len(cfg.stage1.render_sizes) - 1:
        raise ConfigError("stage1.size_milestones needs one entry fewer than stage1.render_sizes")
    if cfg.stage1.checkpoint_every < 0:
        raise ConfigError("stage1.checkpoint_every must be >= 0 (0 = only at the end of stage 1)")
    if cfg.stage1.max_bad_steps < 0 or cfg.stage2.max_bad_steps < 0:
        raise ConfigError("stage1.max_bad_steps and stage2.max_bad_steps must be >= 0")
    if cfg.stage1.ref_warmup not in ("on", "off", "auto"):
        raise ConfigError(f"stage1.ref_warmup: expected on, off or auto, got '{cfg.stage1.ref_warmup}'")
    if cfg.stage2.sdedit not in ("ddim", "linear"):
        raise ConfigError(f"stage2.sdedit: expected ddim or linear, got '{cfg.stage2.sdedit}'")
    if cfg.stage2.ref_mask not in ("render", "input"):
        raise ConfigError(f"stage2.ref_mask: expected render or input, got '{cfg.stage2.ref_mask}'")
    s2 = cfg.stage2
    if s2.ddim_steps < 1 or not (0.0 <= s2.strength_start <= 1.0 and 0.0 <= s2.strength_end <= 1.0):
        raise ConfigError("stage2.ddim_steps must be at least 1 and stage2.strength_start/end within [0, 1]")
    if s2.geometry_lr <= 0 or s2.lambda_laplacian < 0 or s2.lambda_normal < 0:
        raise ConfigError("stage2.geometry_lr must be positive and stage2.lambda_laplacian, lambda_normal >= 0")
    if cfg.gaussians.spatial_lr_scale <= 0:
        raise ConfigError("gaussians.spatial_lr_scale must be positive")
    if cfg.gaussians.num_points < 1:
        raise ConfigError("gaussians.num_points must be at least 1")
    if not 0 <= cfg.gaussians.sh_degree <= 3:
        raise ConfigError("gaussians.sh_degree must be between 0 and 3")
    parse_init(cfg.gaussians.init)
    g = cfg.gaussians
    if g.init_colors not in ("file", "random", "grey"):
        raise ConfigError(f"gaussians.init_colors: expected file, random or grey, got '{g.init_colors}'")
    if min(g.init_scale, g.init_noise, g.init_grow_samples, g.init_grow_distance, g.init_color_jitter) < 0:
        raise ConfigError("gaussians.init_scale, init_noise, init_grow_samples, init_grow_distance and "
                          "init_color_jitter must not be negative")
    if g.lr_color_final < 0:
        raise ConfigError("gaussians.lr_color_final must not be negative (0: a constant colour rate)")
    if not (g.cloud_position_lr_scale > 0 and g.cloud_color_lr_scale > 0):
        raise ConfigError("gaussians.cloud_position_lr_scale and cloud_color_lr_scale must be positive")
    if not 0.0 <= g.cloud_t_max <= 1.0:
        raise ConfigError(f"gaussians.cloud_t_max={g.cloud_t_max}: expected 0 (off) or a fraction of T in (0, 1]")
    if 0 < g.cloud_t_max <= cfg.prior.t_min and parse_init(g.init)[0] in CLOUD_STARTS:
        raise ConfigError(f"gaussians.cloud_t_max={g.cloud_t_max} must be above prior.t_min={cfg.prior.t_min} "
                          f"for gaussians.init={g.init} (or 0: the prior's range)")
    if cfg.gaussians.init.split(":")[0] in ("silhouette", "depth") and cfg.mode != "image":
        raise ConfigError(f"gaussians.init={cfg.gaussians.init} lifts the input image: it needs image mode")
    if cfg.densify.mode not in ("grad", "compactness", "both"):
        raise ConfigError(f"densify.mode: expected grad, compactness or both, got '{cfg.densify.mode}'")
    if cfg.densify.compactness_k < 1 or cfg.densify.compactness_sigmas <= 0:
        raise ConfigError("densify.compactness_k must be at least 1 and densify.compactness_sigmas positive")
    if not 0.0 <= cfg.stage1.geometry_fraction <= 1.0:
        raise ConfigError("stage1.geometry_fraction must be within [0, 1]")
    pp = cfg.points_prior
    if pp.use not in ("off", "on", "auto"):
        raise ConfigError(f"points_prior.use: expected off, on or auto, got '{pp.use}'")
    if pp.use == "on" and cfg.prior.kind not in ("oracle", "oracle-mv"):
        raise ConfigError("points_prior needs an oracle prior (prior.kind=oracle or oracle-mv): no point-cloud "
                          "diffusion model (Point-E) is available, only the exact oracle over the asset's surface")
    if pp.batch_size < 1 or pp.num_points < 0 or pp.surface_samples < 1 or pp.weight < 0 or pp.coord_scale <= 0:
        raise ConfigError("points_prior: batch_size and surface_samples must be at least 1, num_points (0: every "
                          "centre) and weight >= 0, and coord_scale > 0")
    if not 0.0 <= pp.t_min < pp.t_max <= 1.0:
        raise ConfigError("points_prior.t_min and t_max must satisfy 0 <= t_min < t_max <= 1")
    if cfg.mesh.grid_resolution < 8:
        raise ConfigError("mesh.grid_resolution must be at least 8")
    if cfg.mesh.block_size < 1 or cfg.mesh.target_faces < 0:
        raise ConfigError("mesh.block_size must be at least 1 and mesh.target_faces at least 0 (0 = no decimation)")
    if cfg.mesh.min_sigma < 0 or cfg.mesh.grid_margin < 0:
        raise ConfigError("mesh.min_sigma and mesh.grid_margin must not be negative")
    if cfg.prep.segmenter_norm not in ("auto", "isnet", "imagenet"):
        raise ConfigError(f"prep.segmenter_norm: expected auto, isnet or imagenet, got '{cfg.prep.segmenter_norm}'")
    if cfg.seed is not None and not 0 <= cfg.seed < 2**63:
        raise ConfigError("seed must be a non-negative integer below 2**63")


def to_dict(cfg: Config) -> dict:
    """Plain-data form of a config (tuples as lists), suitable for YAML."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def from_dict(data: dict) -> Config:
    """Rebuild a config from :func:`to_dict` output (e.g. a run's ``config.yaml``)."""
    cfg = Config()
    apply_dict(cfg, data, "config")
    validate(cfg)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
