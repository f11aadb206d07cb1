"""The names `lsmha-bench` offers before torch loads: the runners `--backend` takes, which of
them need CUDA or the CPU, and what `latency` times when `--backend` is not given.

`lsmha.bench.backends.RUNNERS` maps each name to its factory (a test checks that the two agree);
the names live here so that the command's `--help` answers without importing torch."""

RUNNER_NAMES = (
    "torch",
    "torch-bf16",
    "torch-cuda-graph",
    "onnxruntime",
    "onnxruntime-fp16",
    "onnxruntime-int8",
    "openvino-stock",
    "openvino",
    "openvino-fp32",
    "openvino-throughput",
    "auto",
    "aoti",
    "torch-stacked",
    "torch-compile-graph",
    "torch-compile-streams",
    "cuda-graph",
)
CUDA_ONLY = frozenset({"torch-cuda-graph", "torch-compile-graph", "torch-compile-streams", "cuda-graph"})
CPU_ONLY = frozenset({"openvino-stock", "openvino", "openvino-fp32", "openvino-throughput", "auto"})
# what `lsmha-bench latency` times on each device type when --backend is not given
DEFAULT_BACKENDS = {
    "cuda": ("torch", "torch-bf16", "torch-compile-graph", "cuda-graph"),
    "cpu": ("torch", "openvino-stock", "onnxruntime", "auto"),
}
