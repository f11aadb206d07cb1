"""Each OpenVINO lever against stock OpenVINO, on lsmha's own committee.onnx, in one interleaved run.

Stock = `openvino.Core().compile_model("committee.onnx", "CPU")` with its defaults, called
as `compiled(images)` with float32 images, exactly as a user would. Every other row
changes one thing (or the named combination) and is timed in the same passes, the
order reversed every other pass, so a slow phase of a shared machine spreads over
all rows. torch eager fp32 and lsmha's ONNX Runtime backend are timed beside them.

    python benchmarks/openvino_levers.py /tmp/ovx/c7 /tmp/ovx/two --batch 1,32 \
        --json benchmarks/results/cpu-avx512bf16_openvino_levers.json

Each directory is an `lsmha-export onnx` export (random weights are fine: latency
does not depend on trained values).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

Inputs = dict[int, np.ndarray]  # batch size -> uint8 images (N, C, H, W)
Run = Callable[[int], object]  # run(batch size)


def floats(inputs: Inputs) -> Inputs:
    return {n: x.astype(np.float32) for n, x in inputs.items()}


def stock(path: Path, inputs: Inputs) -> Run:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    xs = floats(inputs)
    return lambda n: compiled(xs[n])[0]


def with_config(**config: object) -> Callable[[Path, Inputs], Run]:
    def make(path: Path, inputs: Inputs) -> Run:
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", config)
        xs = floats(inputs)
        return lambda n: compiled(xs[n])[0]

    return make


def engine(precision: str = "auto", mode: str = "latency") -> Callable[[Path, Inputs], Run]:
    """lsmha's openvino backend through `Committee` (input checks included), uint8 in."""

    def make(path: Path, inputs: Inputs) -> Run:
        from lsmha.engine import Committee

        committee = Committee.load(path.parent, "openvino", batch_size=max(inputs), precision=precision, mode=mode)
        return lambda n: committee.predict_logits(inputs[n])

    return make


def _request_run(request: object, xs: Inputs) -> Run:
    def run(n: int) -> np.ndarray:
        request.infer({0: xs[n]}, share_inputs=True, share_outputs=True)
        return request.get_output_tensor(0).data

    return run


def request_reuse(path: Path, inputs: Inputs) -> Run:
    """Stock compile; one InferRequest kept, input shared (no copy), float32."""
    import openvino as ov

    return _request_run(ov.Core().compile_model(str(path), "CPU").create_infer_request(), floats(inputs))


def _edited(path: Path, uint8: bool = False, logits_only: bool = False, batch: int | None = None) -> object:
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    model = ov.Core().read_model(str(path))
    if logits_only:
        model = ov.Model([model.output("logits").node], model.get_parameters(), "committee")
    if uint8:
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8)
        ppp.input().preprocess().convert_element_type(ov.Type.f32)
        model = ppp.build()
    if batch is not None:
        model.reshape({model.input(0): [batch, *list(model.input(0).get_partial_shape())[1:]]})
    return model


def edited(uint8: bool = False, logits_only: bool = False, **config: object) -> Callable[[Path, Inputs], Run]:
    def make(path: Path, inputs: Inputs) -> Run:
        import openvino as ov

        compiled = ov.Core().compile_model(_edited(path, uint8, logits_only), "CPU", config)
        return _request_run(compiled.create_infer_request(), inputs if uint8 else floats(inputs))

    return make


def static(path: Path, inputs: Inputs) -> Run:
    """uint8 input, one model compiled per batch size with that static shape."""
    import openvino as ov

    core = ov.Core()
    runs = {
        n: _request_run(core.compile_model(_edited(path, True, batch=n), "CPU").create_infer_request(), {n: x})
        for n, x in inputs.items()
    }
    return lambda n: runs[n](n)


def fp16_ir(path: Path, inputs: Inputs) -> Run:
    """The graph saved as OpenVINO IR with weights compressed to fp16, compiled with defaults."""
    import openvino as ov

    core = ov.Core()
    tmp = Path(tempfile.mkdtemp(prefix="lsmha-ov-ir-"))
    ov.save_model(core.read_model(str(path)), str(tmp / "committee.xml"), compress_to_fp16=True)
    compiled = core.compile_model(str(tmp / "committee.xml"), "CPU")
    xs = floats(inputs)
    return lambda n: compiled(xs[n])[0]


def throughput(path: Path, inputs: Inputs) -> Run:
    """PERFORMANCE_HINT THROUGHPUT: the batch split over the streams' infer requests (AsyncInferQueue)."""
    import openvino as ov

    compiled = ov.Core().compile_model(_edited(path, uint8=True), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    jobs = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, jobs)
    out: dict[int, np.ndarray] = {}
    queue.set_callback(lambda request, index: out.__setitem__(index, request.get_output_tensor(0).data.copy()))

    def run(n: int) -> np.ndarray:
        chunks = np.array_split(inputs[n], min(jobs, n))
        for i, chunk in enumerate(chunks):
            queue.start_async({0: chunk}, i)
        queue.wait_all()
        return np.concatenate([out[i] for i in range(len(chunks))])

    return run


def onnxruntime_engine(path: Path, inputs: Inputs) -> Run:
    from lsmha.engine import Committee

    committee = Committee.load(path.parent, backend="onnxruntime", device="cpu", batch_size=max(inputs))
    return lambda n: committee.predict_logits(inputs[n])


