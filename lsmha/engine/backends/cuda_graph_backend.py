"""The "cuda-graph" backend: the whole committee in ONE CUDA graph per batch bucket.

What runs on each call (for a bucket of B images, the smallest of 1, 2, 4, ... >= n):

    copy n images into the bucket's static input (uint8 images into a uint8 buffer: a plain
    copy; rows n..B keep earlier, finite data; every op is per image, so padding rows never
    touch real rows)
    graph.replay():
      cast to fp32, standardise -> cast to bf16               [capture stream]
      fork: each unit on its own stream                       [event waits inside the graph]
        unit = a stack of members (`StackedCCT`, batched GEMMs) or one member,
               compiled by inductor (fused LayerNorm/GELU/bias/residual; no inductor graphs)
      join -> member logits in committee order (fp32) -> their sum
    return views of the static outputs (valid until the next call)

Weights are cast to bf16 once (no per-call autocast casts); fp16 and fp32 are available.
Head sizes that are not a multiple of 8 are zero-padded for the fused SDPA kernels (the
model's own rule). Refuses to construct without CUDA, saying what to use instead.

Every lever is an option, so `lsmha-bench gpu` can time each against the default engine
(docs/gpu.md): stack ("shape", "pad": all members in one zero-padded unit, "off"), sdpa
("per-heads", "one"), bias ("baddbmm", "fused"), streams, compile, one_graph (the whole
forward as ONE compiled graph with inductor's combo kernels, one stream), input ("uint8":
uint8 static input, cast inside the graph; "float": every batch copied into a float buffer).
The capture itself is `lsmha.engine.cuda_graph.CapturedGraphs`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...metrics import soft_committee
from .base import Backend, BackendOptions, BackendUnavailable, Devices, IntRange, OneOf, Source, option

NAME = "cuda-graph"
PRECISIONS = ("bf16", "fp16", "fp32")
COMPILE_MODES = ("default", "max-autotune", "off")
INPUTS = ("uint8", "float")
BOOL = OneOf((True, False))


@dataclass(frozen=True)
class Options(BackendOptions):
    """The engine's levers (see `CudaGraphCommittee`); device: "cuda", "cuda:N" or None (the current one)."""

    device: str | None = option(None, Devices(("cuda",)))
    precision: str = option("bf16", OneOf(PRECISIONS))
    max_batch: int = option(256, IntRange(1, 1 << 16, optional=False))
    stack: str = option("shape", OneOf(("shape", "pad", "off")))
    sdpa: str = option("per-heads", OneOf(("per-heads", "one")))
    bias: str = option("baddbmm", OneOf(("baddbmm", "fused")))
    streams: bool = option(True, BOOL)
    compile: str = option("default", OneOf(COMPILE_MODES))
    one_graph: bool = option(False, BOOL)
    input: str = option("uint8", OneOf(INPUTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.one_graph and self.compile == "off":
            raise ValueError("one_graph=True compiles the whole forward: it needs compile='default' or 'max-autotune'")


def unavailable() -> str | None:
    """None when a CUDA device is usable, else why not and what to use instead."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch)"
    if torch.version.cuda is None:
        return (
            f"this torch build ({torch.__version__}) has no CUDA support: install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/), or use backend 'torch' or 'onnxruntime' on CPU"
        )
    if not torch.cuda.is_available():
        return (
            f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none "
            "(check nvidia-smi and CUDA_VISIBLE_DEVICES), or use backend 'torch' or 'onnxruntime' on CPU"
        )
    return None


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Captured batch sizes: powers of two below `max_batch`, then `max_batch` (1, 2, 4, ..., max)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `n` images (ValueError above the largest)."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"batch of {n} images exceeds the largest captured bucket {buckets[-1]}: raise max_batch or chunk")


class CudaGraphCommittee:
    """A committee on one CUDA device: stacked units, compiled, one CUDA graph per batch bucket.

    Args:
        models: the members (`CCT`, eval mode); their weights are copied, they are left untouched.
        device: a CUDA device ("cuda", "cuda:1", ...).
        precision: "bf16" (default), "fp16" or "fp32" weights and activations; logits are fp32.
        max_batch: largest batch one call accepts; buckets are 1, 2, 4, ..., max_batch.
        stack: "shape" stacks members of equal weight shapes, "pad" all members of equal depth
            in one zero-padded unit, "off" one unit per member (`lsmha.engine.stacked`).
        sdpa: "per-heads" (one SDPA call per distinct head shape) or "one" (one call per block).
        bias: "baddbmm" or "fused" (bmm, then the bias merged into the next pointwise op).
        streams: run each unit on its own stream inside the graph (fork/join with events).
        compile: "default" (inductor), "max-autotune" (inductor with GEMM autotuning: slow to
            build) or "off" (eager kernels, still captured).
        one_graph: compile the whole forward (standardise, units, combine) as ONE graph with
            inductor's combo kernels (horizontal fusion of independent kernels); one stream.
        input: "uint8" keeps uint8 batches uint8 up to the graph, which casts them; "float"
            copies every batch into a float32 buffer first.

    Raises:
        BackendUnavailable: no CUDA device, or bf16 asked on a GPU without bf16.
    """

    def __init__(
        self,
        models: Sequence[Any],
        *,
        device: str = "cuda",
        precision: str = "bf16",
        max_batch: int = 256,
        stack: str = "shape",
        sdpa: str = "per-heads",
        bias: str = "baddbmm",
        streams: bool = True,
        compile: str = "default",
        one_graph: bool = False,
        input: str = "uint8",
    ) -> None:
        reason = unavailable()
        if reason:
            raise BackendUnavailable(f"backend {NAME!r} needs a CUDA GPU: {reason}")
        import torch

        from ..cuda_graph import CapturedGraphs, allow_recompiles, fork_join
        from ..stacked import StackedCommittee

        Options(None, precision, max_batch, stack, sdpa, bias, streams, compile, one_graph, input)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailable(f"backend {NAME!r} runs on a CUDA device, got device={device!r}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BackendUnavailable(
                f"{torch.cuda.get_device_name(self.device)} has no bf16 support: use precision='fp16' or 'fp32'"
            )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        spec = models[0].spec
        self.input_shape = (spec.in_chans, spec.img_size, spec.img_size)
        self.num_members = len(models)
        self.num_classes = spec.num_classes
        self.precision = precision
        self.uint8_input = input == "uint8"
        self.buckets = batch_buckets(max_batch)
        self.program = StackedCommittee(models, stack=stack, sdpa=sdpa, bias=bias).to(self.device, dtype).eval()
        self.program.requires_grad_(False)  # inference only: no autograd graph, whoever calls
        units = list(self.program.units)
        # no inductor CUDA graphs: the capture is the one graph; no fullgraph, so an older torch
        # that breaks a graph still runs (tests check there are no breaks)
        options = {"triton.cudagraphs": False, "max_autotune": compile == "max-autotune"}
        if one_graph:
            # combo kernels: inductor fuses independent kernels (the units' side by side) horizontally
            options["combo_kernels"] = True
            self._forward = torch.compile(self.program.member_and_sum, options=options)
            self.streams = None
        else:
            prepare, combine = self.program.prepare, self._combine
            if compile != "off":
                # units of one class share a code object across engines: one cache entry per unit and
                # batch shape (replays never evaluate the guards, so a long cache list costs nothing)
                allow_recompiles(max(64, len(units) * (len(self.buckets) + 1) + 8))
                prepare, combine = (torch.compile(f, options=options) for f in (prepare, combine))
                units = [torch.compile(u, options=options) for u in units]
            self.streams = [torch.cuda.Stream(self.device) for _ in units] if streams and len(units) > 1 else None

            def forward(static_in: Any) -> tuple[Any, Any]:
                x = prepare(static_in)
                outs = [unit(x) for unit in units] if self.streams is None else fork_join(units, x, self.streams)
                return combine(outs)

            self._forward = forward
        self._graphs = CapturedGraphs(self._forward, self.device)
        levers = f"stack={stack}, sdpa={sdpa}, bias={bias}, input={input}" + (", one graph" if one_graph else "")
        self.name = (
            f"{NAME}[{torch.cuda.get_device_name(self.device)}, {precision}, {len(units)} unit(s) for "
            f"{self.num_members} member(s), {len(self.streams or [None])} stream(s), compile={compile}, {levers}]"
        )

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @property
    def groups(self) -> list[list[int]]:
        """Member indices of each unit (stacked members share one)."""
        return self.program.groups

    @property
    def captured(self) -> list[tuple[int, str]]:
        """(bucket, input dtype) of every captured graph."""
        return [(bucket, str(dtype).removeprefix("torch.")) for bucket, dtype in self._graphs]

    def _combine(self, outs: list[Any]) -> tuple[Any, Any]:
        member = self.program.combine(outs)
        return member, soft_committee(member)

    def _input_dtype(self, images_dtype: Any) -> Any:
        import torch

        return torch.uint8 if self.uint8_input and images_dtype == torch.uint8 else torch.float32

    def capture(self, bucket: int, images_dtype: Any = None) -> None:
        """Compile (first time) and capture the graph of `bucket` images of `images_dtype`
        (default uint8), if not captured yet."""
        import torch

        if bucket not in self.buckets:
            raise ValueError(f"bucket {bucket} is not one of {self.buckets}")
        dtype = self._input_dtype(torch.uint8 if images_dtype is None else images_dtype)
        if (bucket, dtype) not in self._graphs:
            static_in = torch.zeros((bucket, *self.input_shape), dtype=dtype, device=self.device)
            self._graphs.capture((bucket, dtype), static_in)

    def run(self, images: Any) -> tuple[Any, Any]:
        """Images (n, c, H, W) on the device (uint8 or float) -> (member logits (M, n, C),
        summed logits (n, C)), fp32 views of static buffers: read them before the next call."""
        n = images.shape[0]
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(images.shape)}"
            )
        bucket = bucket_for(n, self.buckets)
        key = (bucket, self._input_dtype(images.dtype))
        if key not in self._graphs:
            self.capture(bucket, images.dtype)
        self._graphs.static_input(key)[:n].copy_(images, non_blocking=True)
        member, total = self._graphs.replay(key)
        return member[:, :n], total[:n]

    def close(self) -> None:
        """Drop the graphs and their memory."""
        self._graphs.close()


class CudaGraphBackend(Backend):
    """`Backend` over a `CudaGraphCommittee`: numpy in, numpy out. Calls are serialised by a
    lock: the graphs' static buffers hold one batch at a time."""

    def __init__(self, engine: CudaGraphCommittee) -> None:
        self.engine = engine
        self.name = engine.name
        self.num_members = engine.num_members
        self.max_batch = engine.max_batch
        self._lock = threading.Lock()

    def _run(self, images: np.ndarray, which: int) -> np.ndarray:
        import torch

        with self._lock:
            return self.engine.run(torch.from_numpy(images).to(self.engine.device))[which].cpu().numpy()

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, 0)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, 1)

    def close(self) -> None:
        self.engine.close()


def open(source: Source, options: Options) -> CudaGraphBackend:
    """Open the cuda-graph backend on `source`'s torch weights (models, checkpoints or
    the export's safetensors), with the levers in `options`."""
    levers = {k: v for k, v in asdict(options).items() if k != "device"}
    return CudaGraphBackend(CudaGraphCommittee(source.torch_models(), device=options.device or "cuda", **levers))
