#!/usr/bin/env bash
# The GPU check, one command, from the checkout (installs nothing; needs torch + triton):
#
#   benchmarks/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
#   LOG_DIR=/some/dir benchmarks/gpu_check.sh   # keep each step's full log there
#   RESULTS_DIR=/some/dir benchmarks/gpu_check.sh   # write the JSON (and PNG) there, not benchmarks/results
#
# On the device tool (which returns at most 8 files from $OUT), one call:
#   RESULTS_DIR=$OUT LOG_DIR=/tmp/gpu_logs bash benchmarks/gpu_check.sh; tar czf $OUT/logs.tgz -C /tmp/gpu_logs .
#
# Steps in priority order, each under its own `timeout`, all within TOTAL_S seconds (default 520; the
# device tool allows 600 s a command): tests and bench take about 6 minutes, train and AOTI their own slots:
# 1. the GPU tests (`pytest -m gpu` on the files that hold them), at most TESTS_S seconds (default 120;
#    each test is named as it runs, so a timeout shows which one was running);
# 2. `python -m lsmha.bench.gpu`: stock eager fp32 / eager bf16 / torch.compile reduce-overhead /
#    compiled members in one multi-stream graph, against the cuda-graph engine, for CCT-7/3x1 and
#    the Table 6 (5) and Table 7 (10) committees at batches 1, 8, 64, 256, then the engine's levers
#    at batch 1; jobs for the issue's targets run first. It gets what is left after the tests
#    minus TRAIN_S and AOTI_S; it starts no new job past its deadline (30 s before its limit), and at the limit
#    (SIGTERM) it drops the running job and still writes its JSON and tables;
# 3. training throughput (`lsmha-bench train`: model-only step vs the augmented pipeline, bf16) for
#    CCT-7/3x1 and CCT-2/3x2, at most TRAIN_S seconds (default 45);
# 4. AOTInductor CUDA packages at batch 1 next to the cuda-graph backend (`lsmha-bench latency
#    --backend cuda-graph,aoti`): CCT-7/3x1 and AOTI_COMMITTEE (default two CCT-2/3x5, 4 blocks: two
#    AOTI builds must fit), at most AOTI_S seconds (default 120), only if at least AOTI_MIN_S (default
#    60) are left and a CUDA toolkit is found (AOTInductor compiles its C++ wrapper against the CUDA
#    headers);
# 5. a short table last: each step's status, then the bench summary and the issue's targets.
# JSON in RESULTS_DIR (default benchmarks/results): <card>_torch-<version>_<date>.json (the bench) and its
# plot (.png, where matplotlib is installed), train-throughput_<date>.json, aoti-vs-cuda-graph_<date>.json.
#
# Exit: 0 tests passed, the bench, train and AOTI steps ran (AOTI may be skipped for time or toolkit);
#       1 otherwise; 3 no CUDA device: nothing was measured (GPU tests skipped with their reason).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # logs stay complete when a step is killed
TOTAL_S=${TOTAL_S:-520}
TESTS_S=${TESTS_S:-120}
TRAIN_S=${TRAIN_S:-45}
AOTI_S=${AOTI_S:-120}
AOTI_COMMITTEE=${AOTI_COMMITTEE:-cct_2_3x5,cct_2_3x5:heads=4}
AOTI_MIN_S=${AOTI_MIN_S:-60}
KILL_S=10  # SIGKILL this long after a step's SIGTERM, should it not stop
RESULTS_DIR=${RESULTS_DIR:-benchmarks/results}
mkdir -p "$RESULTS_DIR"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
start=$SECONDS
if [ -n "${LOG_DIR:-}" ]; then
    log=$LOG_DIR
    mkdir -p "$log"
else
    log=$(mktemp -d)
    trap 'rm -rf "$log"' EXIT
fi
stamp=$(date +%Y%m%d)

