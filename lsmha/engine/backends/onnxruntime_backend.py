"""The ONNX Runtime backend: the exported committee graph (or one graph per member).

Graph: each block's attention as one 3-D `Attention` node (`onnx_rewrite`,
applied in memory, the file untouched). Session options: every graph optimisation
(ORT_ENABLE_ALL), sequential execution, intra-op threads = physical cores,
spinning threads, denormals as zero. On a machine with the CUDA provider the
graph runs there with I/O binding; otherwise on the CPU. ORT falls back to the
CPU silently when a provider fails, so `name` reports the provider the session
actually holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cpu import physical_cores
from .base import BackendOptions, BackendUnavailable, Devices, FileBackend, IntRange, OneOf, Source, option, pick_files

NAME = "onnxruntime"
FORMAT = "onnx"  # the files `file_runner` runs
VARIANTS = ("fp32", "fp16", "int8")  # fp16 and int8 (ORT dynamic quantisation) are opt-in exports


@dataclass(frozen=True)
class Options(BackendOptions):
    """precision: "fp32", or the opt-in exports "fp16" and "int8" (ORT dynamic int8
    quantisation of MatMul/Gemm; see `lsmha.export.onnx`); device: "cpu", "cuda[:N]" or None
    (CUDA when present); threads: intra-op threads (None: physical cores)."""

    precision: str = option("fp32", OneOf(VARIANTS))
    device: str | None = option(None, Devices())
    threads: int | None = option(None, IntRange())


def unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
    return None


def session_options(threads: int | None = None) -> Any:
    """The tuned `SessionOptions` (see module docstring)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return so


def providers(device: str | None) -> list[Any]:
    """CUDA first when present and not refused (device="cpu"), then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device not in (None, "cpu") and not str(device).startswith("cuda"):
        raise BackendUnavailable(f"onnxruntime backend: device must be 'cpu' or 'cuda[:N]', got {device!r}")
    chosen: list[Any] = []
    if device != "cpu" and "CUDAExecutionProvider" in available:
        index = int(str(device).split(":")[1]) if device and ":" in str(device) else 0
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    elif device and str(device).startswith("cuda"):
        raise BackendUnavailable(
            f"onnxruntime has no CUDAExecutionProvider here (providers: {available}); pip install onnxruntime-gpu"
        )
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxSession:
    """One ONNX file in one InferenceSession, fed float32 images, with I/O binding on CUDA.

    With `rewrite` (default) the graph is loaded and each block's 4-D `Attention` with
    its Reshape/Transpose/Slice/Squeeze plumbing becomes one Split + 3-D `Attention`
    (`onnx_rewrite`; same arithmetic) before ORT's own optimisations; the
    file on disk, whose hash the manifest holds, is untouched.
    """

    def __init__(
        self,
        path: Path,
        device: str | None = None,
        threads: int | None = None,
        rewrite: bool = True,
        data: bytes | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = path
        self.rewritten = 0
        model: str | bytes = str(path) if data is None else data  # `data`: the file's content, already read
        if rewrite:
            import onnx

            from .onnx_rewrite import attention_to_3d

            graph = onnx.load(str(path)) if data is None else onnx.load_model_from_string(data)
            proto, self.rewritten = attention_to_3d(graph)
            model = proto.SerializeToString()
        self.session = ort.InferenceSession(model, session_options(threads), providers=providers(device))
        self.provider = self.session.get_providers()[0]
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.shapes = {t.name: tuple(t.shape) for t in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.on_cuda = self.provider == "CUDAExecutionProvider"

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        x = images if images.dtype == np.float32 else images.astype(np.float32)
        if not self.on_cuda:
            return self.session.run(self.outputs, {self.input: x})
        binding = self.session.io_binding()  # copy in once, outputs stay on the device until read
        binding.bind_cpu_input(self.input, x)
        for name in self.outputs:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def file_runner(path: Path, entry: Any) -> Any:
    """One graph on the CPU as a parity runner: float32 NCHW numpy -> output name -> numpy."""
    session = OnnxSession(path, device="cpu")
    return lambda x: dict(zip(session.outputs, session.run(x)))


class OnnxRuntimeBackend(FileBackend):
    """The committee graph (outputs `logits`, `member_logits`) or one graph per member."""

    def __init__(self, sessions: list[OnnxSession], committee_graph: bool, num_members: int, precision: str) -> None:
        name = f"onnxruntime[{sessions[0].provider}]" + ("" if precision == "fp32" else f"[{precision}]")
        super().__init__(sessions, committee_graph, num_members, name)
        self.precision = precision

    def call(self, runner: OnnxSession, x: np.ndarray) -> list[np.ndarray]:
        return runner.run(x)


def open(source: Source, options: Options) -> OnnxRuntimeBackend:
    """Open the exported ONNX files of `source` in ONNX Runtime (see `Options`)."""
    precision = options.precision
    entries, whole = pick_files(source, "onnx", precision, f"lsmha-export onnx --precision {precision}", "ONNX graph")
    manifest = source.manifest
    sessions = []
    for entry in entries:  # each graph read and parsed once: hashed, then checked as ONNX Runtime read it
        data = manifest.verified_bytes(entry)
        sessions.append(OnnxSession(manifest.path_of(entry), options.device, options.threads, data=data))
        manifest.check_loaded_io(entry, sessions[-1].shapes)
    return OnnxRuntimeBackend(sessions, whole, len(source.specs), precision)
