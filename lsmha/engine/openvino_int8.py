"""OpenVINO int8: the committee graph quantized by NNCF on real images, and whether it pays.

`quantize_openvino_int8` quantizes the export's fp32 committee graph with NNCF's post-training
quantization (`nncf.quantize`, transformer preset), its statistics taken on images of the
calibration split (val, never test), and writes an OpenVINO IR (`INT8_IR`, `INT8_WEIGHTS`),
both listed and hashed in the manifest. It then measures, on this CPU:

- agreement: the int8 graph's top-1 decisions against the fp32 graph's (OpenVINO, f32) on the
  calibration split;
- speed: batch-1 and batch-32 latency of the int8 graph against OpenVINO's default for this CPU
  (bf16 where it has AMX or AVX512_BF16, f32 elsewhere), timed in blocks of alternating order.

The IR's manifest entry keeps these facts per CPU kind (`cpu_key`), with the verdict `auto`:
agreement >= `MIN_AGREEMENT` and faster at both batches. The openvino backend's precision
"auto" takes the int8 graph only where its entry holds a true verdict for the CPU it runs on;
precision "int8" takes it regardless. On a CPU kind it was not measured on, "auto" keeps the
default: run the measurement there (`lsmha-export calibrate DIR --dataset NAME --int8`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

INT8_IR = "committee.int8.xml"
INT8_WEIGHTS = "committee.int8.bin"
IR_FORMAT = "openvino-ir"  # the IR's graph (its weights file: IR_WEIGHTS_FORMAT)
IR_WEIGHTS_FORMAT = "openvino-ir-weights"
MIN_AGREEMENT = 0.995  # top-1 agreement with fp32 on the calibration split that auto asks for
INSTALL = "pip install nncf"


def cpu_key(cpu: Any) -> str:
    """How a CPU is named in the measured facts: its kind and model, e.g. "avx2: AMD EPYC"."""
    return f"{cpu.kind}: {cpu.model}"


def _decisions(compiled: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    request = compiled.create_infer_request()
    out = [request.infer({0: images[i : i + batch]})[0].argmax(axis=1) for i in range(0, len(images), batch)]
    return np.concatenate(out)


def _median_ms(request: Any, images: np.ndarray, batch: int, calls: int) -> float:
    for i in range(3):
        request.infer({0: images[i : i + batch]})
    samples = []
    for i in range(calls):
        x = images[(i * batch) % (len(images) - batch + 1) :][:batch]
        start = time.perf_counter()
        request.infer({0: x})
        samples.append(time.perf_counter() - start)
    return 1e3 * float(np.median(samples))


def measure_speed(core: Any, fp_model: Any, int8_model: Any, default: str, images: np.ndarray, rounds: int = 3) -> dict:
    """Median latency (ms) of the int8 and the default-precision graphs at batch 1 and 32, each
    timed in blocks of alternating order after a pause; speed-up = default / int8."""
    from .backends.openvino_backend import compile_config

    config = compile_config(default, "latency")
    requests = {
        "default": core.compile_model(fp_model, "CPU", config).create_infer_request(),
        "int8": core.compile_model(int8_model, "CPU", config).create_infer_request(),
    }
    out: dict[str, Any] = {}
    for batch, calls in ((1, 50), (32, 6)):
        samples: dict[str, list[float]] = {name: [] for name in requests}
        for r in range(rounds):
            for name in requests if r % 2 == 0 else list(requests)[::-1]:
                time.sleep(0.2)  # the other graph's threads stop spinning
                samples[name].append(_median_ms(requests[name], images, batch, calls))
        ms = {name: float(np.median(s)) for name, s in samples.items()}
        out[f"b{batch}"] = {"default_ms": ms["default"], "int8_ms": ms["int8"], "speedup": ms["default"] / ms["int8"]}
    return out


def quantize_openvino_int8(
    directory: str | os.PathLike, calibration_images: np.ndarray, check_images: np.ndarray, facts: dict[str, Any]
) -> dict[str, Any]:
    """Quantize the export's fp32 committee graph to int8 for OpenVINO and measure it (see the
    module docstring); write and list `INT8_IR` and `INT8_WEIGHTS`. Returns the IR entry's facts.

    Args:
        directory: an export directory with an fp32 `committee.onnx`.
        calibration_images: float32 (N, C, H, W) images NNCF takes its statistics on (val).
        check_images: float32 images the agreement with fp32 is measured on (the whole val split).
        facts: where the images came from (dataset, split), kept in the entry.

    Raises:
        ImportError: nncf or openvino missing (names the install command).
        ValueError: the export has no fp32 committee graph.
    """
    try:
        import nncf
        import openvino as ov
    except ImportError as err:
        raise ImportError(f"int8 for OpenVINO needs nncf and openvino ({err}): {INSTALL}") from err
    from ..artifacts import COMMITTEE, add_entries, file_entry, read_manifest
    from .backends.openvino_backend import choose_precision, compile_config
    from .cpu import cpu_info

    manifest = read_manifest(directory)
    graphs = manifest.find(format="onnx", precision="fp32", scope=COMMITTEE)
    if not graphs:
        raise ValueError(f"{manifest.directory} has no fp32 committee.onnx to quantize; run `lsmha-export onnx`")
    core = ov.Core()
    model = core.read_model(str(manifest.path_of(graphs[0])))
    dataset = nncf.Dataset([calibration_images[i : i + 1] for i in range(len(calibration_images))])
    quantized = nncf.quantize(
        model, dataset, subset_size=len(calibration_images), model_type=nncf.ModelType.TRANSFORMER
    )  # fmt: skip
    directory = Path(manifest.directory)
    tmp = directory / (INT8_IR + ".tmp.xml")
    try:
        ov.save_model(quantized, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), directory / INT8_WEIGHTS)  # the weights first, the graph last
        os.replace(tmp, directory / INT8_IR)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)

    f32 = compile_config("fp32", "throughput")
    agreement = float(
        (_decisions(core.compile_model(model, "CPU", f32), check_images)
         == _decisions(core.compile_model(quantized, "CPU", f32), check_images)).mean()
    )  # fmt: skip
    cpu = cpu_info()
    default = choose_precision("auto", cpu, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    speed = measure_speed(core, model, quantized, default, check_images)
    verdict = agreement >= MIN_AGREEMENT and all(s["speedup"] > 1.0 for s in speed.values())
    measured = {cpu_key(cpu): {"against": f"openvino {default}", **speed, "auto": verdict}}
    old = manifest.find(format=IR_FORMAT, precision="int8", scope=COMMITTEE)
    if old and old[0].extra.get("agreement_fp32") == agreement:  # the same graph measured on another CPU
        measured = {**old[0].extra.get("measured", {}), **measured}
    info = {
        **facts,
        "n_calibration": len(calibration_images),
        "n_agreement": len(check_images),
        "agreement_fp32": agreement,
        "min_agreement": MIN_AGREEMENT,
        "measured": measured,
    }
    entries = [
        file_entry(directory, INT8_WEIGHTS, format=IR_WEIGHTS_FORMAT, precision="int8", scope=COMMITTEE),
        file_entry(
            directory, INT8_IR, format=IR_FORMAT, precision="int8", scope=COMMITTEE, weights=INT8_WEIGHTS, **info
        ),
    ]  # fmt: skip
    add_entries(directory, entries)
    return info


def auto_takes_int8(entry: Any, cpu: Any) -> bool:
    """Whether precision "auto" takes the int8 IR of `entry` on `cpu`: only where it was measured
    on this CPU kind and paid there (see the module docstring)."""
    measured = entry.extra.get("measured", {}).get(cpu_key(cpu))
    return bool(measured and measured.get("auto"))


def pick_int8(manifest: Any, precision: str, cpu: Any) -> tuple[Any, Any] | None:
    """The int8 IR's (graph, weights) entries the openvino backend opens for `precision`, or None.

    "int8": the IR, else BackendUnavailable naming the command that writes it; "auto": the IR
    only where `auto_takes_int8`; "fp32"/"bf16": None."""
    from ..artifacts import COMMITTEE
    from .backends.base import BackendUnavailable

    graphs = manifest.find(format=IR_FORMAT, precision="int8", scope=COMMITTEE)
    weights = manifest.find(format=IR_WEIGHTS_FORMAT, precision="int8", scope=COMMITTEE)
    if precision == "int8" and not (graphs and weights):
        raise BackendUnavailable(
            f"{manifest.directory} has no OpenVINO int8 graph; write one with "
            "`lsmha-export calibrate DIR --dataset NAME --int8` (NNCF, statistics on the val split)"
        )
    if graphs and weights and (precision == "int8" or (precision == "auto" and auto_takes_int8(graphs[0], cpu))):
        return graphs[0], weights[0]
    return None
