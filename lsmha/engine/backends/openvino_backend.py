"""The OpenVINO backend: the export's committee graph (all members and the sum) compiled for the CPU.

Precision: "auto" runs bf16 where the CPU has AMX or AVX512_BF16 (native bf16 dot
products; OpenVINO's own default there too) and f32 elsewhere; "fp32" forces f32;
"bf16" on a CPU without either flag is refused with the flag it lacks. `name`
reports what the compiled model actually runs, e.g. "openvino[CPU,bf16]".

uint8 images go in as uint8: the graph gets a uint8 input whose cast to float32 is
its first node (OpenVINO's PrePostProcessor), so Python makes no float copy; float
images use a second compiled model with the export's own float32 input, compiled
on first use. Infer requests are reused and fed without copies (`share_inputs`).

Modes: "latency" (for `predict` on a few images): PERFORMANCE_HINT LATENCY, one stream,
one infer request. "throughput" (large batches, concurrent callers): PERFORMANCE_HINT
THROUGHPUT, a pool of the plugin's optimal number of infer requests; a batch is
split over the free ones and run asynchronously, and concurrent calls share the pool.
"auto" (default): latency below `THROUGHPUT_FROM` images a call, throughput from there
(its graph compiled on the first such call). One image a call (a latency caller's usual
case) runs a copy of the latency graph with its batch fixed at 1, which the plugin plans
once for that shape. The measurements behind these choices are in docs/performance.md.

The per-image standardisation (every node from the input up to the first convolutions) runs
in f32 in every precision (`keep_standardisation_f32`): under the bf16 hint the plugin would
otherwise round the raw pixels to bf16's 8 significant bits before their mean is subtracted.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...artifacts import COMMITTEE
from ..cpu import BF16_FLAGS, CpuInfo, cpu_info
from .base import AnyPath, Backend, BackendOptions, BackendUnavailable, Devices, IntRange, OneOf, Source, option

NAME = "openvino"
MIN_VERSION = (2025, 1)  # the pyproject floor: reads the export's opset-23 Attention
PRECISIONS = ("auto", "fp32", "bf16", "int8")
MODES = ("auto", "latency", "throughput")
THROUGHPUT_FROM = 8  # images per call from which mode "auto" takes the throughput graph
INSTALL = "pip install -U openvino"
KEEP_PRECISION = "precise_0"  # rt_info key of ov::DisableFP16Compression: keep the node's own precision
F32_UNTIL = "Convolution"  # the standardisation is everything from the input up to these nodes


@dataclass(frozen=True)
class Options(BackendOptions):
    """precision: "auto" (bf16 with AMX or AVX512_BF16, else f32; the export's int8 graph where it
    was measured to pay on this CPU kind: `lsmha.engine.openvino_int8`), "fp32", "bf16" or "int8"
    (the NNCF int8 graph `lsmha-export calibrate --int8` writes); device: the
    CPU only; mode: "auto" (latency below `THROUGHPUT_FROM` images a call, throughput from
    there), "latency" (one request) or "throughput" (streams, a request pool); threads:
    INFERENCE_NUM_THREADS (None: the plugin's choice, one per physical core); cache_dir:
    OpenVINO's CACHE_DIR, where compiled blobs are kept for later opens to load."""

    precision: str = option("auto", OneOf(PRECISIONS))
    device: str | None = option(None, Devices(("cpu",)))
    mode: str = option("auto", OneOf(MODES))
    threads: int | None = option(None, IntRange())
    cache_dir: str | None = option(None, AnyPath())


def _version(text: str) -> tuple[int, int]:
    parts = text.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)


def unavailable() -> str | None:
    try:
        import openvino
    except ImportError as err:
        return f"openvino is not installed or cannot be imported ({err}): {INSTALL}"
    found = getattr(openvino, "__version__", "unknown")
    if _version(found) < MIN_VERSION:
        want = ".".join(map(str, MIN_VERSION))
        return f"openvino {found} is too old: lsmha needs openvino >= {want} (ONNX opset-23 Attention): {INSTALL}"
    return None


def choose_precision(precision: str, cpu: CpuInfo, capabilities: Sequence[str] = ()) -> str:
    """The precision to compile in: "fp32" or "bf16".

    Args:
        precision: "auto", "fp32" or "bf16".
        cpu: the CPU's flags (`lsmha.engine.cpu.cpu_info()`).
        capabilities: OpenVINO's `OPTIMIZATION_CAPABILITIES` for the CPU; decides bf16
            only where the flags cannot be read (not Linux).
    """
    has_bf16 = cpu.has_bf16 if cpu.has_bf16 is not None else "BF16" in capabilities
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if has_bf16 else "fp32"
    if not has_bf16:
        flags = "unknown" if cpu.flags is None else (" ".join(cpu.flags) or "none of note")
        raise BackendUnavailable(
            f"precision='bf16' needs a CPU with {' or '.join(BF16_FLAGS)} (AMX or AVX512_BF16); "
            f"this CPU ({cpu.model}) has neither (its flags: {flags}); use precision='fp32' or 'auto'"
        )
    return "bf16"


