"""The GPU runners of `lsmha.bench.backends.RUNNERS`: the stock baselines and the engine.

The stock runners are what a practitioner would write with stock PyTorch: bf16 WEIGHTS
(`model.to(torch.bfloat16)`, no per-call autocast casts), the images cast to bf16 once
outside the timed call. The strongest are `stock_compile` (torch.compile's
"reduce-overhead": inductor kernels in PyTorch's own CUDA graphs) and, for a committee,
`stock_compile_streams` (each member compiled, the whole committee captured in one CUDA
graph with each member on its own stream).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..engine.cuda_graph import CapturedGraphs, allow_recompiles, fork_join
from ..metrics import soft_committee
from ..models import CCT
from .runner import Runner, require_cuda, sum_logits, to_device


def _bf16_members(models: list[CCT], device: torch.device) -> list[CCT]:
    """Copies of the members with bf16 weights on `device` (the callers' members stay fp32)."""
    return [copy.deepcopy(m).to(device, torch.bfloat16).eval() for m in models]


def torch_stacked(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """equal-shape members stacked into batched GEMMs (lsmha.engine.stacked), eager fp32"""
    from ..engine.stacked import StackedCommittee

    program = StackedCommittee([m.eval() for m in models]).to(device)

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        return program(x)

    return Runner(to_device(device), run, f"eager fp32, {len(program.units)} unit(s) for {len(models)} member(s)")


def stock_eager_bf16(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """stock PyTorch eager, bf16 weights"""
    members = _bf16_members(models, device)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return sum_logits(members, x)

    return Runner(to_device(device, torch.bfloat16), run, "stock eager, bf16 weights, members one after another")


def stock_cuda_graph(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """stock PyTorch eager kernels, bf16 weights, in one CUDA graph per shape, one stream"""
    require_cuda("torch-cuda-graph", device)
    members = _bf16_members(models, device)
    graphs = CapturedGraphs(lambda x: sum_logits(members, x), device)
    return Runner(to_device(device, torch.bfloat16), graphs, "stock eager kernels, bf16 weights, one CUDA graph")


def stock_compile(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """stock torch.compile(mode="reduce-overhead") of the summed committee, bf16 weights

    Inductor kernels in PyTorch's own CUDA graphs, one stream (stock compile has no multi-stream)."""
    require_cuda("torch-compile-graph", device)
    members = _bf16_members(models, device)
    compiled = torch.compile(lambda x: sum_logits(members, x), mode="reduce-overhead")

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    return Runner(to_device(device, torch.bfloat16), run, 'stock torch.compile(mode="reduce-overhead"), bf16 weights')


def stock_compile_streams(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """stock compiled members, bf16 weights, one CUDA graph per shape, one stream per member"""
    require_cuda("torch-compile-streams", device)
    members = _bf16_members(models, device)
    allow_recompiles(max(64, 4 * len(members) + 8))  # members share CCT.forward's code object
    compiled = [torch.compile(m, options={"triton.cudagraphs": False}) for m in members]
    streams = [torch.cuda.Stream(device) for _ in members] if len(members) > 1 else None

    def committee(x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in compiled] if streams is None else fork_join(compiled, x, streams)
        return soft_committee(torch.stack([o.float() for o in outs]))

    graphs = CapturedGraphs(committee, device)
    note = f"stock compiled members, bf16 weights, one CUDA graph, {len(streams or [None])} stream(s)"
    return Runner(to_device(device, torch.bfloat16), graphs, note)


def cuda_graph_engine(models: list[CCT], device: torch.device, max_batch: int, **options: Any) -> Runner:
    """lsmha engine: bf16, stacked members, compiled, one CUDA graph per batch bucket, multi-stream

    `options` go to `CudaGraphCommittee` (the levers)."""
    from ..engine.backends.cuda_graph_backend import CudaGraphCommittee

    require_cuda("cuda-graph", device)
    engine = CudaGraphCommittee(models, device=str(device), max_batch=max_batch, **options)
    return Runner(to_device(device), lambda x: engine.run(x)[1], engine.name)
