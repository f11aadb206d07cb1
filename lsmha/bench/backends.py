"""Runners that `lsmha-bench latency --backend` can time.

A runner factory takes the committee's members (CCT modules, fp32, eval mode),
the device and the largest batch it will see, and returns a `Runner`: `prepare`
turns uint8 NCHW images into whatever the runner consumes (done once, outside the
timed region) and `run` computes the summed logits. Each entry states what it is,
so the table says what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models import CCT


@dataclass
class Runner:
    prepare: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]
    note: str = ""


RunnerFactory = Callable[[list[CCT], torch.device, int], Runner]


@dataclass(frozen=True)
class BackendEntry:
    factory: RunnerFactory
    description: str
    cuda_only: bool = False


def _sum_logits(models: list[CCT], x: torch.Tensor) -> torch.Tensor:
    out = models[0](x)
    for m in models[1:]:
        out = out + m(x)
    return out


def _to_device(device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    return lambda images: torch.from_numpy(images).to(device)


def torch_eager(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    models = [m.to(device).eval() for m in models]

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return _sum_logits(models, x)

    return Runner(_to_device(device), run, "stock eager fp32, members one after another")


def torch_bf16(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    models = [m.to(device).eval() for m in models]

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return _sum_logits(models, x)

    return Runner(_to_device(device), run, "stock eager, bf16 autocast")


def torch_cuda_graph(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """bf16 autocast captured in one CUDA graph per input shape (stock tools, one stream)."""
    models = [m.to(device).eval() for m in models]
    graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return _sum_logits(models, x)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in graphs:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = forward(static_in)
            graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    return Runner(_to_device(device), run, "stock bf16 autocast in one CUDA graph, one stream")


def _gpu_runner(name: str) -> RunnerFactory:
    """A factory defined in `lsmha.bench.gpu`, imported on first use (it pulls in the CUDA engine)."""

    def factory(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
        from . import gpu

        return getattr(gpu, name)(models, device, max_batch)

    return factory


def _onnxruntime_runner(precision: str) -> RunnerFactory:
    """The lsmha engine on ONNX Runtime: the members exported as ONE opset-23 graph (fused
    Attention), run by `Committee` (input checks included) with its tuned session."""

    def factory(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
        import tempfile

        from ..engine import Committee
        from ..export.onnx import export_onnx

        tmp = tempfile.TemporaryDirectory(prefix="lsmha-bench-onnx-")  # lives as long as the runner
        export_onnx(models, tmp.name, precisions=(precision,))
        committee = Committee.load(tmp.name, backend="onnxruntime", precision=precision, device=device.type,
                                   batch_size=max(1, max_batch))  # fmt: skip

        def run(images: np.ndarray, _keep: object = tmp) -> np.ndarray:
            return committee.predict_logits(images)

        return Runner(lambda images: images, run, f"lsmha engine, {committee.backend}, one committee graph")

    return factory


def _aoti_runner(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """The lsmha engine on an AOTInductor package: the committee graph (standardisation once,
    members, sum) compiled ahead of time for `device`, run by `Committee` (input checks included)."""
    import tempfile

    from ..engine import Committee
    from ..export.aoti import MAX_BATCH, export_aoti_dir, write_weights

    tmp = tempfile.TemporaryDirectory(prefix="lsmha-bench-aoti-")  # lives as long as the runner
    write_weights(models, tmp.name)
    (entry,) = export_aoti_dir(tmp.name, device=device.type, max_batch=min(max(1, max_batch), MAX_BATCH))
    committee = Committee.load(tmp.name, backend="aoti", device=device.type, batch_size=max(1, max_batch))

    def run(images: np.ndarray, _keep: object = tmp) -> np.ndarray:
        return committee.predict_logits(images)

    note = f"lsmha engine, {committee.backend}, one committee package (compiled in {entry.extra['compile_s']:.0f} s)"
    return Runner(lambda images: images, run, note)


BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry(torch_eager, "stock PyTorch eager fp32"),
    "torch-bf16": BackendEntry(torch_bf16, "stock PyTorch eager with bf16 autocast"),
    "torch-cuda-graph": BackendEntry(torch_cuda_graph, "stock PyTorch bf16 in a CUDA graph", cuda_only=True),
    "onnxruntime": BackendEntry(_onnxruntime_runner("fp32"), "lsmha engine on ONNX Runtime, fp32 committee graph"),
    "onnxruntime-fp16": BackendEntry(_onnxruntime_runner("fp16"), "lsmha engine on ONNX Runtime, fp16 graph (opt-in)"),
    "onnxruntime-int8": BackendEntry(
        _onnxruntime_runner("int8"), "lsmha engine on ONNX Runtime, dynamic int8 MatMul/Gemm (opt-in)"
    ),
    "aoti": BackendEntry(_aoti_runner, "lsmha engine on an AOTInductor package (CPU or CUDA), fp32 committee graph"),
    "torch-stacked": BackendEntry(_gpu_runner("torch_stacked"), "equal-shape members stacked into batched GEMMs, fp32"),
    "torch-compile-graph": BackendEntry(
        _gpu_runner("torch_compile_graph"), 'stock torch.compile(mode="reduce-overhead"), bf16 autocast', cuda_only=True
    ),
    "torch-compile-streams": BackendEntry(
        _gpu_runner("torch_compile_streams"),
        "stock compiled members, bf16 autocast, one CUDA graph, one stream per member",
        cuda_only=True,
    ),
    "cuda-graph": BackendEntry(
        _gpu_runner("cuda_graph_engine"),
        "lsmha engine: bf16, stacked members, compiled, one CUDA graph per batch bucket, multi-stream",
        cuda_only=True,
    ),
}


def default_backends(device: torch.device) -> list[str]:
    """What `lsmha-bench latency` times when `--backend` is not given."""
    if device.type == "cuda":
        return ["torch", "torch-bf16", "torch-compile-graph", "cuda-graph"]
    return ["torch", "onnxruntime"]


def make_runner(name: str, models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    entry = BACKENDS[name]
    if entry.cuda_only and device.type != "cuda":
        raise ValueError(f"backend {name!r} needs --device cuda ({entry.description})")
    return entry.factory(models, device, max_batch)
