#!/usr/bin/env bash
# The GPU checks of issue 7 as one prepared pass, for a lent CUDA machine with little time on it:
# the Triton-vs-torch tests on the real device, then the benchmark tables, most important first.
# Each step has its own time limit and log; a failing step does not stop the next (and the benchmark
# scripts report a failing case or variant in its row and go on).
#
#   OUT=gpu_logs BUDGET_S=540 bash benchmarks/gpu_session.sh
# BUDGET_S bounds the whole pass: a step never runs past it, and a step that would get under
# 30 s is skipped. Wheels under .whl/ (e.g. the timm this project pins) go to /tmp/site first.
set -u
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
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import sys, torch, triton, timm; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
} 2>&1 | tee "$SUMMARY"

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
