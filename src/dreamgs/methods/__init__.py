"""Methods: one short top-down recipe per method, by name (``Config.method``, ``--method``).

Each module names its representation, the stage-1 loop that trains it against the prior (the
distillation rule is the prior's ``sds``), and its exports. The pipeline calls, for the run's
method: ``make_stage1(cfg, prior, ref, device)``, ``save_model(model, run_dir)``,
``video(model, cfg, path, progress)``, ``preview(model, cfg, azimuth, size)`` and
``summary(model, cfg)``; stage 2 (mesh, UVs, bake, refinement) is shared (:mod:`dreamgs.stage2`).
"""

from __future__ import annotations

from types import ModuleType

from . import dreamfusion, dreamgaussian, gsgen, magic3d

METHODS: dict[str, ModuleType] = {"dreamgaussian": dreamgaussian, "dreamfusion": dreamfusion, "gsgen": gsgen,
                                   "magic3d": magic3d}


def get_method(name: str) -> ModuleType:
    from ..errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"method: unknown method '{name}' (available: {', '.join(METHODS)})")
    return METHODS[name]
