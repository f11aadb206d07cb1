"""The runners `lsmha-bench latency --backend` and `lsmha-bench gpu` can time: `RUNNERS`.

`RUNNERS` maps a name to a runner factory (see `lsmha.bench.runner`): members, device and
largest batch in, a `Runner` out. A factory's docstring says what it times (its first line
is the table's description); CUDA-only runners are listed in `CUDA_ONLY` and refuse another
device, CPU-only ones in `CPU_ONLY`. Two kinds:

- the engine: `Committee.load(..., backend=NAME, **options)`, the one path users take;
- `PEERS`: what a user would write by hand without lsmha (stock PyTorch eager and
  torch.compile, stock OpenVINO), the comparisons the engine must not lose.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models import CCT
from . import cpu_runners, gpu_runners
from .choices import CPU_ONLY, CUDA_ONLY, DEFAULT_BACKENDS
from .runner import Runner, RunnerFactory, sum_logits, to_device

__all__ = [
    "CPU_ONLY",
    "CUDA_ONLY",
    "PEERS",
    "RUNNERS",
    "Runner",
    "RunnerFactory",
    "default_backends",
    "describe",
    "make_runner",
]


def torch_eager(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """stock PyTorch eager fp32, members one after another"""
    models = [m.to(device).eval() for m in models]

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return sum_logits(models, x)

    return Runner(to_device(device), run, "stock eager fp32, members one after another")


def _onnxruntime_runner(precision: str, description: str) -> RunnerFactory:
    """The lsmha engine on ONNX Runtime: the members exported as ONE opset-23 graph (fused
    Attention), run by `Committee` (input checks included) with its tuned session."""

    def factory(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
        import tempfile

        from ..engine import Committee
        from ..export.onnx import export_onnx

        if precision == "fp32":  # the one export every runner of these members shares
            tmp, directory = None, cpu_runners.shared_export(models)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="lsmha-bench-onnx-")  # lives as long as the runner
            export_onnx(models, tmp.name, precisions=(precision,))
            directory = tmp.name
        committee = Committee.load(directory, backend="onnxruntime", precision=precision, device=device.type,
                                   batch_size=max(1, max_batch))  # fmt: skip

        def run(images: np.ndarray, _keep: object = tmp) -> np.ndarray:
            return committee.predict_logits(images)

        return Runner(lambda images: images, run, f"lsmha engine, {committee.backend}, one committee graph")

    factory.__doc__ = description
    return factory


def _aoti_runner(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """lsmha engine on an AOTInductor package (CPU or CUDA), fp32 committee graph

    The committee graph (standardisation once, members, sum) compiled ahead of time for
    `device`, run by `Committee` (input checks included)."""
    import tempfile

    from ..engine import Committee
    from ..export.aoti import MAX_BATCH, export_aoti_dir
    from ..export.directory import write_weights

    tmp = tempfile.TemporaryDirectory(prefix="lsmha-bench-aoti-")  # lives as long as the runner
    write_weights(models, tmp.name)
    (entry,) = export_aoti_dir(tmp.name, device=device.type, max_batch=min(max(1, max_batch), MAX_BATCH))
    committee = Committee.load(tmp.name, backend="aoti", device=device.type, batch_size=max(1, max_batch))

    def run(images: np.ndarray, _keep: object = tmp) -> np.ndarray:
        return committee.predict_logits(images)

    note = f"lsmha engine, {committee.backend}, one committee package (compiled in {entry.extra['compile_s']:.0f} s)"
    return Runner(lambda images: images, run, note)


RUNNERS: dict[str, RunnerFactory] = {
    "torch": torch_eager,
    "torch-bf16": gpu_runners.stock_eager_bf16,
    "torch-cuda-graph": gpu_runners.stock_cuda_graph,
    "onnxruntime": _onnxruntime_runner("fp32", "lsmha engine on ONNX Runtime, fp32 committee graph"),
    "onnxruntime-fp16": _onnxruntime_runner("fp16", "lsmha engine on ONNX Runtime, fp16 graph (opt-in)"),
    "onnxruntime-int8": _onnxruntime_runner("int8", "lsmha engine on ONNX Runtime, dynamic int8 MatMul/Gemm (opt-in)"),
    "openvino-stock": cpu_runners.openvino_stock,
    "openvino": cpu_runners.openvino_engine,
    "openvino-fp32": cpu_runners.openvino_fp32,
    "openvino-throughput": cpu_runners.openvino_throughput,
    "auto": cpu_runners.auto_engine,
    "aoti": _aoti_runner,
    "torch-stacked": gpu_runners.torch_stacked,
    "torch-compile-graph": gpu_runners.stock_compile,
    "torch-compile-streams": gpu_runners.stock_compile_streams,
    "cuda-graph": gpu_runners.cuda_graph_engine,
}
PEERS = frozenset({"torch", "torch-bf16", "torch-cuda-graph", "torch-compile-graph", "torch-compile-streams",
                   "openvino-stock"})  # fmt: skip


def describe(name: str) -> str:
    """The first line of the runner's docstring: what it times."""
    return (RUNNERS[name].__doc__ or name).strip().splitlines()[0]


def default_backends(device: torch.device) -> list[str]:
    """What `lsmha-bench latency` times when `--backend` is not given."""
    return list(DEFAULT_BACKENDS["cuda" if device.type == "cuda" else "cpu"])


def make_runner(name: str, models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    if name not in RUNNERS:
        raise ValueError(f"unknown runner {name!r}; known: {', '.join(RUNNERS)}")
    if name in CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"runner {name!r} needs --device cuda ({describe(name)})")
    if name in CPU_ONLY and device.type != "cpu":
        raise ValueError(f"runner {name!r} times the CPU; run with --device cpu")
    return RUNNERS[name](models, device, max_batch)
