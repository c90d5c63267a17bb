#!/usr/bin/env bash
# The GPU checks, as run on the device machine (docs/benchmarks.md records each result):
#
#     bash benchmarks/device.sh STEP [STEP ...]
#
# Steps: env, gsplat (JIT-compile gsplat's CUDA code), render, quality, models, prior, compile, mesh,
# pipeline, resume, turntable, mvdream, mvdream-pipeline, distill-speed, dreamfusion, antialias, magic3d, magic3d-run;
# bench-ci, bench-distill, bench-geometry, bench-dreamfusion, ablate-shading, df-variants, bench-gsgen, gsgen-parts, gsgen-starts, gsgen-starts-full, image-bar-steps, bench-magic3d, bench-hard,
# bench-hard-mv, bench-full, preview-dev, preview-ablate, fidelity (docs/quality.md,
# docs/fidelity.md: their reports are packed into $OUT/reports.tar.gz). Each step's output goes to $OUT/<step>.log (default OUT=/tmp/out).
# The machine has torch but not our other dependencies: they travel as wheels in .whl/ (not
# committed; docs/benchmarks.md lists them) and are installed into /tmp/site once per machine.
# The random-weight full-size models are built once per machine into /tmp/models.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ ! -f /tmp/site/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && touch /tmp/site/.done || { echo "wheel install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions HF_HUB_OFFLINE=1
MODELS=/tmp/models