def torch_eager(path: Path, inputs: Inputs) -> Run:
    import torch

    from lsmha.engine.committee import load_source

    models = load_source(path.parent).torch_models()
    xs = {n: torch.from_numpy(x) for n, x in inputs.items()}

    @torch.inference_mode()
    def run(n: int) -> torch.Tensor:
        out = models[0](xs[n])
        for m in models[1:]:
            out = out + m(xs[n])
        return out

    return run


VARIANTS: dict[str, tuple[Callable[[Path, Inputs], Run], str]] = {
    "stock": (stock, "compile_model(onnx, 'CPU') defaults, compiled(float32)"),
    "hint-f32": (with_config(INFERENCE_PRECISION_HINT="f32"), "stock + INFERENCE_PRECISION_HINT f32"),
    "hint-bf16": (with_config(INFERENCE_PRECISION_HINT="bf16"), "stock + INFERENCE_PRECISION_HINT bf16"),
    "request": (request_reuse, "stock + one InferRequest reused, share_inputs/outputs"),
    "uint8": (edited(uint8=True), "request + uint8 input, cast inside the graph (PrePostProcessor)"),
    "logits-only": (edited(uint8=True, logits_only=True), "uint8 + graph without the member_logits output"),
    "static": (static, "uint8 + static batch shape (one compiled model per batch size)"),
    "no-pinning": (edited(uint8=True, ENABLE_CPU_PINNING=False), "uint8 + ENABLE_CPU_PINNING off"),
    "fp16-ir": (fp16_ir, "IR with weights compressed to fp16 (ov.save_model), defaults"),
    "throughput": (throughput, "uint8 + PERFORMANCE_HINT THROUGHPUT, batch split over AsyncInferQueue"),
    "engine": (engine(mode="auto"), "lsmha openvino backend defaults: auto precision, mode auto, via Committee"),
    "engine-latency": (engine(), "lsmha openvino backend, auto precision, latency mode, via Committee"),
    "engine-tput": (engine(mode="throughput"), "lsmha openvino backend, auto precision, throughput mode"),
    "engine-fp32": (engine("fp32"), "lsmha openvino backend, fp32, via Committee"),
    "onnxruntime": (onnxruntime_engine, "lsmha onnxruntime backend (fp32), via Committee"),
    "torch": (torch_eager, "torch eager fp32, members one after another"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path, help="export directories holding committee.onnx")
    p.add_argument("--batch", default="1,32", help="batch sizes")
    p.add_argument("--variants", default=",".join(VARIANTS), help="rows to time")
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes, order reversed every other one")
    p.add_argument("--calls", type=int, default=3, help="timed calls per row and pass")
    p.add_argument("--json", type=Path, default=None, help="write rows and CPU facts here")
    args = p.parse_args(argv)
    import openvino as ov

    from lsmha.engine.cpu import cpu_info

    cpu = cpu_info()
    batches = [int(b) for b in args.batch.split(",")]
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    print(f"CPU: {cpu.describe()}; openvino {ov.__version__}", flush=True)
    rng = np.random.default_rng(0)
    calls: dict[tuple[str, int, str], Callable[[], object]] = {}
    compile_s: dict[tuple[str, str], float] = {}
    for directory in args.exports:
        path = directory / "committee.onnx"
        spec = json.loads((directory / "manifest.json").read_text())
        shape = (spec["in_chans"], spec["img_size"], spec["img_size"])
        inputs = {n: rng.integers(0, 256, (n, *shape), dtype=np.uint8) for n in batches}
        for name in names:
            t0 = time.perf_counter()
            run = VARIANTS[name][0](path, inputs)  # one compiled model per variant serves every batch
            compile_s[directory.name, name] = time.perf_counter() - t0
            for n in batches:
                calls[directory.name, n, name] = partial(run, n)
                calls[directory.name, n, name]()  # first call outside the timing (allocations, lazy init)
    samples: dict[tuple[str, int, str], list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(args.rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            calls[key]()
            for _ in range(args.calls):
                t0 = time.perf_counter()
                calls[key]()
                samples[key].append((time.perf_counter() - t0) * 1e3)
        print(f"pass {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    print(f"{'model':>6} {'batch':>5} {'variant':>12} {'median ms':>10} {'min':>8} {'max':>8} {'vs stock':>8}  what")
    for key in keys:
        model, n, name = key
        med = float(np.median(samples[key]))
        base = float(np.median(samples[model, n, "stock"])) if (model, n, "stock") in samples else float("nan")
        row = {"model": model, "batch": n, "variant": name, "description": VARIANTS[name][1], "median_ms": med,
               "min_ms": min(samples[key]), "max_ms": max(samples[key]), "speedup_vs_stock": base / med,
               "setup_s": compile_s[model, name], "samples_ms": samples[key]}  # fmt: skip
        rows.append(row)
        print(f"{model:>6} {n:>5} {name:>12} {med:10.2f} {row['min_ms']:8.2f} {row['max_ms']:8.2f} "
              f"{row['speedup_vs_stock']:8.2f}  {VARIANTS[name][1]}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "cpu": cpu.to_dict(),
            "openvino": ov.__version__,
            "rounds": args.rounds,
            "calls": args.calls,
            "rows": rows,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