def compile_config(precision: str, mode: str, threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin's properties for `precision` ("fp32"/"bf16") and `mode` ("latency"/"throughput")."""
    if mode not in MODES[1:]:
        raise BackendUnavailable(f"openvino backend: a compiled graph's mode is latency or throughput, got {mode!r}")
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": mode.upper(),
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class CompiledGraph:
    """One compiled committee graph (one input dtype) with its pool of reusable infer requests."""

    def __init__(self, core: Any, model: Any, config: dict[str, Any]) -> None:
        self.compiled = core.compile_model(model, "CPU", config)
        jobs = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.jobs = 1 if config["PERFORMANCE_HINT"] == "LATENCY" else jobs
        self.pool: queue.Queue[Any] = queue.Queue()
        for _ in range(self.jobs):
            self.pool.put(self.compiled.create_infer_request())

    def _infer(self, images: np.ndarray, outputs: Sequence[int]) -> list[list[np.ndarray]]:
        """Outputs `outputs` of `images` split over the free requests: one list per chunk."""
        taken = [self.pool.get()]  # wait for one; take more only if free, so concurrent callers never deadlock
        while len(taken) < min(self.jobs, len(images)):
            try:
                taken.append(self.pool.get_nowait())
            except queue.Empty:
                break
        try:
            for request, chunk in zip(taken, np.array_split(images, len(taken)), strict=True):
                request.start_async({0: chunk}, share_inputs=True)
            parts = []
            for request in taken:
                request.wait()
                parts.append([request.get_output_tensor(o).data.copy() for o in outputs])
        finally:
            for request in taken:  # back to the pool only once idle: a started request still reads its chunk
                request.wait()
                self.pool.put(request)
        return parts

    def run(self, images: np.ndarray, output: int) -> np.ndarray:
        """Output `output` (0: logits, 1: member_logits) for `images`, split over the free requests."""
        parts = [p[0] for p in self._infer(images, [output])]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=output)  # batch axis: 0 or 1

    def run_all(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output for `images`, each with its batch on axis 0 (as the adaptive graph's)."""
        parts = self._infer(images, range(len(self.compiled.outputs)))
        return [np.concatenate(column) if len(column) > 1 else column[0] for column in zip(*parts, strict=True)]


class OpenVinoBackend(Backend):
    """The committee graph (outputs `logits`, `member_logits`) compiled by OpenVINO for the CPU."""

    def __init__(
        self, model: Any, core: Any, precision: str, mode: str, num_members: int, threads: int | None = None
    ) -> None:
        self.model = model  # the float32-input graph as read from the verified file
        self.core = core
        self.mode = mode
        self.num_members = num_members
        self.configs = {m: compile_config(precision, m, threads) for m in MODES[1:]}
        self.graphs: dict[tuple[str, str], CompiledGraph] = {}
        self.compiling = threading.Lock()
        first = self._graph(np.uint8, THROUGHPUT_FROM if mode == "throughput" else 1).compiled
        runs = first.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what the plugin settled on
        self.precision = "bf16" if runs == "bf16" else "fp32"
        self.name = f"openvino[CPU,{self.precision}" + (",throughput]" if mode == "throughput" else "]")

    def _graph(self, dtype: Any, batch: int) -> CompiledGraph:
        """The compiled graph for images of `dtype` in batches of `batch`, compiled on first use:
        "throughput", "latency", or "single" (the latency graph with its batch fixed at 1)."""
        kind = "uint8" if dtype == np.uint8 else "float32"
        mode = self.mode if self.mode != "auto" else ("throughput" if batch >= THROUGHPUT_FROM else "latency")
        shape = "single" if mode == "latency" and batch == 1 else mode
        with self.compiling:  # concurrent first calls compile once
            if (kind, shape) not in self.graphs:  # float images: the export's own float32 input
                model = uint8_input(self.model) if kind == "uint8" else self.model.clone()
                if shape == "single":
                    model.reshape([1, *(d.get_length() for d in model.input(0).get_partial_shape()[1:])])
                self.graphs[kind, shape] = CompiledGraph(self.core, model, self.configs[mode])
        return self.graphs[kind, shape]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._graph(images.dtype, len(images)).run(images, 0)

    def member_logits(self, images: np.ndarray) -> np.ndarray:
        return self._graph(images.dtype, len(images)).run(images, 1)

    def outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph for `images`, batch on axis 0 (the adaptive graph's)."""
        return self._graph(images.dtype, len(images)).run_all(images)

    def close(self) -> None:
        self.graphs = {}


def graph_io(model: Any) -> dict[str, tuple[int | str, ...]]:
    """The model's inputs and outputs as read: name -> shape, a dynamic axis as "?"."""
    return {
        port.get_any_name(): tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
        for port in (*model.inputs, *model.outputs)
    }


def standardisation_nodes(model: Any) -> list[Any]:
    """The nodes from the model's inputs up to (not including) the first `F32_UNTIL` nodes on every
    path: the per-image standardisation (mean, centring, std, division) of the exported graph."""
    found: dict[str, Any] = {}
    frontier = list(model.get_parameters())
    while frontier:
        node = frontier.pop()
        for output in node.outputs():
            for target in output.get_target_inputs():
                consumer = target.get_node()
                if consumer.get_type_name() != F32_UNTIL and consumer.get_name() not in found:
                    found[consumer.get_name()] = consumer
                    frontier.append(consumer)
    return list(found.values())


def keep_standardisation_f32(core: Any, model: Any) -> Any:
    """`model` with its standardisation (`standardisation_nodes`) kept in f32 whatever the
    INFERENCE_PRECISION_HINT: with bf16 the CPU plugin lowers every f32 node not so marked, and an
    image offset by +10,000 then loses its pixels to bf16 rounding before its mean is subtracted.

    The plugin reads the mark only as a typed attribute (DisablePrecisionConversion), which Python
    cannot build; a "precise_0" entry becomes that attribute when the model is written as IR and
    read back, so the model makes that round trip (in memory, weights copied, nothing left on disk).
    """
    import openvino as ov

    for node in standardisation_nodes(model):
        node.get_rt_info()[KEEP_PRECISION] = ""
    with tempfile.TemporaryDirectory(prefix="lsmha-ov-") as tmp:
        xml, weights = Path(tmp, "model.xml"), Path(tmp, "model.bin")
        ov.serialize(model, str(xml), str(weights))  # as it is: no fp16 compression of the weights
        return core.read_model(xml.read_text(encoding="utf-8"), ov.Tensor(np.fromfile(weights, dtype=np.uint8)))


def uint8_input(model: Any) -> Any:
    """A copy of `model` taking uint8 images, cast to float32 by its first node."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model.clone())
    ppp.input().tensor().set_element_type(ov.Type.u8)
    ppp.input().preprocess().convert_element_type(ov.Type.f32)
    return ppp.build()


def open(source: Source, options: Options) -> OpenVinoBackend:
    """Compile the export's committee graph with OpenVINO for the CPU (see `Options`)."""
    manifest = source.manifest
    if manifest is None:
        raise BackendUnavailable(
            "openvino backend needs an export directory with committee.onnx (run `lsmha-export onnx`)"
        )
    entries = manifest.find(format="onnx", precision="fp32", scope=COMMITTEE)
    if not entries:
        have = sorted({(e.format, e.precision, str(e.scope)) for e in manifest.files})
        raise BackendUnavailable(
            f"{manifest.directory} has no fp32 ONNX committee graph (have: {have}); run `lsmha-export onnx`"
        )
    import openvino as ov

    core = ov.Core()
    if options.cache_dir is not None:
        core.set_property({"CACHE_DIR": str(options.cache_dir)})
    from ..openvino_int8 import pick_int8

    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    cpu = cpu_info()
    int8 = pick_int8(manifest, options.precision, cpu)
    chosen = choose_precision("auto" if options.precision == "int8" else options.precision, cpu, capabilities)
    if int8 is not None:  # the quantized graph; what is not quantized runs in `chosen`
        graph, weights = (str(manifest.verified_path(e)) for e in int8)
        model = keep_standardisation_f32(core, core.read_model(graph, weights))
        backend = OpenVinoBackend(model, core, chosen, options.mode, len(source.specs), options.threads)
        backend.name = backend.name.replace("CPU,", "CPU,int8+")
        return backend
    model = core.read_model(manifest.verified_bytes(entries[0]))  # one read: the hash, then OpenVINO's parse
    manifest.check_loaded_io(entries[0], graph_io(model))
    model = keep_standardisation_f32(core, model)
    return OpenVinoBackend(model, core, chosen, options.mode, len(source.specs), options.threads)
