#!/usr/bin/env bash
# The GPU check, one command, from the checkout (installs nothing; needs torch + triton):
#
#   benchmarks/gpu_check.sh                         # PYTHON=/path/to/python to choose the interpreter
#   RESULTS_DIR=/some/dir benchmarks/gpu_check.sh   # results and the log there, not benchmarks/results
#   AOTI=1 benchmarks/gpu_check.sh                  # also the AOTInductor step (opt-in, see 4.)
#
# Everything the steps print goes to the screen and to ONE log, $RESULTS_DIR/gpu_check_<date>.log,
# line by line, so a run killed from outside keeps what it printed. No CUDA device: exit 3 at once,
# with no log and nothing written under $RESULTS_DIR (nothing was measured).
#
# Steps in priority order, all within TOTAL_S seconds (default 420):
# 1. `python -m lsmha.bench.gpu_cli` (lsmha-bench gpu): the fair stock baselines (bf16 weights, compiled,
#    CUDA graphs; a committee's members on their own streams) and the cuda-graph engine for the rows
#    of the committee/baseline ratios first, interleaved over 3 rounds; then the other batches, eager
#    bf16, and the engine's levers at batch 1. It gets what TOTAL_S leaves after the reserves of steps
#    2 and 3; a job starts only if its estimate fits (`lsmha-bench gpu --plan` shows them); at the hard
#    limit (SIGTERM) it drops the running job and still writes its JSON (rewritten after every row);
# 2. the GPU tests (`pytest -m gpu` on the files holding them, AOTInductor and analysis files left
#    out), at most TESTS_S seconds (default 80), each test at most TEST_TIMEOUT_S (default 60);
# 3. training throughput (`lsmha-bench train`, model-only step vs the augmented pipeline, bf16) for
#    CCT-7/3x1 and CCT-2/3x2, at most TRAIN_S seconds (default 20), if that much is left;
# 4. with AOTI=1 only: AOTInductor CUDA packages at batch 1 next to the cuda-graph engine (`lsmha-bench
#    latency --backend cuda-graph,aoti`), in what is left (40-70 s per package build). The package is
#    fp32 and its calls include host copies, so its rows do not compare with the bench's bf16 rows;
# 5. a short table last: each step's status, then the bench's committee/baseline ratios.
# JSON in RESULTS_DIR: <card>_torch-<version>_<date>.json (the bench), its plot (.png, where matplotlib
# is installed), train-throughput_<date>.json, aoti-vs-cuda-graph_<date>.json (AOTI=1).
#
# Exit: 0 the bench measured the committee/baseline ratios with no failed job and the GPU tests passed
#       (jobs or the train step dropped for time are fine); 1 otherwise; 3 no CUDA device.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # the log stays complete when a step is killed
TOTAL_S=${TOTAL_S:-420}
TESTS_S=${TESTS_S:-80}
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-60}
TRAIN_S=${TRAIN_S:-20}
AOTI=${AOTI:-0}
AOTI_COMMITTEE=${AOTI_COMMITTEE:-cct_2_3x5,cct_2_3x5:heads=4}
KILL_S=5  # SIGKILL this long after a step's SIGTERM, should it not stop
RESULTS_DIR=${RESULTS_DIR:-benchmarks/results}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
start=$SECONDS
stamp=$(date +%Y%m%d)
LOG="$RESULTS_DIR/gpu_check_${stamp}.log"
work=$(mktemp -d)  # each step's own output, to pick its summary lines from
trap 'rm -rf "$work"' EXIT
left() { echo $((TOTAL_S - (SECONDS - start))); }

# one interpreter start: versions, the device, the modules the steps import; the log starts only
# once there is a CUDA device, so a machine without one leaves nothing under $RESULTS_DIR
"$PYTHON" - 2>&1 <<'EOF' | tee "$work/env.txt"
import importlib.util
import sys

import torch

print(f"== gpu_check {__import__('datetime').datetime.now():%Y-%m-%d %H:%M}: python {sys.version.split()[0]}, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
missing = [m for m in ("pytest", "numpy", "tqdm", "safetensors", "triton", "onnx")
           if importlib.util.find_spec(m) is None]
print(f"missing modules: {', '.join(missing) or 'none'}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()}")
print(f"cuda={int(torch.cuda.is_available())}")
EOF
cuda=$(sed -n 's/^cuda=//p' "$work/env.txt" | tail -n 1)
if [ "${cuda:-0}" != 1 ]; then
    echo "exit 3: torch sees no CUDA device (check nvidia-smi and CUDA_VISIBLE_DEVICES); nothing measured, no log written"
    exit 3
fi
mkdir -p "$RESULTS_DIR"
cat "$work/env.txt" >> "$LOG"
exec > >(tee -a "$LOG") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi -L

bench_left=$(($(left) - TESTS_S - TRAIN_S - 3 * KILL_S))
deadline=$((bench_left - 15))  # the estimates' margin: SIGTERM at $bench_left drops a job that overran
bench_status="skipped (only ${bench_left} s left of TOTAL_S=${TOTAL_S})"
if [ "$bench_left" -ge 120 ]; then
    echo "== 1/4 bench: python -m lsmha.bench.gpu_cli --deadline $deadline (hard limit ${bench_left} s)"
    timeout --preserve-status -k "$KILL_S" "$bench_left" "$PYTHON" -m lsmha.bench.gpu_cli --deadline "$deadline" \
        --results-dir "$RESULTS_DIR" 2>&1 | tee "$work/bench.txt"
    bench_rc=${PIPESTATUS[0]}
    case $bench_rc in
        0) bench_status=ok ;;
        1) bench_status="FAILED (a job failed or a ratio's row is missing)" ;;
        137) bench_status="KILLED at the ${bench_left} s limit" ;;
        *) bench_status="FAILED (exit $bench_rc)" ;;
    esac
    bench_json=$(sed -n 's/^wrote \(.*\.json\)$/\1/p' "$work/bench.txt" | tail -n 1)
    if [ -n "$bench_json" ] && [ -f "$bench_json" ]; then  # a picture of the rows; never fails the check
        timeout -k "$KILL_S" 20 "$PYTHON" -m lsmha.bench.cli plot "$bench_json" 2>&1 | tail -n 1
    fi
