"""The "cuda-graph" backend: the whole committee in ONE CUDA graph per batch bucket.

What runs on each call (for a bucket of B images, the smallest of 1, 2, 4, ... >= n):

    copy n images into the bucket's static input (rows n..B keep earlier, finite data;
    every op is per image, so padding rows never touch real rows)
    graph.replay():
      standardise (fp32) -> cast to bf16                     [capture stream]
      fork: each unit on its own stream                       [event waits inside the graph]
        unit = a stack of equal-shape members (`StackedCCT`, batched GEMMs) or one member,
               compiled by inductor (fused LayerNorm/GELU/bias/residual; no inductor graphs)
      join -> member logits in committee order (fp32) -> their sum
    return views of the static outputs (valid until the next call)

Weights are cast to bf16 once (no per-call autocast casts); fp16 and fp32 are available.
Head sizes that are not a multiple of 8 are zero-padded for the fused SDPA kernels (the
model's own rule). Refuses to construct without CUDA, saying what to use instead.

Which levers pay is measured by `python -m lsmha.bench.gpu` (see benchmarks/gpu_check.sh);
each is an option here so it can be switched off: stack, streams, compile.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailable, Source

NAME = "cuda-graph"
PRECISIONS = ("bf16", "fp16", "fp32")
COMPILE_MODES = ("default", "max-autotune", "off")


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


def allow_recompiles(n: int) -> None:
    """Raise dynamo's per-function recompile limit to at least `n` (default 8).

    Every member of a committee shares `CCT.forward`'s code object, and each
    member shape x batch shape is one cache entry; past the limit dynamo silently
    falls back to eager. The setting is process-wide (named `recompile_limit` from
    torch 2.7, `cache_size_limit` before)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < n:
        setattr(cfg, name, n)