# one interpreter start: versions, the device, the modules the steps import, a CUDA toolkit for AOTI
"$PYTHON" - <<'EOF' 2>&1 | tee "$log/env.txt"
import importlib.util
import sys

import torch

print(f"== gpu_check: python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
missing = [m for m in ("pytest", "numpy", "tqdm", "safetensors", "triton", "torchvision", "onnx")
           if importlib.util.find_spec(m) is None]
print(f"missing modules: {', '.join(missing) or 'none'}")
try:
    from torch.utils.cpp_extension import CUDA_HOME
except Exception as err:  # noqa: BLE001 - only a hint for step 4
    CUDA_HOME = None
    print(f"torch.utils.cpp_extension: {err}")
print(f"cuda_home={CUDA_HOME or ''}")
print(f"cuda={int(torch.cuda.is_available())}")
EOF
cuda=$(sed -n 's/^cuda=//p' "$log/env.txt" | tail -n 1)
cuda=${cuda:-0}
cuda_home=$(sed -n 's/^cuda_home=//p' "$log/env.txt" | tail -n 1)
command -v nvidia-smi >/dev/null && nvidia-smi -L

echo "== 1/4 GPU tests: pytest -m gpu (at most ${TESTS_S} s)"
# only the files holding GPU tests: a missing optional dependency of another test file (hypothesis,
# httpx, ...) must not abort the collection
gpu_tests=$(grep -l 'pytest.mark.gpu' tests/test_*.py)
# shellcheck disable=SC2086  # one file per word
timeout -k "$KILL_S" "$TESTS_S" "$PYTHON" -m pytest -v -m gpu -p no:cacheprovider --continue-on-collection-errors \
    --durations=8 $gpu_tests 2>&1 | tee "$log/tests.txt"
tests_rc=${PIPESTATUS[0]}
tests_line=$(grep -E '(passed|failed|skipped|deselected|error)' "$log/tests.txt" | tail -n 1 | sed -E 's/^=+ *//; s/ *=+$//')
# pytest: 0 passed, 5 none collected (all deselected); 124/137 = timeout
case $tests_rc in
    0 | 5) tests_status=ok ;;
    124 | 137)
        tests_status="FAILED (timed out after ${TESTS_S} s)"
        running=$(tail -c 400 "$log/tests.txt" | grep -oE 'tests/[^ ]+::[^ ]+' | tail -n 1)
        tests_line="$(grep -c ' PASSED' "$log/tests.txt") passed, $(grep -cE ' (FAILED|ERROR)' "$log/tests.txt") failed before; running: ${running:-?}"
        ;;
    *) tests_status="FAILED (exit $tests_rc)" ;;
esac
[ "$cuda" = 1 ] || tests_status="skipped (no CUDA device)"

bench_status="skipped (no CUDA device)"
bench_rc=3
if [ "$cuda" = 1 ]; then
    left=$((TOTAL_S - (SECONDS - start) - TRAIN_S - AOTI_S - 3 * KILL_S))
    deadline=$((left - 30))  # a job started later could rarely finish; SIGTERM at $left drops it
    if [ "$left" -lt 60 ]; then
        bench_status="skipped (only ${left} s left of TOTAL_S=${TOTAL_S})"
        echo "== 2/4 bench: $bench_status"
    else
        echo "== 2/4 bench: python -m lsmha.bench.gpu --deadline $deadline (hard limit ${left} s)"
        timeout -k "$KILL_S" "$left" "$PYTHON" -m lsmha.bench.gpu --deadline "$deadline" --no-progress \
            --results-dir "$RESULTS_DIR" 2>&1 | tee "$log/bench.txt"
        bench_rc=${PIPESTATUS[0]}
        bench_json=$(sed -n 's/^wrote \(.*\.json\)$/\1/p' "$log/bench.txt" | tail -n 1)
        if [ -n "$bench_json" ] && [ -f "$bench_json" ]; then  # a picture of the rows; never fails the check
            timeout -k "$KILL_S" 30 "$PYTHON" -m lsmha.bench.cli plot "$bench_json" 2>&1 | tail -n 1
        fi
        case $bench_rc in
            0) bench_status=ok ;;
            1) bench_status="FAILED (a job failed, the others ran)" ;;
            124) bench_status="stopped at the ${left} s limit (partial)" ;;
            137) bench_status="KILLED at the ${left} s limit" ;;
            *) bench_status="FAILED (exit $bench_rc)" ;;
        esac
    fi
