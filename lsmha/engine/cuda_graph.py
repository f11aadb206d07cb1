"""CUDA-graph capture: the one piece of code the cuda-graph backend and the benchmarks use.

    graphs = CapturedGraphs(fn, device)       # fn: tensor -> tensor or tuple of tensors
    out = graphs(x)                           # first call per (shape, dtype): warm up, capture; then replay

Capture follows PyTorch's rules for torch.cuda.graphs: warm-up calls (which compile, when
`fn` holds torch.compile'd code) run first on the capture stream, and on the side streams
`fork_join` forks onto; the capture itself runs with dynamo's `fail_on_recompile` stance, so
a guard that misses inside the capture raises a clear error instead of compiling there;
every graph of one `CapturedGraphs` shares one memory pool (its replays are serialised on
one stream, and each graph's static input and outputs stay referenced, so only scratch
memory is shared). torch.compile'd code captured here must be compiled without inductor's
own CUDA graphs (`options={"triton.cudagraphs": False}`): this capture is the one graph.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


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


@contextmanager
def no_recompile() -> Iterator[None]:
    """Within: a compiled function whose guards miss raises instead of compiling (compiling
    inside a CUDA-graph capture fails obscurely or records the compiler's own work)."""
    with torch.compiler.set_stance("fail_on_recompile"):
        yield


def fork_join(fns: Sequence[Callable[[Any], Any]], x: Any, streams: Sequence[torch.cuda.Stream]) -> list[Any]:
    """`fns[i](x)` on `streams[i]`, forked from and joined back into the current stream with
    event waits (which a CUDA-graph capture records as the graph's branches)."""
    main = torch.cuda.current_stream(streams[0].device)
    outs = []
    for fn, stream in zip(fns, streams):
        stream.wait_stream(main)  # fork: an event recorded on main, waited on `stream`
        with torch.cuda.stream(stream):
            outs.append(fn(x))
    for stream in streams:
        main.wait_stream(stream)  # join before anything reads the outputs
    return outs


class CapturedGraphs:
    """CUDA graphs of one function, one per key (a batch bucket, an input shape and dtype).

    Args:
        fn: static input tensor -> output tensor, or a tuple of them (the graph's static outputs).
        device: the CUDA device.
        warmup: calls before each capture (the first compiles compiled code).
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], device: torch.device | str, warmup: int = 2) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.warmup = warmup
        self.stream = torch.cuda.Stream(self.device)
        self._pool: Any = None
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def __iter__(self) -> Iterator[Hashable]:
        """The keys of the captured graphs."""
        return iter(list(self._graphs))

    def capture(self, key: Hashable, static_in: torch.Tensor) -> Any:
        """Warm `fn` up on `static_in`, capture it as the graph of `key`, return its static outputs."""
        if key in self._graphs:
            raise ValueError(f"a graph for {key!r} is already captured")
        with torch.no_grad():
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):  # compile + warm up on the streams the graph uses
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with no_recompile(), torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                out = self.fn(static_in)
            torch.cuda.synchronize(self.device)
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[key] = (graph, static_in, out)
        return out

    def static_input(self, key: Hashable) -> torch.Tensor:
        """The captured graph's input buffer: write a call's data here, then `replay`."""
        return self._graphs[key][1]

    def replay(self, key: Hashable) -> Any:
        """Replay the graph of `key` on the current stream; its static outputs (valid until the next replay)."""
        graph, _, out = self._graphs[key]
        graph.replay()
        return out

    def __call__(self, x: torch.Tensor) -> Any:
        """`fn(x)` by replay, one graph per (shape, dtype) captured on first sight."""
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            self.capture(key, x.clone())
        self.static_input(key).copy_(x)
        return self.replay(key)

    def close(self) -> None:
        """Drop the graphs and their memory."""
        self._graphs.clear()
        self._pool = None
