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


BACKENDS: dict[str, BackendEntry] = {
    "torch": BackendEntry(torch_eager, "stock PyTorch eager fp32"),
    "torch-bf16": BackendEntry(torch_bf16, "stock PyTorch eager with bf16 autocast"),
    "torch-cuda-graph": BackendEntry(torch_cuda_graph, "stock PyTorch bf16 in a CUDA graph", cuda_only=True),
}


def default_backends(device: torch.device) -> list[str]:
    """What `lsmha-bench latency` times when `--backend` is not given."""
    if device.type == "cuda":
        return ["torch", "torch-bf16", "torch-cuda-graph"]
    return ["torch"]


def make_runner(name: str, models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    entry = BACKENDS[name]
    if entry.cuda_only and device.type != "cuda":
        raise ValueError(f"backend {name!r} needs --device cuda ({entry.description})")
    return entry.factory(models, device, max_batch)