else
    echo "== 1/4 bench: $bench_status"
fi

tests_s=$(($(left) - TRAIN_S - 2 * KILL_S))
tests_s=$((tests_s < TESTS_S ? tests_s : TESTS_S))
tests_status="skipped (${tests_s} s left)"
if [ "$tests_s" -ge 20 ]; then
    echo "== 2/4 GPU tests: pytest -m gpu (at most ${tests_s} s, ${TEST_TIMEOUT_S} s a test)"
    # only the files holding GPU tests: a missing optional dependency of another test file (hypothesis,
    # httpx, ...) must not abort the collection; AOTInductor and analysis tests cost minutes of builds
    gpu_tests=$(grep -l 'pytest.mark.gpu' tests/test_*.py | grep -v -e test_export_aoti -e test_analysis_)
    # shellcheck disable=SC2086  # one file per word
    timeout -k "$KILL_S" "$tests_s" "$PYTHON" -m pytest -v -m gpu -p no:cacheprovider -p benchmarks.per_test_timeout \
        --per-test-timeout "$TEST_TIMEOUT_S" --continue-on-collection-errors --durations=8 $gpu_tests 2>&1 \
        | tee "$work/tests.txt"
    tests_rc=${PIPESTATUS[0]}
    tests_line=$(grep -E '(passed|failed|skipped|deselected|error)' "$work/tests.txt" | tail -n 1 | sed -E 's/^=+ *//; s/ *=+$//')
    case $tests_rc in  # pytest: 0 passed, 5 none collected; 124/137: the step's limit
        0 | 5) tests_status=ok ;;
        124 | 137)
            tests_status="FAILED (timed out after ${tests_s} s)"
            running=$(tail -c 400 "$work/tests.txt" | grep -oE 'tests/[^ ]+::[^ ]+' | tail -n 1)
            tests_line="$(grep -c ' PASSED' "$work/tests.txt") passed, $(grep -cE ' (FAILED|ERROR)' "$work/tests.txt") failed before; running: ${running:-?}"
            ;;
        *) tests_status="FAILED (exit $tests_rc)" ;;
    esac
else
    echo "== 2/4 GPU tests: $tests_status"
fi

train_status="skipped ($(left) s left < TRAIN_S=${TRAIN_S})"
if [ "$(left)" -ge "$TRAIN_S" ]; then
    echo "== 3/4 training throughput (at most ${TRAIN_S} s)"
    timeout -k "$KILL_S" "$TRAIN_S" "$PYTHON" -m lsmha.bench.cli train --device cuda --steps 10 --warmup 3 \
        --json "$RESULTS_DIR/train-throughput_${stamp}.json" 2>&1 | tee "$work/train.txt"
    case ${PIPESTATUS[0]} in 0) train_status=ok ;; 124 | 137) train_status="FAILED (timed out)" ;; *) train_status=FAILED ;; esac
else
    echo "== 3/4 training throughput: $train_status"
fi

aoti_status="skipped (opt-in: AOTI=1)"
if [ "$AOTI" = 1 ]; then
    aoti_s=$(($(left) - KILL_S))
    if [ "$aoti_s" -lt 60 ]; then
        aoti_status="skipped (${aoti_s} s left < 60)"
    else
        echo "== 4/4 AOTInductor CUDA package vs cuda-graph, batch 1 (at most ${aoti_s} s)"
        timeout -k "$KILL_S" "$aoti_s" "$PYTHON" -m lsmha.bench.cli latency --device cuda --backend cuda-graph,aoti \
            --batch 1 --committee "$AOTI_COMMITTEE" --budget 0.6 --no-progress \
            --json "$RESULTS_DIR/aoti-vs-cuda-graph_${stamp}.json" 2>&1 | tee "$work/aoti.txt"
        case ${PIPESTATUS[0]} in 0) aoti_status=ok ;; 124 | 137) aoti_status="FAILED (timed out)" ;; *) aoti_status=FAILED ;; esac
    fi
fi

echo
echo "== gpu_check summary ($((SECONDS - start)) s; log $LOG)"
printf '%-10s %-50s %s\n' step status detail
printf '%-10s %-50s %s\n' bench "$bench_status" "$(grep -E '^wrote .*\.json$' "$work/bench.txt" 2>/dev/null | tail -n 1)"
printf '%-10s %-50s %s\n' "gpu tests" "$tests_status" "${tests_line:-}"
printf '%-10s %-50s\n' train "$train_status"
printf '%-10s %-50s\n' aoti "$aoti_status"
grep -A3 -E '^ +model +device' "$work/train.txt" 2>/dev/null
grep -A5 -E '^ +model +members' "$work/aoti.txt" 2>/dev/null
if grep -q '^summary: ' "$work/bench.txt" 2>/dev/null; then  # also after a failed job or the hard limit
    sed -n '/^summary: /,/^wrote /p' "$work/bench.txt"
fi
case "$bench_status|$tests_status|$train_status|$aoti_status" in
    "ok|ok|"*"|"*)
        case "$train_status|$aoti_status" in *FAILED*) exit 1 ;; *) exit 0 ;; esac
        ;;
    *) exit 1 ;;
esac