class CudaGraphCommittee:
    """A committee on one CUDA device: stacked units, compiled, one CUDA graph per batch bucket.

    Args:
        models: the members (`CCT`, eval mode); their weights are copied, they are left untouched.
        device: a CUDA device ("cuda", "cuda:1", ...).
        precision: "bf16" (default), "fp16" or "fp32" weights and activations; logits are fp32.
        max_batch: largest batch one call accepts; buckets are 1, 2, 4, ..., max_batch.
        stack: stack members of equal weight shapes into batched GEMMs (`lsmha.engine.stacked`).
        streams: run each unit on its own stream inside the graph (fork/join with events).
        compile: "default" (inductor), "max-autotune" (inductor with GEMM autotuning: slow to
            build) or "off" (eager kernels, still captured).
        dynamic: torch.compile's `dynamic` (None: static for the first bucket, one
            dynamic-batch recompile for the others; False: one compile per bucket).

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
        stack: bool = True,
        streams: bool = True,
        compile: str = "default",
        dynamic: bool | None = None,
    ) -> None:
        reason = unavailable()
        if reason:
            raise BackendUnavailable(f"backend {NAME!r} needs a CUDA GPU: {reason}")
        import torch

        from ..stacked import StackedCommittee

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
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
        self.buckets = batch_buckets(max_batch)
        self.program = StackedCommittee(models, stack=stack).to(self.device, dtype).eval()
        self.compile_mode = compile
        prepare, combine, units = self.program.prepare, self._combine, list(self.program.units)
        if compile != "off":
            # units of one class share a code object: one cache entry per unit and batch shape
            allow_recompiles(len(units) * (len(self.buckets) + 1) + 8)
            # no inductor CUDA graphs: the capture below is the one graph; no fullgraph, so an
            # older torch that breaks the graph still runs (tests check there are no breaks)
            options = {"triton.cudagraphs": False, "max_autotune": compile == "max-autotune"}
            prepare, combine = (torch.compile(f, dynamic=dynamic, options=options) for f in (prepare, combine))
            units = [torch.compile(u, dynamic=dynamic, options=options) for u in units]
        self._prepare, self._combine_fn, self._units = prepare, combine, units
        use_streams = streams and len(units) > 1
        self.streams = [torch.cuda.Stream(self.device) for _ in units] if use_streams else None
        self.capture_stream = torch.cuda.Stream(self.device)
        # buckets share one memory pool: replays are serialised on one stream and every
        # graph's static input/outputs stay referenced, so only scratch memory is shared
        self._pool: Any = None
        self._graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self.name = (
            f"{NAME}[{torch.cuda.get_device_name(self.device)}, {precision}, {len(units)} unit(s) for "
            f"{self.num_members} member(s), {len(self.streams or [None])} stream(s), compile={compile}]"
        )

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @property
    def groups(self) -> list[list[int]]:
        """Member indices of each unit (stacked members share one)."""
        return self.program.groups

    def _combine(self, outs: list[Any]) -> tuple[Any, Any]:
        member = self.program.combine(outs)
        return member, member.sum(0)

    def _forward(self, static_in: Any) -> tuple[Any, Any]:
        import torch

        x = self._prepare(static_in)
        if self.streams is None:
            return self._combine_fn([unit(x) for unit in self._units])
        main = torch.cuda.current_stream(self.device)
        outs = []
        for unit, stream in zip(self._units, self.streams):
            stream.wait_stream(main)  # fork: an event recorded on main, waited on `stream`
            with torch.cuda.stream(stream):
                outs.append(unit(x))
        for stream in self.streams:
            main.wait_stream(stream)  # join before the sum
        return self._combine_fn(outs)

    def capture(self, bucket: int, warmup: int = 2) -> None:
        """Compile (first time) and capture the graph of `bucket` images, if not captured yet."""
        import torch

        if bucket in self._graphs:
            return
        if bucket not in self.buckets:
            raise ValueError(f"bucket {bucket} is not one of {self.buckets}")
        static_in = torch.zeros((bucket, *self.input_shape), device=self.device)
        with torch.no_grad():
            self.capture_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.capture_stream):  # compile + warm up on the streams the graph uses
                for _ in range(warmup):
                    self._forward(static_in)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self.capture_stream):
                member, total = self._forward(static_in)
            torch.cuda.synchronize(self.device)
        self._pool = graph.pool() if self._pool is None else self._pool
        self._graphs[bucket] = (graph, static_in, member, total)

    def run(self, images: Any) -> tuple[Any, Any]:
        """Images (n, c, H, W) on the device (uint8 or float) -> (member logits (M, n, C),
        summed logits (n, C)), fp32 views of static buffers: read them before the next call."""
        n = images.shape[0]
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(images.shape)}"
            )
        bucket = bucket_for(n, self.buckets)
        if bucket not in self._graphs:
            self.capture(bucket)
        graph, static_in, member, total = self._graphs[bucket]
        static_in[:n].copy_(images, non_blocking=True)
        graph.replay()
        return member[:, :n], total[:n]

    def close(self) -> None:
        """Drop the graphs and their memory."""
        self._graphs.clear()
        self._pool = None


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


def open(
    source: Source,
    device: str | None = None,
    precision: str = "bf16",
    max_batch: int = 256,
    stack: bool = True,
    streams: bool = True,
    compile: str = "default",
    **options: Any,
) -> CudaGraphBackend:
    """Open the cuda-graph backend on `source`'s torch weights (models, checkpoints or
    the export's safetensors). Options as `CudaGraphCommittee`."""
    if options:
        raise BackendUnavailable(
            f"cuda-graph backend: unknown option(s) {sorted(options)}; "
            "it takes device, precision, max_batch, stack, streams, compile"
        )
    if device is not None and not str(device).startswith("cuda"):
        raise BackendUnavailable(f"cuda-graph backend runs on CUDA devices only, asked for device={device!r}")
    models = source.torch_models()
    engine = CudaGraphCommittee(
        models,
        device=device or "cuda",
        precision=precision,
        max_batch=max_batch,
        stack=stack,
        streams=streams,
        compile=compile,
    )
    return CudaGraphBackend(engine)
