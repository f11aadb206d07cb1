#!/usr/bin/env bash
# The GPU check, one command, from the checkout (installs nothing; needs torch + triton):
#
#   benchmarks/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#
# 1. the GPU tests (`pytest -m gpu`), at most TESTS_S seconds (default 120);
# 2. `python -m lsmha.bench.gpu`: stock eager fp32 / eager bf16 / torch.compile reduce-overhead /
#    compiled members in one multi-stream graph, against the cuda-graph engine, for CCT-7/3x1 and
#    the Table 6 (5) and Table 7 (10) committees at batches 1, 8, 64, 256, then the engine's levers
#    at batch 1; it starts no new job past its deadline, so the whole check stays under TOTAL_S
#    seconds (default 350);
# 3. the AOTInductor CUDA package of the Table 6 committee at batch 1 next to the cuda-graph
#    backend (`lsmha-bench latency --backend cuda-graph,aoti`), at most AOTI_S seconds (default 90);
# 4. training throughput (`lsmha-bench train`: model-only step vs the augmented pipeline, bf16) for
#    CCT-7/3x1 and CCT-2/3x2, at most TRAIN_S seconds (default 45);
# 5. a short table last: each step's status, then the bench summary and the issue's targets.
# JSON: benchmarks/results/<card>_torch-<version>_<date>.json.
#
# Exit: 0 tests passed and the bench ran; 1 tests failed or the bench failed;
#       3 no CUDA device: nothing was measured (GPU tests skipped with their reason).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TOTAL_S=${TOTAL_S:-350}
TESTS_S=${TESTS_S:-100}
AOTI_S=${AOTI_S:-90}
TRAIN_S=${TRAIN_S:-45}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
start=$SECONDS
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

echo "== gpu_check: $($PYTHON -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")')"
command -v nvidia-smi >/dev/null && nvidia-smi -L
cuda=$($PYTHON -c 'import torch; print(int(torch.cuda.is_available()))')

echo "== 1/4 GPU tests: pytest -m gpu"
timeout "$TESTS_S" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$log/tests.txt"
tests_rc=${PIPESTATUS[0]}
tests_line=$(grep -E '(passed|failed|skipped|deselected|error)' "$log/tests.txt" | tail -n 1)
# pytest: 0 passed, 5 none collected (all deselected); 124 = timeout
case $tests_rc in
    0 | 5) tests_status=ok ;;
    124) tests_status="FAILED (timed out after ${TESTS_S} s)" ;;
    *) tests_status=FAILED ;;
esac
[ "$cuda" = 1 ] || tests_status="skipped (no CUDA device)"

bench_status="skipped (no CUDA device)"
bench_rc=3
if [ "$cuda" = 1 ]; then
    left=$((TOTAL_S - (SECONDS - start) - AOTI_S - TRAIN_S))
    deadline=$((left - 90))  # the last job started may still compile and run
    [ "$deadline" -lt 30 ] && deadline=30
    echo "== 2/4 bench: python -m lsmha.bench.gpu --deadline $deadline (hard limit ${left} s)"
    timeout "$left" "$PYTHON" -m lsmha.bench.gpu --deadline "$deadline" --no-progress 2>&1 | tee "$log/bench.txt"
    bench_rc=${PIPESTATUS[0]}
    case $bench_rc in
        0) bench_status=ok ;;
        124) bench_status="FAILED (killed at the ${TOTAL_S} s limit)" ;;
        *) bench_status="FAILED (exit $bench_rc)" ;;
    esac
else
    echo "== 2/4 bench: skipped, torch sees no CUDA device"
fi

aoti_status="skipped (no CUDA device)"
train_status="skipped (no CUDA device)"
if [ "$cuda" = 1 ]; then
    stamp=$(date +%Y%m%d)
    echo "== 3/4 AOTInductor CUDA package vs cuda-graph, batch 1 (at most ${AOTI_S} s)"
    timeout "$AOTI_S" "$PYTHON" -m lsmha.bench.cli latency --device cuda --backend cuda-graph,aoti --batch 1 \
        --committee table6:5 --no-progress --json "benchmarks/results/aoti-vs-cuda-graph_${stamp}.json" \
        2>&1 | tee "$log/aoti.txt"
    case ${PIPESTATUS[0]} in 0) aoti_status=ok ;; 124) aoti_status="FAILED (timed out)" ;; *) aoti_status=FAILED ;; esac
    echo "== 4/4 training throughput (at most ${TRAIN_S} s)"
    timeout "$TRAIN_S" "$PYTHON" -m lsmha.bench.cli train --device cuda --steps 10 --warmup 3 \
        --json "benchmarks/results/train-throughput_${stamp}.json" 2>&1 | tee "$log/train.txt"
    case ${PIPESTATUS[0]} in 0) train_status=ok ;; 124) train_status="FAILED (timed out)" ;; *) train_status=FAILED ;; esac
fi

echo
echo "== gpu_check summary ($((SECONDS - start)) s)"
printf '%-10s %-40s %s\n' step status detail
printf '%-10s %-40s %s\n' "gpu tests" "$tests_status" "${tests_line:-}"
printf '%-10s %-40s %s\n' bench "$bench_status" "$(grep -E '^wrote ' "$log/bench.txt" 2>/dev/null | tail -n 1)"
printf '%-10s %-40s\n' aoti "$aoti_status"
printf '%-10s %-40s\n' train "$train_status"
grep -A4 -E '^ +model +members' "$log/aoti.txt" 2>/dev/null
grep -A3 -E '^ +model +device' "$log/train.txt" 2>/dev/null
if [ "$bench_rc" = 0 ]; then
    sed -n '/^summary /,/^wrote /p' "$log/bench.txt"
fi

if [ "$cuda" != 1 ]; then
    echo "exit 3: no CUDA device, nothing measured (run this on a GPU machine)"
    exit 3
fi
case "$tests_status $bench_status $aoti_status $train_status" in
    "ok ok ok ok") exit 0 ;;
    *) exit 1 ;;
esac
