"""CPU runners for `lsmha-bench latency`: stock OpenVINO as a user runs it, and the engine's own choices.

Each runner exports the members once into a temporary directory shared by every
runner of the same members (an export of the Table 6 committee takes a while on
two cores), and times what a user of that path would call:

- `openvino-stock`: `openvino.Core().compile_model("committee.onnx", "CPU")` with every
  default, called as `compiled(images)` on float32 images: the comparison the engine must
  not lose.
- `openvino`, `openvino-fp32`, `openvino-throughput`: lsmha's openvino backend through
  `Committee` (input checks included), uint8 images in.
- `auto`: `Committee.load(export, backend="auto", device="cpu")`, whatever it picks here; the
  note names it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..models import CCT
from .runner import Runner

# member ids -> (the members, their export); holding the members keeps their ids from being reused
_EXPORTS: dict[tuple[int, ...], tuple[list[CCT], tempfile.TemporaryDirectory]] = {}


def shared_export(models: list[CCT]) -> str:
    """An fp32 ONNX export of `models` (committee graph, weights, manifest), made once per member list."""
    key = tuple(id(m) for m in models)
    if key not in _EXPORTS:
        from ..export.onnx import export_onnx

        tmp = tempfile.TemporaryDirectory(prefix="lsmha-bench-export-")
        export_onnx(models, tmp.name)
        _EXPORTS[key] = (list(models), tmp)
    return _EXPORTS[key][1].name


def openvino_stock(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """stock OpenVINO: compile_model(committee.onnx, 'CPU') with its defaults (a peer)"""
    import openvino as ov

    path = f"{shared_export(models)}/committee.onnx"
    compiled = ov.Core().compile_model(path, "CPU")
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def run(x: np.ndarray) -> Any:
        return compiled(x)[0]

    note = f"openvino {ov.__version__.split('-')[0]} compile_model(committee.onnx, 'CPU') defaults ({precision})"
    return Runner(lambda images: images.astype(np.float32), run, note)


def _openvino(description: str, **options: Any) -> Callable[[list[CCT], torch.device, int], Runner]:
    """lsmha's openvino backend with `options`, run by `Committee`; `description` says what it times."""

    def factory(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
        from ..engine import Committee

        committee = Committee.load(shared_export(models), "openvino", batch_size=max(1, max_batch), **options)
        return Runner(lambda images: images, committee.predict_logits, f"lsmha engine, {committee.backend}")

    factory.__doc__ = description
    return factory


openvino_engine = _openvino("lsmha engine on OpenVINO, precision auto, latency")
openvino_fp32 = _openvino("lsmha engine on OpenVINO, fp32 forced", precision="fp32")
openvino_throughput = _openvino("lsmha engine on OpenVINO, precision auto, throughput (streams)", mode="throughput")


def auto_engine(models: list[CCT], device: torch.device, max_batch: int) -> Runner:
    """lsmha engine, backend='auto' on the CPU (the note names it)"""
    from ..engine import Committee

    committee = Committee.load(shared_export(models), backend="auto", device="cpu", batch_size=max(1, max_batch))
    return Runner(lambda images: images, committee.predict_logits, f"lsmha engine auto -> {committee.backend}")
