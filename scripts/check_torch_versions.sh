#!/usr/bin/env bash
# Run the test suite under other torch releases than the pinned one, each in its own venv.
#
#   scripts/check_torch_versions.sh                  # the floor (torch 2.6) and the GPU image's (2.11)
#   scripts/check_torch_versions.sh 2.8.0:0.23.0     # torch:torchvision pairs of your choice
#
# pyproject.toml promises torch >= 2.6; the GPU machines run torch 2.11. On Linux, PyPI's torch
# wheels are CUDA builds (about 3 GB with their nvidia-* dependencies, a few minutes each), so
# this is not part of .ci/run; run it after changes to export or compile code. The venvs live
# under VENV_ROOT (default /tmp/lsmha-torch) and are reused. Exit: 0 when every suite passed.
set -u
cd "$(dirname "$0")/.."
root=${VENV_ROOT:-/tmp/lsmha-torch}
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(2.6.0:0.21.0 2.11.0:0.26.0)
status=0
summary=()
for pair in "${pairs[@]}"; do
    torch_v=${pair%%:*}
    vision_v=${pair##*:}
    venv=$root/torch-$torch_v
    echo "== torch $torch_v, torchvision $vision_v: $venv"
    # reused venvs only gain what changed (new dependencies of the project, say)
    { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } &&
        "$venv/bin/pip" install -q "torch==$torch_v" "torchvision==$vision_v" -e '.[dev]' || {
        summary+=("torch $torch_v: install failed")
        status=1
        continue
    }
    # -p no:cacheprovider: the pinned venv's .pytest_cache stays as it was
    log=$root/torch-$torch_v.log
    "$venv/bin/python" -m pytest -q -p no:cacheprovider >"$log" 2>&1
    rc=$?
    last=$(tail -n 1 "$log")
    summary+=("torch $torch_v: $last (log: $log)")
    [ "$rc" -eq 0 ] || status=1
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
