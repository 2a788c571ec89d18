#!/usr/bin/env bash
# Prepared GPU passes, for a lent CUDA machine with little time on it. Each step has its own time
# limit and log; a failing step does not stop the next (and the benchmark scripts report a failing
# case or variant in its row and go on).
#
#   PASS=kernels  (default) issue 7: the Triton-vs-torch tests on the device, then the kernel and model tables
#   PASS=imagenet issue 20: what ImageNet costs - training images/s and peak memory (eager, then compiled),
#                 a short real train_imagenet.py run, loader workers per GPU, the GPU-hours table
#
#   PASS=imagenet OUT=gpu_logs BUDGET_S=540 bash benchmarks/gpu_session.sh
#   PASS=imagenet CPU_CHECK=1 OUT=/tmp/rehearsal BUDGET_S=1200 bash benchmarks/gpu_session.sh  # on a CPU: tiny sizes
# BUDGET_S bounds the whole pass: a step never runs past it, and a step that would get under
# 30 s is skipped. STEPS=name,name runs only those steps (e.g. the ones a cut-off pass left).
# CPU_CHECK=1 (imagenet pass) runs every step on the CPU at tiny sizes, so that a typo dies there
# and not on the GPU. Wheels under .whl/ (e.g. the timm this project pins) go to /tmp/site first.
set -u
PASS=${PASS:-kernels}
STEPS=${STEPS:-}
CPU_CHECK=${CPU_CHECK:-0}
LIMIT_SCALE=1  # the CPU check stretches every step's limit (a CPU is slower than the GPU at the tiny sizes too)
[ "$CPU_CHECK" = 1 ] && LIMIT_SCALE=8
DEADLINE=$(($(date +%s) + ${BUDGET_S:-540}))
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
fi
SUMMARY="$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: runs it with a limit, logs to $OUT/NAME.log, tails the log
    local name=$1 limit=$2 start rc left
    shift 2
    if [ -n "$STEPS" ] && [[ ",$STEPS," != *",$name,"* ]]; then
        return 0
    fi
    limit=$((limit * LIMIT_SCALE))
    start=$(date +%s)
    left=$((DEADLINE - start - 5))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, ${left} s left of the budget" | tee -a "$SUMMARY"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $(($(date +%s) - start)) s (limit $limit)" | tee -a "$SUMMARY"
    tail -n 30 "$OUT/$name.log"
    return $rc
}

{
    echo "pass $PASS${STEPS:+, steps $STEPS}, budget ${BUDGET_S:-540} s$([ "$CPU_CHECK" = 1 ] && echo ', CPU check')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import sys, torch, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'timm', timm.__version__)"
    python3 -c "import triton; print('triton', triton.__version__)"
} 2>&1 | tee -a "$SUMMARY"

if [ "$PASS" = imagenet ]; then
    # Device and sizes: the GPU run's, or tiny ones on the CPU (CPU_CHECK=1) to rehearse every command.
    DEV=(--device cuda); TINY=(); QUICK=(); RUN=(--workers "$(($(nproc) > 2 ? $(nproc) - 2 : 1))")
    PIPE=(--workers 0,1,2,4,8 --batch-size 128 --rounds 2 --batches-per-worker 3 --models kan_vgg11_gram,resnet50)
    if [ "$CPU_CHECK" = 1 ]; then
        # (last on the throughput lines, so that they override the GPU's batches and child timeouts)
        DEV=(--device cpu); TINY=(--tiny --compile-backend eager --child-timeout 300); QUICK=(--quick); RUN=(--tiny)
        PIPE=()
    fi
    TP=(python3 benchmarks/bench_train_throughput.py "${DEV[@]}" --json "$OUT/throughput.jsonl")
    COST=(python3 benchmarks/imagenet_cost.py "$OUT/throughput.jsonl" "$OUT/train_run.jsonl" --markdown "$OUT/imagenet_cost.md")
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # the synthetic data is local; the machine has no network
    # Most important first: eager step images/s of every model at both batches, then the real loop
    # (and a first cost table), then compiled steps (the pretrained tags' architectures first),
    # the loader's workers per GPU, the other compiled batch, and the table again.
    step throughput_eager 200 "${TP[@]}" --compile off --batches 64,128 --warmup 3 --steps 5 --child-timeout 60 \
        "${TINY[@]}"
    step train_run 150 python3 benchmarks/imagenet_train_run.py "${DEV[@]}" "${RUN[@]}" --json "$OUT/train_run.jsonl"
    step cost_table 30 "${COST[@]}"
    step compile_128 200 "${TP[@]}" --compile on --batches 128 --child-timeout 110 \
        --models kan_vgg11_gram,kan_vgg11_bottleneck_gram,kan_vgg11_slim_gram,resnet50,kan_resnet18_gram,resnet18,kan_resnet50_gram "${TINY[@]}"
    step data_pipeline 120 python3 benchmarks/bench_data_pipeline.py "${DEV[@]}" "${QUICK[@]}" "${PIPE[@]}" \
        --json "$OUT/data_pipeline.json"
    step compile_64 200 "${TP[@]}" --compile on --batches 64 --child-timeout 110 \
        --models kan_vgg11_gram,kan_vgg11_bottleneck_gram,kan_vgg11_slim_gram,resnet50,kan_resnet18_gram,resnet18,kan_resnet50_gram "${TINY[@]}"
    step cost_table_final 30 "${COST[@]}"
    exit 0
fi

# The tests include the kernels not yet run on a GPU (bspline, relu); where they all pass, the benchmarks
# use those kernels too (KAN_ZOO_TRITON=all), else only the ones checked on a device before.
if step triton_tests 150 python3 -m pytest -q -p no:cacheprovider -p no:xdist tests/layers/test_triton_basis.py; then
    export KAN_ZOO_TRITON=all
fi
step wavelet_tests 40 python3 -m pytest -q -p no:cacheprovider -p no:xdist tests/layers/test_fused_wavelet.py -k cuda
# Most important first: the issue's layer table, its model table, the kernels alone, then mixed precision.
step bench_layers 150 python3 benchmarks/bench_layers.py --device cuda --repeats 3 --iters 10 --child-timeout 45
step bench_models 160 python3 benchmarks/bench_models.py --device cuda --batch 64 --iters 5 --child-timeout 60
step bench_triton 70 python3 benchmarks/bench_triton.py --iters 30
step bench_layers_amp 90 python3 benchmarks/bench_layers.py --device cuda --amp --repeats 3 --iters 10 \
    --child-timeout 45 --bases gram-d3,gram-d5,chebyshev,bernstein,rbf,bspline,bottleneck-gram
step bench_triton_bf16 40 python3 benchmarks/bench_triton.py --dtype bfloat16 --batches 64 --iters 30
step bench_models_amp 150 python3 benchmarks/bench_models.py --device cuda --amp --batch 64 --iters 5 \
    --child-timeout 60 --models resnet18,kan_vgg11_gram,kan_resnet18_gram
exit 0
