"""A command's `--help` answers before heavy packages load: importing its CLI module and
building its parser imports no torch (checked in a fresh interpreter)."""

import subprocess
import sys

import pytest

LIGHT = ["lsmha.serving.cli"]


@pytest.mark.parametrize("module", LIGHT)
def test_building_the_parser_imports_no_torch(module):
    script = (
        f"import sys; import {module} as cli; cli.build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'openvino') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_package_and_its_models_load_lazily():
    script = (
        "import sys; import lsmha, lsmha.models, lsmha.export, lsmha.serving\n"
        "from lsmha.models import CCTSpec; CCTSpec()\n"
        "assert 'torch' not in sys.modules\n"
        "assert lsmha.CCT is lsmha.models.CCT and 'torch' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
