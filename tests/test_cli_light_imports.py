"""A command's `--help` answers before heavy packages load: importing its CLI module, building
its parser and printing any subcommand's help import no torch (checked in a fresh interpreter)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "tensorrt", "matplotlib")
LIGHT = ["lsmha.serving.cli", "lsmha.training.cli", "lsmha.analysis.cli", "lsmha.export.cli", "lsmha.bench.cli"]
HELP = [
    ("lsmha.training.cli", []),
    ("lsmha.training.cli", ["run"]),
    ("lsmha.training.cli", ["committee"]),
    ("lsmha.training.cli", ["eval"]),
    ("lsmha.analysis.cli", []),
    ("lsmha.export.cli", []),
    ("lsmha.export.cli", ["onnx"]),
    ("lsmha.export.cli", ["verify"]),
    ("lsmha.export.cli", ["aoti"]),
    ("lsmha.export.cli", ["tensorrt"]),
    ("lsmha.export.cli", ["triton"]),
    ("lsmha.export.cli", ["calibrate"]),
    ("lsmha.bench.cli", []),
    ("lsmha.bench.cli", ["latency"]),
    ("lsmha.bench.cli", ["serve"]),
    ("lsmha.bench.cli", ["gpu"]),
    ("lsmha.bench.cli", ["train"]),
    ("lsmha.bench.cli", ["study"]),
    ("lsmha.bench.cli", ["adaptive"]),
    ("lsmha.bench.cli", ["plot"]),
    ("lsmha.serving.cli", []),
]


def _heavy_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [m for m in done.stdout.strip().splitlines()[-1].removeprefix("heavy:").split(",") if m]


@pytest.mark.parametrize("module", LIGHT)
def test_building_the_parser_imports_no_torch(module):
    assert _heavy_after(f"import {module} as cli; cli.build_parser()") == []


@pytest.mark.parametrize("module, argv", HELP, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_help_imports_no_torch(module, argv):
    code = (
        f"import contextlib, io, {module} as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        f"    cli.main({[*argv, '--help']!r})\n"
        "assert 'usage:' in out.getvalue()"
    )
    assert _heavy_after(code) == []


def test_the_package_and_its_models_load_lazily():
    script = (
        "import sys; import lsmha, lsmha.models, lsmha.export, lsmha.serving, lsmha.training, lsmha.analysis\n"
        "from lsmha.models import CCTSpec; CCTSpec()\n"
        "assert 'torch' not in sys.modules\n"
        "assert lsmha.CCT is lsmha.models.CCT and 'torch' in sys.modules\n"
        "from lsmha.training import Recipe, load_dataset; from lsmha.analysis import find_clusters"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_names_offered_before_torch_loads_are_the_ones_used():
    from lsmha.artifacts.compiled import PT2_PRECISIONS
    from lsmha.bench.backends import RUNNERS
    from lsmha.bench.choices import CPU_ONLY, CUDA_ONLY, DEFAULT_BACKENDS, RUNNER_NAMES
    from lsmha.export.aoti import PRECISIONS

    assert tuple(RUNNERS) == RUNNER_NAMES
    assert set(RUNNER_NAMES) >= CUDA_ONLY | CPU_ONLY
    assert {name for names in DEFAULT_BACKENDS.values() for name in names} <= set(RUNNER_NAMES)
    assert set(PRECISIONS) == set(PT2_PRECISIONS)
