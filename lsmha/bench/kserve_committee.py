"""The committee served by KServe's own ModelServer: what `lsmha-bench serve` compares
lsmha-serve with, written as a KServe user would write it by hand.

A `kserve.Model` whose `predict` runs the export's `committee.onnx` in an ONNX Runtime session
with its default options, on the KServe v2 request's `images` (UINT8 NHWC, as lsmha-serve takes
them, or FP32 NCHW), and answers `label` (INT64) and `logits` (FP32). One ModelServer process,
one worker, no batching of its own (KServe's ModelServer has none). Run as

    python -m lsmha.bench.kserve_committee DIR --model_name NAME --http_port P --enable_grpc false

(KServe reads its own flags, `--http_port` and the rest, from the command line itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any


def kserve_skipped(directory: Any) -> str | None:
    """Why the KServe ModelServer row cannot run (None: it can): KServe is not a dependency of
    lsmha, and its wrapper (`build_model`) serves an export's committee.onnx."""
    if importlib.util.find_spec("kserve") is None:
        return (
            "kserve: skipped, the kserve package is not installed (it is not a dependency of lsmha: pip install kserve)"
        )
    if not (Path(directory) / "committee.onnx").is_file():
        return f"kserve: skipped, {directory} holds no committee.onnx for KServe's ModelServer (lsmha-export onnx)"
    return None


def build_model(directory: Path, name: str) -> Any:
    """The `kserve.Model` over `directory/committee.onnx`, loaded."""
    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse, Model

    class CommitteeModel(Model):
        def load(self) -> bool:
            self.session = ort.InferenceSession(str(directory / "committee.onnx"), providers=["CPUExecutionProvider"])
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
            x = payload.inputs[0].as_numpy()
            if x.dtype == np.uint8:  # NHWC pixels, as lsmha-serve takes them
                x = x.transpose(0, 3, 1, 2)
            logits = self.session.run(["logits"], {"images": np.ascontiguousarray(x, dtype=np.float32)})[0]
            label = logits.argmax(axis=1).astype(np.int64)
            outputs = [
                InferOutput("label", list(label.shape), "INT64", label.tolist()),
                InferOutput("logits", list(logits.shape), "FP32", logits.ravel().tolist()),
            ]
            return InferResponse(payload.id or "", self.name, outputs)

    model = CommitteeModel(name)
    model.load()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsmha.bench.kserve_committee", description=__doc__)
    parser.add_argument("directory", type=Path, help="an export directory holding committee.onnx")
    parser.add_argument("--model_name", default="lsmha_committee", help="the model's name in /v2/models/NAME")
    args, _ = parser.parse_known_args(argv)  # the rest are KServe's own flags
    if not (args.directory / "committee.onnx").is_file():
        parser.error(f"{args.directory} holds no committee.onnx; export one with lsmha-export onnx")
    from kserve import ModelServer

    ModelServer(workers=1, enable_grpc=False).start([build_model(args.directory, args.model_name)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
