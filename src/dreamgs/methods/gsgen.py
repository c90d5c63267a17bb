"""GSGen: Gaussians trained in two stages, the Gaussians themselves as the result.

- representation: :class:`dreamgs.gaussians.GaussianModel`, started by ``gaussians.init`` (the
  ball, or a point cloud / mesh / the input's silhouette: :mod:`dreamgs.init`);
- prior and distillation: the configured 2D prior's rule (``prior.distill``), plus, in the
  geometry stage, the 3D point prior's SDS on the centres (``points_prior``; an exact point
  oracle here, since no Point-E weights exist: :mod:`dreamgs.priors.points`);
- stage 1, geometry: the first ``stage1.geometry_fraction`` of the steps, no densification;
  appearance: the rest, gradient then compactness densification (``densify.mode=both``);
- exports: ``model.ply`` and ``gaussians.mp4``; the textured mesh (stage 2) only with ``--mesh``.

The recipe's values are ``configs/method_gsgen.yaml``; the loop is DreamGaussian's
:class:`dreamgs.stage1.Stage1`, which reads them.
"""

from __future__ import annotations

from .dreamgaussian import TIME_ESTIMATE, VIDEO_NAME, make_stage1, preview, save_model, summary, video

__all__ = ["TIME_ESTIMATE", "VIDEO_NAME", "make_stage1", "preview", "save_model", "summary", "video"]