else
    echo "== 2/4 bench: skipped, torch sees no CUDA device"
fi

aoti_status="skipped (no CUDA device)"
train_status="skipped (no CUDA device)"
if [ "$cuda" = 1 ]; then
    echo "== 3/4 training throughput (at most ${TRAIN_S} s)"
    timeout -k "$KILL_S" "$TRAIN_S" "$PYTHON" -m lsmha.bench.cli train --device cuda --steps 10 --warmup 3 \
        --json "$RESULTS_DIR/train-throughput_${stamp}.json" 2>&1 | tee "$log/train.txt"
    case ${PIPESTATUS[0]} in 0) train_status=ok ;; 124 | 137) train_status="FAILED (timed out)" ;; *) train_status=FAILED ;; esac
    aoti_left=$((TOTAL_S - (SECONDS - start) - KILL_S))
    aoti_s=$((aoti_left < AOTI_S ? aoti_left : AOTI_S))
    if [ -z "$cuda_home" ]; then
        aoti_status="skipped (no CUDA toolkit: CUDA_HOME unset, no nvcc, no /usr/local/cuda)"
        echo "== 4/4 AOTInductor: $aoti_status"
    elif [ "$aoti_s" -lt "$AOTI_MIN_S" ]; then
        aoti_status="skipped (${aoti_s} s left < AOTI_MIN_S=${AOTI_MIN_S})"
        echo "== 4/4 AOTInductor: $aoti_status"
    else
        echo "== 4/4 AOTInductor CUDA package vs cuda-graph, batch 1 (at most ${aoti_s} s)"
        timeout -k "$KILL_S" "$aoti_s" "$PYTHON" -m lsmha.bench.cli latency --device cuda --backend cuda-graph,aoti \
            --batch 1 --committee "$AOTI_COMMITTEE" --budget 0.6 --no-progress \
            --json "$RESULTS_DIR/aoti-vs-cuda-graph_${stamp}.json" 2>&1 | tee "$log/aoti.txt"
        case ${PIPESTATUS[0]} in 0) aoti_status=ok ;; 124 | 137) aoti_status="FAILED (timed out)" ;; *) aoti_status=FAILED ;; esac
    fi
fi

echo
echo "== gpu_check summary ($((SECONDS - start)) s)"
printf '%-10s %-42s %s\n' step status detail
printf '%-10s %-42s %s\n' "gpu tests" "$tests_status" "${tests_line:-}"
printf '%-10s %-42s %s\n' bench "$bench_status" "$(grep -E '^(wrote|results:) ' "$log/bench.txt" 2>/dev/null | tail -n 1)"
printf '%-10s %-42s\n' train "$train_status"
printf '%-10s %-42s\n' aoti "$aoti_status"
grep -A3 -E '^ +model +device' "$log/train.txt" 2>/dev/null
grep -A5 -E '^ +model +members' "$log/aoti.txt" 2>/dev/null
if grep -q '^summary ' "$log/bench.txt" 2>/dev/null; then  # also after a failed job or the hard limit
    sed -n '/^summary /,/^wrote /p' "$log/bench.txt"
fi

if [ "$cuda" != 1 ]; then
    echo "exit 3: no CUDA device, nothing measured (run this on a GPU machine)"
    exit 3
fi
case "$tests_status|$bench_status|$train_status|$aoti_status" in
    "ok|ok|ok|ok" | "ok|ok|ok|skipped"*) exit 0 ;;
    *) exit 1 ;;
esac