run_step() {
    case "$1" in
        env)
            date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
            python3 -c "import torch, diffusers, transformers, huggingface_hub, gsplat, trimesh, xatlas
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__,
      'transformers', transformers.__version__, 'hub', huggingface_hub.__version__, 'gsplat', gsplat.__version__)" ;;
        gsplat)
            python3 -c "from gsplat.cuda._backend import _C; assert _C is not None; print('gsplat CUDA module:', _C.__file__)" ;;
        render)
            python3 benchmarks/gpu_render.py ;;
        quality)
            DREAMGS_TEST_DEVICE=cuda python3 -m pytest -q -s -p no:cacheprovider --durations=10 \
                tests/test_quality.py tests/test_stage2.py ;;
        models)
            [ -f $MODELS/sd/model_index.json ] || python3 benchmarks/full_size_models.py --out $MODELS/sd --which sd --device cuda
            [ -f $MODELS/zero123/model_index.json ] || python3 benchmarks/full_size_models.py --out $MODELS/zero123 --which zero123 --device cuda ;;
        prior)
            python3 benchmarks/prior_speed.py --model $MODELS/sd --kind sd --batch 1 4
            python3 benchmarks/prior_speed.py --model $MODELS/zero123 --kind zero123 --batch 1 4 ;;
        mvdream)  # issue 15: the full-size 4-view MVDream SDS step beside SD's 512 px step
            [ -f $MODELS/sd/model_index.json ] || python3 benchmarks/full_size_models.py --out $MODELS/sd --which sd --device cuda
            [ -f $MODELS/mvdream/model_index.json ] || \
                python3 benchmarks/full_size_models.py --out $MODELS/mvdream --which mvdream --device cuda
            V="eager cuda_graphs cuda_graphs+vae_matmul_attention channels_last+cuda_graphs+vae_matmul_attention"
            python3 benchmarks/prior_speed.py --model $MODELS/sd --kind sd --batch 1 --variants $V
            python3 benchmarks/prior_speed.py --model $MODELS/mvdream --kind mvdream --batch 4 8 --variants $V ;;
        mvdream-pipeline)  # issue 15: a whole text run with the full-size MVDream
            [ -f $MODELS/mvdream/model_index.json ] || \
                python3 benchmarks/full_size_models.py --out $MODELS/mvdream --which mvdream --device cuda
            python3 benchmarks/gpu_pipeline.py --models $MODELS --warmup --modes text --variants baseline fast \
                --json "$OUT/pipeline-mvdream.json" --set prior.kind=mvdream prior.model=$MODELS/mvdream ;;
        compile)
            V="eager cuda_graphs cuda_graphs+vae_matmul_attention channels_last+cuda_graphs+vae_matmul_attention
               compile+cuda_graphs+vae_matmul_attention channels_last+compile+cuda_graphs+vae_matmul_attention"
            timeout 240 python3 benchmarks/prior_speed.py --model $MODELS/sd --kind sd --profile --variants $V
            timeout 200 python3 benchmarks/prior_speed.py --model $MODELS/zero123 --kind zero123 --profile --variants $V ;;
        mesh)
            python3 benchmarks/bench_mesh.py --device cuda ;;
        pipeline)
            python3 benchmarks/gpu_pipeline.py --models $MODELS --warmup --phases --variants baseline fast \
                --json "$OUT/pipeline.json" ;;
        resume)
            python3 benchmarks/resume_gpu.py ;;
        turntable)
            python3 benchmarks/turntable_gpu.py --out /tmp/turntable ;;
        distill-speed)  # issue 18: one SDS, VSD and ISM step with the full-size random SD 2.1-base (512 px, batch 1),
            # each at its own default guidance, median ms and peak memory (target: VSD, ISM <= 3x SDS);
            # first the CUDA-graph LoRA training step against the eager one (tests/test_distill.py)
            [ -f $MODELS/sd/model_index.json ] || python3 benchmarks/full_size_models.py --out $MODELS/sd --which sd --device cuda
            python3 -m pytest -q -p no:cacheprovider tests/test_distill.py -k "lora_training_step"
            python3 benchmarks/distill_speed.py --model $MODELS/sd --batch 1
            python3 benchmarks/distill_speed.py --model $MODELS/sd --batch 4 --iters 10 ;;
        bench-distill)  # issue 18: SDS, VSD and ISM (prior.distill; RULES) on the test split at CI size, equal steps,
            # each at the oracle's own guidance, in the standard and the Janus-prone hard text settings
            # (SETTINGS); all at once, JOBS runs each
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for s in ${SETTINGS:-standard hard}; do for r in ${RULES:-sds vsd ism}; do
                python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-3} --mode text --setting $s --device cuda \
                    --jobs ${JOBS:-5} --no-baselines --config benchmarks/ci_size.yaml --out /tmp/reports/distill-$s-$r \
                    prior.distill=$r &
            done; done
            wait ;;
        dreamfusion)  # issue 16: DreamFusion's step on the GPU (full-size random SD 2.1-base, hash-grid field)
            [ -f $MODELS/sd/model_index.json ] || python3 benchmarks/full_size_models.py --out $MODELS/sd --which sd --device cuda
            python3 benchmarks/nerf_speed.py --model $MODELS/sd --device cuda --field gpu --size 64
            python3 benchmarks/nerf_speed.py --model $MODELS/sd --device cuda --field gpu --size 128
            python3 benchmarks/nerf_speed.py --device cuda --prior oracle --field cpu ;;
        bench-dreamfusion)  # issue 16: dreamgaussian beside dreamfusion on the test split at CI size (text),
            # then the shading ablation with the lit oracle: shading + textureless vs albedo only, equal steps
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            python3 -m dreamgs.cli bench --methods dreamgaussian,dreamfusion --assets test --seeds ${SEEDS:-2} \
                --mode text --device cuda --jobs ${JOBS:-8} --config benchmarks/ci_size.yaml \
                --out /tmp/reports/bench-dreamfusion-text ;;
        ablate-shading)  # issue 16: the shading ablation with the lit oracle, shading + textureless vs albedo
            # only, equal steps, test split at CI size; both at once, JOBS runs each
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for v in "shading" "albedo nerf.albedo_prob=1.0"; do
                set -- $v
                python3 -m dreamgs.cli bench --methods dreamfusion --assets test --seeds ${SEEDS:-2} --mode text \
                    --device cuda --jobs ${JOBS:-8} --no-baselines --config benchmarks/ci_size.yaml \
                    --out /tmp/reports/ablate-df-$1 prior.oracle_shading=lit "${@:2}" &
            done
            wait ;;
        df-variants)  # issue 16: DreamFusion's CPU preset (600 steps) under each line of VARIANTS ("NAME key=value
            # ..."; default: the preset alone) on ASSETS (default: the dev split and the dev meshes), seeds
            # 0..SEEDS-1, all at once; then each run's facing-away share with and without the occupancy grid
            # (benchmarks/nerf_orientation.py) into facing.jsonl beside bench.json, and with THRESHOLDS stage 2
            # again at those nerf.mesh_threshold values (nerf_threshold.py: threshold.jsonl). ASSETS may name
            # /tmp/dm/*.glb (dev meshes) and /tmp/u16/*.glb (the held-out kettle and lamp)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            [ -f /tmp/dm/cart.glb ] || python3 benchmarks/unseen_meshes.py --set dev --out /tmp/dm > /dev/null
            [ -f /tmp/u16/kettle.glb ] || python3 benchmarks/unseen_meshes.py --out /tmp/u16 > /dev/null
            while read -r name overrides; do
                [ -n "$name" ] || continue
                python3 -m dreamgs.cli bench --methods dreamfusion --seeds ${SEEDS:-1} --mode text --device cuda \
                    --jobs ${JOBS:-9} --no-baselines --out /tmp/reports/df-$name $overrides \
                    --assets ${ASSETS:-dev /tmp/dm/cart.glb /tmp/dm/robot.glb /tmp/dm/can.glb} &
            done <<< "${VARIANTS:-default}"
            wait
            for d in /tmp/reports/df-*/; do
                python3 benchmarks/nerf_orientation.py "$d" --jsonl "$d/facing.jsonl" &
                if [ -n "${THRESHOLDS:-}" ]; then  # and stage 2 again at these nerf.mesh_threshold values
                    python3 benchmarks/nerf_threshold.py "$d" --thresholds $THRESHOLDS --device cuda \
                        --out "$d/threshold.jsonl" > /dev/null &
                fi
            done
            wait ;;
        magic3d)  # issue 17: Magic3D's fine step at 512 px (full-size random SD 2.1-base) and marching tetrahedra
            [ -f $MODELS/sd/model_index.json ] || python3 benchmarks/full_size_models.py --out $MODELS/sd --which sd --device cuda
            for r in 64 128; do
                python3 benchmarks/magic3d_parts.py --timing --device cuda --preset full prior.kind=sd \
                    prior.model=$MODELS/sd magic3d.grid_resolution=$r
            done
            python3 benchmarks/magic3d_parts.py --timing --device cuda --preset full magic3d.grid_resolution=128 ;;
        magic3d-run)  # issue 17: the whole magic3d run on the unseen kettle (the bar's command), timed, then scored
            python3 benchmarks/unseen_meshes.py --out /tmp/u17
            t0=$(date +%s)
            python3 -m dreamgs.cli text "a held-out object" --method magic3d --prior oracle:/tmp/u17/kettle.glb \
                --seed 0 --quiet --out /tmp/m3run device=cuda
            echo "magic3d run: $(( $(date +%s) - t0 )) s wall"
            python3 -m dreamgs.cli bench --methods magic3d --assets /tmp/u17/kettle.glb --seeds 1 --mode text \
                --device cuda --no-baselines --out /tmp/reports/magic3d-kettle ;;
        bench-magic3d)  # issue 17: magic3d beside dreamgaussian on the test split at CI size (text), 3 seeds
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            python3 -m dreamgs.cli bench --methods ${METHODS:-dreamgaussian,magic3d} --assets test --seeds ${SEEDS:-3} \
                --mode text --device cuda --jobs ${JOBS:-8} --config benchmarks/ci_size.yaml \
                --out /tmp/reports/bench-magic3d ;;
        bench-ci)  # the test split at CI size, text and image (MODES; docs/quality.md)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            for m in ${MODES:-text image}; do
                python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-3} --mode $m --device cuda --jobs ${JOBS:-8} \
                    --config benchmarks/ci_size.yaml --out /tmp/reports/bench-ci-$m
            done ;;
        bench-hard)  # the hard settings: Janus-prone text, image mode that must infer (MODES)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            for m in ${MODES:-text image}; do
                python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-3} --mode $m --setting hard --device cuda \
                    --jobs ${JOBS:-8} --config benchmarks/ci_size.yaml --out /tmp/reports/bench-hard-$m
            done ;;
        bench-hard-mv)  # the Janus-prone text setting with the joint 4-view oracle (issue 15's bar)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-3} --mode text --setting hard --device cuda \
                --jobs ${JOBS:-8} --config benchmarks/ci_size.yaml --out /tmp/reports/bench-hard-mv-text \
                prior.kind=oracle-mv stage1.batch_size=1 ;;
        bench-full)  # the default command's sizes: preset full against preset preview, test split (MODES,
            # PRESETS; all at once, JOBS runs each)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for m in ${MODES:-text image}; do for p in ${PRESETS:-full preview}; do
                python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-3} --mode $m --device cuda --jobs ${JOBS:-8} \
                    --no-baselines --out /tmp/reports/bench-$p-$m preset=$p export.video=false &
            done; done
            wait ;;
        preview-dev)  # dev split: the preview preset's scaled schedule, with and without a smaller
            # Gaussian cap, against its earlier 128 px everywhere (MODES)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            for m in ${MODES:-text image}; do
                for v in "scaled" "scaled-6k densify.max_gaussians=6000" \
                         "128 stage1.render_sizes=[128,128,128] stage1.ref_size=128"; do
                    set -- $v
                    python3 -m dreamgs.cli bench --assets dev --seeds ${SEEDS:-1} --mode $m --device cuda \
                        --jobs ${JOBS:-8} --no-baselines --out /tmp/reports/preview-dev-$m-$1 preset=preview \
                        export.video=false "${@:2}"
                done
            done ;;
        preview-ablate)  # dev split: preview with one of its size groups set back to full (MODES x VARIANTS,
            # all at once, JOBS runs each)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for m in ${MODES:-text image}; do for v in ${VARIANTS:-preview gaussians renders texture full}; do
                case $v in
                    preview|full) o="preset=$v" ;;
                    cap*) o="preset=preview densify.max_gaussians=${v#cap}" ;;
                    gaussians) o="preset=preview densify.max_gaussians=1000000" ;;
                    renders) o="preset=preview stage1.render_sizes=[128,256,512] stage1.ref_size=256 stage2.render_size=512" ;;
                    texture) o="preset=preview texture.bake_views=26 texture.bake_resolution=512 texture.size=1024 mesh.target_faces=100000" ;;
                esac
                python3 -m dreamgs.cli bench --assets dev --seeds ${SEEDS:-2} --mode $m --device cuda \
                    --jobs ${JOBS:-6} --no-baselines --out /tmp/reports/ablate-$m-$v export.video=false $o &
            done; done
            wait ;;
        preview-cap)  # issue 14: the preview's Gaussian cap CAP on dev (seed 0), adopted if its masked PSNR is within
            # 0.5 dB of preset=full's dev figures (FULL_DEV="text image", measured) in both modes, else the
            # uncapped preview (measured on dev too); then the test split with the chosen cap
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            VARIANTS="cap$CAP" SEEDS=1 JOBS=6 run_step preview-ablate
            cap=$(python3 - $FULL_DEV <<PY
import json, statistics, sys
full = dict(zip(("text", "image"), map(float, sys.argv[1:])))
ok = True
for m in full:
    dev = statistics.mean(r["psnr_masked"] for r in json.load(open(f"/tmp/reports/ablate-{m}-cap$CAP/bench.json"))["results"])
    print(f"dev {m}: cap $CAP {dev:.2f} dB, full {full[m]:.2f} dB", file=sys.stderr)
    ok = ok and dev >= full[m] - 0.5
print($CAP if ok else 1000000)
PY
)
            echo "chosen cap: $cap"
            for m in ${MODES:-text image}; do
                python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-2} --mode $m --device cuda --jobs 16 \
                    --no-baselines --out /tmp/reports/bench-preview$cap-$m preset=preview densify.max_gaussians=$cap \
                    export.video=false &
            done
            wait ;;
        gsgen-parts)  # issue 19: GSGen's parts on stage 1 (point prior, compactness, a noisy point start, the
            # recipe) against the ball, test split at CI size, one process per asset and seed (ASSETS, SEEDS_LIST,
            # VARIANTS; OVERRIDES for every run)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            mkdir -p /tmp/reports/gsgen-parts
            for a in ${ASSETS:-gen:0 gen:1 gen:2 gen:3 gen:4 gen:5 gen:6 gen:7}; do for s in ${SEEDS_LIST:-0}; do
                python3 benchmarks/gsgen_parts.py --assets $a --seed $s --device cuda ${VARIANTS:+--variants $VARIANTS} \
                    --out /tmp/reports/gsgen-parts/gsgen-parts-${a/:/}-s$s.jsonl ${OVERRIDES:-} &
            done; done
            wait ;;
        gsgen-starts)  # issue 19: the start bars on the test split at CI size, seed 0, one process per asset and
            # kind: a noisy surface cloud (the point starts' defaults, and 5x the colour rate), the silhouette
            # start in image mode, the point prior at t < 0.1 T with weight 1; the ball rows are gsgen-parts'
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            # (each kind in its own folder: gsgen_parts.py writes its noisy cloud beside its output)
            for a in ${ASSETS:-gen:0 gen:1 gen:2 gen:3 gen:4 gen:5 gen:6 gen:7}; do
                n=${a/:/}
                python3 benchmarks/gsgen_parts.py --assets $a --device cuda --variants noisy_points \
                    noisy_points_colour5 --out /tmp/reports/gsgen-starts/cloud/$n.jsonl &
                python3 benchmarks/gsgen_parts.py --assets $a --device cuda --mode image --variants ball silhouette \
                    --out /tmp/reports/gsgen-starts/image/$n.jsonl &
                python3 benchmarks/gsgen_parts.py --assets $a --device cuda --variants points_all_t01 \
                    --out /tmp/reports/gsgen-starts/prior-w1/$n.jsonl points_prior.weight=1.0 &
            done
            wait ;;
        gsgen-starts-full)  # issue 19: noisy-surface starts (grey and coloured, each trained as the point starts
            # are and as the ball is) against the ball at the default sizes (500 steps, 128-512 px), test split,
            # SEEDS_LIST (default 0 1 2), VARIANTS, OVERRIDES for every run, one process per asset and seed (each in
            # its own folder: the clouds are written beside); the gsplat step first (the extension is built once)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for a in ${ASSETS:-gen:0 gen:1 gen:2 gen:3 gen:4 gen:5 gen:6 gen:7}; do for s in ${SEEDS_LIST:-0 1 2}; do
                python3 benchmarks/gsgen_parts.py --assets $a --seed $s --device cuda --config default --variants \
                    ${VARIANTS:-ball noisy_points noisy_points_ball_rates coloured_points coloured_points_ball_rates} \
                    --out /tmp/reports/gsgen-starts-full/${a/:/}/s$s/runs.jsonl ${OVERRIDES:-} &
            done; done
            wait ;;
        image-bar-steps)  # issue 19: steps to the image-mode bar (24 dB) from the ball and the silhouette start,
            # tests/test_quality.py's image-mode stage 1, test split, SEEDS_LIST (default 0 1 2), one process per asset
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for a in ${ASSETS:-gen:0 gen:1 gen:2 gen:3 gen:4 gen:5 gen:6 gen:7}; do
                python3 benchmarks/image_bar_steps.py --assets $a --seeds ${SEEDS_LIST:-0 1 2} --device cuda \
                    --out /tmp/reports/image-bar-steps/${a/:/}.jsonl &
            done
            wait ;;
        bench-gsgen)  # issue 19: GSGen's recipe through the whole bench (stage 2 on, its mesh scored), test split
            # at CI size, beside bench-ci's DreamGaussian rows (MODES)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            for m in ${MODES:-text}; do
                python3 -m dreamgs.cli bench --methods gsgen --assets test --seeds ${SEEDS:-3} --mode $m --device cuda \
                    --jobs ${JOBS:-8} --config benchmarks/gsgen_ci_size.yaml --out /tmp/reports/bench-gsgen-$m
            done ;;
        antialias)  # issue 17: the antialiased torch mesh raster at 512² per step (render + backward, learnable
            # vertices and texture), beside the plain raster, 20k and 100k faces, 1 and 4 views
            python3 benchmarks/antialias_speed.py --device cuda --size 512 ;;
        bench-geometry)  # issue 17: stage2.geometry on and off (GEOMETRY), text, test split at CI size, 3 seeds;
            # both at once, JOBS runs each
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
            for g in ${GEOMETRY:-false true}; do
                python3 -m dreamgs.cli bench --assets test --seeds ${SEEDS:-3} --mode text --device cuda --jobs ${JOBS:-8} \
                    --config benchmarks/ci_size.yaml --out /tmp/reports/bench-geometry-$g stage2.geometry=$g &
            done
            wait ;;
        fidelity)
            export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
            python3 benchmarks/fidelity.py --items ${ITEMS:-1,2,3,4,5,6,7,8} --device cuda --jobs ${JOBS:-8} --out /tmp/reports/fidelity ;;
        *)
            echo "unknown step $1"; return 2 ;;
    esac
}

pack_reports() {  # reports only: the run folders stay behind
    [ -d /tmp/reports ] || return 0
    (cd /tmp/reports && find . -name 'bench.*' -o -name 'fidelity.*' -o -name '*.jsonl' | tar czf "$OUT/.reports.tar.gz" -T - \
        && mv "$OUT/.reports.tar.gz" "$OUT/reports.tar.gz")
}

for step in "$@"; do
    echo "=== $step ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    (while sleep 15; do pack_reports; done) &  # what has finished comes back even if the call times out
    packer=$!
    run_step "$step" 2>&1 | tee "$OUT/$step.log" | grep -v -E "it/s\]|s/it\]|Loading weights|Writing model shards"
    echo "=== $step: exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
    kill $packer 2>/dev/null
    pack_reports
done
